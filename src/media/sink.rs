use std::time::Duration;

use super::Push;

/// Where synthesized audio goes as it arrives.
pub trait AudioSink: Send {
    /// Stores all of `data`, or nothing (`Full`: retry once there is room;
    /// `Stale`: nobody wants this audio any more).
    fn push(&mut self, data: &[u8]) -> Push;
    /// Bytes it can take now.
    fn free(&self) -> usize;
    /// Whether `n` bytes would be stored now.
    fn fits(&self, n: usize) -> bool;
    /// Asks for a wake-up once `n` bytes fit (0: no longer waiting).
    fn want(&self, n: usize);
    /// Moves audio it stored outside the channel's buffer (a spill file,
    /// or its in-memory stage) into the buffer, as far as there is room;
    /// when some must wait, it asks for a wake-up (`Link::want_space`),
    /// secures the rest as `flush` does, and says `Full`. `Stored`: nothing
    /// is held back any more; `Stale`: stopped, or the held audio was lost
    /// (`lost`). The transfer's owner calls it before every sleep while a
    /// transfer runs, and while it drains what is held.
    fn pump(&mut self) -> Push {
        Push::Stored
    }
    /// The worker is about to sleep without pumping (waiting for an
    /// upstream slot): audio it staged in memory goes to the spill file and
    /// the memory goes back to the engine's pool, so nothing sits in a
    /// stage while the worker sleeps. Order is kept: the staged bytes
    /// follow what the file holds and precede what comes next.
    fn flush(&mut self) {}
    /// Bytes stored and not yet played (the buffer's and any held back):
    /// how far ahead of the caller the audio is.
    fn ahead(&self) -> usize {
        0
    }
    /// Right after `pump` said `Full`: how long the worker may sleep until
    /// the refill it asked for fits, counted from the playback's pace, so
    /// that `read_frame` need not wake it (`None`: wait to be woken).
    fn room_due(&mut self) -> Option<Duration> {
        None
    }
    /// The worker is about to sleep `sleep` on a timer of its own (a
    /// linger) and pumps at its end: a refill `pump` asked `read_frame` to
    /// wake it for may wait until then, when the buffer plays that long
    /// with a margin to spare; `read_frame` then keeps only a later safety
    /// net (as after `room_due`). True when it was deferred.
    fn refill_after(&mut self, _sleep: Duration) -> bool {
        false
    }
    /// Why audio it had stored cannot be played (a spill file that could
    /// not be read back): the SPEAK fails with this reason.
    fn lost(&self) -> Option<&str> {
        None
    }
}

/// Takes everything and plays nothing: a synthesis nobody listens to
/// (cache warm-up), whose audio only goes to the cache.
pub struct Discard;

impl AudioSink for Discard {
    fn push(&mut self, _data: &[u8]) -> Push {
        Push::Stored
    }

    fn free(&self) -> usize {
        usize::MAX
    }

    fn fits(&self, _n: usize) -> bool {
        true
    }

    fn want(&self, _n: usize) {}
}
