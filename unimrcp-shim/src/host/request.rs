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

    /// SET-PARAMS; set the header fields to store on the channel.
    pub fn set_params() -> Request {
        Request::method(sys::SYNTHESIZER_SET_PARAMS as usize, "SET-PARAMS")
    }

    /// GET-PARAMS.
    pub fn get_params() -> Request {
        Request::method(sys::SYNTHESIZER_GET_PARAMS as usize, "GET-PARAMS")
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

/// The header fields a channel keeps across requests: the `properties` of
/// the real server's synthesizer state machine
/// (libs/mrcp-engine/src/mrcp_synth_state_machine.c in UniMRCP 1.8).
///
/// - `synth_request_set_params` calls `mrcp_header_fields_set(properties,
///   &message->header, pool)`: every field the SET-PARAMS carries replaces
///   the stored one, field by field; fields it does not carry stay. The
///   SET-PARAMS is then dispatched to the plugin as usual.
/// - `synth_request_speak` calls `mrcp_header_fields_inherit(&message->header,
///   properties, pool)` before the SPEAK is queued or dispatched: every
///   stored field the SPEAK does not carry is copied into it; fields it
///   carries are left alone. So the plugin sees one set of headers.
///
/// A header field is the unit in both: Vendor-Specific-Parameters is one
/// field (`apt_pair_array_copy` of the whole list), so a SET-PARAMS replaces
/// the stored list and a SPEAK with any of its own inherits none of it.
/// Content-Type and the body (Content-Length) are not kept: they describe
/// one request's content, and a SET-PARAMS has none.
///
/// Not emulated: the real server also fills the stored fields into the
/// plugin's GET-PARAMS response (`synth_response_get_params`).
#[derive(Clone, Debug)]
pub(crate) struct Properties {
    fields: Request,
}

impl Default for Properties {
    fn default() -> Properties {
        Properties { fields: Request::set_params() }
    }
}

/// `mrcp_header_fields_set` for one field.
fn set_field<T: Clone>(stored: &mut Option<T>, src: &Option<T>) {
    if src.is_some() {
        stored.clone_from(src);
    }
}

/// `mrcp_header_fields_inherit` for one field.
fn inherit_field<T: Clone>(field: &mut Option<T>, stored: &Option<T>) {
    if field.is_none() {
        field.clone_from(stored);
    }
}

impl Properties {
    /// What the server does with a request before dispatching it: a
    /// SET-PARAMS is stored, a SPEAK inherits what is stored (see the type).
    pub(crate) fn apply(&mut self, req: &mut Request) {
        match req.method_id {
            m if m == sys::SYNTHESIZER_SET_PARAMS as usize => self.set(req),
            m if m == sys::SYNTHESIZER_SPEAK as usize => self.inherit_into(req),
            _ => {}
        }
    }

    /// `mrcp_header_fields_set(properties, &set_params->header, pool)`.
    pub(crate) fn set(&mut self, src: &Request) {
        let f = &mut self.fields;
        set_field(&mut f.voice_name, &src.voice_name);
        set_field(&mut f.speech_language, &src.speech_language);
        set_field(&mut f.kill_on_barge_in, &src.kill_on_barge_in);
        set_field(&mut f.prosody_rate, &src.prosody_rate);
        set_field(&mut f.voice_gender, &src.voice_gender);
        set_field(&mut f.prosody_volume, &src.prosody_volume);
        set_field(&mut f.logging_tag, &src.logging_tag);
        set_field(&mut f.cache_control, &src.cache_control);
        if !src.vendor_specific.is_empty() {
            f.vendor_specific.clone_from(&src.vendor_specific);
        }
    }

    /// `mrcp_header_fields_inherit(&speak->header, properties, pool)`.
    pub(crate) fn inherit_into(&self, req: &mut Request) {
        let f = &self.fields;
        inherit_field(&mut req.voice_name, &f.voice_name);
        inherit_field(&mut req.speech_language, &f.speech_language);
        inherit_field(&mut req.kill_on_barge_in, &f.kill_on_barge_in);
        inherit_field(&mut req.prosody_rate, &f.prosody_rate);
        inherit_field(&mut req.voice_gender, &f.voice_gender);
        inherit_field(&mut req.prosody_volume, &f.prosody_volume);
        inherit_field(&mut req.logging_tag, &f.logging_tag);
        inherit_field(&mut req.cache_control, &f.cache_control);
        if req.vendor_specific.is_empty() {
            req.vendor_specific.clone_from(&f.vendor_specific);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vsp(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn set_params_are_stored_field_by_field() {
        let mut props = Properties::default();
        let mut first = Request {
            voice_name: Some("Rachel".into()),
            prosody_rate: Some(ProsodyRate::Slow),
            vendor_specific: vsp(&[("stability", "0.25"), ("style", "0.5")]),
            logging_tag: Some("call-1".into()),
            ..Request::set_params()
        };
        props.apply(&mut first);
        let mut second = Request {
            voice_name: Some("Adam".into()),
            vendor_specific: vsp(&[("seed", "7")]),
            ..Request::set_params()
        };
        props.apply(&mut second);
        assert_eq!(second.voice_name.as_deref(), Some("Adam"), "a SET-PARAMS itself is not changed");
        assert_eq!(second.prosody_rate, None);

        let mut speak = Request::speak("Hi.");
        props.apply(&mut speak);
        assert_eq!(speak.voice_name.as_deref(), Some("Adam"), "the later SET-PARAMS replaced the field");
        assert_eq!(speak.prosody_rate, Some(ProsodyRate::Slow), "fields it did not carry stay");
        assert_eq!(speak.vendor_specific, vsp(&[("seed", "7")]), "Vendor-Specific-Parameters replaced whole");
        assert_eq!(speak.logging_tag.as_deref(), Some("call-1"));
        assert_eq!(speak.content_type.as_deref(), Some("text/plain"));
        assert_eq!(speak.body, b"Hi.");
    }

    #[test]
    fn a_speak_keeps_its_own_fields_and_inherits_the_rest() {
        let mut props = Properties::default();
        props.apply(&mut Request {
            voice_name: Some("Rachel".into()),
            speech_language: Some("de-DE".into()),
            kill_on_barge_in: Some(false),
            voice_gender: Some(sys::VOICE_GENDER_FEMALE),
            prosody_volume: Some(ProsodyVolume::Numeric(20.0)),
            cache_control: Some("no-cache".into()),
            vendor_specific: vsp(&[("stability", "0.25")]),
            ..Request::set_params()
        });
        let mut speak = Request {
            voice_name: Some("Adam".into()),
            vendor_specific: vsp(&[("style", "0.5")]),
            ..Request::speak_ssml("<speak>Hi.</speak>")
        };
        props.apply(&mut speak);
        assert_eq!(speak.voice_name.as_deref(), Some("Adam"));
        assert_eq!(speak.vendor_specific, vsp(&[("style", "0.5")]), "no merge into the SPEAK's own list");
        assert_eq!(speak.speech_language.as_deref(), Some("de-DE"));
        assert_eq!(speak.kill_on_barge_in, Some(false));
        assert_eq!(speak.voice_gender, Some(sys::VOICE_GENDER_FEMALE));
        assert_eq!(speak.prosody_volume, Some(ProsodyVolume::Numeric(20.0)));
        assert_eq!(speak.cache_control.as_deref(), Some("no-cache"));
        assert_eq!(speak.content_type.as_deref(), Some("application/ssml+xml"), "Content-Type is the SPEAK's");

        let mut plain = Request::speak("Plain.");
        props.apply(&mut plain);
        assert_eq!(plain.vendor_specific, vsp(&[("stability", "0.25")]), "inherited when the SPEAK has none");
        assert_eq!(plain.voice_name.as_deref(), Some("Rachel"));
    }

    #[test]
    fn other_methods_neither_store_nor_inherit() {
        let mut props = Properties::default();
        for mut req in [Request::stop(), Request::get_params(), Request::barge_in()] {
            req.voice_name = Some("Adam".into());
            props.apply(&mut req);
            assert_eq!(req.voice_name.as_deref(), Some("Adam"));
        }
        let mut stop = Request::stop();
        props.apply(&mut Request { voice_name: Some("Rachel".into()), ..Request::set_params() });
        props.apply(&mut stop);
        assert_eq!(stop.voice_name, None, "only a SPEAK inherits");
        let mut speak = Request::speak("Hi.");
        props.apply(&mut speak);
        assert_eq!(speak.voice_name.as_deref(), Some("Rachel"), "GET-PARAMS/STOP stored nothing");
    }

    #[test]
    fn an_inherited_speak_is_built_with_the_inherited_headers() {
        let mut props = Properties::default();
        props.apply(&mut Request {
            voice_name: Some("Rachel".into()),
            vendor_specific: vsp(&[("stability", "0.25")]),
            ..Request::set_params()
        });
        let mut speak = Request::speak("Hi.");
        props.apply(&mut speak);
        let pool = Pool::new("inherit");
        let msg = build_request(&pool, "0123456789abcdef", 2, &speak);
        // SAFETY: msg was just built in a live pool; header data was
        // allocated by our accessors as these types.
        unsafe {
            let m = &*msg;
            let s = &*m.header.resource_header_accessor.data.cast::<sys::mrcp_synth_header_t>();
            assert_eq!(super::super::headers::str_of(&s.voice_param.name), "Rachel");
            let g = &*m.header.generic_header_accessor.data.cast::<sys::mrcp_generic_header_t>();
            assert!(!g.vendor_specific_params.is_null());
            assert_eq!((*g.vendor_specific_params).nelts, 1);
        }
    }
}
