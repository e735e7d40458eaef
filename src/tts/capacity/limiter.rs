//! The engine-wide limit on upstream requests in flight: a FIFO queue of
//! waiting requests and an effective limit learned from the upstream.
//!
//! An ElevenLabs account may have only so many requests open at once (its
//! plan's concurrency); past that it queues briefly, then answers 429
//! `too_many_concurrent_requests`. So every upstream request of every
//! channel takes a slot here first, and gives it back the moment its
//! transfer ends.
//!
//! The effective limit is additive-increase, multiplicative-decrease: a 429
//! for concurrency lowers it (once per congestion event: a permit granted
//! before the last decrease does not lower it again), and each request that
//! succeeds while every slot was wanted raises it by 1/limit, so it creeps
//! back up by about one slot per full round of requests. It never exceeds
//! `max_concurrent_requests` when that is set, nor the upstream's own
//! `maximum-concurrent-requests` header once one was seen.
//!
//! Waiting happens on the waiting channel's own worker thread, on its own
//! eventfd: the limiter hands a freed slot to the first waiter that is
//! ready (strict arrival order, a request put back after a 429 goes first)
//! and wakes only that one. Nobody polls.
//!
//! With a budget shared through Redis (budget.rs, issue #13) a grant also
//! needs a lease: the budget thread acquires leases for the ready waiters
//! and hands them in (`add_leases`); a permit's end gives its lease back to
//! the thread to release in Redis (never reused here: the next lease goes
//! to whoever is first in the shared queue, possibly on another server).
//! While Redis is unreachable, grants are capped at `local_share` instead.
//!
//! Lock order: `state` is a leaf. Wakers are woken after it is released.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::media::Waker;

/// With `max_concurrent_requests` unset nothing is held back until the
/// upstream says what the account's limit is (ElevenLabs sends
/// `maximum-concurrent-requests` with its answers) or refuses a request for
/// concurrency; this is only the bound on what is learned.
pub const LEARN_CEILING: usize = 256;
/// Multiplicative decrease on a concurrency 429.
const DECREASE: f64 = 0.7;

/// One waiting request, as the queue holds it.
struct Entry {
    id: u64,
    waker: Arc<Waker>,
    /// A request put back after a 429 or waiting out a backoff is not
    /// served before this.
    not_before: Option<Instant>,
    granted: Arc<AtomicBool>,
}

struct State {
    limit: f64,
    in_use: usize,
    queue: VecDeque<Entry>,
    next_id: u64,
    /// Bumped at each decrease; a permit from an older epoch does not
    /// lower the limit again.
    epoch: u64,
    /// The upstream's `maximum-concurrent-requests`, once seen.
    advertised: Option<usize>,
    /// Figures for the benchmark, the log and metrics.
    peak_in_use: usize,
    rejections: u64,
    /// What bounds grants besides the limit.
    gate: Gate,
    /// Shared mode: leases this server holds (spare, or held by a permit).
    leases: usize,
    /// Permits in use without a lease: granted while Redis was unreachable,
    /// or whose lease expired while their transfer ran. They end without
    /// releasing one; the budget thread tries to lease them again.
    unleased: usize,
    /// Leases given back by ended permits, for the budget thread to release.
    to_release: usize,
}

/// What bounds grants besides the (learned) limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nothing: one server owns the account.
    Own,
    /// A grant needs a spare lease from the shared budget.
    Shared,
    /// The shared budget is unreachable: at most `local_share` in use.
    Local { local_share: usize },
}

/// What the budget thread should do (`Limiter::settle`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settle {
    /// Leases to release in Redis: given back, or spare with nobody ready.
    pub release: usize,
    /// Leases wanted beyond those held.
    pub need: usize,
}

/// A snapshot of the limiter, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// Slots the limiter hands out now.
    pub limit: usize,
    pub in_use: usize,
    pub waiting: usize,
    pub peak_in_use: usize,
    /// Concurrency 429s reported.
    pub rejections: u64,
}

pub struct Limiter {
    /// `max_concurrent_requests`, when set.
    configured: Option<usize>,
    state: Mutex<State>,
    /// The budget thread's, when the budget is shared.
    budget_waker: Option<Arc<Waker>>,
}

/// Leases held and not used by a permit.
fn spare(s: &State) -> usize {
    s.leases.saturating_sub(s.in_use - s.unleased)
}

impl Limiter {
    pub fn new(configured: Option<usize>) -> Arc<Limiter> {
        let limit = configured.unwrap_or(LEARN_CEILING) as f64;
        Arc::new(Limiter {
            configured,
            state: Mutex::new(State {
                limit,
                in_use: 0,
                queue: VecDeque::new(),
                next_id: 0,
                epoch: 0,
                advertised: None,
                peak_in_use: 0,
                rejections: 0,
                gate: Gate::Own,
                leases: 0,
                unleased: 0,
                to_release: 0,
            }),
            budget_waker: None,
        })
    }

    /// A limiter whose grants also need a lease of the shared budget; the
    /// budget thread waits on `budget_waker`, woken when demand changes.
    pub fn shared(configured: usize, budget_waker: Arc<Waker>) -> Arc<Limiter> {
        let limiter = Limiter::new(Some(configured));
        let mut limiter = Arc::into_inner(limiter).expect("just made");
        limiter.state.get_mut().gate = Gate::Shared;
        limiter.budget_waker = Some(budget_waker);
        Arc::new(limiter)
    }

    fn wake_budget(&self) {
        if let Some(w) = &self.budget_waker {
            w.wake();
        }
    }

    /// For the budget thread: takes the leases to release and says how
    /// many more are wanted: one per permit in use without a lease, and
    /// one per ready waiter the limit would admit, less the spare ones.
    pub fn settle(&self) -> Settle {
        let mut s = self.state.lock();
        if s.gate != Gate::Shared {
            return Settle::default();
        }
        let now = Instant::now();
        let ready = s.queue.iter().filter(|e| e.not_before.map_or(true, |t| t <= now)).count();
        let admissible = ready.min(slots(s.limit).saturating_sub(s.in_use));
        let spare = spare(&s);
        let surplus = spare.saturating_sub(admissible);
        s.leases -= surplus;
        let release = std::mem::take(&mut s.to_release) + surplus;
        Settle { release, need: s.unleased + admissible.saturating_sub(spare) }
    }

    /// The budget thread got `n` leases: they first cover permits running
    /// without one, then wait for the queue's head.
    pub fn add_leases(&self, n: usize) {
        {
            let mut s = self.state.lock();
            let cover = n.min(s.unleased);
            s.unleased -= cover;
            s.leases += n;
        }
        self.dispatch();
    }

    /// `n` leases expired in Redis before they were renewed (Redis was slow
    /// or unreachable past the TTL). Spare ones are simply gone; a permit
    /// that held one runs on without (its transfer is not cut). Returns how
    /// many running permits lost their lease (overruns).
    pub fn lose_leases(&self, n: usize) -> usize {
        let mut s = self.state.lock();
        s.leases = s.leases.saturating_sub(n);
        let leased = s.in_use - s.unleased;
        let over = leased.saturating_sub(s.leases);
        s.unleased += over;
        over
    }

    /// Redis is unreachable (`Local`) or back (`Shared`). Leases held are
    /// forgotten either way (they expire in Redis); every permit in use
    /// counts as unleased.
    pub fn set_gate(&self, gate: Gate) {
        {
            let mut s = self.state.lock();
            s.gate = gate;
            s.leases = 0;
            s.to_release = 0;
            s.unleased = s.in_use;
        }
        self.dispatch();
    }

    fn may_grant(&self, s: &State) -> bool {
        if s.in_use >= slots(s.limit) {
            return false;
        }
        match s.gate {
            Gate::Own => true,
            Gate::Shared => spare(s) > 0,
            Gate::Local { local_share } => s.in_use < local_share,
        }
    }

    pub fn figures(&self) -> Figures {
        let s = self.state.lock();
        Figures {
            limit: slots(s.limit),
            in_use: s.in_use,
            waiting: s.queue.len(),
            peak_in_use: s.peak_in_use,
            rejections: s.rejections,
        }
    }

    /// The highest the limit may go.
    fn ceiling(&self, s: &State) -> f64 {
        let own = self.configured.unwrap_or(LEARN_CEILING);
        s.advertised.map_or(own, |a| a.min(own)) as f64
    }

    /// Joins the queue (at its head for a request that was already served
    /// once: a 429 or a retry must not lose its place). `waker` is woken
    /// when a slot is granted.
    pub fn enqueue(self: &Arc<Self>, waker: Arc<Waker>, front: bool, not_before: Option<Instant>) -> Ticket {
        let granted = Arc::new(AtomicBool::new(false));
        let id = {
            let mut s = self.state.lock();
            let id = s.next_id;
            s.next_id += 1;
            let entry = Entry { id, waker, not_before, granted: Arc::clone(&granted) };
            if front {
                s.queue.push_front(entry);
            } else {
                s.queue.push_back(entry);
            }
            id
        };
        let ticket = Ticket { limiter: Arc::clone(self), id, granted, not_before, taken: false };
        self.dispatch();
        self.wake_budget();
        ticket
    }

    /// Hands free slots to the first waiters that are ready, and wakes them.
    fn dispatch(&self) {
        let mut wake = Vec::new();
        {
            let mut s = self.state.lock();
            let now = Instant::now();
            while self.may_grant(&s) {
                let Some(at) = s.queue.iter().position(|e| e.not_before.map_or(true, |t| t <= now)) else {
                    break;
                };
                let entry = s.queue.remove(at).expect("position is in the queue");
                entry.granted.store(true, Ordering::Release);
                s.in_use += 1;
                if matches!(s.gate, Gate::Local { .. }) {
                    s.unleased += 1;
                }
                s.peak_in_use = s.peak_in_use.max(s.in_use);
                wake.push(entry.waker);
            }
        }
        for waker in wake {
            waker.wake();
        }
    }

    fn release(&self, outcome: Release, epoch: u64) {
        {
            let mut s = self.state.lock();
            s.in_use = s.in_use.saturating_sub(1);
            if s.unleased > 0 {
                s.unleased -= 1;
            } else if s.gate == Gate::Shared {
                s.leases = s.leases.saturating_sub(1);
                s.to_release += 1;
            }
            match outcome {
                Release::Neutral => {}
                Release::Succeeded { contended } => {
                    if contended {
                        let ceiling = self.ceiling(&s);
                        s.limit = (s.limit + 1.0 / s.limit).min(ceiling);
                    }
                }
                Release::Rejected { in_flight } => {
                    s.rejections += 1;
                    if epoch == s.epoch {
                        let base = s.limit.min(in_flight as f64);
                        s.limit = (base * DECREASE).floor().max(1.0);
                        s.epoch += 1;
                    }
                }
            }
        }
        self.dispatch();
        self.wake_budget();
    }

    /// The upstream said what the account's limit is
    /// (`maximum-concurrent-requests`): it caps the learned limit, and
    /// sets it when nothing has been learned yet.
    pub fn advertise(&self, max: usize) {
        if max == 0 {
            return;
        }
        {
            let mut s = self.state.lock();
            if s.advertised == Some(max) {
                return;
            }
            s.advertised = Some(max);
            let ceiling = self.ceiling(&s);
            let before = s.limit;
            if self.configured.is_none() && s.epoch == 0 {
                s.limit = ceiling;
            } else {
                s.limit = s.limit.min(ceiling);
            }
            // Lowered to what the account allows: the 429s of requests
            // sent before (which brought this header) must not lower it
            // again.
            if s.limit < before {
                s.epoch += 1;
            }
        }
        self.dispatch();
    }
}

fn slots(limit: f64) -> usize {
    (limit.floor() as usize).max(1)
}

enum Release {
    Neutral,
    Succeeded { contended: bool },
    Rejected { in_flight: usize },
}

/// A place in the queue. Dropping it leaves the queue (STOP, BARGE-IN,
/// close, a timeout), giving back a slot granted meanwhile.
pub struct Ticket {
    limiter: Arc<Limiter>,
    id: u64,
    granted: Arc<AtomicBool>,
    not_before: Option<Instant>,
    taken: bool,
}

impl Ticket {
    /// The slot, once granted.
    pub fn take(&mut self) -> Option<Permit> {
        if !self.granted.load(Ordering::Acquire) {
            // A backoff may have run out since anything happened.
            if self.not_before.is_some_and(|t| t <= Instant::now()) {
                self.limiter.dispatch();
            }
            if !self.granted.load(Ordering::Acquire) {
                return None;
            }
        }
        self.taken = true;
        let epoch = self.limiter.state.lock().epoch;
        Some(Permit { limiter: Arc::clone(&self.limiter), epoch, released: false })
    }

    /// How long the waiter may sleep before checking again: until its
    /// backoff runs out (a grant wakes it sooner).
    pub fn wait_hint(&self, now: Instant) -> Option<Duration> {
        self.not_before.filter(|t| *t > now).map(|t| t - now)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let in_queue = {
            let mut s = self.limiter.state.lock();
            match s.queue.iter().position(|e| e.id == self.id) {
                Some(at) => {
                    s.queue.remove(at);
                    true
                }
                None => false,
            }
        };
        // Granted after our last look: give the slot to the next one.
        if !in_queue && self.granted.load(Ordering::Acquire) {
            self.limiter.release(Release::Neutral, u64::MAX);
        } else {
            // One waiter fewer: the budget thread may want fewer leases.
            self.limiter.wake_budget();
        }
    }
}

/// A slot held for one upstream request; dropping it gives it back.
pub struct Permit {
    limiter: Arc<Limiter>,
    epoch: u64,
    released: bool,
}

impl Permit {
    /// The request got its audio: the limit may grow.
    pub fn succeeded(mut self) {
        self.released = true;
        let contended = {
            let s = self.limiter.state.lock();
            !s.queue.is_empty() || s.in_use >= slots(s.limit)
        };
        self.limiter.release(Release::Succeeded { contended }, self.epoch);
    }

    /// The upstream refused it for concurrency (429
    /// `too_many_concurrent_requests`): the limit shrinks.
    pub fn rejected(mut self) {
        self.released = true;
        let in_flight = self.limiter.state.lock().in_use;
        self.limiter.release(Release::Rejected { in_flight }, self.epoch);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.released {
            self.limiter.release(Release::Neutral, self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waker() -> Arc<Waker> {
        Arc::new(Waker::new().expect("eventfd"))
    }

    #[test]
    fn grants_in_arrival_order_up_to_the_limit() {
        let limiter = Limiter::new(Some(2));
        let mut a = limiter.enqueue(waker(), false, None);
        let mut b = limiter.enqueue(waker(), false, None);
        let mut c = limiter.enqueue(waker(), false, None);
        let mut d = limiter.enqueue(waker(), false, None);
        let pa = a.take().expect("first slot");
        let pb = b.take().expect("second slot");
        assert!(c.take().is_none() && d.take().is_none());
        assert_eq!(limiter.figures().waiting, 2);
        drop(pb);
        let pc = c.take().expect("c is next");
        assert!(d.take().is_none());
        drop((pa, pc));
        assert!(d.take().is_some());
        assert_eq!(limiter.figures().peak_in_use, 2);
    }

    #[test]
    fn a_waiter_that_leaves_gives_its_place_and_its_slot_back() {
        let limiter = Limiter::new(Some(1));
        let mut a = limiter.enqueue(waker(), false, None);
        let pa = a.take().unwrap();
        let b = limiter.enqueue(waker(), false, None);
        let c = limiter.enqueue(waker(), false, None);
        drop(b); // STOP while queued
        assert_eq!(limiter.figures().waiting, 1);
        drop(pa);
        // c was granted; leaving without taking passes the slot on.
        let mut d = limiter.enqueue(waker(), false, None);
        drop(c);
        let pd = d.take();
        assert!(pd.is_some());
        assert_eq!(limiter.figures().in_use, 1);
        drop(pd);
        assert_eq!(limiter.figures().in_use, 0);
    }

    #[test]
    fn the_granted_waiter_is_woken() {
        let limiter = Limiter::new(Some(1));
        let mut a = limiter.enqueue(waker(), false, None);
        let pa = a.take().unwrap();
        let w = waker();
        let mut b = limiter.enqueue(Arc::clone(&w), false, None);
        w.take();
        drop(pa);
        // The eventfd is readable now: a zero wait returns at once.
        let started = Instant::now();
        w.wait(Some(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(b.take().is_some());
    }

    #[test]
    fn a_request_put_back_goes_first_but_not_before_its_time() {
        let limiter = Limiter::new(Some(1));
        let mut a = limiter.enqueue(waker(), false, None);
        let pa = a.take().unwrap();
        let mut b = limiter.enqueue(waker(), false, None);
        let later = Instant::now() + Duration::from_secs(3600);
        let mut back = limiter.enqueue(waker(), true, Some(later));
        drop(pa);
        // The head waits out its backoff; the next in line is served.
        assert!(back.take().is_none());
        assert!(b.take().is_some());
        assert!(back.wait_hint(Instant::now()).is_some());
    }

    #[test]
    fn concurrency_429s_lower_the_limit_once_per_event_and_success_raises_it() {
        let limiter = Limiter::new(None);
        assert_eq!(limiter.figures().limit, LEARN_CEILING, "nothing held back before the upstream says");
        let mut tickets: Vec<Ticket> = (0..8).map(|_| limiter.enqueue(waker(), false, None)).collect();
        let permits: Vec<Permit> = tickets.iter_mut().map(|t| t.take().unwrap()).collect();
        // All eight were sent before the upstream refused: one decrease,
        // from what was in flight.
        let mut permits = permits.into_iter();
        for p in permits.by_ref().take(3) {
            p.rejected();
        }
        assert_eq!(limiter.figures().limit, 5, "8 * 0.7, once");
        assert_eq!(limiter.figures().rejections, 3);
        // A permit granted after the decrease lowers it again.
        let mut t = limiter.enqueue(waker(), false, None);
        assert!(t.take().is_none(), "5 in use, limit 5");
        drop(permits.next());
        let p = t.take().unwrap();
        p.rejected();
        assert_eq!(limiter.figures().limit, 3);
        // Successes under contention climb back, by about one per round.
        let rest: Vec<Permit> = permits.collect();
        let mut waiting: Vec<Ticket> = (0..4).map(|_| limiter.enqueue(waker(), false, None)).collect();
        for p in rest {
            p.succeeded();
        }
        assert_eq!(limiter.figures().limit, 4, "3 + 3 * 1/3..: one slot per round");
        waiting.clear();
    }

    #[test]
    fn a_shared_limiter_grants_only_with_a_lease_and_gives_each_back() {
        let limiter = Limiter::shared(3, waker());
        let mut a = limiter.enqueue(waker(), false, None);
        let mut b = limiter.enqueue(waker(), false, None);
        assert!(a.take().is_none(), "no lease yet");
        assert_eq!(limiter.settle(), Settle { release: 0, need: 2 });
        limiter.add_leases(1);
        let pa = a.take().expect("the head got the lease");
        assert!(b.take().is_none());
        assert_eq!(limiter.settle(), Settle { release: 0, need: 1 });
        drop(pa);
        // Given back to Redis, never passed on here: b needs a lease of its own.
        assert!(b.take().is_none());
        assert_eq!(limiter.settle(), Settle { release: 1, need: 1 });
        limiter.add_leases(2);
        let pb = b.take().expect("b's lease");
        assert_eq!(limiter.settle(), Settle { release: 1, need: 0 }, "the spare lease goes back");
        // Its lease expired while it ran: it goes on, and asks for one.
        assert_eq!(limiter.lose_leases(1), 1, "one overrun");
        assert_eq!(limiter.settle(), Settle { release: 0, need: 1 });
        drop(pb);
        assert_eq!(limiter.settle(), Settle::default(), "an unleased permit releases nothing");
    }

    #[test]
    fn without_redis_the_local_share_bounds_grants() {
        let limiter = Limiter::shared(5, waker());
        limiter.set_gate(Gate::Local { local_share: 2 });
        let mut tickets: Vec<Ticket> = (0..4).map(|_| limiter.enqueue(waker(), false, None)).collect();
        let permits: Vec<Permit> = tickets.iter_mut().filter_map(Ticket::take).collect();
        assert_eq!(permits.len(), 2, "the local share");
        let mut tickets = tickets.split_off(2);
        assert_eq!(limiter.settle(), Settle::default(), "nothing asked of Redis");
        // Back to shared: the two running ask for leases, then the queue.
        limiter.set_gate(Gate::Shared);
        assert_eq!(limiter.settle(), Settle { release: 0, need: 2 + 2 });
        limiter.add_leases(3);
        let third: Vec<Permit> = tickets.iter_mut().filter_map(Ticket::take).collect();
        assert_eq!(third.len(), 1, "two leases covered the running ones");
        drop(permits);
        assert_eq!(limiter.settle(), Settle { release: 2, need: 1 });
    }

    #[test]
    fn the_configured_and_advertised_limits_are_ceilings() {
        let limiter = Limiter::new(Some(3));
        limiter.advertise(10);
        assert_eq!(limiter.figures().limit, 3, "never above max_concurrent_requests");
        limiter.advertise(2);
        assert_eq!(limiter.figures().limit, 2, "the account's own limit is lower");
        let learned = Limiter::new(None);
        learned.advertise(15);
        assert_eq!(learned.figures().limit, 15, "learned at once from the header");
        for _ in 0..100 {
            let mut t = learned.enqueue(waker(), false, None);
            let _hold: Vec<Ticket> = (0..20).map(|_| learned.enqueue(waker(), false, None)).collect();
            t.take().unwrap().succeeded();
        }
        assert_eq!(learned.figures().limit, 15, "growth stops at the advertised limit");
    }
}
