//! `GET /metrics` over HTTP, served by threads of the exporter's own, so a
//! slow or hostile scraper can never delay a call: the MRCP Server and
//! media threads never see a scrape.
//!
//! Bounded in every direction: one accepting thread hands connections to
//! `WORKERS` serving threads through a queue of `QUEUE` (a connection that
//! finds the queue full is closed at once); a request head larger than
//! `HEAD_LIMIT` is answered 431 without reading more; a head not complete
//! within `HEAD_DEADLINE` is answered 408; every write gives up after
//! `WRITE_TIMEOUT`. One request per connection (`Connection: close`): a
//! scraper opens a new one each scrape, so no idle keep-alive connection
//! holds a worker.
//!
//! Why not tiny_http (the crate first chosen): it owns the accepted socket
//! before we can touch it, reads a request line and headers into an
//! unbounded buffer with no read timeout, and spawns an unnamed thread per
//! connection without a bound, threads that cannot be joined at engine
//! close (a connected, silent client keeps one forever). What is needed of
//! HTTP here is one method on one path, which is less code than wrapping
//! it would take. The request head itself is parsed by httparse (the
//! parser hyper uses), so no HTTP parsing is ours: this file only bounds
//! the sockets, the threads and the bytes.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use parking_lot::Mutex;

use super::{Format, Metrics};

/// Threads serving requests: a few concurrent scrapers at once.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a serving thread.
pub const QUEUE: usize = 16;
/// The most a request head (request line and headers) may take.
pub const HEAD_LIMIT: usize = 8 * 1024;
/// How long a client has to send its request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// How long one write may block on a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most answers the endpoint gives per second, all clients together.
/// Prometheus scrapes each target every few seconds; a client asking
/// faster waits its turn (its connection stays queued) instead of taking
/// the CPU the calls need: on a small server, clients scraping back to back
/// would otherwise saturate a core between them.
pub const MAX_ANSWERS_PER_SECOND: u32 = 50;
/// How old an exposition served again may be (see `Metrics::render_recent`).
pub const RECENT: Duration = Duration::from_millis(250);
/// Slices of a wait for the head, so that engine close is seen promptly.
const READ_SLICE: Duration = Duration::from_millis(200);

/// The running endpoint; `stop` ends and joins its threads.
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds `addr` and starts serving. An address in use is the error.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(QUEUE);
        let mut workers = Vec::with_capacity(WORKERS);
        let pace = Arc::new(Pace::new());
        for _ in 0..WORKERS {
            let (rx, metrics, stop, pace) = (rx.clone(), Arc::clone(&metrics), Arc::clone(&stop), Arc::clone(&pace));
            match std::thread::Builder::new()
                .name("elevenlabs-metrics".into())
                .spawn(move || work(rx, &metrics, &stop, &pace))
            {
                Ok(handle) => workers.push(handle),
                Err(e) if workers.is_empty() => return Err(e),
                Err(e) => {
                    log::warn!("metrics: only {} of {WORKERS} serving threads ({e})", workers.len());
                    break;
                }
            }
        }
        let accept_stop = Arc::clone(&stop);
        let acceptor = std::thread::Builder::new().name("elevenlabs-metrics".into()).spawn(move || {
            for conn in listener.incoming() {
                if accept_stop.load(Ordering::Acquire) {
                    break;
                }
                match conn {
                    Ok(stream) => match tx.try_send(stream) {
                        Ok(()) => {}
                        // Every worker busy and the queue full: closed at
                        // once (the scraper retries next interval).
                        Err(TrySendError::Full(stream)) => drop(stream),
                        Err(TrySendError::Disconnected(_)) => break,
                    },
                    // Out of fds, say: do not spin on it.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            // tx goes: the workers end after the connection in hand.
        });
        let acceptor = match acceptor {
            Ok(handle) => handle,
            Err(e) => {
                stop.store(true, Ordering::Release);
                drop(rx);
                for w in workers {
                    let _ = w.join();
                }
                return Err(e);
            }
        };
        Ok(Endpoint { addr, stop, acceptor: Some(acceptor), workers })
    }

    /// The address it listens on (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets the serving threads finish the connection in
    /// hand (bounded by the limits above), joins everything. Not on the
    /// MRCP Server thread: it may take up to a write timeout.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // accept() has no timeout: a connection of our own wakes it.
        let wake = SocketAddr::new(wake_ip(self.addr.ip()), self.addr.port());
        match TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
            Ok(_) => {
                if let Some(acceptor) = self.acceptor.take() {
                    let _ = acceptor.join();
                }
            }
            // Left to end at its next connection rather than hang close.
            Err(e) => log::warn!("metrics: cannot wake the accepting thread on {wake} ({e}); not joined"),
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Where to connect to reach a listener bound to `ip`.
fn wake_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Spaces the answers of all serving threads at least
/// 1/MAX_ANSWERS_PER_SECOND apart.
struct Pace {
    /// When the next answer may go (a leaf, held to reserve a turn).
    next: Mutex<Instant>,
}

impl Pace {
    fn new() -> Pace {
        Pace { next: Mutex::new(Instant::now()) }
    }

    /// Waits for this thread's turn; false when the engine is closing.
    fn turn(&self, stop: &AtomicBool) -> bool {
        let gap = Duration::from_secs(1) / MAX_ANSWERS_PER_SECOND;
        let at = {
            let mut next = self.next.lock();
            let at = (*next).max(Instant::now());
            *next = at + gap;
            at
        };
        while let Some(left) = at.checked_duration_since(Instant::now()) {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(left.min(READ_SLICE));
        }
        true
    }
}

fn work(rx: Receiver<TcpStream>, metrics: &Metrics, stop: &AtomicBool, pace: &Pace) {
    loop {
        // Not a plain recv: if the accepting thread could not be woken at
        // stop, its end of the queue stays open, and this must end anyway.
        match rx.recv_timeout(READ_SLICE) {
            Ok(_) if stop.load(Ordering::Acquire) => {} // dropped: closing
            Ok(stream) => serve(stream, metrics, stop, pace),
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Acquire) => return,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Why a request head could not be read.
enum Refused {
    /// Answer with this status.
    Status(u16),
    /// The client left, or the engine is closing: nothing to answer.
    Gone,
}

/// One request, one response, then close.
fn serve(mut stream: TcpStream, metrics: &Metrics, stop: &AtomicBool, pace: &Pace) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let response = match read_head(&mut stream, stop) {
        Ok(_) if !pace.turn(stop) => return,
        Ok(head) => respond(&head, metrics),
        Err(Refused::Status(code)) => Response::plain(code),
        Err(Refused::Gone) => return,
    };
    let _ = stream.write_all(&response.head).and_then(|()| stream.write_all(&response.body));
    // Closing with unread bytes from the client resets the connection,
    // which can destroy the response in flight: say we are done, then
    // read what is left (briefly, bounded) before closing.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Reads up to the blank line that ends the head.
fn read_head(stream: &mut TcpStream, stop: &AtomicBool) -> Result<Vec<u8>, Refused> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Refused::Status(408));
        }
        let _ = stream.set_read_timeout(Some((deadline - now).min(READ_SLICE)));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Refused::Gone),
            Ok(n) => {
                head.extend_from_slice(&chunk[..n]);
                match parse_head(&head) {
                    Head::Complete(end) => {
                        head.truncate(end);
                        return Ok(head);
                    }
                    Head::Bad(code) => return Err(Refused::Status(code)),
                    Head::Partial => {}
                }
                if head.len() > HEAD_LIMIT {
                    // 414 when the request line alone is too long.
                    let code = if head.contains(&b'\n') { 431 } else { 414 };
                    return Err(Refused::Status(code));
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Refused::Gone),
        }
    }
}

/// The most header lines a request may have (a scraper sends a handful).
const MAX_HEADERS: usize = 32;

/// What the bytes read so far make, as far as httparse can tell.
enum Head {
    /// More bytes are needed.
    Partial,
    /// The head is complete and this long.
    Complete(usize),
    /// Not a request head we can answer: this status.
    Bad(u16),
}

fn parse_head(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(bytes) {
        Ok(httparse::Status::Complete(n)) => Head::Complete(n),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(e) => Head::Bad(bad_status(e, bytes)),
    }
}

/// 505 only for a request that names another HTTP version; garbage
/// (which httparse reports as a bad version once it has read two words)
/// is a plain 400.
fn bad_status(e: httparse::Error, bytes: &[u8]) -> u16 {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(bytes);
    let names_http = line.split(|&b| b == b' ').nth(2).is_some_and(|v| v.starts_with(b"HTTP/"));
    match e {
        httparse::Error::Version if names_http => 505,
        httparse::Error::TooManyHeaders => 431,
        _ => 400,
    }
}

struct Response {
    head: Vec<u8>,
    body: Vec<u8>,
}

impl Response {
    fn new(code: u16, content_type: &str, body: Vec<u8>, extra: &str, send_body: bool) -> Response {
        let head = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            reason(code),
            body.len()
        );
        Response { head: head.into_bytes(), body: if send_body { body } else { Vec::new() } }
    }

    fn plain(code: u16) -> Response {
        let body = format!("{} {}\n", code, reason(code)).into_bytes();
        Response::new(code, "text/plain; charset=utf-8", body, "", true)
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The response to a complete head.
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Response::plain(400),
        Err(e) => return Response::plain(bad_status(e, head)),
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Response::plain(400);
    };
    let accept = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("accept"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Response::plain(404);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let body = b"405 Method Not Allowed\n".to_vec();
            return Response::new(405, "text/plain; charset=utf-8", body, "Allow: GET, HEAD\r\n", true);
        }
    };
    let format = Format::from_accept(accept);
    let body = metrics.render_recent(format, RECENT).as_bytes().to_vec();
    Response::new(200, format.content_type(), body, "", !head_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_spaced_across_threads() {
        let pace = Arc::new(Pace::new());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (pace, stop) = (Arc::clone(&pace), Arc::clone(&stop));
                std::thread::spawn(move || (0..2).all(|_| pace.turn(&stop)))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        // Six turns: the first at once, each next one gap later at least
        // (a busy machine can only make it longer).
        let gap = Duration::from_secs(1) / MAX_ANSWERS_PER_SECOND;
        assert!(started.elapsed() >= gap * 5, "{:?}", started.elapsed());
        stop.store(true, Ordering::Release);
        // Closing: a turn still ahead is not waited for. (Ten in a row
        // reserve turns well ahead; only a turn already due may answer.)
        let answered = (0..10).filter(|_| pace.turn(&stop)).count();
        assert!(answered < 10, "a closing engine ends the wait");
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        let end = |b: &[u8]| match parse_head(b) {
            Head::Complete(n) => Some(n),
            Head::Partial => None,
            Head::Bad(code) => panic!("{code}"),
        };
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"), Head::Bad(400)));
    }

    #[test]
    fn requests_are_answered_by_method_and_path() {
        let m = Metrics::new("eleven_flash_v2_5", Vec::new());
        let status = |head: &str| {
            let r = respond(head.as_bytes(), &m);
            String::from_utf8(r.head).unwrap().split(' ').nth(1).unwrap().to_owned()
        };
        assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "200");
        assert_eq!(status("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), "200");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "405");
        assert_eq!(status("GET /metrics HTTP/2.0\r\n\r\n"), "505");
        assert_eq!(status("nonsense\r\n\r\n"), "400");
        let r = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &m);
        assert!(r.body.is_empty(), "HEAD has no body");
        let r = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m);
        assert!(String::from_utf8(r.head).unwrap().contains("\r\nAllow: GET, HEAD\r\n\r\n"));
        let om = respond(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n", &m);
        assert!(String::from_utf8(om.head).unwrap().contains("application/openmetrics-text"));
        assert!(String::from_utf8(om.body).unwrap().ends_with("# EOF\n"));
    }
}
