//! One SPEAK request from IN-PROGRESS to its single terminal message.
//!
//! Several threads may want to end a SPEAK: the MRCP Server thread (STOP,
//! BARGE-IN-OCCURRED, channel close) and the channel's worker (last frame
//! played, upstream failure, shutdown). Whoever `claim`s it first sends the
//! one terminal message; everybody else sends nothing. A claimed STOP sends
//! its response listing the request and no SPEAK-COMPLETE follows.

use std::sync::atomic::{AtomicBool, Ordering};

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
        Speak { request_id: request.request_id(), request, generation, terminated: AtomicBool::new(false) }
    }

    /// True for exactly one caller.
    pub fn claim(&self) -> bool {
        !self.terminated.swap(true, Ordering::AcqRel)
    }

    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }
}

/// SPEAK-COMPLETE for `request`, sent from whatever thread we are on (the
/// server's message_send only queues it).
pub fn send_complete(channel: ChannelRef, request: Message, completion: &Completion) {
    match request.event(sys::SYNTHESIZER_SPEAK_COMPLETE, sys::MRCP_REQUEST_STATE_COMPLETE) {
        Some(mut event) => {
            event.set_completion(completion.cause, completion.reason.as_deref());
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
