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

    /// Consumes pending wake-ups; called once after every sleep.
    pub fn drain(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        self.take();
    }

    /// Consumes pending wake-ups; true when there were any.
    pub fn take(&self) -> bool {
        self.fd.take()
    }

    /// Waits until woken or `timeout` passes (None: no limit).
    pub fn wait(&self, timeout: Option<Duration>) {
        self.fd.poll(timeout);
        self.drain();
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
    fn wait_times_out_when_nobody_wakes() {
        let w = Waker::new().unwrap();
        let t = Instant::now();
        w.wait(Some(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(25));
    }
}
