//! The prompt cache: repeats cost nothing upstream, entries are exact,
//! checked, bounded, and never made from a failed or stopped synthesis.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{Channel, Kind, MediaClock, Request};
use unimrcp_shim::upstream::{Behavior, Fault};

/// A private cache dir, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("elevenlabs-cache-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir.join("cache"))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(&self.0).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        v.sort();
        v
    }

    fn entry_names(&self) -> Vec<String> {
        self.entries().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

fn cached_rig(dir: &TempDir, extra: &[(&str, &str)]) -> Rig {
    let mut p = vec![("cache_enabled", "true"), ("cache_dir", dir.path())];
    p.extend_from_slice(extra);
    rig(&p)
}

fn speak_ok(ch: &unimrcp_shim::host::Channel, text: &str) -> Vec<u8> {
    let before = ch.audio_len();
    let id = ch.speak(text);
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    ch.audio()[before..].to_vec()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

#[test]
fn a_repeat_costs_nothing_upstream_and_sounds_the_same() {
    let dir = TempDir::new("repeat");
    let rig = cached_rig(&dir, &[]);
    let a = rig.server.open_channel(8000).unwrap();
    let b = rig.server.open_channel(8000).unwrap();
    let first = speak_ok(&a, "Please hold.");
    assert_eq!(rig.upstream.request_count(), 1);
    let req = request_for(&rig.upstream, "Please hold.");
    assert_eq!(first, padded(&req.audio_sent, 160));
    // The same channel and another one: both from the cache.
    assert_eq!(speak_ok(&a, "Please hold."), first);
    assert_eq!(speak_ok(&b, "Please hold."), first);
    assert_eq!(rig.upstream.request_count(), 1, "repeats made no upstream request");
    assert_eq!(wait_for_log(&rig.server, "source=cache", 2), 2, "summary lines say where the audio came from");
    // Another rate is another entry.
    let wide = rig.server.open_channel(16000).unwrap();
    speak_ok(&wide, "Please hold.");
    assert_eq!(rig.upstream.request_count(), 2);
    // Entries: hex digests only, in a private dir.
    let names = dir.entry_names();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit())), "{names:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir.0).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o700);
    assert_clean(&rig.server);
}

#[test]
fn a_hit_is_ready_at_the_next_media_tick() {
    let dir = TempDir::new("tick");
    let upstream = unimrcp_shim::upstream::MockUpstream::start(API_KEY);
    let mut p = params(&upstream, &[("cache_enabled", "true"), ("cache_dir", dir.path())]);
    p.retain(|(k, _)| k != "cache_enabled");
    p.push(("cache_enabled".into(), "true".into()));
    let server = start_server(p, MediaClock::Manual);
    let ch = server.open_channel(8000).unwrap();
    // Fill the cache (the manual clock plays it).
    let id = ch.speak("Main menu.");
    ch.wait_response(id, WAIT).unwrap();
    let deadline = Instant::now() + WAIT;
    while ch.wait_complete(id, Duration::from_millis(1)).is_none() {
        assert!(Instant::now() < deadline);
        server.tick();
    }
    assert_eq!(upstream.request_count(), 1);
    // The hit: after IN-PROGRESS, the very next tick carries audio.
    let id = ch.speak("Main menu.");
    ch.wait_response(id, WAIT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = ch.frames().frames.len();
    server.tick();
    let frames = ch.frames();
    assert_eq!(frames.frames.len(), before + 1);
    assert!(frames.frames[before].is_audible(), "the first tick after IN-PROGRESS has audio");
    assert_eq!(upstream.request_count(), 1);
}

#[test]
fn failed_stopped_or_cut_synthesis_never_becomes_an_entry() {
    let dir = TempDir::new("failed");
    // One try each and no circuit: this is about what the cache keeps.
    let params = [("stall_timeout_ms", "500"), ("max_retries", "0"), ("circuit_failure_threshold", "0")];
    let rig = cached_rig(&dir, &params);
    rig.upstream.when_text_contains("error", Behavior::fault(Fault::server_error(500)));
    rig.upstream.when_text_contains("cut", Behavior::fault(Fault::CutAfterBytes(4001)).with_audio_ms(3000));
    rig.upstream.when_text_contains("stall", Behavior::fault(Fault::StallAfterFirstChunk).with_audio_ms(3000));
    rig.upstream.when_text_contains("stopped", Behavior::realtime().with_audio_ms(5000));
    let ch = rig.server.open_channel(8000).unwrap();
    for text in ["an error", "a cut", "a stall"] {
        for _ in 0..2 {
            let id = ch.speak(text);
            assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(ERROR));
        }
    }
    let id = ch.speak("stopped midway");
    let sent = ch.sent_at(id).unwrap();
    let deadline = Instant::now() + WAIT;
    while ch.frames().first_audible_after(sent).is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let stop = ch.stop();
    assert_eq!(ch.wait_response(stop, WAIT).unwrap().active_request_ids.as_deref(), Some(&[id][..]));
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.upstream.request_count(), 7, "every failed prompt went upstream again");
    assert_eq!(dir.entry_names(), Vec::<String>::new(), "no entry and no temporary file left");
}

#[test]
fn a_corrupt_entry_is_deleted_and_synthesized_again() {
    let dir = TempDir::new("corrupt");
    let rig = cached_rig(&dir, &[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let first = speak_ok(&ch, "Your call is important to us.");
    let entry = dir.entries().pop().expect("an entry");
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&entry, &bytes).unwrap();
    let again = speak_ok(&ch, "Your call is important to us.");
    assert_eq!(rig.upstream.request_count(), 2, "the corrupt entry was not played");
    assert_eq!(again, first, "the mock is deterministic: same audio again");
    assert!(rig.server.logs_text().contains("is invalid (checksum mismatch): deleted"));
    // Rewritten, valid again.
    speak_ok(&ch, "Your call is important to us.");
    assert_eq!(rig.upstream.request_count(), 2);
    // A truncated entry, likewise.
    let entry = dir.entries().pop().unwrap();
    let len = std::fs::metadata(&entry).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&entry).unwrap().set_len(len - 3).unwrap();
    speak_ok(&ch, "Your call is important to us.");
    assert_eq!(rig.upstream.request_count(), 3);
}

#[test]
fn speaks_of_a_prompt_in_flight_share_one_upstream_request() {
    let dir = TempDir::new("flight");
    let rig = cached_rig(&dir, &[]);
    rig.upstream.set_default(
        Behavior::realtime().with_speed(1.5).with_audio_ms(2000).with_first_byte_delay(Duration::from_millis(300)),
    );
    let channels: Vec<_> = (0..6).map(|_| rig.server.open_channel(16000).unwrap()).collect();
    let ids: Vec<u32> = channels.iter().map(|ch| ch.speak("Calls may be recorded.")).collect();
    for (ch, id) in channels.iter().zip(&ids) {
        assert_eq!(expect_in_progress_then_complete(ch, *id).completion_cause, Some(NORMAL));
    }
    assert_eq!(rig.upstream.request_count(), 1, "one upstream request for six SPEAKs");
    let req = request_for(&rig.upstream, "Calls may be recorded.");
    for ch in &channels {
        assert_eq!(ch.audio(), padded(&req.audio_sent, 320));
    }
    assert_eq!(wait_for_log(&rig.server, "source=shared", 5), 5);
    assert_eq!(wait_for_log(&rig.server, "source=upstream", 1), 1);
    assert_clean(&rig.server);
}

/// A leader and a follower speak `req` (the follower once the leader's
/// request is upstream; real-time upstream, 1500 ms per text); the leader is
/// stopped after `stop_after`. Returns the follower, whose SPEAK completed
/// 000, and checks the stopped leader got no SPEAK-COMPLETE.
fn follower_of_a_stopped_leader(rig: &Rig, req: Request, stop_after: Duration) -> Channel {
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(1500));
    let leader = rig.server.open_channel(8000).unwrap();
    let follower = rig.server.open_channel(8000).unwrap();
    let l = leader.send(req.clone());
    rig.upstream.wait_for_requests(1, WAIT);
    let f = follower.send(req);
    std::thread::sleep(stop_after);
    let stop = leader.stop();
    leader.wait_response(stop, WAIT).unwrap();
    let done = expect_in_progress_then_complete(&follower, f);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    assert_eq!(for_request(&leader, l).len(), 1, "the stopped leader gets no SPEAK-COMPLETE");
    follower
}

#[test]
fn followers_carry_on_when_the_leader_is_stopped() {
    let dir = TempDir::new("leader");
    let rig = cached_rig(&dir, &[]);
    let follower = follower_of_a_stopped_leader(&rig, Request::speak("Shared prompt."), Duration::from_millis(300));
    // The follower never replays what it already heard.
    let reqs = rig.upstream.requests();
    assert_eq!(reqs.len(), 2, "the follower took over with its own request");
    assert_eq!(follower.audio(), padded(&reqs[1].audio_sent, 160), "deterministic upstream: seamless");
}

#[test]
fn least_recently_used_entries_are_evicted_over_the_bound() {
    let dir = TempDir::new("evict");
    let rig = cached_rig(&dir, &[("cache_max_mb", "1")]);
    // 10 s at 16 kHz = 320000 bytes (+48 of header) per entry: three fit
    // in 1 MiB, four do not.
    rig.upstream.set_default(Behavior::default().with_audio_ms(10_000));
    let ch = rig.server.open_channel(16000).unwrap();
    for text in ["One.", "Two.", "Three."] {
        speak_ok(&ch, text);
    }
    speak_ok(&ch, "One."); // a hit: now the most recently used
    assert_eq!(rig.upstream.request_count(), 3);
    std::thread::sleep(Duration::from_millis(1100)); // mtime granularity on some filesystems
    speak_ok(&ch, "Four.");
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir_bytes(&dir.0) > 1024 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dir_bytes(&dir.0) <= 1024 * 1024, "evicted down to the bound: {} bytes", dir_bytes(&dir.0));
    assert_eq!(dir.entry_names().len(), 3);
    let count = rig.upstream.request_count();
    speak_ok(&ch, "One.");
    assert_eq!(rig.upstream.request_count(), count, "the recently used entry survived");
    speak_ok(&ch, "Two.");
    assert_eq!(rig.upstream.request_count(), count + 1, "the least recently used one was evicted");
}

#[test]
fn old_entries_are_not_served_and_cache_control_is_honoured() {
    let dir = TempDir::new("age");
    // The entry must still be young when "max-age=3600" asks for it, three
    // SPEAKs later: 5 s leaves room for a loaded machine (2 s did not).
    let rig = cached_rig(&dir, &[("cache_max_age_s", "5")]);
    let ch = rig.server.open_channel(8000).unwrap();
    speak_ok(&ch, "Aged.");
    speak_ok(&ch, "Aged.");
    assert_eq!(rig.upstream.request_count(), 1);
    let with_cc = |cc: &str| {
        let mut r = Request::speak("Aged.");
        r.cache_control = Some(cc.into());
        let id = ch.send(r);
        assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    };
    with_cc("no-cache");
    assert_eq!(rig.upstream.request_count(), 2, "no-cache bypasses the cache");
    with_cc("max-age=3600");
    assert_eq!(rig.upstream.request_count(), 2, "young enough for max-age");
    std::thread::sleep(Duration::from_millis(1200));
    with_cc("max-age=0");
    assert_eq!(rig.upstream.request_count(), 3, "max-age=0 wants a fresh one");
    std::thread::sleep(Duration::from_millis(5100));
    speak_ok(&ch, "Aged.");
    assert_eq!(rig.upstream.request_count(), 4, "older than cache_max_age_s: synthesized again");
}

#[test]
fn an_unusable_cache_dir_is_logged_once_and_synthesis_goes_on() {
    let dir = TempDir::new("unusable");
    std::fs::create_dir_all(dir.0.parent().unwrap()).unwrap();
    // A regular file where the dir should be.
    std::fs::write(&dir.0, b"not a dir").unwrap();
    let bad = format!("{}/sub", dir.path());
    let rig = rig(&[("cache_enabled", "true"), ("cache_dir", &bad)]);
    let ch = rig.server.open_channel(8000).unwrap();
    speak_ok(&ch, "Still speaking.");
    speak_ok(&ch, "Still speaking.");
    assert_eq!(rig.upstream.request_count(), 2);
    let logs = rig.server.logs_text();
    assert_eq!(logs.matches("is not usable").count(), 1, "{logs}");
}

#[test]
fn warm_up_fills_the_cache_one_request_at_a_time() {
    let dir = TempDir::new("warm");
    std::fs::create_dir_all(dir.0.parent().unwrap()).unwrap();
    let file = dir.0.parent().unwrap().join("prompts.txt");
    std::fs::write(&file, "# IVR prompts\nWelcome to the bank.\nPress one for sales.\n\t\tPress two for support.\n")
        .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let extra = [("cache_warmup_file", file.as_str()), ("cache_warmup_rates", "8000,16000")];
    {
        let rig = cached_rig(&dir, &extra);
        rig.upstream.set_default(Behavior::realtime().with_speed(4.0).with_audio_ms(800));
        let deadline = Instant::now() + WAIT;
        let mut most_at_once = 0;
        while rig.upstream.request_count() < 6 || rig.upstream.active_streams() > 0 {
            assert!(Instant::now() < deadline, "warm-up did not finish");
            most_at_once = most_at_once.max(rig.upstream.active_streams());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(most_at_once, 1, "one upstream request at a time");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(dir.entry_names().len(), 6, "three prompts at two rates");
        let ch = rig.server.open_channel(16000).unwrap();
        speak_ok(&ch, "Press one for sales.");
        assert_eq!(rig.upstream.request_count(), 6, "a warmed prompt is a hit");
        assert!(rig.server.logs_text().contains("cache warm-up done"));
    }
    // A second server on the same dir finds everything cached.
    let rig = cached_rig(&dir, &extra);
    let deadline = Instant::now() + WAIT;
    while !rig.server.logs_text().contains("cache warm-up done") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rig.upstream.request_count(), 0);
    assert!(rig.server.logs_text().contains("0 synthesized, 6 already cached, 0 failed"));
}

const SPEECH_MARKER: usize = 0;

/// An SSML SPEAK that must complete normally with nothing in between:
/// returns the audio it played.
fn speak_ssml_ok(ch: &unimrcp_shim::host::Channel, doc: &str) -> Vec<u8> {
    let before = ch.audio_len();
    let id = ch.send(Request::speak_ssml(doc));
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    ch.audio()[before..].to_vec()
}

#[test]
fn an_ssml_prompt_is_cached_whole_breaks_included() {
    let dir = TempDir::new("ssml-break");
    let rig = cached_rig(&dir, &[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let doc = r#"<speak>Welcome to the bank.<break time="400ms"/>Please hold the line.</speak>"#;
    let first = speak_ssml_ok(&ch, doc);
    assert_eq!(rig.upstream.request_count(), 2, "one request per sentence");
    let a = request_for(&rig.upstream, "Welcome to the bank.");
    let b = request_for(&rig.upstream, "Please hold the line.");
    let mut expected = a.audio_sent.clone();
    expected.extend(vec![0u8; 400 * 8000 / 1000 * 2]);
    expected.extend(&b.audio_sent);
    assert_eq!(first, padded(&expected, 160), "audio, 400 ms of silence, audio");

    let second = speak_ssml_ok(&ch, doc);
    assert_eq!(rig.upstream.request_count(), 2, "the repeat made no upstream request");
    assert_eq!(second.len(), first.len());
    assert!(second == first, "the repeat plays the same bytes, silence included");
    assert_eq!(wait_for_log(&rig.server, "source=cache", 1), 1);
    assert_eq!(dir.entry_names().len(), 1, "one entry for the whole SPEAK");
    assert_clean(&rig.server);
}

#[test]
fn a_prompt_with_a_mark_goes_upstream_every_time() {
    let dir = TempDir::new("ssml-mark");
    let rig = cached_rig(&dir, &[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let text = "Your balance is ten dollars.";
    let doc = r#"<speak>Your balance is <mark name="m"/>ten dollars.</speak>"#;
    for n in 1..=2 {
        let before = ch.audio_len();
        let id = ch.send(Request::speak_ssml(doc));
        let done = ch.wait_complete(id, WAIT).expect("SPEAK-COMPLETE arrives");
        assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
        let msgs = for_request(&ch, id);
        assert_eq!(msgs.len(), 3, "IN-PROGRESS, one SPEECH-MARKER, SPEAK-COMPLETE: {msgs:#?}");
        assert_eq!((msgs[0].kind, msgs[0].status_code, msgs[0].request_state), (Kind::Response, 200, IN_PROGRESS));
        assert_eq!((msgs[1].kind, msgs[1].method_id), (Kind::Event, SPEECH_MARKER), "{:#?}", msgs[1]);
        let marker = msgs[1].speech_marker.as_deref().unwrap_or("");
        assert!(marker.starts_with("timestamp=") && marker.ends_with(";m"), "{marker}");
        assert!(is_speak_complete(&msgs[2]), "{:#?}", msgs[2]);

        assert_eq!(rig.upstream.request_count(), n, "SPEAK {n} went upstream");
        let req = rig.upstream.requests().pop().unwrap();
        assert_eq!(req.text.as_deref(), Some(text));
        assert!(req.with_timestamps, "the mark needs the alignment");
        assert_eq!(ch.audio()[before..], padded(&req.audio_sent, 160)[..]);
    }
    assert_eq!(dir.entry_names(), Vec::<String>::new(), "nothing was cached");
    assert_clean(&rig.server);
}

/// A follower of an SSML prompt (two texts, a pause, a scaled text) whose
/// leader is stopped mid-way takes over without replaying what it heard:
/// the skip runs through texts, silence and scaled audio alike.
#[test]
fn a_follower_takes_over_an_ssml_prompt_seamlessly() {
    let dir = TempDir::new("ssml-leader");
    let rig = cached_rig(&dir, &[]);
    let doc = r#"<speak>Your call matters.<break time="400ms"/><prosody volume="soft">Please hold.</prosody></speak>"#;
    // Stopped in the second text: the shared audio already holds text,
    // pause and some scaled audio.
    let follower = follower_of_a_stopped_leader(&rig, Request::speak_ssml(doc), Duration::from_millis(2200));
    let reqs = rig.upstream.requests();
    let texts: Vec<&str> = reqs.iter().filter_map(|r| r.text.as_deref()).collect();
    assert_eq!(texts, ["Your call matters.", "Please hold.", "Your call matters.", "Please hold."], "{texts:?}");
    let mut expected = reqs[2].audio_sent.clone();
    expected.extend(vec![0u8; 400 * 8000 / 1000 * 2]);
    expected.extend(gained(&reqs[3].audio_sent, 0.5));
    let heard = follower.audio();
    assert_eq!(heard.len(), padded(&expected, 160).len(), "nothing replayed, nothing lost");
    assert!(heard == padded(&expected, 160), "deterministic upstream: the takeover is seamless");
    assert!(dir.entry_names().len() <= 1);
}
