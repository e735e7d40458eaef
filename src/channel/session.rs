//! What each request does to the channel's session, on the "MRCP Server"
//! thread. Every request gets exactly one response here, and a SPEAK that
//! goes IN-PROGRESS gets exactly one terminal message: its SPEAK-COMPLETE
//! (sent by whoever `claim`s it: this thread or the worker) or the
//! response of the STOP / BARGE-IN-OCCURRED that ended it.

use std::sync::Arc;

use super::Channel;
use crate::cache::Policy;
use crate::config;
use crate::error::{Answer, SpeakError};
use crate::events::Event;
use crate::ffi::ChannelRef;
use crate::media::{buffer_limit, PlayState};
use crate::mrcp::{
    sanitize_header_value, speech_marker, Completion, Method, Origin, Reply, Request, RequestState, Status,
};
use crate::plan::{self, Plan};
use crate::synth::{send_complete, Command, Job, Speak};
use crate::text::script_from_body;

impl Channel {
    pub(super) fn handle(&self, ch: ChannelRef, request: Request) {
        if let Some(tag) = &request.logging_tag {
            let tag = sanitize_header_value(tag);
            *self.shared.logging_tag.lock() = (!tag.is_empty()).then_some(tag);
        }
        log::debug!("[{}] {} {} received", self.label(ch), request.method_name, request.id);
        self.observers.emit(Event::Request(request.method));
        let complete = |status| Reply::response(status, RequestState::Complete);
        match request.method {
            Method::Speak => self.speak(ch, request),
            Method::Stop | Method::BargeInOccurred => self.stop(ch, &request),
            Method::Pause => self.pause_resume(ch, &request, true),
            Method::Resume => self.pause_resume(ch, &request, false),
            // Parameters are kept and merged into SPEAKs by the server.
            Method::SetParams | Method::GetParams => {
                ch.send(request.origin, &complete(Status::Success));
            }
            Method::Control | Method::DefineLexicon => {
                ch.send(request.origin, &complete(Status::UnsupportedParam));
            }
            Method::Other => {
                ch.send(request.origin, &complete(Status::MethodNotAllowed));
            }
        }
    }

    fn speak(&self, ch: ChannelRef, request: Request) {
        let (rate, plan) = match self.prepare(ch, &request) {
            Ok(prepared) => prepared,
            Err(e) => return self.refuse(ch, &request, e),
        };
        let config = Arc::clone(&plan.config);
        let speak = {
            let mut active = self.shared.active.lock();
            if active.as_ref().is_some_and(|s| !s.is_terminated()) {
                drop(active);
                return self.refuse(ch, &request, SpeakError::Busy);
            }
            let prebuffer = self.config.prebuffer_ms as usize * crate::media::bytes_per_ms(rate);
            let generation =
                self.shared.link.playback.lock().start(buffer_limit(self.config.max_buffer_ms, rate), prebuffer);
            let speak = Arc::new(Speak::new(request.origin, request.id, generation));
            *active = Some(Arc::clone(&speak));
            speak
        };
        log::info!(
            "[{}] SPEAK {}: {} chars, {} Hz, {} steps, voice {}, model {}",
            self.label(ch),
            request.id,
            plan.chars(),
            rate,
            plan.steps.len(),
            config.voice_id,
            config.model_id
        );
        // IN-PROGRESS goes out before the worker can possibly complete.
        respond_in_progress(ch, request.origin);
        let job = Box::new(Job {
            speak: Arc::clone(&speak),
            plan,
            sample_rate: rate,
            config,
            provider: Arc::clone(&self.provider),
            capacity: Arc::clone(&self.capacity),
            cache: self.engine.cache.lock().clone(),
            policy: Policy::from_header(request.cache_control.as_deref()),
            observers: self.observers.clone(),
        });
        if !self.send_to_worker(Command::Speak(job)) {
            let mut active = self.shared.active.lock();
            if speak.claim() {
                *active = None;
                self.shared.link.playback.lock().stop();
                send_complete(ch, &speak, &Completion::error("synthesis thread unavailable (engine closing?)"));
            }
        }
    }

    /// The SPEAK's rate and plan, or why it cannot be spoken. Pure
    /// computation: the body is bounded (text::MAX_BODY_BYTES).
    fn prepare(&self, ch: ChannelRef, request: &Request) -> Result<(u32, Plan), SpeakError> {
        let rate = self.negotiated_rate(ch).ok_or(SpeakError::NoStream)?;
        let headers = &request.speak;
        let resolved = config::resolve(&self.config, headers)?;
        let phonemes = config::takes_phonemes(&resolved.config.model_id);
        let language = headers.speech_language.as_deref();
        let script = script_from_body(request.content_type.as_deref(), &request.body, phonemes, language)?;
        let plan = plan::build(&script, resolved, &self.config)?;
        // The cost guard: checked before anything is sent, on what would be
        // sent (after SSML expansion: say-as, sub).
        let (chars, max) = (plan.chars(), self.config.max_speak_chars);
        if max > 0 && chars > max {
            return Err(SpeakError::TooLong { chars, max });
        }
        Ok((rate, plan))
    }

    /// A SPEAK refused before anything went upstream: a final error
    /// response, or IN-PROGRESS and SPEAK-COMPLETE at once (RFC 6787
    /// completion causes 002 and 005), with the reason.
    fn refuse(&self, ch: ChannelRef, request: &Request, error: SpeakError) {
        let (answer, completion) = error.answer();
        match answer {
            Answer::Refuse(status) => {
                log::warn!("[{}] SPEAK {} refused: {error}", self.label(ch), request.id);
                ch.send(request.origin, &Reply::refusal(status, completion));
                self.observers.emit(Event::SpeakRefused { cause: "refused" });
            }
            Answer::CompleteAtOnce => {
                log::warn!("[{}] SPEAK {} cannot be spoken: {error}", self.label(ch), request.id);
                if respond_in_progress(ch, request.origin) {
                    let speak = Speak::new(request.origin, request.id, 0);
                    send_complete(ch, &speak, &completion);
                    self.observers.emit(Event::SpeakRefused { cause: completion.code() });
                }
            }
        }
    }

    /// STOP and BARGE-IN-OCCURRED: answered at once; the audio stops at the
    /// next frame; the transfer is aborted by the worker; no SPEAK-COMPLETE.
    fn stop(&self, ch: ChannelRef, request: &Request) {
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
            self.shared.link.playback.lock().stop();
            stopped.push(speak.request_id);
            // No marker can follow the claim: this is the last reached.
            last_mark = speak.last_mark.lock().clone();
            self.send_to_worker(Command::Cancel { generation: speak.generation });
        }
        log::info!("[{}] {} {}: stopped {:?}", self.label(ch), request.method_name, request.id, stopped);
        // The last mark the caller heard before the STOP / barge-in (what a
        // VoiceXML browser reports as markname), as SPEAK-COMPLETE would.
        let reply = Reply::Response {
            status: Status::Success,
            state: RequestState::Complete,
            completion: None,
            active_ids: stopped,
            marker: last_mark.map(|mark| speech_marker(Some(&mark))),
        };
        ch.send(request.origin, &reply);
    }

    fn pause_resume(&self, ch: ChannelRef, request: &Request, pause: bool) {
        // `active` is held until the response is posted: the worker claims
        // and posts SPEAK-COMPLETE under it, so a response that lists the
        // SPEAK always goes out before that SPEAK-COMPLETE, never after it
        // (checking, letting go, then answering let SPEAK-COMPLETE slip in
        // between: the client saw PAUSE act on a request already complete).
        let active = self.shared.active.lock();
        let mut affected = Vec::new();
        if let Some(speak) = active.as_ref().filter(|s| !s.is_terminated()) {
            let mut playback = self.shared.link.playback.lock();
            if playback.generation == speak.generation {
                match (pause, playback.state) {
                    (true, PlayState::Playing) => playback.state = PlayState::Paused,
                    (false, PlayState::Paused) => playback.state = PlayState::Playing,
                    _ => {}
                }
                affected.push(speak.request_id);
            }
        }
        let reply = Reply::Response {
            status: Status::Success,
            state: RequestState::Complete,
            completion: None,
            active_ids: affected,
            marker: None,
        };
        ch.send(request.origin, &reply);
        drop(active);
    }
}

/// 200 IN-PROGRESS for a SPEAK, with the Speech-Marker timestamp of its
/// start (RFC 6787 §8.4.2's example does so).
fn respond_in_progress(ch: ChannelRef, origin: Origin) -> bool {
    let reply = Reply::Response {
        status: Status::Success,
        state: RequestState::InProgress,
        completion: None,
        active_ids: Vec::new(),
        marker: Some(speech_marker(None)),
    };
    ch.send(origin, &reply)
}
