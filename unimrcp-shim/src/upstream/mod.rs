//! A local, ElevenLabs-compatible text-to-speech upstream for tests,
//! benchmarks and the demo.
//!
//! It speaks the endpoint the plugin uses,
//! `POST /v1/text-to-speech/{voice_id}/stream?output_format=pcm_<rate>`
//! (the non-streaming `/v1/text-to-speech/{voice_id}` is answered the same
//! way), over plain HTTP/1.1 with keep-alive on `127.0.0.1`. The audio is
//! deterministic ([`synth_pcm`]), so a test can check every byte the plugin
//! played, and each request can be given timing and faults ([`Behavior`],
//! [`Fault`]) by a rule matched on its text, so concurrent tests don't
//! interfere.
//!
//! Every answer carries a `request-id` header, as ElevenLabs' do:
//! `mock-<n>`, `n` the request's 1-based place in
//! [`MockUpstream::requests`] ([`MockUpstream::request_id_of`]), so a test
//! can tell which ids a later request stitched to
//! ([`RecordedRequest::previous_request_ids`]).
//!
//! The account behind the key can have a concurrency limit, as ElevenLabs
//! plans do ([`MockUpstream::set_plan_limit`]): a text-to-speech request
//! that passed the checks below is admitted while fewer than the limit are
//! in progress (from being read until its response is fully written or
//! abandoned, [`RecordedRequest::ended_at`]); past it the request waits in a
//! short first-come-first-served queue ([`MockUpstream::set_plan_queue`],
//! bounded by the hold limit and the mock's stop), and past that it is
//! answered at once `429 {"detail":{"status":"too_many_concurrent_requests",
//! "message":..}}` ([`Fault::too_many_concurrent_requests`]), which does not
//! count as in progress. [`MockUpstream::max_concurrent`] and
//! [`MockUpstream::plan_refusals`] say how it went.
//!
//! Once the key is accepted, responses carry the account's headers, as
//! ElevenLabs' do: `current-concurrent-requests` (admitted requests in
//! progress, this one included if admitted) and
//! `maximum-concurrent-requests` while a limit is set, and `x-region` while
//! one is set ([`MockUpstream::set_region`]). A 200 carries
//! `character-cost`, the characters billed: the `text`'s Unicode scalar
//! values (and, as before, the same count in `x-character-count`).
//!
//! Failures beyond the per-text rules, for retry and outage tests:
//! [`MockUpstream::fail_next`] gives the next `n` admitted requests a fault
//! (say [`Fault::system_busy`]) and then lets them through;
//! [`MockUpstream::set_failing`] gives every admitted request one until
//! cleared; [`MockUpstream::set_refuse_connections`] resets (TCP RST) new
//! connections before reading anything, and kept-alive ones at their next
//! request, so a client sees "connection reset" or "empty reply".
//!
//! It also serves
//! `POST /v1/text-to-speech/{voice_id}/stream/with-timestamps?output_format=pcm_<rate>`:
//! the same checks, behaviour and audio, but sent as newline-delimited JSON,
//! one `{"audio_base64":..,"alignment":..,"normalized_alignment":..}` object
//! per HTTP chunk, each with the characters that start during its audio
//! ([`char_start_ms`] says when).
//!
//! The audio can instead be real speech: [`Voice::Espeak`] (opt-in, used by
//! the demo) speaks the text with eSpeak NG, loaded at run time, resampled
//! to the requested rate ([`resample`]) and aligned from its word events.
//!
//! Order of checks for each request: route (404/405), then `xi-api-key`
//! (401), then `output_format` and body validation (422), then admission
//! under the plan limit (queue or 429), then a forced fault
//! ([`MockUpstream::fail_next`], then [`MockUpstream::set_failing`]), and
//! only then the behaviour rules. A missing `output_format` is a 422 too: the real service
//! would default to MP3, which the mock cannot produce, so a plugin that
//! forgets it should fail loudly.
//!
//! Robustness: one thread per connection, every wait bounded (socket
//! timeouts, deadlines, a stop flag), and write errors simply end the
//! connection. A client that sends FIN is taken to have hung up (as nginx
//! does), which is how a stall or pacing wait notices an aborted transfer
//! within ~50 ms. Dropping [`MockUpstream`] shuts every live socket down and
//! joins every thread.
//!
//! ```no_run
//! use std::time::Duration;
//! use unimrcp_shim::upstream::{Behavior, Fault, MockUpstream};
//!
//! let mock = MockUpstream::start("test-key");
//! mock.when_text_contains("[busy]", Behavior::fault(Fault::system_busy()));
//! mock.set_default(Behavior::realtime());
//! // ... point the plugin at mock.base_url() and SPEAK ...
//! let reqs = mock.wait_for_requests(1, Duration::from_secs(5));
//! assert_eq!(reqs[0].sample_rate, Some(8000));
//! ```

mod audio;
mod behavior;
pub mod espeak;
mod http;
mod plan;
pub mod resample;
mod server;
mod timestamps;
mod tls;

#[cfg(test)]
mod tests;

pub use audio::{audio_ms_for_text, synth_pcm, Synth, MIN_AUDIO_MS, MS_PER_CHAR};
pub use behavior::{AlignmentShape, Behavior, Fault, Voice};
pub use timestamps::char_start_ms;
pub use tls::unrelated_ca_pem;

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Output formats the mock can produce, with their sample rates.
pub const PCM_FORMATS: [(&str, u32); 7] = [
    ("pcm_8000", 8000),
    ("pcm_16000", 16000),
    ("pcm_22050", 22050),
    ("pcm_24000", 24000),
    ("pcm_32000", 32000),
    ("pcm_44100", 44100),
    ("pcm_48000", 48000),
];

/// Sample rate of a supported `output_format`.
pub fn pcm_format_rate(output_format: &str) -> Option<u32> {
    PCM_FORMATS.iter().find(|(name, _)| *name == output_format).map(|&(_, rate)| rate)
}

/// One request as the mock saw it, and what it sent back so far.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 1-based, in accept order; equal ids mean a reused connection.
    pub connection_id: u64,
    /// The first request on its connection (a client that reuses a
    /// kept-alive connection sends its later requests with `false`).
    pub fresh_connection: bool,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The path is `/v1/text-to-speech/{voice_id}/stream/with-timestamps`.
    pub with_timestamps: bool,
    /// Empty when the path is not a text-to-speech path.
    pub voice_id: String,
    /// Percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Decoded body (de-chunked if it was sent chunked).
    pub body: Vec<u8>,
    pub json: Option<serde_json::Value>,
    /// The body's `text` field, when it is a string.
    pub text: Option<String>,
    pub output_format: Option<String>,
    /// From `output_format`, when it is one the mock supports.
    pub sample_rate: Option<u32>,
    /// When the whole request had been read.
    pub received_at: Instant,
    /// When the response head was written.
    pub first_byte_at: Option<Instant>,
    /// Exactly the PCM bytes written so far (for `/stream/with-timestamps`,
    /// decoded from the lines written: the same bytes `/stream` sends).
    pub audio_sent: Vec<u8>,
    /// The whole response was written (for audio: the terminating chunk).
    pub completed: bool,
    /// Response status; 0 until a response head has been written.
    pub status: u16,
    /// Every write of the response, in order: when it began and when it
    /// returned (`ended` is None while it is blocked, or if it failed). The
    /// time between one write returning and the next beginning is the
    /// mock's own pause, or time it was not scheduled: a loaded machine can
    /// make it miss a client's timeout. Time spent blocked in a write (the
    /// client not reading) is not in those gaps.
    pub writes: Vec<WriteSpan>,
    /// When the mock considered the request finished: its response fully
    /// written, or the exchange abandoned (the client hung up, a fault cut
    /// or held it, the mock stopped). An admitted request's plan slot is
    /// freed just after ([`MockUpstream::set_plan_limit`]), so a request
    /// admitted into it starts after this. `None` while it is still being
    /// answered (or queued).
    pub ended_at: Option<Instant>,
}

/// One write of a response (see [`RecordedRequest::writes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSpan {
    pub began: Instant,
    pub ended: Option<Instant>,
}

impl RecordedRequest {
    /// When the last write that went through returned.
    pub fn last_write_end(&self) -> Option<Instant> {
        self.writes.iter().rev().find_map(|w| w.ended)
    }

    /// The longest time from one write's return to the next one's start.
    pub fn longest_pause_between_writes(&self) -> Duration {
        self.writes
            .windows(2)
            .filter_map(|w| Some(w[1].began.saturating_duration_since(w[0].ended?)))
            .max()
            .unwrap_or_default()
    }

    /// True while a write is blocked (or ended by a failure).
    pub fn write_pending(&self) -> bool {
        self.writes.last().is_some_and(|w| w.ended.is_none())
    }
}

impl RecordedRequest {
    /// First value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The `previous_request_ids` the request carried (request stitching),
    /// in order; empty when it carried none.
    pub fn previous_request_ids(&self) -> Vec<String> {
        self.json
            .as_ref()
            .and_then(|j| j.get("previous_request_ids"))
            .and_then(serde_json::Value::as_array)
            .map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// First value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// State shared by the handle, the acceptor and the connection threads.
pub(crate) struct Shared {
    api_key: String,
    /// Set once on drop; every loop and wait checks it.
    stop: Arc<AtomicBool>,
    rules: Mutex<behavior::Rules>,
    requests: Mutex<Vec<RecordedRequest>>,
    requests_changed: Condvar,
    connections: AtomicU64,
    active: AtomicUsize,
    /// The account's concurrency limit and its queue.
    plan: plan::Plan,
    region: Mutex<Option<String>>,
    /// Requests still to fail with the fault ([`MockUpstream::fail_next`]).
    fail_next: Mutex<Option<(usize, Fault)>>,
    fail_next_served: AtomicUsize,
    failing: Mutex<Option<Fault>>,
    refuse: AtomicBool,
    refused: AtomicUsize,
    /// Clones of live sockets, so drop can shut them down and wake any
    /// thread blocked on them.
    live: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held once per accepted connection before it is served
    /// ([`MockUpstream::set_connect_delay`]).
    connect_delay: Mutex<Duration>,
    /// Idle time after which a kept-alive connection is closed
    /// ([`MockUpstream::set_idle_close`]); None: 300 s.
    idle_close: Mutex<Option<Duration>>,
    /// Connections are reached through the TLS front (tls.rs).
    tls_front: AtomicBool,
    /// The client port of each connection (the TLS front's port for its
    /// connections), to match the front's handshake records.
    peer_ports: Mutex<HashMap<u64, u16>>,
    /// Per TLS front connection, by the port it connects from: whether
    /// its handshake resumed a session.
    tls_resumed: Mutex<HashMap<u16, bool>>,
    /// TLS handshakes completed: (full, resumed).
    tls_counts: Mutex<(usize, usize)>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn record(&self, r: RecordedRequest) -> usize {
        let mut reqs = self.requests.lock();
        reqs.push(r);
        self.requests_changed.notify_all();
        reqs.len() - 1
    }

    fn update<R>(&self, idx: usize, f: impl FnOnce(&mut RecordedRequest) -> R) -> Option<R> {
        self.requests.lock().get_mut(idx).map(f)
    }

    fn refusing(&self) -> bool {
        self.refuse.load(Ordering::SeqCst)
    }

    /// The fault forced on an admitted request, if any: one of
    /// [`MockUpstream::fail_next`]'s (used up), else
    /// [`MockUpstream::set_failing`]'s.
    fn forced_fault(&self) -> Option<Fault> {
        let mut next = self.fail_next.lock();
        if let Some((left, fault)) = next.as_mut() {
            let fault = fault.clone();
            *left -= 1;
            if *left == 0 {
                *next = None;
            }
            self.fail_next_served.fetch_add(1, Ordering::SeqCst);
            return Some(fault);
        }
        drop(next);
        self.failing.lock().clone()
    }
}

/// The mock server. Dropping it stops accepting, shuts down live
/// connections and joins every thread.
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    tls: Option<tls::TlsFront>,
}

/// How long drop waits for connection threads before leaving stragglers
/// detached (it never should need to; this only keeps a bug from hanging a
/// test run).
const DROP_JOIN_LIMIT: Duration = Duration::from_secs(5);

impl MockUpstream {
    /// Starts on an ephemeral port of 127.0.0.1. Requests must carry
    /// `xi-api-key: <api_key>`.
    ///
    /// # Panics
    /// If the listener cannot be set up; see [`MockUpstream::try_start`].
    pub fn start(api_key: &str) -> MockUpstream {
        MockUpstream::try_start(api_key).expect("mock upstream: failed to start")
    }

    pub fn try_start(api_key: &str) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            api_key: api_key.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            rules: Mutex::new(behavior::Rules::default()),
            requests: Mutex::new(Vec::new()),
            requests_changed: Condvar::new(),
            connections: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            plan: plan::Plan::default(),
            region: Mutex::new(None),
            fail_next: Mutex::new(None),
            fail_next_served: AtomicUsize::new(0),
            failing: Mutex::new(None),
            refuse: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            connect_delay: Mutex::new(Duration::ZERO),
            idle_close: Mutex::new(None),
            tls_front: AtomicBool::new(false),
            peer_ports: Mutex::new(HashMap::new()),
            tls_resumed: Mutex::new(HashMap::new()),
            tls_counts: Mutex::new((0, 0)),
        });
        let acceptor = server::spawn_acceptor(Arc::clone(&shared), listener)?;
        Ok(MockUpstream { shared, addr, acceptor: Some(acceptor), tls: None })
    }

    /// Like [`MockUpstream::start`], but [`MockUpstream::base_url`] is an
    /// HTTPS front with a certificate for `127.0.0.1` and `localhost`
    /// signed by a CA made now ([`MockUpstream::ca_pem`]). Each TLS
    /// connection is relayed to the HTTP server (still at
    /// [`MockUpstream::addr`]) over a connection of its own, so everything
    /// else works as over HTTP; the connect delay is then paid at the
    /// front, before the handshake.
    ///
    /// # Panics
    /// If the listener or the certificates cannot be set up.
    pub fn start_tls(api_key: &str) -> MockUpstream {
        let mut mock = MockUpstream::start(api_key);
        mock.shared.tls_front.store(true, Ordering::SeqCst);
        let front = tls::TlsFront::start(Arc::clone(&mock.shared), mock.addr).expect("mock upstream: TLS front");
        mock.tls = Some(front);
        mock
    }

    /// The CA certificate (PEM) that signed the HTTPS certificate; None
    /// over plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// `http://127.0.0.1:PORT` (`https://` from [`MockUpstream::start_tls`]),
    /// no trailing slash.
    pub fn base_url(&self) -> String {
        match &self.tls {
            Some(t) => format!("https://{}", t.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// Each new connection is held this long before it is served (before
    /// the TLS handshake over HTTPS), as a real handshake costs; applies to
    /// connections accepted from now on. Zero (the default) for none.
    pub fn set_connect_delay(&self, delay: Duration) {
        *self.shared.connect_delay.lock() = delay;
    }

    /// Closes a kept-alive connection once it has been idle this long
    /// (measured from when it last finished a response, applies from its
    /// next wait); None restores the default of 300 s.
    pub fn set_idle_close(&self, idle: Option<Duration>) {
        *self.shared.idle_close.lock() = idle;
    }

    /// Whether the TLS handshake of connection `connection_id` (as in
    /// [`RecordedRequest::connection_id`]) resumed a session; None over
    /// plain HTTP or for an unknown connection.
    pub fn tls_resumed(&self, connection_id: u64) -> Option<bool> {
        let port = *self.shared.peer_ports.lock().get(&connection_id)?;
        self.shared.tls_resumed.lock().get(&port).copied()
    }

    /// TLS handshakes completed so far: (full, resumed).
    pub fn tls_handshakes(&self) -> (usize, usize) {
        *self.shared.tls_counts.lock()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Behaviour for requests no rule matches.
    pub fn set_default(&self, b: Behavior) {
        self.shared.rules.lock().default = b;
    }

    /// Requests whose text contains `needle` get `b`. Rules are checked in
    /// the order added; the first match wins.
    pub fn when_text_contains(&self, needle: &str, b: Behavior) {
        self.shared.rules.lock().when_text_contains(needle, b);
    }

    /// Requests for voice `voice_id` get `b` (same rule list as
    /// [`MockUpstream::when_text_contains`]).
    pub fn when_voice_is(&self, voice_id: &str, b: Behavior) {
        self.shared.rules.lock().when_voice_is(voice_id, b);
    }

    /// Removes all rules (the default behaviour stays).
    pub fn clear_rules(&self) {
        self.shared.rules.lock().clear();
    }

    /// Snapshot of all requests so far, in arrival order. Requests too
    /// malformed to parse (answered 400, 413 or 431) are not recorded.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// Waits until at least `n` requests have arrived or `timeout` passes;
    /// returns the snapshot either way (check its length).
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.shared.requests.lock();
        while reqs.len() < n {
            if self.shared.requests_changed.wait_until(&mut reqs, deadline).timed_out() {
                break;
            }
        }
        reqs.clone()
    }

    /// The `request-id` the mock sent for the request at `index` of
    /// [`MockUpstream::requests`].
    pub fn request_id_of(index: usize) -> String {
        format!("mock-{}", index + 1)
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().len()
    }

    /// TCP connections accepted and served so far (not counting those
    /// reset at once by [`MockUpstream::set_refuse_connections`]).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst) as usize
    }

    /// Requests currently being answered: from the moment a request has
    /// been read until its response is fully written or abandoned. Includes
    /// first-byte delays, stalls and hangs, requests waiting in the plan's
    /// queue and those answered without admission (401, 422, 429). A client that hangs up is
    /// noticed within about 50 ms.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// The account's concurrency limit: at most `limit` admitted
    /// text-to-speech requests in progress at once, the rest queued
    /// ([`MockUpstream::set_plan_queue`]) or answered 429
    /// `too_many_concurrent_requests`. `None` (the default) admits every
    /// request at once. Takes effect for requests not yet admitted; a raised
    /// limit (or `None`) lets queued requests in.
    pub fn set_plan_limit(&self, limit: Option<usize>) {
        self.shared.plan.set_limit(limit);
    }

    /// How many requests over the limit may wait for a slot, first come
    /// first served (default 0: refused at once). Requests already waiting
    /// keep their place if the depth shrinks.
    pub fn set_plan_queue(&self, depth: usize) {
        self.shared.plan.set_queue_depth(depth);
    }

    /// The most admitted text-to-speech requests in progress at once since
    /// the start or [`MockUpstream::reset_max_concurrent`]. Counted with or
    /// without a plan limit; requests answered before admission (401, 422,
    /// a plan 429) and queued requests are not in it.
    pub fn max_concurrent(&self) -> usize {
        self.shared.plan.max_concurrent()
    }

    /// Admitted text-to-speech requests in progress now (what
    /// `current-concurrent-requests` reports).
    pub fn concurrent_requests(&self) -> usize {
        self.shared.plan.in_progress()
    }

    /// Restarts [`MockUpstream::max_concurrent`] from the admitted requests
    /// in progress now.
    pub fn reset_max_concurrent(&self) {
        self.shared.plan.reset_max_concurrent();
    }

    /// 429s sent because of the plan limit: the queue was full, or a
    /// request waited in it past the hold limit.
    pub fn plan_refusals(&self) -> usize {
        self.shared.plan.refusals()
    }

    /// Requests waiting in the plan's queue right now.
    pub fn plan_queued(&self) -> usize {
        self.shared.plan.waiting()
    }

    /// Sends `x-region: <region>` on text-to-speech responses while set.
    pub fn set_region(&self, region: Option<&str>) {
        *self.shared.region.lock() = region.map(str::to_string);
    }

    /// The next `n` admitted text-to-speech requests get `fault` (at once:
    /// their rule's `first_byte_delay` is ignored, its chunking and pacing
    /// kept), then the rules apply again. Replaces what is left of an
    /// earlier call; `n == 0` cancels it. Takes precedence over
    /// [`MockUpstream::set_failing`].
    pub fn fail_next(&self, n: usize, fault: Fault) {
        *self.shared.fail_next.lock() = (n > 0).then_some((n, fault));
    }

    /// Requests that got a [`MockUpstream::fail_next`] fault so far.
    pub fn fault_next_served(&self) -> usize {
        self.shared.fail_next_served.load(Ordering::SeqCst)
    }

    /// How many [`MockUpstream::fail_next`] faults are still to be served.
    pub fn fail_next_remaining(&self) -> usize {
        self.shared.fail_next.lock().as_ref().map_or(0, |(n, _)| *n)
    }

    /// While `Some`, every admitted text-to-speech request gets `fault`, as
    /// [`MockUpstream::fail_next`] gives it: "the upstream fails everything".
    pub fn set_failing(&self, fault: Option<Fault>) {
        *self.shared.failing.lock() = fault;
    }

    /// While on, new connections are accepted and at once reset (RST,
    /// nothing read or written), and a kept-alive connection is reset when
    /// its next request has arrived (that request is not recorded). Both
    /// count in [`MockUpstream::refused_connections`].
    pub fn set_refuse_connections(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Connections reset by [`MockUpstream::set_refuse_connections`].
    pub fn refused_connections(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Waits until [`MockUpstream::active_streams`] is 0; false on timeout.
    pub fn wait_until_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.active_streams() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(front) = self.tls.take() {
            front.join_acceptor();
        }
        // The acceptor polls the stop flag every 50 ms. Joining it first
        // means no connection can be registered after the sweep below.
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Wake threads blocked in read, write or poll on their sockets.
        for stream in self.shared.live.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let handles = std::mem::take(&mut *self.shared.threads.lock());
        let deadline = Instant::now() + DROP_JOIN_LIMIT;
        for handle in handles {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}
