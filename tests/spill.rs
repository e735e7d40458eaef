//! Audio that does not fit the channel's buffer goes to a per-SPEAK spill
//! file, so the upstream transfer runs at the upstream's speed and ends
//! when generation ends, not when playback does: exact audio through the
//! file, across parts and breaks, with marks, STOP while it drains, the
//! cache, in memory (the default) and in a `spill_dir`, and the fall-back
//! to backpressure when no file can be made.
//!
//! The tests here run one at a time (`serial`): the real-time ones read the
//! order of events on a machine with two cores.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{Channel, Kind, MediaClock, Recorded, Request};
use unimrcp_shim::upstream::{char_start_ms, Behavior, RecordedRequest};

const SPEECH_MARKER: usize = 0;
/// What the plugin logs (debug) when a SPEAK starts spilling.
const SPILLING: &str = "audio beyond max_buffer_ms goes to a spill file in";
/// A kernel send buffer small enough that the mock feels a client that
/// stops reading (on loopback the autotuned ones hold megabytes).
const SEND_BUFFER: usize = 16 * 1024;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Byte-for-byte equality, reported as lengths and the first difference.
#[track_caller]
fn assert_same_audio(got: &[u8], expected: &[u8], what: &str) {
    if got != expected {
        let first = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!("{what}: {} bytes played, {} expected, first difference at byte {first}", got.len(), expected.len());
    }
}

fn silence(ms: u32, rate: u32) -> Vec<u8> {
    vec![0; (ms * rate / 1000 * 2) as usize]
}

/// A SPEAK (plain or SSML) that must complete normally with nothing in
/// between: the audio it played.
fn speak_ok(ch: &Channel, req: Request) -> Vec<u8> {
    let before = ch.audio_len();
    let id = ch.send(req);
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    ch.audio()[before..].to_vec()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spill_lines(rig: &Rig) -> usize {
    rig.server.logs_text().matches(SPILLING).count()
}

/// The whole scenario of the first test: one long prompt from an upstream
/// that generates at 4× real time, on a real-time media clock with a 1 s
/// buffer. Returns the request as the upstream saw it, with the channel.
fn long_prompt(rig: &Rig, rate: u32, audio_ms: u32, text: &str) -> (Channel, u32, Recorded, RecordedRequest) {
    let ch = rig.server.open_channel(rate).unwrap();
    let id = ch.speak(text);
    let done = ch.wait_complete(id, Duration::from_millis(u64::from(audio_ms)) + WAIT).expect("SPEAK-COMPLETE");
    let msgs = for_request(&ch, id);
    assert_eq!(msgs.len(), 2, "IN-PROGRESS and SPEAK-COMPLETE: {msgs:#?}");
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    let req = request_for(&rig.upstream, text);
    (ch, id, done, req)
}

fn long_prompt_rig(audio_ms: u32, send_buffer: Option<usize>) -> Rig {
    let rig = rig_with_clock(&[("max_buffer_ms", "1000")], MediaClock::RealTime);
    let mut behavior = Behavior::default().with_speed(4.0).with_audio_ms(audio_ms);
    if let Some(bytes) = send_buffer {
        behavior = behavior.with_send_buffer(bytes);
    }
    rig.upstream.set_default(behavior);
    rig
}

/// Seconds the upstream held the connection (its first byte → its last
/// write's end) per second of audio.
fn held_per_audio_second(req: &RecordedRequest, rate: u32) -> f64 {
    let first = req.first_byte_at.expect("a first byte");
    let last = req.last_write_end().expect("writes");
    last.duration_since(first).as_secs_f64() / (req.audio_sent.len() as f64 / (f64::from(rate) * 2.0))
}

#[test]
fn a_long_prompt_is_fetched_at_the_upstreams_speed_not_the_callers() {
    let _serial = serial();
    let rate = 16000;
    let rig = long_prompt_rig(20_000, Some(SEND_BUFFER));
    let text = "Twenty seconds of audio, generated four times faster than it plays.";
    let (ch, _, done, req) = long_prompt(&rig, rate, 20_000, text);
    assert!(req.completed, "the upstream finished the response");
    let finished = req.last_write_end().expect("writes");
    assert!(finished < done.at, "the upstream finished before SPEAK-COMPLETE");

    // Order of events, not wall-clock bounds: by the time the upstream's
    // last write went through, less than half of the audio had been
    // played. With backpressure holding the transfer, it would end about
    // max_buffer_ms (plus what the sockets hold) before the last frame.
    let frames = ch.frames();
    let total = frames.audio_frames();
    let played_when_finished = frames.frames.iter().filter(|f| f.is_audio() && frames.at(f) <= finished).count();
    assert!(
        played_when_finished * 2 < total,
        "the upstream finished after {played_when_finished} of {total} frames had played"
    );
    assert_same_audio(&ch.audio(), &padded(&req.audio_sent, frame_bytes(rate)), "through the spill file");
    assert_eq!(spill_lines(&rig), 1, "one spill file for the SPEAK");
    assert!(rig.server.logs_text().contains(&format!("{SPILLING} memory")), "in memory by default");
    eprintln!(
        "connection held {:.3} s per second of audio; upstream done at frame {played_when_finished} of {total}",
        held_per_audio_second(&req, rate)
    );
    assert_clean(&rig.server);
}

/// The figure for the issue: one 30-second prompt at 4× real time with
/// max_buffer_ms=1000; prints the seconds the upstream connection was held
/// per second of audio. `SPILL_RATE` (default 16000) and `SPILL_SNDBUF`
/// (bytes, default 16384; 0: the system's autotuned buffer) vary it.
#[test]
#[ignore = "a measurement (30 s): cargo test --test spill -- --ignored --nocapture"]
fn measure_connection_hold_per_audio_second() {
    let _serial = serial();
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rate = env("SPILL_RATE", 16000) as u32;
    let send_buffer = Some(env("SPILL_SNDBUF", SEND_BUFFER)).filter(|&b| b > 0);
    let rig = long_prompt_rig(30_000, send_buffer);
    let text = "Thirty seconds at four times real time.";
    let (ch, id, done, req) = long_prompt(&rig, rate, 30_000, text);
    eprintln!(
        "rate={rate} send_buffer={send_buffer:?} audio={:.2}s held={:.2}s held_per_audio_second={:.3} \
         speak_to_complete={:.2}s",
        req.audio_sent.len() as f64 / (f64::from(rate) * 2.0),
        req.last_write_end().unwrap().duration_since(req.first_byte_at.unwrap()).as_secs_f64(),
        held_per_audio_second(&req, rate),
        done.at.duration_since(ch.sent_at(id).unwrap()).as_secs_f64(),
    );
}

#[test]
fn stop_while_the_spill_drains_is_answered_at_once_and_the_next_speak_is_exact() {
    let _serial = serial();
    let rig = rig_with_clock(&[("max_buffer_ms", "200")], MediaClock::RealTime);
    // Unpaced: the whole response arrives at once, nearly all of it spilled.
    rig.upstream.set_default(Behavior::default().with_audio_ms(20_000));
    rig.upstream.when_text_contains("Second", Behavior::default().with_audio_ms(3000));
    let ch = rig.server.open_channel(8000).unwrap();
    let first_text = "First, long, and mostly in the spill file.";
    let first = ch.speak(first_text);
    wait_until("the upstream to finish", WAIT, || {
        rig.upstream.requests().first().is_some_and(|r| r.completed) && ch.frames().first_audible().is_some()
    });
    let req = request_for(&rig.upstream, first_text);
    assert!(req.completed && rig.upstream.active_streams() == 0, "the transfer is over: the spill drains");
    assert_eq!(for_request(&ch, first).len(), 1, "still playing");

    let stop_id = ch.stop();
    let stop = ch.wait_response(stop_id, WAIT).unwrap();
    assert_eq!(stop.thread, "MRCP Server", "answered synchronously, not after the worker");
    assert_eq!((stop.kind, stop.status_code, stop.request_state), (Kind::Response, 200, COMPLETE));
    assert_eq!(stop.active_request_ids.as_deref(), Some(&[first][..]), "{stop:#?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(for_request(&ch, first).len(), 1, "no SPEAK-COMPLETE for the stopped SPEAK");
    assert_eq!(ch.frames().audio_frames_after(stop.at), 0, "no audio after the STOP response");
    let played = ch.audio();
    assert!(!played.is_empty() && played.len() < req.audio_sent.len() / 2);
    assert_same_audio(&played, &req.audio_sent[..played.len()], "what played before STOP");
    assert_eq!(wait_for_log(&rig.server, &format!("SPEAK {first} done:"), 1), 1);
    assert!(rig.server.logs_text().contains("cause=stopped"));

    let before = ch.audio_len();
    let second_text = "Second, spilled as well.";
    let second = ch.speak(second_text);
    let done = expect_in_progress_then_complete(&ch, second);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let req2 = request_for(&rig.upstream, second_text);
    assert_same_audio(&ch.audio()[before..], &padded(&req2.audio_sent, 160), "only the second SPEAK's audio");
    // The first SPEAK spilled (its transfer ended while it still had
    // seconds to play). Whether the second one also spills depends on how
    // fast the worker reads a 3 s response against a 200 ms buffer, which
    // a busy machine changes; what this test is about is that its audio is
    // exact after a STOP during a drain.
    assert!(spill_lines(&rig) >= 1, "the first SPEAK spilled");
    assert_clean(&rig.server);
}

#[test]
fn a_long_text_in_parts_spills_in_order() {
    let _serial = serial();
    let rig = rig(&[("max_buffer_ms", "200"), ("max_request_chars", "20")]);
    rig.upstream.set_default(Behavior::default().with_audio_ms(2500));
    let ch = rig.server.open_channel(8000).unwrap();
    let audio = speak_ok(&ch, Request::speak("Alpha beta gamma. Delta epsilon zeta. Eta theta iota."));
    let reqs = rig.upstream.requests();
    let texts: Vec<&str> = reqs.iter().filter_map(|r| r.text.as_deref()).collect();
    assert_eq!(texts, ["Alpha beta gamma.", "Delta epsilon zeta.", "Eta theta iota."]);
    let expected: Vec<u8> = reqs.iter().flat_map(|r| r.audio_sent.iter().copied()).collect();
    assert!(expected.len() > 5 * 18 * 1024, "the audio dwarfs the buffer");
    assert_same_audio(&audio, &padded(&expected, 160), "three parts through one spill");
    assert_eq!(spill_lines(&rig), 1, "one spill file for all the parts");
    assert_clean(&rig.server);
}

#[test]
fn breaks_go_through_the_spill_in_order() {
    let _serial = serial();
    let rig = rig(&[("max_buffer_ms", "200")]);
    rig.upstream.set_default(Behavior::default().with_audio_ms(2000));
    let ch = rig.server.open_channel(16000).unwrap();
    let doc =
        r#"<speak>One two three.<break time="700ms"/>Four five six.<break time="1500ms"/>Seven eight nine.</speak>"#;
    let audio = speak_ok(&ch, Request::speak_ssml(doc));
    let (a, b, c) = (
        request_for(&rig.upstream, "One two three."),
        request_for(&rig.upstream, "Four five six."),
        request_for(&rig.upstream, "Seven eight nine."),
    );
    let mut expected = a.audio_sent.clone();
    expected.extend(silence(700, 16000));
    expected.extend(&b.audio_sent);
    expected.extend(silence(1500, 16000));
    expected.extend(&c.audio_sent);
    assert_same_audio(&audio, &padded(&expected, 320), "speech and breaks, in order");
    assert_eq!(spill_lines(&rig), 1);
    assert_clean(&rig.server);
}

fn markers(ch: &Channel, id: u32) -> Vec<Recorded> {
    for_request(ch, id).into_iter().filter(|m| m.kind == Kind::Event && m.method_id == SPEECH_MARKER).collect()
}

fn marker_name(m: &Recorded) -> String {
    let value = m.speech_marker.as_deref().expect("Speech-Marker header");
    value.split_once(';').map_or("", |(_, name)| name).to_owned()
}

/// Ticks the manual clock until `n` frames of audio have been played. A
/// tick that finds the buffer not yet refilled from the spill plays
/// silence; the worker gets a moment and the tick is repeated.
fn play_until(rig: &Rig, ch: &Channel, n: usize) {
    let mut guard = 0;
    while ch.frames().audio_frames() < n {
        rig.server.tick();
        if !ch.frames().frames.last().is_some_and(|f| f.is_audio()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        guard += 1;
        assert!(guard < 100_000, "audio stopped at {} frames", ch.frames().audio_frames());
    }
}

/// Marks in audio that went through the spill file are announced when the
/// media thread reads their frame, as they are from the buffer.
#[test]
fn marks_in_spilled_audio_land_on_their_frames() {
    let _serial = serial();
    let rig = rig_with_clock(&[("max_buffer_ms", "200")], MediaClock::Manual);
    rig.upstream.set_default(Behavior::default().with_audio_ms(3000));
    let ch = rig.server.open_channel(8000).unwrap();
    let first = "Hello there, general Kenobi.";
    let doc = r#"<speak>Hello there, <mark name="m1"/>general Kenobi.<break time="200ms"/><mark name="m2"/>Bye now.<mark name="end"/></speak>"#;
    let id = ch.send(Request::speak_ssml(doc));
    // Everything is downloaded before a single frame plays: all but the
    // first 18 KiB is in the spill file.
    wait_until("both responses", WAIT, || {
        let reqs = rig.upstream.requests();
        reqs.len() == 2 && reqs.iter().all(|r| r.completed)
    });
    let r1 = request_for(&rig.upstream, first);
    let r2 = request_for(&rig.upstream, "Bye now.");
    assert!(r1.with_timestamps);
    wait_until("the spill", WAIT, || spill_lines(&rig) == 1);

    let fb = 160usize;
    let audio_ms = (r1.audio_sent.len() / 16) as u32;
    let offset = first.find("general").unwrap();
    let p1 = (char_start_ms(first, audio_ms, offset) / 1000.0 * 8000.0).round() as usize * 2;
    let p2 = r1.audio_sent.len() + silence(200, 8000).len();
    assert!(p1 > 18_304, "m1 lies beyond what the buffer held: in the spill file");
    for (name, position) in [("m1", p1), ("m2", p2)] {
        // The first frame to hold the mark's audio is the one that makes
        // the played byte count pass its position.
        let crossing = position / fb + 1;
        play_until(&rig, &ch, crossing - 1);
        std::thread::sleep(Duration::from_millis(60));
        let before: Vec<String> = markers(&ch, id).iter().map(marker_name).collect();
        assert!(!before.contains(&name.to_owned()), "{name} early, after {} frames: {before:?}", crossing - 1);
        let at = Instant::now();
        play_until(&rig, &ch, crossing);
        let m = ch
            .wait_for(WAIT, |m| m.method_id == SPEECH_MARKER && m.kind == Kind::Event && marker_name(m) == name)
            .unwrap_or_else(|| panic!("{name} after frame {crossing}: {:#?}", markers(&ch, id)));
        assert!(m.at >= at, "{name} sent after its frame was read");
    }
    let mut guard = 0;
    while ch.wait_complete(id, Duration::from_millis(1)).is_none() {
        rig.server.tick();
        guard += 1;
        assert!(guard < 100_000, "SPEAK never completed");
    }
    let names: Vec<String> = markers(&ch, id).iter().map(marker_name).collect();
    assert_eq!(names, ["m1", "m2", "end"]);
    let mut expected = r1.audio_sent.clone();
    expected.extend(silence(200, 8000));
    expected.extend(&r2.audio_sent);
    assert_same_audio(&ch.audio(), &padded(&expected, fb), "the timestamp stream's audio, through the spill");
    assert_clean(&rig.server);
}

/// A private cache dir, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("elevenlabs-spill-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir.join("cache"))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

/// Files this process holds open that were unlinked from `dir` (a spill
/// file shows as "<dir>/#<inode> (deleted)"), with their lengths.
fn open_unlinked_files_in(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| {
                    let target = std::fs::read_link(fd.path()).ok()?;
                    Some((target, std::fs::metadata(fd.path()).ok()?.len()))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|(target, _)| target.starts_with(dir) && target.to_string_lossy().ends_with("(deleted)"))
        .collect()
}

#[test]
fn a_spilled_speak_still_makes_an_exact_cache_entry_and_leaves_no_file() {
    let _serial = serial();
    let dir = TempDir::new("cache");
    let rig = rig(&[
        ("cache_enabled", "true"),
        ("cache_dir", dir.path()),
        ("spill_dir", dir.path()),
        ("max_buffer_ms", "200"),
    ]);
    rig.upstream.set_default(Behavior::default().with_audio_ms(5000));
    let ch = rig.server.open_channel(8000).unwrap();
    let text = "A cached prompt, longer than the buffer.";
    let first = speak_ok(&ch, Request::speak(text));
    let req = request_for(&rig.upstream, text);
    assert_same_audio(&first, &padded(&req.audio_sent, 160), "the first, spilled, SPEAK");
    let logs = rig.server.logs_text();
    assert!(logs.contains(&format!("{SPILLING} {}", dir.path())), "spilled into the spill_dir (the cache dir here)");
    let names = dir.names();
    assert_eq!(names.len(), 1, "one entry and nothing else: {names:?}");
    assert!(names[0].len() == 40 && names[0].bytes().all(|b| b.is_ascii_hexdigit()), "{names:?}");
    // The spill file is kept open for a later SPEAK, emptied: the audio
    // it held is gone. (The pool is the process's: another test's engine,
    // closing, may have closed it already, so "at most one".)
    let kept = open_unlinked_files_in(&dir.0);
    assert!(kept.len() <= 1 && kept.iter().all(|(_, len)| *len == 0), "at most one kept spill file, empty: {kept:?}");

    let second = speak_ok(&ch, Request::speak(text));
    assert_eq!(rig.upstream.request_count(), 1, "the repeat is a cache hit");
    assert_eq!(wait_for_log(&rig.server, "source=cache", 1), 1);
    assert_same_audio(&second, &first, "the hit sounds exactly the same");
    assert_eq!(dir.names(), names);
    assert_clean(&rig.server);
    drop(ch);
    drop(rig);
    assert_eq!(open_unlinked_files_in(&dir.0), [], "the kept spill file is closed with the engine");
}

/// With nowhere to spill (`spill_dir` names a directory that does not
/// exist), each SPEAK says so once and plays exactly as it did before the
/// spill existed: the transfer is held back by backpressure.
#[test]
fn without_a_usable_spill_dir_backpressure_holds_the_transfer_and_nothing_is_lost() {
    let _serial = serial();
    let nowhere = format!("/nonexistent-elevenlabs-spill-{}", std::process::id());
    let rig = rig(&[("max_buffer_ms", "200"), ("spill_dir", &nowhere)]);
    rig.upstream.set_default(Behavior::default().with_audio_ms(4000));
    let ch = rig.server.open_channel(8000).unwrap();
    for text in ["Nowhere to spill this one.", "Nor this one."] {
        let audio = speak_ok(&ch, Request::speak(text));
        assert_same_audio(&audio, &padded(&request_for(&rig.upstream, text).audio_sent, 160), text);
    }
    // The staged path (decoded timestamps, scaled samples) under
    // backpressure: paused and resumed without a byte lost or repeated.
    let text = "This one carries a mark and a gain, so its audio is decoded and scaled before it is buffered.";
    let at = text.find("so its").unwrap();
    let doc = format!(
        r#"<speak><prosody volume="x-soft">{}<mark name="middle"/>{}</prosody></speak>"#,
        &text[..at],
        &text[at..]
    );
    let before = ch.audio_len();
    let id = ch.send(Request::speak_ssml(&doc));
    let done = ch.wait_complete(id, WAIT).expect("SPEAK-COMPLETE");
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    assert_eq!(markers(&ch, id).iter().map(marker_name).collect::<Vec<_>>(), ["middle"]);
    let req = request_for(&rig.upstream, text);
    assert!(req.with_timestamps);
    assert_same_audio(&ch.audio()[before..], &padded(&gained(&req.audio_sent, 0.25), 160), "decoded and scaled");

    let logs = rig.server.logs();
    let failures: Vec<_> = logs.iter().filter(|l| l.text.contains("cannot create a spill file")).collect();
    assert_eq!(failures.len(), 3, "once per SPEAK: {failures:#?}");
    assert!(failures.iter().all(|l| l.text.starts_with(&format!("[{}]", ch.id()))), "{failures:#?}");
    assert!(failures[0].text.contains("held back until the buffer has room"), "{}", failures[0].text);
    assert!(failures[0].text.contains(&nowhere), "names the directory: {}", failures[0].text);
    assert_eq!(spill_lines(&rig), 0);
    assert_clean(&rig.server);
}

/// `wakeups=` of the SPEAK summary lines logged so far.
fn summary_wakeups(rig: &Rig) -> Vec<u64> {
    rig.server
        .logs()
        .iter()
        .filter(|l| l.text.contains(" done: "))
        .filter_map(|l| l.text.split(" wakeups=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// A worker moving spilled audio into a full buffer sleeps until
/// `read_frame` finds room for a useful chunk (hysteresis: half the
/// SPEAK's buffer, at most 16 KiB), not on a timer nor for every frame
/// taken: over 600 frames played at 1 ms of wall time each, it wakes about
/// once per chunk. The audio is still exact.
#[test]
fn a_worker_held_back_by_a_full_buffer_wakes_once_per_refill_chunk() {
    let _serial = serial();
    let rig = rig_with_clock(&[("max_buffer_ms", "200")], MediaClock::Manual);
    // The whole response in one write: its transfer takes a few reads.
    rig.upstream.set_default(Behavior::default().with_audio_ms(6000).with_chunk_bytes(0));
    let ch = rig.server.open_channel(8000).unwrap();
    let text = "Count the wake-ups of a long menu.";
    let id = ch.speak(text);
    wait_until("the response", WAIT, || rig.upstream.requests().iter().any(|r| r.completed));
    wait_until("the spill", WAIT, || spill_lines(&rig) == 1);
    let req = request_for(&rig.upstream, text);
    let mut guard = 0;
    while ch.wait_complete(id, Duration::ZERO).is_none() {
        rig.server.tick();
        std::thread::sleep(Duration::from_millis(1));
        guard += 1;
        assert!(guard < 100_000, "SPEAK never completed");
    }
    wait_for_log(&rig.server, " done: ", 1);
    assert_same_audio(&ch.audio(), &padded(&req.audio_sent, 160), "the audio, through the spill");
    // 8 kHz: the buffer holds 18,304 bytes (its minimum), a refill chunk
    // is half of that.
    let spilled = req.audio_sent.len() - 18_304;
    let chunks = spilled.div_ceil(18_304 / 2) as u64;
    let wakeups = summary_wakeups(&rig);
    assert_eq!(wakeups.len(), 1, "one summary line");
    // Besides the chunks: the transfer's reads, the last frame, the odd
    // backstop on a busy machine. A worker polling every 20 ms would wake
    // 30 times more in the 600+ ms the frames took.
    assert!(wakeups[0] <= chunks + 10, "{} wake-ups for {chunks} refill chunks", wakeups[0]);
    assert_clean(&rig.server);
}

/// Audio an earlier part spilled keeps playing while the next part waits
/// for an upstream slot: the worker refills the buffer from the file while
/// it is queued. Channel A's first part (4 s of audio at 8x: spilled, the
/// buffer holds 1 s) ends long before its second part gets the only slot,
/// which B's request (queued behind A's first part, its first byte 2 s
/// late) holds meanwhile. Without refills while queued, A's buffer ran dry
/// a second into its audio and the caller heard over a second of nothing.
#[test]
fn spilled_audio_keeps_playing_while_the_next_part_waits_for_a_slot() {
    let _serial = serial();
    let rig = rig_with_clock(
        &[("max_buffer_ms", "1000"), ("max_request_chars", "20"), ("max_concurrent_requests", "1")],
        MediaClock::RealTime,
    );
    rig.upstream.set_default(Behavior::default().with_speed(8.0).with_audio_ms(4000));
    rig.upstream.when_text_contains("Delta", Behavior::default().with_speed(8.0).with_audio_ms(300));
    rig.upstream.when_text_contains(
        "Blocker",
        Behavior::default().with_speed(8.0).with_audio_ms(200).with_first_byte_delay(Duration::from_secs(2)),
    );
    let a = rig.server.open_channel(8000).unwrap();
    let b = rig.server.open_channel(8000).unwrap();
    let before = a.audio_len();
    let id = a.speak("Alpha beta gamma. Delta epsilon zeta.");
    // B queues behind A's first part, so A's second part queues behind B.
    rig.upstream.wait_for_requests(1, WAIT);
    let blocker = b.speak("Blocker here.");
    let done = expect_in_progress_then_complete(&a, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    expect_in_progress_then_complete(&b, blocker);
    let reqs = rig.upstream.requests();
    let texts: Vec<&str> = reqs.iter().filter_map(|r| r.text.as_deref()).collect();
    assert_eq!(texts, ["Alpha beta gamma.", "Blocker here.", "Delta epsilon zeta."], "the order the slot went in");
    assert_eq!(rig.upstream.max_concurrent(), 1);
    let expected: Vec<u8> = [&reqs[0], &reqs[2]].iter().flat_map(|r| r.audio_sent.iter().copied()).collect();
    assert_same_audio(&a.audio()[before..], &padded(&expected, 160), "both parts, whole");
    // No tick without audio between the SPEAK's first and last audio frame.
    let log = a.frames();
    let sent = a.sent_at(id).expect("sent");
    let ticks: Vec<bool> = log.frames.iter().filter(|f| log.at(f) >= sent).map(|f| f.is_audio()).collect();
    let first = ticks.iter().position(|&audio| audio).expect("audio played");
    let last = ticks.iter().rposition(|&audio| audio).expect("audio played");
    let gaps = ticks[first..=last].iter().filter(|&&audio| !audio).count();
    assert_eq!(gaps, 0, "ticks without audio in the middle of the SPEAK");
    assert_clean(&rig.server);
}
