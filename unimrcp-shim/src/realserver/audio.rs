//! Comparing what umc saved with what the upstream sent (16-bit
//! little-endian linear samples).

/// The samples of 16-bit little-endian audio.
pub fn samples(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(2).map(|b| i32::from(i16::from_le_bytes([b[0], b[1]]))).collect()
}

/// Best signal-to-error ratio (dB) of `got` against `sent` over alignments
/// `got[i + lag] ~ sent[i]` (lag from -20 to +500 ms), with the lag and the
/// overlap in samples.
pub fn best_alignment(sent: &[i32], got: &[i32], rate: u32) -> (f64, isize, usize) {
    let per_ms = rate as isize / 1000;
    let mut best = (f64::NEG_INFINITY, 0, 0);
    for lag in -20 * per_ms..=500 * per_ms {
        let (mut sig, mut err, mut n) = (0f64, 0f64, 0usize);
        for (i, &s) in sent.iter().enumerate() {
            let Some(&g) = usize::try_from(i as isize + lag).ok().and_then(|j| got.get(j)) else { continue };
            let d = f64::from(g - s);
            sig += f64::from(s) * f64::from(s);
            err += d * d;
            n += 1;
        }
        if n < sent.len() / 2 || sig == 0.0 {
            continue;
        }
        let snr = 10.0 * (sig / err.max(1.0)).log10();
        if snr > best.0 {
            best = (snr, lag, n);
        }
    }
    best
}

/// Where `needle` first occurs in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&i| hay[i..i + needle.len()] == *needle)
}

/// Milliseconds of 16-bit audio at `rate`.
pub fn ms(bytes: usize, rate: u32) -> f64 {
    bytes as f64 * 1000.0 / (f64::from(rate) * 2.0)
}

/// umc's saved audio without the frames it wrote twice, and how many.
///
/// umc writes its stream's frame buffer to the file on every 10 ms tick,
/// also when its jitter buffer had no frame for that tick (an RTP packet
/// late on a busy machine): the frame before is then written again, byte
/// for byte. The test upstream's audio never repeats a 10 ms frame exactly
/// (its tones' frequencies are not multiples of 100 Hz) and silence is
/// kept as it is, so a non-silent frame equal to the one before it is such
/// a repeat. umc writes whole frames from the file's start.
pub fn without_repeated_frames(saved: &[u8], rate: u32) -> (Vec<u8>, usize) {
    let frame = (rate as usize / 100) * 2;
    let mut out = Vec::with_capacity(saved.len());
    let mut repeats = 0;
    let mut last: Option<&[u8]> = None;
    for f in saved.chunks(frame) {
        if f.len() == frame && last == Some(f) && f.iter().any(|&b| b != 0) {
            repeats += 1;
            continue;
        }
        out.extend_from_slice(f);
        last = Some(f);
    }
    (out, repeats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_frames_go_and_silence_stays() {
        let a = [1u8; 160];
        let b = [2u8; 160];
        let z = [0u8; 160];
        let saved: Vec<u8> = [&z[..], &z, &a, &a, &b, &b, &b, &a, &z, &z].concat();
        let (kept, repeats) = without_repeated_frames(&saved, 8000);
        assert_eq!(repeats, 3);
        assert_eq!(kept, [&z[..], &z, &a, &b, &a, &z, &z].concat());
        // A short last frame is kept as it is.
        let (kept, repeats) = without_repeated_frames(&[&a[..], &a[..10]].concat(), 8000);
        assert_eq!((kept.len(), repeats), (170, 0));
    }
}
