//! The server's vtables, filled with generic trampolines over two traits.
//!
//! The plugin implements [`Engine`] and [`Channel`] in plain, safe Rust;
//! every `extern "C"` function the server can call is defined here, once,
//! and each runs its body through [`guard`](super::panic::guard). A new
//! callback is added here or nowhere, so none can miss the guard. Each
//! trampoline also owns the callback's contract under a panic: open and
//! close are always answered, a request always gets its response, a frame
//! is always returned.

use std::ffi::c_void;
use std::marker::PhantomData;

use super::handles::{apt_bool, codec_capabilities_add, sample_rate_mask, ChannelRef, EngineRef, FALSE, TRUE};
use super::message;
use super::panic::guard;
use super::sys;
use crate::mrcp::{Completion, Origin, Reply, Request, Status};

/// The engine object (`engine->obj`). Called on the "MRCP Server" thread,
/// destroy on the server's main thread.
pub trait Engine: Send + Sync + Sized + 'static {
    type Channel: Channel;

    /// Reads the params and gets ready; the trampoline answers open with
    /// the result.
    fn open(&self, engine: EngineRef) -> bool;
    /// Must end with `engine.close_respond()`, now or from another thread.
    fn close(&self, engine: EngineRef);
    /// A channel object for a new session; the trampoline creates the
    /// server's channel around it and then calls `attach`.
    fn new_channel(&self) -> Option<Self::Channel>;
    /// The server's channel exists: start what serves it. `false` undoes
    /// the channel.
    fn attach(&self, channel: &Self::Channel, ch: ChannelRef) -> bool;
    /// The server is done with the engine (after close).
    fn destroy(&self);
}

/// A channel object (`channel->method_obj`). Channel methods run on the
/// "MRCP Server" thread.
pub trait Channel: Send + Sync + Sized + 'static {
    /// The LPCM rates the channel's source stream offers.
    const SAMPLE_RATES: &'static [u32];
    /// What its audio stream calls.
    type Stream: Stream;

    /// The audio stream's `obj`: it must stay at the same address for as
    /// long as the channel object lives. The media thread reaches it
    /// straight from the stream, not through the channel object: with many
    /// channels per 10 ms tick, every pointer hop in `read_frame` is a cache
    /// miss (bench [10]).
    fn stream(&self) -> &Self::Stream;

    /// Must end with `ch.open_respond(..)`.
    fn open(&self, ch: ChannelRef);
    /// Must end with `ch.close_respond()`, now or from another thread.
    fn close(&self, ch: ChannelRef);
    /// Must answer `request`, now or later.
    fn process_request(&self, ch: ChannelRef, request: Request);
    /// process_request panicked: end whatever the request started (true),
    /// or leave the answer to the trampoline (false).
    fn request_failed(&self, ch: ChannelRef, origin: Origin) -> bool;
    /// Last call: after close and close_rx, nothing else uses the channel.
    fn destroy(&self, ch: ChannelRef);
}

/// A channel's audio stream (the termination's `obj`). Its methods run on
/// the "MPF Scheduler" thread.
pub trait Stream: Send + Sync + 'static {
    fn open_rx(&self, rate: u32);
    fn close_rx(&self);
    /// Fills `out` with the next 10 ms; true when it holds audio. Bounded
    /// work: no allocation, no blocking lock, no logging.
    fn read_frame(&self, out: &mut [u8]) -> bool;
}

/// The vtables of an engine type, as 'static constants.
pub struct Vtables<E>(PhantomData<E>);

impl<E: Engine> Vtables<E> {
    pub const ENGINE: &'static sys::mrcp_engine_method_vtable_t = &sys::mrcp_engine_method_vtable_t {
        destroy: Some(engine_destroy::<E>),
        open: Some(engine_open::<E>),
        close: Some(engine_close::<E>),
        create_channel: Some(engine_create_channel::<E>),
    };
    const CHANNEL: &'static sys::mrcp_engine_channel_method_vtable_t = &sys::mrcp_engine_channel_method_vtable_t {
        destroy: Some(channel_destroy::<E::Channel>),
        open: Some(channel_open::<E::Channel>),
        close: Some(channel_close::<E::Channel>),
        process_request: Some(channel_process_request::<E::Channel>),
    };
    const STREAM: &'static sys::mpf_audio_stream_vtable_t = &sys::mpf_audio_stream_vtable_t {
        destroy: Some(stream_destroy),
        open_rx: Some(stream_open_rx::<<E::Channel as Channel>::Stream>),
        close_rx: Some(stream_close_rx::<<E::Channel as Channel>::Stream>),
        read_frame: Some(stream_read_frame::<<E::Channel as Channel>::Stream>),
        open_tx: None,
        close_tx: None,
        write_frame: None,
        trace: None,
    };
}

/// Erases a Rust object into the `void *` the server stores for us.
fn into_obj<T>(value: Box<T>) -> *mut c_void {
    Box::into_raw(value).cast()
}

// ------------------------------------------------------------------ engine

/// # Safety
/// `engine` is the engine we created in mrcp_plugin_create.
unsafe fn engine_obj<'a, E>(engine: *mut sys::mrcp_engine_t) -> Option<&'a E> {
    // SAFETY: engine->obj is our leaked Box<E>, alive until destroy.
    unsafe { engine.as_ref().and_then(|e| (e.obj as *const E).as_ref()) }
}

/// mrcp_engine_create around `obj`, for mrcp_plugin_create.
///
/// # Safety
/// `pool` is the pool the server passed to mrcp_plugin_create.
pub unsafe fn create_engine<E: Engine>(obj: E, pool: *mut sys::apr_pool_t) -> *mut sys::mrcp_engine_t {
    let obj = into_obj(Box::new(obj));
    // SAFETY: exported server function; our vtable is 'static and obj stays
    // valid until engine destroy frees it.
    let engine = unsafe {
        sys::mrcp_engine_create(
            sys::MRCP_SYNTHESIZER_RESOURCE as sys::mrcp_resource_id,
            obj,
            Vtables::<E>::ENGINE,
            pool,
        )
    };
    if engine.is_null() {
        // SAFETY: the server did not take obj; reclaim it.
        drop(unsafe { Box::from_raw(obj as *mut E) });
        log::error!("mrcp_engine_create failed");
    }
    engine
}

unsafe extern "C" fn engine_destroy<E: Engine>(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    // Take our object out first, so that it is freed even if the body
    // panics (the guard would otherwise skip the free).
    // SAFETY: destroy is the server's last call on the engine; obj is the
    // Box<E> we leaked in create_engine.
    let obj = unsafe {
        let Some(e) = engine.as_mut() else { return FALSE };
        let obj = std::mem::replace(&mut e.obj, std::ptr::null_mut()) as *mut E;
        if obj.is_null() {
            return FALSE;
        }
        Box::from_raw(obj)
    };
    let done = guard("engine_destroy", || obj.destroy());
    let freed = guard("engine_destroy (free)", move || drop(obj));
    apt_bool(done.is_some() && freed.is_some())
}

unsafe extern "C" fn engine_open<E: Engine>(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    // SAFETY: our engine; it outlives the call.
    let engine_ref = unsafe { EngineRef::new(engine) };
    // SAFETY: our engine.
    let ok = guard("engine_open", || unsafe { engine_obj::<E>(engine) }.is_some_and(|e| e.open(engine_ref)));
    engine_ref.open_respond(ok == Some(true));
    TRUE
}

unsafe extern "C" fn engine_close<E: Engine>(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    // SAFETY: our engine; it outlives close.
    let engine_ref = unsafe { EngineRef::new(engine) };
    let done = guard("engine_close", || {
        // SAFETY: our engine.
        let obj = unsafe { engine_obj::<E>(engine) }?;
        obj.close(engine_ref);
        Some(())
    });
    if done.flatten().is_none() {
        engine_ref.close_respond();
    }
    TRUE
}

unsafe extern "C" fn engine_create_channel<E: Engine>(
    engine: *mut sys::mrcp_engine_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_engine_channel_t {
    guard("create_channel", || {
        // SAFETY: our engine, and the session pool the server passed.
        unsafe { create_channel::<E>(engine, pool) }
    })
    .unwrap_or(std::ptr::null_mut())
}

/// # Safety
/// As engine_create_channel.
unsafe fn create_channel<E: Engine>(
    engine: *mut sys::mrcp_engine_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_engine_channel_t {
    // SAFETY: our engine.
    let Some(this) = (unsafe { engine_obj::<E>(engine) }) else {
        return std::ptr::null_mut();
    };
    let Some(channel) = this.new_channel() else {
        return std::ptr::null_mut();
    };
    let obj = into_obj(Box::new(channel));
    // SAFETY: obj is the Box just made; the stream lives as long as it.
    let stream_obj = unsafe { (*(obj as *const E::Channel)).stream() } as *const _ as *mut c_void;
    let rates = sample_rate_mask(E::Channel::SAMPLE_RATES);
    // SAFETY: exported server functions with the session pool; obj and
    // stream_obj stay valid until channel destroy; our vtables are 'static.
    let ch = unsafe {
        let caps = sys::mpf_stream_capabilities_create(sys::STREAM_DIRECTION_RECEIVE, pool);
        let termination = if caps.is_null() || !codec_capabilities_add(caps, rates, "LPCM") {
            std::ptr::null_mut()
        } else {
            sys::mrcp_engine_audio_termination_create(stream_obj, Vtables::<E>::STREAM, caps, pool)
        };
        if termination.is_null() {
            std::ptr::null_mut()
        } else {
            sys::mrcp_engine_channel_create(engine, Vtables::<E>::CHANNEL, obj, termination, pool)
        }
    };
    if ch.is_null() {
        log::error!("create_channel: the server refused the termination or channel");
        // SAFETY: obj came from into_obj above and nobody else holds it.
        drop(unsafe { Box::from_raw(obj as *mut E::Channel) });
        return std::ptr::null_mut();
    }
    // SAFETY: ch was just created by the server; obj is ours.
    let (chref, channel) = unsafe { (ChannelRef::new(ch), &*(obj as *const E::Channel)) };
    if !this.attach(channel, chref) {
        // SAFETY: the server never saw this channel in use; reclaim our
        // object (its pool frees the rest).
        unsafe {
            (*ch).method_obj = std::ptr::null_mut();
            drop(Box::from_raw(obj as *mut E::Channel));
        }
        return std::ptr::null_mut();
    }
    ch
}

// ----------------------------------------------------------------- channel

/// # Safety
/// Called by the server with a channel we created.
unsafe fn channel_obj<'a, C>(ch: *mut sys::mrcp_engine_channel_t) -> Option<(&'a C, ChannelRef)> {
    // SAFETY: method_obj is the Box<C> we leaked in create_channel, alive
    // until destroy; the channel outlives the call.
    unsafe { ch.as_ref().and_then(|c| (c.method_obj as *const C).as_ref()).map(|obj| (obj, ChannelRef::new(ch))) }
}

unsafe extern "C" fn channel_destroy<C: Channel>(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    // As engine_destroy: out first, so a panicking body cannot leak it.
    // SAFETY: the server calls destroy once, last, on a channel we made.
    let (channel, chref) = unsafe {
        let Some(c) = ch.as_mut() else { return FALSE };
        let obj = std::mem::replace(&mut c.method_obj, std::ptr::null_mut()) as *mut C;
        if obj.is_null() {
            return FALSE;
        }
        (Box::from_raw(obj), ChannelRef::new(ch))
    };
    let done = guard("channel_destroy", || channel.destroy(chref));
    let freed = guard("channel_destroy (free)", move || drop(channel));
    apt_bool(done.is_some() && freed.is_some())
}

unsafe extern "C" fn channel_open<C: Channel>(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    let done = guard("channel_open", || {
        // SAFETY: server-owned channel we created.
        let (obj, chref) = unsafe { channel_obj::<C>(ch) }?;
        obj.open(chref);
        Some(())
    });
    match done {
        Some(Some(())) => TRUE,
        Some(None) => FALSE,
        None => {
            // SAFETY: server-owned channel; answer so the SIP side does not wait.
            unsafe { ChannelRef::new(ch) }.open_respond(false);
            TRUE
        }
    }
}

unsafe extern "C" fn channel_close<C: Channel>(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    let done = guard("channel_close", || {
        // SAFETY: server-owned channel we created.
        let (obj, chref) = unsafe { channel_obj::<C>(ch) }?;
        obj.close(chref);
        Some(())
    });
    if done.flatten().is_none() {
        // SAFETY: server-owned channel; close must always be answered.
        unsafe { ChannelRef::new(ch) }.close_respond();
    }
    TRUE
}

unsafe extern "C" fn channel_process_request<C: Channel>(
    ch: *mut sys::mrcp_engine_channel_t,
    request: *mut sys::mrcp_message_t,
) -> sys::apt_bool_t {
    if request.is_null() {
        return FALSE;
    }
    let origin = Origin::from_addr(request as usize);
    let done = guard("process_request", || {
        // SAFETY: server-owned channel we created; a live request.
        let ((obj, chref), request) = unsafe { (channel_obj::<C>(ch)?, message::decode(request)?) };
        obj.process_request(chref, request);
        Some(())
    });
    if done.flatten().is_none() {
        // Every request gets its one response, even when we failed. If the
        // panic came after a SPEAK went IN-PROGRESS, the channel ends it.
        let _ = guard("process_request fallback", || {
            // SAFETY: as above.
            let Some((obj, chref)) = (unsafe { channel_obj::<C>(ch) }) else {
                return;
            };
            if !obj.request_failed(chref, origin) {
                let failed = Reply::refusal(Status::MethodFailed, Completion::error("internal error in the plugin"));
                chref.send(origin, &failed);
            }
        });
    }
    TRUE
}

// ------------------------------------------------------------------ stream

/// # Safety
/// `stream` is the stream the server made from our termination.
unsafe fn stream_obj<'a, C>(stream: *mut sys::mpf_audio_stream_t) -> Option<&'a C> {
    // SAFETY: stream->obj is the channel's `stream()`, which lives as long
    // as the Box we leaked in create_channel; the server calls close_rx
    // before channel destroy frees it.
    unsafe { stream.as_ref().and_then(|s| (s.obj as *const C).as_ref()) }
}

unsafe extern "C" fn stream_destroy(_stream: *mut sys::mpf_audio_stream_t) -> sys::apt_bool_t {
    TRUE
}

unsafe extern "C" fn stream_open_rx<C: Stream>(
    stream: *mut sys::mpf_audio_stream_t,
    _codec: *mut sys::mpf_codec_t,
) -> sys::apt_bool_t {
    let done = guard("open_rx", || {
        // SAFETY: server-owned stream; rx_descriptor is set before open_rx.
        unsafe {
            let (Some(channel), Some(s)) = (stream_obj::<C>(stream), stream.as_ref()) else {
                return;
            };
            if let Some(descriptor) = s.rx_descriptor.as_ref() {
                channel.open_rx(u32::from(descriptor.sampling_rate));
            }
        }
    });
    apt_bool(done.is_some())
}

unsafe extern "C" fn stream_close_rx<C: Stream>(stream: *mut sys::mpf_audio_stream_t) -> sys::apt_bool_t {
    let done = guard("close_rx", || {
        // SAFETY: as open_rx.
        if let Some(channel) = unsafe { stream_obj::<C>(stream) } {
            channel.close_rx();
        }
    });
    apt_bool(done.is_some())
}

unsafe extern "C" fn stream_read_frame<C: Stream>(
    stream: *mut sys::mpf_audio_stream_t,
    frame: *mut sys::mpf_frame_t,
) -> sys::apt_bool_t {
    let done = guard("read_frame", || {
        // SAFETY: server-owned stream and frame; the bridge owns a buffer of
        // exactly codec_frame.size bytes for this tick.
        unsafe {
            let (Some(channel), Some(frame)) = (stream_obj::<C>(stream), frame.as_mut()) else {
                return;
            };
            let codec_frame = frame.codec_frame;
            if codec_frame.buffer.is_null() || codec_frame.size == 0 {
                return;
            }
            let out = std::slice::from_raw_parts_mut(codec_frame.buffer as *mut u8, codec_frame.size);
            if channel.read_frame(out) {
                frame.type_ |= sys::MEDIA_FRAME_TYPE_AUDIO as i32;
            }
        }
    });
    apt_bool(done.is_some())
}
