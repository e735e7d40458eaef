//! The channel's own OS thread: it alone owns the channel's curl handles,
//! runs each SPEAK's transfer, and sends the SPEAK's terminal message when
//! the audio has been played or the synthesis failed.
//!
//! Commands arrive over a crossbeam channel; each send is followed by a
//! wake-up of the channel's eventfd, which the thread waits on (together
//! with the transfer's sockets while one runs). `Shutdown` is the explicit
//! last message: the thread ends any SPEAK still active, answers channel
//! close if asked to, and returns so that it can be joined.

mod marks;
mod player;
mod shared;
mod sources;
mod speak;
mod spill;
mod spill_files;
mod summary;
pub mod warmup;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::cache::{Cache, Policy};
use crate::config::Config;
use crate::error::Failure;
use crate::events::Observers;
use crate::ffi::panic::describe;
use crate::ffi::{stack, ChannelRef};
use crate::mrcp::Completion;
use crate::plan::Plan;
use crate::tts::capacity::Capacity;
use crate::tts::{Network, Provider, Stats, Transport};

use marks::Marks;
pub use shared::Shared;
pub use speak::{send_complete, Speak};
use spill_files::close_expired as close_expired_spill_files;
pub use spill_files::close_idle as close_spill_files;

/// Commands queue here. The MRCP Server thread never waits on the queue
/// (`try_send`): a full one means the worker is wedged, and the sender
/// reports failure instead. A SPEAK brings at most a Speak and a Cancel,
/// and the next one is refused (busy) until it has ended, so 16 slots take
/// eight SPEAK/STOP rounds within one stall of the worker (which reads its
/// queue at every wake-up, even mid-transfer). Every slot is allocated and
/// touched when the channel is made (crossbeam's array), hence few, small
/// ones: `Command` is 32 bytes since its `Job` is boxed (bench [11]).
pub const COMMAND_QUEUE: usize = 16;

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
    /// Who synthesizes (engine-wide).
    pub provider: Arc<dyn Provider>,
    /// The account's slots and the upstream's circuits (engine-wide).
    pub capacity: Arc<Capacity>,
    /// The engine's prompt cache, if on.
    pub cache: Option<Arc<Cache>>,
    /// What the SPEAK's Cache-Control allows.
    pub policy: Policy,
    /// The engine's observers (metrics), told what happens to the SPEAK.
    pub observers: Observers,
}

pub enum Command {
    /// Boxed: the queue's slots are as large as its largest command.
    Speak(Box<Job>),
    /// Abort the transfer for this generation (STOP, BARGE-IN); the MRCP
    /// Server thread has already answered and ended the SPEAK.
    Cancel { generation: u64 },
    /// End everything and exit. With `respond_close`, answer channel close
    /// once the transfer is down.
    Shutdown { respond_close: bool, reason: &'static str },
}

/// The MRCP side's handle on a worker.
pub struct WorkerHandle {
    tx: Sender<Command>,
    pub thread: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// `warm`: a transport with an open connection (`tts::prewarm`), used
    /// for the channel's first SPEAK; without one the worker makes its own.
    /// `live` counts the engine's running worker threads (for the metrics).
    pub fn spawn(
        name: String,
        channel: ChannelRef,
        shared: Arc<Shared>,
        net: Arc<Network>,
        warm: Option<Transport>,
        live: Arc<AtomicUsize>,
    ) -> std::io::Result<WorkerHandle> {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            live.fetch_add(1, Ordering::Relaxed);
            run(channel, thread_shared, rx, net, warm);
            live.fetch_sub(1, Ordering::Relaxed);
        })?;
        Ok(WorkerHandle { tx, thread, shared })
    }

    /// Whether the channel has a SPEAK that has not ended (takes the
    /// channel's `active` lock for a look).
    pub fn speaking(&self) -> bool {
        self.shared.active.lock().as_ref().is_some_and(|s| !s.is_terminated())
    }

    /// Queues a command and wakes the thread. Never blocks.
    pub fn send(&self, command: Command) -> bool {
        let queued = self.tx.try_send(command).is_ok();
        self.shared.link.waker.wake();
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
    draining: Option<(Box<Job>, Stats)>,
    exit: Option<bool>,
    /// Marks of the current SPEAK whose place in its audio is known.
    marks: Marks,
    /// How curl handles are set up (engine-wide).
    net: Arc<Network>,
    /// A warm transport, until the first `serve` takes it.
    warm: Option<Transport>,
    /// `Waker::wakeups` when the current SPEAK started (for its summary).
    wakeups_at: u64,
    /// A SPEAK ran since the stack was last given back (`rest_stack`).
    /// (Not set at the start: making the curl handles stays within the
    /// idle loop's pages, measured.)
    stack_used: bool,
    /// How long the worker stays idle after a SPEAK before it gives its
    /// stack back (the latest SPEAK's `idle_stack_release`).
    rest_after: Duration,
    /// When the stack is given back if no command comes first: set when
    /// the worker runs out of work after a SPEAK, cleared by the next one.
    rest_at: Option<Instant>,
}

fn run(channel: ChannelRef, shared: Arc<Shared>, rx: Receiver<Command>, net: Arc<Network>, warm: Option<Transport>) {
    let mut worker = Worker {
        channel,
        shared,
        rx,
        deferred: VecDeque::new(),
        draining: None,
        exit: None,
        marks: Marks::default(),
        net,
        warm,
        wakeups_at: 0,
        stack_used: false,
        rest_after: Duration::from_millis(crate::config::DEFAULT_IDLE_STACK_RELEASE_MS),
        rest_at: None,
    };
    // Spill files an earlier burst kept and no SPEAK took within their life
    // are closed as workers come and go (spill_files.rs).
    close_expired_spill_files();
    // A panic in one SPEAK must not leave the channel mute: end that SPEAK
    // with an error, start over with fresh curl handles, keep serving.
    loop {
        let result = catch_unwind(AssertUnwindSafe(|| worker.serve()));
        match result {
            Ok(()) => break,
            Err(payload) => {
                crate::ffi::panic::count_caught();
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
    close_expired_spill_files();
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
        let made = match self.warm.take() {
            Some(warm) => Ok(warm),
            None => Transport::new(&self.net),
        };
        let mut transport = match made {
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
                        self.idle();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown(false, "channel gone");
                        return;
                    }
                },
            };
            match command {
                Command::Speak(job) => {
                    self.stack_used = true;
                    self.rest_after = job.config.idle_stack_release;
                    self.rest_at = None;
                    match transport.as_mut() {
                        Some(t) => self.synthesize(t, job),
                        None => {
                            self.end(&job.speak, Completion::error("internal: no curl handle for this channel"));
                        }
                    }
                }
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

    /// Sleeps until a command or a wake-up comes. Once a SPEAK is over (its
    /// last audio played: a draining SPEAK still has its SPEAK-COMPLETE and
    /// summary to write, on the stack) and no command follows within
    /// `rest_after`, the worker wakes once to give its stack back, then
    /// sleeps without a limit: a channel that never spoke, or has rested,
    /// costs no wake-up at all (bench [10], idle channels). A wake-up
    /// without a command (the media thread's) keeps the time already set.
    fn idle(&mut self) {
        let waker = &self.shared.link.waker;
        if !self.stack_used || self.draining.is_some() {
            waker.wait(None);
            return;
        }
        let now = Instant::now();
        let at = *self.rest_at.get_or_insert(now + self.rest_after);
        if now < at {
            waker.wait(Some(at - now));
            return;
        }
        self.stack_used = false;
        self.rest_at = None;
        self.rest_stack();
        waker.wait(None);
    }

    /// Gives back the stack pages a SPEAK touched below the idle loop's
    /// frame (curl's, the transfer's, the logger's): a thread keeps every
    /// page it ever touched, so each idle channel would otherwise hold the
    /// deepest moment of its last SPEAK. A madvise (two, and two mincore,
    /// with its debug line) once the worker has been idle `rest_after`;
    /// the next SPEAK faults in what it needs again.
    fn rest_stack(&self) {
        if !log::log_enabled!(log::Level::Debug) {
            let _ = stack::release_stack_below();
            return;
        }
        let before = stack::resident_stack_bytes();
        let released = stack::release_stack_below();
        match (before, released, stack::resident_stack_bytes()) {
            (Ok(before), Ok(()), Ok(after)) => log::debug!(
                "[{}] worker idle: stack {} KiB resident, {} KiB once released",
                self.id(),
                before / 1024,
                after / 1024
            ),
            (_, Err(e), _) | (Err(e), ..) | (.., Err(e)) => {
                log::debug!("[{}] worker idle: stack not released: {e}", self.id())
            }
        }
        // Writing the line went below this frame again (formatting, the
        // server's logger).
        let _ = stack::release_stack_below();
    }

    fn shutdown(&mut self, respond_close: bool, reason: &'static str) {
        if let Some((job, stats)) = self.draining.take() {
            self.stop_playback(job.speak.generation);
            if self.end(&job.speak, Completion::error(reason)) {
                self.summary(&job, &stats, "004 error (shutdown)");
            }
        }
        self.end_owed(reason);
        self.exit = Some(respond_close);
    }

    /// At shutdown, ends with `reason` every SPEAK still owed its terminal
    /// message besides the one running: a SPEAK held back behind the job
    /// that saw the Shutdown (a STOP, a new SPEAK and the close can all be
    /// queued before the worker looks: tests/races.rs
    /// stop_speak_and_close_queued_together_end_every_speak), one still in
    /// the queue, and whatever SPEAK is active. The worker exits after
    /// this, so nothing else would ever answer them; `end` claims each
    /// SPEAK, so none is answered twice.
    fn end_owed(&mut self, reason: &'static str) {
        let queued: Vec<Command> = self.deferred.drain(..).chain(self.rx.try_iter()).collect();
        for command in queued {
            if let Command::Speak(job) = command {
                self.stop_playback(job.speak.generation);
                self.end(&job.speak, Completion::error(reason));
            }
        }
        self.end_active(Completion::error(reason));
    }

    /// The media thread played the last frame of the draining SPEAK.
    fn check_drained(&mut self) {
        let played = self.shared.link.drained.load(Ordering::Acquire);
        if self.draining.as_ref().is_some_and(|(j, _)| j.speak.generation == played) {
            let (job, stats) = self.draining.take().expect("checked above");
            self.announce(&job.speak, true);
            let completion = Completion::normal();
            if self.end(&job.speak, completion.clone()) {
                self.summary(&job, &stats, completion.code());
            }
        }
    }

    /// All audio is in the buffer: the SPEAK completes once it is played.
    fn finish_buffering(&mut self, job: Box<Job>, stats: Stats) {
        let finished = self.shared.link.playback.lock().finish(job.speak.generation);
        if finished {
            self.draining = Some((job, stats));
            // The last frame may already have been taken.
            self.check_drained();
        }
    }

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
                    self.end_owed(reason);
                    self.exit = Some(respond_close);
                    interrupted = true;
                }
                other => self.deferred.push_back(other),
            }
        }
        interrupted || job.speak.is_terminated()
    }

    fn fail(&mut self, job: &Job, failure: Failure, stats: Stats) {
        self.stop_playback(job.speak.generation);
        let completion = failure.completion();
        log::warn!("[{}] SPEAK {}: {}", self.id(), job.speak.request_id, completion.reason.as_deref().unwrap_or(""));
        if self.end(&job.speak, completion.clone()) {
            self.summary(job, &stats, completion.code());
        }
    }

    /// Silence from the next frame on, if the buffer still plays this SPEAK.
    fn stop_playback(&self, generation: u64) {
        let mut playback = self.shared.link.playback.lock();
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
        send_complete(self.channel, speak, &completion);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each channel's queue allocates and touches all its slots up front,
    /// each as large as the largest command: a `Job` held inline made them
    /// 128 bytes (8.7 KiB a channel at 64 slots).
    #[test]
    fn commands_stay_small_for_the_queue_slots() {
        assert!(std::mem::size_of::<Command>() <= 32, "{} bytes", std::mem::size_of::<Command>());
    }
}
