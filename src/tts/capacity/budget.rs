//! The account's concurrency shared by every server on the same Redis and
//! `budget_key` (issue #13): a counting semaphore of expiring leases.
//!
//! In Redis (each key tagged `{budget_key}`):
//! * `…:leases`: sorted set, lease id → expiry (Redis server time, ms);
//! * `…:queue`: sorted set, ticket id → arrival number (`…:seq`, INCR);
//! * `…:tickets`: sorted set, ticket id → expiry (a dead server's tickets
//!   go like its leases).
//!
//! Fairness: every waiting request of every server has one ticket in the
//! shared queue, in the order its server saw it arrive; a free lease goes
//! only to a ticket within the first `free` places, so a server never jumps
//! ahead of another's earlier waiter. A lease ends with its transfer and
//! goes back to Redis, never straight to a local waiter (that would let a
//! busy server keep the budget forever). Redis has no way to wake a client,
//! so while tickets wait the thread asks again every `POLL`.
//!
//! One engine thread, `elevenlabs-budget`, owns the connection: it turns
//! the limiter's demand (`Limiter::settle`) into tickets, hands granted
//! leases to the limiter (which keeps its local FIFO and wake-ups), renews
//! held leases every `lease_ttl / 3` and releases them. Expiry uses Redis'
//! clock (`TIME` inside the scripts), so servers' clocks do not matter.
//!
//! If Redis cannot be reached (connect, read or write past 500 ms, a
//! refused AUTH), the limiter falls back to a local share of the limit
//! (`Gate::Local`): one WARNING line; when Redis answers again, one INFO
//! line and shared again. A renewal that comes too late (the lease already
//! expired) does not cut the running transfer: it goes on, counted as an
//! overrun, and asks for a lease again.
//!
//! Lock order: `figures` is a leaf, held for a copy; the limiter's state is
//! never held while this thread talks to Redis.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use redis::{Connection, RedisResult, Script};

use super::limiter::{Gate, Limiter};
use crate::config::SharedConfig;
use crate::media::Waker;
use crate::redis_conn::describe;

/// How often waiting tickets ask Redis again.
const POLL: Duration = Duration::from_millis(10);
/// Longest wait between attempts to reach Redis while it is away.
const RECONNECT: Duration = Duration::from_secs(1);
/// Acquire waits kept for the quantiles.
const SAMPLES: usize = 4096;

/// Ensures our tickets are queued (refreshing their expiry) and takes a
/// lease for each of them that is within the first `free` places.
const ACQUIRE: &str = include_str!("acquire.lua");
/// Pushes our leases' expiry out by a TTL; returns those already gone.
const RENEW: &str = include_str!("renew.lua");
/// Figures of the shared budget, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Shared through Redis now (false: the local share).
    pub shared: bool,
    /// Changes between shared and local since engine open.
    pub mode_changes: u64,
    /// Leases held now (in use or about to be).
    pub leases_held: usize,
    pub leases_acquired: u64,
    /// Leases that expired in Redis before their renewal.
    pub leases_lost: u64,
    /// Transfers that ran on after their lease expired.
    pub overruns: u64,
    /// Sum of the acquire waits (ticket in Redis to lease granted), µs.
    pub acquire_wait_us_sum: u64,
    /// Median and 99th percentile of the last 4096 acquire waits, µs.
    pub acquire_wait_us_p50: u64,
    pub acquire_wait_us_p99: u64,
}

#[derive(Default)]
struct Counters {
    figures: Figures,
    waits: VecDeque<u64>,
}

/// The budget thread's handle (in `Capacity`).
pub struct Budget {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    counters: Arc<Mutex<Counters>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Budget {
    /// The limiter whose grants need leases, and the thread that gets them.
    /// None (logged) when the thread or its eventfd cannot be made: the
    /// engine then runs with its local limit only.
    pub fn start(config: &SharedConfig) -> Option<(Arc<Limiter>, Budget)> {
        let waker = match Waker::new() {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log::error!("shared budget: no wake-up fd ({e}); the limit is not shared");
                return None;
            }
        };
        let limiter = Limiter::shared(config.limit, Arc::clone(&waker));
        let stop = Arc::new(AtomicBool::new(false));
        let mut counters = Counters::default();
        counters.figures.shared = true;
        let counters = Arc::new(Mutex::new(counters));
        let mut worker = Thread {
            config: config.clone(),
            limiter: Arc::clone(&limiter),
            waker: Arc::clone(&waker),
            stop: Arc::clone(&stop),
            counters: Arc::clone(&counters),
            keys: Keys::new(&config.budget_key),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            id: format!("{}-{:x}", std::process::id(), nanos()),
            seq: 0,
            held: Vec::new(),
            tickets: Vec::new(),
        };
        match std::thread::Builder::new().name("elevenlabs-budget".into()).spawn(move || worker.run()) {
            Ok(thread) => Some((limiter, Budget { waker, stop, counters, thread: Mutex::new(Some(thread)) })),
            Err(e) => {
                log::error!("shared budget: cannot start its thread ({e}); the limit is not shared");
                None
            }
        }
    }

    pub fn figures(&self) -> Figures {
        self.counters.lock().figures.clone()
    }

    /// Releases what it holds and joins the thread (engine close, on the
    /// closing thread: this may wait for one Redis call).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

struct Keys {
    leases: String,
    queue: String,
    tickets: String,
    seq: String,
}

impl Keys {
    fn new(budget_key: &str) -> Keys {
        let k = |what: &str| format!("elevenlabs:budget:{{{budget_key}}}:{what}");
        Keys { leases: k("leases"), queue: k("queue"), tickets: k("tickets"), seq: k("seq") }
    }
}

struct Thread {
    config: SharedConfig,
    limiter: Arc<Limiter>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    counters: Arc<Mutex<Counters>>,
    keys: Keys,
    acquire: Script,
    renew: Script,
    /// This engine's part of every lease and ticket id.
    id: String,
    seq: u64,
    /// Lease ids held, as many as the limiter's `leases`.
    held: Vec<String>,
    /// Tickets waiting in the shared queue, oldest first, and since when.
    tickets: Vec<(String, Instant)>,
}

impl Thread {
    fn run(&mut self) {
        let renew_every = self.config.lease_ttl / 3;
        let reconnect = RECONNECT.min(renew_every);
        let mut con: Option<Connection> = None;
        // The limiter starts shared with no lease: requests wait (at most a
        // connect timeout) until the first connection says which it is.
        let mut shared = true;
        let mut next_connect = Instant::now();
        let mut next_renew = Instant::now() + renew_every;
        loop {
            if self.stop.load(Ordering::Acquire) {
                if let Some(con) = con.as_mut() {
                    self.release_all(con);
                }
                return;
            }
            let now = Instant::now();
            if con.is_none() && now >= next_connect {
                match self.config.redis.connect().and_then(|mut c| redis::cmd("PING").query::<()>(&mut c).map(|()| c)) {
                    Ok(c) => {
                        con = Some(c);
                        if !shared {
                            shared = true;
                            self.limiter.set_gate(Gate::Shared);
                            self.changed(true);
                            log::info!(
                                "shared budget: Redis {} answers again; {} slots shared as '{}'",
                                self.config.redis,
                                self.config.limit,
                                self.config.budget_key
                            );
                        }
                        next_renew = Instant::now() + renew_every;
                    }
                    Err(e) => {
                        next_connect = now + reconnect;
                        if shared {
                            shared = false;
                            self.go_local(&describe(&e));
                        }
                    }
                }
            }
            if let Some(c) = con.as_mut() {
                let renew = Instant::now() >= next_renew;
                match self.round(c, renew) {
                    Ok(()) => {
                        if renew {
                            next_renew = Instant::now() + renew_every;
                        }
                    }
                    Err(e) => {
                        con = None;
                        shared = false;
                        next_connect = Instant::now() + reconnect;
                        self.go_local(&describe(&e));
                    }
                }
            }
            let now = Instant::now();
            let until = if con.is_none() {
                next_connect
            } else if self.tickets.is_empty() {
                next_renew
            } else {
                next_renew.min(now + POLL)
            };
            self.waker.wait(Some(until.saturating_duration_since(now)));
        }
    }

    /// One exchange with Redis: release what was given back, queue or
    /// withdraw tickets to match the demand, take the leases granted, and
    /// renew (or, holding nothing, just check Redis is there).
    fn round(&mut self, con: &mut Connection, renew: bool) -> RedisResult<()> {
        let settle = self.limiter.settle();
        let mut gone: Vec<String> = Vec::new();
        for _ in 0..settle.release {
            if let Some(id) = self.held.pop() {
                gone.push(id);
            }
        }
        while self.tickets.len() > settle.need {
            let (id, _) = self.tickets.pop().expect("more tickets than needed");
            gone.push(id);
        }
        while self.tickets.len() < settle.need {
            self.seq += 1;
            self.tickets.push((format!("{}:{}", self.id, self.seq), Instant::now()));
        }
        if !gone.is_empty() {
            self.forget(con, &gone)?;
        }
        if !self.tickets.is_empty() {
            let mut call = self.acquire.prepare_invoke();
            call.key(&self.keys.leases).key(&self.keys.queue).key(&self.keys.tickets).key(&self.keys.seq);
            call.arg(self.config.limit).arg(self.config.lease_ttl.as_millis() as u64);
            for (id, _) in &self.tickets {
                call.arg(id);
            }
            let granted: Vec<String> = call.invoke(con)?;
            if !granted.is_empty() {
                let now = Instant::now();
                let mut waits = Vec::with_capacity(granted.len());
                self.tickets.retain(|(id, since)| {
                    let taken = granted.contains(id);
                    if taken {
                        waits.push(now.duration_since(*since).as_micros() as u64);
                    }
                    !taken
                });
                self.held.extend(granted.iter().cloned());
                self.limiter.add_leases(granted.len());
                self.record(&waits);
            }
        }
        if renew {
            if self.held.is_empty() {
                redis::cmd("PING").query::<()>(con)?;
            } else {
                let mut call = self.renew.prepare_invoke();
                call.key(&self.keys.leases).arg(self.config.lease_ttl.as_millis() as u64);
                for id in &self.held {
                    call.arg(id);
                }
                let lost: Vec<String> = call.invoke(con)?;
                if !lost.is_empty() {
                    self.held.retain(|id| !lost.contains(id));
                    let over = self.limiter.lose_leases(lost.len());
                    log::warn!(
                        "shared budget: {} lease(s) expired before renewal (lease_ttl_ms={}); {over} running transfer(s) go on without one",
                        lost.len(),
                        self.config.lease_ttl.as_millis()
                    );
                    let mut c = self.counters.lock();
                    c.figures.leases_lost += lost.len() as u64;
                    c.figures.overruns += over as u64;
                }
            }
        }
        self.counters.lock().figures.leases_held = self.held.len();
        Ok(())
    }

    /// Leases and tickets no longer wanted.
    fn forget(&self, con: &mut Connection, ids: &[String]) -> RedisResult<()> {
        redis::pipe()
            .cmd("ZREM")
            .arg(&self.keys.leases)
            .arg(ids)
            .ignore()
            .cmd("ZREM")
            .arg(&self.keys.queue)
            .arg(ids)
            .ignore()
            .cmd("ZREM")
            .arg(&self.keys.tickets)
            .arg(ids)
            .ignore()
            .query::<()>(con)
    }

    fn release_all(&mut self, con: &mut Connection) {
        let mut ids: Vec<String> = self.held.drain(..).collect();
        ids.extend(self.tickets.drain(..).map(|(id, _)| id));
        if !ids.is_empty() {
            let _ = self.forget(con, &ids);
        }
    }

    fn go_local(&mut self, why: &str) {
        let local_share = self.config.local_share;
        self.held.clear();
        self.tickets.clear();
        self.limiter.set_gate(Gate::Local { local_share });
        self.changed(false);
        log::warn!(
            "shared budget: Redis {} unreachable ({why}); using a local share of {local_share} of {} slots until it answers",
            self.config.redis,
            self.config.limit
        );
    }

    fn changed(&self, shared: bool) {
        let mut c = self.counters.lock();
        c.figures.shared = shared;
        c.figures.mode_changes += 1;
        c.figures.leases_held = self.held.len();
    }

    fn record(&self, waits: &[u64]) {
        let mut c = self.counters.lock();
        c.figures.leases_acquired += waits.len() as u64;
        for w in waits {
            c.figures.acquire_wait_us_sum += w;
            if c.waits.len() == SAMPLES {
                c.waits.pop_front();
            }
            c.waits.push_back(*w);
        }
        let mut sorted: Vec<u64> = c.waits.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        c.figures.acquire_wait_us_p50 = at(0.5);
        c.figures.acquire_wait_us_p99 = at(0.99);
    }
}
