//! One SPEAK request from IN-PROGRESS to its single terminal message.
//!
//! Several threads may want to end a SPEAK: the MRCP Server thread (STOP,
//! BARGE-IN-OCCURRED, channel close) and the channel's worker (last frame
//! played, upstream failure, shutdown). Whoever `claim`s it first sends the
//! one terminal message; everybody else sends nothing. A claimed STOP sends
//! its response listing the request and no SPEAK-COMPLETE follows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::ffi::ChannelRef;
use crate::mrcp::{speech_marker, Completion, Origin, Reply};

pub struct Speak {
    /// The SPEAK request; the server keeps it alive while it is the active
    /// request, i.e. until its terminal message.
    pub origin: Origin,
    pub request_id: u32,
    /// Generation of the audio buffer this SPEAK plays (media::Playback).
    pub generation: u64,
    terminated: AtomicBool,
    /// The last `<mark>` whose SPEECH-MARKER was sent; SPEAK-COMPLETE
    /// repeats it.
    pub last_mark: Mutex<Option<String>>,
    /// When the SPEAK arrived (for its time to first audio and duration).
    pub received: Instant,
}

impl Speak {
    pub fn new(origin: Origin, request_id: u32, generation: u64) -> Self {
        Speak {
            origin,
            request_id,
            generation,
            terminated: AtomicBool::new(false),
            last_mark: Mutex::new(None),
            received: Instant::now(),
        }
    }

    /// True for exactly one caller. Claim while holding the channel's
    /// `active` lock (and clear it there); off the MRCP Server thread, post
    /// the SPEAK-COMPLETE before letting go. A STOP then either claims the
    /// SPEAK itself or finds nothing only after that SPEAK-COMPLETE went out.
    pub fn claim(&self) -> bool {
        !self.terminated.swap(true, Ordering::AcqRel)
    }

    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }
}

/// SPEAK-COMPLETE for `speak`, sent from whatever thread we are on (the
/// server's message_send only queues it).
pub fn send_complete(channel: ChannelRef, speak: &Speak, completion: &Completion) {
    let marker = speak.last_mark.lock().as_deref().map(|mark| speech_marker(Some(mark)));
    channel.send(speak.origin, &Reply::SpeakComplete { completion: completion.clone(), marker });
}

/// A SPEECH-MARKER event for `name`, unless the SPEAK has ended; sent
/// under the same claim discipline as the terminal message (the caller
/// holds the channel's `active` lock), so none follows SPEAK-COMPLETE or a
/// STOP's response.
pub fn send_marker(channel: ChannelRef, speak: &Speak, name: &str) -> bool {
    if speak.is_terminated() {
        return false;
    }
    *speak.last_mark.lock() = Some(name.to_owned());
    channel.send(speak.origin, &Reply::SpeechMarker { marker: speech_marker(Some(name)) })
}
