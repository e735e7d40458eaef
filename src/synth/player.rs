//! A SPEAK's plan played into the channel's buffer: from the cache, by
//! following a flight, or upstream request by request, with pauses and
//! marks, all in one buffer generation. Upstream audio and pauses go
//! through the SPEAK's spill (spill.rs), so its requests run at the
//! upstream's speed whatever the buffer holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::marks::PartMarks;
use super::sources::{Fed, Source, ROOM_WAIT};
use super::spill::{lost_or_stopped, spill_place, SpillSink};
use super::{Job, Worker, STOPPED};
use crate::cache::{Cache, FlightEnd, Key, Lookup, Probe, Tee, REDIS_POLL};
use crate::error::Failure;
use crate::events::{Attempt, Event};
use crate::media::{AudioSink, Push, NO_CUE};
use crate::plan::{self, Step};
use crate::tts::capacity::{retry, Health, Next, Permit, Ticket};
use crate::tts::{Outcome, SpeechRequest, Stats, Transport, Trouble, READ_BUFFER};

/// Longest sleep while queued for a slot (a grant, a command or the
/// backoff's end wakes it sooner; this only bounds a missed wake-up).
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How the wait for an upstream slot ended.
enum Slot {
    Granted(Permit),
    Interrupted,
    TimedOut,
}

/// What the shared cache tier gave on a local miss.
enum Tier {
    Hit(Vec<u8>),
    /// This server synthesizes it for everyone (the lock's token).
    Lead(String),
    Upstream,
    Interrupted,
}

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
    ///
    /// Never inlined: its locals would otherwise live in the worker's
    /// outermost frame, resident for the thread's whole life, and LLVM laid
    /// them out beside the idle loop's instead of over them (that frame was
    /// 5.2 KiB with it inlined, 1.6 KiB without; an idle worker's stack
    /// 16 KiB, now 12 KiB: tests/stack.rs).
    #[inline(never)]
    pub(super) fn synthesize(&mut self, transport: &mut Transport, job: Box<Job>) {
        crate::ffi::panic::inject("synthesize");
        self.wakeups_at = self.shared.link.waker.wakeups();
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
        // This server synthesizes for the shared tier too (its lock token).
        let mut redis_lock: Option<String> = None;
        if let (Some(cache), Some(key)) = (job.cache.clone(), key) {
            if job.policy.read {
                let found = cache.lookup(key, job.sample_rate, job.policy.max_age, &self.shared.link.waker);
                job.observers.emit(Event::CacheLookup(match &found {
                    Lookup::Hit(_) => "hit",
                    Lookup::Follow(_) => "follower",
                    Lookup::Lead(..) => "miss",
                }));
                match found {
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
                    Lookup::Lead(flight, mut writer) => {
                        // A local miss: the tier shared with other servers
                        // may have it, or be getting it.
                        match self.shared_tier(&job, &cache, key) {
                            Tier::Hit(audio) => {
                                flight.append(&audio);
                                if let Some(mut w) = writer.take() {
                                    w.write(&audio);
                                    w.commit();
                                }
                                cache.land(key, &flight, FlightEnd::Complete);
                                let started = Instant::now();
                                let (fed, first) = self.feed(&job, Source::Memory(audio, 0));
                                return self.fed(job, fed, "redis", first.map(|t| t.duration_since(started)));
                            }
                            Tier::Interrupted => {
                                cache.land(key, &flight, FlightEnd::Abandoned);
                                return self.fed(job, Fed::Interrupted(0), "redis", None);
                            }
                            Tier::Lead(token) => redis_lock = Some(token),
                            Tier::Upstream => {}
                        }
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
        if let (Some(token), Some((cache, key, _))) = (&redis_lock, &lead) {
            if let Some(tier) = cache.redis() {
                match end {
                    FlightEnd::Complete => tier.store(key, cache.entry_bytes(key).as_deref(), token),
                    _ => tier.unlock(key, token),
                }
            }
        }
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

    /// Asks the shared tier (Redis) on a local miss: its entry, or the lock
    /// to synthesize it; while another server holds the lock, waits for its
    /// entry (serving commands), at most the lock's lifetime.
    fn shared_tier(&mut self, job: &Job, cache: &Arc<Cache>, key: Key) -> Tier {
        let Some(tier) = cache.redis() else { return Tier::Upstream };
        let deadline = Instant::now() + crate::cache::RedisTier::lock_ttl();
        let mut waited = false;
        loop {
            match tier.probe(&key, job.sample_rate, job.policy.max_age, waited) {
                Probe::Hit(audio) => return Tier::Hit(audio),
                Probe::Lead(token) => return Tier::Lead(token),
                Probe::Unavailable => return Tier::Upstream,
                Probe::Busy => {}
            }
            if Instant::now() >= deadline {
                log::info!(
                    "[{}] SPEAK {}: another server's synthesis of this prompt did not land in time; synthesizing it here",
                    self.id(),
                    job.speak.request_id
                );
                return Tier::Upstream;
            }
            waited = true;
            if self.serve_commands(job) {
                return Tier::Interrupted;
            }
            self.shared.link.waker.wait(Some(REDIS_POLL));
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
            spill_place(job),
            self.id(),
            job.speak.request_id,
            job.sample_rate,
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
                    self.shared.link.waker.wait(Some(ROOM_WAIT));
                }
                Push::Stale => return (lost_or_stopped(sink), pushed),
            }
        }
        (Part::Done, pushed)
    }

    /// One upstream request of the SPEAK: routed past the circuit
    /// breakers, queued for one of the account's slots, sent, and tried
    /// again while that is worth it (see tts/capacity). The slot is given
    /// back the moment the transfer ends (the spill takes what the buffer
    /// cannot). The SPEAK's sink and tee go in and come back.
    fn transfer(
        &mut self,
        transport: &mut Transport,
        request: &SpeechRequest,
        job: &Job,
        mut tee: Tee,
        mut sink: Box<dyn AudioSink>,
        marks: &mut PartMarks<'_>,
    ) -> (Part, Stats, Tee, Box<dyn AudioSink>) {
        let capacity = &job.capacity;
        let queued_at = Instant::now();
        let queue_deadline = queued_at + capacity.queue_timeout;
        // Retries share the first byte's budget, counted from the first
        // time a slot was granted.
        let mut budget: Option<Instant> = None;
        let (mut tries, mut retries, mut requeues) = (0u32, 0u32, 0u32);
        let mut again: Option<Instant> = None; // a retry's backoff
        let mut last: Option<(Failure, Stats)> = None;
        // What the upstream last actually answered, and that request's id:
        // when a retry runs out of the budget before its first byte, that
        // answer, not the timeout, is the news.
        let mut answered: Option<(Failure, Option<String>)> = None;
        let give_up = |failure: Failure, stats: &Stats, answered: &Option<(Failure, Option<String>)>, tries| match (
            failure, answered,
        ) {
            (Failure::FirstByteTimeout(_), Some((earlier, id))) => earlier.clone().tried(tries, id.clone()),
            (failure, _) => failure.tried(tries, stats.request_id.clone()),
        };
        let mut queue_wait = std::time::Duration::ZERO;
        loop {
            let pass = match capacity.route() {
                Ok(pass) => pass,
                Err(refused) => {
                    // The circuit opened under our retries: say what the
                    // upstream last said to us.
                    let (failure, stats) = match last {
                        Some((failure, stats)) => (failure, stats),
                        None => (refused, Stats::default()),
                    };
                    let id = stats.request_id.clone();
                    return (Part::Failed(failure.tried(tries, id)), stats, tee, sink);
                }
            };
            let ticket = capacity.limiter.enqueue(Arc::clone(&self.shared.link.waker), tries > 0, again);
            let queued = Instant::now();
            // Nothing stays staged in memory while queued (spill.rs).
            sink.flush();
            let slot = self.wait_for_slot(job, ticket, queue_deadline, sink.as_mut());
            let waited = queued.elapsed();
            queue_wait += waited;
            job.observers.emit(Event::Queued { waited });
            let permit = match slot {
                Slot::Granted(permit) => permit,
                Slot::Interrupted => {
                    let stats = last.map(|(_, s)| s).unwrap_or_default();
                    return (Part::Interrupted, stats, tee, sink);
                }
                Slot::TimedOut => {
                    let busy = Failure::Busy { waited: queued_at.elapsed(), slots: capacity.limiter.figures().limit };
                    let (failure, stats) = match last {
                        // Retrying a failure, the queue never came free:
                        // the failure is the news.
                        Some((failure, stats)) => (failure, stats),
                        None => (busy, Stats { queue_wait, ..Stats::default() }),
                    };
                    let id = stats.request_id.clone();
                    return (Part::Failed(failure.tried(tries, id)), stats, tee, sink);
                }
            };
            let deadline = *budget.get_or_insert_with(|| Instant::now() + job.config.first_byte_timeout);
            if let Some((failure, stats)) = last.take() {
                if Instant::now() >= deadline {
                    // The queue ate what was left of the budget.
                    let id = stats.request_id.clone();
                    return (Part::Failed(failure.tried(tries, id)), stats, tee, sink);
                }
            }
            tries += 1;
            let (part, mut stats, back, back_sink) =
                self.attempt(transport, request, job, tee, sink, marks, pass.base_url(), deadline);
            (tee, sink) = (back, back_sink);
            stats.tries = tries;
            stats.queue_wait = queue_wait;
            if pass.is_fallback() {
                stats.source = "fallback";
            }
            report_attempt(job, request, &part, &stats, pass.is_fallback());
            if let Some(max) = stats.max_concurrency {
                capacity.limiter.advertise(max);
            }
            let failure = match part {
                Part::Done => {
                    pass.report(Health::Up, "");
                    permit.succeeded();
                    return (Part::Done, stats, tee, sink);
                }
                // A probe that was stopped says nothing (Pass's drop).
                Part::Interrupted => return (Part::Interrupted, stats, tee, sink),
                Part::Failed(failure) => failure,
            };
            let (next, health) = retry::judge(stats.trouble.as_ref());
            pass.report(health, &failure.to_string());
            // Audio of this attempt reached the buffer or the cache copy: a
            // caller must never hear a phrase twice.
            let heard = stats.received > 0;
            let now = Instant::now();
            match next {
                Next::Requeue if !heard => {
                    job.observers.emit(Event::Retry { requeue: true });
                    permit.rejected();
                    requeues += 1;
                    again = Some(now + retry::requeue_delay(requeues));
                }
                Next::Retry if !heard && retries < capacity.max_retries => {
                    drop(permit);
                    let wait = retry::backoff(retries + 1);
                    if now + wait >= deadline {
                        let failure = give_up(failure, &stats, &answered, tries);
                        return (Part::Failed(failure), stats, tee, sink);
                    }
                    retries += 1;
                    again = Some(now + wait);
                    job.observers.emit(Event::Retry { requeue: false });
                    log::info!(
                        "[{}] SPEAK {}: try {tries} failed ({failure}); retrying in {} ms",
                        self.id(),
                        job.speak.request_id,
                        wait.as_millis()
                    );
                }
                _ => {
                    drop(permit);
                    let failure = give_up(failure, &stats, &answered, tries);
                    return (Part::Failed(failure), stats, tee, sink);
                }
            }
            if stats.trouble.as_ref().is_some_and(|t| matches!(t, Trouble::Status { .. })) {
                answered = Some((failure.clone(), stats.request_id.clone()));
            }
            last = Some((failure, stats));
        }
    }

    /// Waits in the engine's queue for an upstream slot, serving commands
    /// (a STOP takes the SPEAK out of the queue at once: dropping the
    /// ticket leaves it) and keeping the buffer fed from the spill: audio
    /// an earlier part (or a failed attempt) spilled must keep playing
    /// while the next request waits, or the caller hears a gap as long as
    /// the wait beyond the buffer. `pump` asks the media thread to wake us
    /// once a refill fits.
    fn wait_for_slot(&mut self, job: &Job, mut ticket: Ticket, deadline: Instant, sink: &mut dyn AudioSink) -> Slot {
        loop {
            // Stale (a STOP) is seen by serve_commands below.
            let _ = sink.pump();
            if let Some(permit) = ticket.take() {
                return Slot::Granted(permit);
            }
            if self.serve_commands(job) {
                return Slot::Interrupted;
            }
            let now = Instant::now();
            if now >= deadline {
                // Granted at the last moment still counts.
                return ticket.take().map_or(Slot::TimedOut, Slot::Granted);
            }
            let mut wait = deadline - now;
            if let Some(hint) = ticket.wait_hint(now) {
                wait = wait.min(hint);
            }
            self.shared.link.waker.wait(Some(wait.min(SLOT_WAIT)));
        }
    }

    /// One attempt at one upstream request, run to its end while commands
    /// keep being served (a STOP must not wait for the network).
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &mut self,
        transport: &mut Transport,
        request: &SpeechRequest,
        job: &Job,
        tee: Tee,
        sink: Box<dyn AudioSink>,
        marks: &mut PartMarks<'_>,
        base_url: &str,
        first_byte_by: Instant,
    ) -> (Part, Stats, Tee, Box<dyn AudioSink>) {
        let mut transfer = match transport.start(&job.provider, base_url, request, sink, tee) {
            Ok(t) => t,
            Err((reason, tee, sink)) => return (Part::Failed(reason), Stats::default(), tee, sink),
        };
        transfer.first_byte_by(first_byte_by);
        let mut expired: Option<Failure> = None;
        let mut interrupted = false;
        let mut body_before = 0;
        // When the last read that brought body bytes was, and how long the
        // upstream takes to send GATHER bytes at the pace it last showed.
        let mut data_at = Instant::now();
        let mut pace: Option<Duration> = None;
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
            // What the reads since the last that brought anything took from
            // the socket, encoded or not (an encoded stream's full read
            // decodes to less audio), and over how long it gathered there.
            let body = transfer.body_bytes();
            let got = body - body_before;
            body_before = body;
            if got > 0 {
                pace = Some(gather_time(got, now.saturating_duration_since(data_at)));
                data_at = now;
            }
            // Requests queued for a slot: ours is given back sooner (the
            // limiter's lock is taken only for a linger that long).
            let queued = || job.capacity.limiter.figures().waiting > 0;
            match linger(transfer.ahead(), pace, queued, job.sample_rate, request.config.stall_timeout) {
                // Commands still wake us at once; the upstream's bytes wait
                // in the socket and are taken in one read.
                Some(pause) => {
                    transfer.refill_after_linger(pause);
                    self.shared.link.waker.wait(Some(pause));
                }
                None => {
                    let signalled = transfer.wait(self.shared.link.waker.fd(), now);
                    self.shared.link.waker.woke(signalled);
                }
            }
        }
        let (outcome, mut stats, tee, sink) = transfer.finish();
        if interrupted || job.speak.is_terminated() {
            return (Part::Interrupted, stats, tee, sink);
        }
        if expired.is_some() {
            stats.trouble = Some(Trouble::Timeout);
        }
        let part = match (expired, outcome) {
            (Some(reason), _) | (None, Outcome::Failed(reason)) => Part::Failed(reason),
            (None, Outcome::Stale) => Part::Interrupted,
            (None, Outcome::Complete) => Part::Done,
        };
        (part, stats, tee, sink)
    }
}

/// Tells the engine's observers how one upstream attempt went.
fn report_attempt(job: &Job, request: &SpeechRequest, part: &Part, stats: &Stats, fallback: bool) {
    let detail = match &stats.trouble {
        Some(Trouble::Status { detail, .. }) => detail.as_deref(),
        _ => None,
    };
    let timeout = match (part, &stats.trouble) {
        (Part::Failed(Failure::Stalled(_)), _) => Some("stall"),
        (Part::Failed(Failure::FirstByteTimeout(_)), _) => Some("first_byte"),
        (Part::Failed(_), Some(Trouble::Timeout)) => Some("connect"),
        _ => None,
    };
    job.observers.emit(Event::Attempt(Attempt {
        endpoint: if fallback { "fallback" } else { "primary" },
        http_status: stats.http_status,
        detail,
        time_to_first_byte: stats.time_to_first_byte,
        chars_sent: request.text.chars().count(),
        characters_billed: stats.characters,
        timeout,
    }));
}

/// Audio the caller always keeps ahead while the worker lingers: the
/// upstream's bytes are read before playback gets closer than this. It
/// covers a timed wake-up that comes late (a loaded server's scheduling
/// delay: milliseconds) with room to spare. At 250 ms the worker did not
/// linger in a SPEAK's first 300 ms, so it woke for each network chunk as
/// it came (every 25 ms at 4x real time, bench [10]), and reached lingers
/// of half a second only after 900 ms: 8 wake-ups in a SPEAK's first
/// second, against 6 at 100 ms.
const LINGER_MARGIN_MS: u64 = 100;
/// The longest the worker lets the upstream's bytes gather: also the
/// longest it may take to see that a transfer has ended (its slot is given
/// back then).
const LINGER: Duration = Duration::from_millis(500);
/// The same while other requests wait for a slot (the limiter's queue):
/// each of them would wait up to this much longer.
const LINGER_QUEUED: Duration = Duration::from_millis(200);
/// Shorter lingers are not worth a sleep of their own.
const LINGER_MIN: Duration = Duration::from_millis(20);
/// Body bytes a linger lets gather in the socket, at the upstream's last
/// pace: two reads (READ_BUFFER each) per wake-up, a fraction of a socket's
/// receive buffer (Linux starts one at 128 KiB), so the upstream never
/// finds its window closed and is never held back by a linger (that would
/// keep its slot longer, bench [6]).
const GATHER: u64 = 2 * READ_BUFFER as u64;

/// How long the upstream takes to send GATHER body bytes, having sent `got`
/// over `over` (the time since the previous read that brought any).
fn gather_time(got: u64, over: Duration) -> Duration {
    let nanos = over.as_nanos().saturating_mul(u128::from(GATHER)) / u128::from(got.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Whether the worker may sleep `Some(pause)` (waking only for commands and
/// the media thread) instead of waiting on the upstream's socket: half of
/// what the caller has ahead beyond LINGER_MARGIN_MS, at most LINGER (or
/// LINGER_QUEUED while other requests are `queued` for a slot: asked only
/// of a pause longer than that), and at most
/// the time the upstream takes to send GATHER bytes at its last pace
/// (`pace`, from `gather_time`; None: no body yet). So what a wake-up reads
/// is bounded in bytes, not only in time: a fast upstream, which would fill
/// the socket beyond GATHER within LINGER_MIN, is read at every network
/// chunk. Bounded by 200 ms and judged by whether the last read filled most
/// of a buffer, a linger at 4x real time and 8 kHz gathered 12.8 KB: 2.8
/// wake-ups per s of audio in bench [10] (1.9 this way). A small `stall`
/// limit shortens it.
fn linger(
    ahead: Option<usize>,
    pace: Option<Duration>,
    queued: impl FnOnce() -> bool,
    rate: u32,
    stall: Duration,
) -> Option<Duration> {
    let bytes_per_ms = crate::media::bytes_per_ms(rate) as u64;
    let ahead_ms = u64::try_from(ahead?).unwrap_or(u64::MAX) / bytes_per_ms;
    let mut pause =
        Duration::from_millis(ahead_ms.saturating_sub(LINGER_MARGIN_MS) / 2).min(LINGER).min(pace?).min(stall / 4);
    if pause > LINGER_QUEUED && queued() {
        pause = LINGER_QUEUED;
    }
    (pause >= LINGER_MIN).then_some(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingers_for_half_the_audio_ahead_beyond_the_margin_and_only_while_the_upstream_sends_little() {
        let stall = Duration::from_secs(5);
        let ms = Duration::from_millis;
        let slow = Some(Duration::from_secs(10));
        let no_queue = || false;
        let queue = || true;
        // 8 kHz: 16 bytes per ms.
        assert_eq!(linger(Some(16_000), slow, no_queue, 8000, stall), Some(ms(450)), "1 s ahead");
        assert_eq!(linger(Some(1 << 20), slow, no_queue, 8000, stall), Some(LINGER), "at most LINGER");
        assert_eq!(
            linger(Some(400 * 16), slow, no_queue, 8000, stall),
            Some(ms(150)),
            "half of what is beyond the margin"
        );
        assert_eq!(linger(Some(130 * 16), slow, no_queue, 8000, stall), None, "too little ahead to be worth a sleep");
        assert_eq!(linger(Some(130 * 32), slow, no_queue, 8000, stall), Some(ms(80)), "twice the bytes");
        assert_eq!(linger(Some(130 * 32), slow, no_queue, 16000, stall), None, "the rate counts");
        assert_eq!(linger(None, slow, no_queue, 8000, stall), None, "held back, or no audio yet");
        assert_eq!(linger(Some(1 << 20), None, no_queue, 8000, stall), None, "no body yet: its pace is unknown");
        assert_eq!(
            linger(Some(1 << 20), Some(ms(120)), no_queue, 8000, stall),
            Some(ms(120)),
            "GATHER bytes at the pace"
        );
        assert_eq!(linger(Some(1 << 20), Some(ms(19)), no_queue, 8000, stall), None, "a fast upstream is read at once");
        assert_eq!(linger(Some(1 << 20), slow, queue, 8000, stall), Some(LINGER_QUEUED), "others wait for a slot");
        assert_eq!(linger(Some(400 * 16), slow, queue, 8000, stall), Some(ms(150)), "the audio ahead still counts");
        let asked = std::cell::Cell::new(false);
        let watched = || {
            asked.set(true);
            true
        };
        assert_eq!(linger(Some(400 * 16), slow, watched, 8000, stall), Some(ms(150)));
        assert!(!asked.get(), "the queue is looked at only for a pause it could shorten");
        assert_eq!(
            linger(Some(1 << 20), slow, no_queue, 8000, ms(100)),
            Some(ms(25)),
            "a quarter of the stall limit at most"
        );
    }

    #[test]
    fn gather_time_is_the_time_for_gather_bytes_at_the_pace_seen() {
        let ms = Duration::from_millis;
        // 4x real time at 8 kHz: 64 KB/s, 12.8 KB in 200 ms.
        assert_eq!(gather_time(12_800, ms(200)), ms(512));
        assert_eq!(gather_time(GATHER, ms(30)), ms(30));
        assert_eq!(gather_time(4 * GATHER, ms(40)), ms(10), "a fast upstream: too short a linger");
        assert_eq!(gather_time(0, ms(5)), ms(5) * GATHER as u32, "no bytes: as slow as can be");
        assert_eq!(gather_time(1, Duration::MAX), Duration::from_nanos(u64::MAX), "saturates");
    }
}
