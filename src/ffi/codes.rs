//! UniMRCP's numbers for the `mrcp` vocabulary, both ways.

use super::sys;
use crate::mrcp::{CompletionCause, Method, RateLabel, RequestState, Status, VoiceGender, VolumeLabel};

pub fn method(id: usize) -> Method {
    match id as sys::mrcp_synthesizer_method_id {
        sys::SYNTHESIZER_SET_PARAMS => Method::SetParams,
        sys::SYNTHESIZER_GET_PARAMS => Method::GetParams,
        sys::SYNTHESIZER_SPEAK => Method::Speak,
        sys::SYNTHESIZER_STOP => Method::Stop,
        sys::SYNTHESIZER_PAUSE => Method::Pause,
        sys::SYNTHESIZER_RESUME => Method::Resume,
        sys::SYNTHESIZER_BARGE_IN_OCCURRED => Method::BargeInOccurred,
        sys::SYNTHESIZER_CONTROL => Method::Control,
        sys::SYNTHESIZER_DEFINE_LEXICON => Method::DefineLexicon,
        _ => Method::Other,
    }
}

pub fn status(status: Status) -> sys::mrcp_status_code_e {
    match status {
        Status::Success => sys::MRCP_STATUS_CODE_SUCCESS,
        Status::MethodNotValid => sys::MRCP_STATUS_CODE_METHOD_NOT_VALID,
        Status::UnsupportedParam => sys::MRCP_STATUS_CODE_UNSUPPORTED_PARAM,
        Status::MethodNotAllowed => sys::MRCP_STATUS_CODE_METHOD_NOT_ALLOWED,
        Status::MethodFailed => sys::MRCP_STATUS_CODE_METHOD_FAILED,
        Status::UnsupportedParamValue => sys::MRCP_STATUS_CODE_UNSUPPORTED_PARAM_VALUE,
    }
}

pub fn state(state: RequestState) -> sys::mrcp_request_state_e {
    match state {
        RequestState::InProgress => sys::MRCP_REQUEST_STATE_INPROGRESS,
        RequestState::Complete => sys::MRCP_REQUEST_STATE_COMPLETE,
    }
}

pub fn cause(cause: CompletionCause) -> sys::mrcp_synth_completion_cause_e {
    match cause {
        CompletionCause::Normal => sys::SYNTHESIZER_COMPLETION_CAUSE_NORMAL,
        CompletionCause::BargeIn => sys::SYNTHESIZER_COMPLETION_CAUSE_BARGE_IN,
        CompletionCause::ParseFailure => sys::SYNTHESIZER_COMPLETION_CAUSE_PARSE_FAILURE,
        CompletionCause::UriFailure => sys::SYNTHESIZER_COMPLETION_CAUSE_URI_FAILURE,
        CompletionCause::Error => sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR,
        CompletionCause::LanguageUnsupported => sys::SYNTHESIZER_COMPLETION_CAUSE_LANGUAGE_UNSUPPORTED,
        CompletionCause::LexiconLoadFailure => sys::SYNTHESIZER_COMPLETION_CAUSE_LEXICON_LOAD_FAILURE,
        CompletionCause::Cancelled => sys::SYNTHESIZER_COMPLETION_CAUSE_CANCELLED,
    }
}

pub fn gender(value: u32) -> Option<VoiceGender> {
    match value {
        sys::VOICE_GENDER_MALE => Some(VoiceGender::Male),
        sys::VOICE_GENDER_FEMALE => Some(VoiceGender::Female),
        sys::VOICE_GENDER_NEUTRAL => Some(VoiceGender::Neutral),
        _ => None,
    }
}

pub fn rate_label(value: u32) -> Option<RateLabel> {
    Some(match value {
        sys::PROSODY_RATE_XSLOW => RateLabel::XSlow,
        sys::PROSODY_RATE_SLOW => RateLabel::Slow,
        sys::PROSODY_RATE_MEDIUM => RateLabel::Medium,
        sys::PROSODY_RATE_FAST => RateLabel::Fast,
        sys::PROSODY_RATE_XFAST => RateLabel::XFast,
        sys::PROSODY_RATE_DEFAULT => RateLabel::Default,
        _ => return None,
    })
}

pub fn volume_label(value: u32) -> Option<VolumeLabel> {
    Some(match value {
        sys::PROSODY_VOLUME_SILENT => VolumeLabel::Silent,
        sys::PROSODY_VOLUME_XSOFT => VolumeLabel::XSoft,
        sys::PROSODY_VOLUME_SOFT => VolumeLabel::Soft,
        sys::PROSODY_VOLUME_MEDIUM => VolumeLabel::Medium,
        sys::PROSODY_VOLUME_LOUD => VolumeLabel::Loud,
        sys::PROSODY_VOLUME_XLOUD => VolumeLabel::XLoud,
        sys::PROSODY_VOLUME_DEFAULT => VolumeLabel::Default,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_maps_back_to_its_id() {
        for (id, m) in [
            (sys::SYNTHESIZER_SET_PARAMS, Method::SetParams),
            (sys::SYNTHESIZER_SPEAK, Method::Speak),
            (sys::SYNTHESIZER_STOP, Method::Stop),
            (sys::SYNTHESIZER_BARGE_IN_OCCURRED, Method::BargeInOccurred),
            (sys::SYNTHESIZER_DEFINE_LEXICON, Method::DefineLexicon),
        ] {
            assert_eq!(method(id as usize), m);
        }
        assert_eq!(method(999), Method::Other);
        assert_eq!(status(Status::MethodFailed), 407);
        assert_eq!(cause(CompletionCause::Error), 4);
    }
}
