//! One place where the plugin reports what happened, whoever saw it: the
//! worker (a SPEAK ended, with its cause and figures), the transport (the
//! upstream's status and time to first byte), the cache (where the audio
//! came from), the media thread (frames it had to play as silence).
//!
//! Today one observer turns `SpeakEnded` into the INFO line per SPEAK that
//! operators grep for. To add a metric: add an observer with
//! `events::observe` (from engine open) and read the events it needs; to
//! report something new, add a variant here and `emit` it where it happens
//! (never from `read_frame`: count there with an atomic, report from the
//! worker).

use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::Lazy;
use parking_lot::RwLock;

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
}

#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    SpeakEnded(SpeakEnded<'a>),
}

/// Something that wants to hear about events (a metrics exporter).
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// Lock order: a leaf. Observers are called with the read lock held and
/// must not block.
static OBSERVERS: Lazy<RwLock<Vec<Arc<dyn Observer>>>> = Lazy::new(|| RwLock::new(Vec::new()));

/// Adds an observer for the life of the process.
#[allow(dead_code)] // the seam the metrics exporter plugs into
pub fn observe(observer: Arc<dyn Observer>) {
    OBSERVERS.write().push(observer);
}

/// Reports an event: the summary log line, then every observer.
pub fn emit(event: Event<'_>) {
    log_line(&event);
    for observer in OBSERVERS.read().iter() {
        observer.event(&event);
    }
}

/// The one INFO line per SPEAK.
fn log_line(event: &Event<'_>) {
    let Event::SpeakEnded(e) = event;
    let bytes_per_ms = u64::from(e.sample_rate) * 2 / 1000;
    let audio_ms = e.audio_bytes / bytes_per_ms.max(1);
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
