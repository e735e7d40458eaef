//! Upstream failures and bad input: each ends in exactly one terminal
//! message with a cause and a reason an operator can act on, within the
//! configured limits, and nothing upstream for an invalid request.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{Kind, MediaClock, PluginLibrary, Request, Server, ServerConfig};
use unimrcp_shim::upstream::{Behavior, Fault, MockUpstream};

/// SPEAK `text` on a fresh channel; returns (SPEAK-COMPLETE, seconds taken).
fn failing_speak(rig: &Rig, text: &str) -> (unimrcp_shim::host::Recorded, Duration) {
    let ch = rig.server.open_channel(8000).unwrap();
    let started = Instant::now();
    let id = ch.speak(text);
    let done = expect_in_progress_then_complete(&ch, id);
    let took = started.elapsed();
    assert_eq!(done.completion_cause, Some(ERROR), "{done:#?}");
    assert_eq!(ch.frames().audio_frames_after(done.at), 0, "no audio after SPEAK-COMPLETE");
    (done, took)
}

fn reason(m: &unimrcp_shim::host::Recorded) -> &str {
    m.completion_reason.as_deref().expect("a Completion-Reason")
}

#[test]
fn http_errors_name_status_and_detail() {
    // No circuit here: this is about what each answer is called, and how
    // often it is tried (default max_retries=2). A concurrency 429 on every
    // try waits in the queue until queue_timeout_ms.
    let rig = rig(&[("circuit_failure_threshold", "0"), ("queue_timeout_ms", "1500")]);
    let cases = [
        (
            "unauthorized",
            Fault::http(401, "invalid_api_key", "Invalid API key"),
            "upstream HTTP 401 invalid_api_key: Invalid API key",
            Some(1),
        ),
        ("novoice", Fault::voice_not_found(), "upstream HTTP 404 voice_not_found", Some(1)),
        ("busy", Fault::too_many_concurrent_requests(), "upstream HTTP 429 too_many_concurrent_requests", None),
        ("system", Fault::system_busy(), "upstream HTTP 429 system_busy", Some(3)),
        ("invalid", Fault::ValidationError, "upstream HTTP 422", Some(1)),
        ("crash", Fault::server_error(500), "upstream HTTP 500", Some(3)),
        ("unavailable", Fault::server_error(503), "upstream HTTP 503", Some(3)),
        ("json", Fault::JsonInsteadOfAudio, "instead of audio", Some(1)),
        ("html", Fault::WrongContentType, "sent text/html", Some(1)),
    ];
    for (needle, fault, _, _) in &cases {
        rig.upstream.when_text_contains(needle, Behavior::fault(fault.clone()));
    }
    for (needle, _, expected, tries) in &cases {
        let before = rig.upstream.request_count();
        let (done, _) = failing_speak(&rig, &format!("fault {needle}"));
        let sent = rig.upstream.request_count() - before;
        let reason = reason(&done);
        assert!(reason.contains(expected), "{needle}: {reason:?} lacks {expected:?}");
        // The last request's id, to quote to support, and the tries made.
        let last = MockUpstream::request_id_of(rig.upstream.request_count() - 1);
        match tries {
            Some(1) => assert!(reason.ends_with(&format!(" (request-id {last})")), "{needle}: {reason}"),
            Some(n) => {
                assert_eq!(sent, *n, "{needle}: tried {n} times");
                assert!(reason.ends_with(&format!(" ({n} tries, request-id {last})")), "{needle}: {reason}");
            }
            // Put back in the queue after each 429 until the queue's
            // time ran out: several tries, then the upstream's answer.
            None => {
                assert!(sent >= 2, "{needle}: requeued, sent {sent}");
                assert!(reason.ends_with(&format!(" ({sent} tries, request-id {last})")), "{needle}: {reason}");
            }
        }
    }
    assert_clean(&rig.server);
}

#[test]
fn a_wrong_key_is_reported_without_showing_either_key() {
    let upstream = MockUpstream::start(API_KEY);
    let server = start_server(
        params(&upstream, &[("api_key", "sk_wrong_key_987")]),
        MediaClock::Every(Duration::from_millis(2)),
    );
    let rig = Rig { upstream, server };
    let (done, _) = failing_speak(&rig, "Wrong key.");
    assert!(reason(&done).starts_with("upstream HTTP 401 invalid_api_key"), "{}", reason(&done));
    assert!(!rig.server.logs_text().contains("sk_wrong_key_987"));
}

#[test]
fn refused_connection() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream = MockUpstream::start(API_KEY);
    let server = start_server(
        params(&upstream, &[("base_url", &format!("http://127.0.0.1:{port}"))]),
        MediaClock::Every(Duration::from_millis(2)),
    );
    let rig = Rig { upstream, server };
    let (done, took) = failing_speak(&rig, "Nobody listens.");
    assert!(reason(&done).starts_with("cannot connect to upstream"), "{}", reason(&done));
    assert!(took < Duration::from_secs(3));
}

#[test]
fn tls_to_a_plain_port_fails_as_tls() {
    let upstream = MockUpstream::start(API_KEY);
    let https = upstream.base_url().replace("http://", "https://");
    let server = start_server(
        params(&upstream, &[("base_url", &https), ("connect_timeout_ms", "700")]),
        MediaClock::Every(Duration::from_millis(2)),
    );
    let rig = Rig { upstream, server };
    let (done, took) = failing_speak(&rig, "TLS please.");
    assert!(reason(&done).starts_with("TLS failure with upstream"), "{}", reason(&done));
    assert!(took < Duration::from_secs(3), "within connect_timeout_ms: {took:?}");
}

#[test]
fn no_first_byte_in_time() {
    let rig = rig(&[("first_byte_timeout_ms", "400")]);
    rig.upstream.when_text_contains("hang", Behavior::fault(Fault::HangBeforeHeaders));
    rig.upstream.when_text_contains("late", Behavior::default().with_first_byte_delay(Duration::from_secs(5)));
    for text in ["hang forever", "late answer"] {
        let (done, took) = failing_speak(&rig, text);
        assert_eq!(reason(&done), "no response from upstream within first_byte_timeout_ms=400");
        assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(2500), "{took:?}");
    }
}

#[test]
fn stall_mid_stream() {
    let rig = rig(&[("stall_timeout_ms", "500")]);
    rig.upstream.set_default(Behavior::fault(Fault::StallAfterFirstChunk).with_audio_ms(10_000));
    let (done, took) = failing_speak(&rig, "Stalls after one chunk.");
    // Audio had reached the buffer: not retried; the id is there to quote.
    assert_eq!(reason(&done), "upstream stalled: no data for stall_timeout_ms=500 (request-id mock-1)");
    assert_eq!(rig.upstream.request_count(), 1);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(5)), "the stalled transfer was closed");
}

#[test]
fn stream_cut_short() {
    let rig = rig(&[]);
    rig.upstream.set_default(Behavior::fault(Fault::CutAfterBytes(6403)).with_audio_ms(5000));
    let (done, _) = failing_speak(&rig, "Cut off.");
    assert!(reason(&done).starts_with("upstream stream cut short"), "{}", reason(&done));
}

#[test]
fn one_failing_channel_leaves_the_others_alone() {
    let rig = rig(&[]);
    rig.upstream.when_text_contains("broken", Behavior::fault(Fault::server_error(500)));
    let good = rig.server.open_channel(16000).unwrap();
    let bad = rig.server.open_channel(16000).unwrap();
    let g = good.speak("A healthy prompt.");
    let b = bad.speak("A broken prompt.");
    let bad_done = expect_in_progress_then_complete(&bad, b);
    let good_done = expect_in_progress_then_complete(&good, g);
    assert_eq!(bad_done.completion_cause, Some(ERROR));
    assert_eq!(good_done.completion_cause, Some(NORMAL));
    let req = request_for(&rig.upstream, "A healthy prompt.");
    assert_eq!(good.audio(), padded(&req.audio_sent, 320));
    assert!(bad.audio().is_empty());
}

#[test]
fn invalid_bodies_are_refused_without_going_upstream() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let ssml = |body: &str| {
        let mut r = Request::speak(body);
        r.content_type = Some("application/ssml+xml".into());
        r
    };
    // Bodies that cannot be spoken: the SPEAK starts and ends at once with
    // 002 parse-failure and the reason (the issue's contract).
    let unspeakable: Vec<(Request, &str)> = vec![
        (Request::speak(""), "no text"),
        (Request::speak(" \t\r\n "), "no text"),
        (
            {
                let mut r = Request::speak("x");
                r.body = vec![0xff, 0xfe, 0x41];
                r
            },
            "not valid UTF-8",
        ),
        (ssml("<speak>unclosed"), "malformed SSML"),
        (ssml("<speak><p>crossed</s></speak>"), "malformed SSML"),
        (ssml("<html><body>not SSML</body></html>"), "<speak>"),
        (ssml("plain words sent as SSML"), "malformed SSML"),
        (ssml(r#"<speak>bad <break time="soon"/> value</speak>"#), "soon"),
        (ssml("<speak> <break/> </speak>x"), "malformed SSML"),
        (Request::speak(&"Far too long. ".repeat(20_000)), "-byte limit"),
    ];
    for (req, why) in unspeakable {
        let id = ch.send(req);
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(PARSE_FAILURE), "{done:#?}");
        assert!(done.completion_reason.as_deref().unwrap_or("").contains(why), "{why}: {done:#?}");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(for_request(&ch, id).len(), 2, "IN-PROGRESS and SPEAK-COMPLETE, nothing else");
    }
    // A Content-Type we do not speak at all is refused outright.
    for ct in ["audio/wav", "text/plain; charset=koi8-r"] {
        let mut req = Request::speak("RIFF....");
        req.content_type = Some(ct.into());
        let id = ch.send(req);
        let resp = ch.wait_response(id, WAIT).expect("a response");
        assert_eq!(resp.kind, Kind::Response);
        assert_eq!(resp.status_code, 409, "{resp:#?}");
        assert_eq!(resp.request_state, COMPLETE);
        assert_eq!(resp.completion_cause, Some(PARSE_FAILURE));
        assert!(resp.completion_reason.as_deref().unwrap().contains("unsupported Content-Type"), "{resp:#?}");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(for_request(&ch, id).len(), 1, "no event follows a refused SPEAK");
    }
    assert_eq!(rig.upstream.request_count(), 0, "nothing went upstream");
    // The channel still works afterwards.
    let id = ch.speak("Valid now.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
}

#[test]
fn other_methods_get_one_response_each() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let cases = [
        (0usize, "SET-PARAMS", 200u32),
        (1, "GET-PARAMS", 200),
        (7, "CONTROL", 403),
        (8, "DEFINE-LEXICON", 403),
        (42, "NO-SUCH-METHOD", 401),
    ];
    for (method, name, status) in cases {
        let id = ch.send(Request::method(method, name));
        let resp = ch.wait_response(id, WAIT).unwrap();
        assert_eq!(resp.status_code, status, "{name}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(for_request(&ch, id).len(), 1, "{name}");
    }
}

fn start_error(params: Option<Vec<(String, String)>>) -> String {
    unimrcp_shim::anchor();
    let config = ServerConfig { params, clock: MediaClock::Manual, ..ServerConfig::default() };
    let path = PluginLibrary::default_path().unwrap();
    match Server::start(&path, config) {
        Ok(_) => panic!("engine open should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_params_fail_engine_open_naming_the_param() {
    let base = [("api_key", "sk_secret_value"), ("voice_id", "v1")];
    let with = |extra: (&str, &str)| -> Option<Vec<(String, String)>> {
        let mut p: Vec<(String, String)> = base.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.retain(|(k, _)| k != extra.0);
        p.push((extra.0.into(), extra.1.into()));
        Some(p)
    };
    let err = start_error(None);
    assert!(err.contains("engine param 'api_key': missing"), "{err}");
    let err = start_error(Some(vec![("api_key".into(), "sk_secret_value".into())]));
    assert!(err.contains("engine param 'voice_id': missing"), "{err}");
    for (name, value) in [
        ("stability", "2"),
        ("speed", "fast"),
        ("connect_timeout_ms", "0"),
        ("base_url", "gopher://x"),
        ("max_buffer_ms", "5"),
    ] {
        let err = start_error(with((name, value)));
        assert!(err.contains(&format!("engine param '{name}'")), "{name}: {err}");
        assert!(!err.contains("sk_secret_value"), "the key leaked: {err}");
    }
}

/// A loopback listener that never accepts and whose accept queue is full:
/// the kernel drops further SYNs, so a connect to it times out.
struct BlackHole {
    fd: i32,
    port: u16,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    fn new() -> BlackHole {
        // SAFETY: plain socket calls on a fresh fd we own and close in Drop.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as u16;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len), 0);
            assert_eq!(libc::listen(fd, 0), 0);
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut blen = len;
            libc::getsockname(fd, &mut bound as *mut _ as *mut libc::sockaddr, &mut blen);
            let port = u16::from_be(bound.sin_port);
            // Fill the accept queue (backlog 0 still queues one or two).
            let mut fillers = Vec::new();
            for _ in 0..3 {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    fillers.push(s);
                }
            }
            BlackHole { fd, port, _fillers: fillers }
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn connect_timeout() {
    let hole = BlackHole::new();
    let upstream = MockUpstream::start(API_KEY);
    let server = start_server(
        params(&upstream, &[("base_url", &format!("http://127.0.0.1:{}", hole.port)), ("connect_timeout_ms", "300")]),
        MediaClock::Every(Duration::from_millis(2)),
    );
    let rig = Rig { upstream, server };
    let (done, took) = failing_speak(&rig, "Nobody answers the SYN.");
    assert!(reason(&done).starts_with("upstream connection timed out (connect_timeout_ms=300)"), "{}", reason(&done));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn absurd_header_values_get_a_bounded_one_line_answer() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    for content_type in ["x/".to_string() + &"y".repeat(10_000), "text/html\r\nX-Injected: 1".to_string()] {
        let mut req = unimrcp_shim::host::Request::speak("Hello.");
        req.content_type = Some(content_type);
        let id = ch.send(req);
        let resp = ch.wait_response(id, WAIT).unwrap();
        assert_eq!(resp.status_code, 409);
        let reason = resp.completion_reason.as_deref().unwrap();
        assert!(reason.len() <= 240, "bounded: {} bytes", reason.len());
        assert!(!reason.contains('\r') && !reason.contains('\n'), "one line: {reason:?}");
    }
    assert_eq!(rig.upstream.request_count(), 0);
}
