//! Engine parameters (`<param name value>` in the engine block), parsed and
//! validated once in engine open. A bad value fails open with one log line
//! naming the param; the API key is never printed (`Debug` redacts it).
//!
//! `resolve` applies a SPEAK's headers on top of them. To add an engine
//! param: a field here, its name in `KNOWN_PARAMS`, its parsing in
//! `from_params`, and a line in README's table.

mod metrics;
mod resolve;
mod shared;

pub use metrics::MetricsConfig;

pub use resolve::{
    apply_language, clamp_gain, clamp_speed, dictionaries, resolve, takes_phonemes, takes_request_ids, voice_by_gender,
    voice_by_name, Refusal, Resolved,
};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use shared::{RedisCacheConfig, SharedConfig};

pub const DEFAULT_BASE_URL: &str = "https://api.elevenlabs.io";
pub const DEFAULT_MODEL_ID: &str = "eleven_flash_v2_5";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 8000;
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_MAX_BUFFER_MS: u64 = 2000;
pub const DEFAULT_MAX_RETRIES: u32 = 2;
pub const DEFAULT_CIRCUIT_FAILURE_THRESHOLD: u32 = 5;
pub const DEFAULT_CIRCUIT_OPEN_MS: u64 = 10_000;
pub const DEFAULT_MAX_SPEAK_CHARS: usize = 5000;
/// Idle connections to the upstream kept open for new channels.
pub const DEFAULT_PREWARM_CONNECTIONS: usize = 2;
/// How often an idle warm connection is used (a free request) so the
/// server does not close it. Well below the idle timeouts common in front
/// of HTTP APIs (60 s for cloud load balancers, 75 s nginx's default), so
/// one missed refresh still leaves room; at one small GET per connection
/// every 20 s the cost is nil.
pub const DEFAULT_PREWARM_REFRESH_MS: u64 = 20_000;
/// How long a channel's worker waits, idle after a SPEAK, before it gives
/// back the stack pages the SPEAK touched (synth/mod.rs `rest_stack`).
/// Giving them back costs a madvise whose TLB shootdown interrupts the
/// other CPUs, and the next SPEAK faults the same pages in again: 5-7 %
/// of the workers' perf samples in bench [10] when done after every SPEAK,
/// for 8 KiB per idle channel. An IVR call speaks a prompt, then listens
/// for the caller: a menu choice or a short answer comes within a few
/// seconds, a no-input reprompt after the recognizer's no-input timeout
/// (5-7 s on common platforms), and the next prompt follows at once. So
/// 10 s outlasts the gaps of a running dialog, where the pages would be
/// needed again within seconds, and gives them back from a channel that
/// has really gone quiet (a transfer to an agent, a hold, a long
/// recording): 8 KiB held for minutes there is worth one wake-up and one
/// madvise.
pub const DEFAULT_IDLE_STACK_RELEASE_MS: u64 = 10_000;

/// Every param we understand, for the unknown-param warning.
pub const KNOWN_PARAMS: &[&str] = &[
    "api_key",
    "api_key_file",
    "base_url",
    "voice_id",
    "model_id",
    "stability",
    "similarity_boost",
    "style",
    "speed",
    "use_speaker_boost",
    "language_code",
    "connect_timeout_ms",
    "first_byte_timeout_ms",
    "stall_timeout_ms",
    "max_buffer_ms",
    "spill_dir",
    "max_request_chars",
    "prebuffer_ms",
    "cache_enabled",
    "cache_dir",
    "cache_max_mb",
    "cache_max_age_s",
    "cache_warmup_file",
    "cache_warmup_rates",
    "voice_map",
    "voice_id_male",
    "voice_id_female",
    "voice_id_neutral",
    "seed",
    "apply_text_normalization",
    "pronunciation_dictionaries",
    "max_concurrent_requests",
    "queue_timeout_ms",
    "max_retries",
    "circuit_failure_threshold",
    "circuit_open_ms",
    "fallback_base_url",
    "max_speak_chars",
    "prewarm_connections",
    "prewarm_refresh_ms",
    "ca_file",
    // Several servers on one account (shared.rs).
    "redis_url",
    "budget_key",
    "lease_ttl_ms",
    "expected_servers",
    "local_share",
    "cache_redis",
    "cache_redis_max_bytes",
    "cache_redis_ttl_s",
    "metrics_listen",
    "metrics_textfile",
    "metrics_interval_ms",
    "idle_stack_release_ms",
];

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/unimrcp-elevenlabs";
pub const DEFAULT_CACHE_MAX_MB: u64 = 1024;
pub const DEFAULT_CACHE_MAX_AGE_S: u64 = 30 * 24 * 3600;

/// Characters ElevenLabs accepts in one request, per model (its published
/// limits). Longer SPEAKs are sent in parts.
pub fn model_char_limit(model_id: &str) -> usize {
    match model_id {
        "eleven_flash_v2_5" | "eleven_turbo_v2_5" => 40_000,
        "eleven_flash_v2" | "eleven_turbo_v2" => 30_000,
        "eleven_multilingual_v2" | "eleven_multilingual_v1" | "eleven_monolingual_v1" => 10_000,
        // eleven_v3 and models we do not know: the most conservative limit.
        _ => 5_000,
    }
}

/// Cache settings from the engine params.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub dir: std::path::PathBuf,
    pub max_bytes: u64,
    /// Entries older than this are not served (None: no limit).
    pub max_age: Option<Duration>,
}

/// ElevenLabs voice settings; `None` leaves the voice's own setting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VoiceSettings {
    pub stability: Option<f64>,
    pub similarity_boost: Option<f64>,
    pub style: Option<f64>,
    pub speed: Option<f64>,
    pub use_speaker_boost: Option<bool>,
}

#[derive(Clone, PartialEq)]
pub struct Config {
    pub api_key: String,
    pub base_url: String,
    pub voice_id: String,
    pub model_id: String,
    pub voice_settings: VoiceSettings,
    pub language_code: Option<String>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_buffer_ms: u64,
    /// Where audio beyond `max_buffer_ms` waits: None, in memory (a memfd);
    /// else unnamed files in this directory (synth/spill_files.rs).
    pub spill_dir: Option<PathBuf>,
    /// Audio held before a SPEAK's first frame plays (jitter reserve).
    pub prebuffer_ms: u64,
    /// Override of the model's per-request character limit.
    pub max_request_chars: Option<usize>,
    /// None: the cache is off.
    pub cache: Option<CacheConfig>,
    pub cache_warmup_file: Option<String>,
    /// Rates the warm-up synthesizes each prompt at.
    pub cache_warmup_rates: Vec<u32>,
    /// Voice-Name values and the voice ids they stand for.
    pub voice_map: Vec<(String, String)>,
    /// Voices for Voice-Gender when no Voice-Name is given.
    pub voice_id_male: Option<String>,
    pub voice_id_female: Option<String>,
    pub voice_id_neutral: Option<String>,
    /// ElevenLabs takes 0..=4294967295.
    pub seed: Option<u32>,
    /// auto, on or off.
    pub apply_text_normalization: Option<String>,
    /// Pronunciation dictionaries applied to every request, in order (at
    /// most `MAX_DICTIONARIES`).
    pub pronunciation_dictionaries: Vec<Locator>,
    /// The account's concurrency (None: learned from the upstream).
    pub max_concurrent_requests: Option<usize>,
    /// Longest a request waits in the queue for a slot.
    pub queue_timeout: Duration,
    /// Retries of a request that failed before any audio.
    pub max_retries: u32,
    /// Consecutive failures that open the circuit (0: never).
    pub circuit_failure_threshold: u32,
    pub circuit_open: Duration,
    /// Used while the primary's circuit is open.
    pub fallback_base_url: Option<String>,
    /// Characters one SPEAK may send upstream (0: no cap).
    pub max_speak_chars: usize,
    /// Warm connections to the primary kept for new channels (0: off).
    pub prewarm_connections: usize,
    /// An idle warm connection is refreshed this often.
    pub prewarm_refresh: Duration,
    /// CA certificates (PEM) to verify the upstream with; None: the
    /// system's.
    pub ca_file: Option<String>,
    /// The budget (and optionally a cache tier) shared through Redis with
    /// other servers on the same account; None: everything is local.
    pub shared: Option<SharedConfig>,
    /// The metrics exporter's outputs (README "Monitoring").
    pub metrics: MetricsConfig,
    /// A worker idle this long after a SPEAK gives back the stack pages
    /// the SPEAK touched (DEFAULT_IDLE_STACK_RELEASE_MS says why).
    pub idle_stack_release: Duration,
}

/// ElevenLabs applies at most this many pronunciation dictionaries to one
/// request (`pronunciation_dictionary_locators`).
pub const MAX_DICTIONARIES: usize = 3;

/// One pronunciation dictionary: its id and, optionally, a version of it
/// (without one ElevenLabs uses the latest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locator {
    pub id: String,
    pub version: Option<String>,
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}:{v}", self.id),
            None => f.write_str(&self.id),
        }
    }
}

impl Locator {
    /// `ID` or `ID:VERSION`, each part letters, digits, `_` and `-` (what
    /// ElevenLabs ids are made of), at most 64 characters.
    pub fn parse(entry: &str) -> Result<Locator, String> {
        let entry = entry.trim();
        let (id, version) = match entry.split_once(':') {
            Some((id, version)) => (id.trim(), Some(version.trim())),
            None => (entry, None),
        };
        if !valid_voice_id(id) || version.is_some_and(|v| !valid_voice_id(v)) {
            return Err(format!("'{entry}' is not a dictionary ID or ID:VERSION"));
        }
        Ok(Locator { id: id.to_owned(), version: version.map(str::to_owned) })
    }

    /// A comma-separated list of `ID[:VERSION]`; an empty value is an
    /// empty list. The count is not checked here (see `MAX_DICTIONARIES`).
    pub fn parse_list(raw: &str) -> Result<Vec<Locator>, String> {
        if raw.trim().is_empty() {
            return Ok(Vec::new());
        }
        raw.split(',').map(Locator::parse).collect()
    }
}

/// The reason a list is refused for having too many dictionaries.
pub fn too_many_dictionaries(n: usize) -> String {
    format!("{n} pronunciation dictionaries, ElevenLabs takes at most {MAX_DICTIONARIES}")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("voice_id", &self.voice_id)
            .field("model_id", &self.model_id)
            .field("voice_settings", &self.voice_settings)
            .field("language_code", &self.language_code)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("max_buffer_ms", &self.max_buffer_ms)
            .field("spill_dir", &self.spill_dir)
            .field("prebuffer_ms", &self.prebuffer_ms)
            .field("max_request_chars", &self.max_request_chars)
            .field("cache", &self.cache)
            .field("cache_warmup_file", &self.cache_warmup_file)
            .field("cache_warmup_rates", &self.cache_warmup_rates)
            .field("voice_map", &self.voice_map)
            .field("voice_id_male", &self.voice_id_male)
            .field("voice_id_female", &self.voice_id_female)
            .field("voice_id_neutral", &self.voice_id_neutral)
            .field("seed", &self.seed)
            .field("apply_text_normalization", &self.apply_text_normalization)
            .field("pronunciation_dictionaries", &self.pronunciation_dictionaries)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("queue_timeout", &self.queue_timeout)
            .field("max_retries", &self.max_retries)
            .field("circuit_failure_threshold", &self.circuit_failure_threshold)
            .field("circuit_open", &self.circuit_open)
            .field("fallback_base_url", &self.fallback_base_url)
            .field("max_speak_chars", &self.max_speak_chars)
            .field("prewarm_connections", &self.prewarm_connections)
            .field("prewarm_refresh", &self.prewarm_refresh)
            .field("ca_file", &self.ca_file)
            .field("shared", &self.shared)
            .field("metrics", &self.metrics)
            .field("idle_stack_release", &self.idle_stack_release)
            .finish()
    }
}

/// What was wrong with which param. Display never includes a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub param: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "engine param '{}': {}", self.param, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(param: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { param, problem: problem.into() }
}

/// Params as given, looked up by name (last one wins, as apr_table_set).
struct Params<'a>(&'a [(String, String)]);

impl<'a> Params<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }

    fn unit_float(&self, name: &'static str, min: f64, max: f64) -> Result<Option<f64>, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        let value: f64 = raw.parse().map_err(|_| err(name, format!("'{raw}' is not a number")))?;
        if !value.is_finite() || value < min || value > max {
            return Err(err(name, format!("{raw} is outside {min}..={max}")));
        }
        Ok(Some(value))
    }

    fn millis(&self, name: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        let value: u64 = raw.parse().map_err(|_| err(name, format!("'{raw}' is not a whole number")))?;
        if value < min || value > max {
            return Err(err(name, format!("{value} is outside {min}..={max}")));
        }
        Ok(value)
    }

    fn boolean(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(err(name, format!("'{raw}' is not true or false"))),
        }
    }
}

/// An http(s) base URL, without a trailing slash.
fn http_url(param: &'static str, raw: &str) -> Result<String, ConfigError> {
    let url = raw.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.len() <= "https://".len()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(param, format!("'{url}' is not an http(s) URL")));
    }
    Ok(url)
}

/// Voice ids go into the URL path: allow only what ElevenLabs ids are made of.
pub fn valid_voice_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_language_code(code: &str) -> bool {
    (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphabetic())
}

impl Config {
    /// Parses and validates. `read_file` reads `api_key_file` (injected so
    /// tests need no files).
    pub fn from_params(
        params: &[(String, String)],
        read_file: impl Fn(&str) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let p = Params(params);
        let api_key = match (p.get("api_key"), p.get("api_key_file")) {
            (Some(key), _) if !key.is_empty() => key.to_owned(),
            (_, Some(path)) if !path.is_empty() => {
                let text = read_file(path).map_err(|e| err("api_key_file", format!("cannot read '{path}': {e}")))?;
                let key = text.trim().to_owned();
                if key.is_empty() {
                    return Err(err("api_key_file", format!("'{path}' is empty")));
                }
                key
            }
            _ => return Err(err("api_key", "missing: set api_key or api_key_file")),
        };
        if api_key.chars().any(|c| c.is_control() || c == ' ') {
            // Said without the value: it is a secret.
            return Err(err("api_key", "contains spaces or control characters"));
        }

        let base_url = http_url("base_url", p.get("base_url").unwrap_or(DEFAULT_BASE_URL))?;
        let fallback_base_url = match p.get("fallback_base_url") {
            None | Some("") => None,
            Some(url) => Some(http_url("fallback_base_url", url)?),
        };

        let voice_id = p.get("voice_id").unwrap_or("").to_owned();
        if voice_id.is_empty() {
            return Err(err("voice_id", "missing: set the ElevenLabs voice id to speak with"));
        }
        if !valid_voice_id(&voice_id) {
            return Err(err("voice_id", format!("'{voice_id}' is not an ElevenLabs voice id")));
        }

        let model_id = p.get("model_id").unwrap_or(DEFAULT_MODEL_ID).to_owned();
        if model_id.is_empty()
            || !model_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(err("model_id", format!("'{model_id}' is not a model id")));
        }

        let voice_settings = VoiceSettings {
            stability: p.unit_float("stability", 0.0, 1.0)?,
            similarity_boost: p.unit_float("similarity_boost", 0.0, 1.0)?,
            style: p.unit_float("style", 0.0, 1.0)?,
            // The range ElevenLabs accepts for voice_settings.speed.
            speed: p.unit_float("speed", 0.7, 1.2)?,
            use_speaker_boost: p.boolean("use_speaker_boost")?,
        };

        let language_code = match p.get("language_code") {
            None | Some("") => None,
            Some(code) if valid_language_code(code) => Some(code.to_ascii_lowercase()),
            Some(code) => return Err(err("language_code", format!("'{code}' is not an ISO 639 language code"))),
        };

        let cache = if p.boolean("cache_enabled")?.unwrap_or(true) {
            let dir = p.get("cache_dir").unwrap_or(DEFAULT_CACHE_DIR);
            if dir.is_empty() || !dir.starts_with('/') {
                return Err(err("cache_dir", format!("'{dir}' is not an absolute path")));
            }
            let max_mb = p.millis("cache_max_mb", DEFAULT_CACHE_MAX_MB, 1, 10_000_000)?;
            let max_age = p.millis("cache_max_age_s", DEFAULT_CACHE_MAX_AGE_S, 0, 100 * 365 * 24 * 3600)?;
            Some(CacheConfig {
                dir: dir.into(),
                max_bytes: max_mb * 1024 * 1024,
                max_age: (max_age > 0).then(|| Duration::from_secs(max_age)),
            })
        } else {
            None
        };
        let cache_warmup_file = p.get("cache_warmup_file").filter(|f| !f.is_empty()).map(str::to_owned);
        let mut cache_warmup_rates = Vec::new();
        for rate in p.get("cache_warmup_rates").unwrap_or("8000").split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match rate.parse::<u32>() {
                Ok(r) if crate::media::SAMPLE_RATES.contains(&r) => cache_warmup_rates.push(r),
                _ => {
                    return Err(err("cache_warmup_rates", format!("'{rate}' is not one of 8000, 16000, 32000, 48000")))
                }
            }
        }

        let mut voice_map = Vec::new();
        for entry in p.get("voice_map").unwrap_or("").split([';', ',']).map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some((name, id)) if !name.trim().is_empty() && valid_voice_id(id.trim()) => {
                    voice_map.push((name.trim().to_owned(), id.trim().to_owned()))
                }
                _ => return Err(err("voice_map", format!("'{entry}' is not Name=voice_id"))),
            }
        }
        let gender_voice = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match p.get(name) {
                None | Some("") => Ok(None),
                Some(id) if valid_voice_id(id) => Ok(Some(id.to_owned())),
                Some(id) => Err(err(name, format!("'{id}' is not an ElevenLabs voice id"))),
            }
        };
        let seed = match p.get("seed") {
            None | Some("") => None,
            Some(raw) => Some(
                raw.parse::<u32>()
                    .map_err(|_| err("seed", format!("'{raw}' is not a whole number in 0..=4294967295")))?,
            ),
        };
        let apply_text_normalization = match p.get("apply_text_normalization").map(str::to_ascii_lowercase) {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) if matches!(v.as_str(), "auto" | "on" | "off") => Some(v),
            Some(v) => return Err(err("apply_text_normalization", format!("'{v}' is not auto, on or off"))),
        };

        let pronunciation_dictionaries = Locator::parse_list(p.get("pronunciation_dictionaries").unwrap_or(""))
            .map_err(|e| err("pronunciation_dictionaries", e))?;
        if pronunciation_dictionaries.len() > MAX_DICTIONARIES {
            return Err(err("pronunciation_dictionaries", too_many_dictionaries(pronunciation_dictionaries.len())));
        }

        let first_byte_timeout_ms = p.millis("first_byte_timeout_ms", DEFAULT_FIRST_BYTE_TIMEOUT_MS, 1, 120_000)?;
        let max_concurrent_requests = match p.get("max_concurrent_requests") {
            None | Some("") => None,
            Some(_) => Some(p.millis("max_concurrent_requests", 0, 1, 10_000)? as usize),
        };

        let ca_file = match p.get("ca_file") {
            None | Some("") => None,
            Some(path) if !path.starts_with('/') => {
                return Err(err("ca_file", format!("'{path}' is not an absolute path")))
            }
            Some(path) => Some(path.to_owned()),
        };

        let shared = shared::parse(&p, &api_key, max_concurrent_requests, cache.is_some())?;
        let metrics = metrics::parse(&p)?;

        Ok(Config {
            prewarm_connections: p.millis("prewarm_connections", DEFAULT_PREWARM_CONNECTIONS as u64, 0, 64)? as usize,
            prewarm_refresh: Duration::from_millis(p.millis(
                "prewarm_refresh_ms",
                DEFAULT_PREWARM_REFRESH_MS,
                100,
                600_000,
            )?),
            ca_file,
            shared,
            metrics,
            max_concurrent_requests,
            queue_timeout: Duration::from_millis(p.millis("queue_timeout_ms", first_byte_timeout_ms, 0, 600_000)?),
            max_retries: p.millis("max_retries", u64::from(DEFAULT_MAX_RETRIES), 0, 10)? as u32,
            circuit_failure_threshold: p.millis(
                "circuit_failure_threshold",
                u64::from(DEFAULT_CIRCUIT_FAILURE_THRESHOLD),
                0,
                1000,
            )? as u32,
            circuit_open: Duration::from_millis(p.millis("circuit_open_ms", DEFAULT_CIRCUIT_OPEN_MS, 1, 3_600_000)?),
            fallback_base_url,
            max_speak_chars: p.millis("max_speak_chars", DEFAULT_MAX_SPEAK_CHARS as u64, 0, 10_000_000)? as usize,
            pronunciation_dictionaries,
            voice_map,
            voice_id_male: gender_voice("voice_id_male")?,
            voice_id_female: gender_voice("voice_id_female")?,
            voice_id_neutral: gender_voice("voice_id_neutral")?,
            seed,
            apply_text_normalization,
            cache,
            cache_warmup_file,
            cache_warmup_rates,
            api_key,
            base_url,
            voice_id,
            model_id,
            voice_settings,
            language_code,
            connect_timeout: Duration::from_millis(p.millis(
                "connect_timeout_ms",
                DEFAULT_CONNECT_TIMEOUT_MS,
                1,
                120_000,
            )?),
            first_byte_timeout: Duration::from_millis(first_byte_timeout_ms),
            stall_timeout: Duration::from_millis(p.millis("stall_timeout_ms", DEFAULT_STALL_TIMEOUT_MS, 1, 120_000)?),
            max_buffer_ms: p.millis("max_buffer_ms", DEFAULT_MAX_BUFFER_MS, 200, 60_000)?,
            spill_dir: match p.get("spill_dir") {
                None | Some("") => None,
                Some(dir) if dir.starts_with('/') => Some(dir.into()),
                Some(dir) => return Err(err("spill_dir", format!("'{dir}' is not an absolute path"))),
            },
            prebuffer_ms: p.millis("prebuffer_ms", 0, 0, 2_000)?,
            max_request_chars: match p.get("max_request_chars") {
                None => None,
                Some(raw) => {
                    Some(raw.parse::<usize>().ok().filter(|n| (20..=100_000).contains(n)).ok_or_else(|| {
                        err("max_request_chars", format!("'{raw}' is not a whole number in 20..=100000"))
                    })?)
                }
            },
            idle_stack_release: Duration::from_millis(p.millis(
                "idle_stack_release_ms",
                DEFAULT_IDLE_STACK_RELEASE_MS,
                0,
                3_600_000,
            )?),
        })
    }

    /// Characters per upstream request for this engine's model.
    pub fn max_request_chars(&self) -> usize {
        self.max_request_chars.unwrap_or_else(|| model_char_limit(&self.model_id))
    }

    /// Params present that we do not know (likely typos), for a warning.
    pub fn unknown_params(params: &[(String, String)]) -> Vec<String> {
        params
            .iter()
            .filter(|(k, _)| !KNOWN_PARAMS.iter().any(|known| known.eq_ignore_ascii_case(k)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A config from the two required params plus `extra`.
    fn with_key_and_voice(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut p = vec![("api_key", "k"), ("voice_id", "v")];
        p.extend_from_slice(extra);
        Config::from_params(&params(&p), no_file)
    }

    fn no_file(_: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }

    fn base() -> Vec<(String, String)> {
        params(&[("api_key", "sk_secret"), ("voice_id", "JBFqnCBsd6RMkjVDRZzb")])
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_params(&base(), no_file).unwrap();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.model_id, DEFAULT_MODEL_ID);
        assert_eq!(c.connect_timeout, Duration::from_millis(5000));
        assert_eq!(c.max_buffer_ms, DEFAULT_MAX_BUFFER_MS);
        assert_eq!(c.voice_settings, VoiceSettings::default());
        assert_eq!(c.language_code, None);
    }

    #[test]
    fn every_setting_parses() {
        let mut p = base();
        p.extend(params(&[
            ("base_url", "http://127.0.0.1:9/"),
            ("model_id", "eleven_multilingual_v2"),
            ("stability", "0.4"),
            ("similarity_boost", "0.9"),
            ("style", "0"),
            ("speed", "1.1"),
            ("use_speaker_boost", "false"),
            ("language_code", "DE"),
            ("connect_timeout_ms", "250"),
            ("first_byte_timeout_ms", "700"),
            ("stall_timeout_ms", "900"),
            ("max_buffer_ms", "1500"),
        ]));
        let c = Config::from_params(&p, no_file).unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        assert_eq!(c.model_id, "eleven_multilingual_v2");
        assert_eq!(c.voice_settings.stability, Some(0.4));
        assert_eq!(c.voice_settings.similarity_boost, Some(0.9));
        assert_eq!(c.voice_settings.style, Some(0.0));
        assert_eq!(c.voice_settings.speed, Some(1.1));
        assert_eq!(c.voice_settings.use_speaker_boost, Some(false));
        assert_eq!(c.language_code.as_deref(), Some("de"));
        assert_eq!(c.first_byte_timeout, Duration::from_millis(700));
        assert_eq!(c.stall_timeout, Duration::from_millis(900));
        assert_eq!(c.max_buffer_ms, 1500);
        assert_eq!(c.max_request_chars(), 10_000, "multilingual v2's limit");
        p.push(("max_request_chars".into(), "250".into()));
        assert_eq!(Config::from_params(&p, no_file).unwrap().max_request_chars(), 250);
    }

    #[test]
    fn bad_values_name_the_param() {
        for (name, value) in [
            ("stability", "1.5"),
            ("similarity_boost", "x"),
            ("speed", "2"),
            ("use_speaker_boost", "maybe"),
            ("language_code", "english"),
            ("connect_timeout_ms", "-1"),
            ("first_byte_timeout_ms", "0"),
            ("max_buffer_ms", "10"),
            ("max_request_chars", "5"),
            ("base_url", "ftp://x"),
            ("voice_id", "../../etc"),
            ("model_id", "a b"),
        ] {
            let mut p = base();
            p.push((name.into(), value.into()));
            let e = Config::from_params(&p, no_file).unwrap_err();
            assert_eq!(e.param, name, "{value}");
        }
    }

    #[test]
    fn missing_key_and_voice_are_errors_and_the_key_is_never_shown() {
        let e = Config::from_params(&params(&[("voice_id", "v")]), no_file).unwrap_err();
        assert_eq!(e.param, "api_key");
        let e = Config::from_params(&params(&[("api_key", "sk_secret")]), no_file).unwrap_err();
        assert_eq!(e.param, "voice_id");
        let e = Config::from_params(&params(&[("api_key", "sk secret"), ("voice_id", "v")]), no_file).unwrap_err();
        assert!(!e.to_string().contains("secret"));
        let c = Config::from_params(&base(), no_file).unwrap();
        assert!(!format!("{c:?}").contains("sk_secret"));
    }

    #[test]
    fn key_file_is_read_and_trimmed() {
        let p = params(&[("api_key_file", "/run/key"), ("voice_id", "v1")]);
        let c = Config::from_params(&p, |path| {
            assert_eq!(path, "/run/key");
            Ok("  sk_from_file\n".into())
        })
        .unwrap();
        assert_eq!(c.api_key, "sk_from_file");
        let e = Config::from_params(&p, no_file).unwrap_err();
        assert_eq!(e.param, "api_key_file");
        assert!(e.to_string().contains("/run/key"));
    }

    #[test]
    fn unknown_params_are_listed() {
        let mut p = base();
        p.push(("voice_idd".into(), "x".into()));
        assert_eq!(Config::unknown_params(&p), vec!["voice_idd".to_string()]);
    }

    #[test]
    fn pronunciation_dictionaries_are_ids_with_optional_versions() {
        let with = |v: &str| {
            let mut p = base();
            p.push(("pronunciation_dictionaries".into(), v.into()));
            Config::from_params(&p, no_file)
        };
        assert_eq!(with("").unwrap().pronunciation_dictionaries, vec![]);
        let c = with(" dictA , dictB:ver_2,dict-C ").unwrap();
        assert_eq!(
            c.pronunciation_dictionaries,
            vec![
                Locator { id: "dictA".into(), version: None },
                Locator { id: "dictB".into(), version: Some("ver_2".into()) },
                Locator { id: "dict-C".into(), version: None },
            ]
        );
        assert_eq!(c.pronunciation_dictionaries[1].to_string(), "dictB:ver_2");
        for bad in ["a,b,c,d", "a,,b", "a:b:c", "a:", ":v", "d ict", "a/b"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.param, "pronunciation_dictionaries", "{bad}");
        }
        assert!(with("a,b,c,d").unwrap_err().problem.contains("at most 3"));
    }

    #[test]
    fn seed_takes_the_apis_range() {
        let with = |v: &str| Config::from_params(&params(&[("api_key", "k"), ("voice_id", "v"), ("seed", v)]), no_file);
        assert_eq!(with("0").unwrap().seed, Some(0));
        assert_eq!(with("4294967295").unwrap().seed, Some(u32::MAX));
        for bad in ["4294967296", "-1", "18446744073709551615", "x"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.param, "seed", "{bad}");
            assert!(e.problem.contains("0..=4294967295"), "{bad}: {}", e.problem);
        }
    }

    #[test]
    fn capacity_params_have_their_defaults_and_bounds() {
        let with = with_key_and_voice;
        let c = with(&[]).unwrap();
        assert_eq!(c.max_concurrent_requests, None, "learned");
        assert_eq!(c.queue_timeout, c.first_byte_timeout, "the first-byte budget");
        assert_eq!((c.max_retries, c.circuit_failure_threshold), (2, 5));
        assert_eq!(c.circuit_open, Duration::from_millis(10_000));
        assert_eq!((c.fallback_base_url.as_deref(), c.max_speak_chars), (None, 5000));
        let c = with(&[
            ("max_concurrent_requests", "15"),
            ("first_byte_timeout_ms", "3000"),
            ("max_retries", "0"),
            ("circuit_failure_threshold", "0"),
            ("fallback_base_url", "https://api.eu.residency.elevenlabs.io/"),
        ])
        .unwrap();
        assert_eq!(c.max_concurrent_requests, Some(15));
        assert_eq!(c.queue_timeout, Duration::from_millis(3000));
        assert_eq!(c.fallback_base_url.as_deref(), Some("https://api.eu.residency.elevenlabs.io"));
        for (name, bad) in [
            ("max_concurrent_requests", "0"),
            ("max_retries", "11"),
            ("circuit_open_ms", "0"),
            ("fallback_base_url", "ftp://x"),
            ("max_speak_chars", "-5"),
        ] {
            assert_eq!(with(&[(name, bad)]).unwrap_err().param, name, "{name}={bad}");
        }
    }

    #[test]
    fn connection_params_have_their_defaults_and_bounds() {
        let with = with_key_and_voice;
        let c = with(&[]).unwrap();
        assert_eq!(c.prewarm_connections, 2);
        assert_eq!(c.prewarm_refresh, Duration::from_millis(20_000));
        assert_eq!(c.ca_file, None);
        let c =
            with(&[("prewarm_connections", "0"), ("prewarm_refresh_ms", "500"), ("ca_file", "/etc/ca.pem")]).unwrap();
        assert_eq!((c.prewarm_connections, c.prewarm_refresh), (0, Duration::from_millis(500)));
        assert_eq!(c.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(with(&[("ca_file", "")]).unwrap().ca_file, None, "empty: unset");
        for (name, bad) in [
            ("prewarm_connections", "65"),
            ("prewarm_connections", "-1"),
            ("prewarm_refresh_ms", "99"),
            ("prewarm_refresh_ms", "600001"),
            ("ca_file", "relative.pem"),
        ] {
            assert_eq!(with(&[(name, bad)]).unwrap_err().param, name, "{name}={bad}");
        }
    }

    #[test]
    fn spill_dir_is_memory_unless_an_absolute_directory_is_named() {
        let with = with_key_and_voice;
        assert_eq!(with(&[]).unwrap().spill_dir, None, "memory by default");
        assert_eq!(with(&[("spill_dir", "")]).unwrap().spill_dir, None);
        assert_eq!(with(&[("spill_dir", "/var/tmp")]).unwrap().spill_dir, Some(PathBuf::from("/var/tmp")));
        assert_eq!(with(&[("spill_dir", "tmp")]).unwrap_err().param, "spill_dir", "relative");
    }

    #[test]
    fn idle_stack_release_has_its_default_and_bounds() {
        let with = with_key_and_voice;
        assert_eq!(with(&[]).unwrap().idle_stack_release, Duration::from_millis(DEFAULT_IDLE_STACK_RELEASE_MS));
        assert_eq!(with(&[("idle_stack_release_ms", "0")]).unwrap().idle_stack_release, Duration::ZERO, "0: at once");
        let c = with(&[("idle_stack_release_ms", "3600000")]).unwrap();
        assert_eq!(c.idle_stack_release, Duration::from_secs(3600));
        for bad in ["3600001", "-1", "soon"] {
            assert_eq!(with(&[("idle_stack_release_ms", bad)]).unwrap_err().param, "idle_stack_release_ms", "{bad}");
        }
    }
}
