use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{ahead, Frame, Playback, Waker};

/// `Link::cue_at` when no marker is pending.
pub const NO_CUE: u64 = u64::MAX;

/// What a channel's worker and the media thread share. The media thread
/// only ever `try_lock`s `playback`; the worker holds it for a copy.
///
/// Layout: the media thread visits every channel's `Link` once per 10 ms
/// tick, and by then another thread (the worker, or anything else on that
/// core) has pushed it out of the cache, so each cache line `read_frame`
/// touches is a wait on memory per channel per tick (bench [10] clocks
/// `read_frame`). What it reads on every tick (`cue_at`, `want_space`, the
/// mutex and the hot head of `Playback`) is therefore laid out first, in
/// one 128-byte-aligned block: two lines the CPU fetches as a pair. The
/// rest is read on a SPEAK's last frame or by the worker alone.
#[repr(C, align(128))]
pub struct Link {
    /// Playback position (bytes of the current generation) past which the
    /// worker has a speech marker to announce; NO_CUE when none.
    pub cue_at: AtomicU64,
    /// Bytes a paused writer waits for (0: none).
    pub want_space: AtomicUsize,
    /// Where the media thread visited it in the last tick (media/ahead.rs).
    position: AtomicUsize,
    pub playback: Mutex<Playback>,
    pub waker: std::sync::Arc<Waker>,
    /// Generation whose last frame the media thread has played.
    pub drained: AtomicU64,
    /// Negotiated rate, from open_rx (0 until then).
    pub rate: AtomicU32,
    /// Frames played as silence while the SPEAK still had audio to come.
    pub underruns: AtomicU64,
}

impl Link {
    pub fn new(buffer_capacity: usize) -> std::io::Result<Link> {
        Ok(Link {
            cue_at: AtomicU64::new(NO_CUE),
            want_space: AtomicUsize::new(0),
            position: AtomicUsize::new(ahead::NO_POSITION),
            playback: Mutex::new(Playback::new(buffer_capacity)?),
            waker: std::sync::Arc::new(Waker::new()?),
            drained: AtomicU64::new(0),
            rate: AtomicU32::new(0),
            underruns: AtomicU64::new(0),
        })
    }

    /// The media thread's tick: a `try_lock` (a contended tick is one
    /// silent frame; no audio is lost), one copy, maybe one eventfd write,
    /// and the hints of media/ahead.rs. No allocation, no logging, never
    /// blocks. True when `out` holds audio.
    pub fn read_frame(&self, out: &mut [u8]) -> bool {
        let position = ahead::arrive(self as *const Link as usize, self.position.load(Ordering::Relaxed));
        self.position.store(position, Ordering::Relaxed);
        let mut wake = false;
        let mut audio = false;
        if let Some(mut playback) = self.playback.try_lock() {
            match playback.take_frame(out) {
                Frame::Audio => audio = true,
                Frame::Silence => {}
                Frame::Underrun => {
                    self.underruns.fetch_add(1, Ordering::Relaxed);
                }
                Frame::Last { generation, with_audio } => {
                    audio = with_audio;
                    self.drained.store(generation, Ordering::Release);
                    wake = true;
                }
            }
            // A speech marker lies in audio played by now: the worker
            // announces it.
            let cue = self.cue_at.load(Ordering::Acquire);
            if cue != NO_CUE && playback.played() > cue {
                self.cue_at.store(NO_CUE, Ordering::Release);
                wake = true;
            }
            let want = self.want_space.load(Ordering::Acquire);
            if want > 0 && playback.fits(want) {
                self.want_space.store(0, Ordering::Release);
                wake = true;
            }
            ahead::leave(position, playback.next_frame(out.len()));
        }
        if wake {
            self.waker.wake();
        }
        audio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_frame` reads on every tick lies within the first 128
    /// bytes (see `Link`): the mutex's state and the hot head of
    /// `Playback` included.
    #[test]
    fn what_read_frame_reads_every_tick_is_in_the_first_128_bytes() {
        let link = Link::new(4096).unwrap();
        let base = &link as *const Link as usize;
        assert_eq!(base % 128, 0, "aligned to a pair of cache lines");
        let offset = |p: usize| p - base;
        assert!(offset(&link.cue_at as *const _ as usize) < 128);
        assert!(offset(&link.want_space as *const _ as usize) < 128);
        assert!(offset(&link.position as *const _ as usize) < 128);
        let mutex = &link.playback as *const Mutex<Playback> as usize;
        let guard = link.playback.lock();
        let data = &*guard as *const Playback as usize;
        // The lock word sits before the data (lock_api keeps the possibly
        // unsized data last).
        assert!(mutex < data && offset(mutex) < 128);
        for end in guard.hot_field_ends() {
            assert!(end - base <= 128, "hot field ends at {} bytes", end - base);
        }
    }
}
