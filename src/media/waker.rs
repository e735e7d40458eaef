//! Wakes a channel's worker thread: an eventfd that the worker polls
//! together with its curl transfer (curl's multi wait takes extra fds).
//!
//! Writing to it is one non-blocking syscall with no lock and no allocation,
//! so the media thread may use it from `read_frame`.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ffi::EventFd;

pub struct Waker {
    fd: EventFd,
    /// Times the worker woke from a sleep (each `drain`): the figure that
    /// the backpressure hysteresis keeps low (SPEAK summary `wakeups=`).
    wakeups: AtomicU64,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        Ok(Waker { fd: EventFd::new()?, wakeups: AtomicU64::new(0) })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.fd()
    }

    /// Makes the fd readable. Never blocks.
    pub fn wake(&self) {
        self.fd.signal();
    }

    /// Wake-ups of the worker so far (see `wakeups`).
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Ends a sleep: counts the wake-up, and consumes pending wake-ups when
    /// the sleep saw the fd `signalled` (curl's multi wait reports it). A
    /// sleep that ended on its timeout or on the network leaves the counter
    /// alone: reading it then would be a syscall that finds nothing (one per
    /// wake-up of a transfer, bench [10]); a signal that lands just after
    /// the sleep stays pending and ends the next one at once, so none is
    /// lost.
    pub fn woke(&self, signalled: bool) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        if signalled {
            self.take();
        }
    }

    /// Consumes pending wake-ups; true when there were any.
    pub fn take(&self) -> bool {
        self.fd.take()
    }

    /// Waits until woken or `timeout` passes (None: no limit).
    pub fn wait(&self, timeout: Option<Duration>) {
        let signalled = self.fd.poll(timeout);
        self.woke(signalled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wake_before_wait_is_not_lost() {
        let w = Waker::new().unwrap();
        w.wake();
        w.wake();
        let t = Instant::now();
        w.wait(Some(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn a_wake_up_is_consumed_only_by_a_sleep_that_saw_it() {
        let w = Waker::new().unwrap();
        w.wake();
        // A sleep that ended on the network: the signal stays pending.
        w.woke(false);
        assert_eq!(w.wakeups(), 1);
        assert!(w.take(), "still pending for the next sleep");
        w.wake();
        w.woke(true);
        assert_eq!(w.wakeups(), 2);
        assert!(!w.take(), "consumed by the sleep that saw it");
        // A sleep that ran out leaves a later signal to the next one.
        w.wait(Some(Duration::from_millis(1)));
        w.wake();
        w.wait(Some(Duration::from_secs(5)));
        assert!(!w.take(), "the pending signal ended the sleep, which consumed it");
        assert_eq!(w.wakeups(), 4);
    }

    #[test]
    fn wait_times_out_when_nobody_wakes() {
        let w = Waker::new().unwrap();
        let t = Instant::now();
        w.wait(Some(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(25));
    }
}
