//! Pronunciation dictionaries (engine param, vendor parameter, SSML
//! `<lexicon>`), their refusals (006), request stitching across the parts
//! of a long SPEAK, and speech markers placed right whatever shape the
//! timestamp stream's alignment takes.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use unimrcp_shim::host::{Channel, Kind, MediaClock, PluginLibrary, Recorded, Request, Server, ServerConfig};
use unimrcp_shim::upstream::{char_start_ms, AlignmentShape, Behavior, Fault, MockUpstream, RecordedRequest};

const LEXICON_LOAD_FAILURE: u32 = 6;
const SPEECH_MARKER: usize = 0;

fn body(r: &RecordedRequest) -> Value {
    r.json.clone().expect("a JSON body")
}

fn locators(r: &RecordedRequest) -> Value {
    body(r).get("pronunciation_dictionary_locators").cloned().unwrap_or(Value::Null)
}

fn speak_ok(ch: &Channel, req: Request) -> Recorded {
    let id = ch.send(req);
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    done
}

fn with_vendor(text: &str, value: &str) -> Request {
    let mut r = Request::speak(text);
    r.vendor_specific = vec![("pronunciation_dictionaries".into(), value.into())];
    r
}

/// IN-PROGRESS, then SPEAK-COMPLETE 006 with a reason: returns the reason.
fn expect_006(ch: &Channel, req: Request) -> String {
    let id = ch.send(req);
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(LEXICON_LOAD_FAILURE), "{done:#?}");
    done.completion_reason.clone().expect("a Completion-Reason")
}

#[test]
fn engine_dictionaries_are_in_every_body() {
    let rig = rig(&[("pronunciation_dictionaries", "dictAlpha:ver1, dictBeta")]);
    let ch = rig.server.open_channel(8000).unwrap();
    speak_ok(&ch, Request::speak("Hello Siobhan."));
    let r = request_for(&rig.upstream, "Hello Siobhan.");
    assert_eq!(
        body(&r),
        json!({
            "text": "Hello Siobhan.",
            "model_id": "eleven_flash_v2_5",
            "pronunciation_dictionary_locators": [
                {"pronunciation_dictionary_id": "dictAlpha", "version_id": "ver1"},
                {"pronunciation_dictionary_id": "dictBeta"}
            ]
        })
    );
    assert_clean(&rig.server);
}

fn start_error(extra: (&str, &str)) -> String {
    unimrcp_shim::anchor();
    let params = vec![
        ("api_key".to_string(), "sk_secret_value".to_string()),
        ("voice_id".to_string(), "v1".to_string()),
        (extra.0.to_string(), extra.1.to_string()),
    ];
    let config = ServerConfig { params: Some(params), clock: MediaClock::Manual, ..ServerConfig::default() };
    match Server::start(&PluginLibrary::default_path().unwrap(), config) {
        Ok(_) => panic!("engine open should fail with {extra:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_dictionary_params_fail_engine_open_naming_the_param() {
    for value in ["a,b,c,d", "dict one", "a:b:c", "a,,b", "dict:"] {
        let err = start_error(("pronunciation_dictionaries", value));
        assert!(err.contains("engine param 'pronunciation_dictionaries'"), "{value}: {err}");
        assert!(!err.contains("sk_secret_value"), "{err}");
    }
    assert!(start_error(("pronunciation_dictionaries", "a,b,c,d")).contains("at most 3"));
}

#[test]
fn the_vendor_parameter_and_ssml_lexicons_replace_the_engines_dictionaries() {
    let rig = rig(&[("pronunciation_dictionaries", "engineDict")]);
    let ch = rig.server.open_channel(8000).unwrap();
    let engine = json!([{"pronunciation_dictionary_id": "engineDict"}]);

    // Vendor-Specific-Parameters of the SPEAK.
    speak_ok(&ch, with_vendor("Vendor words.", "vendorA:3,vendorB"));
    let r = request_for(&rig.upstream, "Vendor words.");
    assert_eq!(
        body(&r),
        json!({
            "text": "Vendor words.",
            "model_id": "eleven_flash_v2_5",
            "pronunciation_dictionary_locators": [
                {"pronunciation_dictionary_id": "vendorA", "version_id": "3"},
                {"pronunciation_dictionary_id": "vendorB"}
            ]
        })
    );
    // An empty value asks for none.
    speak_ok(&ch, with_vendor("No dictionaries.", ""));
    assert_eq!(locators(&request_for(&rig.upstream, "No dictionaries.")), Value::Null);

    // SSML: <lexicon> in <speak>, for the whole document (every request).
    let doc = r#"<?xml version="1.0"?>
<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">
  <lexicon uri="elevenlabs:ssmlDict:v2"/>
  <lexicon uri="elevenlabs:otherDict"/>
  First text.<break time="100ms"/>Second text.
</speak>"#;
    speak_ok(&ch, Request::speak_ssml(doc));
    let ssml = json!([
        {"pronunciation_dictionary_id": "ssmlDict", "version_id": "v2"},
        {"pronunciation_dictionary_id": "otherDict"}
    ]);
    for text in ["First text.", "Second text."] {
        let r = request_for(&rig.upstream, text);
        assert_eq!(
            body(&r),
            json!({"text": text, "model_id": "eleven_flash_v2_5", "language_code": "en", "pronunciation_dictionary_locators": ssml})
        );
    }

    // SSML wins over the SPEAK's vendor parameter; without <lexicon> the
    // vendor parameter, and without both the engine's.
    let mut req = Request::speak_ssml(r#"<speak><lexicon uri="elevenlabs:ssmlDict"/>Both given.</speak>"#);
    req.vendor_specific = vec![("elevenlabs.pronunciation_dictionaries".into(), "vendorA".into())];
    speak_ok(&ch, req);
    assert_eq!(
        locators(&request_for(&rig.upstream, "Both given.")),
        json!([{"pronunciation_dictionary_id": "ssmlDict"}])
    );
    let mut req = Request::speak_ssml(r#"<speak>Vendor only.</speak>"#);
    req.vendor_specific = vec![("pronunciation_dictionaries".into(), "vendorA".into())];
    speak_ok(&ch, req);
    assert_eq!(
        locators(&request_for(&rig.upstream, "Vendor only.")),
        json!([{"pronunciation_dictionary_id": "vendorA"}])
    );
    speak_ok(&ch, Request::speak("Engine only."));
    assert_eq!(locators(&request_for(&rig.upstream, "Engine only.")), engine);
    assert_clean(&rig.server);
}

#[test]
fn set_params_dictionaries_sit_below_the_speaks_own_and_above_the_engines() {
    let rig = rig(&[("pronunciation_dictionaries", "engineDict")]);
    let ch = rig.server.open_channel(8000).unwrap();
    let mut set = Request::set_params();
    set.vendor_specific = vec![("pronunciation_dictionaries".into(), "storedDict".into())];
    let id = ch.send(set);
    let resp = ch.wait_response(id, WAIT).unwrap();
    assert_eq!((resp.kind, resp.status_code), (Kind::Response, 200));

    speak_ok(&ch, Request::speak("Stored ones."));
    assert_eq!(
        locators(&request_for(&rig.upstream, "Stored ones.")),
        json!([{"pronunciation_dictionary_id": "storedDict"}])
    );
    speak_ok(&ch, with_vendor("Own ones.", "ownDict"));
    assert_eq!(locators(&request_for(&rig.upstream, "Own ones.")), json!([{"pronunciation_dictionary_id": "ownDict"}]));
    speak_ok(&ch, Request::speak_ssml(r#"<speak><lexicon uri="elevenlabs:ssmlDict"/>Lexicon ones.</speak>"#));
    assert_eq!(
        locators(&request_for(&rig.upstream, "Lexicon ones.")),
        json!([{"pronunciation_dictionary_id": "ssmlDict"}])
    );
    assert_clean(&rig.server);
}

#[test]
fn dictionaries_that_cannot_be_used_end_006_without_a_request() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    let four = r#"<speak><lexicon uri="elevenlabs:a"/><lexicon uri="elevenlabs:b"/><lexicon uri="elevenlabs:c"/><lexicon uri="elevenlabs:d"/>Four.</speak>"#;
    let why = expect_006(&ch, Request::speak_ssml(four));
    assert!(why.contains("4 pronunciation dictionaries") && why.contains("at most 3"), "{why}");
    let other = r#"<speak><lexicon uri="http://example.com/names.pls"/>Other scheme.</speak>"#;
    let why = expect_006(&ch, Request::speak_ssml(other));
    assert!(why.contains("http://example.com/names.pls") && why.contains("elevenlabs:"), "{why}");
    let why = expect_006(&ch, with_vendor("Four by vendor.", "a,b,c,d"));
    assert!(why.contains("at most 3"), "{why}");
    assert_eq!(rig.upstream.request_count(), 0, "nothing went upstream");
    // A malformed vendor value is a bad header value, as for other keys.
    let id = ch.send(with_vendor("Bad syntax.", "a b"));
    let resp = ch.wait_response(id, WAIT).unwrap();
    assert_eq!((resp.status_code, resp.completion_cause), (409, Some(ERROR)));
    assert_eq!(rig.upstream.request_count(), 0);
    assert_clean(&rig.server);
}

#[test]
fn an_upstream_that_rejects_a_dictionary_ends_006_with_its_reason() {
    let rig = rig(&[("pronunciation_dictionaries", "missingDict")]);
    rig.upstream.when_text_contains("Not found", Behavior::fault(Fault::dictionary_not_found("missingDict")));
    rig.upstream.when_text_contains("Bad version", Behavior::fault(Fault::dictionary_version_invalid(0)));
    rig.upstream.when_text_contains("No voice", Behavior::fault(Fault::voice_not_found()));
    let ch = rig.server.open_channel(8000).unwrap();

    let why = expect_006(&ch, Request::speak("Not found here."));
    assert!(why.starts_with("upstream HTTP 404 pronunciation_dictionary_not_found"), "{why}");
    assert!(why.contains("missingDict"), "{why}");
    let why = expect_006(&ch, Request::speak("Bad version here."));
    assert!(why.starts_with("upstream HTTP 422"), "{why}");
    assert!(why.contains("pronunciation_dictionary_locators.0.version_id"), "{why}");
    // Other refusals stay 004.
    let id = ch.send(Request::speak("No voice here."));
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR), "{done:#?}");
    assert_eq!(rig.upstream.request_count(), 3);
    assert_eq!(wait_for_log(&rig.server, "cause=006 lexicon-load-failure", 2), 2);
    assert_clean(&rig.server);
}

#[test]
fn speaks_that_differ_only_in_their_dictionaries_never_share_a_cache_entry() {
    let dir = std::env::temp_dir().join(format!("elevenlabs-dict-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    let rig = rig(&[("cache_enabled", "true"), ("cache_dir", cache.to_str().unwrap())]);
    let ch = rig.server.open_channel(8000).unwrap();
    let entries = |p: &PathBuf| std::fs::read_dir(p).map(|d| d.flatten().count()).unwrap_or(0);

    speak_ok(&ch, with_vendor("Same words.", "dictA"));
    speak_ok(&ch, with_vendor("Same words.", "dictB"));
    speak_ok(&ch, with_vendor("Same words.", "dictA:v2"));
    speak_ok(&ch, Request::speak("Same words."));
    assert_eq!(rig.upstream.request_count(), 4, "each set of dictionaries is its own entry");
    let deadline = Instant::now() + WAIT;
    while entries(&cache) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(entries(&cache), 4);
    // And each is found again by the same dictionaries.
    speak_ok(&ch, with_vendor("Same words.", "dictB"));
    speak_ok(&ch, with_vendor("Same words.", "dictA"));
    assert_eq!(rig.upstream.request_count(), 4, "repeats come from the cache");
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Five sentences of 34 characters: five parts under max_request_chars=40.
const LONG: &str = "Sentence number one is right here. Sentence number two is right here. \
Sentence number three is here now. Sentence number four is right here. Sentence number five is right here.";

fn parts_of(upstream: &MockUpstream, n: usize) -> Vec<RecordedRequest> {
    let reqs = upstream.wait_for_requests(n, WAIT);
    assert_eq!(reqs.len(), n, "{:#?}", reqs.iter().map(|r| r.text.clone()).collect::<Vec<_>>());
    reqs
}

#[test]
fn each_part_names_the_request_ids_of_the_parts_before_it() {
    let rig = rig(&[("max_request_chars", "40")]);
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.send(Request::speak(LONG));
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let parts = parts_of(&rig.upstream, 5);
    let ids = |idx: &[usize]| idx.iter().map(|&i| MockUpstream::request_id_of(i)).collect::<Vec<_>>();
    assert_eq!(parts[0].previous_request_ids(), Vec::<String>::new());
    assert_eq!(parts[1].previous_request_ids(), ids(&[0]));
    assert_eq!(parts[2].previous_request_ids(), ids(&[0, 1]));
    assert_eq!(parts[3].previous_request_ids(), ids(&[0, 1, 2]));
    assert_eq!(parts[4].previous_request_ids(), ids(&[1, 2, 3]), "at most 3, the most recent last");
    // The whole body of a stitched part: ids instead of previous_text
    // (ElevenLabs ignores the text next to them), next_text kept.
    assert_eq!(
        body(&parts[1]),
        json!({
            "text": "Sentence number two is right here.",
            "model_id": "eleven_flash_v2_5",
            "next_text": "Sentence number three is here now.",
            "previous_request_ids": ["mock-1"]
        })
    );
    assert_eq!(
        body(&parts[0]),
        json!({
            "text": "Sentence number one is right here.",
            "model_id": "eleven_flash_v2_5",
            "next_text": "Sentence number two is right here."
        })
    );
    // The summary line names the last request's id, before its cause.
    assert_eq!(wait_for_log(&rig.server, &format!("SPEAK {id} done"), 1), 1);
    let logs = rig.server.logs();
    let line = logs.iter().find(|l| l.text.contains(&format!("SPEAK {id} done"))).unwrap();
    assert!(line.text.ends_with(" request_id=mock-5 cause=000 normal"), "{}", line.text);
    assert_clean(&rig.server);
}

#[test]
fn eleven_v3_parts_keep_their_text_fields() {
    let rig = rig(&[("max_request_chars", "40"), ("model_id", "eleven_v3")]);
    let ch = rig.server.open_channel(8000).unwrap();
    speak_ok(&ch, Request::speak(LONG));
    let parts = parts_of(&rig.upstream, 5);
    assert!(parts.iter().all(|p| p.previous_request_ids().is_empty()));
    assert_eq!(
        body(&parts[1]),
        json!({
            "text": "Sentence number two is right here.",
            "model_id": "eleven_v3",
            "previous_text": "Sentence number one is right here.",
            "next_text": "Sentence number three is here now."
        })
    );
    assert_clean(&rig.server);
}

#[test]
fn a_speak_from_the_cache_has_no_request_id_in_its_summary() {
    let dir = std::env::temp_dir().join(format!("elevenlabs-dict-rid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rig = rig(&[("cache_enabled", "true"), ("cache_dir", dir.join("c").to_str().unwrap())]);
    let ch = rig.server.open_channel(8000).unwrap();
    speak_ok(&ch, Request::speak("Cached once."));
    speak_ok(&ch, Request::speak("Cached once."));
    assert_eq!(wait_for_log(&rig.server, " done: ", 2), 2);
    let lines: Vec<String> =
        rig.server.logs().into_iter().filter(|l| l.text.contains(" done: ")).map(|l| l.text).collect();
    assert!(lines[0].contains("source=upstream") && lines[0].contains(" request_id=mock-1 cause="), "{}", lines[0]);
    assert!(lines[1].contains("source=cache") && lines[1].contains(" request_id=- cause="), "{}", lines[1]);
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
}

fn marker_name(m: &Recorded) -> String {
    let value = m.speech_marker.as_deref().expect("Speech-Marker header");
    value.split_once(';').map(|(_, n)| n.to_owned()).unwrap_or_default()
}

/// A mark inside the text fires with the frame that holds its character's
/// audio, whatever shape the alignment lines take.
fn mark_fires_at_its_frame(shape: AlignmentShape) {
    let rig = rig_with_clock(&[("max_buffer_ms", "10000")], MediaClock::Manual);
    // Many lines (800 bytes = 50 ms each), the mark's character deep in a
    // later one: chunk-relative times read as cumulative would put it in
    // the first 50 ms.
    rig.upstream.set_default(Behavior::default().with_alignment(shape).with_chunk_bytes(800));
    let ch = rig.server.open_channel(8000).unwrap();
    let text = "Hello there, general Kenobi.";
    let id = ch.send(Request::speak_ssml(r#"<speak>Hello there, <mark name="m1"/>general Kenobi.</speak>"#));
    ch.wait_response(id, WAIT).expect("IN-PROGRESS");
    let reqs = rig.upstream.wait_for_requests(1, WAIT);
    let deadline = Instant::now() + WAIT;
    while !rig.upstream.requests().iter().all(|r| r.completed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // All written by the upstream; now all read by the worker (it batches
    // reads while audio is far ahead), then a moment to file the marks.
    assert!(wait_until_upstream_read(rig.upstream.addr().port(), WAIT), "the worker read the whole response");
    std::thread::sleep(Duration::from_millis(100));
    let r = &rig.upstream.requests()[0];
    assert!(reqs[0].with_timestamps);
    let audio_ms = (r.audio_sent.len() / 16) as u32;
    let offset = text.find("general").unwrap();
    let position = (char_start_ms(text, audio_ms, offset) / 1000.0 * 8000.0).round() as usize * 2;
    assert!(position > 800 * 4, "the mark lies beyond the first lines");
    let crossing = position / 160 + 1;
    let fired = |ch: &Channel| {
        for_request(ch, id)
            .iter()
            .any(|m| m.kind == Kind::Event && m.method_id == SPEECH_MARKER && marker_name(m) == "m1")
    };
    rig.server.tick_n(crossing - 1);
    std::thread::sleep(Duration::from_millis(60));
    assert!(!fired(&ch), "{shape:?}: m1 before frame {crossing}");
    rig.server.tick();
    ch.wait_for(WAIT, |m| m.method_id == SPEECH_MARKER && m.kind == Kind::Event && marker_name(m) == "m1")
        .unwrap_or_else(|| panic!("{shape:?}: m1 with frame {crossing}"));
    let mut guard = 0;
    while ch.wait_complete(id, Duration::from_millis(1)).is_none() {
        rig.server.tick();
        guard += 1;
        assert!(guard < 2000, "SPEAK never completed");
    }
    assert_eq!(ch.wait_complete(id, WAIT).unwrap().completion_cause, Some(NORMAL));
    assert_clean(&rig.server);
}

#[test]
fn marks_are_placed_from_cumulative_alignment() {
    mark_fires_at_its_frame(AlignmentShape::Cumulative);
}

#[test]
fn marks_are_placed_from_chunk_relative_alignment() {
    mark_fires_at_its_frame(AlignmentShape::ChunkRelative);
}

#[test]
fn marks_are_placed_from_normalized_alignment_alone() {
    mark_fires_at_its_frame(AlignmentShape::NormalizedOnly);
}
