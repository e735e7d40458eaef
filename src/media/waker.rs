//! Wakes a channel's worker thread: an eventfd that the worker polls
//! together with its curl transfer (curl's multi wait takes extra fds).
//!
//! Writing to it is one non-blocking syscall with no lock and no allocation,
//! so the media thread may use it from `read_frame`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Waker {
    fd: OwnedFd,
    /// Times the worker woke from a sleep (each `drain`): the figure that
    /// the backpressure hysteresis keeps low (SPEAK summary `wakeups=`).
    wakeups: AtomicU64,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; a non-negative return is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Ok(Waker { fd: unsafe { OwnedFd::from_raw_fd(fd) }, wakeups: AtomicU64::new(0) })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the fd readable. Never blocks (a saturated counter is already
    /// readable, which is all we need).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
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
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking fd.
        unsafe { libc::read(self.fd(), (&mut value as *mut u64).cast(), 8) == 8 }
    }

    /// Waits until woken or `timeout` passes (None: no limit).
    pub fn wait(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(0, i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
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
