//! The body of `/stream/with-timestamps`: newline-delimited JSON objects,
//! each carrying one chunk of base64 PCM and the characters that start
//! during that chunk.
//!
//! With the test tones the alignment is as deterministic as the audio:
//! character `i` of `n` spans `[i·L/n, (i+1)·L/n)` ms of `L` ms of audio, so
//! a test can compute where any character starts ([`char_start_ms`]) without
//! parsing the response. With [`super::Voice::Espeak`] the times come from
//! the synthesizer's word events ([`super::espeak`]).

use serde_json::Value;

use super::AlignmentShape;

/// Where character `index` (counting Unicode scalar values) of `text` starts,
/// in ms from the start of the response's audio, when the audio is
/// `audio_ms` long. `index == n` gives the end of the last character
/// (`audio_ms`); an empty text gives 0.
///
/// This is exactly the value the mock sends (divided by 1000) in
/// `character_start_times_seconds`.
pub fn char_start_ms(text: &str, audio_ms: u32, index: usize) -> f64 {
    char_start_ms_of(text.chars().count(), audio_ms, index)
}

/// [`char_start_ms`] for a text of `n` characters.
fn char_start_ms_of(n: usize, audio_ms: u32, index: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    // One product and one division of exact integers: the result is the
    // correctly rounded quotient, so it orders exactly as the mock's integer
    // span checks (`Aligner::starts_before`) do.
    (index as f64 * f64::from(audio_ms)) / n as f64
}

/// Hands out each character exactly once, to the line whose audio span
/// contains its start.
pub(crate) struct Aligner {
    chars: Vec<char>,
    times: Times,
    rate: u32,
    /// First character not yet given to a line.
    next: usize,
}

/// When the characters start.
enum Times {
    /// The test tones: even shares of `audio_ms` ([`char_start_ms`]).
    Even { audio_ms: u32 },
    /// A real voice: one start per character, then the end of the audio,
    /// all in ms.
    Given { starts_ms: Vec<f64>, end_ms: f64 },
}

/// The characters one line aligns, with absolute times in seconds.
#[derive(Debug, Default)]
pub(crate) struct Alignment {
    chars: Vec<String>,
    starts: Vec<f64>,
    ends: Vec<f64>,
}

impl Aligner {
    pub fn new(text: &str, rate: u32, audio_ms: u32) -> Aligner {
        Aligner { chars: text.chars().collect(), times: Times::Even { audio_ms }, rate, next: 0 }
    }

    /// An aligner for audio whose characters start at `starts_ms` (one per
    /// character of `text`, non-decreasing) and which ends at `end_ms`.
    pub fn with_times(text: &str, rate: u32, starts_ms: Vec<f64>, end_ms: f64) -> Aligner {
        let chars: Vec<char> = text.chars().collect();
        debug_assert_eq!(chars.len(), starts_ms.len());
        Aligner { chars, times: Times::Given { starts_ms, end_ms }, rate, next: 0 }
    }

    /// Start of character `i` in ms; `i == n` is the end of the audio.
    fn start_ms(&self, i: usize) -> f64 {
        match &self.times {
            Times::Even { audio_ms } => char_start_ms_of(self.chars.len(), *audio_ms, i),
            Times::Given { starts_ms, end_ms } => starts_ms.get(i).copied().unwrap_or(*end_ms),
        }
    }

    /// The characters starting before PCM byte offset `end_byte` that no
    /// earlier line took; all remaining ones if `last`. Lines cover the audio
    /// from offset 0 in order, so "not taken yet" is the same as "starts at
    /// or after this line's first byte". `None` when there are none.
    pub fn take_until(&mut self, end_byte: usize, last: bool) -> Option<Alignment> {
        let n = self.chars.len();
        let first = self.next;
        while self.next < n && (last || self.starts_before(self.next, end_byte)) {
            self.next += 1;
        }
        if first == self.next {
            return None;
        }
        let secs = |i: usize| self.start_ms(i) / 1000.0;
        Some(Alignment {
            chars: self.chars[first..self.next].iter().map(char::to_string).collect(),
            starts: (first..self.next).map(secs).collect(),
            ends: (first + 1..=self.next).map(secs).collect(),
        })
    }

    /// Whether character `i` starts before byte offset `end_byte`:
    /// `i·L/n ms < end_byte / (2·rate) s`, compared in integers so that a
    /// character starting exactly on a line boundary belongs to the later
    /// line, as the half-open span `[t0, t1)` says.
    fn starts_before(&self, i: usize, end_byte: usize) -> bool {
        match self.times {
            Times::Even { audio_ms } => {
                let n = self.chars.len() as u128;
                let lhs = i as u128 * u128::from(audio_ms) * u128::from(self.rate);
                let rhs = end_byte as u128 * 500 * n;
                lhs < rhs
            }
            // Byte offset of the start, by the same rule in floating point.
            Times::Given { .. } => self.start_ms(i) * f64::from(self.rate) < end_byte as f64 * 500.0,
        }
    }
}

impl Alignment {
    /// `{"characters":[..],"character_start_times_seconds":[..],
    /// "character_end_times_seconds":[..]}`, keys in ElevenLabs' order
    /// (a `serde_json` map would sort them).
    fn to_json(&self) -> String {
        format!(
            "{{\"characters\":{},\"character_start_times_seconds\":{},\"character_end_times_seconds\":{}}}",
            Value::from(self.chars.clone()),
            Value::from(self.starts.clone()),
            Value::from(self.ends.clone()),
        )
    }
}

/// One line of the body, newline included. `alignment` is sent as both
/// `alignment` and `normalized_alignment`: the mock does no text
/// normalization, so the two are the same.
#[cfg(test)]
pub(crate) fn line(pcm: &[u8], alignment: Option<&Alignment>) -> Vec<u8> {
    shaped_line(pcm, alignment, AlignmentShape::Cumulative, 0.0)
}

/// [`line`] in one of the [`AlignmentShape`]s; `chunk_start` is where this
/// line's audio starts in the response, in seconds (subtracted from the
/// times for [`AlignmentShape::ChunkRelative`]).
pub(crate) fn shaped_line(
    pcm: &[u8],
    alignment: Option<&Alignment>,
    shape: AlignmentShape,
    chunk_start: f64,
) -> Vec<u8> {
    // Whole microseconds, as a service would print them (no `0.04999…`).
    let relative = |t: &f64| ((t - chunk_start).max(0.0) * 1e6).round() / 1e6;
    let json = |a: &Alignment| match shape {
        AlignmentShape::ChunkRelative => Alignment {
            chars: a.chars.clone(),
            starts: a.starts.iter().map(relative).collect(),
            ends: a.ends.iter().map(relative).collect(),
        }
        .to_json(),
        AlignmentShape::Cumulative | AlignmentShape::NormalizedOnly => a.to_json(),
    };
    let normalized = alignment.map_or_else(|| "null".to_string(), json);
    let original = if shape == AlignmentShape::NormalizedOnly { "null".to_string() } else { normalized.clone() };
    format!(
        "{{\"audio_base64\":\"{}\",\"alignment\":{original},\"normalized_alignment\":{normalized}}}\n",
        base64_encode(pcm)
    )
    .into_bytes()
}

/// A line that starts like a real one but is not JSON, for
/// [`super::Fault::MalformedTimestampLine`].
pub(crate) const MALFORMED_LINE: &[u8] = b"{\"audio_base64\": garbage\n";

/// Standard base64 (RFC 4648 §4) with `=` padding; the shim has no base64
/// dependency and needs only this direction.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let byte = |i: usize| u32::from(group.get(i).copied().unwrap_or(0));
        let bits = byte(0) << 16 | byte(1) << 8 | byte(2);
        for i in 0..4 {
            // A group of k bytes fills k + 1 sextets; the rest is padding.
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[test]
    fn char_starts_are_even_shares_of_the_audio() {
        assert_eq!(char_start_ms("abcd", 200, 0), 0.0);
        assert_eq!(char_start_ms("abcd", 200, 1), 50.0);
        assert_eq!(char_start_ms("abcd", 200, 4), 200.0);
        assert_eq!(char_start_ms("äöü", 300, 2), 200.0); // characters, not bytes
        assert_eq!(char_start_ms("", 300, 0), 0.0);
    }

    #[test]
    fn aligner_gives_boundary_chars_to_the_later_line() {
        // 4 chars over 200 ms at 8 kHz: starts at 0, 50, 100, 150 ms; a
        // line of 800 bytes is exactly 50 ms.
        let mut a = Aligner::new("abcd", 8000, 200);
        assert_eq!(a.take_until(800, false).unwrap().chars, ["a"]);
        assert_eq!(a.take_until(1600, false).unwrap().chars, ["b"]);
        let rest = a.take_until(2400, true).unwrap();
        assert_eq!(rest.chars, ["c", "d"]);
        assert_eq!(rest.starts, [0.1, 0.15]);
        assert_eq!(rest.ends, [0.15, 0.2]);
        assert!(a.take_until(3200, true).is_none());
    }

    #[test]
    fn aligner_with_given_times() {
        // 8 kHz: 800 bytes are 50 ms.
        let mut a = Aligner::with_times("a, b", 8000, vec![0.0, 40.0, 40.0, 120.0], 180.0);
        assert_eq!(a.take_until(800, false).unwrap().chars, ["a", ",", " "]);
        assert!(a.take_until(1600, false).is_none());
        let rest = a.take_until(2400, false).unwrap();
        assert_eq!(rest.chars, ["b"]);
        assert_eq!((rest.starts.as_slice(), rest.ends.as_slice()), ([0.12].as_slice(), [0.18].as_slice()));
        assert!(a.take_until(2880, true).is_none());
    }

    #[test]
    fn line_shape() {
        let mut a = Aligner::new("\"é", 8000, 100);
        let l = line(&[1, 2, 3], a.take_until(1600, true).as_ref());
        let l = String::from_utf8(l).unwrap();
        assert!(l.starts_with("{\"audio_base64\":\"AQID\",\"alignment\":{\"characters\":[\"\\\"\",\"é\"],"));
        assert!(l.ends_with("}\n"));
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["alignment"], v["normalized_alignment"]);
        assert_eq!(v["alignment"]["character_start_times_seconds"], serde_json::json!([0.0, 0.05]));
        assert_eq!(line(&[], None), b"{\"audio_base64\":\"\",\"alignment\":null,\"normalized_alignment\":null}\n");
        assert!(serde_json::from_slice::<Value>(MALFORMED_LINE).is_err());
    }

    #[test]
    fn shaped_lines() {
        // 4 chars over 200 ms at 8 kHz; the second line starts at 100 ms.
        let mut a = Aligner::new("abcd", 8000, 200);
        a.take_until(1600, false);
        let rest = a.take_until(3200, true).unwrap();
        let parse =
            |shape| -> Value { serde_json::from_slice(&shaped_line(&[0, 0], Some(&rest), shape, 0.1)).unwrap() };
        let v = parse(AlignmentShape::ChunkRelative);
        assert_eq!(v["alignment"]["character_start_times_seconds"], serde_json::json!([0.0, 0.05]));
        let v = parse(AlignmentShape::NormalizedOnly);
        assert_eq!(v["alignment"], Value::Null);
        assert_eq!(v["normalized_alignment"]["character_start_times_seconds"], serde_json::json!([0.1, 0.15]));
        let v = parse(AlignmentShape::Cumulative);
        assert_eq!(v["alignment"], v["normalized_alignment"]);
    }
}
