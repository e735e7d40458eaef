//! The audio source stream: called on the one "MPF Scheduler" thread, every
//! 10 ms for every channel of the server. `read_frame` does bounded work:
//! a `try_lock` (never waits: a contended tick is a silent frame, the audio
//! simply continues on the next one), one copy, maybe one eventfd write. No
//! allocation, no logging.

use std::slice;
use std::sync::atomic::Ordering;

use crate::abi;
use crate::audio::Frame;
use crate::channel::{Channel, NO_CUE};
use crate::sys;

/// # Safety
/// `stream` is the stream the server made from our termination.
unsafe fn this<'a>(stream: *mut sys::mpf_audio_stream_t) -> Option<&'a Channel> {
    // SAFETY: stream->obj is the Box<Channel> we leaked in create_channel;
    // the server calls close_rx before channel destroy frees it.
    unsafe { stream.as_ref().and_then(|s| (s.obj as *const Channel).as_ref()) }
}

unsafe extern "C" fn stream_destroy(_stream: *mut sys::mpf_audio_stream_t) -> sys::apt_bool_t {
    abi::TRUE
}

unsafe extern "C" fn stream_open_rx(
    stream: *mut sys::mpf_audio_stream_t,
    _codec: *mut sys::mpf_codec_t,
) -> sys::apt_bool_t {
    let done = crate::panic::guard("open_rx", || {
        // SAFETY: server-owned stream; rx_descriptor is set before open_rx.
        unsafe {
            let (Some(channel), Some(s)) = (this(stream), stream.as_ref()) else {
                return;
            };
            if let Some(descriptor) = s.rx_descriptor.as_ref() {
                channel.shared.rate.store(u32::from(descriptor.sampling_rate), Ordering::Release);
            }
        }
    });
    abi::apt_bool(done.is_some())
}

unsafe extern "C" fn stream_close_rx(stream: *mut sys::mpf_audio_stream_t) -> sys::apt_bool_t {
    let done = crate::panic::guard("close_rx", || {
        // SAFETY: as open_rx.
        if let Some(channel) = unsafe { this(stream) } {
            channel.shared.rate.store(0, Ordering::Release);
        }
    });
    abi::apt_bool(done.is_some())
}

unsafe extern "C" fn stream_read_frame(
    stream: *mut sys::mpf_audio_stream_t,
    frame: *mut sys::mpf_frame_t,
) -> sys::apt_bool_t {
    let done = crate::panic::guard("read_frame", || {
        // SAFETY: server-owned stream and frame; the bridge owns a buffer of
        // exactly codec_frame.size bytes for this tick.
        unsafe {
            let (Some(channel), Some(frame)) = (this(stream), frame.as_mut()) else {
                return;
            };
            let codec_frame = frame.codec_frame;
            if codec_frame.buffer.is_null() || codec_frame.size == 0 {
                return;
            }
            let out = slice::from_raw_parts_mut(codec_frame.buffer as *mut u8, codec_frame.size);
            read_into(channel, out, &mut frame.type_);
        }
    });
    abi::apt_bool(done.is_some())
}

fn read_into(channel: &Channel, out: &mut [u8], frame_type: &mut i32) {
    let shared = &channel.shared;
    let mut wake = false;
    if let Some(mut playback) = shared.playback.try_lock() {
        match playback.take_frame(out) {
            Frame::Audio => *frame_type |= sys::MEDIA_FRAME_TYPE_AUDIO as i32,
            Frame::Silence => {}
            Frame::Last { generation, with_audio } => {
                if with_audio {
                    *frame_type |= sys::MEDIA_FRAME_TYPE_AUDIO as i32;
                }
                shared.drained.store(generation, Ordering::Release);
                wake = true;
            }
        }
        // A speech marker lies in audio played by now: the worker announces it.
        let cue = shared.cue_at.load(Ordering::Acquire);
        if cue != NO_CUE && playback.played() > cue {
            shared.cue_at.store(NO_CUE, Ordering::Release);
            wake = true;
        }
        let want = shared.want_space.load(Ordering::Acquire);
        if want > 0 && playback.fits(want) {
            shared.want_space.store(0, Ordering::Release);
            wake = true;
        }
    }
    if wake {
        shared.waker.wake();
    }
}

pub static STREAM_VTABLE: sys::mpf_audio_stream_vtable_t = sys::mpf_audio_stream_vtable_t {
    destroy: Some(stream_destroy),
    open_rx: Some(stream_open_rx),
    close_rx: Some(stream_close_rx),
    read_frame: Some(stream_read_frame),
    open_tx: None,
    close_tx: None,
    write_frame: None,
    trace: None,
};
