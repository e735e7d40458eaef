//! MRCP messages: a server request decoded into an owned `mrcp::Request`,
//! and an `mrcp::Reply` encoded into a message built from the request it
//! answers (in that request's pool, as UniMRCP requires).

use super::codes;
use super::handles::{str_assign, str_bytes, str_owned};
use super::sys;
use crate::mrcp::{sanitize_header_value, Origin, Rate, Reply, Request, SpeakHeaders, Volume};

/// A live message of the server's.
struct Raw<'a>(&'a sys::mrcp_message_t);

impl Raw<'_> {
    fn generic_header(&self) -> Option<&sys::mrcp_generic_header_t> {
        // SAFETY: generic_header_accessor.data is NULL or the generic header
        // allocated for this message.
        unsafe { (self.0.header.generic_header_accessor.data as *const sys::mrcp_generic_header_t).as_ref() }
    }

    fn synth_header(&self) -> Option<&sys::mrcp_synth_header_t> {
        // SAFETY: for synthesizer messages resource_header_accessor.data is
        // NULL or the mrcp_synth_header_t allocated for this message.
        unsafe { (self.0.header.resource_header_accessor.data as *const sys::mrcp_synth_header_t).as_ref() }
    }

    /// apt_header_section_field_check: is the field with this absolute id
    /// present?
    fn field_present(&self, id: usize) -> bool {
        let section = &self.0.header.header_section;
        if section.arr.is_null() || id >= section.arr_size {
            return false;
        }
        // SAFETY: arr has arr_size slots (checked above).
        unsafe { !(*section.arr.add(id)).is_null() }
    }

    fn generic_present(&self, id: sys::mrcp_generic_header_id) -> bool {
        self.field_present(id as usize)
    }

    fn synth_present(&self, id: sys::mrcp_synthesizer_header_id) -> bool {
        self.field_present(sys::GENERIC_HEADER_COUNT as usize + id as usize)
    }

    fn generic_str(
        &self,
        id: sys::mrcp_generic_header_id,
        get: impl Fn(&sys::mrcp_generic_header_t) -> &sys::apt_str_t,
    ) -> Option<String> {
        if !self.generic_present(id) {
            return None;
        }
        // SAFETY: the string points into the message's pool.
        self.generic_header().map(|g| unsafe { str_owned(get(g)) })
    }

    fn synth_str(
        &self,
        id: sys::mrcp_synthesizer_header_id,
        get: impl Fn(&sys::mrcp_synth_header_t) -> &sys::apt_str_t,
    ) -> Option<String> {
        if !self.synth_present(id) {
            return None;
        }
        // SAFETY: the string points into the message's pool.
        self.synth_header().map(|s| unsafe { str_owned(get(s)) })
    }

    fn vendor_params(&self) -> Vec<(String, String)> {
        if !self.generic_present(sys::GENERIC_HEADER_VENDOR_SPECIFIC_PARAMS) {
            return Vec::new();
        }
        let Some(arr) = self.generic_header().and_then(|g| {
            // SAFETY: NULL or an APR array of apt_pair_t in the message pool.
            unsafe { g.vendor_specific_params.as_ref() }
        }) else {
            return Vec::new();
        };
        let pairs = arr.elts as *const sys::apt_pair_t;
        (0..arr.nelts.max(0) as usize)
            .map(|i| {
                // SAFETY: nelts elements of apt_pair_t, strings in the pool.
                unsafe {
                    let p = &*pairs.add(i);
                    (str_owned(&p.name), str_owned(&p.value))
                }
            })
            .collect()
    }

    fn speak_headers(&self) -> SpeakHeaders {
        let mut h = SpeakHeaders {
            voice_name: self.synth_str(sys::SYNTHESIZER_HEADER_VOICE_NAME, |s| &s.voice_param.name),
            speech_language: self.synth_str(sys::SYNTHESIZER_HEADER_SPEECH_LANGUAGE, |s| &s.speech_language),
            // A generic header: present even when no synthesizer header is.
            vendor: self.vendor_params(),
            ..SpeakHeaders::default()
        };
        let Some(synth) = self.synth_header() else {
            return h;
        };
        if self.synth_present(sys::SYNTHESIZER_HEADER_VOICE_GENDER) {
            h.voice_gender = codes::gender(synth.voice_param.gender);
        }
        if self.synth_present(sys::SYNTHESIZER_HEADER_PROSODY_RATE) {
            let rate = &synth.prosody_param.rate;
            // SAFETY: the union member read is the one `type_` says is set.
            h.prosody_rate = unsafe {
                match rate.type_ {
                    sys::PROSODY_RATE_TYPE_LABEL => codes::rate_label(rate.value.label).map(Rate::Label),
                    sys::PROSODY_RATE_TYPE_RELATIVE_CHANGE => Some(Rate::Relative(rate.value.relative)),
                    _ => None,
                }
            };
        }
        if self.synth_present(sys::SYNTHESIZER_HEADER_PROSODY_VOLUME) {
            let volume = &synth.prosody_param.volume;
            // SAFETY: as above.
            h.prosody_volume = unsafe {
                match volume.type_ {
                    sys::PROSODY_VOLUME_TYPE_LABEL => codes::volume_label(volume.value.label).map(Volume::Label),
                    sys::PROSODY_VOLUME_TYPE_NUMERIC => Some(Volume::Numeric(volume.value.numeric)),
                    sys::PROSODY_VOLUME_TYPE_RELATIVE_CHANGE => Some(Volume::Relative(volume.value.relative)),
                    _ => None,
                }
            };
        }
        h
    }
}

/// Decodes a request the server handed to process_request.
///
/// # Safety
/// `msg` must be a live request message (or NULL).
pub unsafe fn decode(msg: *mut sys::mrcp_message_t) -> Option<Request> {
    // SAFETY: per the caller's contract.
    let raw = Raw(unsafe { msg.as_ref()? });
    let start = &raw.0.start_line;
    Some(Request {
        origin: Origin::from_addr(msg as usize),
        id: start.request_id,
        method: codes::method(start.method_id),
        // SAFETY: method_name and the body point into the message's pool.
        method_name: unsafe { str_owned(&start.method_name) },
        content_type: raw.generic_str(sys::GENERIC_HEADER_CONTENT_TYPE, |g| &g.content_type),
        logging_tag: raw.generic_str(sys::GENERIC_HEADER_LOGGING_TAG, |g| &g.logging_tag),
        cache_control: raw.generic_str(sys::GENERIC_HEADER_CACHE_CONTROL, |g| &g.cache_control),
        speak: raw.speak_headers(),
        // SAFETY: as above.
        body: unsafe { str_bytes(&raw.0.body) }.to_vec(),
    })
}

/// The request `origin` stands for.
fn request(origin: Origin) -> *mut sys::mrcp_message_t {
    origin.addr() as *mut sys::mrcp_message_t
}

/// What `reply` is, for a log line.
pub fn describe(origin: Origin, reply: &Reply) -> String {
    // SAFETY: the server keeps the request alive while we may answer it.
    let id = unsafe { request(origin).as_ref().map_or(0, |m| m.start_line.request_id) };
    match reply {
        Reply::Response { .. } => format!("the response to request {id}"),
        Reply::SpeakComplete { .. } => format!("SPEAK-COMPLETE of SPEAK {id}"),
        Reply::SpeechMarker { .. } => format!("SPEECH-MARKER of SPEAK {id}"),
    }
}

/// mrcp_resource_header_prepare / mrcp_generic_header_prepare: the header
/// of a message we are building, allocated on first use through the
/// accessor's vtable.
///
/// # Safety
/// `msg` must be a message we built and have not sent.
unsafe fn header_prepare<T>(msg: *mut sys::mrcp_message_t, generic: bool) -> Option<&'static mut T> {
    // SAFETY: the accessor belongs to a message we built; allocate is the
    // server's allocator for this header and stores the result in
    // accessor.data, which lives as long as the message's pool.
    unsafe {
        let accessor = if generic {
            &mut (*msg).header.generic_header_accessor
        } else {
            &mut (*msg).header.resource_header_accessor
        };
        if accessor.data.is_null() {
            let allocate = accessor.vtable.as_ref().and_then(|vt| vt.allocate)?;
            allocate(accessor, (*msg).pool);
        }
        (accessor.data as *mut T).as_mut()
    }
}

/// Builds the message for `reply` in the pool of the request it answers.
pub fn build(origin: Origin, reply: &Reply) -> Option<*mut sys::mrcp_message_t> {
    let req = request(origin);
    // SAFETY: the server keeps the request and its pool alive until its
    // final response (see mrcp::Origin); the message we create is ours to
    // fill until it is sent.
    unsafe {
        let pool = (*req).pool;
        let (msg, completion, marker, active_ids): (*mut sys::mrcp_message_t, _, _, &[u32]) = match reply {
            Reply::Response { status, state, completion, active_ids, marker } => {
                let msg = sys::mrcp_response_create(req, pool);
                let msg = msg.as_mut()?;
                msg.start_line.status_code = codes::status(*status);
                msg.start_line.request_state = codes::state(*state);
                (msg as *mut _, completion.as_ref(), marker.as_deref(), active_ids.as_slice())
            }
            Reply::SpeakComplete { completion, marker } => {
                let msg = sys::mrcp_event_create(req, sys::SYNTHESIZER_SPEAK_COMPLETE as sys::mrcp_method_id, pool);
                let msg = msg.as_mut()?;
                msg.start_line.request_state = sys::MRCP_REQUEST_STATE_COMPLETE;
                (msg as *mut _, Some(completion), marker.as_deref(), &[][..])
            }
            Reply::SpeechMarker { marker } => {
                let msg = sys::mrcp_event_create(req, sys::SYNTHESIZER_SPEECH_MARKER as sys::mrcp_method_id, pool);
                let msg = msg.as_mut()?;
                msg.start_line.request_state = sys::MRCP_REQUEST_STATE_INPROGRESS;
                (msg as *mut _, None, Some(marker.as_str()), &[][..])
            }
        };
        let pool = (*msg).pool;
        if let Some(c) = completion {
            if let Some(header) = header_prepare::<sys::mrcp_synth_header_t>(msg, false) {
                header.completion_cause = codes::cause(c.cause);
                sys::mrcp_resource_header_property_add(msg, sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE as usize);
                if let Some(reason) = c.reason.as_deref().map(sanitize_header_value) {
                    str_assign(&mut header.completion_reason, &reason, pool);
                    sys::mrcp_resource_header_property_add(msg, sys::SYNTHESIZER_HEADER_COMPLETION_REASON as usize);
                }
            }
        }
        if let Some(marker) = marker {
            if let Some(header) = header_prepare::<sys::mrcp_synth_header_t>(msg, false) {
                str_assign(&mut header.speech_marker, &sanitize_header_value(marker), pool);
                sys::mrcp_resource_header_property_add(msg, sys::SYNTHESIZER_HEADER_SPEECH_MARKER as usize);
            }
        }
        if !active_ids.is_empty() {
            if let Some(header) = header_prepare::<sys::mrcp_generic_header_t>(msg, true) {
                let list = &mut header.active_request_id_list;
                let n = active_ids.len().min(list.ids.len());
                list.ids[..n].copy_from_slice(&active_ids[..n]);
                list.count = n;
                sys::mrcp_generic_header_property_add(msg, sys::GENERIC_HEADER_ACTIVE_REQUEST_ID_LIST as usize);
            }
        }
        Some(msg)
    }
}
