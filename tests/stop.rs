//! STOP, BARGE-IN, PAUSE/RESUME and teardown: answered at once, audio stops
//! at the next frame, the transfer is aborted, and no SPEAK-COMPLETE follows.

mod common;

use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{Channel, Kind, MediaClock, Recorded};
use unimrcp_shim::upstream::Behavior;

/// Sends SPEAK and returns once its first audio frame has been played.
fn speaking(_rig: &Rig, ch: &Channel, text: &str) -> u32 {
    let id = ch.speak(text);
    let deadline = Instant::now() + WAIT;
    while ch.frames().first_audible().is_none() {
        assert!(Instant::now() < deadline, "audio never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    id
}

fn realtime_rig() -> Rig {
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(20_000));
    rig
}

/// `stop` answered 200 COMPLETE listing `speak_id`; no SPEAK-COMPLETE for it
/// afterwards; no audio frame after the response.
fn assert_stopped(ch: &Channel, stop: &Recorded, speak_id: u32) {
    assert_eq!(stop.kind, Kind::Response);
    assert_eq!(stop.status_code, 200);
    assert_eq!(stop.request_state, COMPLETE);
    assert_eq!(stop.active_request_ids.as_deref(), Some(&[speak_id][..]), "{stop:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let msgs = for_request(ch, speak_id);
    assert_eq!(msgs.len(), 1, "only IN-PROGRESS for the stopped SPEAK: {msgs:#?}");
    let frames = ch.frames();
    assert_eq!(frames.audio_frames_after(stop.at), 0, "audio after the STOP response");
}

#[test]
fn stop_mid_stream() {
    let rig = realtime_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let speak = speaking(&rig, &ch, "A long announcement.");
    assert_eq!(rig.upstream.active_streams(), 1, "the transfer is still running");
    let before = Instant::now();
    let stop_id = ch.stop();
    let stop = ch.wait_response(stop_id, WAIT).unwrap();
    assert!(stop.at.duration_since(before) < Duration::from_millis(100), "answered at once");
    assert_eq!(stop.thread, "MRCP Server", "answered synchronously, not after the network");
    assert_stopped(&ch, &stop, speak);
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(2)), "transfer aborted");
    // The audio played before STOP is an exact prefix of what was sent.
    let req = request_for(&rig.upstream, "A long announcement.");
    let audio = ch.audio();
    assert!(!audio.is_empty() && audio.len() <= req.audio_sent.len());
    assert_eq!(&req.audio_sent[..audio.len()], &audio[..]);
    // One summary line for the stopped SPEAK too.
    let deadline = Instant::now() + Duration::from_secs(2);
    let summary = format!("SPEAK {speak} done:");
    while !rig.server.logs_text().contains(&summary) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let logs = rig.server.logs();
    let lines: Vec<_> = logs.iter().filter(|l| l.text.contains(&summary)).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].text.ends_with("cause=stopped"), "{}", lines[0].text);
    assert_clean(&rig.server);
}

#[test]
fn barge_in_is_like_stop() {
    let rig = realtime_rig();
    let ch = rig.server.open_channel(16000).unwrap();
    let speak = speaking(&rig, &ch, "Barge into this.");
    assert_eq!(rig.upstream.active_streams(), 1, "the transfer is still running");
    let id = ch.barge_in();
    let resp = ch.wait_response(id, WAIT).unwrap();
    assert_stopped(&ch, &resp, speak);
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(2)));
}

#[test]
fn stop_before_the_first_byte() {
    let rig = rig(&[]);
    rig.upstream.set_default(Behavior::default().with_first_byte_delay(Duration::from_secs(3)));
    let ch = rig.server.open_channel(8000).unwrap();
    let speak = ch.speak("Not yet.");
    rig.upstream.wait_for_requests(1, WAIT);
    let stop_id = ch.stop();
    let stop = ch.wait_response(stop_id, WAIT).unwrap();
    assert_stopped(&ch, &stop, speak);
    assert!(ch.audio().is_empty());
}

#[test]
fn stop_twice_and_stop_when_idle() {
    let rig = realtime_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let speak = speaking(&rig, &ch, "Stop me twice.");
    let first = ch.stop();
    let second = ch.stop();
    let first = ch.wait_response(first, WAIT).unwrap();
    let second = ch.wait_response(second, WAIT).unwrap();
    assert_stopped(&ch, &first, speak);
    assert_eq!(second.status_code, 200);
    assert_eq!(second.active_request_ids, None, "nothing left to stop");
}

#[test]
fn new_speak_after_stop_plays_only_its_own_audio() {
    let rig = realtime_rig();
    rig.upstream.when_text_contains("Second", Behavior::default().with_audio_ms(700));
    let ch = rig.server.open_channel(8000).unwrap();
    let first = speaking(&rig, &ch, "First, long.");
    let stop = ch.stop();
    let stop = ch.wait_response(stop, WAIT).unwrap();
    let before_second = ch.audio().len();
    let second = ch.speak("Second, short.");
    let done = expect_in_progress_then_complete(&ch, second);
    assert_eq!(done.completion_cause, Some(NORMAL));
    assert_eq!(for_request(&ch, first).len(), 1, "the stopped SPEAK never completes");
    assert_eq!(stop.active_request_ids.as_deref(), Some(&[first][..]));
    let req = request_for(&rig.upstream, "Second, short.");
    assert_eq!(
        &ch.audio()[before_second..],
        &padded(&req.audio_sent, 160)[..],
        "no old audio leaks into the new SPEAK"
    );
}

#[test]
fn pause_holds_and_resume_continues_at_the_next_sample() {
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::default().with_audio_ms(1500));
    let ch = rig.server.open_channel(8000).unwrap();
    let speak = speaking(&rig, &ch, "Pause in the middle.");
    let p = ch.pause();
    let paused = ch.wait_response(p, WAIT).unwrap();
    assert_eq!(paused.status_code, 200);
    assert_eq!(paused.active_request_ids.as_deref(), Some(&[speak][..]));
    std::thread::sleep(Duration::from_millis(400));
    let frames = ch.frames();
    // At most the tick racing the PAUSE response, nothing after.
    assert!(frames.audio_frames_after(paused.at + Duration::from_millis(15)) == 0, "silence while paused");
    let r = ch.resume();
    assert_eq!(ch.wait_response(r, WAIT).unwrap().status_code, 200);
    let done = expect_in_progress_then_complete(&ch, speak);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let req = request_for(&rig.upstream, "Pause in the middle.");
    assert_eq!(ch.audio(), padded(&req.audio_sent, 160), "every sample once, in order");
}

#[test]
fn session_teardown_deactivate_then_close() {
    let rig = realtime_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let speak = speaking(&rig, &ch, "Caller hangs up.");
    let id = ch.deactivate();
    let resp = ch.wait_response(id, WAIT).unwrap();
    assert_eq!(resp.method_name, "DEACTIVATE");
    assert_stopped(&ch, &resp, speak);
    let started = Instant::now();
    ch.close().expect("close answered");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(2)));
    assert_clean(&rig.server);
}

#[test]
fn channel_close_mid_stream_ends_the_speak_once() {
    let rig = realtime_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let speak = speaking(&rig, &ch, "Closed under me.");
    let probe = ch.clone();
    let started = Instant::now();
    ch.close().expect("close answered");
    assert!(started.elapsed() < Duration::from_secs(2), "close is not held up by the transfer");
    let msgs = for_request(&probe, speak);
    assert_eq!(msgs.len(), 2, "IN-PROGRESS and one SPEAK-COMPLETE: {msgs:#?}");
    assert_eq!(msgs[1].completion_cause, Some(ERROR));
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(2)));
    assert_clean(&rig.server);
}

#[test]
fn engine_close_with_channels_speaking() {
    let mut rig = realtime_rig();
    let channels: Vec<Channel> = (0..8).map(|_| rig.server.open_channel(8000).unwrap()).collect();
    let speaks: Vec<u32> =
        channels.iter().enumerate().map(|(i, ch)| speaking(&rig, ch, &format!("Engine close {i}."))).collect();
    assert_eq!(rig.upstream.active_streams(), 8, "all transfers still running");
    let started = Instant::now();
    rig.server.close_engine().expect("engine close answered");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    for (ch, id) in channels.iter().zip(&speaks) {
        let msgs = for_request(ch, *id);
        assert_eq!(msgs.len(), 2, "one terminal message per SPEAK: {msgs:#?}");
        assert!(is_speak_complete(&msgs[1]));
        assert_eq!(msgs[1].completion_cause, Some(ERROR));
        assert_eq!(msgs[1].completion_reason.as_deref(), Some("engine closing"));
    }
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(2)));
    let worker_threads = worker_threads_after_join();
    assert_eq!(worker_threads, 0, "every channel thread joined before the engine answered close");
    rig.server.stop().unwrap();
    assert_clean(&rig.server);
}
