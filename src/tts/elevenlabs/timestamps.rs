//! ElevenLabs' `/stream/with-timestamps` response, read as it arrives.
//!
//! The body is newline-delimited JSON: each line carries one chunk of audio
//! as base64 (`audio_base64`) and the alignment of the characters whose
//! audio starts in it (`alignment.characters`,
//! `alignment.character_start_times_seconds`). We use it only for SPEAKs
//! with `<mark>`s inside a sentence: the start time of the character after
//! a mark says where in the audio the mark is. Lines may arrive split across
//! network reads or several in one read; an `data:` prefix (server-sent-event
//! framing) is tolerated.
//!
//! What the times count from, and what a line may lack. ElevenLabs' own
//! example for this endpoint (the Python script on the API reference page
//! "Text to Speech Streaming With Timestamps",
//! elevenlabs.io/docs/api-reference/streaming-with-timestamps) reads the
//! stream by appending each line's `character_start_times_seconds` to one
//! list, unchanged, after `if response_dict["alignment"] is not None`, and
//! prints that list as the alignment of the whole audio. So:
//! * the times count from the start of the response's audio, not from the
//!   line's chunk (what this reader expects);
//! * `alignment` may be `null` (a chunk in which no character starts); the
//!   response model (`StreamingAudioChunkWithTimestampsResponse`) makes
//!   `alignment` and `normalized_alignment` both optional.
//!
//! Robust to the other shapes as well: ElevenLabs' WebSocket API sends its
//! alignment per chunk, relative to that chunk, so a line whose first time
//! lies before the previous line's last one is read as chunk-relative (from
//! then on, every line's times are shifted by the audio before its chunk).
//! A line with only `normalized_alignment` (its text as the model
//! normalized it, e.g. digits spelled out) is used when `alignment` is
//! absent: its character count can differ from ours, so its times are a
//! close estimate, and a mark never moves before one already placed.

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

pub struct TimestampStream {
    line: Vec<u8>,
    /// Bytes per second of the PCM (2 × the sample rate): how far into the
    /// audio a chunk starts.
    bytes_per_sec: f64,
    /// PCM bytes decoded from the lines before this one.
    audio_bytes: u64,
    /// The last start time handed out (seconds from the audio's start).
    last: Option<f64>,
    /// The lines' times count from their own chunk (seen to go backwards).
    chunk_relative: bool,
}

impl TimestampStream {
    pub fn new(sample_rate: u32) -> TimestampStream {
        TimestampStream {
            line: Vec::new(),
            bytes_per_sec: f64::from(sample_rate.max(1)) * 2.0,
            audio_bytes: 0,
            last: None,
            chunk_relative: false,
        }
    }
}

impl crate::tts::BodyDecoder for TimestampStream {
    /// Consumes `data`: decoded audio is appended to `audio`, the start time
    /// (seconds) of each newly aligned character to `starts`.
    fn feed(&mut self, data: &[u8], audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.decode_line(&rest[..nl], audio, starts)?;
            } else {
                self.line.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.line);
                self.decode_line(&line, audio, starts)?;
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
        self.decode_line(&line, audio, starts)
    }
}

/// One line of the stream; fields we do not use are ignored.
#[derive(Deserialize)]
struct Line {
    audio_base64: Option<String>,
    alignment: Option<Alignment>,
    normalized_alignment: Option<Alignment>,
}

#[derive(Deserialize)]
struct Alignment {
    #[serde(default)]
    character_start_times_seconds: Vec<serde_json::Value>,
}

impl TimestampStream {
    fn decode_line(&mut self, line: &[u8], audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String> {
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
        // Where this line's chunk starts in the response's audio.
        let chunk_start = self.audio_bytes as f64 / self.bytes_per_sec;
        if let Some(b64) = line.audio_base64 {
            let before = audio.len();
            STANDARD.decode_vec(b64.as_bytes(), audio).map_err(|e| format!("bad base64 audio: {e}"))?;
            self.audio_bytes += (audio.len() - before) as u64;
        }
        let Some(alignment) = line.alignment.or(line.normalized_alignment) else {
            return Ok(()); // a chunk in which no character starts
        };
        let mut times = Vec::with_capacity(alignment.character_start_times_seconds.len());
        for t in alignment.character_start_times_seconds {
            match t.as_f64() {
                Some(s) if s.is_finite() && s >= 0.0 => times.push(s),
                _ => return Err("a character start time is not a number".to_owned()),
            }
        }
        if let (Some(&first), Some(last)) = (times.first(), self.last) {
            // Backwards from one line to the next: the times are the
            // chunk's own (never the case for cumulative times, which only
            // grow).
            if !self.chunk_relative && first < last {
                self.chunk_relative = true;
            }
        }
        let shift = if self.chunk_relative { chunk_start } else { 0.0 };
        for t in times {
            let t = (t + shift).max(self.last.unwrap_or(0.0));
            starts.push(t);
            self.last = Some(t);
        }
        Ok(())
    }
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
                TimestampStream::new(8000).decode_line(line.as_bytes(), &mut out, &mut starts).unwrap();
                assert_eq!(out, &data[..n]);
            }
        }
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        assert!(TimestampStream::new(8000).decode_line(br#"{"audio_base64":"AB$C"}"#, &mut out, &mut starts).is_err());
        assert!(TimestampStream::new(8000).decode_line(br#"{"audio_base64":"A"}"#, &mut out, &mut starts).is_err());
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
            let mut ts = TimestampStream::new(8000);
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
        let mut ts = TimestampStream::new(8000);
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        assert!(ts.feed(b"{\"audio_base64\": nope\n", &mut out, &mut starts).is_err());
        let mut ts = TimestampStream::new(8000);
        assert!(ts
            .feed(b"{\"alignment\":{\"character_start_times_seconds\":[\"x\"]}}\n", &mut out, &mut starts)
            .is_err());
    }

    /// A line of `ms` of 8 kHz audio whose characters start at `times`,
    /// carried as `field` (`alignment` or `normalized_alignment`).
    fn line(ms: usize, field: &str, times: &[f64]) -> String {
        let pcm = vec![0u8; ms * 16];
        let alignment = if times.is_empty() {
            "null".to_owned()
        } else {
            format!("{{\"characters\":{:?},\"character_start_times_seconds\":{:?}}}", vec!["x"; times.len()], times)
        };
        let other = if field == "alignment" { "normalized_alignment" } else { "alignment" };
        format!("{{\"audio_base64\":\"{}\",\"{field}\":{alignment},\"{other}\":null}}\n", b64(&pcm))
    }

    fn starts_of(body: &str) -> Vec<f64> {
        let mut ts = TimestampStream::new(8000);
        let (mut out, mut starts) = (Vec::new(), Vec::new());
        ts.feed(body.as_bytes(), &mut out, &mut starts).unwrap();
        ts.finish(&mut out, &mut starts).unwrap();
        starts
    }

    #[test]
    fn cumulative_times_are_kept_as_sent() {
        // What the API sends: every line's times from the audio's start.
        let body =
            [line(100, "alignment", &[0.0, 0.05]), line(100, "alignment", &[]), line(100, "alignment", &[0.2, 0.25])];
        assert_eq!(starts_of(&body.concat()), vec![0.0, 0.05, 0.2, 0.25]);
    }

    #[test]
    fn times_that_go_backwards_are_read_as_chunk_relative() {
        // Each line's times from its own chunk: the second chunk starts
        // 100 ms in, the third (after a line without alignment) 300 ms in.
        let body = [
            line(100, "alignment", &[0.0, 0.05]),
            line(200, "alignment", &[0.0, 0.1]),
            line(100, "alignment", &[]),
            line(100, "alignment", &[0.02]),
        ];
        let got = starts_of(&body.concat());
        let want = [0.0, 0.05, 0.1, 0.2, 0.42];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?}");
        }
    }

    #[test]
    fn normalized_alignment_stands_in_when_alignment_is_null() {
        let body = [line(100, "normalized_alignment", &[0.0, 0.05]), line(100, "normalized_alignment", &[0.1])];
        assert_eq!(starts_of(&body.concat()), vec![0.0, 0.05, 0.1]);
        let none = [line(100, "alignment", &[]), line(100, "alignment", &[])];
        assert_eq!(starts_of(&none.concat()), Vec::<f64>::new());
    }
}
