//! Tests of the host itself, against a tiny C plugin (tests/fixtures/
//! fake_synth.c) compiled here with the system C compiler, so they do not
//! depend on the real plugin being finished.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use unimrcp_shim::host::{
    thread_count, Channel, FrameEntry, HostError, Kind, LifecycleKind, MediaClock, PluginLibrary, Server, ServerConfig,
    EXPORTED_SYMBOLS, FRAME_AUDIO, FRAME_UNWRITTEN,
};
use unimrcp_shim::sys;

const WAIT: Duration = Duration::from_secs(5);

/// Builds the fake plugin once per test run.
fn fake_plugin() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake_synth.so");
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg("-I")
            .arg(root.join("include"))
            .arg(root.join("tests/fixtures/fake_synth.c"))
            .arg("-lpthread")
            .status()
            .expect("running the C compiler");
        assert!(status.success(), "compiling the fake plugin failed");
        out
    })
    .clone()
}

fn manual(params: &[(&str, &str)]) -> ServerConfig {
    ServerConfig {
        clock: MediaClock::Manual,
        log_sources: vec!["FAKE-SYNTH".into()],
        ..ServerConfig::with_params(params)
    }
}

#[test]
fn every_export_is_in_the_dynamic_symbol_table() {
    unimrcp_shim::anchor();
    let exe = std::env::current_exe().unwrap();
    let defined = PluginLibrary::dynamic_symbols(&exe).expect("nm");
    for name in EXPORTED_SYMBOLS {
        assert!(defined.iter().any(|d| d == name), "{name} is not exported by {}", exe.display());
    }
    // And the fake plugin needs nothing else from the server.
    let undefined = PluginLibrary::undefined_symbols(&fake_plugin()).expect("nm");
    for name in undefined
        .iter()
        .filter(|n| n.starts_with("apr_") || n.starts_with("apt_") || n.starts_with("mrcp_") || n.starts_with("mpf_"))
    {
        assert!(EXPORTED_SYMBOLS.contains(&name.as_str()), "plugin needs {name}, which the host does not export");
    }
}

#[test]
fn speak_with_manual_clock() {
    let server = Server::start(&fake_plugin(), manual(&[("api_key", "k")])).expect("start");
    assert_eq!(server.engine_open_count(), 1);
    assert_eq!(server.logger_hooks_called(), (true, true));
    let ch = server.open_channel(8000).expect("open");
    assert!(ch.id().ends_with("@speechsynth") && ch.id().len() == 16 + 12, "{}", ch.id());
    assert!(matches!(ch.lifecycle()[0].what, LifecycleKind::OpenResponded(true)));
    assert_eq!(ch.lifecycle()[0].thread, "MRCP Server");

    let id = ch.speak("hello");
    let resp = ch.wait_response(id, WAIT).expect("response");
    assert_eq!((resp.status_code, resp.request_state), (200, sys::MRCP_REQUEST_STATE_INPROGRESS));
    assert_eq!(resp.thread, "MRCP Server");
    assert_eq!(resp.method_name, "SPEAK");

    server.tick_n(3);
    assert!(ch.wait_complete(id, Duration::from_millis(50)).is_none());
    server.tick_n(4);
    let done = ch.wait_complete(id, WAIT).expect("SPEAK-COMPLETE");
    assert_eq!(done.thread, "MPF Scheduler");
    assert_eq!(done.completion_cause, Some(0));
    assert_eq!(done.header("Completion-Cause"), Some("000 normal"));
    assert_eq!(done.request_state, sys::MRCP_REQUEST_STATE_COMPLETE);

    // 5 characters → 5 frames of 160 bytes, a ramp starting at 1.
    let audio = ch.audio();
    assert_eq!(audio.len(), 5 * 160);
    assert_eq!(i16::from_le_bytes([audio[0], audio[1]]), 1);
    assert_eq!(i16::from_le_bytes([audio[798], audio[799]]), 400);
    let frames = ch.frames();
    assert_eq!(frames.frames.len(), 7);
    assert_eq!(frames.audio_frames(), 5);
    assert_eq!(frames.count_flagged(FRAME_UNWRITTEN), 0);
    assert_eq!(frames.first_audible().unwrap().tick, frames.frames[0].tick);
    assert!(frames.frames[5].flags & FRAME_AUDIO == 0);
    assert_eq!(server.read_frame_nanos().len(), 7);

    let stop = ch.stop();
    let r = ch.wait_response(stop, WAIT).unwrap();
    assert_eq!(r.active_request_ids, None, "nothing was speaking");

    let logs = server.logs();
    assert!(logs
        .iter()
        .any(|l| l.text == "engine open api_key=k" && l.source == "FAKE-SYNTH" && l.thread == "MRCP Server"));
    assert!(logs.iter().any(|l| l.text == "fake synth created" && l.source == "FAKE-SYNTH"));
    ch.close().expect("close");
    assert!(server.logs().iter().any(|l| l.text == "close_rx" && l.thread == "MPF Scheduler"));
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    let mut server = server;
    server.stop().expect("clean shutdown");
    assert!(server.logs().iter().any(|l| l.text == "engine destroy"));
    assert_eq!(server.engine_close_count(), 1);
}

#[test]
fn stop_reports_the_active_speak_and_pause_holds_audio() {
    let server = Server::start(&fake_plugin(), manual(&[])).expect("start");
    let ch = server.open_channel(16000).expect("open");
    let id = ch.speak("a long sentence");
    ch.wait_response(id, WAIT).unwrap();
    server.tick_n(2);
    let p = ch.pause();
    ch.wait_response(p, WAIT).unwrap();
    server.tick_n(5);
    assert_eq!(ch.audio_len(), 2 * 320, "no audio while paused");
    let s = ch.stop();
    let r = ch.wait_response(s, WAIT).unwrap();
    assert_eq!(r.active_request_ids, Some(vec![id]));
    assert_eq!(r.header("Active-Request-Id-List"), Some("1"));
    server.tick_n(3);
    assert!(ch.messages().iter().all(|m| m.kind == Kind::Response), "no SPEAK-COMPLETE after STOP");
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    // Channels left open are closed by shutdown.
    server.shutdown().expect("shutdown");
    assert!(!ch.is_open());
}

#[test]
fn logs_use_the_default_source_when_not_configured() {
    let config = ServerConfig { clock: MediaClock::Manual, ..ServerConfig::default() };
    let server = Server::start(&fake_plugin(), config).expect("start");
    let line = server.logs().into_iter().find(|l| l.text.starts_with("engine open")).unwrap();
    assert_eq!(line.source, "default");
    assert_eq!(line.text, "engine open api_key=(null)", "params are NULL without <param>s");
}

/// The clock's schedule for `frames` (one channel's, consecutive ticks):
/// no tick starts before its deadline, and deadlines are `period` apart on
/// an absolute grid, except right after a tick that started more than 500 ms
/// late, when the clock starts afresh (a later grid, never an earlier one).
/// Deadlines are what the clock decides; how late a tick then starts is up
/// to the OS scheduler, so wall-clock spans are not asserted (under load a
/// late tick's catch-up burst, or a stall, shifts them either way).
fn assert_paced(frames: &[FrameEntry], period: Duration) {
    let p = period.as_nanos() as u64;
    for f in frames {
        assert!(f.at_nanos >= f.due_nanos, "tick {} started {} ns before it was due", f.tick, f.due_nanos - f.at_nanos);
    }
    let mut on_grid = 0;
    for w in frames.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert_eq!(b.tick, a.tick + 1, "one frame per tick");
        let spacing = b.due_nanos - a.due_nanos;
        if a.at_nanos - a.due_nanos <= p + 500_000_000 {
            assert_eq!(spacing, p, "tick {} is due {spacing} ns after tick {}", b.tick, a.tick);
            on_grid += 1;
        } else {
            assert!(spacing > p, "after a stall the clock starts afresh, later: {spacing} ns");
        }
    }
    assert!(on_grid > 0, "no two ticks on the grid");
}

#[test]
fn real_time_clock_paces_at_10_ms() {
    let server = Server::start(&fake_plugin(), ServerConfig { clock: MediaClock::RealTime, ..manual(&[]) }).unwrap();
    let ch = server.open_channel(8000).unwrap();
    let text = "x".repeat(30);
    let id = ch.speak(&text);
    ch.wait_complete(id, WAIT).expect("complete");
    assert_eq!(ch.audio_len(), 30 * 160);
    let frames = ch.frames();
    assert_paced(&frames.frames, Duration::from_millis(10));
    // The 30 audio frames are due 290 ms apart at least (none starts early).
    let audio: Vec<_> = frames.frames.iter().filter(|f| f.is_audio()).collect();
    assert_eq!(audio.len(), 30);
    assert!(audio[29].due_nanos - audio[0].due_nanos >= 290_000_000);
}

#[test]
fn fast_clock_runs_faster_than_real_time() {
    let config = ServerConfig { clock: MediaClock::Every(Duration::from_millis(1)), ..manual(&[]) };
    let server = Server::start(&fake_plugin(), config).unwrap();
    let ch = server.open_channel(8000).unwrap();
    let id = ch.speak(&"y".repeat(200));
    ch.wait_complete(id, WAIT).expect("complete");
    // 200 frames (2 s of audio) on a 1 ms grid: 10x faster than real time.
    assert_paced(&ch.frames().frames, Duration::from_millis(1));
}

#[test]
fn refusals_are_errors() {
    // Engine answers FALSE.
    match Server::start(&fake_plugin(), manual(&[("open", "fail")])) {
        Err(HostError::Refused(m)) => assert!(m.contains("FALSE") && m.contains("engine open"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // Capabilities without the rate.
    let server = Server::start(&fake_plugin(), manual(&[("rates", "1")])).unwrap();
    assert!(matches!(server.open_channel(16000), Err(HostError::Refused(_))));
    assert!(server.open_channel(8000).is_ok());
    drop(server);
    // A source stream without read_frame is refused at termination creation.
    let server = Server::start(&fake_plugin(), manual(&[("no_read_frame", "1")])).unwrap();
    assert!(matches!(server.open_channel(8000), Err(HostError::Refused(_))));
    assert!(server.violations().iter().any(|v| v.contains("read_frame")));
}

#[test]
fn max_channel_count_is_enforced_before_create_channel() {
    let config = ServerConfig { max_channel_count: 2, ..manual(&[]) };
    let server = Server::start(&fake_plugin(), config).unwrap();
    let a = server.open_channel(8000).unwrap();
    let b = server.open_channel(8000).unwrap();
    assert_ne!(a.id(), b.id());
    assert!(matches!(server.open_channel(8000), Err(HostError::Refused(m)) if m.contains("max-channel-count")));
    a.close().unwrap();
    let c: Channel = server.open_channel(16000).unwrap();
    assert_eq!(c.sample_rate(), 16000);
    assert_eq!(server.open_channel_count(), 2);
}

#[test]
fn engine_that_never_answers_does_not_hang_the_host() {
    let t0 = Instant::now();
    match Server::start(&fake_plugin(), manual(&[("open", "never")])) {
        Err(HostError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
    }
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(thread_count() > 0);
}

#[test]
fn handles_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Server>();
    send_sync::<Channel>();
}

#[test]
fn default_path_names_the_plugin_file() {
    match PluginLibrary::default_path() {
        Ok(p) => assert!(p.ends_with(unimrcp_shim::host::PLUGIN_FILE_NAME)),
        Err(HostError::Load(m)) => assert!(m.contains(unimrcp_shim::host::PLUGIN_FILE_NAME), "{m}"),
        Err(e) => panic!("{e}"),
    }
    assert!(
        matches!(PluginLibrary::load(std::path::Path::new("/nonexistent/x.so")), Err(HostError::Load(m)) if m.contains("dlopen"))
    );
}
