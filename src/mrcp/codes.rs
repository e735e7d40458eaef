//! The synthesizer resource's vocabulary (RFC 6787 §8), as Rust enums. The
//! numbers UniMRCP gives them are `ffi`'s business.

/// A synthesizer request method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    SetParams,
    GetParams,
    Speak,
    Stop,
    Pause,
    Resume,
    BargeInOccurred,
    Control,
    DefineLexicon,
    /// Anything else the server passes on.
    Other,
}

/// The status codes the plugin answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 200
    Success,
    /// 402: not valid in this state (a second SPEAK while one runs).
    MethodNotValid,
    /// 403
    UnsupportedParam,
    /// 405
    MethodNotAllowed,
    /// 407
    MethodFailed,
    /// 409
    UnsupportedParamValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    InProgress,
    Complete,
}

/// Completion-Cause of a SPEAK: the whole vocabulary (ffi maps each).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionCause {
    Normal,
    BargeIn,
    ParseFailure,
    UriFailure,
    Error,
    LanguageUnsupported,
    LexiconLoadFailure,
    Cancelled,
}

impl CompletionCause {
    /// The three-digit code and name, for log lines.
    pub fn code(self) -> &'static str {
        match self {
            CompletionCause::Normal => "000 normal",
            CompletionCause::BargeIn => "001 barge-in",
            CompletionCause::ParseFailure => "002 parse-failure",
            CompletionCause::UriFailure => "003 uri-failure",
            CompletionCause::Error => "004 error",
            CompletionCause::LanguageUnsupported => "005 language-unsupported",
            CompletionCause::LexiconLoadFailure => "006 lexicon-load-failure",
            CompletionCause::Cancelled => "007 cancelled",
        }
    }
}

/// Voice-Gender, and SSML's `<voice gender>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoiceGender {
    Male,
    Female,
    Neutral,
}

/// Prosody-Rate labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLabel {
    XSlow,
    Slow,
    Medium,
    Fast,
    XFast,
    /// The voice's own rate.
    Default,
}

/// Prosody-Volume labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeLabel {
    Silent,
    XSoft,
    Soft,
    Medium,
    Loud,
    XLoud,
    Default,
}
