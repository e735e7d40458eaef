//! Chaos: 100 channels (8 and 16 kHz), each driven by its own thread doing
//! SPEAK / STOP / BARGE-IN / PAUSE / RESUME / DEACTIVATE / close-and-reopen at
//! random moments, against an upstream that fails or lags at random per
//! SPEAK. Bounded in time (`CHAOS_SECONDS`, default 120) and count; the
//! random choices are deterministic per `CHAOS_SEED` (printed), the timing
//! is not, so every check below is an invariant that holds whatever the
//! interleaving:
//!
//!  1. every request gets exactly one response; every SPEAK answered
//!     IN-PROGRESS gets exactly one terminal message: one SPEAK-COMPLETE, or
//!     a STOP / BARGE-IN / DEACTIVATE response listing it (then none);
//!     a STOP-like response lists exactly the SPEAK in progress at that moment;
//!  2. no SPEAK-COMPLETE after the response that stopped that SPEAK;
//!  3. no audio after a SPEAK's terminal message until the next SPEAK (15 ms
//!     margin for the tick racing the message), none while paused;
//!  4. completion causes are 000 or 004, and 004 carries a Completion-Reason
//!     (one that names the injected fault);
//!  5. the host saw no ABI contract violation;
//!  6. threads, fds and memory come back after everything is closed;
//!  7. a SPEAK that completed 000 played exactly what the upstream sent for
//!     it (last frame zero-padded); every other SPEAK played a prefix of it.
//!  8. SSML SPEAKs (`SSML_SHARE` of them: 1–3 `<mark>`s inside sentences and
//!     at ends, sometimes a short `<break>`): their SPEECH-MARKER events come
//!     only after the SPEAK's 200 IN-PROGRESS and before its terminal message
//!     (and the channel's close); they name marks of that SPEAK's document,
//!     each at most once, in document order, none skipped; a SPEAK-COMPLETE
//!     000 of a marked SPEAK follows every one of its marks and carries the
//!     last in its Speech-Marker; any other SPEAK-COMPLETE carries, if
//!     anything, the last mark received (nothing when none was). A text with
//!     a mark inside goes to `/stream/with-timestamps`, any other to
//!     `/stream`; a break is exact silence between the texts' audio (7).
//!
//! The driver keeps to what a real UniMRCP server guarantees the plugin: one
//! SPEAK at a time per channel (the next only after the previous one ended),
//! STOP / PAUSE / RESUME at any time, DEACTIVATE before closing mid-SPEAK
//! (but sometimes not).
//!
//! A frame's time is when its media tick started; the channel may be read
//! later in that tick. So the one tick that started before a SPEAK was sent
//! (or a RESUME) may already carry its audio, and a tick that started before
//! a SPEAK ended may carry the next SPEAK's first frame when that followed at
//! once; such a frame is attributed by its bytes (every SPEAK's audio is
//! unique; a break's silence is not, so a SPEAK that starts with one is
//! never sent at once). Timing bounds are only generous ones.
//!
//! `CHAOS_SECONDS=20 cargo test --release --test chaos -- --nocapture` for a
//! quick run; `CHAOS_SEED` repeats a run's choices, `CHAOS_TICK_MS=2` plays
//! media 5x faster than real time.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::invariants::{self, Attribution, End, SpeakSequence, SPEECH_MARKER};
use common::*;
use unimrcp_shim::host::{
    open_fd_count, thread_count, Channel, Kind, LifecycleKind, MediaClock, Recorded, Request, Server,
};
use unimrcp_shim::upstream::{Behavior, Fault, MockUpstream, RecordedRequest};

const CHANNELS: usize = 100;
const DEFAULT_SECONDS: f64 = 120.0;
const DEFAULT_SEED: u64 = 0x00C4_A05E_ED00_2024;
/// Tolerance for the media tick racing a terminal message.
const MARGIN: Duration = Duration::from_millis(15);
/// Audio lengths the upstream produces, picked per SPEAK.
const LENGTHS_MS: [u32; 6] = [200, 350, 600, 900, 1200, 1500];
/// Completion reasons of a SPEAK ended by the channel going away.
const CLOSE_REASONS: [&str; 3] = ["channel closed while speaking", "channel destroyed", "engine closing"];
/// Generous bound for a STOP-like request's response ("answered at once").
const STOP_ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// Share of SPEAKs sent as SSML with marks.
const SSML_SHARE: f64 = 0.3;
/// Length range of an SSML `<break>`.
const BREAK_MS: (u64, u64) = (20, 200);
/// Pause before a SPEAK that starts with a break, so that no media tick
/// straddles it and the SPEAK before (their silent frames look the same).
const LEAD_BREAK_GAP: Duration = Duration::from_millis(50);

// ------------------------------------------------------------------ random

/// xorshift64*, seeded through splitmix64.
struct Rng(u64);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut r = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        weights.len() - 1
    }
}

// ---------------------------------------------------------------- upstream

struct FaultSpec {
    name: &'static str,
    weight: u64,
    /// None: a clean upstream (the SPEAK must complete 000 unless stopped or
    /// closed); Some: what its Completion-Reason must contain.
    reason: Option<&'static str>,
}

const FIRST_BYTE: &str = "no response from upstream within first_byte_timeout_ms=400";
/// The plugin's first_byte_timeout_ms and stall_timeout_ms in this test.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(400);
/// Completion-Reason of a stall (`stall_timeout_ms`).
const STALLED: &str = "upstream stalled: no data for stall_timeout_ms=400";

const FAULTS: [FaultSpec; 18] = [
    FaultSpec { name: "none, fast", weight: 20, reason: None },
    FaultSpec { name: "none, real time", weight: 16, reason: None },
    FaultSpec { name: "none, slow drip 0.5x", weight: 6, reason: None },
    FaultSpec { name: "none, first byte +150 ms, real time", weight: 6, reason: None },
    FaultSpec { name: "none, first byte +60 ms, odd chunks", weight: 6, reason: None },
    FaultSpec { name: "first byte +900 ms", weight: 3, reason: Some(FIRST_BYTE) },
    FaultSpec { name: "HTTP 401", weight: 3, reason: Some("upstream HTTP 401 invalid_api_key") },
    FaultSpec { name: "HTTP 429 busy (+100 ms)", weight: 3, reason: Some("upstream HTTP 429 system_busy") },
    FaultSpec { name: "HTTP 500", weight: 3, reason: Some("upstream HTTP 500") },
    FaultSpec { name: "HTTP 503 (+200 ms)", weight: 3, reason: Some("upstream HTTP 503") },
    FaultSpec { name: "HTTP 422 validation", weight: 3, reason: Some("upstream HTTP 422") },
    FaultSpec { name: "stall after first chunk", weight: 3, reason: Some(STALLED) },
    FaultSpec { name: "cut after 1001 bytes", weight: 3, reason: Some("upstream stream cut short") },
    FaultSpec { name: "cut after 2999 bytes, real time", weight: 3, reason: Some("upstream stream cut short") },
    FaultSpec { name: "JSON instead of audio", weight: 3, reason: Some("instead of audio") },
    FaultSpec { name: "hang before headers", weight: 3, reason: Some(FIRST_BYTE) },
    FaultSpec { name: "text/html instead of audio", weight: 3, reason: Some("sent text/html") },
    FaultSpec { name: "HTTP 404 voice", weight: 3, reason: Some("upstream HTTP 404 voice_not_found") },
];

/// Faults answered before any audio that the plugin tries again.
const RETRIED: [&str; 3] = ["HTTP 429 busy (+100 ms)", "HTTP 500", "HTTP 503 (+200 ms)"];

fn behavior(fault: usize) -> Behavior {
    let ms = Duration::from_millis;
    match fault {
        0 => Behavior::default(),
        1 => Behavior::realtime(),
        2 => Behavior::default().with_speed(0.5).with_chunk_bytes(800),
        3 => Behavior::realtime().with_first_byte_delay(ms(150)),
        4 => Behavior::default().with_first_byte_delay(ms(60)).with_chunk_bytes(333),
        5 => Behavior::realtime().with_first_byte_delay(ms(900)),
        6 => Behavior::fault(Fault::http(401, "invalid_api_key", "Invalid API key")),
        7 => Behavior::fault(Fault::system_busy()).with_first_byte_delay(ms(100)),
        8 => Behavior::fault(Fault::server_error(500)),
        9 => Behavior::fault(Fault::server_error(503)).with_first_byte_delay(ms(200)),
        10 => Behavior::fault(Fault::ValidationError),
        11 => Behavior::fault(Fault::StallAfterFirstChunk),
        12 => Behavior::fault(Fault::CutAfterBytes(1001)),
        13 => Behavior::fault(Fault::CutAfterBytes(2999)).with_speed(1.0),
        14 => Behavior::fault(Fault::JsonInsteadOfAudio),
        15 => Behavior::fault(Fault::HangBeforeHeaders),
        16 => Behavior::fault(Fault::WrongContentType),
        17 => Behavior::fault(Fault::voice_not_found()),
        _ => unreachable!("fault {fault}"),
    }
}

/// The tag in a SPEAK's text that selects its upstream behaviour.
fn tag(fault: usize, len: usize) -> String {
    format!("[f{fault}l{len}]")
}

fn install_rules(upstream: &MockUpstream) {
    for fault in 0..FAULTS.len() {
        for (len, ms) in LENGTHS_MS.iter().enumerate() {
            upstream.when_text_contains(&tag(fault, len), behavior(fault).with_audio_ms(*ms));
        }
    }
}

// --------------------------------------------------------------- documents

/// What a SPEAK's body makes the plugin play, in order.
#[derive(Clone, Debug)]
enum Piece {
    /// One upstream request, found by the unique token in its text.
    Say {
        token: String,
        /// Index into `LENGTHS_MS` (the tag in its text).
        len: usize,
        /// A mark sits inside its text: it must go to `/stream/with-timestamps`.
        inner_marks: bool,
    },
    /// A `<break>`: silence the plugin makes itself.
    Silence { ms: u32 },
}

/// A SPEAK's body as the driver built it.
#[derive(Clone, Debug)]
struct Doc {
    /// SSML (else plain text).
    ssml: bool,
    pieces: Vec<Piece>,
    /// Mark names in document order (unique within the document).
    marks: Vec<String>,
}

impl Doc {
    fn has_break(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Silence { .. }))
    }

    fn describe(&self) -> String {
        if !self.ssml {
            return "plain text".into();
        }
        let pieces: Vec<String> = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Say { token, len, inner_marks } => {
                    format!("{token} {} ms{}", LENGTHS_MS[*len], if *inner_marks { " (with-timestamps)" } else { "" })
                }
                Piece::Silence { ms } => format!("break {ms} ms"),
            })
            .collect();
        format!("SSML [{}], marks {:?}", pieces.join(", "), self.marks)
    }
}

/// Where a `<mark>` goes, in document order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Before any text (and before a leading break).
    Start,
    /// Inside sentence k, between two words.
    Inner(usize),
    /// Right after sentence k's full stop.
    End(usize),
    /// After a trailing break: nothing but silence before the end.
    AfterBreak,
}

/// Where the one `<break>` of an SSML document goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BreakAt {
    None,
    /// Before the first sentence.
    Lead,
    /// Between two sentences (two upstream requests).
    Mid,
    /// After the last sentence.
    Trail,
}

/// A SPEAK body: plain text, or (`SSML_SHARE` of the time) an SSML
/// document with 1–3 marks and maybe a break. Every text the plugin sends
/// upstream carries the fault tag and a token of its own.
fn make_body(rng: &mut Rng, token: &str, fault: usize, len: usize) -> (Doc, Request) {
    if !rng.chance(SSML_SHARE) {
        let text = format!("{} {token} chaos prompt.", tag(fault, len));
        let doc = Doc {
            ssml: false,
            pieces: vec![Piece::Say { token: token.into(), len, inner_marks: false }],
            marks: vec![],
        };
        return (doc, Request::speak(&text));
    }
    let break_at = [BreakAt::None, BreakAt::Lead, BreakAt::Mid, BreakAt::Trail][rng.weighted(&[50, 10, 25, 15])];
    let sentences = if break_at == BreakAt::Mid { 2 } else { 1 };
    // The second sentence is short, so that a SPEAK plays about as long as
    // a plain one.
    let lens = [len, rng.below(3) as usize];
    let mut slots = vec![Slot::Start];
    for k in 0..sentences {
        slots.extend([Slot::Inner(k), Slot::End(k)]);
    }
    if break_at == BreakAt::Trail {
        slots.push(Slot::AfterBreak);
    }
    let weights: Vec<u64> = slots.iter().map(|s| if matches!(s, Slot::Inner(_)) { 3 } else { 1 }).collect();
    let n = 1 + rng.below(3) as usize;
    // Slot indices in document order; the same slot may hold two marks.
    let mut picked: Vec<usize> = (0..n).map(|_| rng.weighted(&weights)).collect();
    picked.sort_unstable();
    // Names in document order, numbered in a shuffled order.
    let mut numbers: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        numbers.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let marks: Vec<String> = numbers.iter().map(|k| format!("{token}_m{k}")).collect();
    let at = |slot: Slot| -> String {
        picked
            .iter()
            .zip(&marks)
            .filter(|(&i, _)| slots[i] == slot)
            .map(|(_, name)| format!("<mark name=\"{name}\"/>"))
            .collect()
    };
    let break_ms = rng.ms(BREAK_MS.0, BREAK_MS.1).as_millis() as u32;
    let brk = format!("<break time=\"{break_ms}ms\"/>");
    let mut body = String::from(r#"<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis">"#);
    let mut pieces = Vec::new();
    body.push_str(&at(Slot::Start));
    if break_at == BreakAt::Lead {
        body.push_str(&brk);
        pieces.push(Piece::Silence { ms: break_ms });
    }
    for (k, &len) in lens.iter().enumerate().take(sentences) {
        if k > 0 {
            body.push(' ');
            body.push_str(&brk);
            body.push(' ');
            pieces.push(Piece::Silence { ms: break_ms });
        }
        let inner = at(Slot::Inner(k));
        let seg_token = format!("{token}s{k}");
        body.push_str(&format!("{} {seg_token} chaos {inner}prompt number {k}.", tag(fault, len)));
        body.push_str(&at(Slot::End(k)));
        pieces.push(Piece::Say { token: seg_token, len, inner_marks: !inner.is_empty() });
    }
    if break_at == BreakAt::Trail {
        body.push_str(&brk);
        body.push_str(&at(Slot::AfterBreak));
        pieces.push(Piece::Silence { ms: break_ms });
    }
    body.push_str("</speak>");
    (Doc { ssml: true, pieces, marks }, Request::speak_ssml(&body))
}

// ------------------------------------------------------------------ driver

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Speak {
        fault: usize,
        len: usize,
    },
    /// A SPEAK the plugin must refuse with this status.
    BadSpeak(u32),
    Stop,
    Barge,
    Deactivate,
    Pause,
    Resume,
}

impl Op {
    fn ends_speak(self) -> bool {
        matches!(self, Op::Stop | Op::Barge | Op::Deactivate)
    }

    fn name(self) -> &'static str {
        match self {
            Op::Speak { .. } => "SPEAK",
            Op::BadSpeak(_) => "SPEAK(invalid)",
            Op::Stop => "STOP",
            Op::Barge => "BARGE-IN-OCCURRED",
            Op::Deactivate => "DEACTIVATE",
            Op::Pause => "PAUSE",
            Op::Resume => "RESUME",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseKind {
    /// No SPEAK in progress (as far as the driver knew).
    Idle,
    /// DEACTIVATE answered, then close (what the real server does).
    AfterDeactivate,
    /// Closed with a SPEAK in progress, no DEACTIVATE.
    MidSpeak,
}

/// One channel, from open to close, and everything sent on it.
struct Instance {
    label: String,
    ch: Channel,
    rate: u32,
    ops: Vec<(u32, Op)>,
    /// SPEAK request id → what its body makes the plugin play.
    docs: HashMap<u32, Doc>,
    close: Option<CloseKind>,
    close_took: Duration,
}

struct Live {
    inst: Instance,
    speaking: Option<u32>,
    paused: bool,
    speaks: usize,
    closed: bool,
}

struct Ctx<'a> {
    server: &'a Server,
    deadline: Instant,
    failures: Mutex<Vec<String>>,
}

impl Ctx<'_> {
    fn fail(&self, msg: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            eprintln!("[chaos] FAILURE: {msg}");
        }
        f.push(msg);
    }
}

struct Driver<'a> {
    slot: usize,
    rng: Rng,
    ctx: &'a Ctx<'a>,
    opened: usize,
}

impl Driver<'_> {
    fn run(mut self) -> Vec<Instance> {
        let mut out = Vec::new();
        while Instant::now() < self.ctx.deadline {
            let Some(live) = self.open() else { break };
            out.push(self.channel_life(live));
        }
        out
    }

    fn open(&mut self) -> Option<Live> {
        let rate = if self.rng.chance(0.5) { 8000 } else { 16000 };
        match self.ctx.server.open_channel(rate) {
            Ok(ch) => {
                self.opened += 1;
                let label = format!("slot {} channel #{} ({rate} Hz, {})", self.slot, self.opened, ch.id());
                let inst = Instance {
                    label,
                    ch,
                    rate,
                    ops: Vec::new(),
                    docs: HashMap::new(),
                    close: None,
                    close_took: Duration::ZERO,
                };
                Some(Live { inst, speaking: None, paused: false, speaks: 0, closed: false })
            }
            Err(e) => {
                self.ctx.fail(format!("slot {}: open_channel({rate}) failed: {e}", self.slot));
                None
            }
        }
    }

    /// Drives one channel until it is closed.
    fn channel_life(&mut self, mut live: Live) -> Instance {
        while !live.closed {
            if Instant::now() >= self.ctx.deadline {
                self.finale(&mut live);
                break;
            }
            // Half the time the next request follows at once (after a STOP,
            // the worker may still be tearing down the previous transfer).
            if self.rng.chance(0.5) {
                std::thread::sleep(self.rng.ms(0, 80));
            }
            match self.rng.below(100) {
                0..=1 => self.close(&mut live, false),
                2..=8 => {
                    let op = [Op::Stop, Op::Barge, Op::Pause, Op::Resume, Op::Deactivate][self.rng.below(5) as usize];
                    self.control(&mut live, op);
                }
                9..=10 => self.bad_speak(&mut live),
                _ => {
                    if self.start_speak(&mut live) {
                        self.speak_plan(&mut live);
                    }
                }
            }
            if live.speaking.is_some() && !live.closed {
                // Something went wrong (reported); don't leave it running.
                self.close(&mut live, false);
            }
        }
        live.inst
    }

    /// At the deadline: close idle, or speak and close under the SPEAK.
    fn finale(&mut self, live: &mut Live) {
        match self.rng.below(3) {
            0 => {}
            n => {
                if self.start_speak(live) {
                    let d = self.rng.ms(0, 400);
                    self.wait_end(live, d);
                    if n == 2 {
                        self.control(live, Op::Deactivate);
                        if live.speaking.is_none() {
                            return self.close(live, true);
                        }
                    }
                }
            }
        }
        self.close(live, false);
    }

    fn send(&mut self, live: &mut Live, op: Op, req: Request) -> u32 {
        let id = live.inst.ch.send(req);
        live.inst.ops.push((id, op));
        id
    }

    fn wait_response(&self, live: &Live, id: u32, op: Op) -> Option<Recorded> {
        let r = live.inst.ch.wait_response(id, WAIT);
        if r.is_none() {
            self.ctx.fail(format!("{}: no response to {} {id} within {WAIT:?}", live.inst.label, op.name()));
        }
        r
    }

    fn bad_speak(&mut self, live: &mut Live) {
        // Bodies refused outright (an unspeakable body of a known type
        // gets IN-PROGRESS and SPEAK-COMPLETE 002 instead: faults.rs).
        let content_type = if self.rng.chance(0.5) { "text/plain; charset=koi8-r" } else { "audio/wav" };
        let mut req = Request::speak("RIFF....WAVE");
        req.content_type = Some(content_type.into());
        let status = 409;
        let id = self.send(live, Op::BadSpeak(status), req);
        self.wait_response(live, id, Op::BadSpeak(status));
    }

    /// Sends a SPEAK with a random upstream behaviour; true once it is
    /// IN-PROGRESS (possibly already stopped by a pipelined STOP).
    fn start_speak(&mut self, live: &mut Live) -> bool {
        let weights: Vec<u64> = FAULTS.iter().map(|f| f.weight).collect();
        let fault = self.rng.weighted(&weights);
        let len = self.rng.below(LENGTHS_MS.len() as u64) as usize;
        let token = format!("tok{}x{}x{}", self.slot, self.opened, live.speaks);
        live.speaks += 1;
        let (doc, req) = make_body(&mut self.rng, &token, fault, len);
        if matches!(doc.pieces.first(), Some(Piece::Silence { .. })) {
            // A first frame of silence is not unique: this SPEAK does not
            // follow the previous one in the same tick (see `verify`).
            std::thread::sleep(LEAD_BREAK_GAP);
        }
        let op = Op::Speak { fault, len };
        let id = self.send(live, op, req);
        live.inst.docs.insert(id, doc);
        live.speaking = Some(id);
        live.paused = false;
        // STOP may be sent at any time, even before IN-PROGRESS came back.
        if self.rng.chance(0.04) {
            let op = if self.rng.chance(0.5) { Op::Stop } else { Op::Barge };
            let stop = self.send(live, op, request_for_op(op));
            self.await_control(live, stop, op);
        }
        let Some(resp) = self.wait_response(live, id, Op::Speak { fault, len }) else { return false };
        if resp.status_code != 200 || resp.request_state != IN_PROGRESS {
            // Reported by the final check.
            if live.speaking == Some(id) {
                live.speaking = None;
            }
            return false;
        }
        true
    }

    /// What happens to a SPEAK in progress.
    fn speak_plan(&mut self, live: &mut Live) {
        #[derive(Clone, Copy)]
        enum Plan {
            Run,
            PauseRun,
            Stop,
            Barge,
            Deactivate,
            PauseStop,
            DeactivateClose,
            CloseMid,
            PauseClose,
            Burst,
        }
        use Plan::*;
        const PLANS: [(Plan, u64); 10] = [
            (Run, 30),
            (PauseRun, 14),
            (Stop, 14),
            (Barge, 9),
            (Deactivate, 3),
            (PauseStop, 6),
            (DeactivateClose, 6),
            (CloseMid, 4),
            (PauseClose, 3),
            (Burst, 5),
        ];
        let weights: Vec<u64> = PLANS.iter().map(|p| p.1).collect();
        let plan = PLANS[self.rng.weighted(&weights)].0;
        let delay = self.rng.ms(0, 1600);
        match plan {
            Run => {
                if self.rng.chance(0.1) {
                    let d = self.rng.ms(0, 500);
                    if !self.wait_end(live, d) {
                        self.control(live, Op::Resume); // not paused: a no-op
                    }
                }
                self.finish(live);
            }
            PauseRun => {
                if !self.wait_end(live, delay) {
                    self.control(live, Op::Pause);
                    std::thread::sleep(self.rng.ms(20, 800));
                    if self.rng.chance(0.2) {
                        self.control(live, Op::Pause); // already paused
                    }
                    self.control(live, Op::Resume);
                }
                self.finish(live);
            }
            Stop | Barge | Deactivate => {
                let op = match plan {
                    Stop => Op::Stop,
                    Barge => Op::Barge,
                    _ => Op::Deactivate,
                };
                // When the SPEAK ended first, sometimes STOP anyway (a race
                // the real client makes all the time).
                if !self.wait_end(live, delay) || self.rng.chance(0.3) {
                    self.control(live, op);
                }
            }
            PauseStop => {
                if !self.wait_end(live, delay) {
                    self.control(live, Op::Pause);
                    std::thread::sleep(self.rng.ms(0, 600));
                }
                let op = if self.rng.chance(0.5) { Op::Stop } else { Op::Barge };
                self.control(live, op);
            }
            DeactivateClose => {
                self.wait_end(live, delay);
                self.control(live, Op::Deactivate);
                self.close(live, true);
            }
            CloseMid => {
                self.wait_end(live, delay);
                self.close(live, false);
            }
            PauseClose => {
                if !self.wait_end(live, delay) {
                    self.control(live, Op::Pause);
                    std::thread::sleep(self.rng.ms(0, 600));
                }
                if self.rng.chance(0.5) {
                    self.control(live, Op::Deactivate);
                    self.close(live, true);
                } else {
                    self.close(live, false);
                }
            }
            Burst => {
                // PAUSE, STOP/BARGE-IN and RESUME back to back, then the answers.
                self.wait_end(live, delay);
                let stop_op = if self.rng.chance(0.5) { Op::Stop } else { Op::Barge };
                let ops = [Op::Pause, stop_op, Op::Resume];
                let ids: Vec<u32> = ops.iter().map(|&op| self.send(live, op, request_for_op(op))).collect();
                for (id, op) in ids.into_iter().zip(ops) {
                    self.await_control(live, id, op);
                }
            }
        }
    }

    /// Waits (bounded) for the SPEAK in progress to end on its own.
    fn finish(&mut self, live: &mut Live) {
        if live.paused {
            self.control(live, Op::Resume);
        }
        if let Some(id) = live.speaking {
            if !self.wait_end(live, WAIT) {
                self.ctx.fail(format!(
                    "{}: SPEAK {id} ({}) did not end within {WAIT:?} and nothing stopped it",
                    live.inst.label,
                    describe_speak(&live.inst, id)
                ));
            }
        }
    }

    /// Waits up to `d` for the SPEAK in progress to complete; true when no
    /// SPEAK is in progress any more.
    fn wait_end(&mut self, live: &mut Live, d: Duration) -> bool {
        let Some(id) = live.speaking else { return true };
        if live.inst.ch.wait_complete(id, d).is_some() {
            live.speaking = None;
            live.paused = false;
            return true;
        }
        false
    }

    fn control(&mut self, live: &mut Live, op: Op) {
        let id = self.send(live, op, request_for_op(op));
        self.await_control(live, id, op);
    }

    /// Reads the answer to a control request and updates what the driver
    /// believes (the final check judges the answers).
    fn await_control(&mut self, live: &mut Live, id: u32, op: Op) {
        let Some(resp) = self.wait_response(live, id, op) else { return };
        let listed = resp.active_request_ids.clone().unwrap_or_default();
        match op {
            Op::Pause if !listed.is_empty() => live.paused = true,
            Op::Resume => live.paused = false,
            _ if op.ends_speak() => {
                if let Some(s) = live.speaking {
                    if listed.contains(&s) {
                        live.speaking = None;
                        live.paused = false;
                    } else {
                        // Not listed: it must have completed already.
                        self.wait_end(live, WAIT);
                    }
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, live: &mut Live, after_deactivate: bool) {
        let kind = if after_deactivate {
            CloseKind::AfterDeactivate
        } else if live.speaking.is_some() {
            CloseKind::MidSpeak
        } else {
            CloseKind::Idle
        };
        live.inst.close = Some(kind);
        let started = Instant::now();
        if let Err(e) = live.inst.ch.clone().close() {
            self.ctx.fail(format!("{}: close failed: {e}", live.inst.label));
        }
        live.inst.close_took = started.elapsed();
        live.closed = true;
        live.speaking = None;
    }
}

fn request_for_op(op: Op) -> Request {
    match op {
        Op::Stop => Request::stop(),
        Op::Barge => Request::barge_in(),
        Op::Deactivate => Request::deactivate(),
        Op::Pause => Request::pause(),
        Op::Resume => Request::resume(),
        Op::Speak { .. } | Op::BadSpeak(_) => unreachable!("SPEAKs are built with their text"),
    }
}

fn describe_speak(inst: &Instance, id: u32) -> String {
    match inst.ops.iter().find(|(i, _)| *i == id) {
        Some((_, Op::Speak { fault, len })) => {
            let doc = inst.docs.get(&id).map(Doc::describe).unwrap_or_default();
            format!("upstream \"{}\", {} ms, {doc}", FAULTS[*fault].name, LENGTHS_MS[*len])
        }
        _ => "?".into(),
    }
}

// ------------------------------------------------------------------ checks

#[derive(Default)]
struct Tally {
    channels: usize,
    outcomes: BTreeMap<String, usize>,
    faults: BTreeMap<&'static str, usize>,
    sent: BTreeMap<&'static str, usize>,
    closes: BTreeMap<&'static str, usize>,
    stop_latency: Vec<Duration>,
    close_max: Duration,
    exact_audio: usize,
    prefix_audio: usize,
    audio_bytes_checked: usize,
    racing_ticks: usize,
    straddling_ticks: usize,
    paused_windows: usize,
    /// SSML SPEAKs answered IN-PROGRESS, those with a `<break>`, and those
    /// with marks (all of them have).
    ssml_speaks: usize,
    break_speaks: usize,
    marked_speaks: usize,
    speech_markers: usize,
    /// Marked SPEAKs that completed 000 (so with every mark announced).
    all_marks: usize,
    /// SPEAK-COMPLETEs carrying a Speech-Marker.
    complete_with_marker: usize,
    with_timestamps_requests: usize,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// What `doc` can play: each text's audio as the upstream sent it, each
/// break as silence, up to the first text that did not arrive whole (last
/// frame zero-padded); and why not everything did (None: it all did).
fn upstream_audio(
    doc: &Doc,
    upstream: &HashMap<String, Vec<&RecordedRequest>>,
    rate: u32,
    fb: usize,
) -> (Vec<u8>, Option<String>) {
    let mut bytes = Vec::new();
    let mut incomplete = None;
    for piece in &doc.pieces {
        match piece {
            Piece::Silence { ms } => bytes.resize(bytes.len() + *ms as usize * rate as usize / 1000 * 2, 0),
            Piece::Say { token, .. } => match upstream.get(token).and_then(|v| v.first()) {
                Some(r) => {
                    bytes.extend_from_slice(&r.audio_sent);
                    // (A 200 of JSON or HTML is complete but holds no audio.)
                    if !(r.completed && r.status == 200 && !r.audio_sent.is_empty()) {
                        incomplete = Some(format!(
                            "the upstream response for {token} was not complete audio (status {}, completed {}, {} bytes of audio)",
                            r.status,
                            r.completed,
                            r.audio_sent.len()
                        ));
                        break;
                    }
                }
                None => {
                    incomplete = Some(format!("there was no upstream request for {token}"));
                    break;
                }
            },
        }
    }
    (padded(&bytes, fb), incomplete)
}

/// What the Completion-Reason must contain when the upstream failed with
/// `fault`, on the endpoint the first text went to. JSON is the
/// timestamp endpoint's own format: a JSON body there is a stream without
/// audio.
fn reason_for(fault: usize, with_timestamps: bool) -> Option<&'static str> {
    match FAULTS[fault].name {
        "JSON instead of audio" if with_timestamps => Some("sent no audio"),
        _ => FAULTS[fault].reason,
    }
}

/// Whether the test upstream itself missed the plugin's timeout named in
/// `reason` for the last request of a SPEAK, by its own record: then that
/// timeout is the right answer, whatever the fault meant to inject. On a
/// loaded machine the upstream's thread can be scheduled late enough for
/// it (a clean "first byte +150 ms" answering after 400 ms). The checks
/// only excuse what the plugin could not have seen otherwise, so a plugin
/// that times out a timely upstream still fails:
/// * first byte: the plugin sent the request after `after` (the SPEAK, or
///   the previous request's last write, which it read before sending this
///   one), so a first byte written before `after` + the timeout was in its
///   socket in time;
/// * stall: the plugin reads what is in its socket before it checks the
///   clock, so a stall needs a pause of the timeout between the upstream's
///   writes, or after its last one (not a write blocked because the plugin
///   was not reading: that is backpressure, which must not count).
fn upstream_missed_timeout(reason: &str, reqs: &[&RecordedRequest], sent: Instant, end_at: Instant) -> bool {
    let Some((last, earlier)) = reqs.split_last() else { return false };
    if reason.starts_with(FIRST_BYTE) {
        let after = earlier.last().and_then(|r| r.writes.last()).map_or(sent, |w| w.began);
        return !matches!(last.first_byte_at, Some(t) if t < after + UPSTREAM_TIMEOUT);
    }
    if reason.starts_with(STALLED) {
        let tail = !last.completed
            && !last.write_pending()
            && last.last_write_end().is_some_and(|t| end_at >= t + UPSTREAM_TIMEOUT);
        return tail || last.longest_pause_between_writes() >= UPSTREAM_TIMEOUT;
    }
    false
}

/// Every invariant for one closed channel (the rules themselves are in
/// tests/common/invariants.rs). Returns its failures.
fn verify(inst: &Instance, upstream: &HashMap<String, Vec<&RecordedRequest>>, t: &mut Tally) -> Vec<String> {
    let ch = &inst.ch;
    let mut f: Vec<String> = Vec::new();
    let msgs = ch.messages();
    let frames = ch.frames();
    let audio = ch.audio();
    let fb = frame_bytes(inst.rate);
    let epoch = frames.epoch;
    let ops: HashMap<u32, Op> = inst.ops.iter().copied().collect();

    t.channels += 1;
    for (_, op) in &inst.ops {
        *t.sent.entry(op.name()).or_default() += 1;
    }
    let close = match inst.close {
        Some(CloseKind::Idle) => "idle",
        Some(CloseKind::AfterDeactivate) => "after DEACTIVATE",
        Some(CloseKind::MidSpeak) => "mid-SPEAK, no DEACTIVATE",
        None => "never closed",
    };
    *t.closes.entry(close).or_default() += 1;
    t.close_max = t.close_max.max(inst.close_took);
    if ch.is_open() {
        f.push("channel still open at the end".into());
    }

    // 1. Exactly one response per request.
    let sent: Vec<(u32, &str)> = inst.ops.iter().map(|(id, op)| (*id, op.name())).collect();
    f.extend(invariants::one_response_per_request(&msgs, &sent));

    // 1, 2, 4, 8. The message sequence, in the order the plugin sent it.
    let closed_at = ch.lifecycle().iter().find(|l| l.what == LifecycleKind::CloseResponded).map(|l| l.at);
    let mut seq = SpeakSequence::new(epoch);
    let mut pauses: Vec<(Instant, u32, usize)> = Vec::new();
    let mut resumes: Vec<(u32, Instant)> = Vec::new();
    for m in &msgs {
        let Some(&op) = ops.get(&m.request_id) else { continue };
        let id = m.request_id;
        let listed = m.active_request_ids.clone().unwrap_or_default();
        match (m.kind, op) {
            (Kind::Response, Op::Speak { .. }) => {
                if m.status_code == 200 && m.request_state == IN_PROGRESS {
                    seq.in_progress(id, ch.sent_at(id).expect("sent"), &mut f);
                    let doc = &inst.docs[&id];
                    t.ssml_speaks += usize::from(doc.ssml);
                    t.break_speaks += usize::from(doc.has_break());
                    t.marked_speaks += usize::from(!doc.marks.is_empty());
                } else {
                    *t.outcomes.entry("valid SPEAK refused (!)".into()).or_default() += 1;
                    f.push(format!(
                        "valid SPEAK {id} refused: {} reason {:?}",
                        m.summary(),
                        m.completion_reason.as_deref()
                    ));
                }
            }
            (Kind::Response, Op::BadSpeak(status)) => {
                *t.outcomes.entry(format!("refused {status} (invalid body)")).or_default() += 1;
                if m.status_code != status || m.request_state != COMPLETE || m.completion_cause != Some(PARSE_FAILURE) {
                    f.push(format!(
                        "invalid SPEAK {id}: expected {status} COMPLETE with cause 002, got {} cause {:?}",
                        m.summary(),
                        m.completion_cause
                    ));
                }
            }
            (Kind::Response, op) if op.ends_speak() => {
                if let Some(sent) = ch.sent_at(id) {
                    t.stop_latency.push(m.at.saturating_duration_since(sent));
                }
                seq.stop_like(op.name(), id, m, &mut f);
            }
            (Kind::Response, op @ (Op::Pause | Op::Resume)) => {
                seq.pause_like(op.name(), id, m, &mut f);
                match (op, seq.current) {
                    (Op::Pause, Some(c)) if !listed.is_empty() => pauses.push((m.at, id, c)),
                    (Op::Resume, _) => resumes.push((id, ch.sent_at(id).expect("sent"))),
                    _ => {}
                }
            }
            (Kind::Response, _) => unreachable!(),
            (Kind::Event, Op::Speak { .. }) if m.method_id == SPEECH_MARKER => {
                t.speech_markers += 1;
                let doc = &inst.docs[&id];
                seq.marker(id, m, closed_at, &doc.marks, || doc.describe(), &mut f);
            }
            (Kind::Event, Op::Speak { .. }) => {
                if m.method_id != SPEAK_COMPLETE {
                    f.push(format!("unexpected event {}", m.summary()));
                    continue;
                }
                f.extend(invariants::normal_or_error_with_reason(id, m));
                let doc = &inst.docs[&id];
                if let Some(c) = seq.complete(id, m, &doc.marks, || doc.describe(), &mut f) {
                    if m.completion_cause == Some(NORMAL) && !doc.marks.is_empty() && seq.speaks[c].marks == doc.marks {
                        t.all_marks += 1;
                    }
                    t.complete_with_marker += usize::from(m.speech_marker.is_some());
                }
            }
            (Kind::Event, op) => f.push(format!("event {} for {} {id}", m.summary(), op.name())),
            (Kind::Other(_), _) => {}
        }
    }
    let speaks = &seq.speaks;
    if let Some(c) = seq.current {
        f.push(format!(
            "SPEAK {} ({}) never got a terminal message: no SPEAK-COMPLETE, listed by no STOP/BARGE-IN/DEACTIVATE, channel closed {close}",
            speaks[c].id,
            describe_speak(inst, speaks[c].id)
        ));
    }

    // Frames the host flagged as misuse.
    f.extend(invariants::no_flagged_frames(&frames));
    if let Some(e) = invariants::whole_frames(&frames, &audio, fb) {
        f.push(e);
        return f;
    }
    if speaks.iter().any(|s| s.end.is_none()) {
        return f; // reported above; the audio cannot be attributed
    }
    for w in speaks.windows(2) {
        if w[1].sent <= w[0].ended_at() {
            f.push(format!("driver bug: SPEAK {} sent before SPEAK {} ended", w[1].id, w[0].id));
            return f;
        }
    }

    // 3. Attribute every audio frame to the SPEAK playing then (see
    // `Attribution`), from what the upstream sent for each SPEAK, with its
    // breaks' silence (last frame zero-padded), and why not all of it when
    // it did not.
    let docs: Vec<&Doc> = speaks.iter().map(|s| &inst.docs[&s.id]).collect();
    let (expected, incomplete): (Vec<Vec<u8>>, Vec<Option<String>>) =
        docs.iter().map(|d| upstream_audio(d, upstream, inst.rate, fb)).unzip();
    let attribution = Attribution::new(&frames, &audio, fb, speaks, &expected);
    t.straddling_ticks += attribution.straddling;
    let (outside, racing) = attribution.no_audio_outside_speaks(speaks, MARGIN);
    t.racing_ticks += racing;
    f.extend(outside);

    // 3. Silence while paused.
    t.paused_windows += pauses.len();
    f.extend(attribution.silent_while_paused(speaks, &pauses, &resumes, MARGIN, &msgs, |id| describe_speak(inst, id)));

    // 7. The audio of each SPEAK against what the upstream sent for it;
    // 4. its Completion-Reason against the injected fault.
    let played = attribution.played(speaks.len());
    for (i, s) in speaks.iter().enumerate() {
        let Op::Speak { fault, len } = ops[&s.id] else { unreachable!("a SPEAK") };
        let spec = &FAULTS[fault];
        *t.faults.entry(spec.name).or_default() += 1;
        let doc = docs[i];
        let what = if doc.ssml {
            format!("SPEAK {} (upstream \"{}\", {})", s.id, spec.name, doc.describe())
        } else {
            format!("SPEAK {} (upstream \"{}\", {} ms)", s.id, spec.name, LENGTHS_MS[len])
        };
        // Which endpoint each text went to.
        let mut first_with_timestamps = None;
        // Its upstream requests, in the order it made them.
        let mut said: Vec<&RecordedRequest> = Vec::new();
        for piece in &doc.pieces {
            let Piece::Say { token, inner_marks, .. } = piece else { continue };
            first_with_timestamps.get_or_insert(*inner_marks);
            let reqs = upstream.get(token).map_or(&[][..], |v| v.as_slice());
            said.extend(reqs);
            // A fault the plugin retries (max_retries=2, within the
            // first-byte budget) may bring up to 3 requests, each
            // answered without audio but the last.
            let allowed = if RETRIED.contains(&spec.name) { 3 } else { 1 };
            if reqs.len() > allowed {
                f.push(format!("{what}: {} upstream requests for the one short text {token}", reqs.len()));
            }
            if let Some(r) = reqs.iter().rev().skip(1).find(|r| !r.audio_sent.is_empty()) {
                f.push(format!("{what}: text {token} was retried after audio ({} bytes)", r.audio_sent.len()));
            }
            for r in reqs {
                t.with_timestamps_requests += usize::from(r.with_timestamps);
                if r.with_timestamps != *inner_marks {
                    f.push(format!(
                        "{what}: text {token} went to {} although it has {} mark inside",
                        r.path,
                        if *inner_marks { "a" } else { "no" }
                    ));
                }
            }
        }
        let sent = &expected[i];
        let p = &played[i];
        let (end_at, end) = s.end.as_ref().expect("checked");
        let mut exact = false;
        let outcome = match end {
            End::Complete { cause: Some(NORMAL), .. } => {
                exact = true;
                if spec.reason.is_some() {
                    f.push(format!("{what}: completed 000 normal although the upstream failed"));
                }
                "000 normal".to_string()
            }
            End::Complete { reason, .. } => {
                let reason = reason.as_deref().unwrap_or("");
                if CLOSE_REASONS.iter().any(|c| reason.starts_with(c)) {
                    "004 error: channel closed".to_string()
                } else {
                    let want = reason_for(fault, first_with_timestamps.unwrap_or(false));
                    if want.is_some_and(|w| reason.contains(w)) {
                        "004 error: upstream fault".to_string()
                    } else if upstream_missed_timeout(reason, &said, s.sent, *end_at) {
                        "004 error: the loaded upstream missed a timeout".to_string()
                    } else {
                        match want {
                            None => f.push(format!("{what}: a clean upstream, yet 004 with reason {reason:?}")),
                            Some(want) => f.push(format!(
                                "{what}: Completion-Reason {reason:?} does not name the fault ({want:?})"
                            )),
                        }
                        "004 error: upstream fault".to_string()
                    }
                }
            }
            End::Stopped { by, .. } => format!("stopped by {by}"),
        };
        *t.outcomes.entry(outcome).or_default() += 1;
        if exact {
            match &incomplete[i] {
                None => {
                    if *p != *sent {
                        f.push(format!(
                            "{what}: completed 000 but played {} bytes where the upstream sent {} (padded); first difference at byte {}; {}",
                            p.len(),
                            sent.len(),
                            invariants::first_difference(p, sent),
                            attribution.around_end(i, speaks, &msgs)
                        ));
                    } else {
                        t.exact_audio += 1;
                        t.audio_bytes_checked += p.len();
                    }
                }
                Some(why) => f.push(format!("{what}: completed 000 but {why}")),
            }
        } else if !invariants::is_prefix(p, sent) {
            f.push(format!(
                "{what}: played {} bytes that are not a prefix of the {} the upstream sent; first difference at byte {}",
                p.len(),
                sent.len(),
                invariants::first_difference(p, sent)
            ));
        } else {
            t.prefix_audio += 1;
            t.audio_bytes_checked += p.len();
        }
    }
    f
}

// -------------------------------------------------------------------- test

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes malloc has handed out and not had back (all arenas, mmapped
/// blocks included): unlike RSS, not blurred by fragmentation.
fn heap_in_use() -> usize {
    // SAFETY: plain glibc call with no arguments.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

fn env_seconds() -> f64 {
    std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(DEFAULT_SECONDS)
}

fn env_seed() -> u64 {
    let Ok(s) = std::env::var("CHAOS_SEED") else { return DEFAULT_SEED };
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    parsed.unwrap_or_else(|| panic!("CHAOS_SEED={s:?} is not a number"))
}

/// Waits (bounded) until `f` returns `want`; returns the last value.
fn settle(want: usize, limit: Duration, f: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let v = f();
        if v <= want || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn chaos() {
    let seconds = env_seconds();
    let seed = env_seed();
    println!("[chaos] seed {seed:#x} ({seed}), {seconds} s, {CHANNELS} channels (CHAOS_SEED / CHAOS_SECONDS override)");

    // CHAOS_TICK_MS=2 plays media 5x faster than real time.
    let clock = match std::env::var("CHAOS_TICK_MS").ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => MediaClock::Every(Duration::from_millis(ms)),
        _ => MediaClock::RealTime,
    };
    println!("[chaos] media clock {clock:?} (CHAOS_TICK_MS overrides)");

    let threads_before = thread_count();
    let fds_before = open_fd_count();
    let rss_before = status_kib("VmRSS:");
    let heap_before = heap_in_use();

    let upstream = MockUpstream::start(API_KEY);
    install_rules(&upstream);
    let mut server = start_server(
        params(
            &upstream,
            &[
                ("first_byte_timeout_ms", &UPSTREAM_TIMEOUT.as_millis().to_string()),
                ("stall_timeout_ms", &UPSTREAM_TIMEOUT.as_millis().to_string()),
                ("connect_timeout_ms", "500"),
                ("max_buffer_ms", "500"),
                // The fault mix fails a fifth of all requests on purpose:
                // a circuit would turn the rest into fast failures. The
                // circuit, and the 429s of a full account (the test
                // upstream's plan limit, not a rule per text), have their
                // own tests in tests/capacity.rs.
                ("circuit_failure_threshold", "0"),
            ],
        ),
        clock,
    );

    let started = Instant::now();
    let ctx =
        Ctx { server: &server, deadline: started + Duration::from_secs_f64(seconds), failures: Mutex::new(Vec::new()) };
    let instances: Vec<Instance> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CHANNELS)
            .map(|slot| {
                let driver = Driver { slot, rng: Rng::new(seed ^ splitmix(slot as u64 + 1)), ctx: &ctx, opened: 0 };
                std::thread::Builder::new()
                    .name(format!("chaos-{slot}"))
                    .spawn_scoped(s, move || driver.run())
                    .expect("driver thread")
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("driver thread panicked")).collect()
    });
    let ran = started.elapsed();
    let mut failures = ctx.failures.into_inner().unwrap();

    assert_eq!(server.open_channel_count(), 0, "every channel was closed by its driver");
    if !upstream.wait_until_idle(Duration::from_secs(5)) {
        failures.push(format!(
            "{} upstream transfers still running 5 s after every channel closed",
            upstream.active_streams()
        ));
    }
    let requests = upstream.requests();
    let mut by_token: HashMap<String, Vec<&RecordedRequest>> = HashMap::new();
    for r in &requests {
        if let Some(tok) = r.text.as_deref().and_then(|t| t.split_whitespace().find(|w| w.starts_with("tok"))) {
            by_token.entry(tok.to_string()).or_default().push(r);
        }
    }

    let mut tally = Tally::default();
    for inst in &instances {
        for msg in verify(inst, &by_token, &mut tally) {
            failures.push(format!("{}: {msg}", inst.label));
        }
    }
    let upstream_requests = requests.len();
    drop(by_token);
    drop(requests);

    server.stop().expect("server shuts down cleanly");
    let violations = server.violations();
    let key_in_logs = server.logs_text().contains(API_KEY);
    drop(server);
    drop(upstream);
    drop(instances);

    // 6. Resources: the mock's connection threads end when they see their
    // sockets close; give them a few seconds.
    let threads_after = settle(threads_before, Duration::from_secs(10), thread_count);
    let fds_after = settle(fds_before, Duration::from_secs(10), open_fd_count);
    // SAFETY: plain glibc call; returns freed heap memory to the OS so that
    // RSS shows what is still allocated.
    unsafe { libc::malloc_trim(0) };
    let rss_after = status_kib("VmRSS:");
    let heap_after = heap_in_use();
    let rss_peak = status_kib("VmHWM:");
    let rss_growth_mib = (rss_after as f64 - rss_before as f64) / 1024.0;

    // ---- summary
    let mut lat = tally.stop_latency.clone();
    lat.sort();
    let speaks: usize = tally.faults.values().sum();
    println!("[chaos] ===== summary =====");
    println!(
        "[chaos] seed {seed:#x}, {seconds} s requested, {:.1} s run, {} channels opened over {CHANNELS} slots",
        ran.as_secs_f64(),
        tally.channels
    );
    println!("[chaos] SPEAKs in progress: {speaks}, upstream requests: {upstream_requests}");
    for (outcome, n) in &tally.outcomes {
        println!("[chaos]   {outcome:<34} {n}");
    }
    let sent = |name: &str| tally.sent.get(name).copied().unwrap_or(0);
    println!(
        "[chaos] sent: SPEAK {} (invalid {}), STOP {}, BARGE-IN {}, DEACTIVATE {}, PAUSE {}, RESUME {}",
        sent("SPEAK"),
        sent("SPEAK(invalid)"),
        sent("STOP"),
        sent("BARGE-IN-OCCURRED"),
        sent("DEACTIVATE"),
        sent("PAUSE"),
        sent("RESUME")
    );
    let closes: Vec<String> = tally.closes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("[chaos] closes: {} ({}); slowest close {:?}", tally.channels, closes.join(", "), tally.close_max);
    println!("[chaos] upstream behaviour per SPEAK:");
    for spec in &FAULTS {
        println!("[chaos]   {:<38} {}", spec.name, tally.faults.get(spec.name).copied().unwrap_or(0));
    }
    println!(
        "[chaos] STOP/BARGE-IN/DEACTIVATE → response: n={} p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
    println!(
        "[chaos] audio checked: {} SPEAKs exact, {} as prefix, {:.1} MB; paused windows {}; racing ticks tolerated {}, straddling {}",
        tally.exact_audio,
        tally.prefix_audio,
        tally.audio_bytes_checked as f64 / 1e6,
        tally.paused_windows,
        tally.racing_ticks,
        tally.straddling_ticks
    );
    println!(
        "[chaos] SSML: {} SPEAKs in progress ({} with marks, {} with a break), {} SPEECH-MARKER events, {} completed 000 with every mark, {} SPEAK-COMPLETEs with a Speech-Marker, {} with-timestamps requests",
        tally.ssml_speaks,
        tally.marked_speaks,
        tally.break_speaks,
        tally.speech_markers,
        tally.all_marks,
        tally.complete_with_marker,
        tally.with_timestamps_requests
    );
    println!(
        "[chaos] threads {threads_before} → {threads_after}, fds {fds_before} → {fds_after}, VmRSS {} → {} MiB (growth {rss_growth_mib:.1} MiB, peak {} MiB)",
        rss_before / 1024,
        rss_after / 1024,
        rss_peak / 1024
    );

    println!(
        "[chaos] heap in use (mallinfo2) {:.1} → {:.1} MiB (growth {:.1} MiB)",
        heap_before as f64 / 1048576.0,
        heap_after as f64 / 1048576.0,
        (heap_after as f64 - heap_before as f64) / 1048576.0
    );

    // ---- verdict
    if !violations.is_empty() {
        failures.push(format!("host saw {} contract violation(s): {:#?}", violations.len(), violations));
    }
    if key_in_logs {
        failures.push("the API key appeared in the log".into());
    }
    if let Some(max) = lat.last() {
        if *max > STOP_ANSWER_LIMIT {
            failures.push(format!("a STOP-like request took {max:?} to be answered (limit {STOP_ANSWER_LIMIT:?})"));
        }
    }
    if threads_after != threads_before {
        failures.push(format!(
            "threads: {threads_before} before, {threads_after} after (names: {:?})",
            unimrcp_shim::host::thread_names()
        ));
    }
    if fds_after != fds_before {
        failures.push(format!("open fds: {fds_before} before, {fds_after} after"));
    }
    // The host keeps a small header of every pool and channel it ever made
    // (to catch use after free), about 1 KiB a channel and 300 B a request;
    // anything well beyond that is a leak. RSS also keeps the pages those
    // headers pin after the run's peak, so its bound is looser.
    let heap_limit = 8 * 1024 * 1024 + 1024 * tally.channels + 512 * tally.sent.values().sum::<usize>();
    let heap_growth = heap_after.saturating_sub(heap_before);
    if heap_growth > heap_limit {
        failures.push(format!(
            "heap in use grew by {:.1} MiB (limit {:.1} MiB for {} channels): a leak",
            heap_growth as f64 / 1048576.0,
            heap_limit as f64 / 1048576.0,
            tally.channels
        ));
    }
    let rss_limit_mib = 200f64.max(1.5 * seconds);
    if rss_growth_mib > rss_limit_mib {
        failures.push(format!("VmRSS grew by {rss_growth_mib:.1} MiB (limit {rss_limit_mib:.0} MiB)"));
    }
    if tally.outcomes.get("000 normal").copied().unwrap_or(0) == 0 {
        failures.push("no SPEAK completed normally: the run exercised nothing".into());
    }
    if tally.all_marks == 0 {
        failures.push("no marked SSML SPEAK completed normally: the marks were not exercised".into());
    }
    if !failures.is_empty() {
        for msg in failures.iter().take(40) {
            eprintln!("[chaos] FAILED: {msg}");
        }
        panic!("{} chaos invariant failure(s) with seed {seed:#x}; first: {}", failures.len(), failures[0]);
    }
}
