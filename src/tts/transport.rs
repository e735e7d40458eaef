//! One streaming TTS request on the channel's own curl handles.
//!
//! The worker thread owns a curl multi handle and one easy handle, both
//! reused for every SPEAK of the channel (so the connection is kept alive).
//! Driving the transfer through the multi interface lets the worker wait on
//! the network and on its wake-up fd at once: a STOP aborts the transfer
//! within one wake-up, and a transfer paused for backpressure resumes as
//! soon as the media thread has made room. Nothing here ever runs on the
//! MRCP Server or media threads.
//!
//! The sink is the caller's: `start` takes it and `finish` hands it back,
//! so one sink can serve every request of a SPEAK (synth/spill.rs). A sink
//! that spills what does not fit never says `Full`; the pause below is for
//! one that does (a spill file that cannot be written).

use std::sync::Arc;
use std::time::{Duration, Instant};

use curl::easy::{Easy2, Handler, List, WriteError};
use curl::multi::{Easy2Handle, WaitFd};

use super::{BodyDecoder, Network, Provider, SpeechRequest, Told};
use crate::cache::Tee;
use crate::config::Config;
use crate::error::Failure;
use crate::ffi::curl_multi::MovableMulti;
use crate::ffi::curl_share::Share;
use crate::media::{apply_gain, AudioSink, Discard, Push};

const USER_AGENT: &str = concat!("unimrcp-elevenlabs/", env!("CARGO_PKG_VERSION"));
/// Enough of an error body to read the vendor's JSON detail.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest wait on the network, only a backstop: the wait already ends at
/// the next limit (first byte, stall) and at curl's own timers, and the
/// worker's eventfd wakes it for commands and room. At 100 ms, a wait for
/// the first byte woke once per 100 ms for nothing (bench [10]: one wasted
/// wake-up of every SPEAK at its upstream's 100 ms; ElevenLabs takes a few
/// hundred).
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Bytes curl reads from the socket at once (CURLOPT_BUFFERSIZE, set
/// explicitly because the linger of synth/player.rs counts on it): what
/// gathers while a worker lingers (GATHER there) is taken in two reads of
/// one wake-up. It is allocated for the channel's life,
/// so a larger one costs every channel memory (bench [11]) for few reads
/// saved at high rates.
pub const READ_BUFFER: usize = 16 * 1024;
/// While paused for room, re-check at least this often (a missed wake-up
/// costs no more than this).
const PAUSED_WAIT: Duration = Duration::from_millis(20);

/// Receives the response on the worker thread.
pub struct Collector {
    /// Where the audio goes: the channel's buffer (through the SPEAK's
    /// spill), or nowhere (warm-up). The caller's, handed back by `finish`.
    sink: Box<dyn AudioSink>,
    provider: Option<Arc<dyn Provider>>,
    status: u32,
    content_type: Option<String>,
    /// The upstream's id of this request (its `request-id` header, as the
    /// provider names it).
    request_id: Option<String>,
    /// What the response headers told beside the audio (`character-cost`,
    /// `x-region`, `maximum-concurrent-requests`).
    characters: Option<u64>,
    region: Option<String>,
    max_concurrency: Option<usize>,
    /// The first byte must arrive by then (the SPEAK's first-byte budget,
    /// which retries share).
    first_byte_deadline: Instant,
    /// Decided at the first body byte: 2xx and an audio content type.
    is_audio: Option<bool>,
    error_body: Vec<u8>,
    pub audio_bytes: u64,
    /// PCM bytes the response carried, before any skip: what tells an
    /// empty answer from one whose audio was all heard already.
    received: u64,
    /// Body bytes curl handed over (audio or encoded, before decoding): what
    /// a read took from the socket, for the worker's linger.
    body_bytes: u64,
    pub started: Instant,
    pub first_byte: Option<Instant>,
    last_byte: Instant,
    /// Size of the chunk refused for lack of room (0: not paused).
    paused_for: usize,
    /// The SPEAK was stopped under us: abort.
    stale: bool,
    /// Where the audio also goes (cache file, followers); kept across the
    /// parts of a SPEAK.
    pub tee: Tee,
    /// Reads an encoded body (None: the body is the PCM itself).
    decoder: Option<Box<dyn BodyDecoder>>,
    gain: f32,
    /// Audio decoded or scaled but not yet in the buffer; the first
    /// `ready` bytes may be pushed (a trailing odd byte waits for its pair
    /// when samples are scaled).
    staged: Vec<u8>,
    ready: usize,
    /// curl holds bytes we refused (paused by returning Pause).
    curl_paused: bool,
    /// Start time (seconds) of each character of the request's text, as
    /// aligned so far.
    pub char_starts: Vec<f64>,
    decode_error: Option<String>,
    decoder_finished: bool,
}

impl Collector {
    fn new() -> Self {
        let now = Instant::now();
        Collector {
            sink: Box::new(Discard),
            provider: None,
            status: 0,
            content_type: None,
            request_id: None,
            characters: None,
            region: None,
            max_concurrency: None,
            first_byte_deadline: now,
            is_audio: None,
            error_body: Vec::new(),
            audio_bytes: 0,
            received: 0,
            body_bytes: 0,
            started: now,
            first_byte: None,
            last_byte: now,
            paused_for: 0,
            stale: false,
            tee: Tee::default(),
            decoder: None,
            gain: 1.0,
            staged: Vec::new(),
            ready: 0,
            curl_paused: false,
            char_starts: Vec::new(),
            decode_error: None,
            decoder_finished: false,
        }
    }

    fn reset(&mut self, provider: &Arc<dyn Provider>, req: &SpeechRequest, sink: Box<dyn AudioSink>) {
        self.gain = req.gain;
        self.decoder = provider.decoder(req);
        self.provider = Some(Arc::clone(provider));
        self.sink = sink;
        self.staged.clear();
        self.ready = 0;
        self.curl_paused = false;
        self.char_starts.clear();
        self.decode_error = None;
        self.decoder_finished = false;
        let now = Instant::now();
        self.status = 0;
        self.content_type = None;
        self.request_id = None;
        self.characters = None;
        self.region = None;
        self.max_concurrency = None;
        self.first_byte_deadline = now + req.config.first_byte_timeout;
        self.is_audio = None;
        self.error_body.clear();
        self.audio_bytes = 0;
        self.received = 0;
        self.body_bytes = 0;
        self.started = now;
        self.first_byte = None;
        self.last_byte = now;
        self.paused_for = 0;
        self.stale = false;
    }

    /// Set up for a probe (`Transport::probe`): the body is thrown away.
    fn reset_for_probe(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.sink = Box::new(Discard);
        self.provider = None;
        self.decoder = None;
        self.gain = 1.0;
        self.staged.clear();
        self.ready = 0;
        self.curl_paused = false;
        self.status = 0;
        self.content_type = None;
        self.is_audio = None;
        self.error_body.clear();
        self.first_byte_deadline = now + timeout;
        self.started = now;
        self.first_byte = None;
        self.last_byte = now;
        self.paused_for = 0;
        self.stale = false;
        self.decode_error = None;
        self.decoder_finished = false;
    }

    fn audio_content_type(&self) -> bool {
        match (&self.content_type, &self.provider) {
            (Some(ct), Some(provider)) => provider.is_audio(ct, self.decoder.is_some()),
            _ => true, // lenient: nothing says it is not audio
        }
    }

    /// Moves staged audio into the sink, as much as fits now. Room only
    /// grows between `free` and `push` (the media thread takes bytes out),
    /// so the push fits unless the SPEAK was stopped meanwhile.
    fn flush(&mut self) {
        let n = self.ready;
        if n == 0 {
            return;
        }
        let skip = self.tee.skip.min(n);
        let room = if self.sink.fits(n - skip) { n - skip } else { self.sink.free().min(n - skip) };
        let mut consumed = skip + room;
        if self.gain != 1.0 {
            // Scaled bytes leave in whole samples, so that what stays
            // staged starts on a sample boundary.
            consumed &= !1;
        }
        let skipped = skip.min(consumed);
        if consumed == 0 {
            return;
        }
        match self.sink.push(&self.staged[skipped..consumed]) {
            Push::Stale => {
                self.stale = true;
                self.staged.clear();
                self.ready = 0;
            }
            Push::Full => {}
            Push::Stored => {
                self.tee.copy(&self.staged[..consumed]);
                self.tee.skip -= skipped;
                self.audio_bytes += (consumed - skipped) as u64;
                self.staged.drain(..consumed);
                self.ready -= consumed;
            }
        }
    }

    /// Marks newly staged bytes ready, scaling whole samples by the gain.
    fn scale_staged(&mut self, last: bool) {
        if self.gain == 1.0 {
            self.ready = self.staged.len();
            return;
        }
        if last {
            self.staged.truncate(self.staged.len() & !1); // half a sample is noise
        }
        let end = self.staged.len() & !1;
        apply_gain(&mut self.staged[self.ready..end], self.gain);
        self.ready = end;
    }

    /// Waits for room when staged audio did not fit.
    fn note_backlog(&mut self) {
        self.paused_for = self.ready;
        if self.ready > 0 {
            self.sink.want(self.ready.min(FLUSH_WANT));
        }
    }

    /// The body is complete: decode what is left and let it drain.
    fn end_of_body(&mut self) {
        if self.decoder_finished {
            return;
        }
        self.decoder_finished = true;
        if let Some(decoder) = self.decoder.as_mut() {
            let before = self.staged.len();
            if let Err(e) = decoder.finish(&mut self.staged, &mut self.char_starts) {
                self.decode_error = Some(e);
            }
            self.received += (self.staged.len() - before) as u64;
        }
        if self.decoder.is_some() || self.gain != 1.0 {
            self.scale_staged(true);
        }
    }

    /// The easy path: PCM as sent, straight into the buffer.
    fn write_direct(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        let skip = self.tee.skip.min(data.len());
        let outcome = if skip == data.len() { Push::Stored } else { self.sink.push(&data[skip..]) };
        match outcome {
            Push::Stored => {
                self.tee.skip -= skip;
                self.received += data.len() as u64;
                self.audio_bytes += (data.len() - skip) as u64;
                self.paused_for = 0;
                self.tee.copy(data);
                Ok(data.len())
            }
            Push::Full => {
                // curl hands the same bytes back after unpause.
                self.paused_for = data.len();
                self.curl_paused = true;
                self.sink.want(data.len());
                Err(WriteError::Pause)
            }
            Push::Stale => {
                self.stale = true;
                Ok(0) // a short write makes curl abort the transfer
            }
        }
    }
}

/// Room to wait for before a staged backlog is pushed again: a frame's
/// worth is plenty (the push is partial), so playback never starves.
const FLUSH_WANT: usize = 4096;

impl Handler for Collector {
    fn header(&mut self, line: &[u8]) -> bool {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("HTTP/") {
            // A new status line (after 100 Continue, say) starts over.
            self.status = rest.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
            self.content_type = None;
            self.request_id = None;
            self.characters = None;
            self.region = None;
            self.max_concurrency = None;
        } else if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-type") {
                self.content_type = Some(value.trim().to_ascii_lowercase());
            } else if self
                .provider
                .as_ref()
                .and_then(|p| p.request_id_header())
                .is_some_and(|h| name.eq_ignore_ascii_case(h))
            {
                // Kept short and printable: it goes into a log line and
                // back upstream.
                let id: String = value.trim().chars().filter(|c| c.is_ascii_graphic()).take(128).collect();
                self.request_id = (!id.is_empty()).then_some(id);
            } else if let Some(told) = self.provider.as_ref().and_then(|p| p.read_header(name, value)) {
                match told {
                    Told::Characters(n) => self.characters = Some(n),
                    Told::Region(r) => self.region = Some(r),
                    Told::MaxConcurrency(n) => self.max_concurrency = Some(n),
                }
            }
        }
        true
    }

    fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        self.body_bytes += data.len() as u64;
        let now = Instant::now();
        self.first_byte.get_or_insert(now);
        self.last_byte = now;
        let is_audio = match self.is_audio {
            Some(decided) => decided,
            None => {
                let decided = (200..300).contains(&self.status) && self.audio_content_type();
                self.is_audio = Some(decided);
                decided
            }
        };
        if !is_audio {
            let room = MAX_ERROR_BODY.saturating_sub(self.error_body.len());
            self.error_body.extend_from_slice(&data[..data.len().min(room)]);
            return Ok(data.len());
        }
        if self.decoder.is_none() && self.gain == 1.0 && self.ready == 0 {
            return self.write_direct(data);
        }
        // Staged: decode and/or scale, then push what fits. Bytes left over
        // from the previous call go first; while they do not fit, curl is
        // paused and keeps `data` for later.
        if self.ready > 0 {
            self.flush();
            if self.stale {
                return Ok(0);
            }
            if self.ready > 0 {
                self.note_backlog();
                self.curl_paused = true;
                return Err(WriteError::Pause);
            }
        }
        let before = self.staged.len();
        match self.decoder.as_mut() {
            Some(decoder) => {
                if let Err(e) = decoder.feed(data, &mut self.staged, &mut self.char_starts) {
                    self.decode_error = Some(e);
                    return Ok(0); // abort: the stream cannot be read
                }
            }
            None => self.staged.extend_from_slice(data),
        }
        self.received += (self.staged.len() - before) as u64;
        self.scale_staged(false);
        self.flush();
        if self.stale {
            return Ok(0);
        }
        self.note_backlog();
        Ok(data.len())
    }
}

/// How a transfer ended.
pub enum Outcome {
    /// All audio is in the buffer.
    Complete,
    /// The SPEAK was stopped under the transfer.
    Stale,
    Failed(Failure),
}

/// The channel's curl handles, kept across SPEAKs. The multi handle's
/// connection cache holds the channel's keep-alive connection; a warm
/// transport (`prewarm`) comes with one already open.
pub struct Transport {
    multi: MovableMulti,
    idle: Option<Easy2<Collector>>,
    /// Declared last so it is dropped last: the easy handle must be gone
    /// before the share object may be cleaned up.
    _share: Option<Arc<Share>>,
}

impl Transport {
    pub fn new(net: &Network) -> Result<Transport, curl::Error> {
        let mut easy = Easy2::new(Collector::new());
        easy.useragent(USER_AGENT)?;
        easy.tcp_nodelay(true)?;
        easy.tcp_keepalive(true)?;
        easy.signal(false)?;
        easy.follow_location(false)?;
        easy.buffer_size(READ_BUFFER)?;
        // The upload buffer defaults to 64 KiB; our request bodies are a
        // few KiB of JSON, so its minimum, 16 KiB, is plenty and bounds what
        // a handle may hold per channel.
        easy.upload_buffer_size(16 * 1024)?;
        easy.maxage_conn(net.max_age())?;
        if let Some(ca) = net.ca_file() {
            // Peer and host verification stay on (curl's default): only the
            // trusted roots change.
            easy.cainfo(ca)?;
        }
        if let Some(share) = net.share() {
            share.attach(&easy)?;
        }
        Ok(Transport { multi: MovableMulti::new(), idle: Some(easy), _share: net.share().cloned() })
    }

    /// A GET that leaves its connection open in this transport's cache
    /// (keep-alive), for the next request to reuse: how warm connections
    /// are opened and kept from the server's idle timeout. Blocks for up to
    /// `timeout`; `stop` is checked every 50 ms. The body is thrown away.
    pub fn probe(
        &mut self,
        url: &str,
        headers: &[String],
        connect_timeout: Duration,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let Some(mut easy) = self.idle.take() else {
            return Err("curl handle busy".to_owned());
        };
        easy.get_mut().reset_for_probe(timeout);
        let setup = (|| -> Result<(), curl::Error> {
            easy.url(url)?;
            let mut list = List::new();
            for header in headers {
                list.append(header)?;
            }
            easy.http_headers(list)?;
            easy.get(true)?;
            easy.connect_timeout(connect_timeout)?;
            Ok(())
        })();
        if let Err(e) = setup {
            self.idle = Some(easy);
            return Err(format!("cannot set up the probe: {e}"));
        }
        let handle = match self.multi.add2(easy) {
            Ok(handle) => handle,
            Err(e) => return Err(format!("cannot start the probe: {e}")),
        };
        let deadline = Instant::now() + timeout;
        let mut result = None;
        while result.is_none() {
            if let Err(e) = self.multi.perform() {
                result = Some(Err(format!("curl multi perform: {e}")));
                break;
            }
            self.multi.messages(|msg| {
                if let Some(r) = msg.result_for2(&handle) {
                    result = Some(r.map_err(|e| describe_curl_error(&e, connect_timeout)));
                }
            });
            if result.is_some() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                result = Some(Err(format!("no answer within {} ms", timeout.as_millis())));
            } else if stop() {
                result = Some(Err("stopped".to_owned()));
            } else {
                let slice = deadline.saturating_duration_since(now).min(Duration::from_millis(50));
                let _ = self.multi.wait(&mut [], slice.max(Duration::from_millis(1)));
            }
        }
        let status = handle.get_ref().status;
        match self.multi.remove2(handle) {
            Ok(easy) => self.idle = Some(easy),
            Err(e) => return Err(format!("curl multi remove: {e}")),
        }
        match result {
            Some(Ok(())) if (200..300).contains(&status) => Ok(()),
            Some(Ok(())) => Err(format!("HTTP {status}")),
            Some(Err(e)) => Err(e),
            None => Err("no result".to_owned()),
        }
    }

    /// Starts the request at `base_url`; its audio flows into `sink` (and
    /// `tee`). Both come back from `Transfer::finish`, or with the error.
    pub fn start<'t>(
        &'t mut self,
        provider: &Arc<dyn Provider>,
        base_url: &str,
        req: &'t SpeechRequest,
        sink: Box<dyn AudioSink>,
        tee: Tee,
    ) -> Result<Transfer<'t>, (Failure, Tee, Box<dyn AudioSink>)> {
        let Some(mut easy) = self.idle.take() else {
            return Err((Failure::Internal("internal: curl handle busy".to_owned()), tee, sink));
        };
        easy.get_mut().reset(provider, req, sink);
        easy.get_mut().tee = tee;
        let config = &*req.config;
        let setup = (|| -> Result<(), curl::Error> {
            easy.url(&provider.url(base_url, req))?;
            let mut headers = List::new();
            for header in provider.headers(req) {
                headers.append(&header)?;
            }
            easy.http_headers(headers)?;
            easy.post(true)?;
            easy.post_fields_copy(provider.body(req).as_bytes())?;
            easy.connect_timeout(config.connect_timeout)?;
            Ok(())
        })();
        if let Err(e) = setup {
            let tee = std::mem::take(&mut easy.get_mut().tee);
            let sink = std::mem::replace(&mut easy.get_mut().sink, Box::new(Discard));
            self.idle = Some(easy);
            return Err((Failure::Internal(format!("internal: cannot set up the request: {e}")), tee, sink));
        }
        match self.multi.add2(easy) {
            Ok(handle) => Ok(Transfer { transport: self, handle: Some(handle), config, done: None }),
            // The easy handle is lost with the failed add (the sink and tee
            // with it); the next SPEAK gets an error too, which says so.
            Err(e) => Err((
                Failure::Internal(format!("internal: cannot start the transfer: {e}")),
                Tee::default(),
                Box::new(Discard),
            )),
        }
    }
}

/// A running request. Dropping it without `finish` aborts it.
pub struct Transfer<'t> {
    transport: &'t mut Transport,
    handle: Option<Easy2Handle<Collector>>,
    config: &'t Config,
    done: Option<Result<(), curl::Error>>,
}

impl Transfer<'_> {
    fn collector(&self) -> &Collector {
        self.handle.as_ref().expect("transfer in progress").get_ref()
    }

    /// Moves the transfer on; true once it has finished (well or not) and
    /// all its audio is in the buffer.
    pub fn step(&mut self) -> bool {
        if self.done.is_none() {
            if let Err(e) = self.transport.multi.perform() {
                log::warn!("curl multi perform: {e}");
            }
            let handle = self.handle.as_ref().expect("transfer in progress");
            let mut result = None;
            self.transport.multi.messages(|msg| {
                if let Some(r) = msg.result_for2(handle) {
                    result = Some(r);
                }
            });
            self.done = result;
        }
        let Some(done) = &self.done else {
            return false;
        };
        let succeeded = done.is_ok();
        let c = self.handle.as_mut().expect("transfer in progress").get_mut();
        if !succeeded || c.stale || c.is_audio != Some(true) {
            return true;
        }
        // Staged audio (decoded or scaled) may still wait for room.
        c.end_of_body();
        c.flush();
        c.note_backlog();
        c.ready == 0 || c.stale || c.decode_error.is_some()
    }

    /// Moves the first-byte deadline earlier (a retry gets what is left of
    /// the budget, not a new one).
    pub fn first_byte_by(&mut self, deadline: Instant) {
        let c = self.handle.as_mut().expect("transfer in progress").get_mut();
        c.first_byte_deadline = c.first_byte_deadline.min(deadline);
    }

    /// Start times (seconds) of the characters aligned so far, and the
    /// bytes of this request already in the buffer.
    /// Body bytes taken from the socket so far (encoded ones included; a
    /// chunk curl was paused on and hands back again counts again, which
    /// only makes a read look larger).
    pub fn body_bytes(&self) -> u64 {
        self.collector().body_bytes
    }

    pub fn progress(&self) -> (&[f64], u64) {
        let c = self.collector();
        (&c.char_starts, c.audio_bytes)
    }

    /// Moves audio the sink holds back (spilled) on into the buffer, and
    /// resumes a transfer paused for room once the room is there.
    pub fn unpause_if_room(&mut self) {
        let handle = self.handle.as_mut().expect("transfer in progress");
        // A loss of held audio shows at the next push (Stale) and in
        // `finish`.
        handle.get_mut().sink.pump();
        let need = handle.get_ref().paused_for;
        if need == 0 {
            return;
        }
        let c = handle.get_mut();
        if c.ready > 0 {
            c.flush();
            if c.ready > 0 {
                c.note_backlog();
                return;
            }
        } else if !c.sink.fits(need) {
            return;
        }
        c.paused_for = 0;
        c.sink.want(0);
        // Time spent waiting for the caller's ear is not a stall.
        c.last_byte = Instant::now();
        if c.curl_paused {
            c.curl_paused = false;
            if let Err(e) = handle.unpause_write() {
                log::warn!("curl unpause: {e}");
            }
        }
    }

    /// The worker is about to linger for `pause` (a timed sleep, shorter
    /// than half of what the caller has ahead): a refill of spilled audio
    /// that the sink asked `read_frame` to wake it for (`want_space`) waits
    /// for the linger's end when the buffer lasts that long
    /// (`AudioSink::refill_after`). Without this the media thread woke a
    /// spilling worker about once per SPEAK in the middle of a linger, for
    /// room it would have filled at the linger's end anyway (bench [10]).
    pub fn refill_after_linger(&mut self, pause: Duration) {
        let c = self.handle.as_mut().expect("transfer in progress").get_mut();
        c.sink.refill_after(pause);
    }

    /// Audio stored and not yet played (bytes), once the response is
    /// flowing and not held back for room; None otherwise.
    pub fn ahead(&self) -> Option<usize> {
        let c = self.collector();
        (c.first_byte.is_some() && c.paused_for == 0 && c.ready == 0).then(|| c.sink.ahead())
    }

    /// A limit that has run out, as the reason to give.
    pub fn expired(&self, now: Instant) -> Option<Failure> {
        let c = self.collector();
        match c.first_byte {
            None if now >= c.first_byte_deadline => Some(Failure::FirstByteTimeout(self.config.first_byte_timeout)),
            Some(_) if c.paused_for == 0 && now.duration_since(c.last_byte) >= self.config.stall_timeout => {
                Some(Failure::Stalled(self.config.stall_timeout))
            }
            _ => None,
        }
    }

    /// Waits for network activity, a wake-up on `wake_fd`, or the next limit.
    /// True when `wake_fd` may have been signalled (curl's wait reports it;
    /// a failed wait cannot tell), so that its owner reads it only then.
    pub fn wait(&self, wake_fd: i32, now: Instant) -> bool {
        let c = self.collector();
        let deadline = match c.first_byte {
            None => c.first_byte_deadline,
            Some(_) => c.last_byte + self.config.stall_timeout,
        };
        let mut timeout = deadline.saturating_duration_since(now).min(MAX_WAIT);
        if c.paused_for > 0 {
            timeout = timeout.min(PAUSED_WAIT);
        }
        let mut fd = WaitFd::new();
        fd.set_fd(wake_fd);
        fd.poll_on_read(true);
        let mut fds = [fd];
        if let Err(e) = self.transport.multi.wait(&mut fds, timeout.max(Duration::from_millis(1))) {
            log::warn!("curl multi wait: {e}");
            std::thread::sleep(Duration::from_millis(5));
            return true;
        }
        fds[0].received_read()
    }

    /// Ends the transfer (aborting it if it is still running), gives the
    /// easy handle back for the next SPEAK, and says how it went; hands the
    /// sink and tee back for the SPEAK's next request.
    pub fn finish(mut self) -> (Outcome, Stats, Tee, Box<dyn AudioSink>) {
        let handle = self.handle.take().expect("transfer in progress");
        let mut easy = match self.transport.multi.remove2(handle) {
            Ok(easy) => easy,
            Err(e) => {
                log::error!("curl multi remove: {e}");
                return (
                    Outcome::Failed(Failure::Internal(format!("internal: {e}"))),
                    Stats::default(),
                    Tee::default(),
                    Box::new(Discard),
                );
            }
        };
        let tee = std::mem::take(&mut easy.get_mut().tee);
        // The sink (the channel's buffer, a spill file) goes back to the
        // caller: not kept in the idle handle.
        let sink = std::mem::replace(&mut easy.get_mut().sink, Box::new(Discard));
        let c = easy.get_ref();
        let mut stats = Stats {
            audio_bytes: c.audio_bytes,
            time_to_first_byte: c.first_byte.map(|t| t.duration_since(c.started)),
            http_status: c.status,
            source: "upstream",
            request_id: c.request_id.clone(),
            characters: c.characters,
            region: c.region.clone(),
            max_concurrency: c.max_concurrency,
            received: c.received,
            trouble: None,
            queue_wait: Duration::ZERO,
            tries: 0,
        };
        let outcome = match self.done.take() {
            _ if sink.lost().is_some() => {
                Outcome::Failed(Failure::Internal(sink.lost().unwrap_or_default().to_owned()))
            }
            _ if c.stale => Outcome::Stale,
            _ if c.decode_error.is_some() => judge_response(c, &mut stats.trouble),
            None => Outcome::Stale, // aborted by us before it finished
            Some(Err(e)) => {
                stats.trouble = Some(curl_trouble(&e));
                Outcome::Failed(Failure::Upstream(describe_curl_error(&e, self.config.connect_timeout)))
            }
            Some(Ok(())) => judge_response(c, &mut stats.trouble),
        };
        self.transport.idle = Some(easy);
        (outcome, stats, tee, sink)
    }
}

impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            if let Ok(mut easy) = self.transport.multi.remove2(handle) {
                // Not kept past the transfer (a spill file is closed now).
                easy.get_mut().sink = Box::new(Discard);
                self.transport.idle = Some(easy);
            }
        }
    }
}

/// Figures for the SPEAK's summary line.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub audio_bytes: u64,
    pub time_to_first_byte: Option<Duration>,
    pub http_status: u32,
    /// Where the audio came from: upstream, cache, or shared (a flight).
    pub source: &'static str,
    /// The upstream's id of the (latest) request, from its `request-id`
    /// header: what stitching sends back, and what ElevenLabs support asks
    /// for.
    pub request_id: Option<String>,
    /// Characters billed (`character-cost`), summed over the parts.
    pub characters: Option<u64>,
    /// The region that served the latest request (`x-region`).
    pub region: Option<String>,
    /// The account's limit, as the latest response said.
    pub max_concurrency: Option<usize>,
    /// PCM bytes the response carried (whether or not they were played):
    /// nonzero means a retry could replay audio.
    pub received: u64,
    /// What went wrong, for the retry policy and the circuit breaker.
    pub trouble: Option<Trouble>,
    /// Time spent queued for an upstream slot, summed over the parts.
    pub queue_wait: Duration,
    /// Upstream requests sent (tries, parts), summed.
    pub tries: u32,
}

/// What went wrong with a request, as the capacity layer needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// No connection (refused, unresolvable, TLS failure).
    Connect,
    /// A connect timeout, no first byte in time, or a stall.
    Timeout,
    /// The stream ended early or the connection broke.
    CutShort,
    /// An error status, with the vendor's `detail.status`.
    Status { code: u32, detail: Option<String> },
    /// 2xx but not audio, a broken stream, or no audio at all.
    Content,
}

impl Stats {
    /// Folds in the next part of the same SPEAK: bytes add up, the first
    /// byte is the first part's, the status and request id the latest.
    pub fn add(&mut self, next: &Stats) {
        if next.request_id.is_some() {
            self.request_id.clone_from(&next.request_id);
        }
        if let Some(n) = next.characters {
            self.characters = Some(self.characters.unwrap_or(0) + n);
        }
        if next.region.is_some() {
            self.region.clone_from(&next.region);
        }
        if next.trouble.is_some() {
            self.trouble.clone_from(&next.trouble);
        }
        self.queue_wait += next.queue_wait;
        self.tries += next.tries;
        self.audio_bytes += next.audio_bytes;
        self.time_to_first_byte = self.time_to_first_byte.or(next.time_to_first_byte);
        if next.http_status != 0 {
            self.http_status = next.http_status;
        }
        if !next.source.is_empty() {
            self.source = next.source;
        }
    }
}

fn judge_response(c: &Collector, trouble: &mut Option<Trouble>) -> Outcome {
    let status = c.status;
    let failed = |reason: String| Outcome::Failed(Failure::Upstream(reason));
    *trouble = Some(Trouble::Content);
    if let Some(e) = &c.decode_error {
        return failed(format!("upstream HTTP {status} sent a broken timestamp stream: {e}"));
    }
    let (detail_status, message) = match &c.provider {
        Some(provider) if c.is_audio == Some(false) => provider.error_detail(&c.error_body),
        _ => (None, None),
    };
    if !(200..300).contains(&status) {
        *trouble = Some(Trouble::Status { code: status, detail: detail_status.clone() });
        let lexicon = match &c.provider {
            Some(provider) if c.is_audio == Some(false) => provider.rejects_dictionary(status, &c.error_body),
            _ => false,
        };
        let mut reason = format!("upstream HTTP {status}");
        if let Some(s) = detail_status {
            reason.push(' ');
            reason.push_str(&s);
        }
        if let Some(m) = message {
            reason.push_str(": ");
            reason.push_str(&m);
        }
        if lexicon {
            return Outcome::Failed(Failure::Lexicon(reason));
        }
        return failed(reason);
    }
    if c.is_audio == Some(false) {
        let ct = c.content_type.as_deref().unwrap_or("no content type");
        let mut reason = format!("upstream HTTP {status} sent {ct} instead of audio");
        if let Some(detail) = detail_status.or(message) {
            reason.push_str(": ");
            reason.push_str(&detail);
        }
        return failed(reason);
    }
    if c.received == 0 {
        return failed(format!("upstream HTTP {status} sent no audio"));
    }
    *trouble = None;
    Outcome::Complete
}

fn curl_trouble(e: &curl::Error) -> Trouble {
    if e.is_operation_timedout() {
        Trouble::Timeout
    } else if e.is_couldnt_resolve_host()
        || e.is_couldnt_connect()
        || e.is_ssl_connect_error()
        || e.is_peer_failed_verification()
        || e.is_ssl_certproblem()
        || e.is_ssl_cipher()
        || e.is_ssl_cacert()
    {
        Trouble::Connect
    } else {
        Trouble::CutShort
    }
}

fn describe_curl_error(e: &curl::Error, connect_timeout: Duration) -> String {
    let what = if e.is_couldnt_resolve_host() {
        "cannot resolve the upstream host".to_owned()
    } else if e.is_couldnt_connect() {
        "cannot connect to upstream".to_owned()
    } else if e.is_operation_timedout() && e.extra_description().is_some_and(|x| x.contains("SSL")) {
        format!("TLS failure with upstream: handshake timed out (connect_timeout_ms={})", connect_timeout.as_millis())
    } else if e.is_operation_timedout() {
        format!("upstream connection timed out (connect_timeout_ms={})", connect_timeout.as_millis())
    } else if e.is_peer_failed_verification() || e.is_ssl_cacert() {
        // Names what an operator checks: the CA bundle (ca_file) or the
        // server's certificate.
        "TLS failure with upstream: its certificate could not be verified (check ca_file)".to_owned()
    } else if e.is_ssl_connect_error() || e.is_ssl_certproblem() || e.is_ssl_cipher() {
        "TLS failure with upstream".to_owned()
    } else if e.is_partial_file() || e.is_recv_error() || e.is_got_nothing() || e.is_send_error() {
        "upstream stream cut short".to_owned()
    } else {
        format!("upstream transfer failed (curl {})", e.code())
    };
    match e.extra_description() {
        Some(extra) => format!("{what}: {extra}"),
        None => format!("{what}: {}", e.description()),
    }
}
