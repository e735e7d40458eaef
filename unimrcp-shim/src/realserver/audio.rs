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
