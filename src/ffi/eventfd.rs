//! An eventfd: the kernel counter a channel's worker sleeps on (with its
//! curl transfer's sockets) and that the media and MRCP threads signal.
//!
//! Not FFI with UniMRCP, but these are raw syscalls, and `unsafe` lives in
//! this module; `media::Waker` builds the wake-up protocol on top.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub struct EventFd(OwnedFd);

impl EventFd {
    /// A non-blocking, close-on-exec eventfd with a zero counter.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; a non-negative return is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Adds one to the counter, making the fd readable. One non-blocking
    /// syscall, no lock, no allocation (a saturated counter is already
    /// readable, which is all a waker needs, so its EAGAIN is ignored).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter; true when it was not zero.
    pub fn take(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking fd.
        unsafe { libc::read(self.fd(), (&mut value as *mut u64).cast(), 8) == 8 }
    }

    /// Waits until the fd is readable or `timeout` passes (None: no limit),
    /// never less than `timeout` (rounded up to whole milliseconds: a sleep
    /// until a deadline that ended just short of it would be followed by
    /// polls of 0 ms, spinning, until the deadline). Leaves the counter as
    /// it is. True when the fd may be signalled: it is readable, or the
    /// poll itself failed (EINTR, say) and nobody knows. False only when
    /// the time ran out with the counter at zero.
    pub fn poll(&self, timeout: Option<Duration>) -> bool {
        let ms = timeout.map_or(-1, |t| t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A lower bound only: a busy machine makes a sleep longer, never
    /// shorter.
    #[test]
    fn a_timed_poll_never_ends_before_its_timeout() {
        let fd = EventFd::new().unwrap();
        for micros in [1, 500, 1_500, 2_300] {
            let timeout = Duration::from_micros(micros);
            let started = Instant::now();
            assert!(!fd.poll(Some(timeout)), "nobody signalled");
            assert!(started.elapsed() >= timeout, "{:?} for a timeout of {timeout:?}", started.elapsed());
        }
        fd.signal();
        assert!(fd.poll(Some(Duration::ZERO)), "signalled: at once");
    }
}
