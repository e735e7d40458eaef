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
use crate::cache::{Cache, Flight, FlightEnd, Lookup, Policy};
use crate::channel::Shared;
use crate::channel::NO_CUE;
use crate::config::Config;
use crate::panic::describe;
use crate::plan::{self, Plan, Step};
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
    /// What to play: requests, pauses and marks (plan.rs).
    pub plan: Plan,
    pub sample_rate: u32,
    /// The settings the SPEAK's headers chose (for the summary line).
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

/// Marks placed in the current SPEAK's audio, in order: (byte position in
/// its buffer generation, name). Announced once the media thread has
/// played past them.
#[derive(Default)]
struct Marks {
    due: VecDeque<(u64, String)>,
}

impl Marks {
    fn clear(&mut self) {
        self.due.clear();
    }

    /// Positions never go backwards: an estimate cannot overtake a mark
    /// already placed.
    fn place(&mut self, position: u64, name: String) {
        let floor = self.due.back().map_or(0, |&(p, _)| p);
        self.due.push_back((position.max(floor), name));
    }
}

/// The marks inside one request's text, placed as its alignment arrives.
struct PartMarks<'p> {
    /// Where the request's audio starts in the buffer generation.
    start: u64,
    chars: usize,
    marks: &'p [(usize, String)],
    next: usize,
    rate: u32,
}

impl<'p> PartMarks<'p> {
    fn new(start: u64, part: &'p plan::Part, rate: u32) -> Self {
        PartMarks { start, chars: part.text.chars().count(), marks: &part.marks, next: 0, rate }
    }

    /// Places every mark whose position is known: at offset 0 the start;
    /// inside the text the start time of the character after it; at the
    /// end (or, if the alignment never covered it, proportionally) once
    /// the request's audio is all in.
    fn place(&mut self, starts: &[f64], bytes: u64, finished: bool, into: &mut Marks) {
        while let Some((offset, name)) = self.marks.get(self.next) {
            let at = if *offset == 0 {
                0
            } else if let Some(&t) = starts.get(*offset) {
                ((t * f64::from(self.rate)).round() as u64 * 2).min(if finished { bytes } else { u64::MAX })
            } else if finished {
                let share = bytes as f64 * (*offset).min(self.chars) as f64 / self.chars.max(1) as f64;
                (share as u64) & !1
            } else {
                return;
            };
            into.place(self.start + at, name.clone());
            self.next += 1;
        }
    }
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
    /// Marks of the current SPEAK whose place in its audio is known.
    marks: Marks,
}

fn run(channel: ChannelRef, shared: Arc<Shared>, rx: Receiver<Command>) {
    let mut worker =
        Worker { channel, shared, rx, deferred: VecDeque::new(), draining: None, exit: None, marks: Marks::default() };
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
        // (the draining SPEAK's marks are announced from the loop below)
        let mut transport = match Transport::new(Arc::clone(&self.shared)) {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("[{}] cannot create curl handles: {e}", self.id());
                None
            }
        };
        loop {
            self.check_drained();
            if let Some(speak) = self.draining.as_ref().map(|(j, _)| Arc::clone(&j.speak)) {
                self.announce(&speak, false);
            }
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
                        self.marks.clear();
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
            self.announce(&job.speak, true);
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
        self.marks.clear();
        self.shared.cue_at.store(NO_CUE, Ordering::Release);
        // Marks are placed from the alignment of a live synthesis; a cached
        // entry has none, so SPEAKs with marks always go upstream.
        let key = job.cache.as_ref().filter(|_| !job.plan.has_marks()).map(|_| job.plan.cache_key(job.sample_rate));
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
        let (result, total, mut tee) = self.upstream(transport, &job, tee);
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

    /// Plays the plan: every request upstream, one after the other, pauses
    /// as silence, marks placed where their audio is.
    fn upstream(&mut self, transport: &mut Transport, job: &Job, mut tee: Tee) -> (Part, Stats, Tee) {
        let mut total = Stats { source: "upstream", ..Stats::default() };
        let requests: usize = job.plan.steps.iter().filter(|s| matches!(s, Step::Say(_))).count();
        let mut said = 0;
        for step in &job.plan.steps {
            let utterance = match step {
                Step::Say(u) => u,
                Step::Pause { ms } => {
                    let bytes = (u64::from(*ms) * u64::from(job.sample_rate) / 1000 * 2) as usize;
                    let (part, pushed) = self.silence(job, bytes, &mut tee);
                    total.audio_bytes += pushed;
                    match part {
                        Part::Done => continue,
                        other => return (other, total, tee),
                    }
                }
                Step::Mark(name) => {
                    self.marks.place(total.audio_bytes, name.clone());
                    continue;
                }
            };
            said += 1;
            let parts = plan::parts(utterance);
            for (i, part) in parts.iter().enumerate() {
                let request = Request {
                    config: &utterance.config,
                    text: &part.text,
                    sample_rate: job.sample_rate,
                    previous_text: i.checked_sub(1).map(|p| context_tail(&parts[p].text)),
                    next_text: parts.get(i + 1).map(|n| context_head(&n.text)),
                    gain: utterance.gain,
                    with_timestamps: plan::needs_alignment(part),
                };
                let mut marks = PartMarks::new(total.audio_bytes, part, job.sample_rate);
                let (result, stats, back) = self.transfer(transport, &request, job, tee, &mut marks);
                tee = back;
                total.add(&stats);
                match result {
                    Part::Done => {}
                    // Say which request failed when there were several.
                    Part::Failed(reason) if requests > 1 || parts.len() > 1 => {
                        let mut at = Vec::new();
                        if requests > 1 {
                            at.push(format!("text {said} of {requests}"));
                        }
                        if parts.len() > 1 {
                            at.push(format!("part {} of {}", i + 1, parts.len()));
                        }
                        return (Part::Failed(format!("{reason} ({})", at.join(", "))), total, tee);
                    }
                    other => return (other, total, tee),
                }
            }
        }
        (Part::Done, total, tee)
    }

    /// Silence for a `<break>`, pushed as the buffer makes room (and into
    /// the cache copy, so a cached SPEAK keeps its pauses).
    fn silence(&mut self, job: &Job, bytes: usize, tee: &mut Tee) -> (Part, u64) {
        static ZEROS: [u8; 4096] = [0; 4096];
        let generation = job.speak.generation;
        let (mut left, mut pushed) = (bytes, 0u64);
        while left > 0 {
            if self.serve_commands(job) {
                return (Part::Interrupted, pushed);
            }
            self.announce(&job.speak, false);
            let n = left.min(ZEROS.len());
            let skip = tee.skip.min(n);
            let outcome =
                if skip == n { Push::Stored } else { self.shared.playback.lock().push(generation, &ZEROS[..n - skip]) };
            match outcome {
                Push::Stored => {
                    tee.skip -= skip;
                    tee.copy(&ZEROS[..n]);
                    left -= n;
                    pushed += (n - skip) as u64;
                }
                Push::Full => {
                    self.shared.want_space.store(n - skip, Ordering::Release);
                    self.shared.waker.wait(Some(FEED_WAIT));
                }
                Push::Stale => return (Part::Interrupted, pushed),
            }
        }
        (Part::Done, pushed)
    }

    /// Sends SPEECH-MARKER for every mark the media thread has played past
    /// (all of them when `all`: the SPEAK's last frame was played), and arms
    /// the media thread's cue for the next one.
    fn announce(&mut self, speak: &Arc<Speak>, all: bool) {
        while let Some(&(position, _)) = self.marks.due.front() {
            if !all {
                self.shared.cue_at.store(position, Ordering::Release);
                // Read after arming: a frame taken in between is seen here
                // or wakes us.
                let played = {
                    let playback = self.shared.playback.lock();
                    (playback.generation == speak.generation).then(|| playback.played())
                };
                if !played.is_some_and(|p| p > position) {
                    return;
                }
            }
            let (_, name) = self.marks.due.pop_front().expect("checked above");
            let _active = self.shared.active.lock();
            crate::speak::send_marker(self.channel, speak, &name);
        }
        self.shared.cue_at.store(NO_CUE, Ordering::Release);
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
        marks: &mut PartMarks<'_>,
    ) -> (Part, Stats, Tee) {
        let generation = job.speak.generation;
        let mut transfer = match transport.start(request, generation, tee) {
            Ok(t) => t,
            Err((reason, tee)) => return (Part::Failed(reason), Stats::default(), tee),
        };
        let mut expired: Option<String> = None;
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
        crate::speak::send_complete(self.channel, speak, &completion);
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
            job.plan.chars(),
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
