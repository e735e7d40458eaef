//! Deterministic stand-in for synthesized speech.
//!
//! Tests compare what the plugin plays against what the mock sent, so the
//! audio has to be reproducible from (text, rate, length) alone. It also has
//! to look like speech to the parts of the plugin that inspect it: no sample
//! is zero (a test can find the first non-silent frame exactly), and
//! neighbouring 10 ms frames never repeat (so a duplicated or dropped frame
//! shows up).

use std::f64::consts::TAU;

/// Milliseconds of audio per character when the behaviour does not fix a length.
pub const MS_PER_CHAR: u32 = 55;
/// Shortest audio produced for a text-derived length.
pub const MIN_AUDIO_MS: u32 = 200;

/// Length of audio the mock produces for `text` when `Behavior::audio_ms` is `None`.
pub fn audio_ms_for_text(text: &str) -> u32 {
    let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
    chars.saturating_mul(MS_PER_CHAR).max(MIN_AUDIO_MS)
}

/// The audio the mock streams for `text`: `sample_rate * audio_ms / 1000`
/// little-endian 16-bit mono samples. Same as draining a [`Synth`].
pub fn synth_pcm(text: &str, sample_rate: u32, audio_ms: u32) -> Vec<u8> {
    let mut synth = Synth::new(text, sample_rate, audio_ms);
    let mut out = Vec::with_capacity(synth.len_bytes());
    synth.read_into(&mut out, usize::MAX);
    out
}

/// Incremental generator of [`synth_pcm`]'s bytes.
///
/// The server generates each chunk just before sending it, so a long
/// stream starts at once, holds no big buffer, and can be abandoned
/// mid-way (on hang-up or shutdown) without finishing the synthesis.
///
/// Three tones with per-text frequencies and phases, a slow "syllable"
/// envelope and a little LCG noise. Everything is derived from an FNV-1a hash
/// of the text (not `DefaultHasher`, whose output may change between Rust
/// releases). The tones are functions of time, not of sample index, so the
/// same text at two rates is the same waveform sampled differently.
///
/// Each of the four sinusoids is a phasor turned by a fixed step per
/// sample, set exactly from its phase (`sin_cos`) every `ANCHOR` samples,
/// so the rounding of the steps never adds up to more than a few 1e-13
/// and the bytes depend only on (text, rate, length). Four `sin` calls per
/// sample made the mock itself the busiest thread of a 100-channel
/// benchmark (70 % of the machine's samples under perf at 4x real time),
/// which crowded the plugin it measures on a 2-core machine.
#[derive(Clone, Debug)]
pub struct Synth {
    /// Per sinusoid: radians per second and phase at time 0; the three
    /// tones, then the envelope.
    omegas: [f64; 4],
    phases: [f64; 4],
    /// Per sinusoid: the current phasor (cos, sin) and the step (cos, sin).
    phasors: [(f64, f64); 4],
    steps: [(f64, f64); 4],
    rate: f64,
    lcg: u64,
    next_sample: usize,
    total_samples: usize,
    /// High byte of a sample whose low byte ended the previous read (chunk
    /// sizes may be odd).
    carry: Option<u8>,
}

/// Samples between exact re-settings of the phasors.
const ANCHOR: usize = 1024;

impl Synth {
    pub fn new(text: &str, sample_rate: u32, audio_ms: u32) -> Synth {
        let h = fnv1a64(text.as_bytes());
        let bits = |shift: u32, mask: u64| ((h >> shift) & mask) as f64;
        let phase = |shift: u32| bits(shift, 0xff) * TAU / 256.0;
        // All below 4 kHz so the tones survive 8 kHz telephony rates.
        let freqs = [
            140.0 + bits(0, 0xff),          // 140..395 Hz
            450.0 + bits(8, 0x3ff) * 0.7,   // 450..~1166 Hz
            1300.0 + bits(18, 0x3ff) * 1.5, // 1300..~2835 Hz
            2.5 + bits(28, 0xf) * 0.25,     // envelope: 2.5..6.25 Hz, roughly syllable rate
        ];
        let rate = f64::from(sample_rate);
        let omegas = freqs.map(|f| TAU * f);
        let steps = omegas.map(|w| {
            let (s, c) = (w / rate).sin_cos();
            (c, s)
        });
        Synth {
            omegas,
            phases: [phase(32), phase(40), phase(48), phase(56)],
            phasors: [(1.0, 0.0); 4],
            steps,
            rate,
            lcg: h | 1,
            next_sample: 0,
            total_samples: (u64::from(sample_rate) * u64::from(audio_ms) / 1000) as usize,
            carry: None,
        }
    }

    /// Total length of the audio in bytes.
    pub fn len_bytes(&self) -> usize {
        self.total_samples * 2
    }

    /// Appends up to `max` more bytes to `out`; returns how many (0 at the end).
    pub fn read_into(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let mut written = 0;
        if written < max {
            if let Some(hi) = self.carry.take() {
                out.push(hi);
                written += 1;
            }
        }
        while max - written >= 2 {
            let Some(s) = self.next_sample() else {
                return written;
            };
            out.extend_from_slice(&s.to_le_bytes());
            written += 2;
        }
        if written < max {
            if let Some(s) = self.next_sample() {
                let [lo, hi] = s.to_le_bytes();
                out.push(lo);
                self.carry = Some(hi);
                written += 1;
            }
        }
        written
    }

    fn next_sample(&mut self) -> Option<i16> {
        if self.next_sample >= self.total_samples {
            return None;
        }
        let n = self.next_sample;
        self.next_sample += 1;
        if n.is_multiple_of(ANCHOR) {
            let t = n as f64 / self.rate;
            for k in 0..4 {
                let (s, c) = (self.omegas[k] * t + self.phases[k]).sin_cos();
                self.phasors[k] = (c, s);
            }
        }
        let [s1, s2, s3, s4] = self.phasors.map(|(_, s)| s);
        for (z, w) in self.phasors.iter_mut().zip(self.steps) {
            *z = (z.0 * w.0 - z.1 * w.1, z.0 * w.1 + z.1 * w.0);
        }
        let tone = 5000.0 * s1 + 2500.0 * s2 + 1200.0 * s3;
        let envelope = 0.7 + 0.3 * s4;
        self.lcg = self.lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let noise = ((self.lcg >> 33) % 513) as f64 - 256.0;
        // Peak is below 9000, far from clipping; the clamp is only a guard.
        let s = (tone * envelope + noise).round().clamp(-32767.0, 32767.0) as i16;
        // Keep every sample audible to an "is this frame silent" check.
        Some(if s == 0 { 1 } else { s })
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(pcm: &[u8]) -> Vec<i16> {
        pcm.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    }

    #[test]
    fn audio_is_deterministic_and_sized() {
        let a = synth_pcm("Hello world", 16000, 300);
        assert_eq!(a.len(), 16000 * 300 / 1000 * 2);
        assert_eq!(a, synth_pcm("Hello world", 16000, 300));
        assert_ne!(a, synth_pcm("Hello world!", 16000, 300));
        assert_eq!(synth_pcm("x", 8000, 125).len(), 2000);
        assert!(synth_pcm("x", 8000, 0).is_empty());
        // A shorter request is a prefix of a longer one.
        assert_eq!(&a[..3200], &synth_pcm("Hello world", 16000, 100)[..]);
    }

    #[test]
    fn audio_never_silent_and_frames_differ() {
        for text in ["", "a", "Hello world", "Grüße aus Köln", "1234567890"] {
            for rate in [8000u32, 16000, 22050, 24000, 44100, 48000] {
                let pcm = synth_pcm(text, rate, 1000);
                let s = samples(&pcm);
                assert!(s.iter().all(|&v| v != 0), "{text:?}@{rate} has a zero sample");
                let frame = (rate / 100) as usize;
                let frames: Vec<&[i16]> = s.chunks_exact(frame).collect();
                for pair in frames.windows(2) {
                    assert_ne!(pair[0], pair[1], "{text:?}@{rate}: repeated frame");
                }
                // Loud enough to be unmistakably non-silent.
                let peak = s.iter().map(|v| v.unsigned_abs()).max().unwrap();
                assert!(peak > 3000, "{text:?}@{rate}: peak {peak}");
            }
        }
    }

    #[test]
    fn incremental_reads_match_whole_buffer() {
        let whole = synth_pcm("odd chunks", 22050, 333);
        for chunk in [1usize, 2, 3, 1601, 4096] {
            let mut s = Synth::new("odd chunks", 22050, 333);
            assert_eq!(s.len_bytes(), whole.len());
            let mut out = Vec::new();
            loop {
                let n = s.read_into(&mut out, chunk);
                assert!(n <= chunk);
                if n == 0 {
                    break;
                }
            }
            assert_eq!(out, whole, "chunk {chunk}");
        }
    }

    #[test]
    fn audio_length_from_text() {
        assert_eq!(audio_ms_for_text(""), MIN_AUDIO_MS);
        assert_eq!(audio_ms_for_text("abc"), MIN_AUDIO_MS);
        assert_eq!(audio_ms_for_text("0123456789"), 550);
        assert_eq!(audio_ms_for_text("ééééé"), 275); // characters, not bytes
    }

    #[test]
    fn phasors_stay_within_a_step_of_the_exact_waveform() {
        // The direct formula, four sin calls a sample: the generator may
        // differ from it only where rounding lands on the other integer.
        let text = "drift check";
        let rate = 48000u32;
        let got = samples(&synth_pcm(text, rate, 60_000));
        let mut exact = Synth::new(text, rate, 60_000);
        let mut off_by_one = 0usize;
        for (n, &g) in got.iter().enumerate() {
            let t = n as f64 / f64::from(rate);
            let w = |k: usize| (exact.omegas[k] * t + exact.phases[k]).sin();
            let tone = 5000.0 * w(0) + 2500.0 * w(1) + 1200.0 * w(2);
            exact.lcg = exact.lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let noise = ((exact.lcg >> 33) % 513) as f64 - 256.0;
            let want = (tone * (0.7 + 0.3 * w(3)) + noise).round().clamp(-32767.0, 32767.0) as i16;
            let want = if want == 0 { 1 } else { want };
            let diff = (i32::from(g) - i32::from(want)).abs();
            assert!(diff <= 1, "sample {n}: {g} against {want}");
            off_by_one += usize::from(diff == 1);
        }
        assert!(off_by_one * 10_000 < got.len(), "{off_by_one} of {} samples off by one", got.len());
    }
}
