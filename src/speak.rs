//! One SPEAK request from IN-PROGRESS to its single terminal message.
//!
//! Several threads may want to end a SPEAK: the MRCP Server thread (STOP,
//! BARGE-IN-OCCURRED, channel close) and the channel's worker (last frame
//! played, upstream failure, shutdown). Whoever `claim`s it first sends the
//! one terminal message; everybody else sends nothing. A claimed STOP sends
//! its response listing the request and no SPEAK-COMPLETE follows.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::abi::{ChannelRef, Message};
use crate::sys;

pub struct Speak {
    /// The SPEAK request; the server keeps it alive while it is the active
    /// request, i.e. until its terminal message.
    pub request: Message,
    pub request_id: u32,
    /// Generation of the audio buffer this SPEAK plays (audio.rs).
    pub generation: u64,
    terminated: AtomicBool,
    /// The last `<mark>` whose SPEECH-MARKER was sent; SPEAK-COMPLETE
    /// repeats it.
    pub last_mark: Mutex<Option<String>>,
}

/// Why a SPEAK ended, as MRCP puts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub cause: sys::mrcp_synth_completion_cause_e,
    pub reason: Option<String>,
}

impl Completion {
    pub fn normal() -> Self {
        Completion { cause: sys::SYNTHESIZER_COMPLETION_CAUSE_NORMAL, reason: None }
    }

    pub fn error(reason: impl Into<String>) -> Self {
        Completion { cause: sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR, reason: Some(reason.into()) }
    }

    /// The three-digit code and name, for log lines.
    pub fn code(&self) -> &'static str {
        match self.cause {
            sys::SYNTHESIZER_COMPLETION_CAUSE_NORMAL => "000 normal",
            sys::SYNTHESIZER_COMPLETION_CAUSE_BARGE_IN => "001 barge-in",
            sys::SYNTHESIZER_COMPLETION_CAUSE_PARSE_FAILURE => "002 parse-failure",
            sys::SYNTHESIZER_COMPLETION_CAUSE_URI_FAILURE => "003 uri-failure",
            sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR => "004 error",
            sys::SYNTHESIZER_COMPLETION_CAUSE_LANGUAGE_UNSUPPORTED => "005 language-unsupported",
            sys::SYNTHESIZER_COMPLETION_CAUSE_LEXICON_LOAD_FAILURE => "006 lexicon-load-failure",
            sys::SYNTHESIZER_COMPLETION_CAUSE_CANCELLED => "007 cancelled",
            _ => "unknown",
        }
    }
}

impl Speak {
    pub fn new(request: Message, generation: u64) -> Self {
        Speak {
            request_id: request.request_id(),
            request,
            generation,
            terminated: AtomicBool::new(false),
            last_mark: Mutex::new(None),
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

/// SPEAK-COMPLETE for `request`, sent from whatever thread we are on (the
/// server's message_send only queues it).
pub fn send_complete(channel: ChannelRef, speak: &Speak, completion: &Completion) {
    let request = speak.request;
    match request.event(sys::SYNTHESIZER_SPEAK_COMPLETE, sys::MRCP_REQUEST_STATE_COMPLETE) {
        Some(mut event) => {
            event.set_completion(completion.cause, completion.reason.as_deref());
            if let Some(mark) = speak.last_mark.lock().as_deref() {
                event.set_speech_marker(&speech_marker(Some(mark)));
            }
            if !channel.send(event) {
                log::error!(
                    "[{}] SPEAK {}: the server did not take SPEAK-COMPLETE",
                    channel.id(),
                    request.request_id()
                );
            }
        }
        None => log::error!("[{}] SPEAK {}: could not create SPEAK-COMPLETE", channel.id(), request.request_id()),
    }
}

/// A SPEECH-MARKER event for `name`, unless the SPEAK has ended; sent
/// under the same claim discipline as the terminal message (the caller
/// holds the channel's `active` lock), so none follows SPEAK-COMPLETE or a
/// STOP's response.
pub fn send_marker(channel: ChannelRef, speak: &Speak, name: &str) -> bool {
    if speak.is_terminated() {
        return false;
    }
    let Some(mut event) = speak.request.event(sys::SYNTHESIZER_SPEECH_MARKER, sys::MRCP_REQUEST_STATE_INPROGRESS)
    else {
        log::error!("[{}] SPEAK {}: could not create SPEECH-MARKER", channel.id(), speak.request_id);
        return false;
    };
    event.set_speech_marker(&speech_marker(Some(name)));
    *speak.last_mark.lock() = Some(name.to_owned());
    channel.send(event)
}

/// `timestamp=<NTP time>[;<mark name>]`, the Speech-Marker value (RFC 6787):
/// the NTP timestamp is the 64-bit fixed-point count of seconds since 1900,
/// in decimal.
pub fn speech_marker(name: Option<&str>) -> String {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    let ntp = (secs << 32) | frac;
    match name {
        Some(name) => format!("timestamp={ntp};{name}"),
        None => format!("timestamp={ntp}"),
    }
}

/// A response to `request`, with an optional completion header pair.
pub fn respond(
    channel: ChannelRef,
    request: Message,
    status: sys::mrcp_status_code_e,
    state: sys::mrcp_request_state_e,
    completion: Option<&Completion>,
    active_ids: &[u32],
) -> bool {
    let Some(mut response) = request.response(status, state) else {
        log::error!(
            "[{}] {} {}: could not create the response",
            channel.id(),
            request.method_name(),
            request.request_id()
        );
        return false;
    };
    if let Some(c) = completion {
        response.set_completion(c.cause, c.reason.as_deref());
    }
    response.set_active_request_ids(active_ids);
    channel.send(response)
}
