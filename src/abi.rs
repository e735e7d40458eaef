//! The thin layer over the raw ABI: UniMRCP's `static inline` helpers
//! re-implemented (they are not exported by the server library) and
//! `#[repr(transparent)]` handles for the pointers the plugin passes around.
//!
//! All dereferences of server-owned structures happen here, each under a
//! `// SAFETY:` note saying which server guarantee it relies on.

use std::ffi::{c_void, CStr};
use std::ptr::{self, NonNull};
use std::slice;

use crate::sys;

pub const TRUE: sys::apt_bool_t = 1;
pub const FALSE: sys::apt_bool_t = 0;

pub fn apt_bool(value: bool) -> sys::apt_bool_t {
    if value {
        TRUE
    } else {
        FALSE
    }
}

/// Bytes of an apt_str_t (empty for a NULL buffer).
///
/// # Safety
/// `s` must describe `length` readable bytes (or have a NULL buffer) that
/// outlive the returned slice.
pub unsafe fn str_bytes<'a>(s: &sys::apt_str_t) -> &'a [u8] {
    if s.buf.is_null() || s.length == 0 {
        &[]
    } else {
        // SAFETY: per the caller's contract, buf points at `length` bytes.
        unsafe { slice::from_raw_parts(s.buf as *const u8, s.length) }
    }
}

/// Copies `text` into `pool` and points `dst` at it (apt_string_assign).
///
/// # Safety
/// `pool` must be a live APR pool.
pub unsafe fn str_assign(dst: &mut sys::apt_str_t, text: &str, pool: *mut sys::apr_pool_t) {
    // SAFETY: apr_pstrmemdup copies `len` bytes from a valid slice into the
    // live pool and NUL-terminates the copy.
    let buf = unsafe { sys::apr_pstrmemdup(pool, text.as_ptr().cast(), text.len()) };
    dst.buf = buf;
    dst.length = if buf.is_null() { 0 } else { text.len() };
}

/// A raw pointer that may cross to the channel's worker thread. The server
/// keeps the pointee alive for the documented span (see each use).
pub struct SendPtr<T>(pub *mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> PartialEq for SendPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl<T> Eq for SendPtr<T> {}

impl<T> std::fmt::Debug for SendPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:p}", self.0)
    }
}

// SAFETY: the pointees (engine, channel, request message) are owned by the
// server and may be used from any thread for the spans the server documents:
// messages are sent through the server's thread-safe event vtables, and their
// pools carry a mutex in UniMRCP's patched APR.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; the handle itself is only a pointer value.
unsafe impl<T> Sync for SendPtr<T> {}

// ------------------------------------------------------------------ engine

/// mrcp_engine_open_respond / close_respond: post the answer to the server.
///
/// # Safety
/// `engine` must be the engine the server created us with.
pub unsafe fn engine_open_respond(engine: *mut sys::mrcp_engine_t, ok: bool) {
    // SAFETY: the server installs event_vtable before calling open.
    unsafe {
        if let Some(on_open) = (*engine).event_vtable.as_ref().and_then(|vt| vt.on_open) {
            on_open(engine, apt_bool(ok));
        }
    }
}

/// # Safety
/// `engine` must be the engine the server created us with.
pub unsafe fn engine_close_respond(engine: *mut sys::mrcp_engine_t) {
    // SAFETY: as engine_open_respond.
    unsafe {
        if let Some(on_close) = (*engine).event_vtable.as_ref().and_then(|vt| vt.on_close) {
            on_close(engine);
        }
    }
}

/// Every `<param name value>` of the engine block, in order.
///
/// # Safety
/// `engine` must be a live engine; from `open` on its config is set.
pub unsafe fn engine_params(engine: *const sys::mrcp_engine_t) -> Vec<(String, String)> {
    // SAFETY: config and params may be NULL (no <param> children); when set,
    // params is an apr_table_t whose elts array holds apr_table_entry_t with
    // NUL-terminated keys and values, per APR's API.
    unsafe {
        let Some(config) = (*engine).config.as_ref() else {
            return Vec::new();
        };
        if config.params.is_null() {
            return Vec::new();
        }
        let Some(arr) = sys::apr_table_elts(config.params).as_ref() else {
            return Vec::new();
        };
        let entries = arr.elts as *const sys::apr_table_entry_t;
        (0..arr.nelts.max(0) as usize)
            .filter_map(|i| {
                let e = &*entries.add(i);
                if e.key.is_null() {
                    return None;
                }
                let key = CStr::from_ptr(e.key).to_string_lossy().into_owned();
                let val =
                    if e.val.is_null() { String::new() } else { CStr::from_ptr(e.val).to_string_lossy().into_owned() };
                Some((key, val))
            })
            .collect()
    }
}

// ----------------------------------------------------------------- channel

/// Handle on a server channel; Copy, and sendable to the worker thread.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelRef(pub SendPtr<sys::mrcp_engine_channel_t>);

impl ChannelRef {
    /// # Safety
    /// `ptr` must be a channel created by `mrcp_engine_channel_create`.
    pub unsafe fn new(ptr: *mut sys::mrcp_engine_channel_t) -> Self {
        ChannelRef(SendPtr(ptr))
    }

    pub fn as_ptr(self) -> *mut sys::mrcp_engine_channel_t {
        self.0 .0
    }

    /// The server's id for this channel, for log lines.
    pub fn id(self) -> String {
        // SAFETY: the channel outlives every user of the handle (it is freed
        // with the session pool after destroy, when our threads are joined).
        unsafe { String::from_utf8_lossy(str_bytes(&(*self.as_ptr()).id)).into_owned() }
    }

    pub fn open_respond(self, ok: bool) {
        // SAFETY: the server installs event_vtable right after create_channel.
        unsafe {
            let ch = self.as_ptr();
            if let Some(on_open) = (*ch).event_vtable.as_ref().and_then(|vt| vt.on_open) {
                on_open(ch, apt_bool(ok));
            }
        }
    }

    pub fn close_respond(self) {
        // SAFETY: as open_respond.
        unsafe {
            let ch = self.as_ptr();
            if let Some(on_close) = (*ch).event_vtable.as_ref().and_then(|vt| vt.on_close) {
                on_close(ch);
            }
        }
    }

    /// mrcp_engine_channel_message_send: thread-safe, it only posts to the
    /// server's queue.
    pub fn send(self, message: Message) -> bool {
        // SAFETY: as open_respond; `message` was created from a live request.
        unsafe {
            let ch = self.as_ptr();
            match (*ch).event_vtable.as_ref().and_then(|vt| vt.on_message) {
                Some(on_message) => on_message(ch, message.as_ptr()) != FALSE,
                None => false,
            }
        }
    }

    /// Sample rate of the negotiated source descriptor, if any.
    pub fn source_rate(self) -> Option<u32> {
        // SAFETY: exported server function; returns the stream's rx
        // descriptor or NULL.
        unsafe { sys::mrcp_engine_source_stream_codec_get(self.as_ptr()).as_ref().map(|d| u32::from(d.sampling_rate)) }
    }
}

// ----------------------------------------------------------------- message

/// Handle on an MRCP message owned by the server (requests) or allocated
/// from a request's pool (our responses and events).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message(pub SendPtr<sys::mrcp_message_t>);

impl Message {
    /// # Safety
    /// `ptr` must be a live message.
    pub unsafe fn from_ptr(ptr: *mut sys::mrcp_message_t) -> Option<Self> {
        NonNull::new(ptr).map(|p| Message(SendPtr(p.as_ptr())))
    }

    pub fn as_ptr(self) -> *mut sys::mrcp_message_t {
        self.0 .0
    }

    fn raw(&self) -> &sys::mrcp_message_t {
        // SAFETY: the handle is only built from live messages (from_ptr).
        unsafe { &*self.as_ptr() }
    }

    pub fn request_id(&self) -> u32 {
        self.raw().start_line.request_id
    }

    pub fn method_id(&self) -> usize {
        self.raw().start_line.method_id
    }

    pub fn method_name(&self) -> String {
        // SAFETY: method_name points into the message's pool.
        unsafe { String::from_utf8_lossy(str_bytes(&self.raw().start_line.method_name)).into_owned() }
    }

    /// The body bytes, valid while the request is.
    pub fn body(&self) -> &[u8] {
        // SAFETY: body points into the message's pool.
        unsafe { str_bytes(&self.raw().body) }
    }

    fn generic_header(&self) -> Option<&sys::mrcp_generic_header_t> {
        // SAFETY: generic_header_accessor.data is NULL or the generic header
        // allocated for this message.
        unsafe { (self.raw().header.generic_header_accessor.data as *const sys::mrcp_generic_header_t).as_ref() }
    }

    /// apt_header_section_field_check: is the field with this absolute id
    /// present?
    fn field_present(&self, id: usize) -> bool {
        let section = &self.raw().header.header_section;
        if section.arr.is_null() || id >= section.arr_size {
            return false;
        }
        // SAFETY: arr has arr_size slots (checked above).
        unsafe { !(*section.arr.add(id)).is_null() }
    }

    pub fn generic_present(&self, id: sys::mrcp_generic_header_id) -> bool {
        self.field_present(id as usize)
    }

    /// A string field of the generic header, when present.
    fn generic_str(
        &self,
        id: sys::mrcp_generic_header_id,
        get: impl Fn(&sys::mrcp_generic_header_t) -> &sys::apt_str_t,
    ) -> Option<String> {
        if !self.generic_present(id) {
            return None;
        }
        let header = self.generic_header()?;
        // SAFETY: the string points into the message's pool.
        Some(String::from_utf8_lossy(unsafe { str_bytes(get(header)) }).into_owned())
    }

    /// Content-Type of the request, when present.
    pub fn content_type(&self) -> Option<String> {
        self.generic_str(sys::GENERIC_HEADER_CONTENT_TYPE, |g| &g.content_type)
    }

    fn synth_header(&self) -> Option<&sys::mrcp_synth_header_t> {
        // SAFETY: for synthesizer messages resource_header_accessor.data is
        // NULL or the mrcp_synth_header_t allocated for this message.
        unsafe { (self.raw().header.resource_header_accessor.data as *const sys::mrcp_synth_header_t).as_ref() }
    }

    fn synth_present(&self, id: sys::mrcp_synthesizer_header_id) -> bool {
        self.field_present(sys::GENERIC_HEADER_COUNT as usize + id as usize)
    }

    fn synth_str(
        &self,
        id: sys::mrcp_synthesizer_header_id,
        get: impl Fn(&sys::mrcp_synth_header_t) -> &sys::apt_str_t,
    ) -> Option<String> {
        if !self.synth_present(id) {
            return None;
        }
        let header = self.synth_header()?;
        // SAFETY: the string points into the message's pool.
        Some(String::from_utf8_lossy(unsafe { str_bytes(get(header)) }).into_owned())
    }

    /// The synthesizer headers that choose how a SPEAK sounds.
    pub fn voice_headers(&self) -> crate::speak_params::SpeakHeaders {
        use crate::speak_params::{Rate, SpeakHeaders, Volume};
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
            h.voice_gender = Some(synth.voice_param.gender);
        }
        if self.synth_present(sys::SYNTHESIZER_HEADER_PROSODY_RATE) {
            let rate = &synth.prosody_param.rate;
            // SAFETY: the union member read is the one `type_` says is set.
            h.prosody_rate = unsafe {
                match rate.type_ {
                    sys::PROSODY_RATE_TYPE_LABEL => Some(Rate::Label(rate.value.label)),
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
                    sys::PROSODY_VOLUME_TYPE_LABEL => Some(Volume::Label(volume.value.label)),
                    sys::PROSODY_VOLUME_TYPE_NUMERIC => Some(Volume::Numeric(volume.value.numeric)),
                    sys::PROSODY_VOLUME_TYPE_RELATIVE_CHANGE => Some(Volume::Relative(volume.value.relative)),
                    _ => None,
                }
            };
        }
        h
    }

    /// Vendor-Specific-Parameters as name/value pairs.
    pub fn vendor_params(&self) -> Vec<(String, String)> {
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
                    (
                        String::from_utf8_lossy(str_bytes(&p.name)).into_owned(),
                        String::from_utf8_lossy(str_bytes(&p.value)).into_owned(),
                    )
                }
            })
            .collect()
    }

    /// Logging-Tag, when present.
    pub fn logging_tag(&self) -> Option<String> {
        self.generic_str(sys::GENERIC_HEADER_LOGGING_TAG, |g| &g.logging_tag)
    }

    /// Cache-Control, when present.
    pub fn cache_control(&self) -> Option<String> {
        self.generic_str(sys::GENERIC_HEADER_CACHE_CONTROL, |g| &g.cache_control)
    }

    /// mrcp_response_create from this request, allocated in its pool.
    pub fn response(&self, status: sys::mrcp_status_code_e, state: sys::mrcp_request_state_e) -> Option<Message> {
        // SAFETY: exported server function; the request and its pool are live.
        let msg = unsafe { Message::from_ptr(sys::mrcp_response_create(self.as_ptr(), self.raw().pool))? };
        // SAFETY: freshly created message we own until it is sent.
        unsafe {
            (*msg.as_ptr()).start_line.status_code = status;
            (*msg.as_ptr()).start_line.request_state = state;
        }
        Some(msg)
    }

    /// mrcp_event_create from this request, allocated in its pool.
    pub fn event(&self, event_id: sys::mrcp_synthesizer_event_id, state: sys::mrcp_request_state_e) -> Option<Message> {
        // SAFETY: exported server function; the request and its pool are live.
        let msg = unsafe {
            Message::from_ptr(sys::mrcp_event_create(self.as_ptr(), event_id as sys::mrcp_method_id, self.raw().pool))?
        };
        // SAFETY: freshly created message we own until it is sent.
        unsafe { (*msg.as_ptr()).start_line.request_state = state };
        Some(msg)
    }

    /// mrcp_resource_header_prepare: the synthesizer header of a message we
    /// are building, allocated on first use through the accessor's vtable.
    fn synth_header_prepare(&mut self) -> Option<&mut sys::mrcp_synth_header_t> {
        // SAFETY: the accessor belongs to a message we built; allocate is
        // the server's allocator for this resource's header and stores the
        // result in accessor.data.
        unsafe {
            let msg = self.as_ptr();
            let accessor = &mut (*msg).header.resource_header_accessor;
            if accessor.data.is_null() {
                let allocate = accessor.vtable.as_ref().and_then(|vt| vt.allocate)?;
                allocate(accessor, (*msg).pool);
            }
            (accessor.data as *mut sys::mrcp_synth_header_t).as_mut()
        }
    }

    fn generic_header_prepare(&mut self) -> Option<&mut sys::mrcp_generic_header_t> {
        // SAFETY: as synth_header_prepare, for the generic header.
        unsafe {
            let msg = self.as_ptr();
            let accessor = &mut (*msg).header.generic_header_accessor;
            if accessor.data.is_null() {
                let allocate = accessor.vtable.as_ref().and_then(|vt| vt.allocate)?;
                allocate(accessor, (*msg).pool);
            }
            (accessor.data as *mut sys::mrcp_generic_header_t).as_mut()
        }
    }

    /// Completion-Cause and, when given, Completion-Reason.
    pub fn set_completion(&mut self, cause: sys::mrcp_synth_completion_cause_e, reason: Option<&str>) {
        let pool = self.raw().pool;
        let msg = self.as_ptr();
        let Some(header) = self.synth_header_prepare() else {
            return;
        };
        header.completion_cause = cause;
        let reason = reason.map(sanitize_header_value);
        if let Some(reason) = &reason {
            // SAFETY: pool is the message's live pool.
            unsafe { str_assign(&mut header.completion_reason, reason, pool) };
        }
        // SAFETY: exported server function on a message we built.
        unsafe {
            sys::mrcp_resource_header_property_add(msg, sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE as usize);
            if reason.is_some() {
                sys::mrcp_resource_header_property_add(msg, sys::SYNTHESIZER_HEADER_COMPLETION_REASON as usize);
            }
        }
    }

    /// Speech-Marker (SPEECH-MARKER events, SPEAK's IN-PROGRESS and
    /// SPEAK-COMPLETE).
    pub fn set_speech_marker(&mut self, value: &str) {
        let pool = self.raw().pool;
        let msg = self.as_ptr();
        let Some(header) = self.synth_header_prepare() else {
            return;
        };
        let value = sanitize_header_value(value);
        // SAFETY: pool is the message's live pool.
        unsafe { str_assign(&mut header.speech_marker, &value, pool) };
        // SAFETY: exported server function on a message we built.
        unsafe { sys::mrcp_resource_header_property_add(msg, sys::SYNTHESIZER_HEADER_SPEECH_MARKER as usize) };
    }

    /// Active-Request-Id-List (STOP and BARGE-IN-OCCURRED responses).
    pub fn set_active_request_ids(&mut self, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        let msg = self.as_ptr();
        let Some(header) = self.generic_header_prepare() else {
            return;
        };
        let list = &mut header.active_request_id_list;
        let n = ids.len().min(list.ids.len());
        list.ids[..n].copy_from_slice(&ids[..n]);
        list.count = n;
        // SAFETY: exported server function on a message we built.
        unsafe { sys::mrcp_generic_header_property_add(msg, sys::GENERIC_HEADER_ACTIVE_REQUEST_ID_LIST as usize) };
    }
}

/// A header value is one line of printable text: no CR/LF (that would
/// inject header lines), bounded in length.
pub fn sanitize_header_value(value: &str) -> String {
    const MAX: usize = 240;
    let mut out: String =
        value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned();
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

// ------------------------------------------------------------------ stream

/// mpf_codec_capabilities_add on a source stream's capabilities.
///
/// # Safety
/// `caps` must come from mpf_stream_capabilities_create.
pub unsafe fn codec_capabilities_add(
    caps: *mut sys::mpf_stream_capabilities_t,
    sample_rates: i32,
    codec: &str,
) -> bool {
    // SAFETY: attrib_arr is an APR array of mpf_codec_attribs_t owned by
    // the capabilities' pool; apr_array_push returns room for one element.
    unsafe {
        let arr = (*caps).codecs.attrib_arr;
        if arr.is_null() {
            return false;
        }
        let attribs = sys::apr_array_push(arr) as *mut sys::mpf_codec_attribs_t;
        if attribs.is_null() {
            return false;
        }
        ptr::write_bytes(attribs, 0, 1);
        str_assign(&mut (*attribs).name, codec, (*arr).pool);
        (*attribs).sample_rates = sample_rates;
        (*attribs).bits_per_sample = 0;
        (*attribs).frame_duration = sys::CODEC_FRAME_TIME_BASE as u16;
        true
    }
}

/// Erases a Rust object into the `void *` the server stores for us.
pub fn into_obj<T>(value: Box<T>) -> *mut c_void {
    Box::into_raw(value).cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(sanitize_header_value("a\r\nInjected: x"), "a  Injected: x");
        let long = "é".repeat(300);
        let s = sanitize_header_value(&long);
        assert!(s.len() <= 240 && s.chars().all(|c| c == 'é'));
    }
}
