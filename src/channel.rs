//! A synthesizer channel: the channel vtable (MRCP Server thread) and the
//! state it shares with its worker thread and the media thread.
//!
//! Lock order (never take an earlier one while holding a later one):
//!   engine `workers` → channel `worker` slot → `active` → `playback`,
//!   and `active` → a SPEAK's `last_mark` (a leaf: held for one copy).
//! The media thread only ever `try_lock`s `playback`. No lock is held across
//! a join, a network call or any wait; the longest hold is a buffer copy or
//! posting one message to the server's queue.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::abi::{self, ChannelRef, Message};
use crate::audio::{PlayState, Playback};
use crate::config::Config;
use crate::engine::EngineState;
use crate::speak::{respond, Completion, Speak};
use crate::speak_params::Refusal;
use crate::sys;
use crate::text::{script_from_body, BodyError};
use crate::wake::Waker;
use crate::worker::{self, Command, Job, WorkerHandle};

/// The rates we produce: ElevenLabs' pcm_8000 and pcm_16000, declared as
/// LPCM so that the server never needs to resample.
pub const SAMPLE_RATES: &[u32] = &[8000, 16000, 32000, 48000];
pub const SAMPLE_RATE_MASK: i32 =
    (sys::MPF_SAMPLE_RATE_8000 | sys::MPF_SAMPLE_RATE_16000 | sys::MPF_SAMPLE_RATE_32000 | sys::MPF_SAMPLE_RATE_48000)
        as i32;
/// The buffer allocated at channel creation covers 8 and 16 kHz (nearly
/// every call); a channel negotiated at 32 or 48 kHz grows it once, at
/// channel open, before any SPEAK.
const CREATED_BYTES_PER_MS: usize = 16000 * 2 / 1000;
/// libcurl hands the write callback at most 16 KiB at a time; the buffer
/// must always be able to take one such chunk, plus a frame.
const MIN_BUFFER_BYTES: usize = 16 * 1024 + 1920;

/// `Shared::cue_at` when no marker is pending.
pub const NO_CUE: u64 = u64::MAX;

/// What the worker and the media thread share with the channel.
pub struct Shared {
    pub playback: Mutex<Playback>,
    /// The SPEAK in progress, until its terminal message.
    pub active: Mutex<Option<Arc<Speak>>>,
    pub waker: Waker,
    /// Generation whose last frame the media thread has played.
    pub drained: AtomicU64,
    /// Bytes a paused transfer waits for (0: none).
    pub want_space: AtomicUsize,
    /// Playback position (bytes of the current generation) past which the
    /// worker has a speech marker to announce; NO_CUE when none.
    pub cue_at: AtomicU64,
    /// Negotiated rate, from open_rx (0 until then).
    pub rate: AtomicU32,
    /// The client's Logging-Tag for this session, shown in log lines.
    pub logging_tag: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(buffer_capacity: usize) -> std::io::Result<Shared> {
        Ok(Shared {
            playback: Mutex::new(Playback::new(buffer_capacity)),
            active: Mutex::new(None),
            waker: Waker::new()?,
            drained: AtomicU64::new(0),
            want_space: AtomicUsize::new(0),
            cue_at: AtomicU64::new(NO_CUE),
            rate: AtomicU32::new(0),
            logging_tag: Mutex::new(None),
        })
    }

    /// The channel id for log lines, with the Logging-Tag when one was set.
    pub fn label(&self, ch: ChannelRef) -> String {
        match self.logging_tag.lock().as_deref() {
            Some(tag) => format!("{} tag={tag}", ch.id()),
            None => ch.id(),
        }
    }
}

/// Buffer bytes for a SPEAK at `rate` under `max_buffer_ms`.
pub fn buffer_limit(max_buffer_ms: u64, rate: u32) -> usize {
    let bytes_per_ms = rate as usize * 2 / 1000;
    (max_buffer_ms as usize * bytes_per_ms).max(MIN_BUFFER_BYTES)
}

/// Capacity allocated at channel creation (8 and 16 kHz).
pub fn buffer_capacity(max_buffer_ms: u64) -> usize {
    (max_buffer_ms as usize * CREATED_BYTES_PER_MS).max(MIN_BUFFER_BYTES)
}

/// method_obj of the server channel, and obj of its audio stream.
pub struct Channel {
    pub shared: Arc<Shared>,
    pub engine: Arc<EngineState>,
    pub config: Arc<Config>,
    /// The worker, until channel close (or engine close) takes it.
    pub worker: Arc<Mutex<Option<WorkerHandle>>>,
    /// A worker told to shut down, joined in destroy.
    pub stopping: Mutex<Option<JoinHandle<()>>>,
}

impl Channel {
    pub fn new(engine: Arc<EngineState>, config: Arc<Config>) -> std::io::Result<Channel> {
        let shared = Arc::new(Shared::new(buffer_capacity(config.max_buffer_ms))?);
        Ok(Channel { shared, engine, config, worker: Arc::new(Mutex::new(None)), stopping: Mutex::new(None) })
    }

    fn send_to_worker(&self, command: Command) -> bool {
        match self.worker.lock().as_ref() {
            Some(w) => w.send(command),
            None => false,
        }
    }

    pub fn open(&self, ch: ChannelRef) {
        // open_rx has run: the rate is known. Grow the buffer for 32/48 kHz
        // now, once, rather than during a call.
        let rate = self.negotiated_rate(ch).unwrap_or(8000);
        let needed = buffer_limit(self.config.max_buffer_ms, rate);
        if needed > buffer_capacity(self.config.max_buffer_ms) {
            let fresh = Playback::new(needed);
            let old = std::mem::replace(&mut *self.shared.playback.lock(), fresh);
            drop(old);
        }
        log::info!("[{}] channel open ({rate} Hz)", self.label(ch));
        ch.open_respond(true);
    }

    pub fn close(&self, ch: ChannelRef) {
        log::info!("[{}] channel close", self.label(ch));
        let handle = self.worker.lock().take();
        if let Some(handle) = handle {
            let told = handle.send(Command::Shutdown { respond_close: true, reason: "channel closed while speaking" });
            *self.stopping.lock() = Some(handle.thread);
            if told {
                return; // the worker answers close once its transfer is down
            }
        }
        // No worker to do it (engine already closed, or it is gone).
        self.end_active(ch, &Completion::error("channel closed while speaking"));
        ch.close_respond();
    }

    /// Frees nothing itself: joins what is left of the worker. Called after
    /// close and close_rx, so no other thread uses the channel any more.
    pub fn destroy(&self, ch: ChannelRef) {
        let id = ch.id();
        if let Some(handle) = self.worker.lock().take() {
            // Never opened or never closed: the worker is idle or about to be.
            handle.send(Command::Shutdown { respond_close: false, reason: "channel destroyed" });
            worker::join(handle.thread, &id);
        }
        if let Some(thread) = self.stopping.lock().take() {
            worker::join(thread, &id);
        }
        self.engine.forget_worker(&self.worker);
    }

    /// Ends the active SPEAK (if nobody did) with `completion`.
    fn end_active(&self, ch: ChannelRef, completion: &Completion) {
        // Claimed under `active`, as everywhere (see `stop`).
        let claimed = self.shared.active.lock().take().filter(|speak| speak.claim());
        if let Some(speak) = claimed {
            self.shared.playback.lock().stop();
            crate::speak::send_complete(ch, &speak, completion);
        }
    }

    /// The channel id for log lines, with the Logging-Tag when one was set.
    fn label(&self, ch: ChannelRef) -> String {
        self.shared.label(ch)
    }

    pub fn process_request(&self, ch: ChannelRef, request: Message) {
        if let Some(tag) = request.logging_tag() {
            let tag = crate::abi::sanitize_header_value(&tag);
            *self.shared.logging_tag.lock() = (!tag.is_empty()).then_some(tag);
        }
        let method = request.method_id();
        log::debug!("[{}] {} {} received", self.label(ch), request.method_name(), request.request_id());
        match method as sys::mrcp_synthesizer_method_id {
            sys::SYNTHESIZER_SPEAK => self.speak(ch, request),
            sys::SYNTHESIZER_STOP | sys::SYNTHESIZER_BARGE_IN_OCCURRED => self.stop(ch, request),
            sys::SYNTHESIZER_PAUSE => self.pause_resume(ch, request, true),
            sys::SYNTHESIZER_RESUME => self.pause_resume(ch, request, false),
            // Parameters are kept and merged into SPEAKs by the server.
            sys::SYNTHESIZER_SET_PARAMS | sys::SYNTHESIZER_GET_PARAMS => {
                ok(ch, request);
            }
            sys::SYNTHESIZER_CONTROL | sys::SYNTHESIZER_DEFINE_LEXICON => {
                respond(
                    ch,
                    request,
                    sys::MRCP_STATUS_CODE_UNSUPPORTED_PARAM,
                    sys::MRCP_REQUEST_STATE_COMPLETE,
                    None,
                    &[],
                );
            }
            _ => {
                respond(
                    ch,
                    request,
                    sys::MRCP_STATUS_CODE_METHOD_NOT_ALLOWED,
                    sys::MRCP_REQUEST_STATE_COMPLETE,
                    None,
                    &[],
                );
            }
        }
    }

    fn speak(&self, ch: ChannelRef, request: Message) {
        let id = self.label(ch);
        let fail = |status, cause, reason: String| {
            log::warn!("[{id}] SPEAK {} refused: {reason}", request.request_id());
            let completion = Completion { cause, reason: Some(reason) };
            respond(ch, request, status, sys::MRCP_REQUEST_STATE_COMPLETE, Some(&completion), &[]);
        };
        // A body we cannot speak (malformed SSML, no text) or a language the
        // model does not speak: the SPEAK starts and ends at once with its
        // cause and reason (RFC 6787 completion causes 002 and 005); nothing
        // goes upstream.
        let complete_at_once = |cause, reason: String| {
            log::warn!("[{id}] SPEAK {} cannot be spoken: {reason}", request.request_id());
            if respond_in_progress(ch, request) {
                let speak = Speak::new(request, 0);
                crate::speak::send_complete(ch, &speak, &Completion { cause, reason: Some(reason) });
            }
        };

        let rate = match self.negotiated_rate(ch) {
            Some(rate) => rate,
            None => {
                return fail(
                    sys::MRCP_STATUS_CODE_METHOD_FAILED,
                    sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR,
                    "no LPCM 8/16/32/48 kHz stream was negotiated for this channel".into(),
                )
            }
        };
        // A language the model does not speak ends the SPEAK (005); a header
        // value we cannot honour is refused outright (409).
        let refuse = |refusal| match refusal {
            Refusal::Language(reason) => {
                complete_at_once(sys::SYNTHESIZER_COMPLETION_CAUSE_LANGUAGE_UNSUPPORTED, reason)
            }
            Refusal::Value(reason) => {
                fail(sys::MRCP_STATUS_CODE_UNSUPPORTED_PARAM_VALUE, sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR, reason)
            }
        };
        let headers = request.voice_headers();
        let resolved = match crate::speak_params::resolve(&self.config, &headers) {
            Ok(r) => r,
            Err(refusal) => return refuse(refusal),
        };
        let content_type = request.content_type();
        let phonemes = crate::speak_params::takes_phonemes(&resolved.config.model_id);
        let language = headers.speech_language.as_deref();
        let script = match script_from_body(content_type.as_deref(), request.body(), phonemes, language) {
            Ok(script) => script,
            Err(e @ BodyError::UnsupportedType(_)) => {
                return fail(
                    sys::MRCP_STATUS_CODE_UNSUPPORTED_PARAM_VALUE,
                    sys::SYNTHESIZER_COMPLETION_CAUSE_PARSE_FAILURE,
                    e.to_string(),
                )
            }
            Err(e) => return complete_at_once(sys::SYNTHESIZER_COMPLETION_CAUSE_PARSE_FAILURE, e.to_string()),
        };
        let plan = match crate::plan::build(&script, resolved, &self.config) {
            Ok(plan) => plan,
            Err(refusal) => return refuse(refusal),
        };
        let config = Arc::clone(&plan.config);

        let speak = {
            let mut active = self.shared.active.lock();
            if active.as_ref().is_some_and(|s| !s.is_terminated()) {
                drop(active);
                // The server queues SPEAKs; a second one here is a client of
                // the plugin breaking the protocol.
                return fail(
                    sys::MRCP_STATUS_CODE_METHOD_NOT_VALID,
                    sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR,
                    "another SPEAK is in progress".into(),
                );
            }
            let bytes_per_ms = rate as usize * 2 / 1000;
            let prebuffer = self.config.prebuffer_ms as usize * bytes_per_ms;
            let generation =
                self.shared.playback.lock().start(buffer_limit(self.config.max_buffer_ms, rate), prebuffer);
            let speak = Arc::new(Speak::new(request, generation));
            *active = Some(Arc::clone(&speak));
            speak
        };
        log::info!(
            "[{id}] SPEAK {}: {} chars, {} Hz, {} steps, voice {}, model {}",
            request.request_id(),
            plan.chars(),
            rate,
            plan.steps.len(),
            config.voice_id,
            config.model_id
        );
        // IN-PROGRESS goes out before the worker can possibly complete.
        respond_in_progress(ch, request);
        let job = Job {
            speak: Arc::clone(&speak),
            plan,
            sample_rate: rate,
            config,
            cache: self.engine.cache.lock().clone(),
            policy: crate::cache::Policy::from_header(request.cache_control().as_deref()),
        };
        if !self.send_to_worker(Command::Speak(job)) {
            let mut active = self.shared.active.lock();
            if speak.claim() {
                *active = None;
                self.shared.playback.lock().stop();
                crate::speak::send_complete(
                    ch,
                    &speak,
                    &Completion::error("synthesis thread unavailable (engine closing?)"),
                );
            }
        }
    }

    fn negotiated_rate(&self, ch: ChannelRef) -> Option<u32> {
        let from_stream = self.shared.rate.load(std::sync::atomic::Ordering::Acquire);
        let rate = if from_stream != 0 { from_stream } else { ch.source_rate()? };
        SAMPLE_RATES.contains(&rate).then_some(rate)
    }

    /// STOP and BARGE-IN-OCCURRED: answered at once; the audio stops at the
    /// next frame; the transfer is aborted by the worker; no SPEAK-COMPLETE.
    fn stop(&self, ch: ChannelRef, request: Message) {
        // Take and claim under one hold of `active`, as the worker's `end`
        // claims and posts SPEAK-COMPLETE under it. Claiming after letting go
        // of the lock let a worker claim in between and post its
        // SPEAK-COMPLETE after this response had already said "nothing
        // active": the client saw the two in the wrong order.
        let claimed = {
            let mut active = self.shared.active.lock();
            active.take().filter(|speak| speak.claim())
        };
        let mut stopped = Vec::new();
        let mut last_mark = None;
        if let Some(speak) = claimed {
            self.shared.playback.lock().stop();
            stopped.push(speak.request_id);
            // No marker can follow the claim: this is the last reached.
            last_mark = speak.last_mark.lock().clone();
            self.send_to_worker(Command::Cancel { generation: speak.generation });
        }
        log::info!("[{}] {} {}: stopped {:?}", self.label(ch), request.method_name(), request.request_id(), stopped);
        let Some(mut response) = request.response(sys::MRCP_STATUS_CODE_SUCCESS, sys::MRCP_REQUEST_STATE_COMPLETE)
        else {
            log::error!(
                "[{}] {} {}: could not create the response",
                ch.id(),
                request.method_name(),
                request.request_id()
            );
            return;
        };
        response.set_active_request_ids(&stopped);
        // The last mark the caller heard before the STOP / barge-in (what a
        // VoiceXML browser reports as markname), as SPEAK-COMPLETE would.
        if let Some(mark) = last_mark {
            response.set_speech_marker(&crate::speak::speech_marker(Some(&mark)));
        }
        ch.send(response);
    }

    fn pause_resume(&self, ch: ChannelRef, request: Message, pause: bool) {
        // `active` is held until the response is posted: the worker claims
        // and posts SPEAK-COMPLETE under it, so a response that lists the
        // SPEAK always goes out before that SPEAK-COMPLETE, never after it
        // (checking, letting go, then answering let SPEAK-COMPLETE slip in
        // between: the client saw PAUSE act on a request already complete).
        let active = self.shared.active.lock();
        let mut affected = Vec::new();
        if let Some(speak) = active.as_ref().filter(|s| !s.is_terminated()) {
            let mut playback = self.shared.playback.lock();
            if playback.generation == speak.generation {
                match (pause, playback.state) {
                    (true, PlayState::Playing) => playback.state = PlayState::Paused,
                    (false, PlayState::Paused) => playback.state = PlayState::Playing,
                    _ => {}
                }
                affected.push(speak.request_id);
            }
        }
        respond(ch, request, sys::MRCP_STATUS_CODE_SUCCESS, sys::MRCP_REQUEST_STATE_COMPLETE, None, &affected);
        drop(active);
    }
}

/// 200 IN-PROGRESS for a SPEAK, with the Speech-Marker timestamp of its
/// start (RFC 6787 §8.4.2's example does so).
fn respond_in_progress(ch: ChannelRef, request: Message) -> bool {
    let Some(mut response) = request.response(sys::MRCP_STATUS_CODE_SUCCESS, sys::MRCP_REQUEST_STATE_INPROGRESS) else {
        log::error!("[{}] SPEAK {}: could not create the response", ch.id(), request.request_id());
        return false;
    };
    response.set_speech_marker(&crate::speak::speech_marker(None));
    ch.send(response)
}

fn ok(ch: ChannelRef, request: Message) -> bool {
    respond(ch, request, sys::MRCP_STATUS_CODE_SUCCESS, sys::MRCP_REQUEST_STATE_COMPLETE, None, &[])
}

/// An error response for a request whose handling panicked.
pub fn respond_failed(ch: ChannelRef, request: Message) {
    respond(
        ch,
        request,
        sys::MRCP_STATUS_CODE_METHOD_FAILED,
        sys::MRCP_REQUEST_STATE_COMPLETE,
        Some(&Completion::error("internal error in the plugin")),
        &[],
    );
}

// ------------------------------------------------------------- trampolines

/// # Safety
/// Called by the server with a channel we created.
unsafe fn this<'a>(ch: *mut sys::mrcp_engine_channel_t) -> Option<&'a Channel> {
    // SAFETY: method_obj is the Box<Channel> we leaked in create_channel,
    // alive until destroy.
    unsafe { ch.as_ref().and_then(|c| (c.method_obj as *const Channel).as_ref()) }
}

unsafe extern "C" fn channel_destroy(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    // Take our object out first, so that it is freed even if the body
    // panics (the guard would otherwise skip the free).
    // SAFETY: the server calls destroy once, last, on a channel we made;
    // method_obj is the Box<Channel> we leaked in create_channel.
    let channel = unsafe {
        let Some(c) = ch.as_mut() else { return abi::FALSE };
        let obj = std::mem::replace(&mut c.method_obj, std::ptr::null_mut()) as *mut Channel;
        if obj.is_null() {
            return abi::FALSE;
        }
        Box::from_raw(obj)
    };
    // SAFETY: the channel pointer stays valid for the whole call.
    let chref = unsafe { ChannelRef::new(ch) };
    let done = crate::panic::guard("channel_destroy", || channel.destroy(chref));
    let freed = crate::panic::guard("channel_destroy (free)", move || drop(channel));
    abi::apt_bool(done.is_some() && freed.is_some())
}

unsafe extern "C" fn channel_open(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    let done = crate::panic::guard("channel_open", || {
        // SAFETY: server-owned channel we created.
        let (Some(obj), chref) = (unsafe { this(ch) }, unsafe { ChannelRef::new(ch) }) else {
            return false;
        };
        obj.open(chref);
        true
    });
    match done {
        Some(true) => abi::TRUE,
        Some(false) => abi::FALSE,
        None => {
            // SAFETY: server-owned channel; answer so the SIP side does not wait.
            unsafe { ChannelRef::new(ch) }.open_respond(false);
            abi::TRUE
        }
    }
}

unsafe extern "C" fn channel_close(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    let done = crate::panic::guard("channel_close", || {
        // SAFETY: server-owned channel we created.
        let (Some(obj), chref) = (unsafe { this(ch) }, unsafe { ChannelRef::new(ch) }) else {
            return false;
        };
        obj.close(chref);
        true
    });
    if done != Some(true) {
        // SAFETY: server-owned channel; close must always be answered.
        unsafe { ChannelRef::new(ch) }.close_respond();
    }
    abi::TRUE
}

unsafe extern "C" fn channel_process_request(
    ch: *mut sys::mrcp_engine_channel_t,
    request: *mut sys::mrcp_message_t,
) -> sys::apt_bool_t {
    // SAFETY: the server passes a live request.
    let Some(request) = (unsafe { Message::from_ptr(request) }) else {
        return abi::FALSE;
    };
    // SAFETY: server-owned channel we created.
    let chref = unsafe { ChannelRef::new(ch) };
    let done = crate::panic::guard("process_request", || {
        // SAFETY: as above.
        match unsafe { this(ch) } {
            Some(obj) => {
                obj.process_request(chref, request);
                true
            }
            None => false,
        }
    });
    if done != Some(true) {
        // Every request gets its one response, even when we failed. If the
        // panic came after a SPEAK went IN-PROGRESS, end that SPEAK too.
        let _ = crate::panic::guard("process_request fallback", || {
            // SAFETY: as above.
            if let Some(obj) = unsafe { this(ch) } {
                let active = obj.shared.active.lock().clone();
                if let Some(speak) = active.filter(|s| s.request == request) {
                    obj.end_active(chref, &Completion::error("internal error in the plugin"));
                    drop(speak);
                    return;
                }
            }
            respond_failed(chref, request);
        });
    }
    abi::TRUE
}

pub static CHANNEL_VTABLE: sys::mrcp_engine_channel_method_vtable_t = sys::mrcp_engine_channel_method_vtable_t {
    destroy: Some(channel_destroy),
    open: Some(channel_open),
    close: Some(channel_close),
    process_request: Some(channel_process_request),
};
