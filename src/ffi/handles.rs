//! Typed handles on the server's objects (engine, channel, pool) and
//! UniMRCP's `static inline` helpers re-implemented (the server library
//! does not export them).
//!
//! All dereferences of server-owned structures happen in `ffi`, each under
//! a `// SAFETY:` note saying which server guarantee it relies on.

use std::ffi::CStr;
use std::ptr;
use std::slice;

use super::sys;
use crate::mrcp::{Origin, Reply};

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

/// An apt_str_t as an owned string (lossy UTF-8).
///
/// # Safety
/// As [`str_bytes`].
pub unsafe fn str_owned(s: &sys::apt_str_t) -> String {
    // SAFETY: forwarded contract.
    String::from_utf8_lossy(unsafe { str_bytes(s) }).into_owned()
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

/// A raw pointer that may cross to other threads. The server keeps the
/// pointee alive for the documented span (see each use).
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

/// Handle on the server's engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineRef(SendPtr<sys::mrcp_engine_t>);

impl EngineRef {
    /// # Safety
    /// `ptr` must be the engine the server created us with; it outlives
    /// every use of the handle (destroy is the server's last call).
    pub(super) unsafe fn new(ptr: *mut sys::mrcp_engine_t) -> Self {
        EngineRef(SendPtr(ptr))
    }

    pub(super) fn as_ptr(self) -> *mut sys::mrcp_engine_t {
        self.0 .0
    }

    /// mrcp_engine_open_respond.
    pub fn open_respond(self, ok: bool) {
        // SAFETY: the server installs event_vtable before calling open.
        unsafe {
            let engine = self.as_ptr();
            if let Some(on_open) = (*engine).event_vtable.as_ref().and_then(|vt| vt.on_open) {
                on_open(engine, apt_bool(ok));
            }
        }
    }

    /// mrcp_engine_close_respond: may be called from any thread.
    pub fn close_respond(self) {
        // SAFETY: as open_respond; the engine outlives close.
        unsafe {
            let engine = self.as_ptr();
            if let Some(on_close) = (*engine).event_vtable.as_ref().and_then(|vt| vt.on_close) {
                on_close(engine);
            }
        }
    }

    /// Every `<param name value>` of the engine block, in order (from open on).
    pub fn params(self) -> Vec<(String, String)> {
        // SAFETY: config and params may be NULL (no <param> children); when
        // set, params is an apr_table_t whose elts array holds
        // apr_table_entry_t with NUL-terminated keys and values, per APR.
        unsafe {
            let Some(config) = (*self.as_ptr()).config.as_ref() else {
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
                    let val = if e.val.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(e.val).to_string_lossy().into_owned()
                    };
                    Some((key, val))
                })
                .collect()
        }
    }
}

// ----------------------------------------------------------------- channel

/// Handle on a server channel; Copy, and sendable to the worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelRef(SendPtr<sys::mrcp_engine_channel_t>);

impl ChannelRef {
    /// # Safety
    /// `ptr` must be a channel created by `mrcp_engine_channel_create`; the
    /// server frees it with the session pool after destroy, when our threads
    /// are joined.
    pub(super) unsafe fn new(ptr: *mut sys::mrcp_engine_channel_t) -> Self {
        ChannelRef(SendPtr(ptr))
    }

    pub(super) fn as_ptr(self) -> *mut sys::mrcp_engine_channel_t {
        self.0 .0
    }

    /// The server's id for this channel, for log lines.
    pub fn id(self) -> String {
        // SAFETY: the channel outlives every user of the handle.
        unsafe { str_owned(&(*self.as_ptr()).id) }
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

    /// Builds `reply` from the request it answers and posts it to the
    /// server's queue (mrcp_engine_channel_message_send: thread-safe). False,
    /// logged, when the server would not take it.
    pub fn send(self, to: Origin, reply: &Reply) -> bool {
        let Some(message) = super::message::build(to, reply) else {
            log::error!("[{}] could not create {}", self.id(), super::message::describe(to, reply));
            return false;
        };
        // SAFETY: as open_respond; `message` was created from a live request.
        let sent = unsafe {
            let ch = self.as_ptr();
            match (*ch).event_vtable.as_ref().and_then(|vt| vt.on_message) {
                Some(on_message) => on_message(ch, message) != FALSE,
                None => false,
            }
        };
        if !sent {
            log::error!("[{}] the server did not take {}", self.id(), super::message::describe(to, reply));
        }
        sent
    }

    /// Sample rate of the negotiated source descriptor, if any.
    pub fn source_rate(self) -> Option<u32> {
        // SAFETY: exported server function; returns the stream's rx
        // descriptor or NULL.
        unsafe { sys::mrcp_engine_source_stream_codec_get(self.as_ptr()).as_ref().map(|d| u32::from(d.sampling_rate)) }
    }
}

/// mpf_codec_capabilities_add on a source stream's capabilities.
///
/// # Safety
/// `caps` must come from mpf_stream_capabilities_create.
pub(super) unsafe fn codec_capabilities_add(
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

/// The MPF_SAMPLE_RATE_* mask of `rates` (those UniMRCP has a flag for).
pub(super) fn sample_rate_mask(rates: &[u32]) -> i32 {
    rates
        .iter()
        .map(|rate| match rate {
            8000 => sys::MPF_SAMPLE_RATE_8000,
            16000 => sys::MPF_SAMPLE_RATE_16000,
            32000 => sys::MPF_SAMPLE_RATE_32000,
            48000 => sys::MPF_SAMPLE_RATE_48000,
            _ => 0,
        })
        .fold(0, |mask, flag| mask | flag as i32)
}
