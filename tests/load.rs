//! Many channels at once: every SPEAK completes with exact audio, and the
//! threads and file descriptors the plugin used are released. Bounded in
//! count (50 channels) and time.

mod common;

use std::time::Duration;

use common::*;
use unimrcp_shim::host::{open_fd_count, thread_count, Channel, MediaClock};
use unimrcp_shim::upstream::Behavior;

#[test]
fn fifty_channels_speak_at_once_with_exact_audio_and_leave_nothing_behind() {
    let rig = rig_with_clock(&[("max_buffer_ms", "1000")], MediaClock::RealTime);
    // Real-time streaming, 1.5 s each: all 50 overlap for most of the run.
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(1500).with_first_byte_delay(Duration::from_millis(30)));
    let threads_before = thread_count();
    let fds_before = open_fd_count();

    for round in 0..2 {
        let channels: Vec<Channel> =
            (0..50).map(|i| rig.server.open_channel(if i % 2 == 0 { 8000 } else { 16000 }).unwrap()).collect();
        assert_eq!(thread_count(), threads_before + 50, "one worker thread per channel");
        let ids: Vec<u32> =
            channels.iter().enumerate().map(|(i, ch)| ch.speak(&format!("Round {round}, channel {i}."))).collect();
        for (i, (ch, id)) in channels.iter().zip(&ids).enumerate() {
            let done = expect_in_progress_then_complete(ch, *id);
            assert_eq!(done.completion_cause, Some(NORMAL), "channel {i}: {done:#?}");
            let req = request_for(&rig.upstream, &format!("Round {round}, channel {i}."));
            assert_eq!(ch.audio(), padded(&req.audio_sent, frame_bytes(ch.sample_rate())), "channel {i}");
        }
        for ch in channels {
            ch.close().unwrap();
        }
        // Our workers are joined before close answers; the in-process test
        // upstream's connection threads end when they see the sockets close.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while thread_count() != threads_before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(thread_count(), threads_before, "round {round}: threads back to baseline");
        let workers = worker_threads();
        assert_eq!(workers, 0);
        // The upstream's server side may still be closing its sockets.
        assert!(rig.upstream.wait_until_idle(Duration::from_secs(5)));
    }
    assert_eq!(rig.upstream.request_count(), 100);
    // Our fds: one eventfd and at most one connection per channel, all gone.
    let fds_after = open_fd_count();
    assert!(fds_after <= fds_before + 2, "fds before {fds_before}, after {fds_after}");
    // 50 channels gone (twice): the heap's free memory was given back, on
    // a thread of its own, never on the MRCP Server thread (it takes
    // milliseconds there).
    const TRIMMED: &str = "free heap memory returned to the system";
    assert!(wait_for_log(&rig.server, TRIMMED, 2) >= 2, "{}", rig.server.logs_text());
    for line in rig.server.logs_text().lines().filter(|l| l.contains(TRIMMED)) {
        assert!(line.contains("[elevenlabs-trim]"), "{line}");
    }
    assert_clean(&rig.server);
}
