//! MRCP messages: `mrcp_response_create`, `mrcp_event_create`, the header
//! `property_add` functions, and copying a message the plugin sent into a
//! `Recorded`.

use std::ffi::c_char;
use std::time::Instant;

use super::context::violation;
use super::headers::{
    generic_value, section_fields, section_init, section_set, str_of, synth_value, GENERIC_COUNT, GENERIC_NAMES,
    GENERIC_VTABLE, SYNTH_COUNT, SYNTH_NAMES, SYNTH_VTABLE,
};
use super::pool;
use super::record::{Kind, Recorded};
use crate::sys;

/// Our `mrcp_resource_t` for the synthesizer: messages point at it; the
/// plugin never looks inside.
#[repr(C)]
pub struct Resource {
    name: *const c_char,
}
// SAFETY: immutable, points to a static string.
unsafe impl Sync for Resource {}

pub static SYNTH_RESOURCE: Resource = Resource { name: c"speechsynth".as_ptr() };

pub const EVENT_NAMES: [&str; 2] = ["SPEECH-MARKER", "SPEAK-COMPLETE"];

/// A fresh message in `pool`, initialised as UniMRCP's message create does
/// for a synthesizer message: unknown start line, empty headers with the
/// synthesizer accessors, no body.
///
/// # Safety
/// `pool` must be NULL or a pointer the plugin/host got as a pool.
pub(crate) unsafe fn message_alloc(pool: *mut sys::apr_pool_t) -> Option<*mut sys::mrcp_message_t> {
    let msg =
        pool::alloc_from_raw(pool, std::mem::size_of::<sys::mrcp_message_t>(), true)?.cast::<sys::mrcp_message_t>();
    // SAFETY: msg is a fresh zeroed message in a live pool.
    unsafe {
        let m = &mut *msg;
        m.start_line.message_type = sys::MRCP_MESSAGE_TYPE_UNKNOWN;
        m.start_line.version = sys::MRCP_VERSION_UNKNOWN;
        m.start_line.status_code = sys::MRCP_STATUS_CODE_UNKNOWN;
        m.start_line.request_state = sys::MRCP_REQUEST_STATE_UNKNOWN;
        m.header.generic_header_accessor.vtable = &GENERIC_VTABLE.0;
        m.header.resource_header_accessor.vtable = &SYNTH_VTABLE.0;
        if !section_init(&mut m.header.header_section, pool) {
            return None;
        }
        m.resource = (&SYNTH_RESOURCE as *const Resource).cast();
        m.pool = pool;
    }
    Some(msg)
}

/// Checks the request argument of the create functions.
unsafe fn checked_request<'a>(what: &str, request: *const sys::mrcp_message_t) -> Option<&'a sys::mrcp_message_t> {
    if request.is_null() {
        violation(format!("{what}(NULL request)"));
        return None;
    }
    // SAFETY: non-NULL; the plugin passes a request the host gave it.
    let req = unsafe { &*request };
    if req.start_line.message_type != sys::MRCP_MESSAGE_TYPE_REQUEST {
        violation(format!("{what}: the message passed is not a request (type {})", req.start_line.message_type));
    }
    Some(req)
}

/// A response to `request`: 200, COMPLETE, with the request's id, version,
/// method and channel.
#[no_mangle]
pub unsafe extern "C" fn mrcp_response_create(
    request: *const sys::mrcp_message_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_message_t {
    // SAFETY: forwarded contract.
    let Some(req) = (unsafe { checked_request("mrcp_response_create", request) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: pool comes from the plugin.
    let Some(msg) = (unsafe { message_alloc(pool) }) else {
        violation(format!("mrcp_response_create from {}: not a live pool", pool::name_of(pool)));
        return std::ptr::null_mut();
    };
    // SAFETY: msg is fresh; strings are shared with the request (as UniMRCP
    // does), which lives at least as long.
    unsafe {
        let m = &mut *msg;
        m.start_line.message_type = sys::MRCP_MESSAGE_TYPE_RESPONSE;
        m.start_line.version = req.start_line.version;
        m.start_line.request_id = req.start_line.request_id;
        m.start_line.method_id = req.start_line.method_id;
        m.start_line.method_name = req.start_line.method_name;
        m.start_line.status_code = sys::MRCP_STATUS_CODE_SUCCESS;
        m.start_line.request_state = sys::MRCP_REQUEST_STATE_COMPLETE;
        m.channel_id = req.channel_id;
        m.resource = req.resource;
    }
    msg
}

/// An event for `request`: `event_id` becomes the method id, its name the
/// method name; request id, version and channel are the request's. The
/// request state is left unset (the plugin sets COMPLETE/IN-PROGRESS).
#[no_mangle]
pub unsafe extern "C" fn mrcp_event_create(
    request: *const sys::mrcp_message_t,
    event_id: sys::mrcp_method_id,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_message_t {
    // SAFETY: forwarded contract.
    let Some(req) = (unsafe { checked_request("mrcp_event_create", request) }) else {
        return std::ptr::null_mut();
    };
    let Some(name) = EVENT_NAMES.get(event_id) else {
        violation(format!("mrcp_event_create: no synthesizer event has id {event_id}"));
        return std::ptr::null_mut();
    };
    // SAFETY: pool comes from the plugin.
    let Some(msg) = (unsafe { message_alloc(pool) }) else {
        violation(format!("mrcp_event_create from {}: not a live pool", pool::name_of(pool)));
        return std::ptr::null_mut();
    };
    let Some(name_buf) = pool::dup_into_raw(pool, name.as_bytes()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: msg is fresh; see mrcp_response_create for shared strings.
    unsafe {
        let m = &mut *msg;
        m.start_line.message_type = sys::MRCP_MESSAGE_TYPE_EVENT;
        m.start_line.version = req.start_line.version;
        m.start_line.request_id = req.start_line.request_id;
        m.start_line.method_id = event_id;
        m.start_line.method_name = sys::apt_str_t { buf: name_buf, length: name.len() };
        m.channel_id = req.channel_id;
        m.resource = req.resource;
    }
    msg
}

/// Marks generic header field `id` present, generating its text from the
/// header data (which must have been prepared).
#[no_mangle]
pub unsafe extern "C" fn mrcp_generic_header_property_add(
    message: *mut sys::mrcp_message_t,
    id: sys::apr_size_t,
) -> sys::apt_bool_t {
    // SAFETY: forwarded contract.
    unsafe { property_add(message, id, true) }.into()
}

/// Marks synthesizer header field `id` present (section slot 16 + id).
#[no_mangle]
pub unsafe extern "C" fn mrcp_resource_header_property_add(
    message: *mut sys::mrcp_message_t,
    id: sys::apr_size_t,
) -> sys::apt_bool_t {
    // SAFETY: forwarded contract.
    unsafe { property_add(message, id, false) }.into()
}

/// # Safety
/// `message` must be NULL or a message made by the host's functions.
pub(crate) unsafe fn property_add(message: *mut sys::mrcp_message_t, id: usize, generic: bool) -> bool {
    let what = if generic { "mrcp_generic_header_property_add" } else { "mrcp_resource_header_property_add" };
    if message.is_null() {
        violation(format!("{what}(NULL, {id})"));
        return false;
    }
    // SAFETY: non-NULL message made by us.
    let m = unsafe { &mut *message };
    let (accessor, count) = if generic {
        (&m.header.generic_header_accessor, GENERIC_COUNT)
    } else {
        (&m.header.resource_header_accessor, SYNTH_COUNT)
    };
    if id >= count {
        violation(format!("{what}: id {id} out of range"));
        return false;
    }
    if accessor.data.is_null() {
        violation(format!("{what}({id}) before the header was prepared (allocated)"));
        return false;
    }
    // SAFETY: data was allocated by our accessor with the matching type.
    let value = unsafe {
        if generic {
            generic_value(&*accessor.data.cast::<sys::mrcp_generic_header_t>(), id)
        } else {
            synth_value(&*accessor.data.cast::<sys::mrcp_synth_header_t>(), id)
        }
    };
    let (name, slot) = if generic { (GENERIC_NAMES[id], id) } else { (SYNTH_NAMES[id], GENERIC_COUNT + id) };
    let Some(value) = value else {
        violation(format!("{what}: {name} has no valid value to send"));
        return false;
    };
    // SAFETY: the section belongs to this message, allocated from m.pool.
    let ok = unsafe { section_set(&mut m.header.header_section, m.pool, slot, name, &value) };
    if !ok {
        violation(format!("{what}({name}): could not add the field (message pool {})", pool::name_of(m.pool)));
    }
    ok
}

/// Copies everything out of a message the plugin sent.
///
/// # Safety
/// `msg` must be non-NULL and point to a message built with the host's
/// functions.
pub(crate) unsafe fn copy_out(msg: *const sys::mrcp_message_t, thread: String, at: Instant) -> Recorded {
    // SAFETY: per the function contract.
    let m = unsafe { &*msg };
    let sl = &m.start_line;
    // SAFETY: the section belongs to the message.
    let fields = unsafe { section_fields(&m.header.header_section) };
    let field = |name: &str| fields.iter().find(|(_, n, _)| n == name).map(|(_, _, v)| v.clone());
    let kind = match sl.message_type {
        sys::MRCP_MESSAGE_TYPE_RESPONSE => Kind::Response,
        sys::MRCP_MESSAGE_TYPE_EVENT => Kind::Event,
        other => Kind::Other(other),
    };
    let body = if m.body.buf.is_null() {
        Vec::new()
    } else {
        // SAFETY: a non-NULL body points to `length` bytes.
        unsafe { std::slice::from_raw_parts(m.body.buf.cast::<u8>(), m.body.length) }.to_vec()
    };
    Recorded {
        at,
        thread,
        kind,
        request_id: sl.request_id,
        method_id: sl.method_id,
        // SAFETY: method_name is an apt_str_t of the message.
        method_name: unsafe { str_of(&sl.method_name) },
        status_code: sl.status_code,
        request_state: sl.request_state,
        completion_cause: field("Completion-Cause")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok())),
        completion_reason: field("Completion-Reason"),
        active_request_ids: field("Active-Request-Id-List")
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect()),
        speech_marker: field("Speech-Marker"),
        header_fields: fields.into_iter().map(|(_, n, v)| (n, v)).collect(),
        body,
    }
}

/// The session id in a message's channel identifier.
///
/// # Safety
/// `msg` must be a valid message.
pub(crate) unsafe fn session_id_of(msg: *const sys::mrcp_message_t) -> String {
    // SAFETY: per the function contract.
    unsafe { str_of(&(*msg).channel_id.session_id) }
}
