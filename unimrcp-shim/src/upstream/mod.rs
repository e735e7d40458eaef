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
//! (401), then `output_format` and body validation (422), and only then the
//! behaviour rules. A missing `output_format` is a 422 too: the real service
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
pub mod resample;
mod server;
mod timestamps;

#[cfg(test)]
mod tests;

pub use audio::{audio_ms_for_text, synth_pcm, Synth, MIN_AUDIO_MS, MS_PER_CHAR};
pub use behavior::{AlignmentShape, Behavior, Fault, Voice};
pub use timestamps::char_start_ms;

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
    /// Clones of live sockets, so drop can shut them down and wake any
    /// thread blocked on them.
    live: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
}

/// The mock server. Dropping it stops accepting, shuts down live
/// connections and joins every thread.
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
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
            live: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let acceptor = server::spawn_acceptor(Arc::clone(&shared), listener)?;
        Ok(MockUpstream { shared, addr, acceptor: Some(acceptor) })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst) as usize
    }

    /// Requests currently being answered: from the moment a request has
    /// been read until its response is fully written or abandoned. Includes
    /// first-byte delays, stalls and hangs. A client that hangs up is
    /// noticed within about 50 ms.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
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
