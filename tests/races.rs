//! Races that must still end every SPEAK in exactly one terminal message:
//! STOP against the last frame, STOP against an upstream error, close in
//! every state, engine close with 100 channels speaking.

mod common;

use std::time::{Duration, Instant};

use common::invariants;
use common::*;
use unimrcp_shim::host::{Channel, Kind, MediaClock, Recorded};
use unimrcp_shim::upstream::{Behavior, Fault};

/// After a SPEAK and a STOP raced: either the STOP stopped it (its response
/// lists the SPEAK, no SPEAK-COMPLETE exists and no audio follows) or the
/// SPEAK completed first (one SPEAK-COMPLETE, sent before the STOP response,
/// which lists nothing). Returns true when the STOP won.
fn one_terminal(ch: &Channel, speak: u32, stop: &Recorded) -> bool {
    let msgs = for_request(ch, speak);
    assert_eq!(msgs.iter().filter(|m| m.kind == Kind::Response).count(), 1, "{msgs:#?}");
    match invariants::one_terminal_after_stop(&msgs, speak, stop).unwrap_or_else(|e| panic!("{e}")) {
        None => {
            invariants::no_audio_after_stop(ch, stop).unwrap_or_else(|e| panic!("{e}"));
            true
        }
        Some(complete) => {
            assert!(complete.at <= stop.at, "SPEAK-COMPLETE came before the empty STOP response");
            false
        }
    }
}

#[test]
fn stop_as_the_last_frame_is_read() {
    // Manual clock: tick to just before the end, then STOP while another
    // thread takes the last frames.
    let rig = rig_with_clock(&[], MediaClock::Manual);
    rig.upstream.set_default(Behavior::default().with_audio_ms(200));
    let ch = rig.server.open_channel(8000).unwrap();
    let (mut stop_won, mut speak_won) = (0, 0);
    for round in 0..40 {
        let text = format!("Race round {round}.");
        let id = ch.speak(&text);
        ch.wait_response(id, WAIT).unwrap();
        // Wait until the whole response is buffered, then play all but the
        // last `round % 4` frames.
        let req = loop {
            let r = rig.upstream.requests().into_iter().find(|r| r.text.as_deref() == Some(&text));
            if let Some(r) = r.filter(|r| r.completed) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        std::thread::sleep(Duration::from_millis(5));
        let frames = req.audio_sent.len().div_ceil(160);
        rig.server.tick_n(frames - (round % 4));
        let server = &rig.server;
        let stop_id = std::thread::scope(|s| {
            let ticker = s.spawn(|| server.tick_n(2));
            let stop_id = ch.stop();
            ticker.join().unwrap();
            stop_id
        });
        let stop = ch.wait_response(stop_id, WAIT).unwrap();
        rig.server.tick_n(3);
        std::thread::sleep(Duration::from_millis(20));
        if one_terminal(&ch, id, &stop) {
            stop_won += 1;
        } else {
            speak_won += 1;
        }
    }
    eprintln!("STOP won {stop_won}, SPEAK-COMPLETE won {speak_won}");
    assert_clean(&rig.server);
}

#[test]
fn stop_at_the_moment_of_an_upstream_error() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    for round in 0..30u64 {
        let delay = Duration::from_millis(20 + round % 5);
        rig.upstream.clear_rules();
        rig.upstream.set_default(Behavior::fault(Fault::server_error(500)).with_first_byte_delay(delay));
        let id = ch.speak(&format!("Error race {round}."));
        let sent = Instant::now();
        ch.wait_response(id, WAIT).unwrap();
        let target = delay + Duration::from_micros(round * 300 % 4000);
        if let Some(rest) = target.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
        let stop_id = ch.stop();
        let stop = ch.wait_response(stop_id, WAIT).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let msgs = for_request(&ch, id);
        let complete =
            invariants::one_terminal_after_stop(&msgs, id, &stop).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if let Some(complete) = complete {
            assert_eq!(complete.completion_cause, Some(ERROR));
        }
    }
    assert_clean(&rig.server);
}

/// Brings a channel into the state to close it in.
type Prepare = fn(&Channel, u32);

#[test]
fn close_in_every_state() {
    let rig = rig_with_clock(&[("first_byte_timeout_ms", "3000")], MediaClock::RealTime);
    rig.upstream.when_text_contains("waiting", Behavior::default().with_first_byte_delay(Duration::from_secs(2)));
    rig.upstream.when_text_contains("streaming", Behavior::realtime().with_audio_ms(5000));
    rig.upstream.when_text_contains("buffered", Behavior::default().with_audio_ms(5000));
    let cases: [(&str, Prepare); 6] = [
        ("idle, never spoke", |_, _| {}),
        ("after a completed SPEAK", |ch, id| {
            ch.wait_complete(id, WAIT).unwrap();
        }),
        ("waiting for the first byte", |_, _| std::thread::sleep(Duration::from_millis(100))),
        ("streaming", |_, _| std::thread::sleep(Duration::from_millis(300))),
        ("download done, still playing", |_, _| std::thread::sleep(Duration::from_millis(300))),
        ("paused", |ch, _| {
            let p = ch.pause();
            ch.wait_response(p, WAIT).unwrap();
        }),
    ];
    let texts = ["", "short one", "waiting", "streaming", "buffered", "buffered"];
    for ((state, prepare), text) in cases.iter().zip(texts) {
        let ch = rig.server.open_channel(8000).unwrap();
        let probe = ch.clone();
        let id = if text.is_empty() { 0 } else { ch.speak(text) };
        if id != 0 {
            ch.wait_response(id, WAIT).unwrap();
        }
        prepare(&ch, id);
        let started = Instant::now();
        ch.close().unwrap_or_else(|e| panic!("{state}: close not answered: {e}"));
        assert!(started.elapsed() < Duration::from_secs(2), "{state}: close took {:?}", started.elapsed());
        if id != 0 {
            invariants::exactly_one_complete(&probe, id).unwrap_or_else(|e| panic!("{state}: {e}"));
        }
    }
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(3)), "every transfer closed");
    assert_clean(&rig.server);
}

#[test]
fn engine_close_with_a_hundred_channels_speaking() {
    let mut rig = rig_with_clock(&[("max_buffer_ms", "500")], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(10_000));
    let channels: Vec<Channel> = (0..100).map(|_| rig.server.open_channel(8000).unwrap()).collect();
    let ids: Vec<u32> =
        channels.iter().enumerate().map(|(i, ch)| ch.speak(&format!("Channel {i} speaking."))).collect();
    let deadline = Instant::now() + WAIT;
    while rig.upstream.active_streams() < 100 {
        assert!(Instant::now() < deadline, "not all transfers started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    rig.server.close_engine().expect("engine close answered");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "engine close took {took:?}");
    for (ch, id) in channels.iter().zip(&ids) {
        invariants::exactly_one_complete(ch, *id).unwrap_or_else(|e| panic!("{e}"));
    }
    let workers = worker_threads_after_join();
    assert_eq!(workers, 0, "all channel threads joined");
    eprintln!("engine close with 100 channels speaking answered in {took:?}");
    rig.server.stop().unwrap();
    assert_clean(&rig.server);
}

/// STOP, a new SPEAK and the channel's close, sent back to back while a
/// SPEAK streams: the worker can find all three queued at its next look
/// (the new SPEAK is held back behind the stopped one's end, the close is
/// seen at once). The new SPEAK, answered IN-PROGRESS, must still get its
/// SPEAK-COMPLETE before the close is answered. Repeated, as whether the
/// worker wakes in between is up to the scheduler.
#[test]
fn stop_speak_and_close_queued_together_end_every_speak() {
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(5000));
    let mut accepted = 0;
    for round in 0..20 {
        let ch = rig.server.open_channel(8000).unwrap();
        let probe = ch.clone();
        let first = ch.speak(&format!("Round {round} streams for a while."));
        ch.wait_response(first, WAIT).unwrap();
        assert!(
            rig.upstream.wait_for_requests(round + 1, WAIT).len() > round,
            "round {round}: the first SPEAK streams"
        );
        let stop = ch.stop();
        let second = ch.speak(&format!("Round {round} comes too late."));
        ch.close().unwrap_or_else(|e| panic!("round {round}: close not answered: {e}"));
        let stopped = probe.wait_response(stop, WAIT).expect("STOP answered");
        let msgs = for_request(&probe, first);
        invariants::one_terminal_after_stop(&msgs, first, &stopped)
            .unwrap_or_else(|e| panic!("round {round}, the stopped SPEAK: {e}"));
        let answer = probe.wait_response(second, WAIT).expect("the second SPEAK answered");
        if answer.status_code == 200 {
            accepted += 1;
            invariants::exactly_one_complete(&probe, second)
                .unwrap_or_else(|e| panic!("round {round}, the SPEAK queued behind the STOP: {e}"));
        }
    }
    // A SPEAK sent after a STOP is accepted (the STOP ended the first).
    assert_eq!(accepted, 20, "every second SPEAK went IN-PROGRESS");
    assert_clean(&rig.server);
}
