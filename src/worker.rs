//! The channel's own OS thread: it alone owns the channel's curl handles,
//! runs each SPEAK's transfer, and sends the SPEAK's terminal message when
//! the audio has been played or the synthesis failed.
//!
//! Commands arrive over a crossbeam channel; each send is followed by a
//! wake-up of the channel's eventfd, which the thread waits on (together
//! with the transfer's sockets while one runs). `Shutdown` is the explicit
//! last message: the thread ends any SPEAK still active, answers channel
//! close if asked to, and returns so that it can be joined.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::abi::ChannelRef;
use crate::audio::{Playback, Push};
use crate::cache::{Cache, Flight, FlightEnd, KeyInput, Lookup, Policy};
use crate::channel::Shared;
use crate::config::Config;
use crate::panic::describe;
use crate::speak::{Completion, Speak};
use crate::synth::{Outcome, Request, Stats, Tee, Transport};

/// Commands queue here; a handful per SPEAK at most, so a full queue means
/// the worker is wedged and the sender reports failure instead of waiting.
pub const COMMAND_QUEUE: usize = 64;

/// Summary label of a SPEAK ended by STOP or BARGE-IN-OCCURRED (no
/// SPEAK-COMPLETE is sent for those).
const STOPPED: &str = "stopped";

pub struct Job {
    pub speak: Arc<Speak>,
    pub text: String,
    pub sample_rate: u32,
    pub config: Arc<Config>,
    /// The engine's prompt cache, if on.
    pub cache: Option<Arc<Cache>>,
    /// What the SPEAK's Cache-Control allows.
    pub policy: Policy,
}

/// How long a local feed sleeps when the buffer is full or the flight it
/// follows has nothing new (a wake-up from either cuts it short).
const FEED_WAIT: Duration = Duration::from_millis(20);

/// Audio that does not come from a transfer of our own, with how far it
/// has been pushed into the buffer.
enum Source {
    /// A cache entry, read whole (and checked) before the first byte plays.
    Memory(Vec<u8>, usize),
    /// A synthesis of the same prompt another channel is running.
    Flight(Arc<Flight>, usize),
}

enum Pulled {
    Progress,
    /// Nothing to do now; `room_wanted` > 0 when the buffer is full.
    More {
        room_wanted: usize,
    },
    Done,
    Failed(String),
    Abandoned,
}

/// How a local feed ended, with the bytes it pushed.
enum Fed {
    Done(usize),
    Failed(String, usize),
    Interrupted(usize),
    Abandoned(usize),
}

impl Fed {
    fn bytes(&self) -> usize {
        match self {
            Fed::Done(n) | Fed::Failed(_, n) | Fed::Interrupted(n) | Fed::Abandoned(n) => *n,
        }
    }
}

/// Pushes at most this much per lock of the buffer (bounded hold).
const FEED_CHUNK: usize = 16 * 1024;

impl Source {
    fn offset(&self) -> usize {
        match self {
            Source::Memory(_, off) | Source::Flight(_, off) => *off,
        }
    }

    fn pull(&mut self, playback: &mut Playback, generation: u64) -> Pulled {
        let room = playback.free().min(FEED_CHUNK);
        match self {
            Source::Memory(audio, off) => {
                if *off >= audio.len() {
                    return Pulled::Done;
                }
                let n = room.min(audio.len() - *off);
                if n == 0 {
                    return Pulled::More { room_wanted: FEED_CHUNK.min(audio.len() - *off) };
                }
                if playback.push(generation, &audio[*off..*off + n]) != Push::Stored {
                    return Pulled::More { room_wanted: 0 }; // stopped: the loop sees it
                }
                *off += n;
                Pulled::Progress
            }
            Source::Flight(flight, off) => {
                if room == 0 {
                    return Pulled::More { room_wanted: FEED_CHUNK };
                }
                let mut stored = true;
                let (n, end) =
                    flight.take(*off, room, |bytes| stored = playback.push(generation, bytes) == Push::Stored);
                if !stored {
                    return Pulled::More { room_wanted: 0 };
                }
                *off += n;
                match end {
                    Some(FlightEnd::Complete) => Pulled::Done,
                    Some(FlightEnd::Failed(reason)) => Pulled::Failed(reason),
                    Some(FlightEnd::Abandoned) => Pulled::Abandoned,
                    None if n > 0 => Pulled::Progress,
                    None => Pulled::More { room_wanted: 0 },
                }
            }
        }
    }
}

/// How one upstream request of a SPEAK ended.
enum Part {
    Done,
    Interrupted,
    Failed(String),
}

/// Context for continuity across parts: ElevenLabs conditions the
/// prosody on the text around a request; a few hundred characters do.
const CONTEXT_CHARS: usize = 300;

fn context_tail(text: &str) -> &str {
    let n = text.chars().count();
    let skip = n.saturating_sub(CONTEXT_CHARS);
    text.char_indices().nth(skip).map_or(text, |(i, _)| &text[i..])
}

fn context_head(text: &str) -> &str {
    text.char_indices().nth(CONTEXT_CHARS).map_or(text, |(i, _)| &text[..i])
}

pub enum Command {
    Speak(Job),
    /// Abort the transfer for this generation (STOP, BARGE-IN); the MRCP
    /// Server thread has already answered and ended the SPEAK.
    Cancel {
        generation: u64,
    },
    /// End everything and exit. With `respond_close`, answer channel close
    /// once the transfer is down.
    Shutdown {
        respond_close: bool,
        reason: &'static str,
    },
}

/// The MRCP side's handle on a worker.
pub struct WorkerHandle {
    tx: Sender<Command>,
    pub thread: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl WorkerHandle {
    pub fn spawn(name: String, channel: ChannelRef, shared: Arc<Shared>) -> std::io::Result<WorkerHandle> {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || run(channel, thread_shared, rx))?;
        Ok(WorkerHandle { tx, thread, shared })
    }

    /// Queues a command and wakes the thread. Never blocks.
    pub fn send(&self, command: Command) -> bool {
        let queued = self.tx.try_send(command).is_ok();
        self.shared.waker.wake();
        queued
    }
}

struct Worker {
    channel: ChannelRef,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    /// Commands that arrived during a transfer and must run after it.
    deferred: VecDeque<Command>,
    /// A SPEAK whose audio is all buffered, waiting for its last frame.
    draining: Option<(Job, Stats)>,
    exit: Option<bool>,
}

fn run(channel: ChannelRef, shared: Arc<Shared>, rx: Receiver<Command>) {
    let mut worker = Worker { channel, shared, rx, deferred: VecDeque::new(), draining: None, exit: None };
    // A panic in one SPEAK must not leave the channel mute: end that SPEAK
    // with an error, start over with fresh curl handles, keep serving.
    loop {
        let result = catch_unwind(AssertUnwindSafe(|| worker.serve()));
        match result {
            Ok(()) => break,
            Err(payload) => {
                log::error!("[{}] panic in the synthesis thread: {}", worker.id(), describe(payload.as_ref()));
                if let Some((job, _)) = worker.draining.take() {
                    worker.end(&job.speak, Completion::error("internal error in the synthesis thread"));
                }
                worker.end_active(Completion::error("internal error in the synthesis thread"));
                if worker.exit.is_some() {
                    break;
                }
            }
        }
    }
    if worker.exit == Some(true) {
        worker.channel.close_respond();
    }
}

impl Worker {
    /// The server's channel id, read when needed: the server assigns it only
    /// after create_channel (which spawned this thread) has returned.
    fn id(&self) -> String {
        self.shared.label(self.channel)
    }

    fn serve(&mut self) {
        let mut transport = match Transport::new(Arc::clone(&self.shared)) {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("[{}] cannot create curl handles: {e}", self.id());
                None
            }
        };
        loop {
            self.check_drained();
            if self.exit.is_some() {
                return;
            }
            let command = match self.deferred.pop_front() {
                Some(c) => c,
                None => match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => {
                        self.shared.waker.wait(None);
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown(false, "channel gone");
                        return;
                    }
                },
            };
            match command {
                Command::Speak(job) => match transport.as_mut() {
                    Some(t) => self.synthesize(t, job),
                    None => {
                        self.end(&job.speak, Completion::error("internal: no curl handle for this channel"));
                    }
                },
                Command::Cancel { generation } => {
                    if self.draining.as_ref().is_some_and(|(j, _)| j.speak.generation == generation) {
                        let (job, stats) = self.draining.take().expect("checked above");
                        self.summary(&job, &stats, STOPPED);
                    }
                }
                Command::Shutdown { respond_close, reason } => self.shutdown(respond_close, reason),
            }
        }
    }

    fn shutdown(&mut self, respond_close: bool, reason: &'static str) {
        if let Some((job, stats)) = self.draining.take() {
            self.stop_playback(job.speak.generation);
            if self.end(&job.speak, Completion::error(reason)) {
                self.summary(&job, &stats, "004 error (shutdown)");
            }
        }
        self.exit = Some(respond_close);
    }

    /// The media thread played the last frame of the draining SPEAK.
    fn check_drained(&mut self) {
        let played = self.shared.drained.load(Ordering::Acquire);
        if self.draining.as_ref().is_some_and(|(j, _)| j.speak.generation == played) {
            let (job, stats) = self.draining.take().expect("checked above");
            let completion = Completion::normal();
            if self.end(&job.speak, completion.clone()) {
                self.summary(&job, &stats, completion.code());
            }
        }
    }

    /// Speaks the job's text: from the cache, by following a synthesis of
    /// the same prompt already in progress, or upstream (one request per
    /// part: long texts are split at sentence ends, see split.rs), all into
    /// the same buffer generation so everything plays without a gap.
    fn synthesize(&mut self, transport: &mut Transport, job: Job) {
        crate::panic::inject("synthesize");
        let parts = crate::split::split_for_requests(&job.text, job.config.max_request_chars());
        let key = job.cache.as_ref().map(|_| {
            let c = &job.config;
            KeyInput {
                parts: &parts,
                voice_id: &c.voice_id,
                model_id: &c.model_id,
                sample_rate: job.sample_rate,
                settings: &c.voice_settings,
                language_code: c.language_code.as_deref(),
                seed: c.seed,
                text_normalization: c.apply_text_normalization.as_deref(),
                pronunciation_dictionaries: &[],
            }
            .key()
        });
        let mut tee = Tee::default();
        let mut lead = None;
        if let (Some(cache), Some(key)) = (job.cache.clone(), key) {
            if job.policy.read {
                match cache.lookup(key, job.sample_rate, job.policy.max_age, &self.shared) {
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
        let (result, total, mut tee) = self.upstream(transport, &job, &parts, tee);
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

    /// Every part of the text upstream, one request after the other.
    fn upstream(&mut self, transport: &mut Transport, job: &Job, parts: &[String], mut tee: Tee) -> (Part, Stats, Tee) {
        let mut total = Stats { source: "upstream", ..Stats::default() };
        for (i, part) in parts.iter().enumerate() {
            let request = Request {
                config: &job.config,
                text: part,
                sample_rate: job.sample_rate,
                previous_text: i.checked_sub(1).map(|p| context_tail(&parts[p])),
                next_text: parts.get(i + 1).map(|n| context_head(n)),
            };
            let (result, stats, back) = self.transfer(transport, &request, job, tee);
            tee = back;
            total.add(&stats);
            match result {
                Part::Done => {}
                Part::Failed(reason) if parts.len() > 1 => {
                    return (Part::Failed(format!("{reason} (part {} of {})", i + 1, parts.len())), total, tee)
                }
                other => return (other, total, tee),
            }
        }
        (Part::Done, total, tee)
    }

    /// All audio is in the buffer: the SPEAK completes once it is played.
    fn finish_buffering(&mut self, job: Job, stats: Stats) {
        let finished = self.shared.playback.lock().finish(job.speak.generation);
        if finished {
            self.draining = Some((job, stats));
            // The last frame may already have been taken.
            self.check_drained();
        }
    }

    /// The end of a local feed, as for an upstream transfer.
    fn fed(&mut self, job: Job, fed: Fed, source: &'static str, first_byte: Option<Duration>) {
        let stats = Stats { audio_bytes: fed.bytes() as u64, time_to_first_byte: first_byte, http_status: 0, source };
        match fed {
            Fed::Done(_) => self.finish_buffering(job, stats),
            Fed::Failed(reason, _) => self.fail(&job, reason, stats),
            Fed::Interrupted(_) | Fed::Abandoned(_) => {
                let label = if self.exit.is_some() { "004 error (shutdown)" } else { STOPPED };
                self.summary(&job, &stats, label);
            }
        }
    }

    /// Pushes audio from a local source (a cache entry, or a flight another
    /// channel is downloading) into the buffer as the media thread makes
    /// room, serving commands meanwhile.
    /// Serves the commands that arrived while `job` runs: a STOP must not
    /// wait for the network or the buffer. True when the job must end now
    /// (stopped, or shut down: then its SPEAK-COMPLETE is already sent);
    /// other commands wait until the job is over.
    fn serve_commands(&mut self, job: &Job) -> bool {
        let generation = job.speak.generation;
        let mut interrupted = false;
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Cancel { generation: g } if g == generation => interrupted = true,
                Command::Cancel { .. } => {}
                Command::Shutdown { respond_close, reason } => {
                    self.stop_playback(generation);
                    self.end(&job.speak, Completion::error(reason));
                    self.exit = Some(respond_close);
                    interrupted = true;
                }
                other => self.deferred.push_back(other),
            }
        }
        interrupted || job.speak.is_terminated()
    }

    /// Returns how it ended and when the first byte went into the buffer.
    fn feed(&mut self, job: &Job, mut source: Source) -> (Fed, Option<Instant>) {
        let generation = job.speak.generation;
        let mut first: Option<Instant> = None;
        let fed = loop {
            if self.serve_commands(job) {
                break Fed::Interrupted(source.offset());
            }
            let step = {
                let mut playback = self.shared.playback.lock();
                source.pull(&mut playback, generation)
            };
            match step {
                Pulled::More { room_wanted } => {
                    if room_wanted > 0 {
                        self.shared.want_space.store(room_wanted, Ordering::Release);
                    }
                    self.shared.waker.wait(Some(FEED_WAIT));
                }
                Pulled::Progress => {
                    first.get_or_insert_with(Instant::now);
                }
                Pulled::Done => {
                    if source.offset() > 0 {
                        first.get_or_insert_with(Instant::now);
                    }
                    break Fed::Done(source.offset());
                }
                Pulled::Failed(reason) => break Fed::Failed(reason, source.offset()),
                Pulled::Abandoned => break Fed::Abandoned(source.offset()),
            }
        };
        if let Source::Flight(flight, _) = &source {
            flight.unfollow(&self.shared);
        }
        (fed, first)
    }

    /// One upstream request, run to its end while commands keep being
    /// served (a STOP must not wait for the network).
    fn transfer(
        &mut self,
        transport: &mut Transport,
        request: &Request<'_>,
        job: &Job,
        tee: Tee,
    ) -> (Part, Stats, Tee) {
        let generation = job.speak.generation;
        let mut transfer = match transport.start(request, generation, tee) {
            Ok(t) => t,
            Err((reason, tee)) => return (Part::Failed(reason), Stats::default(), tee),
        };
        let mut expired: Option<String> = None;
        let mut interrupted = false;
        loop {
            if transfer.step() {
                break;
            }
            if self.serve_commands(job) {
                interrupted = true;
                break;
            }
            let now = Instant::now();
            if let Some(reason) = transfer.expired(now) {
                expired = Some(reason);
                break;
            }
            transfer.unpause_if_room();
            transfer.wait(self.shared.waker.fd(), now);
            self.shared.waker.drain();
        }
        let (outcome, stats, tee) = transfer.finish();
        if interrupted || job.speak.is_terminated() {
            return (Part::Interrupted, stats, tee);
        }
        let part = match (expired, outcome) {
            (Some(reason), _) | (None, Outcome::Failed(reason)) => Part::Failed(reason),
            (None, Outcome::Stale) => Part::Interrupted,
            (None, Outcome::Complete) => Part::Done,
        };
        (part, stats, tee)
    }

    fn fail(&mut self, job: &Job, reason: String, stats: Stats) {
        self.stop_playback(job.speak.generation);
        let completion = Completion::error(reason);
        log::warn!("[{}] SPEAK {}: {}", self.id(), job.speak.request_id, completion.reason.as_deref().unwrap_or(""));
        if self.end(&job.speak, completion.clone()) {
            self.summary(job, &stats, completion.code());
        }
    }

    /// Silence from the next frame on, if the buffer still plays this SPEAK.
    fn stop_playback(&self, generation: u64) {
        let mut playback = self.shared.playback.lock();
        if playback.generation == generation {
            playback.stop();
        }
    }

    /// Sends the SPEAK's terminal message unless somebody else already
    /// ended it. Claim, clear and send happen under the `active` lock, so a
    /// STOP either finds the SPEAK still active (and ends it itself) or
    /// comes after its SPEAK-COMPLETE.
    fn end(&self, speak: &Arc<Speak>, completion: Completion) -> bool {
        let mut active = self.shared.active.lock();
        if !speak.claim() {
            return false;
        }
        if active.as_ref().is_some_and(|a| Arc::ptr_eq(a, speak)) {
            *active = None;
        }
        crate::speak::send_complete(self.channel, speak.request, &completion);
        true
    }

    /// Ends whatever SPEAK is active (after a panic).
    fn end_active(&self, completion: Completion) {
        let speak = self.shared.active.lock().clone();
        if let Some(speak) = speak {
            self.stop_playback(speak.generation);
            self.end(&speak, completion);
        }
    }

    /// The one INFO line per SPEAK that operators grep for.
    fn summary(&self, job: &Job, stats: &Stats, cause: &str) {
        let bytes_per_ms = u64::from(job.sample_rate) * 2 / 1000;
        let audio_ms = stats.audio_bytes / bytes_per_ms.max(1);
        let ttfb = stats.time_to_first_byte.map_or_else(|| "-".to_owned(), |d| format!("{}", d.as_millis()));
        log::info!(
            "[{}] SPEAK {} done: chars={} voice={} model={} rate={} source={} ttfb_ms={} audio_ms={} bytes={} http={} cause={}",
            self.id(),
            job.speak.request_id,
            job.text.chars().count(),
            job.config.voice_id,
            job.config.model_id,
            job.sample_rate,
            stats.source,
            ttfb,
            audio_ms,
            stats.audio_bytes,
            stats.http_status,
            cause
        );
    }
}

/// How long a join may take before we say so in the log (it cannot hang:
/// workers exit within one wake-up of Shutdown).
pub const JOIN_WARN_AFTER: Duration = Duration::from_secs(2);

/// Joins a worker thread, logging (never propagating) a panic.
pub fn join(thread: JoinHandle<()>, id: &str) {
    let started = Instant::now();
    if thread.join().is_err() {
        log::error!("[{id}] synthesis thread ended by a panic");
    }
    if started.elapsed() > JOIN_WARN_AFTER {
        log::warn!("[{id}] synthesis thread took {:?} to stop", started.elapsed());
    }
}
