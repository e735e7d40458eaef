use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Frame, Playback, Waker};

/// `Link::cue_at` when no marker is pending.
pub const NO_CUE: u64 = u64::MAX;

/// What a channel's worker and the media thread share. The media thread
/// only ever `try_lock`s `playback`; the worker holds it for a copy.
pub struct Link {
    pub playback: Mutex<Playback>,
    pub waker: std::sync::Arc<Waker>,
    /// Generation whose last frame the media thread has played.
    pub drained: AtomicU64,
    /// Bytes a paused writer waits for (0: none).
    pub want_space: AtomicUsize,
    /// Playback position (bytes of the current generation) past which the
    /// worker has a speech marker to announce; NO_CUE when none.
    pub cue_at: AtomicU64,
    /// Negotiated rate, from open_rx (0 until then).
    pub rate: AtomicU32,
    /// Frames played as silence while the SPEAK still had audio to come.
    pub underruns: AtomicU64,
}

impl Link {
    pub fn new(buffer_capacity: usize) -> std::io::Result<Link> {
        Ok(Link {
            playback: Mutex::new(Playback::new(buffer_capacity)?),
            waker: std::sync::Arc::new(Waker::new()?),
            drained: AtomicU64::new(0),
            want_space: AtomicUsize::new(0),
            cue_at: AtomicU64::new(NO_CUE),
            rate: AtomicU32::new(0),
            underruns: AtomicU64::new(0),
        })
    }

    /// The media thread's tick: a `try_lock` (a contended tick is one
    /// silent frame; no audio is lost), one copy, maybe one eventfd write.
    /// No allocation, no logging, never blocks. True when `out` holds audio.
    pub fn read_frame(&self, out: &mut [u8]) -> bool {
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
        }
        if wake {
            self.waker.wake();
        }
        audio
    }
}
