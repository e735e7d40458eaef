//! The engine's figures for operators (README "Monitoring"): counters and
//! histograms fed from events (`events::Observer`), gauges of state read
//! at scrape time from the objects that own them (`readings`), one
//! prometheus-client registry per engine, served over HTTP (`http`) and
//! written to a node_exporter textfile (`textfile`), each from a thread of
//! its own.
//!
//! Per engine, never process-wide: several engines may live in one process
//! (the tests load the same .so into one test server after another, and
//! its statics outlive each).
//!
//! Recording is a few atomic adds (a histogram takes its own short lock);
//! no label carries text, a request id or a voice name.

pub mod http;
mod readings;
pub mod textfile;

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use readings::{Reader, Readings};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::events::{Event, Observer};
use crate::mrcp::Method;

/// Every name starts with it.
pub const PREFIX: &str = "unimrcp_elevenlabs";

/// Label values are borrowed where they are fixed strings (all but an HTTP
/// status outside the common ones): an event is counted on a channel's
/// worker, and each owned value was an allocation per SPEAK.
type Labels = Vec<(&'static str, Cow<'static, str>)>;

/// The two text formats: Prometheus 0.0.4 (what node_exporter's textfile
/// collector parses, and what a scraper gets unless it asks for
/// OpenMetrics) and OpenMetrics 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// What a scraper's `Accept` header asks for: OpenMetrics only when it
    /// names it (Prometheus does), else the classic format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

/// ElevenLabs' `detail.status` values kept as label values; any other is
/// "other", so a label never takes an unbounded set of values.
const KNOWN_DETAILS: &[&str] = &[
    "too_many_concurrent_requests",
    "system_busy",
    "quota_exceeded",
    "invalid_api_key",
    "missing_permissions",
    "voice_not_found",
    "model_not_found",
    "invalid_request",
    "max_character_limit_exceeded",
    "pronunciation_dictionary_not_found",
    "detected_unusual_activity",
    "payment_required",
];

/// Completion causes and summary labels kept as label values.
const KNOWN_CAUSES: &[&str] = &[
    "000 normal",
    "001 barge-in",
    "002 parse-failure",
    "003 uri-failure",
    "004 error",
    "005 language-unsupported",
    "006 lexicon-load-failure",
    "007 cancelled",
    "004 error (shutdown)",
    "stopped",
    "refused",
];

fn bounded(value: &str, known: &[&'static str]) -> &'static str {
    known.iter().find(|k| **k == value).copied().unwrap_or("other")
}

/// Every method, in the order of `Metrics::by_method`.
const METHODS: [Method; 10] = [
    Method::SetParams,
    Method::GetParams,
    Method::Speak,
    Method::Stop,
    Method::Pause,
    Method::Resume,
    Method::BargeInOccurred,
    Method::Control,
    Method::DefineLexicon,
    Method::Other,
];

fn method_name(method: Method) -> &'static str {
    match method {
        Method::SetParams => "SET-PARAMS",
        Method::GetParams => "GET-PARAMS",
        Method::Speak => "SPEAK",
        Method::Stop => "STOP",
        Method::Pause => "PAUSE",
        Method::Resume => "RESUME",
        Method::BargeInOccurred => "BARGE-IN-OCCURRED",
        Method::Control => "CONTROL",
        Method::DefineLexicon => "DEFINE-LEXICON",
        Method::Other => "other",
    }
}

fn status_label(code: u32) -> Cow<'static, str> {
    const COMMON: [(u32, &str); 12] = [
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (402, "402"),
        (403, "403"),
        (404, "404"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match COMMON.iter().find(|(c, _)| *c == code) {
        Some((_, text)) => Cow::Borrowed(text),
        None if (100..600).contains(&code) => Cow::Owned(code.to_string()),
        None => Cow::Borrowed("none"),
    }
}

/// Buckets (seconds) for latencies up to a few seconds.
const LATENCY: [f64; 15] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];
/// Buckets (seconds) for how long a SPEAK lasts.
const DURATION: [f64; 11] = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// Buckets (seconds) for a wait in the upstream queue.
const QUEUE: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One engine's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    /// The `requests` counter of each method (`METHODS` order), looked up
    /// once: counting a request on the MRCP Server thread is one atomic
    /// add, no map lookup, no allocation.
    by_method: Vec<Counter>,
    speaks: Family<Labels, Counter>,
    upstream: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    timeouts: Family<Labels, Counter>,
    stalls: Counter,
    chars_billed: Counter,
    chars_sent: Counter,
    cache_lookups: Family<Labels, Counter>,
    underruns: Counter,
    first_audio: Histogram,
    first_byte: Histogram,
    speak_duration: Histogram,
    queue_wait: Histogram,
    /// The last exposition served over HTTP, for `render_recent` (a leaf,
    /// held for a look or a swap, never while encoding).
    recent: Mutex<Option<Recent>>,
}

struct Recent {
    at: Instant,
    format: Format,
    text: Arc<String>,
}

impl Metrics {
    /// `model_id` goes into `build_info`; `readers` are read on each
    /// scrape.
    pub fn new(model_id: &str, readers: Vec<Box<dyn Reader>>) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let family = || Family::<Labels, Counter>::default();
        let requests = family();
        let by_method =
            METHODS.iter().map(|m| requests.get_or_create(&vec![("method", method_name(*m).into())]).clone()).collect();
        let m = Metrics {
            recent: Mutex::new(None),
            requests,
            by_method,
            speaks: family(),
            upstream: family(),
            retries: family(),
            timeouts: family(),
            stalls: Counter::default(),
            chars_billed: Counter::default(),
            chars_sent: Counter::default(),
            cache_lookups: family(),
            underruns: Counter::default(),
            first_audio: Histogram::new(LATENCY),
            first_byte: Histogram::new(LATENCY),
            speak_duration: Histogram::new(DURATION),
            queue_wait: Histogram::new(QUEUE),
            registry: Registry::default(),
        };
        // The series a dashboard plots from the start exist at 0 (a
        // counter that appears only with its first event has no rate for
        // its first interval, and a missing family reads as "no data").
        for cause in ["000 normal", "004 error", "stopped"] {
            let _ = m.speaks.get_or_create(&vec![("cause", cause.into())]);
        }
        for result in ["hit", "miss", "follower"] {
            let _ = m.cache_lookups.get_or_create(&vec![("result", result.into())]);
        }
        for kind in ["retry", "requeue"] {
            let _ = m.retries.get_or_create(&vec![("kind", kind.into())]);
        }
        let _ = m.upstream.get_or_create(&vec![
            ("endpoint", "primary".into()),
            ("status", "200".into()),
            ("detail", "none".into()),
        ]);
        for phase in ["connect", "first_byte"] {
            let _ = m.timeouts.get_or_create(&vec![("phase", phase.into())]);
        }
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&vec![
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("model_id", model_id.to_owned().into()),
        ])
        .set(1);
        let r = &mut registry;
        r.register("build_info", "Always 1: the plugin's version and the engine's configured model_id", info);
        r.register("mrcp_requests", "MRCP requests received, by method", m.requests.clone());
        r.register(
            "speaks",
            "SPEAKs ended, by Completion-Cause (\"stopped\": ended by STOP or BARGE-IN-OCCURRED; \"refused\": refused before IN-PROGRESS)",
            m.speaks.clone(),
        );
        r.register(
            "upstream_requests",
            "Upstream requests (each part and each try), by endpoint, HTTP status (\"none\": no response) and ElevenLabs detail.status (\"none\", a known status, or \"other\")",
            m.upstream.clone(),
        );
        r.register(
            "upstream_retries",
            "Failed upstream requests sent again: kind=\"retry\" after a backoff, kind=\"requeue\" back at the head of the queue after a concurrency 429",
            m.retries.clone(),
        );
        r.register(
            "upstream_timeouts",
            "Upstream requests that ran out of time before audio, by phase (connect, first_byte)",
            m.timeouts.clone(),
        );
        r.register(
            "upstream_stalls",
            "Upstream streams that paused longer than stall_timeout_ms mid-audio",
            m.stalls.clone(),
        );
        r.register(
            "characters_billed",
            "Characters the upstream billed (its character-cost header)",
            m.chars_billed.clone(),
        );
        r.register("characters_sent", "Characters of text sent upstream (every part and try)", m.chars_sent.clone());
        r.register(
            "cache_lookups",
            "Prompt cache lookups, by result: hit, miss (this SPEAK synthesizes it), follower (another channel's synthesis of the same prompt was followed)",
            m.cache_lookups.clone(),
        );
        r.register(
            "underrun_frames",
            "Frames played as silence after a SPEAK's audio had started, with more audio to come",
            m.underruns.clone(),
        );
        r.register_with_unit(
            "speak_first_audio",
            "From a SPEAK's arrival to its first audio in the play buffer (played at the next 10 ms media tick)",
            Unit::Seconds,
            m.first_audio.clone(),
        );
        r.register_with_unit(
            "upstream_first_byte",
            "From sending an upstream request to the first byte of its response",
            Unit::Seconds,
            m.first_byte.clone(),
        );
        r.register_with_unit(
            "speak_duration",
            "From a SPEAK's arrival to its end, however it ended",
            Unit::Seconds,
            m.speak_duration.clone(),
        );
        r.register_with_unit(
            "queue_wait",
            "Waits in the engine's queue for an upstream slot",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        registry.register_collector(Box::new(readings::ReadersCollector(readers)));
        Metrics { registry, ..m }
    }

    /// The whole exposition, in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let written = match format {
            Format::Prometheus => prometheus_text::encode(&mut out, &self.registry),
            Format::OpenMetrics => text::encode(&mut out, &self.registry),
        };
        if let Err(e) = written {
            log::warn!("metrics: cannot encode: {e}");
        }
        out
    }

    /// The exposition in `format`, encoded anew only when the last one is
    /// older than `max_age`: a scraper hammering the endpoint then costs
    /// socket writes, not an encoding of every family per request
    /// (Prometheus scrapes every few seconds; a figure a fraction of a
    /// second old is as good). Two scrapes that find it stale at once may
    /// both encode; the lock is never held while encoding.
    pub fn render_recent(&self, format: Format, max_age: Duration) -> Arc<String> {
        if let Some(r) = self.recent.lock().as_ref() {
            if r.format == format && r.at.elapsed() < max_age {
                return Arc::clone(&r.text);
            }
        }
        let text = Arc::new(self.render(format));
        *self.recent.lock() = Some(Recent { at: Instant::now(), format, text: Arc::clone(&text) });
        text
    }

    fn count(family: &Family<Labels, Counter>, labels: Labels, by: u64) {
        family.get_or_create(&labels).inc_by(by);
    }
}

impl Observer for Metrics {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::SpeakEnded(e) => {
                Self::count(&self.speaks, vec![("cause", bounded(e.cause, KNOWN_CAUSES).into())], 1);
                self.speak_duration.observe(e.duration.as_secs_f64());
                if let Some(first) = e.first_audio {
                    self.first_audio.observe(first.as_secs_f64());
                }
                if e.underruns > 0 {
                    self.underruns.inc_by(e.underruns);
                }
            }
            Event::SpeakRefused { cause } => {
                Self::count(&self.speaks, vec![("cause", bounded(cause, KNOWN_CAUSES).into())], 1);
            }
            Event::Request(method) => {
                if let Some(i) = METHODS.iter().position(|m| m == method) {
                    self.by_method[i].inc();
                }
            }
            Event::Attempt(a) => {
                let detail = a.detail.map_or("none", |d| bounded(d, KNOWN_DETAILS));
                let labels = vec![
                    ("endpoint", a.endpoint.into()),
                    ("status", status_label(a.http_status)),
                    ("detail", detail.into()),
                ];
                Self::count(&self.upstream, labels, 1);
                if let Some(t) = a.time_to_first_byte {
                    self.first_byte.observe(t.as_secs_f64());
                }
                self.chars_sent.inc_by(a.chars_sent as u64);
                if let Some(n) = a.characters_billed {
                    self.chars_billed.inc_by(n);
                }
                match a.timeout {
                    Some("stall") => {
                        self.stalls.inc();
                    }
                    Some(phase) => Self::count(&self.timeouts, vec![("phase", (*phase).into())], 1),
                    None => {}
                }
            }
            Event::Retry { requeue } => {
                let kind = if *requeue { "requeue" } else { "retry" };
                Self::count(&self.retries, vec![("kind", kind.into())], 1);
            }
            Event::Queued { waited } => self.queue_wait.observe(waited.as_secs_f64()),
            Event::CacheLookup(result) => Self::count(&self.cache_lookups, vec![("result", (*result).into())], 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::events::Attempt;

    struct Fixed;
    impl Reader for Fixed {
        fn read(&self, out: &mut Readings) {
            out.gauge("channels", "Channels open", 3.0);
            out.gauge_with("circuit_state", "Circuit", &[("endpoint", "primary")], 1.0);
            out.gauge_with("circuit_state", "Circuit", &[("endpoint", "fallback")], 0.0);
            out.counter_with("cache_evictions", "Evictions", &[], 7);
        }
    }

    fn attempt(status: u32, detail: Option<&str>) -> Event<'_> {
        Event::Attempt(Attempt {
            endpoint: "primary",
            http_status: status,
            detail,
            time_to_first_byte: Some(Duration::from_millis(120)),
            chars_sent: 10,
            characters_billed: Some(10),
            timeout: None,
        })
    }

    #[test]
    fn a_recent_exposition_is_served_again_until_it_is_too_old() {
        let m = Metrics::new("eleven_flash_v2_5", Vec::new());
        let long = Duration::from_secs(3600);
        let first = m.render_recent(Format::Prometheus, long);
        m.event(&Event::Request(Method::Speak));
        let again = m.render_recent(Format::Prometheus, long);
        assert!(Arc::ptr_eq(&first, &again), "within max_age the same text is served");
        let other = m.render_recent(Format::OpenMetrics, long);
        assert!(other.ends_with("# EOF\n"), "another format is encoded anew");
        let fresh = m.render_recent(Format::Prometheus, Duration::ZERO);
        assert!(!Arc::ptr_eq(&first, &fresh));
        assert!(fresh.contains("unimrcp_elevenlabs_mrcp_requests_total{method=\"SPEAK\"} 1"), "{fresh}");
    }

    #[test]
    fn status_labels_are_the_code_and_common_ones_are_not_allocated() {
        for code in [200, 429, 503] {
            let label = status_label(code);
            assert!(matches!(label, Cow::Borrowed(_)), "{code}");
            assert_eq!(label, code.to_string());
        }
        assert_eq!(status_label(418), "418");
        assert_eq!(status_label(0), "none", "no response");
        assert_eq!(status_label(600), "none");
    }

    #[test]
    fn events_become_bounded_series_in_both_formats() {
        let m = Metrics::new("eleven_flash_v2_5", vec![Box::new(Fixed)]);
        m.event(&Event::Request(Method::Speak));
        m.event(&attempt(200, None));
        m.event(&attempt(429, Some("too_many_concurrent_requests")));
        m.event(&attempt(400, Some("a_status_nobody_knows")));
        m.event(&Event::SpeakRefused { cause: "something else" });
        let text = m.render(Format::Prometheus);
        for line in [
            "# TYPE unimrcp_elevenlabs_mrcp_requests_total counter",
            "unimrcp_elevenlabs_mrcp_requests_total{method=\"SPEAK\"} 1",
            "unimrcp_elevenlabs_upstream_requests_total{endpoint=\"primary\",status=\"429\",detail=\"too_many_concurrent_requests\"} 1",
            "unimrcp_elevenlabs_upstream_requests_total{endpoint=\"primary\",status=\"400\",detail=\"other\"} 1",
            "unimrcp_elevenlabs_upstream_requests_total{endpoint=\"primary\",status=\"200\",detail=\"none\"} 1",
            "unimrcp_elevenlabs_speaks_total{cause=\"other\"} 1",
            "unimrcp_elevenlabs_characters_sent_total 30",
            "unimrcp_elevenlabs_upstream_first_byte_seconds_count 3",
            "unimrcp_elevenlabs_build_info{version=\"0.1.0\",model_id=\"eleven_flash_v2_5\"} 1",
            "unimrcp_elevenlabs_channels 3",
            "unimrcp_elevenlabs_circuit_state{endpoint=\"fallback\"} 0",
            "# TYPE unimrcp_elevenlabs_cache_evictions_total counter",
            "unimrcp_elevenlabs_cache_evictions_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF line");
        let open = m.render(Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"));
        assert!(open.contains("# TYPE unimrcp_elevenlabs_mrcp_requests counter"));
    }
}
