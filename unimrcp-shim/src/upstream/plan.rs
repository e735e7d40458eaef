//! The account's concurrency limit: admission of text-to-speech requests,
//! the short queue in front of it, and the counters tests read.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a queued request wakes to see whether its client left or the
/// mock is stopping (a freed slot wakes it at once).
const QUEUE_POLL: Duration = Duration::from_millis(25);

/// Admission state shared by every connection.
#[derive(Default)]
pub(crate) struct Plan {
    state: Mutex<PlanState>,
    changed: Condvar,
}

#[derive(Default)]
struct PlanState {
    /// `None`: every request is admitted at once.
    limit: Option<usize>,
    /// How many requests may wait for a slot.
    queue_depth: usize,
    /// Admitted requests whose response has not ended.
    in_progress: usize,
    /// Tickets of the waiting requests, first in line first.
    waiting: VecDeque<u64>,
    next_ticket: u64,
    max_concurrent: usize,
    refusals: usize,
}

impl PlanState {
    fn has_room(&self) -> bool {
        match self.limit {
            None => true,
            Some(k) => self.in_progress < k,
        }
    }

    fn leave_queue(&mut self, ticket: u64) {
        self.waiting.retain(|&t| t != ticket);
    }
}

/// Outcome of [`Plan::admit`].
pub(crate) enum Admission<'a> {
    /// In progress until the slot is dropped.
    Admitted(Slot<'a>),
    /// Over the limit with the queue full, or queued past the deadline:
    /// answer 429 (already counted in [`Plan::refusals`]).
    Refused,
    /// The client left or the mock is stopping while the request waited.
    Gone,
}

/// One admitted request; dropping it frees the slot.
pub(crate) struct Slot<'a>(&'a Plan);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.in_progress -= 1;
        self.0.changed.notify_all();
    }
}

impl Plan {
    pub fn set_limit(&self, limit: Option<usize>) {
        self.state.lock().limit = limit;
        self.changed.notify_all();
    }

    /// Requests already waiting keep their place if the depth shrinks.
    pub fn set_queue_depth(&self, depth: usize) {
        self.state.lock().queue_depth = depth;
        self.changed.notify_all();
    }

    pub fn limit(&self) -> Option<usize> {
        self.state.lock().limit
    }

    pub fn in_progress(&self) -> usize {
        self.state.lock().in_progress
    }

    pub fn max_concurrent(&self) -> usize {
        self.state.lock().max_concurrent
    }

    /// Starts the high-water mark again from what is in progress now.
    pub fn reset_max_concurrent(&self) {
        let mut st = self.state.lock();
        st.max_concurrent = st.in_progress;
    }

    pub fn refusals(&self) -> usize {
        self.state.lock().refusals
    }

    pub fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }

    fn take_slot<'a>(&'a self, st: &mut MutexGuard<'_, PlanState>) -> Slot<'a> {
        st.in_progress += 1;
        st.max_concurrent = st.max_concurrent.max(st.in_progress);
        Slot(self)
    }

    /// Admits a request now, queues it (first in, first out) until a slot
    /// frees or `deadline` passes, or refuses it. `gone` is asked, without
    /// the lock held, every [`QUEUE_POLL`] while the request waits: true
    /// when its client left or the mock is stopping.
    pub fn admit(&self, deadline: Instant, mut gone: impl FnMut() -> bool) -> Admission<'_> {
        let mut st = self.state.lock();
        // Nobody jumps the queue: a request that finds others waiting
        // waits behind them even if a slot has just freed.
        if st.waiting.is_empty() && st.has_room() {
            return Admission::Admitted(self.take_slot(&mut st));
        }
        if st.waiting.len() >= st.queue_depth {
            st.refusals += 1;
            return Admission::Refused;
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push_back(ticket);
        loop {
            if st.waiting.front() == Some(&ticket) && st.has_room() {
                st.waiting.pop_front();
                // The next in line may fit as well (the limit was raised).
                self.changed.notify_all();
                return Admission::Admitted(self.take_slot(&mut st));
            }
            let now = Instant::now();
            if now >= deadline {
                st.leave_queue(ticket);
                st.refusals += 1;
                self.changed.notify_all();
                return Admission::Refused;
            }
            self.changed.wait_for(&mut st, QUEUE_POLL.min(deadline - now));
            if MutexGuard::unlocked(&mut st, &mut gone) {
                st.leave_queue(ticket);
                self.changed.notify_all();
                return Admission::Gone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    fn admitted(a: Admission<'_>) -> Slot<'_> {
        match a {
            Admission::Admitted(slot) => slot,
            Admission::Refused => panic!("refused"),
            Admission::Gone => panic!("gone"),
        }
    }

    #[test]
    fn no_limit_admits_everything_and_counts() {
        let p = Plan::default();
        let far = Instant::now() + Duration::from_secs(5);
        let slots: Vec<_> = (0..5).map(|_| admitted(p.admit(far, || false))).collect();
        assert_eq!((p.in_progress(), p.max_concurrent()), (5, 5));
        drop(slots);
        assert_eq!((p.in_progress(), p.max_concurrent()), (0, 5));
        p.reset_max_concurrent();
        assert_eq!(p.max_concurrent(), 0);
    }

    #[test]
    fn limit_refuses_without_queue_and_times_out_in_it() {
        let p = Plan::default();
        p.set_limit(Some(1));
        let far = Instant::now() + Duration::from_secs(5);
        let one = admitted(p.admit(far, || false));
        assert!(matches!(p.admit(far, || false), Admission::Refused));
        p.set_queue_depth(1);
        let soon = Instant::now() + Duration::from_millis(60);
        assert!(matches!(p.admit(soon, || false), Admission::Refused));
        assert_eq!((p.refusals(), p.waiting()), (2, 0));
        assert!(matches!(p.admit(far, || true), Admission::Gone));
        assert_eq!((p.refusals(), p.waiting(), p.in_progress()), (2, 0, 1));
        drop(one);
        assert_eq!(p.max_concurrent(), 1);
    }

    #[test]
    fn queue_is_first_in_first_out() {
        let p = Arc::new(Plan::default());
        p.set_limit(Some(1));
        p.set_queue_depth(3);
        let far = Instant::now() + Duration::from_secs(10);
        let first = admitted(p.admit(far, || false));
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiters: Vec<_> = (0..3)
            .map(|i| {
                let (plan, order) = (Arc::clone(&p), Arc::clone(&order));
                let t = thread::spawn(move || {
                    let _slot = admitted(plan.admit(far, || false));
                    order.lock().push(i);
                    thread::sleep(Duration::from_millis(5));
                });
                // Queue them one after the other, in order.
                while p.waiting() <= i {
                    assert!(Instant::now() < far, "waiter {i} never queued");
                    thread::sleep(Duration::from_millis(1));
                }
                t
            })
            .collect();
        drop(first);
        for t in waiters {
            t.join().unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2]);
        assert_eq!((p.max_concurrent(), p.refusals()), (1, 0));
    }
}
