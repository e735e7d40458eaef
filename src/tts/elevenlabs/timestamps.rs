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

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;
use serde::Deserialize;

/// Standard base64 (RFC 4648 §4), padding optional: what the API sends.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A line longer than this is not a timestamp stream (a chunk of a few
/// seconds of 48 kHz audio is well under 1 MiB of base64).
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub struct TimestampStream {
    line: Vec<u8>,
}

impl crate::tts::BodyDecoder for TimestampStream {
    /// Consumes `data`: decoded audio is appended to `audio`, the start time
    /// (seconds) of each newly aligned character to `starts`.
    fn feed(&mut self, data: &[u8], audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
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
    fn finish(&mut self, audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        decode_line(&line, audio, starts)
    }
}

/// One line of the stream; fields we do not use are ignored.
#[derive(Deserialize)]
struct Line {
    audio_base64: Option<String>,
    alignment: Option<Alignment>,
}

#[derive(Deserialize)]
struct Alignment {
    #[serde(default)]
    character_start_times_seconds: Vec<serde_json::Value>,
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
    let line: Line = serde_json::from_str(text).map_err(|_| {
        let shown: String = text.chars().take(60).collect();
        format!("a timestamp line is not JSON: {shown}")
    })?;
    if let Some(b64) = line.audio_base64 {
        STANDARD.decode_vec(b64.as_bytes(), audio).map_err(|e| format!("bad base64 audio: {e}"))?;
    }
    if let Some(alignment) = line.alignment {
        for t in alignment.character_start_times_seconds {
            match t.as_f64() {
                Some(s) if s.is_finite() && s >= 0.0 => starts.push(s),
                _ => return Err("a character start time is not a number".to_owned()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tts::BodyDecoder;

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn audio_decodes_with_or_without_padding_and_garbage_fails() {
        let data: Vec<u8> = (0..=255u8).rev().collect();
        for n in 0..40 {
            for text in [b64(&data[..n]), b64(&data[..n]).trim_end_matches('=').to_owned()] {
                let (mut out, mut starts) = (Vec::new(), Vec::new());
                let line = format!("{{\"audio_base64\":\"{text}\"}}");
                decode_line(line.as_bytes(), &mut out, &mut starts).unwrap();
                assert_eq!(out, &data[..n]);
            }
        }
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        assert!(decode_line(br#"{"audio_base64":"AB$C"}"#, &mut out, &mut starts).is_err());
        assert!(decode_line(br#"{"audio_base64":"A"}"#, &mut out, &mut starts).is_err());
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
