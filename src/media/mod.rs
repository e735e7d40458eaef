//! The media core: the per-channel audio buffer and everything the worker
//! thread and the media thread share about it.
//!
//! * `playback`: the fixed-capacity ring and the state of the SPEAK it
//!   plays (generations, pause, the last frame, the jitter reserve).
//! * `link`: what crosses between a channel's worker and `read_frame`: the
//!   buffer under its mutex, the wake-up fd, the marker cue.
//! * `sink`: where synthesized audio goes (`AudioSink`): a channel's buffer
//!   (through the worker's spill, synth/spill.rs), or nowhere (cache
//!   warm-up).
//! * `waker`: the eventfd that wakes a worker.
//! * `ahead`: the media thread fetching the next channel's state while it
//!   serves this one.
//! * `pool`: the buffers lent to SPEAKs while they spill (their stage and
//!   their refills), shared by every channel.
//!
//! Depends only on `ffi` (mapped pages, the prefetch hint).

mod ahead;
mod link;
mod playback;
mod pool;
mod sink;
mod waker;

pub use link::{Link, NO_CUE};
pub use playback::{apply_gain, Frame, PlayState, Playback, Push};
pub use pool::{spill_buffers, BufferPool, Loan};
#[cfg(test)]
pub use pool::{PoolFigures, SPILL_BUFFER_BYTES};
pub use sink::{AudioSink, Discard};
pub use waker::Waker;

/// The rates we produce, ElevenLabs' pcm_8000 … pcm_48000: every LPCM rate
/// UniMRCP negotiates, so the server never needs to resample.
pub const SAMPLE_RATES: &[u32] = &[8000, 16000, 32000, 48000];

/// The buffer allocated at channel creation covers 8 and 16 kHz (nearly
/// every call); a channel negotiated at 32 or 48 kHz grows it once, at
/// channel open, before any SPEAK.
const CREATED_BYTES_PER_MS: usize = 16000 * 2 / 1000;
/// libcurl hands the write callback at most 16 KiB at a time; the buffer
/// must always be able to take one such chunk, plus a frame.
const MIN_BUFFER_BYTES: usize = 16 * 1024 + 1920;

/// Bytes per millisecond of 16-bit mono LPCM at `rate` (at least 1, so it
/// may divide).
pub fn bytes_per_ms(rate: u32) -> usize {
    (rate as usize * 2 / 1000).max(1)
}

/// Buffer bytes for a SPEAK at `rate` under `max_buffer_ms`.
pub fn buffer_limit(max_buffer_ms: u64, rate: u32) -> usize {
    (max_buffer_ms as usize * bytes_per_ms(rate)).max(MIN_BUFFER_BYTES)
}

/// Capacity allocated at channel creation (8 and 16 kHz).
pub fn buffer_capacity(max_buffer_ms: u64) -> usize {
    (max_buffer_ms as usize * CREATED_BYTES_PER_MS).max(MIN_BUFFER_BYTES)
}
