//! Just enough HTTP/1.1 for the mock: reading requests off a keep-alive
//! connection, and framing responses.
//!
//! Every blocking call here has a bound: reads use a short socket timeout and
//! re-check the stop flag and a deadline, so a silent or half-finished client
//! can never pin a connection thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head accepted (431 beyond).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body accepted (413 beyond). TTS bodies are a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a request may take to arrive once its first byte has.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket read timeout: how often a blocked read wakes to check the stop flag.
pub const READ_SLICE: Duration = Duration::from_millis(100);
/// Longest line in a chunked request body's framing.
const MAX_LINE_BYTES: usize = 4096;

/// A parsed request, body included.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// HTTP/1.0 client: no chunked responses, close after the response.
    pub http10: bool,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection must close after this request's response.
    pub fn wants_close(&self) -> bool {
        // HTTP/1.0 keep-alive is legal but nobody we serve needs it; closing
        // keeps close-delimited audio bodies simple.
        self.http10 || self.header_has_token("connection", "close")
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The client closed (or went quiet) between requests: normal end.
    Closed,
    /// The client vanished mid-request, or the mock is stopping.
    Gone,
    /// Malformed request: answer with this status, then close.
    Bad(u16, &'static str),
}

/// The server side of one connection, with bytes read but not yet consumed
/// (pipelined requests, or the body that arrived with the head).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl Conn {
    pub fn new(stream: TcpStream, stop: Arc<AtomicBool>) -> Conn {
        Conn { stream, buf: Vec::new(), stop }
    }

    /// Whether the mock is shutting down.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Reads some more bytes into the buffer. `Ok(0)` is end of stream;
    /// `Err` means the deadline passed, the mock is stopping or the socket
    /// failed.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ()> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            if self.stopping() || Instant::now() >= deadline {
                return Err(());
            }
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
    }

    /// Reads the next request. `idle_deadline` bounds the wait for its first
    /// byte; after that the whole request must arrive within
    /// [`REQUEST_READ_TIMEOUT`].
    pub fn read_request(&mut self, idle_deadline: Instant) -> Result<Request, ReadError> {
        let mut deadline = idle_deadline;
        let mut started = false;
        let head_end = loop {
            // RFC 9112 §2.2: ignore empty lines before a request line (some
            // clients send a stray CRLF after a body).
            let blank = self.buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            self.buf.drain(..blank);
            if let Some(end) = find_head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Bad(431, "request head too large"));
            }
            if !started && !self.buf.is_empty() {
                started = true;
                deadline = Instant::now() + REQUEST_READ_TIMEOUT;
            }
            match self.fill(deadline) {
                Ok(n) if n > 0 => {}
                _ if self.buf.is_empty() => return Err(ReadError::Closed),
                _ => return Err(ReadError::Gone),
            }
        };
        if head_end > MAX_HEAD_BYTES {
            return Err(ReadError::Bad(431, "request head too large"));
        }
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let mut req = parse_head(&head).map_err(|why| ReadError::Bad(400, why))?;
        if !started {
            deadline = Instant::now() + REQUEST_READ_TIMEOUT;
        }

        let framing = body_framing(&req).map_err(|why| ReadError::Bad(400, why))?;
        if let BodyFraming::Length(n) = framing {
            if n > MAX_BODY_BYTES {
                return Err(ReadError::Bad(413, "request body too large"));
            }
        }
        let has_body = !matches!(framing, BodyFraming::Length(0));
        let expects_continue = req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if has_body && expects_continue && !req.http10 {
            // libcurl sends `Expect: 100-continue` for larger POSTs and waits
            // (up to a second) for this before sending the body.
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|_| ReadError::Gone)?;
        }
        req.body = match framing {
            BodyFraming::Length(n) => self.take(n, deadline)?,
            BodyFraming::Chunked => self.read_chunked_body(deadline)?,
        };
        Ok(req)
    }

    /// Consumes exactly `n` bytes.
    fn take(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(m) if m > 0 => {}
                _ => return Err(ReadError::Gone),
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Consumes one line, returning it without its line ending.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(ReadError::Bad(400, "chunk framing line too long"));
            }
            match self.fill(deadline) {
                Ok(m) if m > 0 => {}
                _ => return Err(ReadError::Gone),
            }
        }
    }

    fn read_chunked_body(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        const BAD: ReadError = ReadError::Bad(400, "malformed chunked body");
        let mut body = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            let line = String::from_utf8_lossy(&line);
            // Chunk extensions (";name=value") are allowed and ignored.
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| BAD)?;
            if size == 0 {
                // Trailer fields, up to the blank line; ignored.
                while !self.read_line(deadline)?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(ReadError::Bad(413, "request body too large"));
            }
            body.extend(self.take(size, deadline)?);
            if !self.read_line(deadline)?.is_empty() {
                return Err(BAD);
            }
        }
    }
}

enum BodyFraming {
    Length(usize),
    Chunked,
}

fn body_framing(req: &Request) -> Result<BodyFraming, &'static str> {
    let codings: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if !codings.is_empty() {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); only
        // a final "chunked" lets us find the end of the body.
        return match codings.last().map(String::as_str) {
            Some("chunked") => Ok(BodyFraming::Chunked),
            _ => Err("unsupported transfer-encoding"),
        };
    }
    let mut length = None;
    for (_, v) in req.headers.iter().filter(|(n, _)| n == "content-length") {
        let v = v.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid content-length");
        }
        let n: usize = v.parse().map_err(|_| "invalid content-length")?;
        if length.is_some_and(|m| m != n) {
            return Err("conflicting content-length");
        }
        length = Some(n);
    }
    Ok(BodyFraming::Length(length.unwrap_or(0)))
}

/// Index just past the blank line ending the head, if it has arrived.
/// Accepts bare LF line endings as well as CRLF.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses request line and headers (without the body).
fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or("empty request")?;
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err("malformed request line");
    };
    if !is_token(method) {
        return Err("malformed method");
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("unsupported HTTP version"),
    };
    // Absolute-form targets (sent to proxies) carry scheme and authority.
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    };
    if !target.starts_with('/') {
        return Err("malformed request target");
    }
    let target = target.split('#').next().unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err("obsolete header line folding");
        }
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        if !is_token(name) {
            return Err("malformed header name");
        }
        headers.push((name.to_ascii_lowercase(), value.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: parse_query(query),
        http10,
        headers,
        body: Vec::new(),
    })
}

/// `a=1&b=x%20y` into decoded pairs; `+` means space, as browsers and
/// libcurl's form encoders send it.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Decodes `%XX` escapes (malformed ones are kept literally).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// HTTP/1.0: the body ends when the connection closes.
    UntilClose,
}

/// Status line and headers, through the blank line.
pub fn response_head(
    status: u16,
    content_type: &str,
    framing: Framing,
    close: bool,
    extra: &[(&str, String)],
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n", reason(status));
    match framing {
        Framing::Length(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose => {}
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let close = close || framing == Framing::UntilClose;
    head.push_str(if close { "Connection: close\r\n\r\n" } else { "Connection: keep-alive\r\n\r\n" });
    head.into_bytes()
}

/// Appends `data` to `out` in the given framing (a chunk, or raw bytes).
pub fn push_body_piece(out: &mut Vec<u8>, framing: Framing, data: &[u8]) {
    if framing == Framing::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// The zero-size chunk ending a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Result of waiting on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// The deadline passed with the client still there.
    Reached,
    /// The client closed or reset, or the mock is stopping.
    Gone,
}

/// Poll events that mean the peer closed its sending side.
#[cfg(target_os = "linux")]
const HANGUP_EVENTS: libc::c_short = libc::POLLRDHUP;
#[cfg(not(target_os = "linux"))]
const HANGUP_EVENTS: libc::c_short = 0;

/// Whether the client has closed, reset or half-closed the connection, by
/// a look that does not wait (as [`wait_on_client`] judges it; bytes of a
/// pipelined request are not a hang-up).
pub fn client_left(stream: &TcpStream) -> bool {
    let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN | HANGUP_EVENTS, revents: 0 };
    // SAFETY: one valid pollfd on a descriptor `stream` keeps open.
    if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
        return false;
    }
    if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL | HANGUP_EVENTS) != 0 {
        return true;
    }
    let mut one = [0u8; 1];
    // Readable, so the peek does not block.
    match stream.peek(&mut one) {
        Ok(n) => n == 0,
        Err(e) => !(is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted),
    }
}

/// Sleeps until `deadline` while watching the socket, so a client that
/// hangs up during a delay, a pacing gap or a stall is noticed at once
/// rather than at the next write.
///
/// End of stream from the client counts as gone, as it does for nginx: a
/// client that half-closes its sending side is assumed to have left.
pub fn wait_on_client(stream: &TcpStream, stop: &AtomicBool, deadline: Instant) -> Waited {
    const SLICE: Duration = Duration::from_millis(50);
    loop {
        if stop.load(Ordering::SeqCst) {
            return Waited::Gone;
        }
        let now = Instant::now();
        if now >= deadline {
            return Waited::Reached;
        }
        let slice = (deadline - now).min(SLICE);
        // Round up so a sub-millisecond remainder still sleeps.
        let timeout_ms = slice.as_micros().div_ceil(1000) as libc::c_int;
        let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN | HANGUP_EVENTS, revents: 0 };
        // SAFETY: one valid pollfd on a descriptor `stream` keeps open.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                std::thread::sleep(slice);
            }
            continue;
        }
        if rc == 0 {
            continue;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL | HANGUP_EVENTS) != 0 {
            return Waited::Gone;
        }
        if pfd.revents & libc::POLLIN != 0 {
            let mut one = [0u8; 1];
            match stream.peek(&mut one) {
                Ok(0) => return Waited::Gone,
                // A pipelined next request: the socket stays readable, so
                // poll would spin; sleep the slice out instead.
                Ok(_) => std::thread::sleep(slice),
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Waited::Gone,
            }
        }
    }
}

/// Closes our side without destroying a response the client has not read
/// yet: a plain close with unread request bytes in our receive buffer makes
/// the kernel send RST, which can discard the response in flight. So send
/// FIN, drain briefly, then let the caller drop the socket.
pub fn close_gracefully(stream: &TcpStream, stop: &AtomicBool) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 4096];
    let mut reader = stream;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        match reader.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_found_with_crlf_and_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nA: b\n\nrest"), Some(21));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn parses_head() {
        let r = parse_head(
            b"POST http://x:1/v1/a?output_format=pcm_16000&x=a%20b+c&flag HTTP/1.1\r\n\
              Host: x\r\nXI-API-Key:  k \r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/a");
        assert!(!r.http10);
        assert_eq!(
            r.query,
            vec![
                ("output_format".into(), "pcm_16000".into()),
                ("x".into(), "a b c".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(r.header("xi-api-key"), Some("k"));
    }

    #[test]
    fn rejects_garbage_heads() {
        for head in [
            &b"hello\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: b\r\n\r\n",
        ] {
            assert!(parse_head(head).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%zz%4", false), "a/b%zz%4");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%", true), "%");
    }

    #[test]
    fn chunk_framing() {
        let mut out = Vec::new();
        push_body_piece(&mut out, Framing::Chunked, &[7u8; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
        assert_eq!(&out[30..], b"\r\n");
        let head = response_head(200, "audio/pcm", Framing::Chunked, false, &[]);
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(head.ends_with("Connection: keep-alive\r\n\r\n"));
    }
}
