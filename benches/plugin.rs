//! Benchmark binary that prints figures (it is not a timed test).
//!
//! ```text
//! cargo bench --bench plugin
//! ```
//!
//! It loads the built plugin into the in-process test host, points it at the
//! local ElevenLabs-compatible upstream on 127.0.0.1 (paced at real time),
//! runs the media clock in real time and prints:
//!
//! 1. the cost of `read_frame` while 100 channels speak at once (16 kHz);
//! 2. the latency the plugin adds between SPEAK and the first audible frame,
//!    beyond the upstream's own first-byte delay, at 1, 50 and 200 channels
//!    (8 kHz);
//! 3. process RSS, thread count and open file descriptors at the peak of
//!    the 200-channel run, and the per-channel buffer in effect;
//! 4. the prompt cache: time to first audible frame on a hit vs a miss
//!    (8 kHz, one channel), and the hit rate and upstream request count when
//!    100 channels speak 10 distinct prompts for several rounds.
//!
//! 5. speech markers: how long after the media thread reads the frame that
//!    holds a `<mark>`'s audio the SPEECH-MARKER event is sent, with 50
//!    channels speaking SSML at once (8 kHz).
//! 6. upstream capacity: queue wait and SPEAK time for 30 channels on a
//!    plan of 5 slots, the time a slot is held per second of audio, and
//!    SPEAK-COMPLETE time while the circuit is open.
//! 7. warm connections: time to first audible frame of a new channel's
//!    first SPEAK vs a later one, over TLS with a 100 ms handshake, with
//!    and without pre-warm.
//! 8. several servers: time to acquire a slot of the budget shared through
//!    Redis on loopback, and the upstream requests the shared cache tier
//!    saves for two servers (skipped without `redis-server`).
//! 9. metrics: read_frame cost and added latency of 100 channels with and
//!    without 4 clients scraping `/metrics` as fast as they can, and the
//!    scrapes served per second (`cargo bench --bench plugin -- metrics`
//!    runs only this one).
//! 10. CPU per second of audio by thread (media, MRCP, workers) and worker
//!     wake-ups, 100 channels, a fresh channel's first SPEAK and its
//!     second, against a baseline plugin playing from memory (the host's C
//!     fixture) (benches/plugin/cost.rs;
//!     `cargo bench --bench plugin -- cost` runs only 10-12).
//! 11. RSS over 10 batches of 200 channels, both plugins.
//! 12. latency, read_frame cost and resources at 500 channels.
//! 13. the plugin in a real unimrcpserver against UniMRCP's demosynth in the
//!     same server, driven by umc: server CPU per second of audio by thread
//!     (benches/plugin/realserver.rs; needs `UNIMRCP_HOME`, skipped without;
//!     `cargo bench --bench plugin -- real` runs only this one).
//!
//! Every SPEAK must end in `SPEAK-COMPLETE 000`; if one does not, the
//! benchmark prints an ERROR line and exits non-zero. Scenarios run one after
//! another (one host server per process at a time), each with its own
//! server and upstream, and the whole run takes about a minute. Scenarios
//! 1-3 run with the cache off; scenario 4 turns it on with a fresh
//! temporary cache dir per part, removed afterwards.
//!
//! The plugin, the host and the upstream share this one process, so every
//! plugin-to-upstream connection costs descriptors at both ends: the
//! 200-channel run holds about 1,200 (6 per channel, see
//! [`FDS_PER_CHANNEL`]), more than the usual soft limit on open files,
//! 1024. Before any scenario the benchmark raises its soft `RLIMIT_NOFILE`
//! towards [`OPEN_FILES_WANTED`] (never above the hard limit); without that,
//! `socket()` in libcurl and `accept()` in the upstream fail with EMFILE and
//! most SPEAKs of that run end `004`.

#[path = "plugin/budget.rs"]
mod budget;
#[path = "plugin/capacity.rs"]
mod capacity;
#[path = "plugin/connections.rs"]
mod connections;
#[path = "plugin/cost.rs"]
mod cost;
#[path = "plugin/metrics.rs"]
mod metrics;
#[path = "plugin/realserver.rs"]
mod realserver;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use unimrcp_shim::host::{
    thread_count, thread_names, Channel, Kind, MediaClock, PluginLibrary, Request, Server, ServerConfig,
};
use unimrcp_shim::upstream::{audio_ms_for_text, char_start_ms, Behavior, MockUpstream, RecordedRequest, MS_PER_CHAR};

const API_KEY: &str = "bench-key";
const VOICE_ID: &str = "bench-voice";
/// Audio the plugin may hold per channel ahead of the caller.
const MAX_BUFFER_MS: u64 = 2000;
/// What the plugin allocates per channel for it (32 bytes/ms, the 16 kHz
/// rate, at least 16 KiB + one 640-byte frame).
const BUFFER_BYTES: u64 = {
    let b = MAX_BUFFER_MS * 32;
    if b < 16 * 1024 + 1920 {
        16 * 1024 + 1920
    } else {
        b
    }
};
const TIMEOUT_MS: &str = "10000";
/// The upstream's configured wait before its first byte.
const FIRST_BYTE_DELAY: Duration = Duration::from_millis(100);
/// One media tick.
const TICK: Duration = Duration::from_millis(10);

/// Scenario 1: channels, rate, audio per SPEAK, ticks measured.
const FRAME_CHANNELS: usize = 100;
const FRAME_RATE: u32 = 16000;
const FRAME_AUDIO_MS: u32 = 4200;
const FRAME_WINDOW_TICKS: usize = 300;

/// Scenario 2: (channels, rounds); each round is one SPEAK per channel.
const LATENCY_RUNS: [(usize, usize); 3] = [(1, 20), (50, 4), (200, 3)];
const LATENCY_RATE: u32 = 8000;
const LATENCY_AUDIO_MS: u32 = 300;
/// The SPEAKs of a round are sent evenly over this long, so that they fall
/// on every phase of the 10 ms media tick (as independent calls would).
const LATENCY_SPREAD: Duration = Duration::from_millis(100);

/// Scenario 4a: distinct prompts spoken once (misses), then again (hits),
/// one after the other on one channel.
const CACHE_PROMPTS: usize = 20;
const CACHE_RATE: u32 = 8000;
const CACHE_AUDIO_MS: u32 = 300;
/// Scenario 4b: channels, distinct prompts (channel i speaks prompt
/// i % CACHE_DISTINCT), rounds (the SPEAKs of a round are sent together).
const CACHE_CHANNELS: usize = 100;
const CACHE_DISTINCT: usize = 10;
const CACHE_ROUNDS: usize = 3;

/// Descriptors each channel of a latency run holds at its peak, in this one
/// process: the plugin's eventfd (its worker's waker), libcurl's multi
/// wake-up socketpair (2) and its connection to the upstream, plus the
/// upstream's end of that connection and the clone it keeps to shut it down
/// (measured: 1,206 descriptors in all at 200 channels with libcurl 7.88).
/// The real server holds only the plugin's share.
const FDS_PER_CHANNEL: u64 = 6;
/// Descriptors besides the channels' (stdio, the listener, the library's).
const FDS_BASE: u64 = 64;
/// The soft limit on open files the benchmark asks for: three times what
/// the 200-channel run needs, so a libcurl that keeps more per handle fits.
const OPEN_FILES_WANTED: libc::rlim_t = 4096;

/// What went wrong, printed as ERROR lines; any makes the exit code non-zero.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn add(&mut self, what: String) {
        println!("ERROR: {what}");
        self.0.push(what);
    }
}

/// Engine params; `cache_dir` turns the prompt cache on, in that dir.
fn engine_params(base_url: &str, cache_dir: Option<&Path>) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("api_key", API_KEY.to_string()),
        ("voice_id", VOICE_ID.to_string()),
        ("base_url", base_url.to_string()),
        ("max_buffer_ms", MAX_BUFFER_MS.to_string()),
        ("first_byte_timeout_ms", TIMEOUT_MS.to_string()),
        ("stall_timeout_ms", TIMEOUT_MS.to_string()),
        // The other scenarios count upstream requests; warm connections
        // (GET /v1/models) have their own scenario, [7].
        ("prewarm_connections", "0".to_string()),
    ];
    match cache_dir {
        Some(dir) => {
            params.push(("cache_enabled", "true".to_string()));
            params.push(("cache_dir", dir.to_string_lossy().into_owned()));
        }
        // Latency and read_frame are measured upstream; cache figures come
        // from their own scenario.
        None => params.push(("cache_enabled", "false".to_string())),
    }
    params
}

fn start_server(plugin: &Path, mock: &MockUpstream) -> Result<Server, String> {
    start_server_with_cache(plugin, mock, None)
}

fn start_server_with_cache(plugin: &Path, mock: &MockUpstream, cache_dir: Option<&Path>) -> Result<Server, String> {
    start_server_with(plugin, mock, cache_dir, &[])
}

/// A server with `extra` engine params on top of the benchmark's (they win).
fn start_server_with(
    plugin: &Path,
    mock: &MockUpstream,
    cache_dir: Option<&Path>,
    extra: &[(&str, &str)],
) -> Result<Server, String> {
    let mut params: Vec<(String, String)> =
        engine_params(&mock.base_url(), cache_dir).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for (k, v) in extra {
        params.retain(|(name, _)| name != k);
        params.push((k.to_string(), v.to_string()));
    }
    let config = ServerConfig {
        params: Some(params),
        log_sources: vec!["ELEVENLABS-SYNTH".into()],
        clock: MediaClock::RealTime,
        ..ServerConfig::default()
    };
    Server::start(plugin, config).map_err(|e| format!("server start: {e}"))
}

fn open_channels(server: &Server, n: usize, rate: u32) -> Result<Vec<Channel>, String> {
    (0..n).map(|i| server.open_channel(rate).map_err(|e| format!("opening channel {i}: {e}"))).collect()
}

/// Closes every channel, then the server; the mock goes after it.
fn teardown(server: Server, channels: Vec<Channel>, mock: MockUpstream, failures: &mut Failures) {
    for ch in channels {
        let id = ch.id();
        if let Err(e) = ch.close() {
            failures.add(format!("closing {id}: {e}"));
        }
    }
    let violations = server.violations();
    if !violations.is_empty() {
        failures.add(format!("{} ABI violations detected by the host: {}", violations.len(), violations.join("; ")));
    }
    if let Err(e) = server.shutdown() {
        failures.add(format!("server shutdown: {e}"));
    }
    drop(mock);
}

/// Waits (until `deadline`) for the SPEAK-COMPLETE of each (channel, request)
/// and counts those with `Completion-Cause: 000`; the others become failures.
fn check_completions(
    label: &str,
    speaks: &[(usize, u32)],
    channels: &[Channel],
    deadline: Instant,
    failures: &mut Failures,
) -> usize {
    let mut ok = 0;
    let mut bad = Vec::new();
    for &(c, id) in speaks {
        let left = deadline.saturating_duration_since(Instant::now());
        match channels[c].wait_complete(id, left) {
            Some(m) if m.completion_cause == Some(0) => ok += 1,
            Some(m) => bad.push(format!(
                "{} SPEAK {id}: Completion-Cause {} ({})",
                channels[c].id(),
                m.header("Completion-Cause").unwrap_or("none"),
                m.completion_reason.as_deref().unwrap_or("no reason")
            )),
            None => bad.push(format!("{} SPEAK {id}: no SPEAK-COMPLETE in time", channels[c].id())),
        }
    }
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        failures.add(format!(
            "{label}: {} of {} SPEAKs did not complete with 000: {}",
            bad.len(),
            speaks.len(),
            shown.join("; ")
        ));
    }
    ok
}

/// Nearest-rank percentile of sorted values.
fn pct<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed milliseconds from `a` to `b`.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        ms(b - a)
    } else {
        -ms(a - b)
    }
}

fn sorted_f64(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A text whose derived audio length is about `audio_ms` (55 ms per char).
fn text_of_length(prefix: &str, audio_ms: u32) -> String {
    const FILLER: &str = " The quick brown fox jumps over the lazy dog while the caller waits on the line.";
    let chars = (audio_ms / MS_PER_CHAR) as usize;
    let mut s = prefix.to_string();
    while s.len() < chars {
        s.push_str(FILLER);
    }
    s.truncate(chars);
    s
}

/// The limit on open files: (soft before, soft now, hard).
struct OpenFiles {
    before: libc::rlim_t,
    now: libc::rlim_t,
    hard: libc::rlim_t,
}

fn rlimit_text(v: libc::rlim_t) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Raises the soft limit on open files to [`OPEN_FILES_WANTED`], or to the
/// hard limit if that is lower; a higher soft limit is kept.
fn raise_open_files_limit() -> std::io::Result<OpenFiles> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit that we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if before != libc::RLIM_INFINITY && before < OPEN_FILES_WANTED {
        let raised = libc::rlimit { rlim_cur: OPEN_FILES_WANTED.min(lim.rlim_max), rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads one valid rlimit; the soft limit stays
        // within the hard one, so no privilege is needed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(OpenFiles { before, now: lim.rlim_cur, hard: lim.rlim_max })
}

/// Open descriptors of this process, by kind (`socket`, `eventfd`, …),
/// most first.
fn fd_kinds() -> Vec<(String, usize)> {
    let mut map: HashMap<String, usize> = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten() {
        let target = std::fs::read_link(entry.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = match target.split_once(':') {
            Some(("anon_inode", what)) => what.trim_matches(|c| c == '[' || c == ']').to_string(),
            Some((kind, _)) if !kind.starts_with('/') => kind.to_string(),
            _ => "file".to_string(),
        };
        *map.entry(kind).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Involuntary context switches of the thread named `name` (the first one).
fn involuntary_switches(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("nonvoluntary_ctxt_switches:"))?;
            return line.split_whitespace().nth(1)?.parse().ok();
        }
    }
    None
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---------------------------------------------------------------------------
// 1. read_frame cost with 100 channels speaking

fn bench_read_frame(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    println!();
    println!(
        "[1] read_frame cost: {FRAME_CHANNELS} channels speaking at once, LPCM {} kHz, real-time clock, upstream at speed 1.0",
        FRAME_RATE / 1000
    );
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(Behavior::realtime().with_first_byte_delay(FIRST_BYTE_DELAY));
    let server = start_server(plugin, &mock)?;
    let channels = match open_channels(&server, FRAME_CHANNELS, FRAME_RATE) {
        Ok(c) => c,
        Err(e) => {
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };

    let texts: Vec<String> = (0..FRAME_CHANNELS)
        .map(|i| text_of_length(&format!("Channel {i} reads a long prompt."), FRAME_AUDIO_MS))
        .collect();
    let audio_ms = audio_ms_for_text(&texts[0]);
    let switches_before = involuntary_switches("MPF Scheduler");
    let run_start = Instant::now();
    let speaks: Vec<(usize, u32)> = channels.iter().enumerate().map(|(i, ch)| (i, ch.speak(&texts[i]))).collect();
    let deadline = Instant::now() + Duration::from_millis(u64::from(audio_ms)) + Duration::from_secs(15);
    let ok = check_completions("read_frame run", &speaks, &channels, deadline, failures);
    let preempted = involuntary_switches("MPF Scheduler").zip(switches_before).map(|(b, a)| b.saturating_sub(a));
    let run_secs = run_start.elapsed().as_secs_f64();
    println!("  SPEAK-COMPLETE 000: {ok} of {} SPEAKs", speaks.len());

    // Each tick appends one duration per attached stream, in attach order
    // (= channel open order), so a tick's calls sit at a known offset of
    // read_frame_nanos once we know how many streams each tick read. The
    // frame logs say that; take them first, so read_frame_nanos (appended
    // at the end of each tick) covers every tick they contain.
    let logs: Vec<_> = channels.iter().map(Channel::frames).collect();
    let nanos = server.read_frame_nanos();
    let ticks_known = logs.iter().filter_map(|l| l.frames.last().map(|f| f.tick)).min().unwrap_or(0);
    let mut per_tick = vec![0usize; ticks_known as usize + 1];
    for log in &logs {
        for f in log.frames.iter().filter(|f| f.tick <= ticks_known) {
            per_tick[f.tick as usize] += 1;
        }
    }
    let mut offset = vec![0usize; per_tick.len() + 1];
    for (t, n) in per_tick.iter().enumerate() {
        offset[t + 1] = offset[t] + n;
    }
    if offset[per_tick.len()] > nanos.len() {
        failures.add(format!(
            "read_frame_nanos has {} entries but the frame logs count {} calls",
            nanos.len(),
            offset[per_tick.len()]
        ));
    }

    // Ticks in which every channel was between its first and last audible frame.
    let spans: Vec<Option<(u64, u64)>> = logs
        .iter()
        .map(|l| {
            let first = l.frames.iter().find(|f| f.is_audible())?.tick;
            let last = l.frames.iter().rev().find(|f| f.is_audible())?.tick;
            Some((first, last))
        })
        .collect();
    let all_spans: Option<Vec<(u64, u64)>> = spans.into_iter().collect();
    let window = all_spans.and_then(|s| {
        let start = s.iter().map(|x| x.0).max()?;
        let end = s.iter().map(|x| x.1).min()?.min(ticks_known);
        (end >= start).then_some((start, end))
    });
    match window {
        None => failures.add("read_frame run: no tick in which all channels were speaking".into()),
        Some((start, end)) => {
            let overlap = (end - start + 1) as usize;
            let take = overlap.min(FRAME_WINDOW_TICKS);
            if take < FRAME_WINDOW_TICKS {
                println!("  WARNING: only {take} ticks with all {FRAME_CHANNELS} channels speaking (wanted {FRAME_WINDOW_TICKS})");
            }
            let ticks = start..start + take as u64;
            let mut samples = Vec::with_capacity(take * FRAME_CHANNELS);
            let mut partial_ticks = 0;
            for t in ticks.clone() {
                let (a, b) = (offset[t as usize], offset[t as usize + 1]);
                if b - a != FRAME_CHANNELS {
                    partial_ticks += 1;
                }
                samples.extend_from_slice(&nanos[a.min(nanos.len())..b.min(nanos.len())]);
            }
            if partial_ticks > 0 {
                failures.add(format!("read_frame run: {partial_ticks} ticks of the window did not read all channels"));
            }
            // A silent frame in mid-speech: the frame the channel was due
            // to play next (its audio frame number `played`) was not there.
            // Count those where that frame starts a new upstream chunk.
            let chunk = Behavior::default().chunk_bytes.max(1);
            let (mut silent, mut at_chunk_start) = (0usize, 0usize);
            for l in &logs {
                let mut played = 0usize;
                for f in &l.frames {
                    if f.is_audible() {
                        played += 1;
                    } else if ticks.contains(&f.tick) {
                        silent += 1;
                        let next_last_byte = (played + 1) * l.frame_bytes - 1;
                        if played == 0 || next_last_byte / chunk != (played * l.frame_bytes - 1) / chunk {
                            at_chunk_start += 1;
                        }
                    }
                }
            }
            let first_at = logs[0].frames.iter().find(|f| f.tick == start).map(|f| logs[0].at(f));
            let started_after =
                first_at.and_then(|t| channels[0].sent_at(speaks[0].1).map(|s| ms_between(s, t))).unwrap_or(f64::NAN);
            samples.sort_unstable();
            if samples.is_empty() {
                failures.add("read_frame run: no samples in the window".into());
            } else {
                println!(
                    "  window: {take} ticks ({:.2} s) from {started_after:.0} ms after the first SPEAK, all {FRAME_CHANNELS} channels speaking; {} read_frame calls; {} SPEAKs of {audio_ms} ms audio each",
                    take as f64 * ms(TICK) / 1000.0,
                    samples.len(),
                    ok
                );
                println!(
                    "  read_frame ns ({FRAME_CHANNELS} ch speaking, {} kHz): p50 {}  p99 {}  max {}",
                    FRAME_RATE / 1000,
                    pct(&samples, 50.0),
                    pct(&samples, 99.0),
                    samples[samples.len() - 1]
                );
                let per_tick_total: Vec<u64> = {
                    let mut v: Vec<u64> = samples.chunks(FRAME_CHANNELS).map(|c| c.iter().sum()).collect();
                    v.sort_unstable();
                    v
                };
                let over_100us = samples.iter().filter(|&&v| v > 100_000).count();
                println!("  read_frame calls over 100 us: {over_100us} of {}", samples.len());
                println!(
                    "  read_frame ns summed per tick ({FRAME_CHANNELS} calls): p50 {}  p99 {}  max {}",
                    pct(&per_tick_total, 50.0),
                    pct(&per_tick_total, 99.0),
                    per_tick_total[per_tick_total.len() - 1]
                );
                println!(
                    "  non-audible frames inside the window (underrun or contended try_lock): {silent} of {}, {at_chunk_start} of them where the next frame needed a new upstream chunk ({chunk} bytes, sent just in time at speed 1.0)",
                    take * FRAME_CHANNELS
                );
            }
        }
    }
    println!("  media ticks late by more than one period: {} of {}", server.late_ticks(), server.ticks());
    if let Some(n) = preempted {
        println!(
            "  \"MPF Scheduler\" thread preempted by the OS (involuntary context switches) {n} times in the {run_secs:.1} s run"
        );
    }
    teardown(server, channels, mock, failures);
    Ok(())
}

// ---------------------------------------------------------------------------
// 2 + 3. Added latency at 1, 50, 200 channels; RSS and threads at 200

/// Peak RSS and thread count seen by a sampler thread.
#[derive(Default, Clone)]
struct Peak {
    rss_kib: u64,
    threads: usize,
    /// Thread names grouped by prefix, at the thread peak.
    groups: Vec<(String, usize)>,
    /// Open file descriptors, and their kinds at that peak.
    fds: usize,
    fd_kinds: Vec<(String, usize)>,
}

fn thread_groups() -> Vec<(String, usize)> {
    let mut map: HashMap<String, usize> = HashMap::new();
    for name in thread_names() {
        let group = match name.split_once('-') {
            Some((head, tail)) if tail.chars().all(|c| c.is_ascii_digit()) => format!("{head}-N"),
            _ => name,
        };
        *map.entry(group).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn spawn_sampler(stop: Arc<AtomicBool>) -> thread::JoinHandle<Peak> {
    thread::spawn(move || {
        let mut peak = Peak::default();
        let mut samples = 0u64;
        while !stop.load(Ordering::Relaxed) {
            peak.rss_kib = peak.rss_kib.max(vm_rss_kib().unwrap_or(0));
            let n = thread_count();
            if n > peak.threads {
                peak.threads = n;
                peak.groups = thread_groups();
            }
            // Descriptors every 50 ms: connections last the whole run.
            if samples % 5 == 0 {
                let fds = fd_count();
                if fds > peak.fds {
                    peak.fds = fds;
                    peak.fd_kinds = fd_kinds();
                }
            }
            samples += 1;
            thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

struct LatencyResult {
    channels: usize,
    added: Vec<f64>,
    /// Whether each `added` sample was the channel's first SPEAK (which
    /// also opened the plugin's connection to the upstream).
    first_of_channel: Vec<bool>,
    upstream_first_byte: Vec<f64>,
    dispatch: Vec<f64>,
    delivery: Vec<f64>,
    peak: Option<Peak>,
}

fn bench_latency(
    plugin: &Path,
    n: usize,
    rounds: usize,
    sample_peak: bool,
    failures: &mut Failures,
) -> Result<LatencyResult, String> {
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(Behavior::realtime().with_first_byte_delay(FIRST_BYTE_DELAY).with_audio_ms(LATENCY_AUDIO_MS));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak.then(|| spawn_sampler(stop.clone()));
    let server = match start_server(plugin, &mock) {
        Ok(s) => s,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    let channels = match open_channels(&server, n, LATENCY_RATE) {
        Ok(c) => c,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };

    // (channel, request id, text) of every SPEAK.
    let mut all: Vec<(usize, u32, String)> = Vec::new();
    let gap = LATENCY_SPREAD / n as u32;
    let mut completed = 0;
    for round in 0..rounds {
        let mut speaks = Vec::with_capacity(n);
        let round_start = Instant::now();
        for (c, ch) in channels.iter().enumerate() {
            // For one channel, vary the send's phase against the tick.
            let due = if n == 1 {
                round_start + Duration::from_micros((round as u64 * 3700) % 10_000)
            } else {
                round_start + gap * c as u32
            };
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let text = format!("Latency probe channel {c} round {round}.");
            let id = ch.speak(&text);
            speaks.push((c, id));
            all.push((c, id, text));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let label = format!("{n} ch round {}/{rounds}", round + 1);
        completed += check_completions(&label, &speaks, &channels, deadline, failures);
    }
    println!("  {n:>3} ch x {rounds} rounds: SPEAK-COMPLETE 000: {completed} of {} SPEAKs", all.len());
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.and_then(|s| s.join().ok());

    let by_text: HashMap<String, RecordedRequest> =
        mock.requests().into_iter().filter_map(|r| r.text.clone().map(|t| (t, r))).collect();
    let logs: Vec<_> = channels.iter().map(Channel::frames).collect();
    let mut result = LatencyResult {
        channels: n,
        added: Vec::new(),
        first_of_channel: Vec::new(),
        upstream_first_byte: Vec::new(),
        dispatch: Vec::new(),
        delivery: Vec::new(),
        peak,
    };
    let mut missing = 0;
    for (c, id, text) in &all {
        let (Some(sent), Some(req)) = (channels[*c].sent_at(*id), by_text.get(text)) else {
            missing += 1;
            continue;
        };
        let log = &logs[*c];
        let Some(first) = log.first_audible_after(sent) else {
            missing += 1;
            continue;
        };
        let audible_at = log.at(&first);
        result.added.push(ms_between(sent, audible_at) - ms(FIRST_BYTE_DELAY));
        result.first_of_channel.push(*id == 1);
        result.dispatch.push(ms_between(sent, req.received_at));
        if let Some(fb) = req.first_byte_at {
            result.upstream_first_byte.push(ms_between(req.received_at, fb));
            result.delivery.push(ms_between(fb, audible_at));
        }
    }
    if missing > 0 {
        failures.add(format!("{n} ch: {missing} SPEAKs without an upstream request or an audible frame"));
    }
    let late = server.late_ticks();
    if late > 0 {
        println!("  {n} ch: media ticks late by more than one period: {late} of {}", server.ticks());
    }
    teardown(server, channels, mock, failures);
    Ok(result)
}

fn print_latency(r: &LatencyResult) {
    if r.added.is_empty() {
        return;
    }
    let added = sorted_f64(r.added.clone());
    let pick = |first: bool| {
        sorted_f64(r.added.iter().zip(&r.first_of_channel).filter(|(_, f)| **f == first).map(|(a, _)| *a).collect())
    };
    let (first, later) = (pick(true), pick(false));
    let fb = sorted_f64(r.upstream_first_byte.clone());
    let dispatch = sorted_f64(r.dispatch.clone());
    let delivery = sorted_f64(r.delivery.clone());
    println!(
        "  added latency @ {:>3} ch: p50 {:6.1} ms  p99 {:6.1} ms  (min {:.1}, max {:.1}, n={})",
        r.channels,
        pct(&added, 50.0),
        pct(&added, 99.0),
        added[0],
        added[added.len() - 1],
        added.len()
    );
    if !first.is_empty() && !later.is_empty() {
        println!(
            "    by SPEAK @ {:>3} ch: first on its channel (new connection) p50 {:.1} / p99 {:.1} ms (n={}); later (keep-alive) p50 {:.1} / p99 {:.1} ms (n={})",
            r.channels,
            pct(&first, 50.0),
            pct(&first, 99.0),
            first.len(),
            pct(&later, 50.0),
            pct(&later, 99.0),
            later.len()
        );
    }
    if !fb.is_empty() {
        println!(
            "    upstream first-byte time @ {:>3} ch (reference, configured {} ms): p50 {:6.1} ms",
            r.channels,
            FIRST_BYTE_DELAY.as_millis(),
            pct(&fb, 50.0)
        );
        println!(
            "    split @ {:>3} ch: SPEAK sent -> request at upstream p50 {:.1} / p99 {:.1} ms; upstream first byte -> first audible frame p50 {:.1} / p99 {:.1} ms",
            r.channels,
            pct(&dispatch, 50.0),
            pct(&dispatch, 99.0),
            pct(&delivery, 50.0),
            pct(&delivery, 99.0)
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Prompt cache: hit vs miss, and sharing among 100 channels

/// A fresh cache dir under the system temp dir (the plugin creates it),
/// removed on drop.
struct TempCacheDir(PathBuf);

impl TempCacheDir {
    fn new(tag: &str) -> TempCacheDir {
        let dir = std::env::temp_dir().join(format!("unimrcp-elevenlabs-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempCacheDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Committed entries (40 hex digits; not temporary files).
    fn entries(&self) -> usize {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for TempCacheDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (channel id, request id) -> `source=` of the plugin's one summary line
/// per SPEAK ("[<channel>] SPEAK <n> done: ... source=<s> ...").
fn speak_sources(server: &Server) -> HashMap<(String, u32), String> {
    let mut map = HashMap::new();
    for line in server.logs() {
        let Some((channel, rest)) = line.text.strip_prefix('[').and_then(|t| t.split_once("] SPEAK ")) else {
            continue;
        };
        let Some((n, rest)) = rest.split_once(" done: ") else { continue };
        let (Ok(n), Some(source)) = (n.parse::<u32>(), rest.split_whitespace().find_map(|w| w.strip_prefix("source=")))
        else {
            continue;
        };
        map.insert((channel.to_string(), n), source.to_string());
    }
    map
}

/// The summary lines follow the SPEAK-COMPLETE: waits (until `timeout`)
/// for those of every (channel, request) in `want`.
fn wait_sources(server: &Server, want: &[(String, u32)], timeout: Duration) -> HashMap<(String, u32), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let map = speak_sources(server);
        if want.iter().all(|k| map.contains_key(k)) || Instant::now() >= deadline {
            return map;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn upstream_behavior() -> Behavior {
    Behavior::realtime().with_first_byte_delay(FIRST_BYTE_DELAY).with_audio_ms(CACHE_AUDIO_MS)
}

/// "p50 x / p99 y ms (n=z)", or "-" without samples.
fn p50_p99(samples: Vec<f64>) -> String {
    let s = sorted_f64(samples);
    if s.is_empty() {
        return "- (n=0)".into();
    }
    format!("p50 {:6.1} / p99 {:6.1} ms (n={})", pct(&s, 50.0), pct(&s, 99.0), s.len())
}

/// Scenario 5: channels speaking SSML with marks at once, and the rate.
const MARK_CHANNELS: usize = 50;
const MARK_RATE: u32 = 8000;

/// 5: SPEECH-MARKER time minus the time the media thread read the frame
/// that holds the mark's audio (the first byte after the mark).
fn bench_markers(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(Behavior::default().with_speed(2.0).with_first_byte_delay(FIRST_BYTE_DELAY));
    let server = start_server(plugin, &mock)?;
    let channels = match open_channels(&server, MARK_CHANNELS, MARK_RATE) {
        Ok(c) => c,
        Err(e) => {
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };
    let text_of = |i: usize| format!("Channel {i} says hello to the whole wide world, and then goodbye.");
    let mut speaks = Vec::with_capacity(MARK_CHANNELS);
    for (i, ch) in channels.iter().enumerate() {
        let doc = format!(
            r#"<speak>Channel {i} says hello <mark name="a"/>to the whole wide world, <mark name="b"/>and then goodbye.<mark name="end"/></speak>"#
        );
        speaks.push((i, ch.send(Request::speak_ssml(&doc))));
        thread::sleep(Duration::from_millis(3));
    }
    let completed =
        check_completions("markers", &speaks, &channels, Instant::now() + Duration::from_secs(30), failures);
    let requests = mock.requests();
    let fb = frame_bytes(MARK_RATE);
    let (mut inside, mut at_end, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for &(i, id) in &speaks {
        let ch = &channels[i];
        let text = text_of(i);
        let Some(req) = requests.iter().find(|r| r.text.as_deref() == Some(text.as_str())) else {
            problems.push(format!("{}: no upstream request", ch.id()));
            continue;
        };
        let log = ch.frames();
        let audio: Vec<_> = log.frames.iter().filter(|f| f.is_audio()).collect();
        let events: Vec<_> = ch
            .messages()
            .into_iter()
            .filter(|m| m.request_id == id && m.kind == Kind::Event && m.method_id == 0)
            .collect();
        let names: Vec<String> = events
            .iter()
            .map(|m| m.speech_marker.as_deref().and_then(|v| v.split_once(';')).map_or("", |(_, n)| n).to_owned())
            .collect();
        if names != ["a", "b", "end"] {
            problems.push(format!("{} SPEAK {id}: markers {names:?}", ch.id()));
            continue;
        }
        let audio_ms = (req.audio_sent.len() / (fb / 10)) as u32;
        for (event, before) in events.iter().zip(["to the whole", "and then", ""]) {
            let position = if before.is_empty() {
                req.audio_sent.len()
            } else {
                let ms = char_start_ms(&text, audio_ms, text.find(before).unwrap_or(0));
                (ms / 1000.0 * f64::from(MARK_RATE)).round() as usize * 2
            };
            // The end mark is reached when the last audio frame has gone.
            let Some(frame) = audio.get((position / fb).min(audio.len().saturating_sub(1))) else {
                problems.push(format!("{} SPEAK {id}: no audio frames", ch.id()));
                break;
            };
            let lag = ms_between(log.at(frame), event.at);
            if before.is_empty() {
                at_end.push(lag)
            } else {
                inside.push(lag)
            }
        }
    }
    println!(
        "  SPEAK-COMPLETE 000: {completed} of {}; SPEECH-MARKER events checked: {}",
        speaks.len(),
        inside.len() + at_end.len()
    );
    println!("  marks inside the text (position from the with-timestamps alignment): {}", p50_p99(inside.clone()));
    println!("  marks at the end (sent when the last frame has been read): {}", p50_p99(at_end));
    let early = inside.iter().filter(|&&l| l < 0.0).count();
    println!(
        "  note: lag = event sent - tick in which read_frame returned the frame holding the mark's first byte; {early} of {} before that tick (negative)",
        inside.len()
    );
    if early > 0 {
        problems.push(format!("{early} markers were sent before their frame was read"));
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        failures.add(format!("markers: {} problem(s): {}", problems.len(), shown.join("; ")));
    }
    teardown(server, channels, mock, failures);
    Ok(())
}

fn frame_bytes(rate: u32) -> usize {
    rate as usize / 100 * 2
}

/// 4a: time to first audible frame of a miss and of a hit.
fn bench_cache_hit_vs_miss(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let dir = TempCacheDir::new("hit-vs-miss");
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(upstream_behavior());
    let server = start_server_with_cache(plugin, &mock, Some(dir.path()))?;
    let channels = match open_channels(&server, 1, CACHE_RATE) {
        Ok(c) => c,
        Err(e) => {
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };
    let ch = &channels[0];
    let texts: Vec<String> =
        (0..CACHE_PROMPTS).map(|i| format!("Cache probe prompt number {i}, thank you for holding.")).collect();

    // (hit pass, request id), one SPEAK at a time.
    let mut speaks: Vec<(bool, u32)> = Vec::with_capacity(2 * CACHE_PROMPTS);
    let mut completed = 0;
    let mut upstream_after_misses = 0;
    for hit in [false, true] {
        for (i, text) in texts.iter().enumerate() {
            // Vary the send's phase against the 10 ms tick.
            let k = usize::from(hit) * CACHE_PROMPTS + i;
            thread::sleep(Duration::from_micros((k as u64 * 3700) % 10_000));
            let id = ch.speak(text);
            let label = format!("cache {} {}/{CACHE_PROMPTS}", if hit { "hit" } else { "miss" }, i + 1);
            completed +=
                check_completions(&label, &[(0, id)], &channels, Instant::now() + Duration::from_secs(20), failures);
            speaks.push((hit, id));
        }
        if !hit {
            upstream_after_misses = mock.request_count();
        }
    }
    let upstream_total = mock.request_count();
    let entries = dir.entries();

    let want: Vec<(String, u32)> = speaks.iter().map(|&(_, id)| (ch.id(), id)).collect();
    let sources = wait_sources(&server, &want, Duration::from_secs(3));
    let log = ch.frames();
    let (mut miss_ttff, mut hit_ttff, mut miss_ip, mut hit_ip, mut hit_after_ip) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut missing, mut mislabelled) = (0, Vec::new());
    for &(hit, id) in &speaks {
        let expected = if hit { "cache" } else { "upstream" };
        let source = sources.get(&(ch.id(), id)).map_or("none", String::as_str);
        if source != expected {
            mislabelled.push(format!("SPEAK {id} source={source} (expected {expected})"));
        }
        let sent = ch.sent_at(id);
        let in_progress = ch.wait_response(id, Duration::ZERO).map(|m| m.at);
        let first = sent.and_then(|s| log.first_audible_after(s)).map(|f| log.at(&f));
        let (Some(sent), Some(in_progress), Some(first)) = (sent, in_progress, first) else {
            missing += 1;
            continue;
        };
        let ttff = ms_between(sent, first);
        let ip = ms_between(sent, in_progress);
        if hit {
            hit_ttff.push(ttff);
            hit_ip.push(ip);
            hit_after_ip.push(ms_between(in_progress, first));
        } else {
            miss_ttff.push(ttff);
            miss_ip.push(ip);
        }
    }
    println!(
        "  a) {CACHE_PROMPTS} distinct prompts on one channel, one SPEAK at a time: each spoken once (miss), then all again (hit)"
    );
    println!(
        "     SPEAK-COMPLETE 000: {completed} of {}; upstream requests: {upstream_after_misses} after the misses, {upstream_total} after the hits; cache entries on disk: {entries}",
        speaks.len()
    );
    if missing > 0 {
        failures.add(format!("cache hit vs miss: {missing} SPEAKs without an IN-PROGRESS or an audible frame"));
    }
    if !mislabelled.is_empty() {
        let shown: Vec<&str> = mislabelled.iter().take(5).map(String::as_str).collect();
        failures.add(format!(
            "cache hit vs miss: {} SPEAKs not served as expected (summary line source=): {}",
            mislabelled.len(),
            shown.join("; ")
        ));
    }
    let hit_after_ip_max = hit_after_ip.iter().copied().fold(f64::NAN, f64::max);
    println!("     SPEAK sent -> first audible frame, miss: {}", p50_p99(miss_ttff));
    println!("     SPEAK sent -> first audible frame, hit:  {}", p50_p99(hit_ttff));
    println!("     SPEAK sent -> IN-PROGRESS: miss {}; hit {}", p50_p99(miss_ip), p50_p99(hit_ip));
    println!(
        "     hit - IN-PROGRESS (first audible frame - IN-PROGRESS response): {}, max {hit_after_ip_max:.1} ms (one media tick = {} ms)",
        p50_p99(hit_after_ip),
        TICK.as_millis()
    );
    let late = server.late_ticks();
    if late > 0 {
        println!("     media ticks late by more than one period: {late} of {}", server.ticks());
    }
    teardown(server, channels, mock, failures);
    Ok(())
}

/// 4b: 100 channels speaking 10 distinct prompts, several rounds.
fn bench_cache_sharing(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let dir = TempCacheDir::new("sharing");
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(upstream_behavior());
    let server = start_server_with_cache(plugin, &mock, Some(dir.path()))?;
    let channels = match open_channels(&server, CACHE_CHANNELS, CACHE_RATE) {
        Ok(c) => c,
        Err(e) => {
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };
    let texts: Vec<String> =
        (0..CACHE_DISTINCT).map(|k| format!("Shared prompt {k}: your call is important to us.")).collect();

    // (round, channel, request id)
    let mut all: Vec<(usize, usize, u32)> = Vec::with_capacity(CACHE_ROUNDS * CACHE_CHANNELS);
    let mut completed = 0;
    for round in 0..CACHE_ROUNDS {
        let speaks: Vec<(usize, u32)> =
            channels.iter().enumerate().map(|(c, ch)| (c, ch.speak(&texts[c % CACHE_DISTINCT]))).collect();
        let label = format!("cache sharing round {}/{CACHE_ROUNDS}", round + 1);
        completed += check_completions(&label, &speaks, &channels, Instant::now() + Duration::from_secs(20), failures);
        all.extend(speaks.into_iter().map(|(c, id)| (round, c, id)));
    }
    let upstream = mock.request_count();
    let entries = dir.entries();

    let ids: Vec<String> = channels.iter().map(Channel::id).collect();
    let want: Vec<(String, u32)> = all.iter().map(|&(_, c, id)| (ids[c].clone(), id)).collect();
    let sources = wait_sources(&server, &want, Duration::from_secs(3));
    let logs: Vec<_> = channels.iter().map(Channel::frames).collect();
    const SOURCES: [&str; 3] = ["upstream", "shared", "cache"];
    // [round][source index or 3 = no summary line / other]
    let mut counts = [[0usize; 4]; CACHE_ROUNDS];
    let mut ttff: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for &(round, c, id) in &all {
        let source = sources.get(&(ids[c].clone(), id)).map(String::as_str);
        let idx = source.and_then(|s| SOURCES.iter().position(|x| *x == s)).unwrap_or(3);
        counts[round][idx] += 1;
        if idx < 3 {
            let sent = channels[c].sent_at(id);
            if let Some((sent, first)) = sent.and_then(|s| logs[c].first_audible_after(s).map(|f| (s, f))) {
                ttff[idx].push(ms_between(sent, logs[c].at(&first)));
            }
        }
    }
    let total: [usize; 4] = counts.iter().fold([0; 4], |mut acc, r| {
        acc.iter_mut().zip(r).for_each(|(a, b)| *a += b);
        acc
    });
    let served_locally = total[1] + total[2];
    println!(
        "  b) {CACHE_CHANNELS} channels, {CACHE_DISTINCT} distinct prompts (channel i speaks prompt i % {CACHE_DISTINCT}), {CACHE_ROUNDS} rounds, the {CACHE_CHANNELS} SPEAKs of a round sent together"
    );
    println!("     SPEAK-COMPLETE 000: {completed} of {} SPEAKs", all.len());
    println!(
        "     cache hit rate: {:.1} % ({served_locally} of {} SPEAKs served from the cache or by following a flight): upstream {}, shared {}, cache {}{}",
        100.0 * served_locally as f64 / all.len().max(1) as f64,
        all.len(),
        total[0],
        total[1],
        total[2],
        if total[3] > 0 { format!(", no summary line {}", total[3]) } else { String::new() }
    );
    let rounds: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(r, c)| format!("round {}: upstream {} shared {} cache {}", r + 1, c[0], c[1], c[2]))
        .collect();
    println!("     by round: {}", rounds.join("; "));
    println!(
        "     upstream requests: {upstream} (expected {CACHE_DISTINCT}, one per distinct prompt); cache entries on disk: {entries}"
    );
    if upstream != CACHE_DISTINCT {
        println!("     WARNING: {upstream} upstream requests for {CACHE_DISTINCT} distinct prompts");
    }
    for (i, name) in SOURCES.iter().enumerate() {
        println!("     SPEAK sent -> first audible frame, source={name:<8}: {}", p50_p99(std::mem::take(&mut ttff[i])));
    }
    teardown(server, channels, mock, failures);
    Ok(())
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    unimrcp_shim::anchor();
    if cost::serve_mock_if_child() {
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let plugin = match PluginLibrary::default_path() {
        Ok(p) => p,
        Err(e) => {
            println!("ERROR: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) { "debug (unoptimised)" } else { "release (optimised)" };
    println!("unimrcp-elevenlabs plugin benchmark");
    println!("machine: nproc {cpus}, {}; build profile: {profile}", cpu_model());
    println!("plugin:  {}", plugin.display());
    println!(
        "setup:   in-process test host with a real-time 10 ms media clock; mock ElevenLabs upstream on 127.0.0.1 in the same process, streaming at speed 1.0 (real time), first-byte delay {} ms",
        FIRST_BYTE_DELAY.as_millis()
    );
    println!(
        "engine:  max_buffer_ms={MAX_BUFFER_MS} -> per-channel buffer {BUFFER_BYTES} bytes ({:.1} KiB), first_byte_timeout_ms={TIMEOUT_MS}, stall_timeout_ms={TIMEOUT_MS}",
        BUFFER_BYTES as f64 / 1024.0
    );
    let mut failures = Failures::default();
    let most_channels = LATENCY_RUNS.iter().map(|&(n, _)| n).max().unwrap_or(0) as u64;
    let fds_needed = most_channels * FDS_PER_CHANNEL + FDS_BASE;
    let open_files = raise_open_files_limit();
    match &open_files {
        Ok(l) => {
            println!(
                "limits:  open files (RLIMIT_NOFILE) soft {} -> {}, hard {}; the {most_channels}-channel run needs about {fds_needed} ({FDS_PER_CHANNEL} per channel, both ends of each connection in this process)",
                rlimit_text(l.before),
                rlimit_text(l.now),
                rlimit_text(l.hard)
            );
            if l.now != libc::RLIM_INFINITY && l.now < fds_needed {
                failures.add(format!(
                    "the limit on open files is {} (hard {}), below the about {fds_needed} descriptors the {most_channels}-channel run needs: its connections will fail with EMFILE; raise the hard limit (ulimit -Hn, limits.conf)",
                    l.now,
                    rlimit_text(l.hard)
                ));
            }
        }
        Err(e) => println!("limits:  open files (RLIMIT_NOFILE) unknown: {e}"),
    }
    let baseline_rss = vm_rss_kib().unwrap_or(0);
    let baseline_threads = thread_count();
    let only_metrics = std::env::args().skip(1).any(|a| a == "metrics");
    let only_cost = std::env::args().skip(1).any(|a| a == "cost");

    if std::env::args().skip(1).any(|a| a == "real") {
        realserver::bench_real(&plugin, &mut failures);
        return finish(&failures, started, 0);
    }
    if only_cost {
        if let Err(e) = cost::bench_cost(&plugin, &mut failures) {
            failures.add(format!("cost scenario: {e}"));
        }
        return finish(&failures, started, 0);
    }
    if only_metrics {
        bench_metrics_scenario(&plugin, &mut failures);
        return finish(&failures, started, 0);
    }
    if let Err(e) = bench_read_frame(&plugin, &mut failures) {
        failures.add(format!("read_frame scenario: {e}"));
    }

    println!();
    println!(
        "[2] added latency = first audible frame read by the media thread - SPEAK sent - upstream first-byte delay ({} ms); LPCM {} kHz, {} ms audio per SPEAK",
        FIRST_BYTE_DELAY.as_millis(),
        LATENCY_RATE / 1000,
        LATENCY_AUDIO_MS
    );
    println!(
        "  note: includes the media clock's 10 ms tick quantisation (audio is only taken at the next tick, avg ~5 ms), as a caller experiences it; SPEAKs of a round are sent spread over {} ms; a channel's first SPEAK also opens its TCP connection",
        LATENCY_SPREAD.as_millis()
    );
    let mut results = Vec::new();
    for (n, rounds) in LATENCY_RUNS {
        match bench_latency(&plugin, n, rounds, n == 200, &mut failures) {
            Ok(r) => results.push(r),
            Err(e) => failures.add(format!("latency scenario at {n} channels: {e}")),
        }
    }
    for r in &results {
        print_latency(r);
    }

    println!();
    println!("[3] resources of the 200-channel run (one process: host, plugin and mock upstream together)");
    println!(
        "  per-channel audio buffer: {BUFFER_BYTES} bytes ({:.1} KiB; max_buffer_ms={MAX_BUFFER_MS} x 32 bytes/ms, min 18 KiB) -> {:.1} MiB for 200 channels",
        BUFFER_BYTES as f64 / 1024.0,
        BUFFER_BYTES as f64 * 200.0 / (1024.0 * 1024.0)
    );
    match results.iter().find(|r| r.channels == 200).and_then(|r| r.peak.clone()) {
        Some(peak) => {
            println!(
                "  peak RSS (VmRSS): {:.1} MiB (before any scenario: {:.1} MiB)",
                peak.rss_kib as f64 / 1024.0,
                baseline_rss as f64 / 1024.0
            );
            let groups: Vec<String> = peak.groups.iter().map(|(g, n)| format!("{g} {n}")).collect();
            println!(
                "  peak thread count: {} (before any scenario: {baseline_threads}); by name: {}",
                peak.threads,
                groups.join(", ")
            );
            let kinds: Vec<String> = peak.fd_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let limit = open_files.as_ref().map_or_else(|_| "unknown".into(), |l| rlimit_text(l.now));
            println!("  peak open file descriptors: {} (limit {limit}); by kind: {}", peak.fds, kinds.join(", "));
        }
        None => failures.add("no resource figures: the 200-channel run did not complete".into()),
    }

    println!();
    println!(
        "[4] prompt cache (cache_enabled=true, a fresh temporary cache_dir per part): LPCM {} kHz, {CACHE_AUDIO_MS} ms audio per prompt, upstream first-byte delay {} ms at speed 1.0",
        CACHE_RATE / 1000,
        FIRST_BYTE_DELAY.as_millis()
    );
    let cache_started = Instant::now();
    if let Err(e) = bench_cache_hit_vs_miss(&plugin, &mut failures) {
        failures.add(format!("cache hit vs miss scenario: {e}"));
    }
    if let Err(e) = bench_cache_sharing(&plugin, &mut failures) {
        failures.add(format!("cache sharing scenario: {e}"));
    }
    println!("  scenario [4] took {:.1} s", cache_started.elapsed().as_secs_f64());

    println!();
    println!(
        "[5] speech markers: {MARK_CHANNELS} channels each speak one SSML SPEAK with two marks inside the text and one at its end; LPCM {} kHz, upstream at 2x real time",
        MARK_RATE / 1000
    );
    if let Err(e) = bench_markers(&plugin, &mut failures) {
        failures.add(format!("marker scenario: {e}"));
    }

    println!();
    println!("[6] upstream capacity (8 kHz, real-time clock)");
    if let Err(e) = capacity::bench_capacity(&plugin, &mut failures) {
        failures.add(format!("capacity scenario: {e}"));
    }

    println!();
    println!("[7] warm connections (8 kHz, real-time clock)");
    if let Err(e) = connections::bench_connections(&plugin, &mut failures) {
        failures.add(format!("connections scenario: {e}"));
    }

    println!();
    println!("[8] several servers sharing one account through Redis (8 kHz, real-time clock)");
    if let Err(e) = budget::bench_budget(&plugin, &mut failures) {
        failures.add(format!("shared budget scenario: {e}"));
    }

    bench_metrics_scenario(&plugin, &mut failures);

    if let Err(e) = cost::bench_cost(&plugin, &mut failures) {
        failures.add(format!("cost scenario: {e}"));
    }

    realserver::bench_real(&plugin, &mut failures);

    let total: usize = results.iter().map(|r| r.added.len()).sum();
    finish(&failures, started, total)
}

fn bench_metrics_scenario(plugin: &Path, failures: &mut Failures) {
    println!();
    println!("[9] metrics endpoint under scraping: 100 channels at 8 kHz speak 1 s prompts in rounds for 10 s, without and with 4 clients scraping /metrics back to back");
    if let Err(e) = metrics::bench_metrics(plugin, failures) {
        failures.add(format!("metrics scenario: {e}"));
    }
}

fn finish(failures: &Failures, started: Instant, total: usize) -> ExitCode {
    println!();
    println!("total time {:.1} s; latency samples {total}", started.elapsed().as_secs_f64());
    if failures.0.is_empty() {
        println!("result: OK (every SPEAK completed with 000, no host-detected violations)");
        ExitCode::SUCCESS
    } else {
        println!("ERROR: benchmark FAILED: {} problem(s); the figures above are not trustworthy", failures.0.len());
        ExitCode::FAILURE
    }
}
