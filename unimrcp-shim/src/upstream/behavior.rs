//! What the mock does with a valid request: timing, chunking and faults.

use std::time::Duration;

/// How the mock answers a request that passed the key check and validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    /// Pause between reading the whole request and writing the response
    /// head (with the first chunk); for a request that waited in the plan's
    /// queue ([`super::MockUpstream::set_plan_queue`]), counted from its
    /// admission. Applies to fault responses too, except
    /// [`Fault::HangBeforeHeaders`], which never answers, and faults forced
    /// by [`super::MockUpstream::fail_next`] or
    /// [`super::MockUpstream::set_failing`], which are sent at once.
    pub first_byte_delay: Duration,
    /// PCM bytes per HTTP chunk; the last chunk may be shorter. Odd sizes are
    /// allowed on purpose (they split samples across chunks). `0` sends all
    /// audio in a single chunk. On `/stream/with-timestamps` this is the PCM
    /// per line, rounded down to whole samples (at least one), because each
    /// line's audio is decoded on its own.
    pub chunk_bytes: usize,
    /// Playback-speed multiple for pacing: `1.0` is real time, `0.5` drips
    /// at half real time. `0`, negative, NaN or infinite mean "as fast as the
    /// socket takes it".
    pub speed: f64,
    /// Audio length; `None` derives it from the text
    /// ([`super::audio_ms_for_text`]). Test tones only: speech is as long
    /// as it takes to say the text.
    pub audio_ms: Option<u32>,
    /// What the audio is: deterministic test tones (the default, which
    /// every test relies on) or real speech.
    pub voice: Voice,
    /// `/stream/with-timestamps` only: send `"alignment":null` and
    /// `"normalized_alignment":null` on every line, as the real service may,
    /// so a client must cope with audio that carries no timing.
    pub omit_alignment: bool,
    /// `/stream/with-timestamps` only: how each line's alignment is shaped
    /// (what its times count from, which field carries it).
    pub alignment: AlignmentShape,
    /// The connection's kernel send buffer (`SO_SNDBUF`), set before the
    /// response is written; `None` leaves the system's autotuned one. On
    /// loopback the autotuned buffers hold megabytes, so a client that
    /// stops reading holds a response open only once they are full: a
    /// small buffer shows the client's backpressure at the mock as a real
    /// server would see it. It stays set for later responses on the same
    /// keep-alive connection.
    pub send_buffer: Option<usize>,
    pub fault: Fault,
}

/// The shapes a `/stream/with-timestamps` line's alignment can take.
///
/// ElevenLabs' documented example for this endpoint appends every line's
/// `character_start_times_seconds` to one list unchanged, after checking
/// `alignment is not None`: the times count from the start of the whole
/// audio, and `alignment` may be `null` ([`Behavior::omit_alignment`]).
/// The other shapes are what a client should survive anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlignmentShape {
    /// As the API sends it: times from the start of the response's audio,
    /// in both `alignment` and `normalized_alignment`.
    #[default]
    Cumulative,
    /// Each line's times count from the start of that line's own chunk (as
    /// ElevenLabs' WebSocket API does).
    ChunkRelative,
    /// `"alignment":null`, the (cumulative) times only in
    /// `normalized_alignment`.
    NormalizedOnly,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            first_byte_delay: Duration::ZERO,
            chunk_bytes: 1601,
            speed: f64::INFINITY,
            audio_ms: None,
            voice: Voice::Tones,
            omit_alignment: false,
            alignment: AlignmentShape::Cumulative,
            send_buffer: None,
            fault: Fault::None,
        }
    }
}

impl Behavior {
    /// Default behaviour paced at real time.
    pub fn realtime() -> Self {
        Behavior::default().with_speed(1.0)
    }

    /// Default behaviour with `fault`.
    pub fn fault(fault: Fault) -> Self {
        Behavior::default().with_fault(fault)
    }

    pub fn with_first_byte_delay(mut self, delay: Duration) -> Self {
        self.first_byte_delay = delay;
        self
    }

    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes;
        self
    }

    pub fn with_speed(mut self, speed: f64) -> Self {
        self.speed = speed;
        self
    }

    pub fn with_audio_ms(mut self, ms: u32) -> Self {
        self.audio_ms = Some(ms);
        self
    }

    pub fn with_voice(mut self, voice: Voice) -> Self {
        self.voice = voice;
        self
    }

    pub fn with_omit_alignment(mut self, omit: bool) -> Self {
        self.omit_alignment = omit;
        self
    }

    pub fn with_alignment(mut self, shape: AlignmentShape) -> Self {
        self.alignment = shape;
        self
    }

    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = Some(bytes);
        self
    }

    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Bytes per second to pace at, or `None` for unpaced.
    pub(crate) fn pacing_bytes_per_sec(&self, sample_rate: u32) -> Option<f64> {
        let s = self.speed;
        (s.is_finite() && s > 0.0).then(|| f64::from(sample_rate) * 2.0 * s)
    }
}

/// The sound of a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Voice {
    /// Deterministic tones ([`super::synth_pcm`]) with even character
    /// alignment ([`super::char_start_ms`]): a test can predict every byte.
    #[default]
    Tones,
    /// The text spoken by eSpeak NG ([`super::espeak`]), resampled to the
    /// requested rate, with alignment from its word events. Opt-in, for the
    /// demo: nothing may depend on it in tests. When `libespeak-ng.so.1`
    /// is missing (see [`super::espeak::available`]) or fails on a text,
    /// the response falls back to [`Voice::Tones`].
    Espeak,
}

/// Ways a response can go wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Error status with an ElevenLabs-shaped JSON body:
    /// `{"detail":{"status":..,"message":..}}`, or `{"detail":message}` when
    /// `detail_status` is `None`.
    Http {
        status: u16,
        detail_status: Option<String>,
        message: String,
    },
    /// 422 with the list-shaped (FastAPI) validation detail.
    ValidationError,
    /// 422 with the list-shaped validation detail for one field: `loc` (as
    /// `["body", "pronunciation_dictionary_locators", 0, ..]`), `msg`.
    InvalidField {
        loc: Vec<serde_json::Value>,
        msg: String,
    },
    /// Head and first chunk, then no bytes until the client leaves or the
    /// mock is dropped.
    StallAfterFirstChunk,
    /// Send that many audio bytes (in chunks), then close without the
    /// terminating zero-size chunk. On `/stream/with-timestamps` lines are
    /// never split, so the cut comes after the line that reaches the count.
    CutAfterBytes(usize),
    /// 200 with `Content-Type: application/json` and a JSON body.
    JsonInsteadOfAudio,
    /// 200 with `Content-Type: text/html` and an HTML body.
    WrongContentType,
    /// Read the request, never answer; hold until the client leaves or the
    /// mock is dropped.
    HangBeforeHeaders,
    /// `/stream/with-timestamps`: one valid line, then a line that is not
    /// JSON, then the normal end of the body. Plain `/stream` has no lines
    /// to break and answers as with [`Fault::None`].
    MalformedTimestampLine,
}

/// `detail.status` and `detail.message` of the 429 for the concurrency
/// limit.
pub(crate) const TOO_MANY_CONCURRENT: (&str, &str) =
    ("too_many_concurrent_requests", "Too many concurrent requests for your subscription tier.");

impl Fault {
    pub fn http(status: u16, detail_status: &str, message: &str) -> Fault {
        Fault::Http { status, detail_status: Some(detail_status.to_string()), message: message.to_string() }
    }

    /// 429 as sent when the account's concurrency limit is reached (what
    /// [`super::MockUpstream::set_plan_limit`] answers).
    pub fn too_many_concurrent_requests() -> Fault {
        let (status, message) = TOO_MANY_CONCURRENT;
        Fault::http(429, status, message)
    }

    /// 429 as sent when ElevenLabs itself is overloaded.
    pub fn system_busy() -> Fault {
        Fault::http(429, "system_busy", "We are experiencing heavy traffic, please try again later.")
    }

    pub fn voice_not_found() -> Fault {
        Fault::http(404, "voice_not_found", "A voice with the voice_id provided was not found.")
    }

    /// A request naming a pronunciation dictionary the account does not
    /// have: `404 {"detail":{"status":"pronunciation_dictionary_not_found",
    /// "message":"... <id> ..."}}`, ElevenLabs' usual error shape naming it.
    pub fn dictionary_not_found(id: &str) -> Fault {
        Fault::http(
            404,
            "pronunciation_dictionary_not_found",
            &format!("Pronunciation dictionary with id {id} was not found."),
        )
    }

    /// A locator the API cannot read (a version id of another
    /// dictionary, say): 422 with the validation list naming the field.
    pub fn dictionary_version_invalid(index: usize) -> Fault {
        Fault::InvalidField {
            loc: vec!["body".into(), "pronunciation_dictionary_locators".into(), index.into(), "version_id".into()],
            msg: "version does not belong to this pronunciation dictionary".to_string(),
        }
    }

    /// Plain error status with a string detail (500, 502, 503, ...).
    pub fn server_error(status: u16) -> Fault {
        Fault::Http { status, detail_status: None, message: "Internal server error".to_string() }
    }
}

/// Picks the behaviour for a request: first matching rule, else the default.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub default: Behavior,
    rules: Vec<(Match, Behavior)>,
}

#[derive(Debug)]
enum Match {
    TextContains(String),
    VoiceIs(String),
}

impl Rules {
    pub fn when_text_contains(&mut self, needle: &str, b: Behavior) {
        self.rules.push((Match::TextContains(needle.to_string()), b));
    }

    pub fn when_voice_is(&mut self, voice_id: &str, b: Behavior) {
        self.rules.push((Match::VoiceIs(voice_id.to_string()), b));
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn pick(&self, text: &str, voice_id: &str) -> Behavior {
        self.rules
            .iter()
            .find(|(m, _)| match m {
                Match::TextContains(needle) => text.contains(needle.as_str()),
                Match::VoiceIs(v) => v == voice_id,
            })
            .map_or_else(|| self.default.clone(), |(_, b)| b.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_first_match_wins_then_default() {
        let mut r = Rules { default: Behavior::default().with_audio_ms(1), ..Rules::default() };
        r.when_text_contains("slow", Behavior::realtime());
        r.when_text_contains("slow down", Behavior::fault(Fault::ValidationError));
        r.when_voice_is("bogus", Behavior::fault(Fault::voice_not_found()));
        assert_eq!(r.pick("please slow down", "v").speed, 1.0);
        assert_eq!(r.pick("hello", "bogus").fault, Fault::voice_not_found());
        assert_eq!(r.pick("hello", "v").audio_ms, Some(1));
        r.clear();
        assert_eq!(r.pick("please slow down", "v").audio_ms, Some(1));
    }

    #[test]
    fn pacing_rate() {
        let b = Behavior::default();
        assert_eq!(b.pacing_bytes_per_sec(16000), None);
        assert_eq!(b.clone().with_speed(0.0).pacing_bytes_per_sec(16000), None);
        assert_eq!(b.clone().with_speed(f64::NAN).pacing_bytes_per_sec(8000), None);
        assert_eq!(b.with_speed(0.5).pacing_bytes_per_sec(16000), Some(16000.0));
    }
}
