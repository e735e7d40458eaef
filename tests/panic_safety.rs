//! A panic inside the plugin never reaches the server: each callback in
//! turn is made to panic (test-only `panic-injection` feature, driven by the
//! ELEVENLABS_PANIC_IN variable), and each becomes an error answer or a
//! SPEAK-COMPLETE 004 plus a log line, while the host process lives on and
//! the plugin keeps serving once the fault is gone.
#![cfg(feature = "panic-injection")]

mod common;

use std::time::Duration;

use common::*;
use unimrcp_shim::host::{Kind, MediaClock, PluginLibrary, Server, ServerConfig};

const VAR: &str = "ELEVENLABS_PANIC_IN";

fn inject(callback: &str) {
    std::env::set_var(VAR, callback);
}

fn heal() {
    std::env::remove_var(VAR);
}

fn panic_logged(server: &Server, callback: &str) -> bool {
    server.logs().iter().any(|l| l.text.starts_with(&format!("panic in {callback}")))
}

fn speak_ok(server: &Server, text: &str) {
    let ch = server.open_channel(8000).expect("channel opens after the fault");
    let id = ch.speak(text);
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    ch.close().unwrap();
}

// One test function: the variable is process-wide, so the scenarios run
// one after another.
#[test]
fn every_callback_survives_a_panic() {
    heal();
    let rig = rig_with_clock(&[], MediaClock::Every(Duration::from_millis(2)));

    // process_request: the request still gets its one (failure) response.
    let ch = rig.server.open_channel(8000).unwrap();
    inject("process_request");
    let id = ch.speak("Panic on arrival.");
    let resp = ch.wait_response(id, WAIT).expect("an answer despite the panic");
    heal();
    assert_eq!(resp.kind, Kind::Response);
    assert_eq!(resp.status_code, 407);
    assert_eq!(resp.completion_cause, Some(ERROR));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(for_request(&ch, id).len(), 1);
    assert!(panic_logged(&rig.server, "process_request"));

    // The worker thread: the SPEAK ends with 004, the channel keeps working.
    inject("synthesize");
    let id = ch.speak("Panic in the synthesis thread.");
    let done = expect_in_progress_then_complete(&ch, id);
    heal();
    assert_eq!(done.completion_cause, Some(ERROR));
    assert_eq!(done.completion_reason.as_deref(), Some("internal error in the synthesis thread"));
    let id = ch.speak("Recovered.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));

    // read_frame: silence while it panics, the audio resumes intact after.
    inject("read_frame");
    let id = ch.speak("Media thread trouble.");
    ch.wait_response(id, WAIT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(panic_logged(&rig.server, "read_frame"));
    let before = ch.audio().len();
    heal();
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let req = request_for(&rig.upstream, "Media thread trouble.");
    assert_eq!(&ch.audio()[before..], &padded(&req.audio_sent, 160)[..]);
    let read_frame_lines = rig.server.logs().iter().filter(|l| l.text.starts_with("panic in read_frame")).count();
    assert!(read_frame_lines <= 2, "panic logging is rate-limited, saw {read_frame_lines} lines");
    ch.close().unwrap();

    // Channel lifecycle callbacks: refused or answered, never fatal.
    for callback in ["create_channel", "channel_open", "open_rx"] {
        inject(callback);
        let result = rig.server.open_channel(8000);
        heal();
        assert!(result.is_err(), "{callback}: the channel is refused");
        assert!(panic_logged(&rig.server, callback), "{callback}");
        speak_ok(&rig.server, &format!("After {callback}."));
    }
    for callback in ["channel_close", "close_rx", "channel_destroy"] {
        let ch = rig.server.open_channel(8000).unwrap();
        inject(callback);
        let closed = ch.close();
        heal();
        assert!(closed.is_ok(), "{callback}: close still answered: {closed:?}");
        assert!(panic_logged(&rig.server, callback), "{callback}");
        speak_ok(&rig.server, &format!("After {callback}."));
    }
    drop(rig);

    // Engine open: the engine reports failure instead of crashing.
    let upstream = unimrcp_shim::upstream::MockUpstream::start(API_KEY);
    inject("engine_open");
    let config =
        ServerConfig { params: Some(params(&upstream, &[])), clock: MediaClock::Manual, ..ServerConfig::default() };
    let result = Server::start(&PluginLibrary::default_path().unwrap(), config);
    heal();
    let err = result.err().expect("engine open answered FALSE");
    assert!(err.to_string().contains("panic in engine_open"), "{err}");
    // Engine close: still answered.
    let mut server = start_server(params(&upstream, &[]), MediaClock::Manual);
    inject("engine_close");
    let closed = server.close_engine();
    heal();
    assert!(closed.is_ok(), "{closed:?}");
    assert!(panic_logged(&server, "engine_close"));
}
