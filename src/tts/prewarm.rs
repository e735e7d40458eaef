//! Warm connections: transports whose multi handle already holds an open
//! keep-alive connection to the primary upstream, ready for new channels.
//!
//! Without them a channel's first SPEAK pays a TCP and TLS handshake
//! (50-300 ms to the real API) before its request even leaves. The
//! connection cache is not shared between channels (libcurl does not
//! support sharing connections between concurrent threads, see
//! `ffi::curl_share`), so what travels is a whole transport: the
//! `elevenlabs-prewarm` thread opens `prewarm_connections` of them with a
//! request that costs no characters (`Provider::probe`, GET /v1/models),
//! a new channel takes one (`Pool::take`, O(1), never blocks), and the
//! thread makes another.
//!
//! Each idle warm transport is probed again every `prewarm_refresh`, so the
//! server never sees it idle long enough to close it. While the primary's
//! circuit is not closed nothing is probed (the breaker already knows the
//! upstream is down); after a failed probe the thread backs off, 1 s
//! doubling up to 30 s.
//!
//! Probes take no limiter slot: the account's concurrency limit counts TTS
//! generations, and a GET /v1/models is not one.
//!
//! Lock order: `Pool::ready` is a leaf; nothing is called under it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::capacity::breaker::CircuitState;
use super::capacity::Capacity;
use super::{Network, Provider, Transport};
use crate::config::Config;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest sleep between looks at the breaker and the pool.
const IDLE_WAIT: Duration = Duration::from_millis(500);

struct Warm {
    transport: Transport,
    /// Probe again by then.
    refresh_at: Instant,
}

/// The warm transports, shared by the pre-warm thread and the engine.
pub struct Pool {
    ready: Mutex<Vec<Warm>>,
    wake: Sender<()>,
    stop: AtomicBool,
    /// Probes sent so far (a figure for the close log line and tests).
    probes: AtomicU64,
    /// New channels that found a warm transport, and those that found
    /// none (the metrics' warm/cold split).
    taken: AtomicU64,
    missed: AtomicU64,
}

impl Pool {
    /// A warm transport for a new channel, if one is ready. Never blocks
    /// beyond the leaf lock; the pre-warm thread then makes another.
    pub fn take(&self) -> Option<Transport> {
        let warm = self.ready.lock().pop();
        if warm.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
            let _ = self.wake.try_send(());
        } else {
            self.missed.fetch_add(1, Ordering::Relaxed);
        }
        warm.map(|w| w.transport)
    }

    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Warm transports ready now (a copy under the leaf lock).
    pub fn ready(&self) -> usize {
        self.ready.lock().len()
    }

    /// New channels that took a warm transport, and that found none.
    pub fn takes(&self) -> (u64, u64) {
        (self.taken.load(Ordering::Relaxed), self.missed.load(Ordering::Relaxed))
    }
}

/// The pre-warm thread and its pool.
pub struct Prewarm {
    pool: Arc<Pool>,
    /// Taken by `stop`.
    thread: Option<JoinHandle<()>>,
}

impl Prewarm {
    /// Starts the thread; None when `prewarm_connections` is 0 (or the
    /// thread cannot start, which is logged).
    pub fn start(
        config: Arc<Config>,
        net: Arc<Network>,
        provider: Arc<dyn Provider>,
        capacity: Arc<Capacity>,
    ) -> Option<Prewarm> {
        if config.prewarm_connections == 0 {
            return None;
        }
        let (wake, rx) = crossbeam_channel::bounded(1);
        let pool = Arc::new(Pool {
            ready: Mutex::new(Vec::new()),
            wake,
            stop: AtomicBool::new(false),
            probes: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        });
        let thread_pool = Arc::clone(&pool);
        let spawned = std::thread::Builder::new()
            .name("elevenlabs-prewarm".into())
            .spawn(move || Filler { config, net, provider, capacity, pool: thread_pool, rx }.run());
        match spawned {
            Ok(thread) => Some(Prewarm { pool, thread: Some(thread) }),
            Err(e) => {
                log::error!("cannot start the pre-warm thread ({e}): channels open their own connections");
                None
            }
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Stops and joins the thread (a probe in flight ends within 50 ms);
    /// the warm transports close with the pool. Never on the MRCP thread.
    pub fn stop(mut self) {
        self.pool.stop.store(true, Ordering::SeqCst);
        let _ = self.pool.wake.try_send(());
        if self.thread.take().is_some_and(|t| t.join().is_err()) {
            log::error!("the pre-warm thread panicked");
        }
        let left = std::mem::take(&mut *self.pool.ready.lock());
        log::debug!("pre-warm stopped after {} probes; {} warm connection(s) closed", self.pool.probes(), left.len());
        drop(left);
    }
}

impl Drop for Prewarm {
    /// Dropped without `stop` (an engine never closed): the thread still
    /// ends on its own, within 50 ms, unjoined.
    fn drop(&mut self) {
        self.pool.stop.store(true, Ordering::SeqCst);
        let _ = self.pool.wake.try_send(());
    }
}

struct Filler {
    config: Arc<Config>,
    net: Arc<Network>,
    provider: Arc<dyn Provider>,
    capacity: Arc<Capacity>,
    pool: Arc<Pool>,
    rx: Receiver<()>,
}

impl Filler {
    fn stopping(&self) -> bool {
        self.pool.stop.load(Ordering::SeqCst)
    }

    fn run(self) {
        let mut retry_at = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        while !self.stopping() {
            let now = Instant::now();
            let closed = self.capacity.endpoints().first().map_or(true, |e| e.breaker.state() == CircuitState::Closed);
            let mut wait = IDLE_WAIT;
            if closed && now >= retry_at {
                match self.next_job(now) {
                    Some(job) => {
                        match self.probe(job) {
                            Ok(()) => {
                                if failing {
                                    log::info!("pre-warm: the upstream answers again");
                                }
                                failing = false;
                                backoff = BACKOFF_MIN;
                            }
                            Err(e) if self.stopping() => log::debug!("pre-warm probe ended at stop: {e}"),
                            Err(e) => {
                                // One line per failure, at most one per
                                // backoff step (1 s .. 30 s).
                                log::warn!(
                                    "pre-warm probe of {} failed: {e}; next try in {} ms",
                                    self.config.base_url,
                                    backoff.as_millis()
                                );
                                failing = true;
                                retry_at = Instant::now() + backoff;
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                        }
                        continue;
                    }
                    None => {
                        if let Some(due) = self.pool.ready.lock().iter().map(|w| w.refresh_at).min() {
                            wait = wait.min(due.saturating_duration_since(now));
                        }
                    }
                }
            } else if closed {
                wait = wait.min(retry_at.saturating_duration_since(now));
            }
            // A channel took one, or stop; else look again after `wait`.
            let _ = self.rx.recv_timeout(wait.max(Duration::from_millis(1)));
        }
    }

    /// A warm transport due for its refresh (taken out of the pool while
    /// it is probed), else a new one when the pool is short, else nothing.
    fn next_job(&self, now: Instant) -> Option<Option<Transport>> {
        let mut ready = self.pool.ready.lock();
        if let Some(i) = ready.iter().position(|w| w.refresh_at <= now) {
            return Some(Some(ready.swap_remove(i).transport));
        }
        (ready.len() < self.config.prewarm_connections).then_some(None)
    }

    /// Probes `job` (a new transport when None) and puts it in the pool.
    fn probe(&self, job: Option<Transport>) -> Result<(), String> {
        let mut transport = match job {
            Some(t) => t,
            None => Transport::new(&self.net).map_err(|e| format!("cannot create curl handles: {e}"))?,
        };
        let (url, headers) = self.provider.probe(&self.config.base_url, &self.config);
        self.pool.probes.fetch_add(1, Ordering::Relaxed);
        let timeout = self.config.connect_timeout + self.config.first_byte_timeout;
        // No limiter slot: see the module comment.
        transport.probe(&url, &headers, self.config.connect_timeout, timeout, &|| self.stopping())?;
        let warm = Warm { transport, refresh_at: Instant::now() + self.config.prewarm_refresh };
        let mut ready = self.pool.ready.lock();
        if ready.len() >= self.config.prewarm_connections {
            return Ok(()); // not needed after all (dropped after the guard)
        }
        ready.push(warm);
        let n = ready.len();
        drop(ready);
        log::debug!("pre-warm: {n} of {} warm connection(s) ready", self.config.prewarm_connections);
        Ok(())
    }
}
