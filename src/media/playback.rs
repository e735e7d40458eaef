//! The per-channel audio buffer between the worker thread (which writes
//! upstream bytes as they arrive) and the media thread (which takes one
//! 10 ms frame per tick).
//!
//! Its capacity is allocated once, when the channel is created; nothing here
//! allocates afterwards. A SPEAK may only fill it up to its own `limit`
//! (max_buffer_ms at the negotiated rate); past that the writer is told
//! `Full` and spills the rest to a file (synth/spill.rs) or, when it
//! cannot, pauses the transfer (backpressure). Bytes are kept as bytes,
//! so an odd trailing byte of one chunk simply waits for the next one.
//!
//! The media thread only ever `try_lock`s the mutex around this (see
//! link.rs), so the worker must hold it for no more than a copy.

use crate::ffi::Pages;
use std::time::Instant;

/// A fixed-capacity FIFO of bytes. `repr(C)`: see `Playback`.
#[repr(C)]
pub struct ByteRing {
    /// Its own mapping, so the memory goes back to the system when the
    /// channel is destroyed (ffi/pages.rs).
    buf: Pages,
    head: usize,
    len: usize,
    /// Bytes at the start of `buf` the FIFO wraps within: the SPEAK's
    /// limit, so that a SPEAK never touches (makes resident) more of the
    /// mapping than it may hold: an 8 kHz call in a buffer sized for
    /// 16 kHz uses half of it (bench [11]).
    wrap: usize,
}

impl ByteRing {
    pub fn with_capacity(capacity: usize) -> std::io::Result<Self> {
        Ok(ByteRing { buf: Pages::zeroed(capacity)?, head: 0, len: 0, wrap: capacity })
    }

    /// Empties it and wraps it within the first `window` bytes (at most
    /// the capacity).
    fn reset(&mut self, window: usize) {
        self.clear();
        self.wrap = window.clamp(1, self.capacity().max(1));
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Appends all of `data`; the caller checked there is room.
    fn push(&mut self, data: &[u8]) {
        if self.len == 0 && data.len() > self.wrap {
            // A chunk larger than the window into an empty ring (head is
            // 0): it may use the whole capacity from now on.
            self.wrap = self.capacity();
        }
        debug_assert!(data.len() <= self.wrap - self.len);
        let cap = self.wrap;
        let tail = (self.head + self.len) % cap;
        let first = data.len().min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.len += data.len();
    }

    /// The first up to `len` bytes a pop would give, as far as they are
    /// contiguous (a hint of what to fetch, media/ahead.rs).
    fn front(&self, len: usize) -> &[u8] {
        let n = len.min(self.len).min(self.wrap - self.head);
        &self.buf[self.head..self.head + n]
    }

    /// Moves up to `out.len()` bytes into `out`; returns how many.
    fn pop_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        if n == 0 {
            return 0;
        }
        let cap = self.wrap;
        let first = n.min(cap - self.head);
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        self.head = (self.head + n) % cap;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
        n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlayState {
    /// No SPEAK, or its audio is over: frames are silence.
    Idle,
    /// Frames come from the buffer as soon as it holds a whole frame.
    Playing,
    /// PAUSE: silence while the transfer keeps filling up to the limit.
    Paused,
}

/// What `take_frame` gave the media thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `out` holds a frame of audio.
    Audio,
    /// Nothing to play this tick (idle, paused, or waiting for the first
    /// bytes or the jitter reserve).
    Silence,
    /// Nothing to play this tick although the SPEAK has started playing and
    /// has more to come: a gap the caller hears.
    Underrun,
    /// The SPEAK's last audio was taken this tick (`out` holds it,
    /// zero-padded, when `with_audio`); it may now complete.
    Last { generation: u64, with_audio: bool },
}

/// What `push` did with the writer's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Stored,
    /// Not enough room under the SPEAK's limit: pause and retry later.
    Full,
    /// The SPEAK these bytes belong to was stopped or replaced.
    Stale,
}

/// The buffer plus the state of the SPEAK it is playing.
///
/// `repr(C)`, fields in this order: what the media thread reads on every
/// tick (the ring's place, `played`, `prime`, `state`) comes first, so
/// that with `Link`'s own layout it sits in one 128-byte block; the
/// worker's own fields follow.
#[repr(C)]
pub struct Playback {
    ring: ByteRing,
    /// Bytes the media thread has taken for this generation: where
    /// playback is, for speech markers (`<mark>`).
    played: u64,
    /// Bytes to hold before the first frame plays (jitter reserve); 0 once
    /// primed.
    prime: usize,
    pub state: PlayState,
    /// The download finished whole: once the ring drains, the SPEAK is done.
    pub producer_done: bool,
    /// Identifies the SPEAK whose audio is in the ring; bumped by every new
    /// SPEAK and every stop, so late bytes of an old transfer are refused.
    pub generation: u64,
    /// Bytes this SPEAK may hold (max_buffer_ms at its rate).
    limit: usize,
    /// When the writer first stored bytes of this generation (the SPEAK's
    /// time to first audio, for the metrics). Set by `push` (the worker),
    /// never by the media thread.
    first_stored: Option<(u64, Instant)>,
}

impl Playback {
    pub fn new(capacity: usize) -> std::io::Result<Self> {
        Ok(Playback {
            ring: ByteRing::with_capacity(capacity)?,
            generation: 0,
            state: PlayState::Idle,
            producer_done: false,
            limit: capacity,
            played: 0,
            prime: 0,
            first_stored: None,
        })
    }

    /// Where each field `take_frame` reads on every tick ends (addresses),
    /// for the layout test in link.rs.
    #[cfg(test)]
    pub fn hot_field_ends(&self) -> [usize; 4] {
        fn end<T>(field: &T) -> usize {
            field as *const T as usize + std::mem::size_of::<T>()
        }
        [end(&self.ring), end(&self.played), end(&self.prime), end(&self.state)]
    }

    /// The bytes the next `take_frame` of `len` will copy first (empty when
    /// it will play none), for the media thread to fetch ahead.
    pub fn next_frame(&self, len: usize) -> &[u8] {
        if self.state == PlayState::Playing {
            self.ring.front(len)
        } else {
            &[]
        }
    }

    /// Bytes in the buffer, not yet played.
    pub fn buffered(&self) -> usize {
        self.ring.len()
    }

    pub fn free(&self) -> usize {
        self.limit.saturating_sub(self.ring.len())
    }

    /// Bytes this SPEAK may hold (max_buffer_ms at its rate).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `n` more bytes may be stored now. A chunk larger than the
    /// SPEAK's limit still fits an empty buffer, so a small limit can never
    /// wedge a transfer.
    pub fn fits(&self, n: usize) -> bool {
        n <= self.free() || (self.ring.is_empty() && n <= self.ring.capacity())
    }

    /// A new SPEAK takes over the buffer; returns its generation.
    pub fn start(&mut self, limit: usize, prebuffer: usize) -> u64 {
        self.played = 0;
        self.prime = prebuffer.min(limit);
        self.generation += 1;
        self.producer_done = false;
        self.limit = limit.clamp(1, self.ring.capacity());
        self.ring.reset(self.limit);
        self.state = PlayState::Playing;
        self.generation
    }

    /// Stop at once: drop buffered audio, refuse late bytes.
    pub fn stop(&mut self) {
        self.played = 0;
        self.generation += 1;
        self.ring.clear();
        self.producer_done = false;
        self.state = PlayState::Idle;
    }

    pub fn push(&mut self, generation: u64, data: &[u8]) -> Push {
        if generation != self.generation || self.state == PlayState::Idle {
            return Push::Stale;
        }
        if !self.fits(data.len()) {
            return Push::Full;
        }
        self.ring.push(data);
        if !matches!(self.first_stored, Some((g, _)) if g == generation) && !data.is_empty() {
            self.first_stored = Some((generation, Instant::now()));
        }
        Push::Stored
    }

    /// When the writer first stored audio of `generation`, if it did and
    /// no later SPEAK has stored since.
    pub fn first_stored(&self, generation: u64) -> Option<Instant> {
        self.first_stored.filter(|(g, _)| *g == generation).map(|(_, t)| t)
    }

    /// The writer has delivered everything for `generation`.
    /// Bytes of this generation the media thread has taken so far.
    pub fn played(&self) -> u64 {
        self.played
    }

    /// Whether the media thread is taking audio out at the caller's pace
    /// (playing, its jitter reserve built): how a worker may tell when
    /// room will be free without being told.
    pub fn consuming(&self) -> bool {
        self.state == PlayState::Playing && self.prime == 0
    }

    pub fn finish(&mut self, generation: u64) -> bool {
        if generation != self.generation || self.state == PlayState::Idle {
            return false;
        }
        self.producer_done = true;
        true
    }

    /// One frame for the media thread. Bounded work: one copy, no allocation.
    pub fn take_frame(&mut self, out: &mut [u8]) -> Frame {
        if self.state != PlayState::Playing {
            return Frame::Silence;
        }
        if self.prime > 0 {
            if self.ring.len() < self.prime && !self.producer_done {
                return Frame::Silence; // still building the jitter reserve
            }
            self.prime = 0;
        }
        if self.ring.len() >= out.len() {
            self.ring.pop_into(out);
            self.played += out.len() as u64;
            return Frame::Audio;
        }
        if !self.producer_done {
            // More is on its way: a gap once playback has started.
            return if self.played > 0 { Frame::Underrun } else { Frame::Silence };
        }
        let n = self.ring.pop_into(out);
        out[n..].fill(0);
        self.played += n as u64;
        self.state = PlayState::Idle;
        self.producer_done = false;
        Frame::Last { generation: self.generation, with_audio: n > 0 }
    }
}

/// Scales whole 16-bit host-endian samples, saturating (Prosody-Volume,
/// applied by the worker before the audio is buffered or cached); a gain
/// of 1 leaves the bytes exactly as received.
pub fn apply_gain(frame: &mut [u8], gain: f32) {
    if gain == 1.0 {
        return;
    }
    for sample in frame.chunks_exact_mut(2) {
        let v = i16::from_ne_bytes([sample[0], sample[1]]) as f32 * gain;
        let scaled = v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
        sample.copy_from_slice(&scaled.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stored_audio_of_a_speak_is_noted_until_a_later_speak_stores() {
        let mut p = Playback::new(4096).unwrap();
        let first = p.start(4096, 0);
        assert_eq!(p.first_stored(first), None);
        assert_eq!(p.push(first, &[1; 10]), Push::Stored);
        let at = p.first_stored(first).expect("noted");
        assert_eq!(p.push(first, &[1; 10]), Push::Stored);
        assert_eq!(p.first_stored(first), Some(at), "the first push, not the latest");
        // A STOP and a new SPEAK: the old SPEAK's note stays for its
        // summary until the new one stores audio.
        p.stop();
        let second = p.start(4096, 0);
        assert_eq!(p.first_stored(first), Some(at));
        assert_eq!(p.first_stored(second), None);
        assert_eq!(p.push(second, &[1; 10]), Push::Stored);
        assert_eq!(p.first_stored(first), None);
        assert!(p.first_stored(second).is_some());
    }

    #[test]
    fn ring_wraps_and_keeps_order() {
        let mut r = ByteRing::with_capacity(7).unwrap();
        let mut out = [0u8; 4];
        r.push(&[1, 2, 3, 4, 5]);
        assert_eq!(r.pop_into(&mut out), 4);
        assert_eq!(out, [1, 2, 3, 4]);
        r.push(&[6, 7, 8, 9, 10]);
        assert_eq!(r.len(), 6);
        let mut all = [0u8; 6];
        assert_eq!(r.pop_into(&mut all), 6);
        assert_eq!(all, [5, 6, 7, 8, 9, 10]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_speak_uses_only_its_limit_of_the_buffer() {
        let mut p = Playback::new(1000).unwrap();
        let g = p.start(300, 0);
        let mut frame = [0u8; 10];
        let mut next = 0u32;
        let mut expected = 0u32;
        for _ in 0..200 {
            while p.free() >= 7 {
                let piece: Vec<u8> = (next..next + 7).map(|i| (i % 251 + 1) as u8).collect();
                assert_eq!(p.push(g, &piece), Push::Stored);
                next += 7;
            }
            assert_eq!(p.take_frame(&mut frame), Frame::Audio);
            for b in frame {
                assert_eq!(b, (expected % 251 + 1) as u8, "in order across the wraps");
                expected += 1;
            }
        }
        assert!(next > 2000, "wrapped many times");
        assert!(p.ring.buf[300..].iter().all(|&b| b == 0), "nothing written past the limit");
        // A chunk larger than the limit still fits the empty buffer.
        let g = p.start(300, 0);
        assert_eq!(p.push(g, &[9; 800]), Push::Stored);
        let mut big = [0u8; 800];
        assert_eq!(p.take_frame(&mut big), Frame::Audio);
        assert_eq!(big, [9; 800]);
        assert_eq!(p.push(g, &[5; 250]), Push::Stored);
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        assert_eq!(frame, [5; 10]);
    }

    #[test]
    fn odd_bytes_carry_over_and_the_last_frame_is_padded() {
        let mut p = Playback::new(64).unwrap();
        let g = p.start(64, 0);
        let mut frame = [0xAAu8; 4];
        assert_eq!(p.push(g, &[1, 2, 3]), Push::Stored);
        assert_eq!(p.take_frame(&mut frame), Frame::Silence);
        assert_eq!(p.push(g, &[4, 5]), Push::Stored);
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        assert_eq!(frame, [1, 2, 3, 4]);
        assert!(p.finish(g));
        assert_eq!(p.take_frame(&mut frame), Frame::Last { generation: g, with_audio: true });
        assert_eq!(frame, [5, 0, 0, 0]);
        assert_eq!(p.take_frame(&mut frame), Frame::Silence);
    }

    #[test]
    fn limit_gives_backpressure_and_stop_refuses_late_bytes() {
        let mut p = Playback::new(16).unwrap();
        let g = p.start(8, 0);
        assert_eq!(p.push(g, &[0; 6]), Push::Stored);
        assert_eq!(p.push(g, &[0; 3]), Push::Full);
        assert_eq!(p.buffered(), 6);
        p.stop();
        assert_eq!(p.push(g, &[0; 1]), Push::Stale);
        assert!(!p.finish(g));
        let mut frame = [0u8; 2];
        assert_eq!(p.take_frame(&mut frame), Frame::Silence);
        let g2 = p.start(100, 0);
        assert!(g2 > g);
        assert_eq!(p.free(), 16, "limit is clamped to the capacity");
    }

    #[test]
    fn paused_playback_is_silent_but_keeps_filling() {
        let mut p = Playback::new(16).unwrap();
        let g = p.start(16, 0);
        p.state = PlayState::Paused;
        assert_eq!(p.push(g, &[9; 4]), Push::Stored);
        let mut frame = [0u8; 2];
        assert_eq!(p.take_frame(&mut frame), Frame::Silence);
        p.state = PlayState::Playing;
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        assert_eq!(frame, [9, 9]);
    }

    #[test]
    fn prebuffer_holds_the_first_frame_until_the_reserve_is_there() {
        let mut p = Playback::new(64).unwrap();
        let g = p.start(64, 6);
        let mut frame = [0u8; 2];
        p.push(g, &[1, 2, 3, 4]);
        assert_eq!(p.take_frame(&mut frame), Frame::Silence, "4 of 6 bytes");
        p.push(g, &[5, 6]);
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        assert_eq!(frame, [1, 2]);
        // Once primed, an underrun does not re-arm the reserve.
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        p.push(g, &[7, 8]);
        assert_eq!(p.take_frame(&mut frame), Frame::Audio);
        // A short SPEAK that ends below the reserve still plays.
        let g = p.start(64, 60);
        p.push(g, &[9]);
        p.finish(g);
        assert_eq!(p.take_frame(&mut frame), Frame::Last { generation: g, with_audio: true });
    }

    #[test]
    fn gain_scales_and_saturates() {
        let mut samples: Vec<u8> = [1000i16, -20000, 30000, 0].iter().flat_map(|s| s.to_ne_bytes()).collect();
        apply_gain(&mut samples, 2.0);
        let out: Vec<i16> = samples.chunks_exact(2).map(|c| i16::from_ne_bytes([c[0], c[1]])).collect();
        assert_eq!(out, [2000, i16::MIN, i16::MAX, 0]);
    }

    #[test]
    fn played_counts_the_bytes_taken_in_this_generation() {
        let mut p = Playback::new(16).unwrap();
        let g = p.start(16, 0);
        p.push(g, &[1; 7]);
        let mut frame = [0u8; 4];
        p.take_frame(&mut frame);
        assert_eq!(p.played(), 4);
        p.finish(g);
        p.take_frame(&mut frame);
        assert_eq!(p.played(), 7, "the last, short frame counts what it held");
        p.start(16, 0);
        assert_eq!(p.played(), 0);
    }

    #[test]
    fn empty_finished_speak_completes_without_audio() {
        let mut p = Playback::new(8).unwrap();
        let g = p.start(8, 0);
        p.finish(g);
        let mut frame = [7u8; 2];
        assert_eq!(p.take_frame(&mut frame), Frame::Last { generation: g, with_audio: false });
    }
}
