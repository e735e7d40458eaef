//! SSML bodies: what reaches the upstream for each element, breaks as
//! exact silence, per-element voices and styles, and SPEECH-MARKER events
//! timed against the frames the media thread reads.

mod common;

use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{Channel, Kind, MediaClock, Recorded, Request};
use unimrcp_shim::upstream::{char_start_ms, Behavior, Fault, RecordedRequest};

const SPEECH_MARKER: usize = 0;
const LANGUAGE_UNSUPPORTED: u32 = 5;
const RACHEL: &str = "21m00Tcm4TlvDq8ikWAM";
const ADAM: &str = "pNInz6obpgDQGcFmaJgB";
const MAP: &str = "Rachel=21m00Tcm4TlvDq8ikWAM;Adam=pNInz6obpgDQGcFmaJgB";

fn markers(ch: &Channel, id: u32) -> Vec<Recorded> {
    for_request(ch, id).into_iter().filter(|m| m.kind == Kind::Event && m.method_id == SPEECH_MARKER).collect()
}

fn marker_name(m: &Recorded) -> String {
    let value = m.speech_marker.as_deref().expect("Speech-Marker header");
    let (stamp, name) = value.split_once(';').unwrap_or((value, ""));
    let digits = stamp.strip_prefix("timestamp=").expect("timestamp=");
    assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{value}");
    name.to_owned()
}

fn silence(ms: u32, rate: u32) -> Vec<u8> {
    vec![0; (ms * rate / 1000 * 2) as usize]
}

/// Byte-for-byte equality, reported as lengths and the first difference.
#[track_caller]
fn assert_same_audio(got: &[u8], expected: &[u8], what: &str) {
    if got != expected {
        let first = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!("{what}: {} bytes played, {} expected, first difference at byte {first}", got.len(), expected.len());
    }
}

fn speak_ssml(ch: &Channel, doc: &str) -> Recorded {
    let id = ch.send(Request::speak_ssml(doc));
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    done
}

fn json_str(r: &RecordedRequest, path: &[&str]) -> Option<String> {
    let mut v = r.json.as_ref()?;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().map(str::to_owned).or_else(|| v.as_f64().map(|f| f.to_string()))
}

#[test]
fn every_element_reaches_the_upstream_as_text_and_settings() {
    let rig = rig(&[("voice_map", MAP)]);
    let ch = rig.server.open_channel(8000).unwrap();
    let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">
  <p><s>Hello <say-as interpret-as="characters">IBM</say-as></s>
  <s>Call <say-as interpret-as="telephone">555-0100</say-as> on the <say-as interpret-as="ordinal">3</say-as> ring</s></p>
  <break time="300ms"/>
  <voice name="Rachel"><prosody rate="slow" volume="loud">Welcome to the <sub alias="World Wide Web Consortium">W3C</sub> &amp; <emphasis>friends</emphasis><audio src="http://example.invalid/a.wav">, enjoy<desc>applause</desc></audio>.</prosody></voice>
</speak>"#;
    speak_ssml(&ch, doc);
    let first = request_for(&rig.upstream, "Hello I B M. Call 5 5 5, 0 1 0 0 on the 3rd ring.");
    let second = request_for(&rig.upstream, "Welcome to the World Wide Web Consortium & friends, enjoy.");
    assert_eq!(rig.upstream.request_count(), 2);
    assert_eq!(first.voice_id, VOICE);
    assert_eq!(json_str(&first, &["language_code"]).as_deref(), Some("en"), "xml:lang of <speak>");
    assert!(first.json.as_ref().unwrap().get("voice_settings").is_none());
    assert_eq!(second.voice_id, RACHEL, "<voice name> through voice_map");
    assert_eq!(json_str(&second, &["voice_settings", "speed"]).as_deref(), Some("0.85"), "rate=slow");
    assert!(!first.with_timestamps && !second.with_timestamps, "no marks: the plain stream");

    let mut expected = first.audio_sent.clone();
    expected.extend(silence(300, 8000));
    expected.extend(gained(&second.audio_sent, 1.41)); // volume=loud
    assert_same_audio(&ch.audio(), &padded(&expected, 160), "audio, pause and scaled audio");
    assert_clean(&rig.server);
}

#[test]
fn breaks_are_exact_silence_on_every_model() {
    let rig = rig(&[]);
    for (i, model) in ["eleven_flash_v2_5", "eleven_multilingual_v2", "eleven_turbo_v2", "eleven_v3"].iter().enumerate()
    {
        let ch = rig.server.open_channel(16000).unwrap();
        let (a, b, c) = (format!("Model {i} one."), format!("Model {i} two."), format!("Model {i} three."));
        let doc = format!(
            r#"<speak><break time="120ms"/>{a}<break time="750ms"/><break time="0.25s"/>{b}<break strength="strong"/>{c}</speak>"#
        );
        let mut req = Request::speak_ssml(&doc);
        req.vendor_specific = vec![("model_id".into(), model.to_string())];
        let id = ch.send(req);
        assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
        let (ra, rb, rc) =
            (request_for(&rig.upstream, &a), request_for(&rig.upstream, &b), request_for(&rig.upstream, &c));
        for r in [&ra, &rb, &rc] {
            assert_eq!(json_str(r, &["model_id"]).as_deref(), Some(*model));
            assert!(!r.text.as_deref().unwrap().contains("break"), "breaks are ours, not the model's");
        }
        let mut expected = silence(120, 16000);
        expected.extend(&ra.audio_sent);
        expected.extend(silence(1000, 16000)); // 750 ms + 250 ms, merged
        expected.extend(&rb.audio_sent);
        expected.extend(silence(700, 16000)); // strong
        expected.extend(&rc.audio_sent);
        assert_same_audio(&ch.audio(), &padded(&expected, 320), model);
        ch.close().unwrap();
    }
}

#[test]
fn ssml_wins_over_headers_per_element() {
    let rig = rig(&[("voice_map", MAP), ("voice_id_male", "MaleVoice01")]);
    let ch = rig.server.open_channel(8000).unwrap();
    let doc = r#"<speak xml:lang="fr-FR">Bonjour. <voice name="Rachel">Salut.</voice> <voice gender="male" xml:lang="de">Hallo.</voice> <prosody rate="+10%">Vite.</prosody></speak>"#;
    let mut req = Request::speak_ssml(doc);
    req.voice_name = Some("Adam".into());
    req.speech_language = Some("es-ES".into());
    req.prosody_rate = Some(unimrcp_shim::host::ProsodyRate::Relative(0.8));
    let id = ch.send(req);
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let bonjour = request_for(&rig.upstream, "Bonjour.");
    assert_eq!(bonjour.voice_id, ADAM, "the header's voice where SSML names none");
    assert_eq!(json_str(&bonjour, &["language_code"]).as_deref(), Some("fr"), "xml:lang over Speech-Language");
    let speed: f64 = json_str(&bonjour, &["voice_settings", "speed"]).unwrap().parse().unwrap();
    assert!((speed - 0.8).abs() < 1e-6, "the header's rate where SSML sets none: {speed}");
    let salut = request_for(&rig.upstream, "Salut.");
    assert_eq!(salut.voice_id, RACHEL);
    let hallo = request_for(&rig.upstream, "Hallo.");
    assert_eq!(hallo.voice_id, "MaleVoice01", "gender default for <voice gender>");
    assert_eq!(json_str(&hallo, &["language_code"]).as_deref(), Some("de"));
    let vite = request_for(&rig.upstream, "Vite.");
    let speed: f64 = json_str(&vite, &["voice_settings", "speed"]).unwrap().parse().unwrap();
    assert!((speed - 0.88).abs() < 1e-6, "relative to the header's 0.8: {speed}");

    // A language the model does not speak, anywhere in the document: 005.
    let id = ch.send(Request::speak_ssml(r#"<speak>Fine. <voice xml:lang="tlh">nuqneH</voice></speak>"#));
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(LANGUAGE_UNSUPPORTED), "{done:#?}");
    assert_eq!(rig.upstream.request_count(), 4, "nothing went upstream for it");
}

#[test]
fn phonemes_go_to_models_that_read_them() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let doc = r#"<speak>Say <phoneme alphabet="ipa" ph="təˈmɑːtoʊ">tomato</phoneme> and <phoneme alphabet="x-arpabet" ph="P IY1 K AH0 N">pecan</phoneme>.</speak>"#;
    let mut req = Request::speak_ssml(doc);
    req.vendor_specific = vec![("model_id".into(), "eleven_flash_v2".into())];
    let id = ch.send(req);
    expect_in_progress_then_complete(&ch, id);
    request_for(
        &rig.upstream,
        r#"Say <phoneme alphabet="ipa" ph="təˈmɑːtoʊ">tomato</phoneme> and <phoneme alphabet="cmu-arpabet" ph="P IY1 K AH0 N">pecan</phoneme>."#,
    );
    speak_ssml(&ch, doc); // default model: flash v2.5 skips phoneme tags, so the words go as written
    request_for(&rig.upstream, "Say tomato and pecan.");
}

/// The core of the marker contract: a SPEECH-MARKER goes out when the media
/// thread reads the frame holding the mark's audio, not before, and not
/// when the audio is downloaded.
#[test]
fn markers_fire_when_the_media_thread_reads_their_audio() {
    let rig = rig_with_clock(&[("max_buffer_ms", "10000")], MediaClock::Manual);
    let ch = rig.server.open_channel(8000).unwrap();
    let first = "Hello there, general Kenobi.";
    let doc = r#"<speak>Hello there, <mark name="m1"/>general Kenobi.<break time="200ms"/><mark name="m2"/>Bye now.<mark name="end"/></speak>"#;
    let id = ch.send(Request::speak_ssml(doc));
    let in_progress = ch.wait_response(id, WAIT).expect("IN-PROGRESS");
    assert_eq!(in_progress.request_state, IN_PROGRESS);
    assert!(in_progress.speech_marker.as_deref().is_some_and(|v| v.starts_with("timestamp=")), "{in_progress:#?}");

    // Everything is downloaded before a single frame plays.
    let reqs = rig.upstream.wait_for_requests(2, WAIT);
    let deadline = Instant::now() + WAIT;
    while !rig.upstream.requests().iter().all(|r| r.completed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(markers(&ch, id).is_empty(), "nothing is announced at download time");
    let r1 = rig.upstream.requests().into_iter().find(|r| r.text.as_deref() == Some(first)).unwrap();
    let r2 = request_for(&rig.upstream, "Bye now.");
    assert_eq!(reqs.len(), 2);
    assert!(r1.with_timestamps, "a mark inside the text asks for the alignment");
    assert!(!r2.with_timestamps, "marks at the ends of a text need none");

    let fb = 160usize;
    let audio_ms = (r1.audio_sent.len() / 16) as u32;
    let offset = first.find("general").unwrap();
    let p1 = (char_start_ms(first, audio_ms, offset) / 1000.0 * 8000.0).round() as usize * 2;
    let p2 = r1.audio_sent.len() + silence(200, 8000).len();
    let mut ticks = 0usize;
    for (name, position) in [("m1", p1), ("m2", p2)] {
        // The first frame to hold the mark's audio is the one that makes
        // the played byte count pass its position.
        let crossing = position / fb + 1;
        rig.server.tick_n(crossing - 1 - ticks);
        std::thread::sleep(Duration::from_millis(60));
        let before: Vec<String> = markers(&ch, id).iter().map(marker_name).collect();
        assert!(!before.contains(&name.to_owned()), "{name} early, after {} frames: {before:?}", crossing - 1);
        let at = Instant::now();
        rig.server.tick();
        ticks = crossing;
        let m = ch
            .wait_for(WAIT, |m| m.method_id == SPEECH_MARKER && m.kind == Kind::Event && marker_name(m) == name)
            .unwrap_or_else(|| panic!("{name} after frame {crossing}: {:#?}", markers(&ch, id)));
        assert!(m.at >= at, "{name} sent after its frame was read");
        assert_eq!(m.request_state, IN_PROGRESS);
    }
    // The rest plays; "end" is reached with the last frame.
    let mut guard = 0;
    while ch.wait_complete(id, Duration::from_millis(1)).is_none() {
        rig.server.tick();
        guard += 1;
        assert!(guard < 1000, "SPEAK never completed");
    }
    let names: Vec<String> = markers(&ch, id).iter().map(marker_name).collect();
    assert_eq!(names, ["m1", "m2", "end"]);
    let done = expect_in_progress_then_complete_with_markers(&ch, id, 3);
    assert_eq!(done.completion_cause, Some(NORMAL));
    assert_eq!(marker_name(&done), "end", "SPEAK-COMPLETE carries the last mark reached");
    let mut expected = r1.audio_sent.clone();
    expected.extend(silence(200, 8000));
    expected.extend(&r2.audio_sent);
    assert_same_audio(&ch.audio(), &padded(&expected, fb), "the timestamp stream's audio");
    assert_clean(&rig.server);
}

/// IN-PROGRESS, `n` SPEECH-MARKERs, one SPEAK-COMPLETE last: returns it.
fn expect_in_progress_then_complete_with_markers(ch: &Channel, id: u32, n: usize) -> Recorded {
    let done = ch.wait_complete(id, WAIT).expect("SPEAK-COMPLETE");
    let msgs = for_request(ch, id);
    assert_eq!(msgs.len(), n + 2, "{msgs:#?}");
    assert_eq!((msgs[0].kind, msgs[0].request_state), (Kind::Response, IN_PROGRESS));
    assert!(msgs[1..=n].iter().all(|m| m.kind == Kind::Event && m.method_id == SPEECH_MARKER));
    assert!(is_speak_complete(&msgs[n + 1]));
    done
}

#[test]
fn without_alignment_marks_are_placed_by_proportion() {
    let rig = rig(&[]);
    rig.upstream.set_default(Behavior::default().with_omit_alignment(true));
    let ch = rig.server.open_channel(8000).unwrap();
    let id =
        ch.send(Request::speak_ssml(r#"<speak>One <mark name="a"/>two three <mark name="b"/>four five six.</speak>"#));
    let done = expect_in_progress_then_complete_with_markers(&ch, id, 2);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let names: Vec<String> = markers(&ch, id).iter().map(marker_name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(marker_name(&done), "b");
}

#[test]
fn stop_ends_the_markers_with_the_speak() {
    let rig = rig_with_clock(&[], MediaClock::RealTime);
    let ch = rig.server.open_channel(8000).unwrap();
    let mut doc = String::from("<speak>");
    for i in 0..20 {
        doc.push_str(&format!("Sentence number {i} is here, <mark name=\"m{i}\"/>and it goes on. "));
    }
    doc.push_str("</speak>");
    let id = ch.send(Request::speak_ssml(&doc));
    ch.wait_for(WAIT, |m| m.request_id == id && m.method_id == SPEECH_MARKER && m.kind == Kind::Event)
        .expect("a first marker");
    let stop = ch.stop();
    let resp = ch.wait_response(stop, WAIT).unwrap();
    assert_eq!(resp.active_request_ids.as_deref(), Some(&[id][..]));
    let seen = markers(&ch, id).len();
    let last = markers(&ch, id).last().map(marker_name).expect("a marker before the STOP");
    assert_eq!(marker_name(&resp), last, "the STOP's response names the last mark reached");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(markers(&ch, id).len(), seen, "no SPEECH-MARKER after STOP");
    assert!(ch.wait_complete(id, Duration::from_millis(10)).is_none(), "no SPEAK-COMPLETE after STOP");
    assert!(markers(&ch, id).iter().all(|m| m.at <= resp.at), "markers only before the STOP's answer");
}

#[test]
fn a_broken_timestamp_stream_ends_the_speak_with_an_error() {
    let rig = rig(&[]);
    rig.upstream.when_text_contains("Broken", Behavior::fault(Fault::MalformedTimestampLine));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.send(Request::speak_ssml(
        r#"<speak>First text is fine.<break time="50ms"/>Broken <mark name="x"/>stream here.</speak>"#,
    ));
    let done = ch.wait_complete(id, WAIT).expect("SPEAK-COMPLETE");
    assert_eq!(done.completion_cause, Some(ERROR));
    let reason = done.completion_reason.as_deref().unwrap_or("");
    assert!(reason.contains("timestamp") && reason.ends_with("(text 2 of 2)"), "{done:#?}");
    // The channel goes on.
    speak_ssml(&ch, "<speak>Fine again.</speak>");
}

/// The decoded (timestamps) and scaled (volume) paths stage audio between
/// the network and the buffer; with a buffer far smaller than the audio,
/// the overflow is spilled and pumped back (tests/spill.rs covers the
/// fall-back to backpressure) without losing or repeating a byte, and every
/// mark must still be announced.
#[test]
fn backpressure_on_decoded_and_scaled_audio_loses_nothing() {
    let rig = rig(&[("max_buffer_ms", "200")]);
    rig.upstream.set_default(Behavior::default().with_chunk_bytes(777));
    let ch = rig.server.open_channel(16000).unwrap();
    let text = "This sentence runs on for a while so that its audio is many times larger than the buffer, \
                and the mark sits right in the middle of it.";
    let at = text.find("and the mark").unwrap();
    let doc = format!(
        r#"<speak><prosody volume="x-soft">{}<mark name="middle"/>{}</prosody><mark name="after"/></speak>"#,
        &text[..at],
        &text[at..]
    );
    let id = ch.send(Request::speak_ssml(&doc));
    let done = expect_in_progress_then_complete_with_markers(&ch, id, 2);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    let req = request_for(&rig.upstream, text);
    assert!(req.with_timestamps);
    assert!(req.audio_sent.len() > 20 * 3200, "the audio dwarfs the buffer");
    assert_same_audio(&ch.audio(), &padded(&gained(&req.audio_sent, 0.25), 320), "decoded and scaled");
    let names: Vec<String> = markers(&ch, id).iter().map(marker_name).collect();
    assert_eq!(names, ["middle", "after"]);

    // The same through the plain stream (no marks), scaled only. (The
    // length is taken before the SPEAK: on the fast clock its first frames
    // can play before this thread runs again.)
    let before = ch.audio_len();
    let id = ch.send(Request::speak_ssml(&format!(r#"<speak><prosody volume="+6dB">{text} Again.</prosody></speak>"#)));
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let again = request_for(&rig.upstream, &format!("{text} Again."));
    assert!(!again.with_timestamps);
    let gain = 10f64.powf(6.0 / 20.0) as f32; // as the plugin computes it
    assert_same_audio(&ch.audio()[before..], &padded(&gained(&again.audio_sent, gain), 320), "scaled");
}
