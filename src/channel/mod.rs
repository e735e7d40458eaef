//! A synthesizer channel: the MRCP session logic (what each request does,
//! on the "MRCP Server" thread, in `session`) and the audio stream
//! (`read_frame`, on the "MPF Scheduler" thread). It implements
//! `ffi::Channel`; the FFI layer decodes requests and answers for it when
//! it panics.
//!
//! The channel posts work to its worker (`synth`) and returns: it never
//! waits on the network, a join or the disk. Lock order: see
//! `synth::Shared`.

mod session;
mod trim;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::cache::Cache;
use crate::config::Config;
use crate::events::Observers;
use crate::ffi::{self, ChannelRef};
use crate::media::{buffer_capacity, buffer_limit, Link, Playback, SAMPLE_RATES};
use crate::mrcp::{Completion, Origin, Request};
use crate::synth::{self, send_complete, Command, Shared, WorkerHandle};
use crate::tts::capacity::Capacity;
use crate::tts::Provider;

/// A worker's slot: the channel's handle on it until close takes it.
pub type WorkerSlot = Arc<Mutex<Option<WorkerHandle>>>;

/// What channels share with the engine.
#[derive(Default)]
pub struct EngineShared {
    /// The prompt cache, when enabled and usable (taken at engine close).
    pub cache: Mutex<Option<Arc<Cache>>>,
    /// Every channel's worker slot, so engine close can stop them all.
    pub workers: Mutex<Vec<WorkerSlot>>,
    /// Worker threads running now (for the metrics).
    pub worker_threads: Arc<AtomicUsize>,
    /// Most workers alive since the heap was last trimmed.
    workers_peak: AtomicUsize,
    /// Gives free heap memory back once channels have gone.
    trim: Arc<trim::HeapTrim>,
}

/// Trim only once at least this many channels went since the peak (or
/// none is left).
const TRIM_AFTER_CHANNELS: usize = 8;

impl EngineShared {
    pub fn add_worker(&self, slot: WorkerSlot) {
        let alive = {
            let mut workers = self.workers.lock();
            workers.push(slot);
            workers.len()
        };
        self.workers_peak.fetch_max(alive, Ordering::Relaxed);
    }

    /// Forgets a destroyed channel's worker. When the channels alive have
    /// fallen to half their peak (or to none), gives the heap's free
    /// memory back to the system: what the workers' threads allocated
    /// (curl's handles and buffers, a SPEAK's plan) was freed into glibc's
    /// per-thread arenas, which otherwise keep it, scattered, for good.
    pub fn forget_worker(&self, slot: &WorkerSlot) {
        let alive = {
            let mut workers = self.workers.lock();
            workers.retain(|s| !Arc::ptr_eq(s, slot));
            workers.len()
        };
        let peak = self.workers_peak.load(Ordering::Relaxed);
        if alive <= peak / 2 && (alive == 0 || peak - alive >= TRIM_AFTER_CHANNELS) {
            self.workers_peak.store(alive, Ordering::Relaxed);
            self.trim.request(format!("{peak} -> {alive} channels"));
        }
    }

    /// Waits for a heap trim pending or under way, which walks at once
    /// (engine close and destroy, never on the MRCP Server thread).
    pub fn join_trim(&self) {
        self.trim.finish();
    }
}

/// method_obj of the server channel, and obj of its audio stream.
pub struct Channel {
    /// `shared.link`, held here too: it is the audio stream's object
    /// (`ffi::Channel::stream`), so that `read_frame` reaches the buffer
    /// with no pointer hop through the channel: with a hundred channels per
    /// 10 ms tick each hop is a cache miss, the bulk of read_frame's cost
    /// (bench [10], perf).
    link: Arc<Link>,
    pub shared: Arc<Shared>,
    engine: Arc<EngineShared>,
    config: Arc<Config>,
    provider: Arc<dyn Provider>,
    capacity: Arc<Capacity>,
    /// The engine's observers (metrics).
    observers: Observers,
    /// The worker, until channel close (or engine close) takes it.
    pub worker: WorkerSlot,
    /// A worker told to shut down, joined in destroy.
    stopping: Mutex<Option<JoinHandle<()>>>,
}

impl Channel {
    pub fn new(
        engine: Arc<EngineShared>,
        config: Arc<Config>,
        provider: Arc<dyn Provider>,
        capacity: Arc<Capacity>,
        observers: Observers,
    ) -> std::io::Result<Channel> {
        let shared = Arc::new(Shared::new(buffer_capacity(config.max_buffer_ms))?);
        Ok(Channel {
            link: Arc::clone(&shared.link),
            shared,
            engine,
            config,
            provider,
            capacity,
            observers,
            worker: Arc::new(Mutex::new(None)),
            stopping: Mutex::new(None),
        })
    }

    fn send_to_worker(&self, command: Command) -> bool {
        match self.worker.lock().as_ref() {
            Some(w) => w.send(command),
            None => false,
        }
    }

    /// The channel id for log lines, with the Logging-Tag when one was set.
    fn label(&self, ch: ChannelRef) -> String {
        self.shared.label(ch)
    }

    /// The negotiated rate, if it is one we produce.
    fn negotiated_rate(&self, ch: ChannelRef) -> Option<u32> {
        let from_stream = self.shared.link.rate.load(Ordering::Acquire);
        let rate = if from_stream != 0 { from_stream } else { ch.source_rate()? };
        SAMPLE_RATES.contains(&rate).then_some(rate)
    }

    /// Ends the active SPEAK (if nobody did) with `completion`.
    fn end_active(&self, ch: ChannelRef, completion: &Completion) {
        // Claimed under `active`, as everywhere (see `session::stop`).
        let claimed = self.shared.active.lock().take().filter(|speak| speak.claim());
        if let Some(speak) = claimed {
            self.shared.link.playback.lock().stop();
            send_complete(ch, &speak, completion);
        }
    }
}

impl ffi::Channel for Channel {
    const SAMPLE_RATES: &'static [u32] = SAMPLE_RATES;
    type Stream = Link;

    fn stream(&self) -> &Link {
        &self.link
    }

    fn open(&self, ch: ChannelRef) {
        // open_rx has run: the rate is known. Grow the buffer for 32/48 kHz
        // now, once, rather than during a call.
        let rate = self.negotiated_rate(ch).unwrap_or(8000);
        let needed = buffer_limit(self.config.max_buffer_ms, rate);
        if needed > buffer_capacity(self.config.max_buffer_ms) {
            match Playback::new(needed) {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut *self.shared.link.playback.lock(), fresh);
                    drop(old); // unmapped outside the lock
                }
                Err(e) => log::error!(
                    "[{}] cannot grow the audio buffer to {needed} bytes for {rate} Hz: {e}; SPEAKs hold less audio ahead",
                    self.label(ch)
                ),
            }
        }
        log::info!("[{}] channel open ({rate} Hz)", self.label(ch));
        ch.open_respond(true);
    }

    fn close(&self, ch: ChannelRef) {
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

    fn process_request(&self, ch: ChannelRef, request: Request) {
        self.handle(ch, request);
    }

    fn request_failed(&self, ch: ChannelRef, origin: Origin) -> bool {
        // If the panic came after the SPEAK went IN-PROGRESS, end it.
        let active = self.shared.active.lock().clone();
        if active.is_some_and(|s| s.origin == origin) {
            self.end_active(ch, &Completion::error("internal error in the plugin"));
            return true;
        }
        false
    }

    /// Joins what is left of the worker. Called after close and close_rx,
    /// so no other thread uses the channel any more.
    fn destroy(&self, ch: ChannelRef) {
        let id = ch.id();
        if let Some(handle) = self.worker.lock().take() {
            // Never opened or never closed: the worker is idle or about to be.
            handle.send(Command::Shutdown { respond_close: false, reason: "channel destroyed" });
            synth::join(handle.thread, &id);
        }
        if let Some(thread) = self.stopping.lock().take() {
            synth::join(thread, &id);
        }
        self.engine.forget_worker(&self.worker);
    }
}

impl ffi::Stream for Link {
    fn open_rx(&self, rate: u32) {
        self.rate.store(rate, Ordering::Release);
    }

    fn close_rx(&self) {
        self.rate.store(0, Ordering::Release);
    }

    fn read_frame(&self, out: &mut [u8]) -> bool {
        Link::read_frame(self, out)
    }
}
