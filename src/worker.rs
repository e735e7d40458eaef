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
use crate::channel::Shared;
use crate::config::Config;
use crate::panic::describe;
use crate::speak::{Completion, Speak};
use crate::synth::{Outcome, Request, Stats, Transport};

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
        self.channel.id()
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

    /// Speaks the job's text: one upstream request per part (long texts are
    /// split at sentence boundaries, see split.rs), all into the same
    /// buffer generation so the parts play back to back without a gap.
    fn synthesize(&mut self, transport: &mut Transport, job: Job) {
        crate::panic::inject("synthesize");
        let parts = crate::split::split_for_requests(&job.text, job.config.max_request_chars());
        let mut total = Stats::default();
        for (i, part) in parts.iter().enumerate() {
            let request = Request {
                config: &job.config,
                text: part,
                sample_rate: job.sample_rate,
                previous_text: i.checked_sub(1).map(|p| context_tail(&parts[p])),
                next_text: parts.get(i + 1).map(|n| context_head(n)),
            };
            let (result, stats) = self.transfer(transport, &request, &job);
            total.add(&stats);
            match result {
                Part::Done => {}
                Part::Interrupted => {
                    // Ended by STOP / BARGE-IN (answered on the MRCP Server
                    // thread) or by a shutdown, which sent its SPEAK-COMPLETE.
                    let label = if self.exit.is_some() { "004 error (shutdown)" } else { STOPPED };
                    self.summary(&job, &total, label);
                    return;
                }
                Part::Failed(reason) => {
                    let reason =
                        if parts.len() > 1 { format!("{reason} (part {} of {})", i + 1, parts.len()) } else { reason };
                    self.fail(&job, reason, total);
                    return;
                }
            }
        }
        let finished = self.shared.playback.lock().finish(job.speak.generation);
        if finished {
            self.draining = Some((job, total));
            // The last frame may already have been taken.
            self.check_drained();
        }
    }

    /// One upstream request, run to its end while commands keep being
    /// served (a STOP must not wait for the network).
    fn transfer(&mut self, transport: &mut Transport, request: &Request<'_>, job: &Job) -> (Part, Stats) {
        let generation = job.speak.generation;
        let mut transfer = match transport.start(request, generation) {
            Ok(t) => t,
            Err(reason) => return (Part::Failed(reason), Stats::default()),
        };
        let mut expired: Option<String> = None;
        let mut interrupted = false;
        loop {
            if transfer.step() {
                break;
            }
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
            if interrupted || job.speak.is_terminated() {
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
        let (outcome, stats) = transfer.finish();
        if interrupted || job.speak.is_terminated() {
            return (Part::Interrupted, stats);
        }
        let part = match (expired, outcome) {
            (Some(reason), _) | (None, Outcome::Failed(reason)) => Part::Failed(reason),
            (None, Outcome::Stale) => Part::Interrupted,
            (None, Outcome::Complete) => Part::Done,
        };
        (part, stats)
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
            "[{}] SPEAK {} done: chars={} voice={} model={} rate={} ttfb_ms={} audio_ms={} bytes={} http={} cause={}",
            self.id(),
            job.speak.request_id,
            job.text.chars().count(),
            job.config.voice_id,
            job.config.model_id,
            job.sample_rate,
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
