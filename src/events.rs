//! One place where the plugin reports what happened, whoever saw it: the
//! worker (a SPEAK ended, with its cause and figures; an upstream attempt;
//! a wait for a slot; a cache lookup), the MRCP Server thread (a request
//! arrived, a SPEAK was refused), the media thread's counts (frames it had
//! to play as silence, reported by the worker at the SPEAK's end).
//!
//! `SpeakEnded` also becomes the INFO line per SPEAK that operators grep
//! for. Observers are per engine: the engine makes its list at open and it
//! travels with each channel and SPEAK (`Observers`), so engines in one
//! process (the tests load the same .so into one test server after
//! another) never see each other's events. To add a
//! metric: read the event in `metrics::Metrics::event`; to report something
//! new, add a variant here and `emit` it where it happens (never from
//! `read_frame`: count there with an atomic, report from the worker).

use std::sync::Arc;
use std::time::Duration;

use crate::mrcp::Method;

/// A SPEAK that has ended, however it ended.
#[derive(Clone, Debug)]
pub struct SpeakEnded<'a> {
    /// The channel id (with its Logging-Tag), as in every log line.
    pub channel: &'a str,
    pub request_id: u32,
    pub chars: usize,
    pub voice_id: &'a str,
    pub model_id: &'a str,
    pub sample_rate: u32,
    /// upstream, cache, or shared (a flight another channel ran).
    pub source: &'static str,
    pub time_to_first_byte: Option<Duration>,
    pub audio_bytes: u64,
    /// The last upstream HTTP status (0: none).
    pub http_status: u32,
    /// Frames played as silence after playback started, with audio to come.
    pub underruns: u64,
    /// Times the channel's worker woke from a sleep during the SPEAK.
    pub wakeups: u64,
    /// The upstream's id of the last request (its `request-id` header),
    /// for ElevenLabs support and request stitching; None when the audio
    /// did not come from a request of ours.
    pub upstream_request_id: Option<&'a str>,
    /// Characters the upstream billed (`character-cost`), when it said.
    pub characters_billed: Option<u64>,
    /// The region that served the last request (`x-region`), when it said.
    pub region: Option<&'a str>,
    /// Upstream requests sent for this SPEAK (parts and tries).
    pub tries: u32,
    /// Time spent queued for an upstream slot.
    pub queue_wait: Duration,
    /// "000 normal", "004 error", "stopped", ...
    pub cause: &'a str,
    /// From the SPEAK's arrival to its first audio in the play buffer
    /// (played at the next media tick); None when none was.
    pub first_audio: Option<Duration>,
    /// From the SPEAK's arrival to its end.
    pub duration: Duration,
}

/// One upstream attempt (a part of a SPEAK, or one try of it), however it
/// ended.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    /// "primary" or "fallback".
    pub endpoint: &'static str,
    /// The HTTP status (0: none, the attempt got no response head).
    pub http_status: u32,
    /// ElevenLabs' `detail.status` of an error body.
    pub detail: Option<&'a str>,
    pub time_to_first_byte: Option<Duration>,
    /// Characters of text the request carried.
    pub chars_sent: usize,
    /// `character-cost` of the response, when it said.
    pub characters_billed: Option<u64>,
    /// "connect", "first_byte" or "stall" when the attempt ran out of time.
    pub timeout: Option<&'static str>,
}

#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    SpeakEnded(SpeakEnded<'a>),
    /// A SPEAK ended before it reached the worker (refused on the MRCP
    /// Server thread), with its Completion-Cause ("002 parse-failure").
    SpeakRefused {
        cause: &'static str,
    },
    /// An MRCP request arrived (MRCP Server thread).
    Request(Method),
    Attempt(Attempt<'a>),
    /// A failed attempt will be sent again: after a backoff (`requeue`
    /// false), or back at the head of the queue after a concurrency 429.
    Retry {
        requeue: bool,
    },
    /// A wait for an upstream slot ended (granted, or not).
    Queued {
        waited: Duration,
    },
    /// What the prompt cache answered: "hit", "miss" or "follower".
    CacheLookup(&'static str),
}

/// Something that wants to hear about events (a metrics exporter).
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// The observers of one engine. Cheap to clone (one Arc); fixed at engine
/// open, so emitting takes no lock.
#[derive(Clone, Default)]
pub struct Observers(Arc<[Arc<dyn Observer>]>);

impl Observers {
    pub fn new(observers: Vec<Arc<dyn Observer>>) -> Observers {
        Observers(observers.into())
    }

    /// Reports an event: the summary log line, then every observer.
    /// Observers must not block.
    pub fn emit(&self, event: Event<'_>) {
        if let Event::SpeakEnded(e) = &event {
            log_line(e);
        }
        for observer in self.0.iter() {
            observer.event(&event);
        }
    }
}

/// The one INFO line per SPEAK.
fn log_line(e: &SpeakEnded<'_>) {
    let audio_ms = e.audio_bytes / crate::media::bytes_per_ms(e.sample_rate) as u64;
    let ttfb = e.time_to_first_byte.map_or_else(|| "-".to_owned(), |d| format!("{}", d.as_millis()));
    log::info!(
        "[{}] SPEAK {} done: chars={} voice={} model={} rate={} source={} ttfb_ms={} audio_ms={} bytes={} http={} underruns={} wakeups={} chars_billed={} region={} tries={} queue_ms={} request_id={} cause={}",
        e.channel,
        e.request_id,
        e.chars,
        e.voice_id,
        e.model_id,
        e.sample_rate,
        e.source,
        ttfb,
        audio_ms,
        e.audio_bytes,
        e.http_status,
        e.underruns,
        e.wakeups,
        e.characters_billed.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        e.region.unwrap_or("-"),
        e.tries,
        e.queue_wait.as_millis(),
        e.upstream_request_id.unwrap_or("-"),
        e.cause
    );
}
