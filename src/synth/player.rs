//! A SPEAK's plan played into the channel's buffer: from the cache, by
//! following a flight, or upstream request by request, with pauses and
//! marks, all in one buffer generation. Upstream audio and pauses go
//! through the SPEAK's spill (spill.rs), so its requests run at the
//! upstream's speed whatever the buffer holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::marks::PartMarks;
use super::sources::{Fed, Source, FEED_WAIT};
use super::spill::{lost_or_stopped, spill_dir, SpillSink};
use super::{Job, Worker, STOPPED};
use crate::cache::{FlightEnd, Lookup, Tee};
use crate::error::Failure;
use crate::media::{AudioSink, Push, NO_CUE};
use crate::plan::{self, Step};
use crate::tts::{Outcome, SpeechRequest, Stats, Transport};

/// How one upstream request (or pause, or the spill's drain) of a SPEAK
/// ended.
pub(super) enum Part {
    Done,
    Interrupted,
    Failed(Failure),
}

impl Worker {
    /// Speaks the job's text: from the cache, by following a synthesis of
    /// the same prompt already in progress, or upstream (one request per
    /// part: long texts are split at sentence ends, see split.rs), all into
    /// the same buffer generation so everything plays without a gap.
    pub(super) fn synthesize(&mut self, transport: &mut Transport, job: Job) {
        crate::ffi::panic::inject("synthesize");
        self.marks.clear();
        self.shared.link.cue_at.store(NO_CUE, Ordering::Release);
        // Marks are placed from the alignment of a live synthesis; a cached
        // entry has none, so SPEAKs with marks always go upstream.
        let key = job
            .cache
            .as_ref()
            .filter(|_| !job.plan.has_marks())
            .map(|_| job.plan.cache_key(job.sample_rate, job.provider.as_ref()));
        let mut tee = Tee::default();
        let mut lead = None;
        if let (Some(cache), Some(key)) = (job.cache.clone(), key) {
            if job.policy.read {
                match cache.lookup(key, job.sample_rate, job.policy.max_age, &self.shared.link.waker) {
                    Lookup::Hit(audio) => {
                        let started = Instant::now();
                        let (fed, first) = self.feed(&job, Source::Memory(audio, 0));
                        return self.fed(job, fed, "cache", first.map(|t| t.duration_since(started)));
                    }
                    Lookup::Follow(flight) => {
                        let started = Instant::now();
                        match self.feed(&job, Source::Flight(flight, 0)) {
                            // The leader went away: synthesize it ourselves,
                            // without replaying what was already heard.
                            (Fed::Abandoned(played), _) => tee.skip = played,
                            (fed, first) => {
                                return self.fed(job, fed, "shared", first.map(|t| t.duration_since(started)))
                            }
                        }
                    }
                    Lookup::Lead(flight, writer) => {
                        tee.flight = Some(Arc::clone(&flight));
                        tee.writer = writer.map(Box::new);
                        lead = Some((Arc::clone(&cache), key, flight));
                    }
                }
            }
            if lead.is_none() && job.policy.write {
                tee.writer = cache.writer(key, job.sample_rate).map(Box::new);
            }
        }
        let (result, total, mut tee, mut sink) = self.upstream(transport, &job, tee);
        let end = match &result {
            Part::Done => {
                if let Some(writer) = tee.writer.take() {
                    (*writer).commit();
                }
                FlightEnd::Complete
            }
            Part::Failed(reason) => FlightEnd::Failed(reason.clone()),
            Part::Interrupted => FlightEnd::Abandoned,
        };
        drop(tee); // an uncommitted entry is deleted here
        if let Some((cache, key, flight)) = lead {
            cache.land(key, &flight, end);
        }
        // The upstream is done (entry written, followers served); what it
        // sent beyond the buffer is still in the spill file.
        let result = match result {
            Part::Done => self.drain_spill(&job, sink.as_mut()),
            other => other,
        };
        drop(sink); // the spill file goes with it
        match result {
            Part::Done => self.finish_buffering(job, total),
            Part::Interrupted => {
                // Ended by STOP / BARGE-IN (answered on the MRCP Server
                // thread) or by a shutdown, which sent its SPEAK-COMPLETE.
                let label = if self.exit.is_some() { "004 error (shutdown)" } else { STOPPED };
                self.summary(&job, &total, label);
            }
            Part::Failed(reason) => self.fail(&job, reason, total),
        }
    }

    /// Plays the plan: every request upstream, one after the other, pauses
    /// as silence, marks placed where their audio is; all through one sink,
    /// handed back with what it may still hold.
    fn upstream(
        &mut self,
        transport: &mut Transport,
        job: &Job,
        mut tee: Tee,
    ) -> (Part, Stats, Tee, Box<dyn AudioSink>) {
        let mut sink: Box<dyn AudioSink> = Box::new(SpillSink::new(
            Arc::clone(&self.shared.link),
            job.speak.generation,
            spill_dir(job),
            self.id(),
            job.speak.request_id,
        ));
        let mut total = Stats { source: "upstream", ..Stats::default() };
        let requests_total = job.plan.steps.iter().filter(|s| matches!(s, Step::Say(_))).count();
        let mut said = 0;
        for step in &job.plan.steps {
            let utterance = match step {
                Step::Say(u) => u,
                Step::Pause { ms } => {
                    let bytes = (u64::from(*ms) * u64::from(job.sample_rate) / 1000 * 2) as usize;
                    let (part, pushed) = self.silence(job, bytes, &mut tee, sink.as_mut());
                    total.audio_bytes += pushed;
                    match part {
                        Part::Done => continue,
                        other => return (other, total, tee, sink),
                    }
                }
                Step::Mark(name) => {
                    self.marks.place(total.audio_bytes, name.clone());
                    continue;
                }
            };
            said += 1;
            let requests = plan::requests(utterance, job.sample_rate);
            let n = requests.len();
            // The upstream's id of each part sent so far (request stitching).
            let mut ids: Vec<Option<String>> = Vec::with_capacity(n);
            for (i, (part, planned)) in requests.iter().enumerate() {
                let mut request = planned.clone();
                plan::stitch(&mut request, &ids);
                let mut marks = PartMarks::new(total.audio_bytes, part, job.sample_rate);
                let (result, stats, back, back_sink) = self.transfer(transport, &request, job, tee, sink, &mut marks);
                (tee, sink) = (back, back_sink);
                total.add(&stats);
                ids.push(stats.request_id);
                match result {
                    Part::Done => {}
                    // Say which request failed when there were several.
                    Part::Failed(failure) if requests_total > 1 || n > 1 => {
                        let mut at = Vec::new();
                        if requests_total > 1 {
                            at.push(format!("text {said} of {requests_total}"));
                        }
                        if n > 1 {
                            at.push(format!("part {} of {n}", i + 1));
                        }
                        return (Part::Failed(failure.at(at.join(", "))), total, tee, sink);
                    }
                    other => return (other, total, tee, sink),
                }
            }
        }
        (Part::Done, total, tee, sink)
    }

    /// Silence for a `<break>`, through the SPEAK's sink like its speech
    /// (and into the cache copy, so a cached SPEAK keeps its pauses).
    fn silence(&mut self, job: &Job, bytes: usize, tee: &mut Tee, sink: &mut dyn AudioSink) -> (Part, u64) {
        static ZEROS: [u8; 4096] = [0; 4096];
        let (mut left, mut pushed) = (bytes, 0u64);
        while left > 0 {
            if self.serve_commands(job) {
                return (Part::Interrupted, pushed);
            }
            self.announce(&job.speak, false);
            let n = left.min(ZEROS.len());
            let skip = tee.skip.min(n);
            let outcome = if skip == n { Push::Stored } else { sink.push(&ZEROS[..n - skip]) };
            match outcome {
                Push::Stored => {
                    tee.skip -= skip;
                    tee.copy(&ZEROS[..n]);
                    left -= n;
                    pushed += (n - skip) as u64;
                }
                // Only when the spill file failed: wait for room.
                Push::Full => {
                    sink.want(n - skip);
                    self.shared.link.waker.wait(Some(FEED_WAIT));
                }
                Push::Stale => return (lost_or_stopped(sink), pushed),
            }
        }
        (Part::Done, pushed)
    }

    /// One upstream request, run to its end while commands keep being
    /// served (a STOP must not wait for the network). The SPEAK's sink and
    /// tee go in and come back.
    fn transfer(
        &mut self,
        transport: &mut Transport,
        request: &SpeechRequest,
        job: &Job,
        tee: Tee,
        sink: Box<dyn AudioSink>,
        marks: &mut PartMarks<'_>,
    ) -> (Part, Stats, Tee, Box<dyn AudioSink>) {
        let mut transfer = match transport.start(&job.provider, request, sink, tee) {
            Ok(t) => t,
            Err((reason, tee, sink)) => return (Part::Failed(reason), Stats::default(), tee, sink),
        };
        let mut expired: Option<Failure> = None;
        let mut interrupted = false;
        loop {
            let finished = transfer.step();
            let (starts, bytes) = transfer.progress();
            marks.place(starts, bytes, finished, &mut self.marks);
            self.announce(&job.speak, false);
            if finished {
                break;
            }
            if self.serve_commands(job) {
                interrupted = true;
                break;
            }
            let now = Instant::now();
            if let Some(reason) = transfer.expired(now) {
                // This thread may have been preempted since its last read
                // (a loaded server): bytes already in the socket count
                // before the clock does. Read them, then judge again.
                if transfer.step() || transfer.expired(Instant::now()).is_none() {
                    continue;
                }
                expired = Some(reason);
                break;
            }
            transfer.unpause_if_room();
            transfer.wait(self.shared.link.waker.fd(), now);
            self.shared.link.waker.drain();
        }
        let (outcome, stats, tee, sink) = transfer.finish();
        if interrupted || job.speak.is_terminated() {
            return (Part::Interrupted, stats, tee, sink);
        }
        let part = match (expired, outcome) {
            (Some(reason), _) | (None, Outcome::Failed(reason)) => Part::Failed(reason),
            (None, Outcome::Stale) => Part::Interrupted,
            (None, Outcome::Complete) => Part::Done,
        };
        (part, stats, tee, sink)
    }
}
