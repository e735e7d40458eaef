//! SPEAK end to end: what reaches the upstream, what reaches the media
//! path, and the MRCP messages, through the built .so in the test host.

mod common;

use std::time::Duration;

use common::*;
use unimrcp_shim::host::{MediaClock, Request};
use unimrcp_shim::upstream::Behavior;

fn speak_exact(rate: u32) {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(rate).expect("channel opens");
    let text = format!("Exact audio at {rate} hertz, byte for byte.");
    let id = ch.speak(&text);
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");

    let req = request_for(&rig.upstream, &text);
    assert!(req.completed, "upstream finished the response");
    assert_eq!(req.sample_rate, Some(rate));
    assert_eq!(req.output_format.as_deref(), Some(format!("pcm_{rate}").as_str()));
    assert!(req.audio_sent.len() > 10_000);
    // Default chunks are 1601 bytes: every chunk boundary splits a sample.
    assert_eq!(ch.audio(), padded(&req.audio_sent, frame_bytes(rate)));
    // No frame claimed audio without writing it.
    assert_eq!(ch.frames().count_flagged(unimrcp_shim::host::FRAME_UNWRITTEN), 0);
    assert_clean(&rig.server);
}

#[test]
fn audio_is_exact_at_8khz() {
    speak_exact(8000);
}

#[test]
fn audio_is_exact_at_16khz() {
    speak_exact(16000);
}

#[test]
fn audio_is_exact_at_32khz() {
    speak_exact(32000);
}

#[test]
fn audio_is_exact_at_48khz() {
    speak_exact(48000);
}

#[test]
fn request_carries_key_text_model_and_settings() {
    let rig = rig(&[
        ("model_id", "eleven_turbo_v2_5"),
        ("stability", "0.3"),
        ("similarity_boost", "0.8"),
        ("style", "0.1"),
        ("speed", "1.1"),
        ("use_speaker_boost", "true"),
        ("language_code", "de"),
    ]);
    let ch = rig.server.open_channel(8000).unwrap();
    let text = "Guten Tag, \"quoted\" and\nnew line.";
    let id = ch.speak(text);
    expect_in_progress_then_complete(&ch, id);
    let req = request_for(&rig.upstream, text);
    assert_eq!(req.method, "POST");
    assert_eq!(req.voice_id, VOICE);
    assert_eq!(req.header("xi-api-key"), Some(API_KEY));
    assert!(req.header("content-type").unwrap().starts_with("application/json"));
    let json = req.json.expect("JSON body");
    assert_eq!(json["text"], text);
    assert_eq!(json["model_id"], "eleven_turbo_v2_5");
    assert_eq!(json["language_code"], "de");
    let vs = &json["voice_settings"];
    assert_eq!(vs["stability"], 0.3);
    assert_eq!(vs["similarity_boost"], 0.8);
    assert_eq!(vs["style"], 0.1);
    assert_eq!(vs["speed"], 1.1);
    assert_eq!(vs["use_speaker_boost"], true);
}

#[test]
fn defaults_send_model_and_no_voice_settings() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(16000).unwrap();
    let id = ch.speak("Defaults.");
    expect_in_progress_then_complete(&ch, id);
    let json = request_for(&rig.upstream, "Defaults.").json.unwrap();
    assert_eq!(json["model_id"], "eleven_flash_v2_5");
    assert!(json.get("voice_settings").is_none());
    assert!(json.get("language_code").is_none());
}

#[test]
fn ssml_bodies_are_spoken_as_their_text() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let ssml = r#"<?xml version="1.0"?><speak version="1.0" xml:lang="en-US"><p>Welcome &amp; hello <sub alias="World Wide Web">WWW</sub>.</p></speak>"#;
    for ct in ["application/ssml+xml", "application/synthesis+ssml"] {
        let mut req = Request::speak(ssml);
        req.content_type = Some(ct.into());
        let id = ch.send(req);
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(NORMAL));
    }
    let texts: Vec<String> = rig.upstream.requests().into_iter().filter_map(|r| r.text).collect();
    assert_eq!(texts, ["Welcome & hello World Wide Web.", "Welcome & hello World Wide Web."]);
}

#[test]
fn speaks_in_a_row_reuse_the_connection() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let mut expected = Vec::new();
    for i in 0..4 {
        let text = format!("Sentence number {i}.");
        let id = ch.speak(&text);
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(NORMAL));
        expected.extend(padded(&request_for(&rig.upstream, &text).audio_sent, frame_bytes(8000)));
    }
    assert_eq!(ch.audio(), expected, "each SPEAK's audio, in order, nothing else");
    assert_eq!(rig.upstream.connection_count(), 1, "one keep-alive connection for the channel");
}

#[test]
fn complete_comes_after_the_last_frame_not_the_download() {
    // Download is instant; 3 s of audio plays on the real-time clock.
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::default().with_audio_ms(3000));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Three seconds.");
    let done = expect_in_progress_then_complete(&ch, id);
    let req = request_for(&rig.upstream, "Three seconds.");
    let sent = ch.sent_at(id).unwrap();
    assert!(done.at.duration_since(sent) >= Duration::from_millis(2900), "completed after playback");
    let frames = ch.frames();
    let last_audio = frames.frames.iter().rev().find(|f| f.is_audio()).expect("audio frames");
    assert!(frames.at(last_audio) <= done.at, "SPEAK-COMPLETE after the last audio frame");
    assert_eq!(frames.audio_frames(), 300);
    assert_eq!(ch.audio(), padded(&req.audio_sent, 160));
}

#[test]
fn first_audio_arrives_while_upstream_is_still_streaming() {
    // Upstream streams in real time: 4 s of audio take 4 s to arrive.
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(4000).with_first_byte_delay(Duration::from_millis(50)));
    let ch = rig.server.open_channel(16000).unwrap();
    let id = ch.speak("Streaming.");
    let sent = ch.sent_at(id).unwrap();
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let frames = ch.frames();
    let first_audible = frames.at(&frames.first_audible().unwrap());
    let req = request_for(&rig.upstream, "Streaming.");
    assert!(
        first_audible.duration_since(sent) < Duration::from_millis(1000),
        "first audio {:?} after SPEAK, long before the 4 s download ends",
        first_audible.duration_since(sent)
    );
    assert!(first_audible >= req.first_byte_at.unwrap(), "no audio before the upstream sent any");
    assert_eq!(ch.audio(), padded(&req.audio_sent, 320));
}

#[test]
fn long_response_through_a_small_buffer_is_exact() {
    // 20 s of audio, 1 s of buffer: what does not fit goes through the
    // spill file and back without losing or repeating a byte.
    let rig = rig_with_clock(&[("max_buffer_ms", "1000")], MediaClock::Every(Duration::from_millis(1)));
    rig.upstream.set_default(Behavior::default().with_audio_ms(20_000).with_chunk_bytes(4097));
    let ch = rig.server.open_channel(16000).unwrap();
    let id = ch.speak("A long prompt.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    let req = request_for(&rig.upstream, "A long prompt.");
    assert_eq!(req.audio_sent.len(), 20_000 * 32);
    assert_eq!(ch.audio(), req.audio_sent);
    assert_clean(&rig.server);
}

#[test]
fn slow_drip_underruns_are_silence_and_the_speak_completes() {
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::realtime().with_speed(0.5).with_audio_ms(600).with_chunk_bytes(801));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Drip.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let req = request_for(&rig.upstream, "Drip.");
    assert_eq!(ch.audio(), padded(&req.audio_sent, 160), "underruns lose nothing");
}

#[test]
fn logs_name_the_channel_and_never_the_key() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Logged.");
    expect_in_progress_then_complete(&ch, id);
    let channel_id = ch.id();
    ch.close().unwrap();
    let logs = rig.server.logs();
    let ours: Vec<_> = logs.iter().filter(|l| l.source == "ELEVENLABS-SYNTH").collect();
    assert!(ours.iter().any(|l| l.text.contains("engine open")), "engine open logged on our source");
    let summary =
        ours.iter().find(|l| l.text.contains(&format!("SPEAK {id} done"))).expect("one summary line per SPEAK");
    assert!(summary.text.contains(&channel_id), "summary names the channel: {}", summary.text);
    for part in ["chars=7", "voice=TestVoice01", "model=eleven_flash_v2_5", "cause=000 normal", "bytes="] {
        assert!(summary.text.contains(part), "{part} missing in {}", summary.text);
    }
    assert!(ours.iter().all(|l| l.thread != "MPF Scheduler"), "nothing logged from the media thread");
    assert_clean(&rig.server);
}

#[test]
fn text_over_the_request_limit_is_sent_in_parts_and_played_seamlessly() {
    let rig = rig(&[("max_request_chars", "60")]);
    let ch = rig.server.open_channel(8000).unwrap();
    let sentences = [
        "The first sentence is here.",
        "A second one follows it closely.",
        "Then comes the third sentence.",
        "And the fourth ends the text.",
    ];
    let text = sentences.join(" ");
    let id = ch.speak(&text);
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let reqs = rig.upstream.requests();
    let parts: Vec<&str> = reqs.iter().map(|r| r.text.as_deref().unwrap()).collect();
    assert_eq!(parts, [&text[..60], &text[61..]].map(str::trim), "split at sentence ends under 60 chars");
    let json0 = reqs[0].json.as_ref().unwrap();
    let json1 = reqs[1].json.as_ref().unwrap();
    assert!(json0.get("previous_text").is_none());
    assert_eq!(json0["next_text"], parts[1]);
    // Stitched: the first part's request id instead of its text (see
    // tests/dictionaries.rs for the rules).
    assert_eq!(
        json1["previous_request_ids"],
        serde_json::json!([unimrcp_shim::upstream::MockUpstream::request_id_of(0)])
    );
    assert!(json1.get("previous_text").is_none());
    assert!(json1.get("next_text").is_none());
    // Back to back: the parts' bytes concatenated, padded only at the end.
    let all: Vec<u8> = reqs.iter().flat_map(|r| r.audio_sent.clone()).collect();
    assert_eq!(ch.audio(), padded(&all, 160));
    assert_eq!(for_request(&ch, id).len(), 2, "still one SPEAK-COMPLETE");
}

#[test]
fn a_failing_part_fails_the_speak_naming_the_part() {
    let rig = rig(&[("max_request_chars", "40")]);
    rig.upstream.when_text_contains("broken", Behavior::fault(unimrcp_shim::upstream::Fault::server_error(500)));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("This first part is fine. But this part is broken.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    assert!(done.completion_reason.as_deref().unwrap().ends_with("(part 2 of 2)"), "{done:#?}");
    assert_eq!(ch.frames().audio_frames_after(done.at), 0);
}

#[test]
fn prebuffer_holds_a_jitter_reserve_before_the_first_frame() {
    // The upstream delivers at 0.8x real time: 1 s of audio takes 1.25 s,
    // a deficit the 300 ms reserve covers (125 ms still in hand at the end)
    // and playing from the first bytes does not.
    const SPEED: f64 = 0.8;
    const CHUNK: usize = 801;
    let rig = rig_with_clock(&[("prebuffer_ms", "300")], MediaClock::RealTime);
    rig.upstream.set_default(Behavior::default().with_speed(SPEED).with_audio_ms(1000).with_chunk_bytes(CHUNK));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Reserve first.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let req = request_for(&rig.upstream, "Reserve first.");
    let frames = ch.frames();
    let first = frames.at(&frames.first_audible().unwrap());
    // 300 ms of audio arrive 375 ms after the first byte.
    let first_byte = req.first_byte_at.unwrap();
    assert!(first.duration_since(first_byte) >= Duration::from_millis(300));
    assert_eq!(ch.audio(), padded(&req.audio_sent, 160));
    // With the reserve in hand, the slow delivery never runs dry. Not held
    // against the plugin: a silent frame whose bytes the upstream wrote more
    // than 50 ms late against its own schedule (its thread ran late on a
    // loaded machine, eating the reserve's margin), and a lone silent frame, a tick that
    // found the buffer locked by the worker (by design one silent frame, no
    // audio lost), while rare. Without the reserve, chunks arriving late
    // leave one or two silent frames each, dozens in all.
    let due = |k: usize| first_byte + Duration::from_secs_f64((k * CHUNK) as f64 / (16000.0 * SPEED));
    let upstream_late = |k: usize| req.writes.get(k).map_or(true, |w| w.began > due(k) + Duration::from_millis(50));
    let first_index = frames.frames.iter().position(|f| f.is_audio()).unwrap();
    let last_index = frames.frames.iter().rposition(|f| f.is_audio()).unwrap();
    let (mut played, mut run, mut lone, mut dry) = (0, 0, 0, Vec::new());
    for f in &frames.frames[first_index..=last_index] {
        if f.is_audio() {
            lone += usize::from(run == 1);
            run = 0;
            played += 160;
        } else if !upstream_late((played + 159) / CHUNK) {
            run += 1;
            if run == 2 {
                dry.push(f.tick);
            }
        }
    }
    assert!(dry.is_empty(), "ran dry (2+ silent frames, the upstream on time) at ticks {dry:?}");
    assert!(lone <= 2, "{lone} lone silent frames, the upstream on time");
}

#[test]
fn a_48khz_channel_gets_a_buffer_for_its_rate() {
    // 10 s at 48 kHz through max_buffer_ms=1000: the buffer grown at open
    // (96 bytes/ms) carries backpressure without loss.
    let rig = rig_with_clock(&[("max_buffer_ms", "1000")], MediaClock::Every(Duration::from_millis(1)));
    rig.upstream.set_default(Behavior::default().with_audio_ms(10_000).with_chunk_bytes(8191));
    let ch = rig.server.open_channel(48000).unwrap();
    let id = ch.speak("Wideband.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let req = request_for(&rig.upstream, "Wideband.");
    assert_eq!(req.output_format.as_deref(), Some("pcm_48000"));
    assert_eq!(ch.audio(), req.audio_sent);
    assert!(rig.server.logs_text().contains("channel open (48000 Hz)"));
}
