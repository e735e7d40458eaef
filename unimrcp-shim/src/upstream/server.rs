//! Accepting connections and answering requests.

use super::audio::{audio_ms_for_text, Synth};
use super::behavior::{Behavior, Fault, Voice, TOO_MANY_CONCURRENT};
use super::espeak;
use super::http::{
    self, client_left, close_gracefully, push_body_piece, response_head, wait_on_client, Conn, Framing, ReadError,
    Request, Waited, LAST_CHUNK,
};
use super::plan::{Admission, Slot};
use super::timestamps::{self, Aligner, MALFORMED_LINE};
use super::{pcm_format_rate, RecordedRequest, Shared, WriteSpan, PCM_FORMATS};
use serde_json::{json, Value};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle keep-alive connection is kept open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Cap on stalls, hangs and delays, so no connection thread lives forever.
const HOLD_LIMIT: Duration = Duration::from_secs(300);
/// A client that stops reading for this long is dropped. Generous, because
/// the plugin may legitimately pause a transfer when its buffer is full;
/// shutdown does not wait for it (drop shuts the socket down).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Listen backlog, above std's 128, so hundreds of simultaneous connects
/// don't overflow the queue and stall on SYN retransmits.
const BACKLOG: libc::c_int = 1024;

pub(crate) fn spawn_acceptor(shared: Arc<Shared>, listener: TcpListener) -> io::Result<JoinHandle<()>> {
    // SAFETY: listen() on our own listening descriptor; Linux updates the
    // backlog of an already-listening socket. Failure keeps the old one.
    unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    // Non-blocking plus poll() lets the loop notice the stop flag.
    listener.set_nonblocking(true)?;
    thread::Builder::new().name("mock-upstream-accept".into()).spawn(move || accept_loop(&shared, &listener))
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) if shared.refusing() => reset(shared, &stream),
            Ok((stream, _)) => spawn_connection(shared, stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd on the listener we own.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // E.g. out of file descriptors: back off, keep serving.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Makes the close of `stream`'s last descriptor send RST rather than FIN
/// (`SO_LINGER` 0), and counts the refusal.
fn reset(shared: &Shared, stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a descriptor `stream` keeps open, with a
    // pointer to a live linger struct and its exact size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    shared.refused.fetch_add(1, Ordering::SeqCst);
}

fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    // Without a registered clone, drop could not wake this connection, so
    // refuse it rather than risk a hang.
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    shared.live.lock().insert(id, clone);
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new().name(format!("mock-upstream-conn-{id}")).spawn(move || {
        serve_connection(&thread_shared, id, stream);
        // Removing the clone closes the last descriptor of the socket.
        thread_shared.live.lock().remove(&id);
    });
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock();
            // Reap finished connections so the list stays small.
            let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(JoinHandle::is_finished);
            *threads = running;
            threads.push(handle);
            drop(threads);
            for h in done {
                let _ = h.join();
            }
        }
        Err(_) => {
            shared.live.lock().remove(&id);
        }
    }
}

/// What to do with the connection after a response.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    /// Close politely (FIN, brief drain).
    Close,
    /// The client left or the mock is stopping: just drop the socket.
    Gone,
}

fn serve_connection(shared: &Shared, connection_id: u64, stream: TcpStream) {
    // Chunks must leave as they are written, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(http::READ_SLICE));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if let Ok(peer) = stream.peer_addr() {
        shared.peer_ports.lock().insert(connection_id, peer.port());
    }
    // Behind the TLS front the front pays the handshake delay, once per
    // client connection (tls.rs); its connections here are not delayed.
    if !shared.tls_front.load(Ordering::SeqCst) {
        connect_delay(shared);
    }
    let mut conn = Conn::new(stream, Arc::clone(&shared.stop));
    let mut served = 0u64;
    loop {
        let idle = shared.idle_close.lock().unwrap_or(IDLE_TIMEOUT);
        let next = match conn.read_request(Instant::now() + idle) {
            Ok(_) if shared.refusing() => {
                // The registered clone closes last (the thread's cleanup),
                // and that close sends the RST.
                reset(shared, &conn.stream);
                return;
            }
            Ok(req) => {
                served += 1;
                handle_request(shared, &mut conn, connection_id, served == 1, req)
            }
            Err(ReadError::Closed | ReadError::Gone) => Next::Gone,
            Err(ReadError::Bad(status, why)) => {
                let body = json!({ "detail": why }).to_string();
                let mut out = response_head(status, "application/json", Framing::Length(body.len()), true, &[]);
                out.extend_from_slice(body.as_bytes());
                match conn.stream.write_all(&out) {
                    Ok(()) => Next::Close,
                    Err(_) => Next::Gone,
                }
            }
        };
        match next {
            Next::KeepAlive if !conn.stopping() => {}
            Next::Close => {
                close_gracefully(&conn.stream, &shared.stop);
                return;
            }
            _ => return,
        }
    }
}

/// Holds a new connection for the configured handshake delay (bounded by
/// the stop flag), as a real TCP + TLS handshake would.
pub(crate) fn connect_delay(shared: &Shared) {
    let delay = *shared.connect_delay.lock();
    let until = Instant::now() + delay.min(HOLD_LIMIT);
    while !shared.stopping() {
        let now = Instant::now();
        if now >= until {
            break;
        }
        thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Counts a request in `active_streams` for as long as it is alive.
struct ActiveGuard<'a>(&'a Shared);

impl<'a> ActiveGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(shared)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a text-to-speech endpoint delivers the audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `/v1/text-to-speech/{voice_id}[/stream]`: raw PCM.
    Audio,
    /// `/v1/text-to-speech/{voice_id}/stream/with-timestamps`: PCM in
    /// newline-delimited JSON with character alignment.
    WithTimestamps,
}

/// Voice id and endpoint of a text-to-speech path.
fn tts_route(path: &str) -> Option<(String, Endpoint)> {
    let rest = path.strip_prefix("/v1/text-to-speech/")?;
    let (voice, endpoint) = match rest.split_once('/') {
        Some((voice, "stream")) => (voice, Endpoint::Audio),
        Some((voice, "stream/with-timestamps")) => (voice, Endpoint::WithTimestamps),
        Some(_) => return None,
        None => (rest, Endpoint::Audio),
    };
    (!voice.is_empty()).then(|| (http::percent_decode(voice, false), endpoint))
}

/// Sets [`RecordedRequest::ended_at`] when the exchange ends, however it
/// ends, unless the exchange already did (see [`Exchange::end`]).
struct EndGuard<'a> {
    shared: &'a Shared,
    idx: usize,
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        self.shared.update(self.idx, |r| {
            r.ended_at.get_or_insert(now);
        });
    }
}

fn handle_request(shared: &Shared, conn: &mut Conn, connection_id: u64, fresh: bool, req: Request) -> Next {
    let received_at = Instant::now();
    // Counted before it is recorded, so a test that sees the record also
    // sees it active. Guards drop in reverse order: `ended_at` is set, the
    // plan slot freed, and then the request stops counting as active.
    let _active = ActiveGuard::new(shared);
    let idx = shared.record(record(connection_id, fresh, &req, received_at));
    let _end = EndGuard { shared, idx };
    let mut ex = Exchange {
        shared,
        conn,
        idx,
        close: req.wants_close(),
        http10: req.http10,
        account: false,
        cost: None,
        slot: None,
    };
    if req.path == "/v1/models" {
        return ex.models(&req);
    }
    let speak = match check(&shared.api_key, &req) {
        Ok(speak) => speak,
        Err((status, body)) => {
            // Past the key check the account is known (422).
            ex.account = !matches!(status, 401 | 404 | 405);
            return ex.send_json(status, &body);
        }
    };
    ex.account = true;

    let hold_until = received_at + HOLD_LIMIT;
    ex.slot = match shared.plan.admit(hold_until, || shared.stopping() || client_left(&ex.conn.stream)) {
        Admission::Admitted(slot) => Some(slot),
        Admission::Refused => {
            let (status, message) = TOO_MANY_CONCURRENT;
            return ex.send_json(429, &detail(status, message));
        }
        Admission::Gone => return Next::Gone,
    };
    let admitted_at = Instant::now();
    ex.cost = Some(speak.text.chars().count());

    let behavior = shared.rules.lock().pick(&speak.text, &speak.voice_id);
    let behavior = match shared.forced_fault() {
        Some(fault) => behavior.with_fault(fault).with_first_byte_delay(Duration::ZERO),
        None => behavior,
    };
    if let Some(bytes) = behavior.send_buffer {
        set_send_buffer(&ex.conn.stream, bytes);
    }
    let first_byte_due = admitted_at.checked_add(behavior.first_byte_delay).unwrap_or(admitted_at + HOLD_LIMIT);
    let hang = behavior.fault == Fault::HangBeforeHeaders;
    if !hang && ex.wait_until(first_byte_due) == Waited::Gone {
        return Next::Gone;
    }
    match &behavior.fault {
        Fault::HangBeforeHeaders => {
            ex.hold();
            Next::Gone
        }
        Fault::None | Fault::StallAfterFirstChunk | Fault::CutAfterBytes(_) | Fault::MalformedTimestampLine => {
            match speak.endpoint {
                Endpoint::Audio => ex.stream_audio(&behavior, &speak.text, speak.rate),
                Endpoint::WithTimestamps => ex.stream_timestamps(&behavior, &speak.text, speak.rate),
            }
        }
        Fault::Http { status, detail_status, message } => {
            let body = match detail_status {
                Some(s) => detail(s, message),
                None => json!({ "detail": message }),
            };
            ex.send_json(*status, &body)
        }
        Fault::ValidationError => ex.send_json(422, &missing_text()),
        Fault::InvalidField { loc, msg } => ex.send_json(422, &validation(json!(loc), msg, "value_error")),
        Fault::JsonInsteadOfAudio => {
            let body = json!({ "audio_base64": "", "alignment": null, "normalized_alignment": null });
            ex.send_whole(200, "application/json", body.to_string().as_bytes())
        }
        Fault::WrongContentType => ex.send_whole(
            200,
            "text/html; charset=utf-8",
            b"<html><head><title>502 Bad Gateway</title></head>\
              <body><h1>502 Bad Gateway</h1></body></html>",
        ),
    }
}

/// Fixes the socket's send buffer at `bytes` (the kernel doubles the value
/// for its bookkeeping and stops autotuning it); best effort.
fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on our own connected socket with a valid c_int
    // and its size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The record of `req`, before anything is answered.
fn record(connection_id: u64, fresh: bool, req: &Request, received_at: Instant) -> RecordedRequest {
    let output_format = query_value(req, "output_format").map(str::to_string);
    let json: Option<Value> = serde_json::from_slice(&req.body).ok();
    let text = json.as_ref().and_then(|j| j.get("text")).and_then(Value::as_str).map(str::to_string);
    let route = tts_route(&req.path);
    RecordedRequest {
        connection_id,
        fresh_connection: fresh,
        method: req.method.clone(),
        path: req.path.clone(),
        with_timestamps: matches!(route, Some((_, Endpoint::WithTimestamps))),
        voice_id: route.map(|(voice, _)| voice).unwrap_or_default(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        json,
        text,
        sample_rate: output_format.as_deref().and_then(pcm_format_rate),
        output_format,
        received_at,
        first_byte_at: None,
        audio_sent: Vec::new(),
        completed: false,
        status: 0,
        writes: Vec::new(),
        ended_at: None,
    }
}

fn query_value<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A request that passed every check.
struct Speak {
    voice_id: String,
    endpoint: Endpoint,
    rate: u32,
    text: String,
}

/// Route, key and validation checks, in ElevenLabs' order; `Err` carries
/// the error response.
fn check(api_key: &str, req: &Request) -> Result<Speak, (u16, Value)> {
    let (voice_id, endpoint) = tts_route(&req.path).ok_or((404, json!({ "detail": "Not Found" })))?;
    if req.method != "POST" {
        return Err((405, json!({ "detail": "Method Not Allowed" })));
    }
    if req.header("xi-api-key") != Some(api_key) {
        return Err((401, detail("invalid_api_key", "Invalid API key")));
    }
    let format = query_value(req, "output_format").unwrap_or("");
    let rate = pcm_format_rate(format).ok_or_else(|| {
        let supported: Vec<&str> = PCM_FORMATS.iter().map(|(name, _)| *name).collect();
        let msg = format!("unsupported output_format {format:?}; this mock serves {}", supported.join(", "));
        (422, validation(json!(["query", "output_format"]), &msg, "value_error"))
    })?;
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| {
        let msg = e.to_string();
        (422, validation(json!(["body", 0]), &msg, "value_error.jsondecode"))
    })?;
    let text = match body.get("text") {
        Some(Value::String(text)) => text.clone(),
        Some(_) => {
            let body = validation(json!(["body", "text"]), "str type expected", "type_error.str");
            return Err((422, body));
        }
        None => return Err((422, missing_text())),
    };
    Ok(Speak { voice_id, endpoint, rate, text })
}

/// `{"detail":{"status":..,"message":..}}`, ElevenLabs' usual error shape.
fn detail(status: &str, message: &str) -> Value {
    json!({ "detail": { "status": status, "message": message } })
}

/// FastAPI's list-shaped validation error.
fn validation(loc: Value, msg: &str, kind: &str) -> Value {
    json!({ "detail": [ { "loc": loc, "msg": msg, "type": kind } ] })
}

fn missing_text() -> Value {
    validation(json!(["body", "text"]), "field required", "value_error.missing")
}

/// One request's response, recorded as it is written.
struct Exchange<'a> {
    shared: &'a Shared,
    conn: &'a mut Conn,
    idx: usize,
    close: bool,
    http10: bool,
    /// The API key was accepted: the response carries the account's
    /// headers (concurrency, region).
    account: bool,
    /// Characters billed (`character-cost` on a 200): set once admitted.
    cost: Option<usize>,
    /// The plan slot this request holds, once admitted.
    slot: Option<Slot<'a>>,
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

impl Exchange<'_> {
    /// Headers every response of this exchange with `status` carries.
    fn extra_headers(&self, status: u16) -> Vec<(&'static str, String)> {
        let mut headers = vec![("request-id", format!("mock-{}", self.idx + 1))];
        if self.account {
            if let Some(limit) = self.shared.plan.limit() {
                headers.push(("current-concurrent-requests", self.shared.plan.in_progress().to_string()));
                headers.push(("maximum-concurrent-requests", limit.to_string()));
            }
            if let Some(region) = self.shared.region.lock().clone() {
                headers.push(("x-region", region));
            }
        }
        if let (200, Some(cost)) = (status, self.cost) {
            headers.push(("character-cost", cost.to_string()));
        }
        headers
    }

    fn after_response(&self) -> Next {
        if self.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    fn wait_until(&self, deadline: Instant) -> Waited {
        wait_on_client(&self.conn.stream, &self.shared.stop, deadline)
    }

    /// Holds the connection open, silent, until the client leaves, the mock
    /// stops or [`HOLD_LIMIT`] passes.
    fn hold(&self) {
        self.wait_until(Instant::now() + HOLD_LIMIT);
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        self.conn.stream.write_all(bytes).is_ok()
    }

    /// Writes `bytes`, which carry `audio` and, if `completes`, end the
    /// response. The record is updated *before* the write, so a client that
    /// has read these bytes always finds them recorded; a failed write is
    /// rolled back (the client cannot have read all of it).
    /// The request is over for the account: `ended_at` is set and then its
    /// plan slot freed. Called before the response's last write, as the
    /// service's own count drops when generation ends: a client that has
    /// read the whole response can never find its slot still taken.
    fn end(&mut self) {
        if let Some(slot) = self.slot.take() {
            let now = Instant::now();
            self.shared.update(self.idx, |r| {
                r.ended_at.get_or_insert(now);
            });
            drop(slot);
        }
    }

    fn write_recorded(&mut self, bytes: &[u8], audio: &[u8], completes: bool) -> bool {
        if completes {
            self.end();
        }
        let began = Instant::now();
        let before = self.shared.update(self.idx, |r| {
            let before = r.audio_sent.len();
            r.audio_sent.extend_from_slice(audio);
            r.completed |= completes;
            r.writes.push(WriteSpan { began, ended: None });
            before
        });
        if self.write(bytes) {
            let ended = Instant::now();
            self.shared.update(self.idx, |r| {
                if let Some(w) = r.writes.last_mut() {
                    w.ended = Some(ended);
                }
            });
            return true;
        }
        self.shared.update(self.idx, |r| {
            r.audio_sent.truncate(before.unwrap_or(0));
            r.completed = false;
        });
        false
    }

    /// Records the response head as written at `at`.
    fn mark_head(&self, status: u16, at: Instant) {
        self.shared.update(self.idx, |r| {
            r.status = status;
            r.first_byte_at = Some(at);
        });
    }

    /// A complete response with a Content-Length body.
    fn send_whole(&mut self, status: u16, content_type: &str, body: &[u8]) -> Next {
        let mut out =
            response_head(status, content_type, Framing::Length(body.len()), self.close, &self.extra_headers(status));
        out.extend_from_slice(body);
        self.mark_head(status, Instant::now());
        if !self.write_recorded(&out, &[], true) {
            return Next::Gone;
        }
        self.after_response()
    }

    /// `GET /v1/models`: a short list, as ElevenLabs' free models endpoint
    /// answers (clients use it to open or keep a connection warm).
    fn models(&mut self, req: &Request) -> Next {
        if req.method != "GET" {
            return self.send_json(405, &json!({ "detail": "Method Not Allowed" }));
        }
        if req.header("xi-api-key") != Some(self.shared.api_key.as_str()) {
            return self.send_json(401, &detail("invalid_api_key", "Invalid API key"));
        }
        self.account = true;
        let models = json!([
            { "model_id": "eleven_flash_v2_5", "name": "Eleven Flash v2.5", "can_do_text_to_speech": true },
            { "model_id": "eleven_multilingual_v2", "name": "Eleven Multilingual v2", "can_do_text_to_speech": true },
        ]);
        self.send_json(200, &models)
    }

    fn send_json(&mut self, status: u16, body: &Value) -> Next {
        self.send_whole(status, "application/json", body.to_string().as_bytes())
    }

    /// Streams the audio in chunks, paced and faulted per `b`.
    fn stream_audio(&mut self, b: &Behavior, text: &str, rate: u32) -> Next {
        let (mut synth, _) = source(b, text, rate);
        let total = match b.fault {
            Fault::CutAfterBytes(n) => n.min(synth.len_bytes()),
            _ => synth.len_bytes(),
        };
        let piece = match b.chunk_bytes {
            0 => total.max(1),
            n => n,
        };
        let framing = if self.http10 { Framing::UntilClose } else { Framing::Chunked };
        let mut headers = self.extra_headers(200);
        headers.push(("x-character-count", text.chars().count().to_string()));
        let mut out = response_head(200, "audio/pcm", framing, self.close, &headers);

        let first_byte_at = Instant::now();
        // Pacing counts from this same instant, so the recorded schedule holds.
        self.mark_head(200, first_byte_at);
        let pace = b.pacing_bytes_per_sec(rate);
        let mut sent = 0usize;
        let mut data = Vec::with_capacity(piece.min(total));
        // The head always goes out in the same write as the first chunk, and
        // on its own only if there is no audio at all.
        loop {
            if sent > 0 && self.wait_for_audio_due(first_byte_at, pace, sent) == Waited::Gone {
                return Next::Gone;
            }
            data.clear();
            synth.read_into(&mut data, piece.min(total - sent));
            if !data.is_empty() {
                push_body_piece(&mut out, framing, &data);
            }
            if !out.is_empty() && !self.write_recorded(&out, &data, false) {
                return Next::Gone;
            }
            out.clear();
            sent += data.len();
            if b.fault == Fault::StallAfterFirstChunk {
                self.hold();
                return Next::Gone;
            }
            if sent >= total || self.conn.stopping() {
                break;
            }
        }
        self.end_stream(b, framing)
    }

    /// Waits until the chunk after `sent` bytes of audio is due: once the
    /// audio before it has "played" at `pace` bytes per second, counted from
    /// `first_byte_at`. Unpaced (`None`) chunks are due at once.
    fn wait_for_audio_due(&self, first_byte_at: Instant, pace: Option<f64>, sent: usize) -> Waited {
        let Some(bytes_per_sec) = pace else {
            return Waited::Reached;
        };
        let due = Duration::try_from_secs_f64(sent as f64 / bytes_per_sec)
            .ok()
            .and_then(|d| first_byte_at.checked_add(d))
            .unwrap_or(first_byte_at + HOLD_LIMIT);
        self.wait_until(due)
    }

    /// Ends a streamed body once its last piece is written: normally, or
    /// truncated for [`Fault::CutAfterBytes`].
    fn end_stream(&mut self, b: &Behavior, framing: Framing) -> Next {
        if self.conn.stopping() {
            return Next::Gone;
        }
        if let Fault::CutAfterBytes(_) = b.fault {
            // Close without the terminating chunk: a truncated stream.
            return Next::Close;
        }
        if framing == Framing::UntilClose {
            // The body ends when we close, after this is recorded.
            self.shared.update(self.idx, |r| r.completed = true);
            return Next::Close;
        }
        if !self.write_recorded(LAST_CHUNK, &[], true) {
            return Next::Gone;
        }
        self.after_response()
    }

    /// Streams the audio as newline-delimited JSON lines, one per HTTP
    /// chunk, paced and faulted per `b` like [`Exchange::stream_audio`].
    fn stream_timestamps(&mut self, b: &Behavior, text: &str, rate: u32) -> Next {
        let (mut synth, mut aligner) = source(b, text, rate);
        let total = synth.len_bytes();
        // Whole samples only: a client decodes each line's base64 on its
        // own, and the real service never splits a sample across lines.
        let piece = match b.chunk_bytes {
            0 => total.max(2),
            n => (n & !1).max(2),
        };
        // Lines are never split, so the loop stops after the line that
        // reaches the limit rather than at the limit itself.
        let limit = match b.fault {
            Fault::CutAfterBytes(n) => n.min(total),
            Fault::MalformedTimestampLine => piece.min(total),
            _ => total,
        };
        let framing = if self.http10 { Framing::UntilClose } else { Framing::Chunked };
        let mut headers = self.extra_headers(200);
        headers.push(("x-character-count", text.chars().count().to_string()));
        let mut out = response_head(200, "application/json", framing, self.close, &headers);

        let first_byte_at = Instant::now();
        self.mark_head(200, first_byte_at);
        let pace = b.pacing_bytes_per_sec(rate);
        // Characters are handed out over the whole audio even when a fault
        // cuts it short, so a cut line aligns only its own span.
        let mut sent = 0usize;
        let mut pcm = Vec::with_capacity(piece.min(total));
        // As in `stream_audio`, the head goes out with the first line.
        loop {
            if sent > 0 && self.wait_for_audio_due(first_byte_at, pace, sent) == Waited::Gone {
                return Next::Gone;
            }
            pcm.clear();
            if sent < limit {
                synth.read_into(&mut pcm, piece.min(total - sent));
                let end = sent + pcm.len();
                let alignment = aligner.take_until(end, end >= total);
                let alignment = if b.omit_alignment { None } else { alignment };
                let chunk_start = sent as f64 / (f64::from(rate) * 2.0);
                let line = timestamps::shaped_line(&pcm, alignment.as_ref(), b.alignment, chunk_start);
                push_body_piece(&mut out, framing, &line);
            }
            if !out.is_empty() && !self.write_recorded(&out, &pcm, false) {
                return Next::Gone;
            }
            out.clear();
            sent += pcm.len();
            if b.fault == Fault::StallAfterFirstChunk {
                self.hold();
                return Next::Gone;
            }
            if sent >= limit || self.conn.stopping() {
                break;
            }
        }
        if b.fault == Fault::MalformedTimestampLine && !self.conn.stopping() {
            // Sent when the next line would have been due.
            if self.wait_for_audio_due(first_byte_at, pace, sent) == Waited::Gone {
                return Next::Gone;
            }
            push_body_piece(&mut out, framing, MALFORMED_LINE);
            if !self.write_recorded(&out, &[], false) {
                return Next::Gone;
            }
        }
        self.end_stream(b, framing)
    }
}

/// The audio of a response, generated or synthesized.
enum Source {
    Tones(Synth),
    /// Speech synthesized in full before the response starts.
    Speech {
        pcm: Vec<u8>,
        read: usize,
    },
}

impl Source {
    fn len_bytes(&self) -> usize {
        match self {
            Source::Tones(synth) => synth.len_bytes(),
            Source::Speech { pcm, .. } => pcm.len(),
        }
    }

    /// Appends up to `max` more bytes to `out`; returns how many.
    fn read_into(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        match self {
            Source::Tones(synth) => synth.read_into(out, max),
            Source::Speech { pcm, read } => {
                let piece = &pcm[*read..(*read).saturating_add(max).min(pcm.len())];
                out.extend_from_slice(piece);
                *read += piece.len();
                piece.len()
            }
        }
    }
}

/// The audio for `text` at `rate` per `b`'s voice, and the aligner that
/// gives its characters' start times. Speech that cannot be had (no
/// eSpeak NG) falls back to the tones.
fn source(b: &Behavior, text: &str, rate: u32) -> (Source, Aligner) {
    if b.voice == Voice::Espeak {
        if let Ok(speech) = espeak::speak(text, rate) {
            let aligner = Aligner::with_times(text, rate, speech.char_starts_ms, speech.audio_ms);
            return (Source::Speech { pcm: speech.pcm, read: 0 }, aligner);
        }
    }
    let ms = b.audio_ms.unwrap_or_else(|| audio_ms_for_text(text));
    (Source::Tones(Synth::new(text, rate, ms)), Aligner::new(text, rate, ms))
}
