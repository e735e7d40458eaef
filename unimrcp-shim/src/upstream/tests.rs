//! End-to-end tests of the mock over real sockets, with a hand-rolled
//! HTTP client that checks the framing byte by byte.

use super::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

const KEY: &str = "test-key";
const LONG: Duration = Duration::from_secs(10);

/// A parsed response, with the raw chunk sizes kept for framing checks.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunk_sizes: Vec<usize>,
    /// Chunked: the zero chunk arrived. Otherwise: the whole body arrived.
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Minimal client over one connection; keeps unread bytes between responses.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(mock: &MockUpstream) -> Client {
        let stream = TcpStream::connect(mock.addr()).unwrap();
        stream.set_read_timeout(Some(LONG)).unwrap();
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more bytes; false at end of stream.
    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().expect("status line");
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        while let Some(line) = self.line() {
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        (status, headers)
    }

    /// Reads one response, strictly checking chunked framing.
    fn response(&mut self) -> Response {
        let (status, headers) = self.head();
        let mut r = Response { status, headers, body: Vec::new(), chunk_sizes: Vec::new(), complete: false };
        if r.header("transfer-encoding") == Some("chunked") {
            while let Some(size_line) = self.line() {
                let size = usize::from_str_radix(&size_line, 16).expect("hex chunk size");
                if size == 0 {
                    assert_eq!(self.line().as_deref(), Some(""), "no trailers expected");
                    r.complete = true;
                    break;
                }
                let Some(data) = self.take(size) else { break };
                r.chunk_sizes.push(size);
                r.body.extend(data);
                assert_eq!(self.line().as_deref(), Some(""), "CRLF after chunk data");
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().unwrap();
            r.body = self.take(len).expect("full body");
            r.complete = true;
        } else {
            while self.fill() {}
            r.body = std::mem::take(&mut self.buf);
            r.complete = true;
        }
        r
    }

    /// Skips a chunked body whose head `head()` already read.
    fn skip_chunked_body(&mut self) {
        while let Some(size) = self.line() {
            let size = usize::from_str_radix(&size, 16).unwrap();
            self.take(size + 2).unwrap();
            if size == 0 {
                break;
            }
        }
    }

    /// True if the server closed the connection (EOF) within the timeout.
    fn closed_by_server(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    /// True if no byte arrives within `d`.
    fn silent_for(&mut self, d: Duration) -> bool {
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut one = [0u8; 1];
        let silent = matches!(self.stream.read(&mut one), Err(ref e) if http::is_timeout(e));
        self.stream.set_read_timeout(Some(LONG)).unwrap();
        silent
    }
}

fn tts_request(voice: &str, format: &str, key: Option<&str>, body: &str, extra: &str) -> Vec<u8> {
    let key = key.map(|k| format!("xi-api-key: {k}\r\n")).unwrap_or_default();
    format!(
        "POST /v1/text-to-speech/{voice}/stream?output_format={format} HTTP/1.1\r\n\
         Host: localhost\r\n{key}Content-Type: application/json\r\nAccept: audio/*\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn speak(text: &str) -> Vec<u8> {
    let body = json!({ "text": text, "model_id": "eleven_flash_v2_5" }).to_string();
    tts_request("voice1", "pcm_16000", Some(KEY), &body, "")
}

fn expected(text: &str, rate: u32) -> Vec<u8> {
    synth_pcm(text, rate, audio_ms_for_text(text))
}

fn mock() -> MockUpstream {
    MockUpstream::start(KEY)
}

#[test]
fn streams_deterministic_pcm_in_correct_chunks() {
    let m = mock();
    let mut c = Client::connect(&m);
    let body = r#"{"text":"Hello there, caller.","model_id":"eleven_flash_v2_5",
        "voice_settings":{"stability":0.5,"similarity_boost":0.75,"style":0,"speed":1.0,
        "use_speaker_boost":true},"language_code":"en","seed":7,"previous_text":null}"#;
    c.send(&tts_request(
        "Voice%20X",
        "pcm_8000&optimize_streaming_latency=2&enable_logging=false",
        Some(KEY),
        body,
        "",
    ));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("audio/pcm"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.complete);
    let want = expected("Hello there, caller.", 8000);
    assert_eq!(r.body, want);
    let (last, full) = r.chunk_sizes.split_last().unwrap();
    assert!(full.iter().all(|&s| s == 1601));
    assert_eq!(*last, want.len() - 1601 * full.len());
    assert!(*last > 0 && *last <= 1601);

    let reqs = m.wait_for_requests(1, LONG);
    let q = &reqs[0];
    assert_eq!(q.connection_id, 1);
    assert_eq!(q.method, "POST");
    assert_eq!(q.path, "/v1/text-to-speech/Voice%20X/stream");
    assert_eq!(q.voice_id, "Voice X");
    assert_eq!(q.output_format.as_deref(), Some("pcm_8000"));
    assert_eq!(q.sample_rate, Some(8000));
    assert_eq!(q.query_param("optimize_streaming_latency"), Some("2"));
    assert_eq!(q.header("XI-API-KEY"), Some(KEY));
    assert!(q.headers.iter().any(|(n, _)| n == "content-type"));
    assert_eq!(q.text.as_deref(), Some("Hello there, caller."));
    assert_eq!(q.json.as_ref().unwrap()["voice_settings"]["stability"], 0.5);
    assert_eq!(q.body, body.as_bytes());
    assert_eq!(q.status, 200);
    assert!(q.completed);
    assert_eq!(q.audio_sent, want);
    assert!(q.first_byte_at.unwrap() >= q.received_at);
    assert!(m.wait_until_idle(LONG));
}

#[test]
fn rejects_missing_or_wrong_key_before_rules() {
    let m = mock();
    // Rules must not apply to unauthenticated requests.
    m.set_default(Behavior::fault(Fault::HangBeforeHeaders));
    let mut c = Client::connect(&m);
    for key in [None, Some("wrong")] {
        c.send(&tts_request("v", "pcm_16000", key, r#"{"text":"hi"}"#, ""));
        let r = c.response();
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["detail"]["status"], "invalid_api_key");
        assert_eq!(r.json()["detail"]["message"], "Invalid API key");
    }
    let reqs = m.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.status == 401 && r.completed));
    assert!(reqs.iter().all(|r| r.audio_sent.is_empty()));
}

#[test]
fn validation_errors_are_list_shaped() {
    let m = mock();
    let mut c = Client::connect(&m);
    let cases = [
        ("mp3_44100_128", r#"{"text":"hi"}"#, json!("output_format")),
        ("pcm_12345", r#"{"text":"hi"}"#, json!("output_format")),
        ("pcm_16000", r#"{"model_id":"m"}"#, json!("text")),
        ("pcm_16000", r#"{"text":5}"#, json!("text")),
        ("pcm_16000", "not json", json!(0)),
    ];
    for (format, body, last_loc) in cases {
        c.send(&tts_request("v", format, Some(KEY), body, ""));
        let r = c.response();
        assert_eq!(r.status, 422, "{format} {body}");
        let detail = &r.json()["detail"];
        assert!(detail.is_array() && detail[0]["msg"].is_string());
        assert_eq!(detail[0]["loc"].as_array().unwrap().last(), Some(&last_loc));
    }
    // Missing output_format entirely.
    c.send(b"POST /v1/text-to-speech/v/stream HTTP/1.1\r\nxi-api-key: test-key\r\nContent-Length: 13\r\n\r\n{\"text\":\"hi\"}");
    assert_eq!(c.response().status, 422);
    c.send(&tts_request("v", "pcm_16000", Some(KEY), "{}", ""));
    let r = c.response();
    assert_eq!(r.json()["detail"][0]["msg"], "field required");
    assert_eq!(r.json()["detail"][0]["type"], "value_error.missing");
    // Rejected requests are still recorded.
    assert_eq!(m.request_count(), 7);
    assert!(m.requests().iter().all(|r| r.status == 422));
}

#[test]
fn routes_unknown_paths_and_methods() {
    let m = mock();
    let mut c = Client::connect(&m);
    c.send(b"GET /v1/voices HTTP/1.1\r\nxi-api-key: test-key\r\n\r\n");
    assert_eq!(c.response().status, 404);
    c.send(b"GET /v1/text-to-speech/v/stream?output_format=pcm_16000 HTTP/1.1\r\nxi-api-key: test-key\r\n\r\n");
    assert_eq!(c.response().status, 405);
    // The non-streaming endpoint answers like the streaming one.
    c.send(&String::from_utf8(speak("plain")).unwrap().replace("/stream?", "?").into_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected("plain", 16000));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let m = mock();
    let mut c = Client::connect(&m);
    for text in ["first request", "second one", "third"] {
        c.send(&speak(text));
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.body, expected(text, 16000));
    }
    // An error response keeps the connection too.
    c.send(&tts_request("v", "pcm_16000", Some("bad"), r#"{"text":"x"}"#, ""));
    assert_eq!(c.response().status, 401);
    c.send(&speak("after the error"));
    assert_eq!(c.response().body, expected("after the error", 16000));
    assert_eq!(m.connection_count(), 1);
    let reqs = m.requests();
    assert_eq!(reqs.len(), 5);
    assert!(reqs.iter().all(|r| r.connection_id == 1));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let m = mock();
    let mut c = Client::connect(&m);
    let mut both = speak("one");
    both.extend(b"\r\n"); // stray CRLF between requests is tolerated
    both.extend(speak("two"));
    c.send(&both);
    assert_eq!(c.response().body, expected("one", 16000));
    assert_eq!(c.response().body, expected("two", 16000));
}

#[test]
fn connection_close_is_honoured() {
    let m = mock();
    let mut c = Client::connect(&m);
    let body = r#"{"text":"bye"}"#;
    c.send(&tts_request("v", "pcm_16000", Some(KEY), body, "Connection: close\r\n"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.complete);
    assert!(c.closed_by_server());
}

#[test]
fn http10_gets_close_delimited_audio() {
    let m = mock();
    let mut c = Client::connect(&m);
    let req = String::from_utf8(speak("old client")).unwrap().replacen("HTTP/1.1", "HTTP/1.0", 1);
    c.send(req.as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body, expected("old client", 16000));
}

#[test]
fn expect_100_continue_before_body() {
    let m = mock();
    let mut c = Client::connect(&m);
    let body = r#"{"text":"continue please"}"#;
    let req = tts_request("v", "pcm_16000", Some(KEY), body, "Expect: 100-continue\r\n");
    let head_len = req.len() - body.len();
    c.send(&req[..head_len]);
    let (status, headers) = c.head();
    assert_eq!(status, 100);
    assert!(headers.is_empty());
    c.send(body.as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected("continue please", 16000));
}

#[test]
fn accepts_chunked_request_body() {
    let m = mock();
    let mut c = Client::connect(&m);
    c.send(
        b"POST /v1/text-to-speech/v/stream?output_format=pcm_16000 HTTP/1.1\r\n\
          xi-api-key: test-key\r\nTransfer-Encoding: chunked\r\n\r\n\
          6;ext=1\r\n{\"text\r\n9\r\n\":\"chunk\"\r\n1\r\n}\r\n0\r\nX-Trailer: y\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected("chunk", 16000));
    assert_eq!(m.requests()[0].body, br#"{"text":"chunk"}"#);
}

#[test]
fn garbage_gets_400_and_close() {
    let m = mock();
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"HELLO\r\n\r\n",
        b"POST /v1/text-to-speech/v/stream HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /v1/text-to-speech/v/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut c = Client::connect(&m);
        c.send(garbage);
        let r = c.response();
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed_by_server());
    }
    // Oversized head.
    let mut c = Client::connect(&m);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70 * 1024));
    let _ = c.stream.write_all(big.as_bytes());
    assert_eq!(c.response().status, 431);
    // Oversized body is refused before it is read.
    let mut c = Client::connect(&m);
    c.send(b"POST /v1/text-to-speech/v/stream HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n");
    assert_eq!(c.response().status, 413);
    // The server is unharmed.
    let mut c = Client::connect(&m);
    c.send(&speak("still alive"));
    assert_eq!(c.response().body, expected("still alive", 16000));
    assert!(m.requests().iter().all(|r| r.text.as_deref() == Some("still alive")));
}

#[test]
fn half_read_requests_and_early_disconnects_are_harmless() {
    let m = mock();
    {
        let mut c = Client::connect(&m);
        c.send(b"POST /v1/text-to-speech/v/stream?output_format=pcm_16000 HTTP/1.1\r\nxi-api");
    }
    {
        let mut c = Client::connect(&m);
        let req = speak("never finished");
        c.send(&req[..req.len() - 5]);
    }
    {
        let _c = Client::connect(&m); // connect and vanish
    }
    let mut c = Client::connect(&m);
    c.send(&speak("fine"));
    assert_eq!(c.response().body, expected("fine", 16000));
    assert_eq!(m.request_count(), 1);
}

#[test]
fn http_faults_have_elevenlabs_bodies() {
    let m = mock();
    m.when_text_contains("[busy]", Behavior::fault(Fault::system_busy()));
    m.when_text_contains("[conc]", Behavior::fault(Fault::too_many_concurrent_requests()));
    m.when_text_contains("[500]", Behavior::fault(Fault::server_error(500)));
    m.when_text_contains("[503]", Behavior::fault(Fault::server_error(503)));
    m.when_text_contains("[422]", Behavior::fault(Fault::ValidationError));
    m.when_voice_is("nobody", Behavior::fault(Fault::voice_not_found()));
    let mut c = Client::connect(&m);
    let mut ask = |voice: &str, text: &str| {
        let body = json!({ "text": text }).to_string();
        c.send(&tts_request(voice, "pcm_16000", Some(KEY), &body, ""));
        c.response()
    };
    let r = ask("v", "x [busy]");
    assert_eq!((r.status, r.json()["detail"]["status"].clone()), (429, "system_busy".into()));
    let r = ask("v", "x [conc]");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["detail"]["status"], "too_many_concurrent_requests");
    let r = ask("v", "[500]");
    assert_eq!(r.status, 500);
    assert!(r.json()["detail"].is_string());
    assert_eq!(ask("v", "[503]").status, 503);
    let r = ask("v", "[422]");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "text"]));
    let r = ask("nobody", "hello");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["detail"]["status"], "voice_not_found");
    // No rule matched: normal audio, on the same connection.
    let r = ask("v", "normal");
    assert_eq!(r.body, expected("normal", 16000));
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn json_and_html_instead_of_audio() {
    let m = mock();
    m.when_text_contains("json", Behavior::fault(Fault::JsonInsteadOfAudio));
    m.when_text_contains("html", Behavior::fault(Fault::WrongContentType));
    let mut c = Client::connect(&m);
    c.send(&speak("json"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json().is_object());
    c.send(&speak("html"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.starts_with(b"<html>"));
    assert!(m.requests().iter().all(|q| q.audio_sent.is_empty() && q.completed));
}

#[test]
fn cut_after_bytes_ends_without_last_chunk() {
    let m = mock();
    m.set_default(Behavior::fault(Fault::CutAfterBytes(5000)).with_chunk_bytes(1000));
    let mut c = Client::connect(&m);
    c.send(&speak("a fairly long sentence to cut short"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert_eq!(r.chunk_sizes, vec![1000; 5]);
    assert_eq!(r.body, expected("a fairly long sentence to cut short", 16000)[..5000]);
    assert!(c.closed_by_server());
    assert!(m.wait_until_idle(LONG));
    let q = &m.requests()[0];
    assert_eq!(q.audio_sent.len(), 5000);
    assert!(!q.completed);
    assert_eq!(q.status, 200);
}

#[test]
fn stall_after_first_chunk_holds_until_client_leaves() {
    let m = mock();
    m.set_default(Behavior::fault(Fault::StallAfterFirstChunk));
    let mut c = Client::connect(&m);
    c.send(&speak("stall me"));
    let (status, _) = c.head();
    assert_eq!(status, 200);
    assert_eq!(c.line().unwrap(), "641"); // 1601 in hex
    assert_eq!(c.take(1601 + 2).unwrap().len(), 1603);
    assert!(c.silent_for(Duration::from_millis(300)));
    assert_eq!(m.active_streams(), 1);
    let q = &m.requests()[0];
    assert_eq!(q.audio_sent, expected("stall me", 16000)[..1601]);
    assert!(!q.completed);
    drop(c);
    assert!(m.wait_until_idle(LONG), "stall should end when the client leaves");
}

#[test]
fn hang_before_headers_sends_nothing() {
    let m = mock();
    m.set_default(Behavior::fault(Fault::HangBeforeHeaders));
    let mut c = Client::connect(&m);
    c.send(&speak("hang"));
    assert!(c.silent_for(Duration::from_millis(300)));
    let q = &m.wait_for_requests(1, LONG)[0];
    assert_eq!(q.status, 0);
    assert!(q.first_byte_at.is_none());
    assert_eq!(m.active_streams(), 1);
    drop(c);
    assert!(m.wait_until_idle(LONG));
}

#[test]
fn first_byte_delay_and_pacing_are_lower_bounds() {
    let m = mock();
    m.when_text_contains(
        "delay",
        Behavior::default().with_first_byte_delay(Duration::from_millis(150)).with_audio_ms(20),
    );
    m.when_text_contains("realtime", Behavior::realtime().with_audio_ms(200).with_chunk_bytes(640));
    m.when_text_contains("slow", Behavior::default().with_speed(0.5).with_audio_ms(100));
    let mut c = Client::connect(&m);

    let t0 = Instant::now();
    c.send(&speak("delay"));
    c.head();
    assert!(t0.elapsed() >= Duration::from_millis(150));
    c.skip_chunked_body();

    let t0 = Instant::now();
    c.send(&speak("realtime"));
    let r = c.response();
    assert!(t0.elapsed() >= Duration::from_millis(150), "{:?}", t0.elapsed());
    assert_eq!(r.body.len(), 6400);
    assert_eq!(r.chunk_sizes, vec![640; 10]);

    // 100 ms of audio at half speed plays for 200 ms; the last chunk is due
    // at 1601 bytes / 16000 B/s ≈ 100 ms after the first.
    let t0 = Instant::now();
    c.send(&speak("slow"));
    let r = c.response();
    assert!(t0.elapsed() >= Duration::from_millis(90), "{:?}", t0.elapsed());
    assert_eq!(r.body.len(), 3200);

    // Per-chunk schedule as recorded: chunk k no earlier than its due time.
    let q = &m.requests()[1];
    let bytes_per_sec = 16000.0 * 2.0;
    let played = Duration::from_secs_f64((6400 - 640) as f64 / bytes_per_sec);
    assert!(q.first_byte_at.unwrap() + played <= Instant::now());
}

#[test]
fn client_abort_mid_stream_is_quiet() {
    let m = mock();
    m.when_text_contains("long", Behavior::realtime().with_audio_ms(5000));
    let mut c = Client::connect(&m);
    c.send(&speak("long"));
    c.head();
    c.line();
    drop(c);
    assert!(m.wait_until_idle(LONG));
    let q = &m.requests()[0];
    assert!(!q.completed);
    assert!(q.audio_sent.len() < 5000 * 32);
    // Still serving.
    let mut c = Client::connect(&m);
    c.send(&speak("next"));
    assert_eq!(c.response().body, expected("next", 16000));
}

#[test]
fn zero_length_audio_and_single_chunk() {
    let m = mock();
    m.when_text_contains("empty", Behavior::default().with_audio_ms(0));
    m.when_text_contains("one", Behavior::default().with_chunk_bytes(0));
    let mut c = Client::connect(&m);
    c.send(&speak("empty"));
    let r = c.response();
    assert!(r.complete && r.body.is_empty());
    c.send(&speak("one"));
    let r = c.response();
    assert_eq!(r.chunk_sizes, vec![expected("one", 16000).len()]);
}

#[test]
fn many_concurrent_connections() {
    let m = mock();
    let addr = m.addr();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(LONG)).unwrap();
                let mut c = Client { stream, buf: Vec::new() };
                let text = format!("caller {i}");
                let body = json!({ "text": text }).to_string();
                c.send(&tts_request("v", "pcm_8000", Some(KEY), &body, ""));
                let r = c.response();
                assert_eq!(r.status, 200);
                assert_eq!(r.body, expected(&text, 8000));
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    assert_eq!(m.connection_count(), 200);
    assert_eq!(m.request_count(), 200);
    assert!(m.wait_until_idle(LONG));
}

#[test]
fn wait_for_requests_times_out_with_what_it_has() {
    let m = mock();
    let t0 = Instant::now();
    assert!(m.wait_for_requests(1, Duration::from_millis(50)).is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(50));
    let addr = m.addr();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&speak("late")).unwrap();
        s
    });
    assert_eq!(m.wait_for_requests(1, LONG).len(), 1);
    drop(t.join().unwrap());
}

#[test]
fn drop_is_prompt_with_open_stall_and_blocked_writer() {
    let m = mock();
    m.when_text_contains("stall", Behavior::fault(Fault::StallAfterFirstChunk));
    m.when_text_contains("flood", Behavior::default().with_audio_ms(600_000));
    let mut stalled = Client::connect(&m);
    stalled.send(&speak("stall"));
    stalled.head();
    // This client never reads, so the mock's writes block once the socket
    // buffers are full.
    let mut flooded = Client::connect(&m);
    flooded.send(&speak("flood"));
    let mut idle = Client::connect(&m);
    idle.send(&speak("idle keep-alive"));
    idle.response();
    let mut half = Client::connect(&m);
    half.send(b"POST /v1/text-to-speech/v/stream HTTP/1.1\r\nContent-Le");
    let flood_sent = |m: &MockUpstream| {
        m.requests().iter().find(|r| r.text.as_deref() == Some("flood")).map_or(0, |r| r.audio_sent.len())
    };
    // Wait (bounded) until the flood writer is stuck.
    let give_up = Instant::now() + LONG;
    let mut last = usize::MAX;
    while Instant::now() < give_up {
        let now = flood_sent(&m);
        if now == last && now > 0 {
            break;
        }
        last = now;
        thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(m.active_streams(), 2);

    let t0 = Instant::now();
    drop(m);
    // Generous bound: a hang would last minutes (the hold and idle limits).
    assert!(t0.elapsed() < Duration::from_secs(4), "drop took {:?}", t0.elapsed());
    assert!(stalled.take(1601 + 2).is_some());
    assert!(!stalled.fill(), "stalled stream should be closed");
    assert!(idle.closed_by_server());
    assert!(half.closed_by_server());
}

// --- /stream/with-timestamps ---

fn timestamps_request(text: &str, format: &str) -> Vec<u8> {
    let body = json!({ "text": text, "model_id": "eleven_flash_v2_5" }).to_string();
    String::from_utf8(tts_request("voice1", format, Some(KEY), &body, ""))
        .unwrap()
        .replacen("/stream?", "/stream/with-timestamps?", 1)
        .into_bytes()
}

/// Strict standard base64 with `=` padding (the mock's encoder is the thing
/// under test, so it must not be reused here).
fn b64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    assert_eq!(s.len() % 4, 0, "unpadded base64");
    let mut out = Vec::new();
    for quad in s.as_bytes().chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        assert!(pad <= 2 && !quad[..4 - pad].contains(&b'='), "bad padding");
        let bits =
            quad[..4 - pad].iter().enumerate().fold(0u32, |acc, (i, &c)| acc | u32::from(value(c)) << (18 - 6 * i));
        out.extend_from_slice(&bits.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// The body's lines, each checked to be its own HTTP chunk ending in `\n`.
fn ndjson_lines(r: &Response) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut at = 0;
    for &size in &r.chunk_sizes {
        let chunk = &r.body[at..at + size];
        at += size;
        assert_eq!(chunk.iter().filter(|&&b| b == b'\n').count(), 1, "one line per chunk");
        assert_eq!(chunk.last(), Some(&b'\n'));
        lines.push(serde_json::from_slice(chunk).expect("JSON line"));
    }
    lines
}

fn line_pcm(line: &Value) -> Vec<u8> {
    b64_decode(line["audio_base64"].as_str().expect("audio_base64 string"))
}

/// `got` (seconds, from JSON) is `want_ms`. Not bit-exact: serde_json's
/// default float parser may be one ulp off the value that was printed.
fn assert_secs(got: &Value, want_ms: f64, i: usize) {
    let got = got.as_f64().expect("number");
    assert!((got * 1000.0 - want_ms).abs() <= 1e-9 * want_ms.max(1.0), "char {i}: {got} s vs {want_ms} ms");
}

/// Checks every line's alignment against the deterministic schedule and
/// returns the concatenated PCM.
fn check_alignment(lines: &[Value], text: &str, rate: u32, ms: u32) -> Vec<u8> {
    let mut pcm = Vec::new();
    let mut chars = String::new();
    for (k, line) in lines.iter().enumerate() {
        assert_eq!(line["alignment"], line["normalized_alignment"]);
        let t0 = pcm.len() as f64 * 500.0 / f64::from(rate);
        pcm.extend(line_pcm(line));
        let t1 = pcm.len() as f64 * 500.0 / f64::from(rate);
        let a = &line["alignment"];
        if a.is_null() {
            continue;
        }
        let got: Vec<&str> = a["characters"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert!(!got.is_empty(), "an empty alignment should be null");
        let starts = a["character_start_times_seconds"].as_array().unwrap();
        let ends = a["character_end_times_seconds"].as_array().unwrap();
        assert_eq!((starts.len(), ends.len()), (got.len(), got.len()));
        for (j, c) in got.iter().enumerate() {
            let i = chars.chars().count();
            assert_eq!(c.chars().count(), 1, "{c:?} is not one character");
            chars.push_str(c);
            let start_ms = char_start_ms(text, ms, i);
            assert_secs(&starts[j], start_ms, i);
            assert_secs(&ends[j], char_start_ms(text, ms, i + 1), i + 1);
            assert!(start_ms >= t0, "char {i} starts before line {k}");
            assert!(start_ms < t1 || k == lines.len() - 1, "char {i} starts after line {k}");
        }
    }
    assert_eq!(chars, text);
    pcm
}

#[test]
fn with_timestamps_streams_the_same_audio_as_ndjson() {
    let m = mock();
    let mut c = Client::connect(&m);
    // 13 characters, 55 ms each; lines of 1600 bytes are 50 ms, so lines
    // 10 and 14 start no character (null alignment).
    let text = "Héllo, wörld!";
    c.send(&timestamps_request(text, "pcm_16000"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("x-character-count"), Some("13"));
    assert!(r.complete);
    let lines = ndjson_lines(&r);
    let want = expected(text, 16000);
    assert_eq!(lines.len(), want.len().div_ceil(1600));
    let (last, full) = lines.split_last().unwrap();
    assert!(full.iter().all(|l| line_pcm(l).len() == 1600), "1601 rounds down to whole samples");
    assert_eq!(line_pcm(last).len(), want.len() - 1600 * full.len());
    // Keys in ElevenLabs' order, not sorted.
    assert!(r.body.starts_with(b"{\"audio_base64\":\""));
    assert!(lines[10]["alignment"].is_null() && lines[14]["normalized_alignment"].is_null());
    assert_eq!(check_alignment(&lines, text, 16000, audio_ms_for_text(text)), want);

    // Keep-alive holds, and plain /stream is recorded as such.
    c.send(&speak("plain"));
    assert_eq!(c.response().body, expected("plain", 16000));
    let reqs = m.wait_for_requests(2, LONG);
    let q = &reqs[0];
    assert!(q.with_timestamps);
    assert_eq!(q.path, "/v1/text-to-speech/voice1/stream/with-timestamps");
    assert_eq!(q.voice_id, "voice1");
    assert_eq!(q.sample_rate, Some(16000));
    assert_eq!((q.status, q.completed), (200, true));
    assert_eq!(q.audio_sent, want);
    assert!(!reqs[1].with_timestamps);
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn with_timestamps_line_sizes_and_last_line_alignment() {
    let m = mock();
    m.when_text_contains("odd", Behavior::default().with_chunk_bytes(1001));
    m.when_text_contains("tiny", Behavior::default().with_chunk_bytes(1).with_audio_ms(5));
    m.when_text_contains("whole", Behavior::default().with_chunk_bytes(0));
    // 500 characters in 10 ms at 22.05 kHz: 220 samples end at ~9.977 ms,
    // so the last character (9.98 ms) starts after the audio's last byte
    // and only "the last line takes the rest" places it.
    m.when_text_contains("crowd", Behavior::default().with_chunk_bytes(100).with_audio_ms(10));
    let mut c = Client::connect(&m);
    let mut ask = |text: &str, rate: u32| {
        c.send(&timestamps_request(text, &format!("pcm_{rate}")));
        let r = c.response();
        assert!(r.status == 200 && r.complete, "{text}");
        ndjson_lines(&r)
    };

    let lines = ask("odd chunk size", 8000);
    let want = expected("odd chunk size", 8000);
    assert!(lines[..lines.len() - 1].iter().all(|l| line_pcm(l).len() == 1000));
    assert_eq!(check_alignment(&lines, "odd chunk size", 8000, audio_ms_for_text("odd chunk size")), want);

    let lines = ask("tiny", 8000);
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().all(|l| line_pcm(l).len() == 2));
    assert_eq!(check_alignment(&lines, "tiny", 8000, 5), synth_pcm("tiny", 8000, 5));

    let lines = ask("whole", 24000);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["alignment"]["characters"], json!(["w", "h", "o", "l", "e"]));
    assert_eq!(check_alignment(&lines, "whole", 24000, audio_ms_for_text("whole")), expected("whole", 24000));

    let crowd = format!("crowd{}", "x".repeat(495));
    let lines = ask(&crowd, 22050);
    assert_eq!(lines.len(), 5);
    assert!(char_start_ms(&crowd, 10, 499) > 440.0 * 500.0 / 22050.0);
    assert_eq!(check_alignment(&lines, &crowd, 22050, 10), synth_pcm(&crowd, 22050, 10));
}

#[test]
fn with_timestamps_omit_alignment_sends_nulls() {
    let m = mock();
    m.set_default(Behavior::default().with_omit_alignment(true).with_chunk_bytes(640));
    let mut c = Client::connect(&m);
    c.send(&timestamps_request("no timing here", "pcm_16000"));
    let r = c.response();
    assert!(r.complete);
    let lines = ndjson_lines(&r);
    assert!(lines.len() > 1);
    assert!(lines.iter().all(|l| l["alignment"].is_null() && l["normalized_alignment"].is_null()));
    assert!(r.body.ends_with(b",\"alignment\":null,\"normalized_alignment\":null}\n"));
    let pcm: Vec<u8> = lines.iter().flat_map(line_pcm).collect();
    assert_eq!(pcm, expected("no timing here", 16000));
}

#[test]
fn with_timestamps_cut_after_bytes_cuts_after_that_line() {
    let m = mock();
    m.set_default(Behavior::fault(Fault::CutAfterBytes(4500)).with_chunk_bytes(1000));
    let mut c = Client::connect(&m);
    let text = "a fairly long sentence to cut short";
    c.send(&timestamps_request(text, "pcm_16000"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    let lines = ndjson_lines(&r);
    assert_eq!(lines.len(), 5);
    let pcm: Vec<u8> = lines.iter().flat_map(line_pcm).collect();
    assert_eq!(pcm, expected(text, 16000)[..5000]);
    // Only the characters starting in the 156.25 ms sent: 55 ms each.
    let chars: Vec<Value> = lines
        .iter()
        .filter(|l| !l["alignment"].is_null())
        .flat_map(|l| l["alignment"]["characters"].as_array().unwrap().clone())
        .collect();
    assert_eq!(chars, json!(["a", " ", "f"]).as_array().unwrap().clone());
    assert!(c.closed_by_server());
    assert!(m.wait_until_idle(LONG));
    let q = &m.requests()[0];
    assert!(q.with_timestamps);
    assert_eq!(q.audio_sent, expected(text, 16000)[..5000]);
    assert!(!q.completed);
}

#[test]
fn with_timestamps_malformed_line_then_normal_end() {
    let m = mock();
    m.set_default(Behavior::fault(Fault::MalformedTimestampLine).with_chunk_bytes(800));
    let mut c = Client::connect(&m);
    c.send(&timestamps_request("broken json", "pcm_8000"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.chunk_sizes.len(), 2);
    let (first, second) = r.body.split_at(r.chunk_sizes[0]);
    let first: Value = serde_json::from_slice(first).unwrap();
    assert_eq!(line_pcm(&first), expected("broken json", 8000)[..800]);
    assert!(second.ends_with(b"\n"));
    assert!(serde_json::from_slice::<Value>(second).is_err());
    // Plain /stream ignores the fault.
    c.send(&tts_request("v", "pcm_8000", Some(KEY), r#"{"text":"broken json"}"#, ""));
    let r = c.response();
    assert!(r.complete);
    assert_eq!(r.body, expected("broken json", 8000));
    let q = &m.wait_for_requests(2, LONG)[0];
    assert_eq!(q.audio_sent, expected("broken json", 8000)[..800]);
    assert!(q.completed);
}

#[test]
fn with_timestamps_checks_and_faults_as_for_stream() {
    let m = mock();
    m.when_text_contains("[busy]", Behavior::fault(Fault::system_busy()));
    m.when_text_contains("json", Behavior::fault(Fault::JsonInsteadOfAudio));
    m.when_text_contains("html", Behavior::fault(Fault::WrongContentType));
    m.when_text_contains("stall", Behavior::fault(Fault::StallAfterFirstChunk));
    let mut c = Client::connect(&m);
    let wrong_key = String::from_utf8(timestamps_request("hi", "pcm_16000")).unwrap().replace(KEY, "nope");
    c.send(wrong_key.as_bytes());
    assert_eq!(c.response().status, 401);
    c.send(&timestamps_request("hi", "mp3_44100_128"));
    assert_eq!(c.response().status, 422);
    c.send(&timestamps_request("x [busy]", "pcm_16000"));
    let r = c.response();
    assert_eq!((r.status, r.json()["detail"]["status"].clone()), (429, "system_busy".into()));
    c.send(&timestamps_request("json", "pcm_16000"));
    let r = c.response();
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    assert!(r.header("content-length").is_some());
    c.send(&timestamps_request("html", "pcm_16000"));
    assert!(c.response().header("content-type").unwrap().starts_with("text/html"));
    let mut post = |path: &str| {
        c.send(
            format!("POST {path}?output_format=pcm_16000 HTTP/1.1\r\nxi-api-key: {KEY}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        c.response().status
    };
    assert_eq!(post("/v1/text-to-speech/v/stream/with-timestamps/x"), 404);
    assert_eq!(post("/v1/text-to-speech/v/with-timestamps"), 404);
    assert!(m.requests().iter().all(|q| q.audio_sent.is_empty()));
    assert!(m.requests()[..5].iter().all(|q| q.with_timestamps));

    let mut c = Client::connect(&m);
    c.send(&timestamps_request("stall me", "pcm_16000"));
    let (status, _) = c.head();
    assert_eq!(status, 200);
    let size = usize::from_str_radix(&c.line().unwrap(), 16).unwrap();
    let line: Value = serde_json::from_slice(&c.take(size).unwrap()).unwrap();
    assert_eq!(line_pcm(&line), expected("stall me", 16000)[..1600]);
    assert_eq!(c.line().as_deref(), Some(""));
    assert!(c.silent_for(Duration::from_millis(300)));
    assert_eq!(m.active_streams(), 1);
    drop(c);
    assert!(m.wait_until_idle(LONG));
}

#[test]
fn with_timestamps_paces_lines_and_serves_http10() {
    let m = mock();
    m.when_text_contains("realtime", Behavior::realtime().with_audio_ms(200).with_chunk_bytes(640));
    let mut c = Client::connect(&m);
    let t0 = Instant::now();
    c.send(&timestamps_request("realtime", "pcm_16000"));
    let r = c.response();
    // The tenth line is due after 180 ms of audio.
    assert!(t0.elapsed() >= Duration::from_millis(180), "{:?}", t0.elapsed());
    assert_eq!(ndjson_lines(&r).len(), 10);

    let mut c = Client::connect(&m);
    let req =
        String::from_utf8(timestamps_request("old client", "pcm_16000")).unwrap().replacen("HTTP/1.1", "HTTP/1.0", 1);
    c.send(req.as_bytes());
    let r = c.response();
    assert_eq!((r.status, r.header("transfer-encoding")), (200, None));
    let body = String::from_utf8(r.body).unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        check_alignment(&lines, "old client", 16000, audio_ms_for_text("old client")),
        expected("old client", 16000)
    );
}

// --- Voice::Espeak (skipped without libespeak-ng.so.1) ---

#[test]
fn espeak_voice_speaks_both_endpoints_with_real_alignment() {
    if let Err(why) = espeak::available() {
        eprintln!("SKIPPED espeak_voice_speaks_both_endpoints_with_real_alignment: {why}");
        return;
    }
    let m = mock();
    m.set_default(Behavior::default().with_voice(Voice::Espeak).with_chunk_bytes(4000));
    let mut c = Client::connect(&m);
    let text = "Hello there, general Kenobi.";
    c.send(&timestamps_request(text, "pcm_8000"));
    let r = c.response();
    assert_eq!((r.status, r.complete), (200, true));
    let lines = ndjson_lines(&r);
    let mut pcm = Vec::new();
    let mut chars = String::new();
    let mut starts = Vec::new();
    for line in &lines {
        let t0 = pcm.len() as f64 / 16.0;
        pcm.extend(line_pcm(line));
        let a = &line["alignment"];
        if a.is_null() {
            continue;
        }
        for (ch, start) in
            a["characters"].as_array().unwrap().iter().zip(a["character_start_times_seconds"].as_array().unwrap())
        {
            chars.push_str(ch.as_str().unwrap());
            let ms = start.as_f64().unwrap() * 1000.0;
            assert!(ms >= t0 - 1e-6, "{ch} at {ms} ms, in a line from {t0} ms");
            starts.push(ms);
        }
    }
    assert_eq!(chars, text, "every character aligned once, in order");
    assert!(starts.windows(2).all(|w| w[0] <= w[1]));
    let audio_ms = pcm.len() as f64 / 16.0;
    assert!((1000.0..5000.0).contains(&audio_ms), "{audio_ms} ms of speech");
    // Real word timing, not even shares: "general" follows the comma's pause.
    let general = starts[text.find("general").unwrap()];
    let even = audio_ms * 13.0 / 28.0;
    assert!((general - even).abs() > 1.0 && general > 300.0, "general at {general} ms");
    assert_eq!(m.requests()[0].audio_sent, pcm);

    // Plain /stream speaks too: raw PCM of about the same length.
    c.send(&speak(text));
    let r = c.response();
    assert_eq!((r.status, r.header("content-type")), (200, Some("audio/pcm")));
    let stream_ms = r.body.len() as f64 / 32.0; // pcm_16000
    assert!((stream_ms - audio_ms).abs() < 50.0, "{stream_ms} vs {audio_ms} ms");
    assert_ne!(r.body, expected(text, 16000), "speech, not the test tones");
    let peak = r.body.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs()).max().unwrap();
    assert!(peak > 3000, "peak {peak}");
}

#[test]
fn every_write_is_recorded_with_when_it_began_and_returned() {
    let m = mock();
    m.when_text_contains("stall", Behavior::fault(Fault::StallAfterFirstChunk));
    m.when_text_contains("flood", Behavior::default().with_audio_ms(600_000));
    // A whole response: writes in order, each returned, none before the head.
    let mut c = Client::connect(&m);
    c.send(&speak("whole response"));
    assert!(c.response().complete);
    // (The client can read the last bytes before the write that sent them
    // has returned and been recorded: wait for the exchange to end.)
    assert!(m.wait_until_idle(LONG));
    let q = &m.wait_for_requests(1, LONG)[0];
    assert!(q.writes.len() > 1, "{:?}", q.writes);
    assert!(q.writes[0].began >= q.first_byte_at.unwrap());
    assert!(q.writes.iter().all(|w| w.ended.is_some_and(|e| e >= w.began)));
    assert!(q.writes.windows(2).all(|w| w[1].began >= w[0].ended.unwrap()));
    assert!(!q.write_pending());
    assert_eq!(q.last_write_end(), q.writes.last().unwrap().ended);
    // A stall: the head with the first chunk, then nothing.
    let mut s = Client::connect(&m);
    s.send(&speak("stall here"));
    s.head();
    let deadline = Instant::now() + LONG;
    while m.requests().get(1).and_then(RecordedRequest::last_write_end).is_none() {
        assert!(Instant::now() < deadline, "the first write never returned");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(s.silent_for(Duration::from_millis(100)));
    let q = &m.requests()[1];
    assert_eq!(q.writes.len(), 1);
    assert!(!q.write_pending());
    // A client that does not read: the write blocks, and shows as pending.
    let mut f = Client::connect(&m);
    f.send(&speak("flood me"));
    let deadline = Instant::now() + LONG;
    while !m.requests().get(2).is_some_and(RecordedRequest::write_pending) {
        assert!(Instant::now() < deadline, "the write never blocked");
        thread::sleep(Duration::from_millis(5));
    }
    drop((c, s, f));
    assert!(m.wait_until_idle(LONG));
}

// --- Account: concurrency plan, billing and region headers, forced faults ---

/// Polls `cond` until it holds; panics after [`LONG`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The first request with `text`.
fn request_for(m: &MockUpstream, text: &str) -> RecordedRequest {
    m.requests().into_iter().find(|q| q.text.as_deref() == Some(text)).expect("no such request")
}

/// Two clients each holding a slot: their requests stall after the first
/// chunk until they hang up.
fn hold_two_slots(m: &MockUpstream) -> (Client, Client) {
    m.when_text_contains("hold", Behavior::fault(Fault::StallAfterFirstChunk));
    let mut a = Client::connect(m);
    a.send(&speak("hold a"));
    let mut b = Client::connect(m);
    b.send(&speak("hold b"));
    for c in [&mut a, &mut b] {
        let (status, headers) = c.head();
        assert_eq!(status, 200);
        // With a limit: this one, and maybe the other.
        if let Some((_, current)) = headers.iter().find(|(n, _)| n == "current-concurrent-requests") {
            assert!(current == "1" || current == "2", "{current}");
        }
    }
    assert_eq!(m.max_concurrent(), 2);
    (a, b)
}

#[test]
fn plan_limit_refuses_past_it_with_429_and_headers() {
    let m = mock();
    m.set_plan_limit(Some(2));
    let (a, b) = hold_two_slots(&m);
    let mut c = Client::connect(&m);
    c.send(&speak("third caller"));
    let r = c.response();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["detail"]["status"], "too_many_concurrent_requests");
    assert!(r.json()["detail"]["message"].is_string());
    assert_eq!(r.header("current-concurrent-requests"), Some("2"));
    assert_eq!(r.header("maximum-concurrent-requests"), Some("2"));
    assert_eq!(r.header("character-cost"), None);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(m.plan_refusals(), 1);
    assert_eq!((m.max_concurrent(), m.concurrent_requests()), (2, 2), "a refusal is not in progress");
    // Errors before the account is known carry no account headers.
    c.send(&tts_request("v", "pcm_16000", Some("wrong"), r#"{"text":"x"}"#, ""));
    let r = c.response();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("maximum-concurrent-requests"), None);
    // A freed slot serves again, on the same connection.
    drop(a);
    eventually("a's slot to free", || m.concurrent_requests() == 1);
    assert!(request_for(&m, "hold a").ended_at.is_some());
    c.send(&speak("fourth caller"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected("fourth caller", 16000));
    assert_eq!(r.header("current-concurrent-requests"), Some("2"));
    assert_eq!(r.header("maximum-concurrent-requests"), Some("2"));
    drop(b);
    assert!(m.wait_until_idle(LONG));
    assert_eq!((m.max_concurrent(), m.plan_refusals()), (2, 1));
    m.reset_max_concurrent();
    assert_eq!(m.max_concurrent(), 0);
    // No limit: no concurrency headers, nothing refused.
    m.set_plan_limit(None);
    let (a, b) = hold_two_slots(&m);
    c.send(&speak("no limit"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("current-concurrent-requests"), None);
    assert_eq!(r.header("maximum-concurrent-requests"), None);
    assert_eq!(m.max_concurrent(), 3);
    drop((a, b));
    assert!(m.wait_until_idle(LONG));
}

#[test]
fn plan_queue_holds_a_request_until_a_slot_frees() {
    let m = mock();
    m.set_plan_limit(Some(2));
    m.set_plan_queue(1);
    let (a, b) = hold_two_slots(&m);
    let mut c = Client::connect(&m);
    c.send(&speak("queued caller"));
    eventually("the third to queue", || m.plan_queued() == 1);
    assert!(c.silent_for(Duration::from_millis(100)));
    // The queue is full: the fourth is refused at once.
    let mut d = Client::connect(&m);
    d.send(&speak("fourth caller"));
    let r = d.response();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["detail"]["status"], "too_many_concurrent_requests");
    assert_eq!(m.plan_refusals(), 1);
    // A slot frees: the queued request is admitted and served in full.
    drop(a);
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected("queued caller", 16000));
    assert_eq!(r.header("character-cost"), Some("13"));
    assert_eq!(r.header("maximum-concurrent-requests"), Some("2"));
    let (held, queued) = (request_for(&m, "hold a"), request_for(&m, "queued caller"));
    assert!(queued.first_byte_at.unwrap() >= held.ended_at.unwrap());
    assert_eq!(m.max_concurrent(), 2);
    drop(b);
    assert!(m.wait_until_idle(LONG));
    // A client that leaves while queued gives up its place.
    let (a, b) = hold_two_slots(&m);
    let mut e = Client::connect(&m);
    e.send(&speak("leaves the queue"));
    eventually("e to queue", || m.plan_queued() == 1);
    drop(e);
    eventually("e to leave the queue", || m.plan_queued() == 0);
    assert_eq!(m.plan_refusals(), 1);
    drop((a, b));
    assert!(m.wait_until_idle(LONG));
    assert!(m.requests().iter().all(|q| q.ended_at.is_some()));
}

#[test]
fn plan_limit_is_checked_after_key_and_validation_and_faults_still_apply() {
    let m = mock();
    m.set_plan_limit(Some(0));
    m.set_region(Some("us-east-1"));
    let mut c = Client::connect(&m);
    c.send(&tts_request("v", "pcm_16000", Some(KEY), "{}", ""));
    let r = c.response();
    assert_eq!(r.status, 422);
    assert_eq!(r.header("maximum-concurrent-requests"), Some("0"));
    assert_eq!(r.header("x-region"), Some("us-east-1"));
    c.send(&speak("nothing fits"));
    assert_eq!(c.response().status, 429);
    assert_eq!((m.plan_refusals(), m.max_concurrent()), (1, 0));
    m.set_plan_limit(Some(1));
    m.when_text_contains("[busy]", Behavior::fault(Fault::system_busy()));
    c.send(&speak("x [busy]"));
    let r = c.response();
    assert_eq!((r.status, r.json()["detail"]["status"].clone()), (429, "system_busy".into()));
    assert_eq!(r.header("current-concurrent-requests"), Some("1"));
    assert_eq!(r.header("character-cost"), None);
    assert_eq!((m.plan_refusals(), m.max_concurrent()), (1, 1));
}

#[test]
fn character_cost_and_region_headers() {
    let m = mock();
    m.when_text_contains("json", Behavior::fault(Fault::JsonInsteadOfAudio));
    let mut c = Client::connect(&m);
    let text = "Héllo, wörld! 👋";
    c.send(&speak(text));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("character-cost"), Some(text.chars().count().to_string().as_str()));
    assert_eq!(r.header("character-cost"), Some("15"));
    assert_eq!(r.header("x-region"), None);
    m.set_region(Some("eu-west-1"));
    c.send(&timestamps_request("twelve chars", "pcm_16000"));
    let r = c.response();
    assert_eq!(r.header("character-cost"), Some("12"));
    assert_eq!(r.header("x-region"), Some("eu-west-1"));
    c.send(&speak("json"));
    let r = c.response();
    assert_eq!((r.status, r.header("character-cost")), (200, Some("4")));
    // Errors carry the region but no cost; an unknown key neither.
    c.send(&tts_request("v", "pcm_16000", Some(KEY), r#"{"text":5}"#, ""));
    let r = c.response();
    assert_eq!((r.status, r.header("x-region"), r.header("character-cost")), (422, Some("eu-west-1"), None));
    c.send(&tts_request("v", "pcm_16000", None, r#"{"text":"x"}"#, ""));
    assert_eq!(c.response().header("x-region"), None);
    m.set_region(None);
    c.send(&speak("gone again"));
    let r = c.response();
    assert_eq!(r.header("x-region"), None);
    assert!(r.header("request-id").is_some());
}

#[test]
fn fail_next_fails_exactly_n_then_rules_apply() {
    let m = mock();
    m.fail_next(2, Fault::system_busy());
    assert_eq!(m.fail_next_remaining(), 2);
    let mut c = Client::connect(&m);
    // Requests that fail validation do not use one up.
    c.send(&tts_request("v", "pcm_16000", Some(KEY), "{}", ""));
    assert_eq!(c.response().status, 422);
    for i in 0..2 {
        c.send(&speak("retry me"));
        let r = c.response();
        assert_eq!(r.status, 429, "attempt {i}");
        assert_eq!(r.json()["detail"]["status"], "system_busy");
    }
    assert_eq!((m.fault_next_served(), m.fail_next_remaining()), (2, 0));
    c.send(&speak("retry me"));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected("retry me", 16000));
    assert_eq!(m.fault_next_served(), 2);
    // The rule's first-byte delay is skipped for the forced fault.
    m.when_text_contains("slow", Behavior::default().with_first_byte_delay(Duration::from_secs(60)));
    m.fail_next(1, Fault::server_error(503));
    let t0 = Instant::now();
    c.send(&speak("slow"));
    assert_eq!(c.response().status, 503);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(m.fault_next_served(), 3);
    // n = 0 cancels.
    m.fail_next(3, Fault::server_error(500));
    m.fail_next(0, Fault::server_error(500));
    c.send(&speak("fine"));
    assert_eq!(c.response().status, 200);
}

#[test]
fn set_failing_fails_everything_until_cleared() {
    let m = mock();
    m.set_plan_limit(Some(4));
    m.set_failing(Some(Fault::server_error(503)));
    let mut c = Client::connect(&m);
    for text in ["one", "two", "three"] {
        c.send(&speak(text));
        let r = c.response();
        assert_eq!(r.status, 503, "{text}");
        assert_eq!(r.header("maximum-concurrent-requests"), Some("4"));
    }
    assert_eq!(m.max_concurrent(), 1, "failed requests are admitted");
    // fail_next takes precedence while it lasts.
    m.fail_next(1, Fault::system_busy());
    c.send(&speak("four"));
    assert_eq!(c.response().status, 429);
    c.send(&speak("five"));
    assert_eq!(c.response().status, 503);
    m.set_failing(None);
    c.send(&speak("six"));
    assert_eq!(c.response().body, expected("six", 16000));
    assert_eq!(m.plan_refusals(), 0);
}

/// True if the connection fails (reset or closed) without a byte of
/// response.
fn refused(stream: &mut TcpStream) -> bool {
    let _ = stream.write_all(&speak("are you there"));
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !http::is_timeout(&e),
    }
}

#[test]
fn refuse_connections_resets_new_and_kept_alive_connections() {
    let m = mock();
    let mut kept = Client::connect(&m);
    kept.send(&speak("before"));
    assert_eq!(kept.response().status, 200);
    m.set_refuse_connections(true);
    for _ in 0..3 {
        let mut s = TcpStream::connect(m.addr()).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        assert!(refused(&mut s));
    }
    eventually("three refusals", || m.refused_connections() == 3);
    // The kept-alive connection is reset at its next request.
    assert!(refused(&mut kept.stream));
    eventually("the kept-alive refusal", || m.refused_connections() == 4);
    assert_eq!(m.request_count(), 1, "refused requests are not recorded");
    assert_eq!(m.connection_count(), 1);
    m.set_refuse_connections(false);
    let mut c = Client::connect(&m);
    c.send(&speak("after"));
    assert_eq!(c.response().body, expected("after", 16000));
    assert_eq!((m.refused_connections(), m.connection_count()), (4, 2));
    assert!(m.wait_until_idle(LONG));
}

#[test]
fn refused_connection_is_a_reset_not_a_close() {
    let m = mock();
    m.set_refuse_connections(true);
    let mut s = TcpStream::connect(m.addr()).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    eventually("the refusal", || m.refused_connections() == 1);
    let mut buf = [0u8; 16];
    let got = s.read(&mut buf);
    assert!(matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "expected a reset, got {got:?}");
}

#[test]
fn drop_is_prompt_with_a_queued_request() {
    let m = mock();
    m.set_plan_limit(Some(1));
    m.set_plan_queue(4);
    m.set_default(Behavior::fault(Fault::HangBeforeHeaders));
    let mut held = Client::connect(&m);
    held.send(&speak("held"));
    let mut queued = Client::connect(&m);
    queued.send(&speak("queued"));
    eventually("the second to queue", || m.plan_queued() == 1);
    assert_eq!(m.active_streams(), 2);
    let t0 = Instant::now();
    drop(m);
    assert!(t0.elapsed() < Duration::from_secs(4), "drop took {:?}", t0.elapsed());
    assert!(held.closed_by_server());
    assert!(queued.closed_by_server());
}

fn models_request(key: Option<&str>) -> Vec<u8> {
    let key = key.map(|k| format!("xi-api-key: {k}\r\n")).unwrap_or_default();
    format!("GET /v1/models HTTP/1.1\r\nHost: localhost\r\n{key}Accept: application/json\r\n\r\n").into_bytes()
}

#[test]
fn models_lists_models_for_the_key_only() {
    let m = mock();
    let mut c = Client::connect(&m);
    c.send(&models_request(Some(KEY)));
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.json().as_array().is_some_and(|a| !a.is_empty() && a[0]["model_id"].is_string()), "{:?}", r.json());
    c.send(&models_request(Some("wrong")));
    assert_eq!(c.response().status, 401);
    c.send(&models_request(None));
    assert_eq!(c.response().status, 401);
    let reqs = m.requests();
    assert_eq!(reqs.iter().map(|r| r.fresh_connection).collect::<Vec<_>>(), [true, false, false]);
    assert!(reqs.iter().all(|r| r.path == "/v1/models" && r.method == "GET" && r.connection_id == 1));
}

#[test]
fn each_new_connection_waits_the_connect_delay_once() {
    let m = mock();
    m.set_connect_delay(Duration::from_millis(150));
    let mut c = Client::connect(&m);
    let started = Instant::now();
    c.send(&models_request(Some(KEY)));
    assert_eq!(c.response().status, 200);
    // A lower bound only: the delay is a wait before serving.
    assert!(started.elapsed() >= Duration::from_millis(150), "the first request waited");
    c.send(&models_request(Some(KEY)));
    assert_eq!(c.response().status, 200);
    let mut other = Client::connect(&m);
    other.send(&models_request(Some(KEY)));
    assert_eq!(other.response().status, 200);
    let fresh: Vec<(u64, bool)> = m.requests().iter().map(|r| (r.connection_id, r.fresh_connection)).collect();
    assert_eq!(fresh, [(1, true), (1, false), (2, true)]);
    assert_eq!(m.connection_count(), 2);
}

#[test]
fn idle_connections_are_closed_after_the_idle_close() {
    let m = mock();
    m.set_idle_close(Some(Duration::from_millis(100)));
    let mut c = Client::connect(&m);
    c.send(&models_request(Some(KEY)));
    assert_eq!(c.response().status, 200);
    // The server hangs up on its own (the read timeout is 10 s).
    assert!(c.closed_by_server(), "closed after 100 ms idle");
}

#[test]
fn tls_front_serves_the_same_api_and_names_unknown_connections() {
    let m = MockUpstream::start_tls(KEY);
    assert!(m.base_url().starts_with("https://127.0.0.1:"));
    assert!(m.ca_pem().is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----")));
    assert!(mock().ca_pem().is_none(), "plain HTTP has no CA");
    assert_eq!(m.tls_resumed(1), None, "no connection yet");
    assert_eq!(m.tls_handshakes(), (0, 0));
    assert!(unrelated_ca_pem() != m.ca_pem().unwrap());
}
