//! Shared by the integration tests: start the test upstream and the test
//! host with the built plugin, and read what happened.
#![allow(dead_code)]

pub mod child;
pub mod invariants;
pub mod redis_server;

use std::time::Duration;

use unimrcp_shim::host::{Channel, Kind, MediaClock, PluginLibrary, Recorded, Server, ServerConfig};
use unimrcp_shim::upstream::{MockUpstream, RecordedRequest};

pub const API_KEY: &str = "sk_test_0123456789abcdef";
pub const VOICE: &str = "TestVoice01";
pub const WAIT: Duration = Duration::from_secs(20);

/// MRCP status and cause numbers, spelled out for assertions.
pub const SPEAK: usize = 2;
pub const SPEAK_COMPLETE: usize = 1;
pub const IN_PROGRESS: u32 = 1;
pub const COMPLETE: u32 = 0;
pub const NORMAL: u32 = 0;
pub const PARSE_FAILURE: u32 = 2;
pub const ERROR: u32 = 4;

pub struct Rig {
    pub upstream: MockUpstream,
    pub server: Server,
}

/// Engine params pointing at `upstream`, plus `extra` (which win).
pub fn params(upstream: &MockUpstream, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("api_key".into(), API_KEY.into()),
        ("voice_id".into(), VOICE.into()),
        ("base_url".into(), upstream.base_url()),
        ("first_byte_timeout_ms".into(), "5000".into()),
        ("stall_timeout_ms".into(), "3000".into()),
        // Tests count upstream requests; the cache tests turn it on with
        // a private dir of their own.
        ("cache_enabled".into(), "false".into()),
        // Warm connections add GET /v1/models requests of their own;
        // tests/connections.rs turns them on.
        ("prewarm_connections".into(), "0".into()),
    ];
    for (k, v) in extra {
        p.retain(|(name, _)| name != k);
        p.push((k.to_string(), v.to_string()));
    }
    p
}

pub fn start_server(params: Vec<(String, String)>, clock: MediaClock) -> Server {
    unimrcp_shim::anchor();
    let config = ServerConfig {
        params: Some(params),
        clock,
        log_sources: vec!["ELEVENLABS-SYNTH".into()],
        ..ServerConfig::default()
    };
    let path = PluginLibrary::default_path().expect("the built plugin .so");
    Server::start(&path, config).expect("server starts with the plugin")
}

/// Upstream + server with a media clock 5x faster than real time.
pub fn rig(extra: &[(&str, &str)]) -> Rig {
    rig_with_clock(extra, MediaClock::Every(Duration::from_millis(2)))
}

pub fn rig_with_clock(extra: &[(&str, &str)], clock: MediaClock) -> Rig {
    let upstream = MockUpstream::start(API_KEY);
    let server = start_server(params(&upstream, extra), clock);
    Rig { upstream, server }
}

/// What the media path must have received for one upstream response:
/// the bytes sent, the last partial frame zero-padded.
pub fn padded(bytes: &[u8], frame_bytes: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    let rem = v.len() % frame_bytes;
    if rem != 0 {
        v.resize(v.len() + frame_bytes - rem, 0);
    }
    v
}

/// The plugin's gain (Prosody-Volume): whole samples scaled, rounded and
/// saturated, as the worker does before buffering.
pub fn gained(bytes: &[u8], gain: f32) -> Vec<u8> {
    bytes[..bytes.len() & !1]
        .chunks_exact(2)
        .flat_map(|c| {
            let v = (i16::from_ne_bytes([c[0], c[1]]) as f32 * gain).round().clamp(i16::MIN as f32, i16::MAX as f32);
            (v as i16).to_ne_bytes()
        })
        .collect()
}

pub fn frame_bytes(rate: u32) -> usize {
    rate as usize / 100 * 2
}

/// Every message of the channel for one request.
pub fn for_request(ch: &Channel, request_id: u32) -> Vec<Recorded> {
    ch.messages().into_iter().filter(|m| m.request_id == request_id).collect()
}

pub fn is_speak_complete(m: &Recorded) -> bool {
    m.kind == Kind::Event && m.method_id == SPEAK_COMPLETE
}

/// SPEAK answered IN-PROGRESS, then exactly one SPEAK-COMPLETE: returns it.
pub fn expect_in_progress_then_complete(ch: &Channel, request_id: u32) -> Recorded {
    let done = ch.wait_complete(request_id, WAIT).expect("SPEAK-COMPLETE arrives");
    let msgs = for_request(ch, request_id);
    assert_eq!(msgs.len(), 2, "exactly a response and one event: {msgs:#?}");
    assert_eq!(msgs[0].kind, Kind::Response);
    assert_eq!(msgs[0].status_code, 200);
    assert_eq!(msgs[0].request_state, IN_PROGRESS);
    assert!(is_speak_complete(&msgs[1]));
    assert_eq!(msgs[1].request_state, COMPLETE);
    done
}

/// The single upstream request for `text`.
pub fn request_for(upstream: &MockUpstream, text: &str) -> RecordedRequest {
    let reqs: Vec<RecordedRequest> =
        upstream.requests().into_iter().filter(|r| r.text.as_deref() == Some(text)).collect();
    assert_eq!(reqs.len(), 1, "one upstream request for {text:?}");
    reqs.into_iter().next().unwrap()
}

/// Asserts the host saw no ABI contract violation and no key in the logs.
pub fn assert_clean(server: &Server) {
    assert_eq!(server.violations(), Vec::<String>::new(), "host saw contract violations");
    let logs = server.logs_text();
    assert!(!logs.contains(API_KEY), "the API key appeared in the log");
}

/// Channel worker threads alive now ("elevenlabs-<n>"; the engine's
/// short-lived "elevenlabs-close" thread is not one).
pub fn worker_threads() -> usize {
    unimrcp_shim::host::thread_names()
        .iter()
        .filter(|n| n.strip_prefix("elevenlabs-").is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit())))
        .count()
}

/// Channel worker threads left once they have all been joined. A joined
/// thread can still be listed in /proc/self/task for a moment: the kernel
/// wakes the joiner when the thread clears its tid, just before it removes
/// the task. So this waits up to 500 ms for the listing to catch up; a
/// thread that was not joined (still running) stays and is counted.
pub fn worker_threads_after_join() -> usize {
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        let n = worker_threads();
        if n == 0 || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until `needle` occurs `count` times in the server log and
/// returns how often it does. Summary lines are logged just after the
/// SPEAK-COMPLETE they follow, so tests wait for them rather than race.
pub fn wait_for_log(server: &unimrcp_shim::host::Server, needle: &str, count: usize) -> usize {
    wait_for_log_within(server, needle, count, Duration::from_secs(3))
}

/// `wait_for_log`, waiting up to `within`.
pub fn wait_for_log_within(server: &unimrcp_shim::host::Server, needle: &str, count: usize, within: Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = server.logs_text().matches(needle).count();
        if n >= count || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until every TCP connection of this process to `port` (the test
/// upstream's) has no unread bytes in its receive queue
/// (`/proc/self/net/tcp`'s rx_queue): the plugin has taken all the
/// upstream sent. An event to wait on, where a sleep would race the
/// worker's batching of reads (it may linger up to 500 ms with audio
/// ahead, as it has with a manual media clock).
pub fn wait_until_upstream_read(port: u16, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let unread = || -> usize {
        let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let remote_port = u16::from_str_radix(fields.get(2)?.rsplit(':').next()?, 16).ok()?;
                let rx = usize::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()?;
                (remote_port == port).then_some(rx)
            })
            .sum()
    };
    loop {
        if unread() == 0 {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
