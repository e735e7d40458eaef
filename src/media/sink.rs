use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Link, Push};

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
}

/// A channel's buffer, for one SPEAK (its generation).
pub struct PlaybackSink {
    pub link: Arc<Link>,
    pub generation: u64,
}

impl AudioSink for PlaybackSink {
    fn push(&mut self, data: &[u8]) -> Push {
        self.link.playback.lock().push(self.generation, data)
    }

    fn free(&self) -> usize {
        self.link.playback.lock().free()
    }

    fn fits(&self, n: usize) -> bool {
        self.link.playback.lock().fits(n)
    }

    fn want(&self, n: usize) {
        self.link.want_space.store(n, Ordering::Release);
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
