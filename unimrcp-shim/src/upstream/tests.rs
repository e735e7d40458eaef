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
