//! The engine-side server functions: creating the engine, its channels and
//! their media terminations, stream capabilities, and reading params and the
//! negotiated codec.

use std::ffi::{c_char, c_void};

use super::apr::{apr_table_get, array_make_raw};
use super::context::violation;
use super::pool;
use crate::sys;

/// Our `mpf_termination_t`: just the audio stream (UniMRCP's raw
/// termination holds more, but the plugin never looks inside).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Termination {
    magic: u64,
    pub stream: *mut sys::mpf_audio_stream_t,
}

const TERMINATION_MAGIC: u64 = 0x6d72_6574_6d69_6873; // "shimterm"

/// The audio stream of a termination made by
/// `mrcp_engine_audio_termination_create`, if it is one.
///
/// # Safety
/// `term` must be NULL or a termination pointer the plugin passed along.
pub(crate) unsafe fn stream_of(term: *const sys::mpf_termination_t) -> Option<*mut sys::mpf_audio_stream_t> {
    if term.is_null() || (term as usize) & (std::mem::align_of::<Termination>() - 1) != 0 {
        return None;
    }
    // SAFETY: terminations we make live in pools; the magic tells ours apart.
    let t = unsafe { &*term.cast::<Termination>() };
    (t.magic == TERMINATION_MAGIC && !t.stream.is_null()).then_some(t.stream)
}

#[no_mangle]
pub unsafe extern "C" fn mrcp_engine_create(
    resource_id: sys::mrcp_resource_id,
    obj: *mut c_void,
    vtable: *const sys::mrcp_engine_method_vtable_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_engine_t {
    if vtable.is_null() {
        violation("mrcp_engine_create with a NULL method vtable");
        return std::ptr::null_mut();
    }
    if resource_id != sys::MRCP_SYNTHESIZER_RESOURCE as usize {
        violation(format!("mrcp_engine_create for resource {resource_id}: this host serves a synthesizer (0)"));
    }
    let engine = sys::mrcp_engine_t {
        id: std::ptr::null(),
        resource_id,
        obj,
        method_vtable: vtable,
        event_vtable: std::ptr::null(),
        event_obj: std::ptr::null_mut(),
        codec_manager: std::ptr::null(),
        dir_layout: std::ptr::null(),
        config: std::ptr::null_mut(),
        cur_channel_count: 0,
        is_open: 0,
        pool,
        create_state_machine: None,
    };
    pool::value_into_raw(pool, engine).unwrap_or_else(|| {
        violation(format!("mrcp_engine_create: {} is not a live pool", pool::name_of(pool)));
        std::ptr::null_mut()
    })
}

/// A `<param>` of the engine's configuration; NULL when the engine has no
/// config or no params (a real `<engine>` element without children).
#[no_mangle]
pub unsafe extern "C" fn mrcp_engine_param_get(
    engine: *const sys::mrcp_engine_t,
    name: *const c_char,
) -> *const c_char {
    if engine.is_null() || name.is_null() {
        return std::ptr::null();
    }
    // SAFETY: a non-NULL engine is the one the plugin created.
    let config = unsafe { (*engine).config };
    if config.is_null() {
        return std::ptr::null();
    }
    // SAFETY: config is the host's mrcp_engine_config_t.
    let params = unsafe { (*config).params };
    if params.is_null() {
        return std::ptr::null();
    }
    // SAFETY: params is a table the host made.
    unsafe { apr_table_get(params, name) }
}

#[no_mangle]
pub unsafe extern "C" fn mrcp_engine_channel_create(
    engine: *mut sys::mrcp_engine_t,
    method_vtable: *const sys::mrcp_engine_channel_method_vtable_t,
    method_obj: *mut c_void,
    termination: *mut sys::mpf_termination_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_engine_channel_t {
    if engine.is_null() || method_vtable.is_null() {
        violation("mrcp_engine_channel_create with a NULL engine or method vtable");
        return std::ptr::null_mut();
    }
    let channel = sys::mrcp_engine_channel_t {
        method_vtable,
        method_obj,
        event_vtable: std::ptr::null(),
        event_obj: std::ptr::null_mut(),
        termination,
        engine,
        id: sys::apt_str_t { buf: std::ptr::null_mut(), length: 0 },
        mrcp_version: sys::MRCP_VERSION_UNKNOWN,
        is_open: 0,
        pool,
        attribs: std::ptr::null_mut(),
    };
    pool::value_into_raw(pool, channel).unwrap_or_else(|| {
        violation(format!("mrcp_engine_channel_create: {} is not a live pool", pool::name_of(pool)));
        std::ptr::null_mut()
    })
}

/// Builds a termination holding one audio stream. As in UniMRCP, a stream
/// that can receive (a source, what a synthesizer provides) must have
/// read_frame and one that can send must have write_frame; otherwise NULL.
#[no_mangle]
pub unsafe extern "C" fn mrcp_engine_audio_termination_create(
    obj: *mut c_void,
    stream_vtable: *const sys::mpf_audio_stream_vtable_t,
    capabilities: *mut sys::mpf_stream_capabilities_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mpf_termination_t {
    if stream_vtable.is_null() || capabilities.is_null() {
        violation("mrcp_engine_audio_termination_create with a NULL vtable or capabilities");
        return std::ptr::null_mut();
    }
    // SAFETY: both checked non-NULL; they are the plugin's objects.
    let (vt, direction) = unsafe { (&*stream_vtable, (*capabilities).direction) };
    if direction & sys::STREAM_DIRECTION_RECEIVE != 0 && vt.read_frame.is_none() {
        violation("audio termination refused: a source stream (RECEIVE) needs read_frame");
        return std::ptr::null_mut();
    }
    if direction & sys::STREAM_DIRECTION_SEND != 0 && vt.write_frame.is_none() {
        violation("audio termination refused: a sink stream (SEND) needs write_frame");
        return std::ptr::null_mut();
    }
    let stream = sys::mpf_audio_stream_t {
        obj,
        vtable: stream_vtable,
        termination: std::ptr::null_mut(),
        capabilities,
        direction,
        rx_descriptor: std::ptr::null_mut(),
        rx_event_descriptor: std::ptr::null_mut(),
        tx_descriptor: std::ptr::null_mut(),
        tx_event_descriptor: std::ptr::null_mut(),
    };
    let Some(stream) = pool::value_into_raw(pool, stream) else {
        violation(format!("mrcp_engine_audio_termination_create: {} is not a live pool", pool::name_of(pool)));
        return std::ptr::null_mut();
    };
    let Some(term) = pool::value_into_raw(pool, Termination { magic: TERMINATION_MAGIC, stream }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: stream was just allocated.
    unsafe { (*stream).termination = term.cast() };
    term.cast()
}

/// The codec negotiated for the channel's source stream (its rx descriptor).
#[no_mangle]
pub unsafe extern "C" fn mrcp_engine_source_stream_codec_get(
    channel: *const sys::mrcp_engine_channel_t,
) -> *const sys::mpf_codec_descriptor_t {
    if channel.is_null() {
        return std::ptr::null();
    }
    // SAFETY: a channel made by mrcp_engine_channel_create.
    match unsafe { stream_of((*channel).termination) } {
        // SAFETY: the stream belongs to the channel's termination.
        Some(stream) => unsafe { (*stream).rx_descriptor },
        None => std::ptr::null(),
    }
}

/// Capabilities with an empty codec list (of mpf_codec_attribs_t) and named
/// events allowed, in the given direction.
#[no_mangle]
pub unsafe extern "C" fn mpf_stream_capabilities_create(
    direction: sys::mpf_stream_direction_e,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mpf_stream_capabilities_t {
    let Some(arr) = array_make_raw(pool, 1, std::mem::size_of::<sys::mpf_codec_attribs_t>()) else {
        violation(format!("mpf_stream_capabilities_create: {} is not a live pool", pool::name_of(pool)));
        return std::ptr::null_mut();
    };
    let caps = sys::mpf_stream_capabilities_t {
        direction,
        codecs: sys::mpf_codec_capabilities_t { attrib_arr: arr, allow_named_events: 1 },
    };
    pool::value_into_raw(pool, caps).unwrap_or(std::ptr::null_mut())
}
