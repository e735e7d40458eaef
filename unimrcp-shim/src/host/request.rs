//! MRCP requests the host sends to the plugin, built as the server's MRCPv2
//! parser would leave them: header data in the accessors, presence slots
//! and field text in the header section, body copied.

use super::headers::RATE_LABELS;
use super::message::{message_alloc, property_add};
use super::pool::Pool;
use crate::sys;

/// Prosody-Rate header value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProsodyRate {
    XSlow,
    Slow,
    Medium,
    Fast,
    XFast,
    Default,
    /// Relative change, e.g. 1.5 for 50 % faster.
    Relative(f32),
}

/// Prosody-Volume: a label (PROSODY_VOLUME_*), a number 0–100, or a
/// relative change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProsodyVolume {
    Label(u32),
    Numeric(f32),
    Relative(f32),
}

/// An MRCP request for the synthesizer; `None`/empty fields are absent.
#[derive(Clone, Debug)]
pub struct Request {
    pub method_id: usize,
    pub method_name: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub voice_name: Option<String>,
    pub speech_language: Option<String>,
    pub kill_on_barge_in: Option<bool>,
    pub prosody_rate: Option<ProsodyRate>,
    /// Voice-Gender: a VOICE_GENDER_* value.
    pub voice_gender: Option<u32>,
    pub prosody_volume: Option<ProsodyVolume>,
    pub vendor_specific: Vec<(String, String)>,
    pub logging_tag: Option<String>,
    /// Cache-Control (generic header), e.g. "no-cache" or "max-age=60".
    pub cache_control: Option<String>,
}

impl Request {
    /// A request with only a method.
    pub fn method(method_id: usize, method_name: &str) -> Request {
        Request {
            method_id,
            method_name: method_name.to_string(),
            content_type: None,
            body: Vec::new(),
            voice_name: None,
            speech_language: None,
            kill_on_barge_in: None,
            prosody_rate: None,
            voice_gender: None,
            prosody_volume: None,
            vendor_specific: Vec::new(),
            logging_tag: None,
            cache_control: None,
        }
    }

    /// SPEAK with Content-Type text/plain and `text` as body.
    pub fn speak(text: &str) -> Request {
        Request {
            content_type: Some("text/plain".to_string()),
            body: text.as_bytes().to_vec(),
            ..Request::method(sys::SYNTHESIZER_SPEAK as usize, "SPEAK")
        }
    }

    /// SPEAK with Content-Type application/ssml+xml and `ssml` as body.
    pub fn speak_ssml(ssml: &str) -> Request {
        Request { content_type: Some("application/ssml+xml".to_string()), ..Request::speak(ssml) }
    }

    pub fn stop() -> Request {
        Request::method(sys::SYNTHESIZER_STOP as usize, "STOP")
    }

    pub fn barge_in() -> Request {
        Request::method(sys::SYNTHESIZER_BARGE_IN_OCCURRED as usize, "BARGE-IN-OCCURRED")
    }

    pub fn pause() -> Request {
        Request::method(sys::SYNTHESIZER_PAUSE as usize, "PAUSE")
    }

    pub fn resume() -> Request {
        Request::method(sys::SYNTHESIZER_RESUME as usize, "RESUME")
    }

    /// The STOP the server makes itself when a session ends mid-SPEAK.
    pub fn deactivate() -> Request {
        Request::method(sys::SYNTHESIZER_STOP as usize, "DEACTIVATE")
    }

    fn has_generic(&self) -> bool {
        self.content_type.is_some()
            || !self.body.is_empty()
            || !self.vendor_specific.is_empty()
            || self.logging_tag.is_some()
            || self.cache_control.is_some()
    }

    fn has_synth(&self) -> bool {
        self.voice_name.is_some()
            || self.speech_language.is_some()
            || self.kill_on_barge_in.is_some()
            || self.prosody_rate.is_some()
            || self.voice_gender.is_some()
            || self.prosody_volume.is_some()
    }
}

/// Builds `req` as an `mrcp_message_t` in `pool`.
pub(crate) fn build_request(pool: &Pool, session_id: &str, request_id: u32, req: &Request) -> *mut sys::mrcp_message_t {
    // SAFETY: pool is a live host pool.
    let msg = unsafe { message_alloc(pool.as_ptr()) }.expect("message in a live pool");
    // SAFETY: msg is a fresh message in `pool`; header data is allocated
    // through our own accessors, so the casts match what they allocate.
    unsafe {
        let m = &mut *msg;
        m.start_line.message_type = sys::MRCP_MESSAGE_TYPE_REQUEST;
        m.start_line.version = sys::MRCP_VERSION_2;
        m.start_line.request_id = request_id;
        m.start_line.method_id = req.method_id;
        m.start_line.method_name = pool.apt_str(&req.method_name);
        m.channel_id.session_id = pool.apt_str(session_id);
        m.channel_id.resource_name = pool.apt_str("speechsynth");
        if !req.body.is_empty() {
            m.body = sys::apt_str_t { buf: pool.dup_bytes(&req.body), length: req.body.len() };
        }

        if req.has_generic() {
            let acc = &mut m.header.generic_header_accessor;
            let allocate = (*acc.vtable).allocate.expect("generic allocate");
            let g = &mut *allocate(acc, pool.as_ptr()).cast::<sys::mrcp_generic_header_t>();
            if let Some(ct) = &req.content_type {
                g.content_type = pool.apt_str(ct);
                property_add(msg, sys::GENERIC_HEADER_CONTENT_TYPE as usize, true);
            }
            if !req.body.is_empty() {
                g.content_length = req.body.len();
                property_add(msg, sys::GENERIC_HEADER_CONTENT_LENGTH as usize, true);
            }
            if let Some(tag) = &req.logging_tag {
                g.logging_tag = pool.apt_str(tag);
                property_add(msg, sys::GENERIC_HEADER_LOGGING_TAG as usize, true);
            }
            if let Some(cc) = &req.cache_control {
                g.cache_control = pool.apt_str(cc);
                property_add(msg, sys::GENERIC_HEADER_CACHE_CONTROL as usize, true);
            }
            if !req.vendor_specific.is_empty() {
                let arr = super::apr::array_make(
                    pool,
                    req.vendor_specific.len() as i32,
                    std::mem::size_of::<sys::apt_pair_t>(),
                );
                for (name, value) in &req.vendor_specific {
                    let p = super::apr::apr_array_push(arr).cast::<sys::apt_pair_t>();
                    (*p).name = pool.apt_str(name);
                    (*p).value = pool.apt_str(value);
                }
                g.vendor_specific_params = arr;
                property_add(msg, sys::GENERIC_HEADER_VENDOR_SPECIFIC_PARAMS as usize, true);
            }
        }

        if req.has_synth() {
            let acc = &mut m.header.resource_header_accessor;
            let allocate = (*acc.vtable).allocate.expect("synth allocate");
            let s = &mut *allocate(acc, pool.as_ptr()).cast::<sys::mrcp_synth_header_t>();
            if let Some(name) = &req.voice_name {
                s.voice_param.name = pool.apt_str(name);
                property_add(msg, sys::SYNTHESIZER_HEADER_VOICE_NAME as usize, false);
            }
            if let Some(lang) = &req.speech_language {
                s.speech_language = pool.apt_str(lang);
                property_add(msg, sys::SYNTHESIZER_HEADER_SPEECH_LANGUAGE as usize, false);
            }
            if let Some(gender) = req.voice_gender {
                s.voice_param.gender = gender;
                property_add(msg, sys::SYNTHESIZER_HEADER_VOICE_GENDER as usize, false);
            }
            if let Some(volume) = req.prosody_volume {
                let v = &mut s.prosody_param.volume;
                match volume {
                    ProsodyVolume::Label(label) => {
                        v.type_ = sys::PROSODY_VOLUME_TYPE_LABEL;
                        v.value.label = label;
                    }
                    ProsodyVolume::Numeric(n) => {
                        v.type_ = sys::PROSODY_VOLUME_TYPE_NUMERIC;
                        v.value.numeric = n;
                    }
                    ProsodyVolume::Relative(r) => {
                        v.type_ = sys::PROSODY_VOLUME_TYPE_RELATIVE_CHANGE;
                        v.value.relative = r;
                    }
                }
                property_add(msg, sys::SYNTHESIZER_HEADER_PROSODY_VOLUME as usize, false);
            }
            if let Some(kill) = req.kill_on_barge_in {
                s.kill_on_barge_in = kill.into();
                property_add(msg, sys::SYNTHESIZER_HEADER_KILL_ON_BARGE_IN as usize, false);
            }
            if let Some(rate) = req.prosody_rate {
                let r = &mut s.prosody_param.rate;
                let label = match rate {
                    ProsodyRate::XSlow => Some(sys::PROSODY_RATE_XSLOW),
                    ProsodyRate::Slow => Some(sys::PROSODY_RATE_SLOW),
                    ProsodyRate::Medium => Some(sys::PROSODY_RATE_MEDIUM),
                    ProsodyRate::Fast => Some(sys::PROSODY_RATE_FAST),
                    ProsodyRate::XFast => Some(sys::PROSODY_RATE_XFAST),
                    ProsodyRate::Default => Some(sys::PROSODY_RATE_DEFAULT),
                    ProsodyRate::Relative(v) => {
                        r.type_ = sys::PROSODY_RATE_TYPE_RELATIVE_CHANGE;
                        r.value.relative = v;
                        None
                    }
                };
                if let Some(label) = label {
                    debug_assert!((label as usize) < RATE_LABELS.len());
                    r.type_ = sys::PROSODY_RATE_TYPE_LABEL;
                    r.value.label = label;
                }
                property_add(msg, sys::SYNTHESIZER_HEADER_PROSODY_RATE as usize, false);
            }
        }
    }
    msg
}
