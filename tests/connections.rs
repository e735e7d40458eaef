//! Connections to the upstream: TLS with a CA file, warm connections
//! (`prewarm_connections`, `prewarm_refresh_ms`), TLS sessions shared
//! between channels, and the pre-warm thread's life.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{thread_names, MediaClock, Server};
use unimrcp_shim::upstream::{unrelated_ca_pem, Fault, MockUpstream, RecordedRequest};

const PROBE_PATH: &str = "/v1/models";
/// The pre-warm thread as /proc lists it (names are cut at 15 bytes).
const PREWARM_THREAD: &str = "elevenlabs-prew";

/// One test at a time: each counts the process's pre-warm threads.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn prewarm_threads() -> usize {
    thread_names().iter().filter(|n| n.as_str() == PREWARM_THREAD).count()
}

fn server(upstream: &MockUpstream, extra: &[(&str, &str)]) -> Server {
    // Room for a first TLS handshake on a slow machine (OpenSSL's one-time
    // set-up under valgrind takes seconds): these tests are not about
    // timeouts. Later extras still win.
    let mut all = vec![("first_byte_timeout_ms", "15000")];
    all.extend_from_slice(extra);
    start_server(params(upstream, &all), MediaClock::Every(Duration::from_millis(2)))
}

/// A PEM file in a fresh temp dir, removed with the returned guard.
struct TempPem(PathBuf);

impl TempPem {
    fn new(name: &str, pem: &str) -> TempPem {
        let dir = std::env::temp_dir().join(format!("elevenlabs-conn-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        TempPem(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPem {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn probes(upstream: &MockUpstream) -> Vec<RecordedRequest> {
    upstream.requests().into_iter().filter(|r| r.path == PROBE_PATH).collect()
}

/// Waits (bounded by WAIT) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the pre-warm thread has put a transport in its pool for
/// the `n`th time.
fn wait_warm_ready(server: &Server, n: usize) {
    wait_until(&format!("{n} warm connection(s) made ready"), || {
        server.logs_text().matches("warm connection(s) ready").count() >= n
    });
}

/// SPEAKs `text` on a new channel and returns the upstream request.
fn speak_on_new_channel(rig_server: &Server, upstream: &MockUpstream, text: &str) -> RecordedRequest {
    let ch = rig_server.open_channel(8000).expect("channel opens");
    let id = ch.speak(text);
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    let req = request_for(upstream, text);
    assert_eq!(ch.audio(), padded(&req.audio_sent, frame_bytes(8000)), "exact audio");
    req
}

#[test]
fn tls_with_ca_file_plays_exact_audio() {
    let _serial = serial();
    let upstream = MockUpstream::start_tls(API_KEY);
    let ca = TempPem::new("good", upstream.ca_pem().unwrap());
    let server = server(&upstream, &[("ca_file", ca.path()), ("prewarm_connections", "1")]);
    let text = "Over TLS, verified against the CA file.";
    let req = speak_on_new_channel(&server, &upstream, text);
    assert!(req.completed);
    assert!(upstream.base_url().starts_with("https://"));
    assert_clean(&server);
    assert!(server.logs_text().contains("prewarm_connections=1"), "open logs the prewarm settings");
}

#[test]
fn wrong_ca_ends_004_naming_the_certificate() {
    let _serial = serial();
    let upstream = MockUpstream::start_tls(API_KEY);
    let ca = TempPem::new("wrong", &unrelated_ca_pem());
    let server = server(&upstream, &[("ca_file", ca.path()), ("max_retries", "0"), ("prewarm_connections", "1")]);
    let ch = server.open_channel(8000).unwrap();
    let id = ch.speak("This must not be heard.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR), "{done:#?}");
    let reason = done.completion_reason.clone().unwrap_or_default();
    assert!(reason.contains("certificate"), "the reason names the certificate: {reason}");
    assert!(reason.contains("ca_file"), "and what to check: {reason}");
    assert_eq!(upstream.request_count(), 0, "nothing got through TLS");
    assert!(ch.audio().iter().all(|&b| b == 0), "no audio");
    assert_clean(&server);
}

#[test]
fn unreadable_ca_file_fails_engine_open() {
    let _serial = serial();
    let upstream = MockUpstream::start(API_KEY);
    let mut config = params(&upstream, &[("ca_file", "/nonexistent/elevenlabs-ca.pem")]);
    config.push(("prewarm_connections".into(), "1".into()));
    unimrcp_shim::anchor();
    let path = unimrcp_shim::host::PluginLibrary::default_path().unwrap();
    let cfg = unimrcp_shim::host::ServerConfig {
        params: Some(config),
        log_sources: vec!["ELEVENLABS-SYNTH".into()],
        ..unimrcp_shim::host::ServerConfig::default()
    };
    match Server::start(&path, cfg) {
        Ok(_) => panic!("engine open must fail on an unreadable ca_file"),
        Err(unimrcp_shim::host::HostError::Refused(m)) => {
            assert!(m.contains("engine param 'ca_file': cannot read '/nonexistent/elevenlabs-ca.pem'"), "{m}");
        }
        Err(e) => panic!("refused, not {e:?}"),
    }
}

#[test]
fn first_speak_of_new_channels_uses_warm_connections() {
    let _serial = serial();
    let upstream = MockUpstream::start(API_KEY);
    let server = server(&upstream, &[("prewarm_connections", "2")]);
    wait_warm_ready(&server, 2);
    // Three channels one after another: the third only finds a warm
    // connection because the pre-warmer refilled the pool.
    for i in 0..3 {
        if i > 0 {
            wait_warm_ready(&server, 2 + i);
        }
        let opened_before: Vec<u64> = probes(&upstream).iter().map(|p| p.connection_id).collect();
        let req = speak_on_new_channel(&server, &upstream, &format!("Warm connection number {i}."));
        assert!(!req.fresh_connection, "channel {i}: the first SPEAK reused a connection");
        assert!(
            opened_before.contains(&req.connection_id),
            "channel {i}: on a connection a probe opened before the channel existed ({} not in {opened_before:?})",
            req.connection_id
        );
    }
    for p in probes(&upstream) {
        assert_eq!(p.method, "GET");
        assert_eq!(p.header("xi-api-key"), Some(API_KEY));
        assert_eq!(p.status, 200);
    }
    assert_clean(&server);
}

#[test]
fn without_prewarm_the_first_speak_opens_a_connection() {
    let _serial = serial();
    let upstream = MockUpstream::start(API_KEY);
    let server = server(&upstream, &[("prewarm_connections", "0")]);
    let req = speak_on_new_channel(&server, &upstream, "A cold start.");
    assert!(req.fresh_connection, "a new connection");
    assert!(probes(&upstream).is_empty(), "no probes");
    assert_eq!(prewarm_threads(), 0, "no pre-warm thread");
    assert_clean(&server);
}

#[test]
fn warm_connections_are_refreshed_before_the_server_closes_them() {
    let _serial = serial();
    let upstream = MockUpstream::start(API_KEY);
    // The server closes connections idle for 500 ms; the plugin refreshes
    // each every 100 ms. Two of them: the pre-warmer probes one at a time,
    // so one is always in the pool for the channel to take.
    upstream.set_idle_close(Some(Duration::from_millis(500)));
    let server = server(&upstream, &[("prewarm_connections", "2"), ("prewarm_refresh_ms", "100")]);
    // Refreshes over several idle periods (2 connections, 10 probes a
    // second each: about 1.5 s).
    wait_until("30 probes", || probes(&upstream).len() >= 30);
    let reused = probes(&upstream).iter().filter(|p| !p.fresh_connection).count();
    assert!(reused > 0, "refresh probes reuse the warm connections");
    let req = speak_on_new_channel(&server, &upstream, "Still warm after a while.");
    assert!(!req.fresh_connection, "the channel got a live warm connection");
    assert_clean(&server);
}

#[test]
fn a_second_channel_resumes_the_tls_session() {
    let _serial = serial();
    let upstream = MockUpstream::start_tls(API_KEY);
    let ca = TempPem::new("resume", upstream.ca_pem().unwrap());
    let server = server(&upstream, &[("ca_file", ca.path()), ("prewarm_connections", "0")]);
    let first = speak_on_new_channel(&server, &upstream, "First channel, full handshake.");
    let second = speak_on_new_channel(&server, &upstream, "Second channel, resumed session.");
    assert!(first.fresh_connection && second.fresh_connection, "each channel opened its own connection");
    assert_ne!(first.connection_id, second.connection_id);
    assert_eq!(upstream.tls_resumed(first.connection_id), Some(false), "the first handshake is a full one");
    assert_eq!(upstream.tls_resumed(second.connection_id), Some(true), "the second resumed the shared session");
    assert_clean(&server);
}

#[test]
fn prewarm_stops_while_the_circuit_is_open_and_resumes_after() {
    let _serial = serial();
    let upstream = MockUpstream::start(API_KEY);
    let server = server(
        &upstream,
        &[
            ("prewarm_connections", "1"),
            ("prewarm_refresh_ms", "100"),
            ("circuit_failure_threshold", "1"),
            ("circuit_open_ms", "300"),
            ("max_retries", "0"),
        ],
    );
    wait_until("refresh probes", || probes(&upstream).len() >= 3);
    upstream.set_failing(Some(Fault::server_error(500)));
    let ch = server.open_channel(8000).unwrap();
    let id = ch.speak("This fails and opens the circuit.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    wait_until("circuit open", || server.logs_text().contains(") open for "));
    // At most one probe was in flight when it opened.
    let at_open = probes(&upstream).len();
    // Ten refresh periods, and past circuit_open_ms (half-open: still no
    // probes until a SPEAK's request closes it).
    std::thread::sleep(Duration::from_millis(1000));
    let while_open = probes(&upstream).len();
    assert!(while_open <= at_open + 1, "no probing while the circuit is open: {at_open} then {while_open}");
    upstream.set_failing(None);
    let id = ch.speak("This closes the circuit again.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    wait_until("probes resume", || probes(&upstream).len() >= while_open + 3);
    assert_clean(&server);
}

#[test]
fn engine_close_joins_the_prewarm_thread() {
    let _serial = serial();
    let upstream = MockUpstream::start(API_KEY);
    let mut server = server(&upstream, &[("prewarm_connections", "2")]);
    wait_warm_ready(&server, 2);
    assert_eq!(prewarm_threads(), 1, "the thread runs");
    server.close_engine().expect("engine closes");
    wait_until("close answered", || server.engine_close_answers().len() == 1);
    // A joined thread can linger in /proc for a moment (see
    // common::worker_threads_after_join); one not joined stays.
    let deadline = Instant::now() + Duration::from_millis(500);
    while prewarm_threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(prewarm_threads(), 0, "joined at close");
    assert!(server.logs_text().contains("pre-warm stopped"), "stopped by the closer");
}
