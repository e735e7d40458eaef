//! ElevenLabs' `/stream/with-timestamps` response, read as it arrives.
//!
//! The body is newline-delimited JSON: each line carries one chunk of audio
//! as base64 (`audio_base64`) and the alignment of the characters whose
//! audio starts in it (`alignment.characters`,
//! `alignment.character_start_times_seconds`, times from the start of the
//! response's audio). We use it only for SPEAKs with `<mark>`s inside a
//! sentence: the start time of the character after a mark says where in
//! the audio the mark is. Lines may arrive split across network reads or
//! several in one read; an `data:` prefix (server-sent-event framing) is
//! tolerated.

/// A line longer than this is not a timestamp stream (a chunk of a few
/// seconds of 48 kHz audio is well under 1 MiB of base64).
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub struct TimestampStream {
    line: Vec<u8>,
}

impl TimestampStream {
    /// Consumes `data`: decoded audio is appended to `audio`, the start time
    /// (seconds) of each newly aligned character to `starts`.
    pub fn feed(&mut self, data: &[u8], audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                decode_line(&rest[..nl], audio, starts)?;
            } else {
                self.line.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.line);
                decode_line(&line, audio, starts)?;
                self.line = line;
                self.line.clear();
            }
            rest = &rest[nl + 1..];
        }
        if self.line.len() + rest.len() > MAX_LINE {
            return Err(format!("a timestamp line is longer than {MAX_LINE} bytes"));
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    /// The body ended: a last line without a newline still counts.
    pub fn finish(&mut self, audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        decode_line(&line, audio, starts)
    }
}

fn decode_line(line: &[u8], audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|_| "a timestamp line is not UTF-8".to_owned())?;
    let mut text = text.trim();
    if let Some(data) = text.strip_prefix("data:") {
        text = data.trim();
    }
    if text.is_empty() {
        return Ok(());
    }
    let value = crate::json::parse(text).ok_or_else(|| {
        let shown: String = text.chars().take(60).collect();
        format!("a timestamp line is not JSON: {shown}")
    })?;
    if let Some(b64) = value.get("audio_base64").and_then(crate::json::Value::as_str) {
        base64_decode(b64, audio)?;
    }
    if let Some(crate::json::Value::Array(times)) =
        value.get("alignment").and_then(|a| a.get("character_start_times_seconds"))
    {
        for t in times {
            match t {
                crate::json::Value::Number(s) if s.is_finite() && *s >= 0.0 => starts.push(*s),
                _ => return Err("a character start time is not a number".to_owned()),
            }
        }
    }
    Ok(())
}

/// Standard base64 (RFC 4648 §4), padding optional, appended to `out`.
pub fn base64_decode(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 {
        return Err("bad base64 padding".to_owned());
    }
    out.reserve(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body.as_bytes() {
        let v = sextet(c).ok_or_else(|| format!("bad base64 character {:?}", c as char))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        // One sextet alone cannot end a quantum.
        return Err("truncated base64".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).rev().collect();
        for n in 0..40 {
            let mut out = Vec::new();
            base64_decode(&b64(&data[..n]), &mut out).unwrap();
            assert_eq!(out, &data[..n]);
        }
        let mut out = Vec::new();
        assert!(base64_decode("AB$C", &mut out).is_err());
        assert!(base64_decode("A", &mut out).is_err());
    }

    #[test]
    fn lines_split_anywhere_decode_the_same() {
        let audio: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let body = format!(
            "{{\"audio_base64\":\"{}\",\"alignment\":{{\"characters\":[\"H\",\"i\"],\"character_start_times_seconds\":[0.0,0.25],\"character_end_times_seconds\":[0.25,0.5]}},\"normalized_alignment\":null}}\n\
             {{\"audio_base64\":\"{}\",\"alignment\":null}}\n\ndata: {{\"audio_base64\":\"{}\",\"alignment\":{{\"characters\":[\"!\"],\"character_start_times_seconds\":[0.5],\"character_end_times_seconds\":[0.6]}}}}",
            b64(&audio[..301]),
            b64(&audio[301..700]),
            b64(&audio[700..])
        );
        for step in [1, 2, 7, 64, body.len()] {
            let mut ts = TimestampStream::default();
            let (mut out, mut starts) = (Vec::new(), Vec::new());
            for piece in body.as_bytes().chunks(step) {
                ts.feed(piece, &mut out, &mut starts).unwrap();
            }
            ts.finish(&mut out, &mut starts).unwrap();
            assert_eq!(out, audio, "step {step}");
            assert_eq!(starts, vec![0.0, 0.25, 0.5]);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut ts = TimestampStream::default();
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        assert!(ts.feed(b"{\"audio_base64\": nope\n", &mut out, &mut starts).is_err());
        let mut ts = TimestampStream::default();
        assert!(ts
            .feed(b"{\"alignment\":{\"character_start_times_seconds\":[\"x\"]}}\n", &mut out, &mut starts)
            .is_err());
    }
}
