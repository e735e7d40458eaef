//! SPEAK headers choose the voice, language, speed, volume and any
//! ElevenLabs setting for one SPEAK; SET-PARAMS sets them for the SPEAKs
//! after it (the host stores them and each SPEAK inherits them, as the
//! real server does). What reaches the upstream is checked.

mod common;

use common::*;
use unimrcp_shim::host::{Channel, Kind, ProsodyRate, ProsodyVolume, Request};
use unimrcp_shim::sys;
use unimrcp_shim::upstream::RecordedRequest;

const MAP: &str = "Rachel=21m00Tcm4TlvDq8ikWAM;Adam=pNInz6obpgDQGcFmaJgB";

fn voice_rig() -> Rig {
    rig(&[("voice_map", MAP), ("voice_id_female", "FemaleVoice01"), ("voice_id_male", "MaleVoice01")])
}

/// Sends `req` (a SPEAK for `text`) and returns what reached the upstream.
fn spoken(rig: &Rig, ch: &Channel, text: &str, req: Request) -> RecordedRequest {
    let id = ch.send(req);
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    request_for(&rig.upstream, text)
}

fn speak_with(text: &str, f: impl FnOnce(&mut Request)) -> Request {
    let mut r = Request::speak(text);
    f(&mut r);
    r
}

#[test]
fn voice_name_by_map_or_id_and_gender_defaults() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let voice =
        spoken(&rig, &ch, "By name.", speak_with("By name.", |r| r.voice_name = Some("rachel".into()))).voice_id;
    assert_eq!(voice, "21m00Tcm4TlvDq8ikWAM");
    let voice =
        spoken(&rig, &ch, "By id.", speak_with("By id.", |r| r.voice_name = Some("CustomVoiceId9".into()))).voice_id;
    assert_eq!(voice, "CustomVoiceId9");
    let voice =
        spoken(&rig, &ch, "By gender.", speak_with("By gender.", |r| r.voice_gender = Some(sys::VOICE_GENDER_FEMALE)))
            .voice_id;
    assert_eq!(voice, "FemaleVoice01");
    let voice = spoken(&rig, &ch, "Default.", Request::speak("Default.")).voice_id;
    assert_eq!(voice, VOICE);
    // An unknown name is refused before anything goes upstream.
    let before = rig.upstream.request_count();
    let id = ch.send(speak_with("Unknown.", |r| r.voice_name = Some("Mary Poppins".into())));
    let resp = ch.wait_response(id, WAIT).unwrap();
    assert_eq!((resp.kind, resp.status_code), (Kind::Response, 409));
    assert!(resp.completion_reason.as_deref().unwrap().contains("unknown Voice-Name 'Mary Poppins'"));
    assert_eq!(rig.upstream.request_count(), before);
}

#[test]
fn speech_language_becomes_language_code_or_005() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let json = spoken(&rig, &ch, "Guten Tag.", speak_with("Guten Tag.", |r| r.speech_language = Some("de-DE".into())))
        .json
        .unwrap();
    assert_eq!(json["language_code"], "de");
    let id = ch.send(speak_with("Klingon.", |r| r.speech_language = Some("tlh-001".into())));
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(5), "005 language-unsupported");
    assert!(done.completion_reason.as_deref().unwrap_or("").contains("'tlh'"), "{done:#?}");
    assert_eq!(rig.upstream.request_count(), 1, "nothing went upstream for it");
}

#[test]
fn prosody_rate_becomes_speed_and_vendor_params_set_anything() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let json = spoken(&rig, &ch, "Slowly.", speak_with("Slowly.", |r| r.prosody_rate = Some(ProsodyRate::XSlow)))
        .json
        .unwrap();
    assert_eq!(json["voice_settings"]["speed"], 0.7);
    let json = spoken(
        &rig,
        &ch,
        "Much faster.",
        speak_with("Much faster.", |r| r.prosody_rate = Some(ProsodyRate::Relative(5.0))),
    )
    .json
    .unwrap();
    assert_eq!(json["voice_settings"]["speed"], 1.2, "clamped to what the API accepts");
    let json = spoken(
        &rig,
        &ch,
        "Tuned.",
        speak_with("Tuned.", |r| {
            r.vendor_specific = vec![
                ("elevenlabs.model_id".into(), "eleven_multilingual_v2".into()),
                ("stability".into(), "0.25".into()),
                ("style".into(), "0.5".into()),
                ("seed".into(), "1234".into()),
                ("apply_text_normalization".into(), "off".into()),
            ]
        }),
    )
    .json
    .unwrap();
    assert_eq!(json["model_id"], "eleven_multilingual_v2");
    assert_eq!(json["voice_settings"]["stability"], 0.25);
    assert_eq!(json["voice_settings"]["style"], 0.5);
    assert_eq!(json["seed"], 1234);
    assert_eq!(json["apply_text_normalization"], "off");
    // Only that SPEAK: the next one is back to the engine's settings.
    let json = spoken(&rig, &ch, "Plain again.", Request::speak("Plain again.")).json.unwrap();
    assert_eq!(json["model_id"], "eleven_flash_v2_5");
    assert!(json.get("seed").is_none() && json.get("voice_settings").is_none());
}

#[test]
fn prosody_volume_scales_the_samples() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let id =
        ch.send(speak_with("Softly.", |r| r.prosody_volume = Some(ProsodyVolume::Label(sys::PROSODY_VOLUME_SOFT))));
    expect_in_progress_then_complete(&ch, id);
    let sent = padded(&request_for(&rig.upstream, "Softly.").audio_sent, 160);
    let halved: Vec<u8> = sent
        .chunks_exact(2)
        .flat_map(|c| (((i16::from_ne_bytes([c[0], c[1]]) as f32) * 0.5).round() as i16).to_ne_bytes())
        .collect();
    assert_eq!(ch.audio(), halved, "every sample at half amplitude");
}

#[test]
fn logging_tag_appears_in_the_channel_log_lines() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.send(speak_with("Tagged.", |r| r.logging_tag = Some("call-4711".into())));
    expect_in_progress_then_complete(&ch, id);
    wait_for_log(&rig.server, "done:", 1);
    let logs = rig.server.logs();
    let summary = logs.iter().find(|l| l.text.contains(&format!("SPEAK {id} done"))).unwrap();
    assert!(summary.text.contains(&format!("{} tag=call-4711", ch.id())), "{}", summary.text);
}

const RACHEL: &str = "21m00Tcm4TlvDq8ikWAM";
const ADAM: &str = "pNInz6obpgDQGcFmaJgB";

/// Sends a SET-PARAMS and checks it is answered 200 COMPLETE, alone.
fn set_params(rig: &Rig, ch: &Channel, f: impl FnOnce(&mut Request)) {
    let before = rig.upstream.request_count();
    let mut req = Request::set_params();
    f(&mut req);
    let id = ch.send(req);
    let resp = ch.wait_response(id, WAIT).expect("a response to SET-PARAMS");
    assert_eq!((resp.kind, resp.status_code, resp.request_state), (Kind::Response, 200, COMPLETE), "{resp:#?}");
    assert_eq!(for_request(ch, id).len(), 1, "a response and nothing else");
    assert_eq!(rig.upstream.request_count(), before, "SET-PARAMS sends nothing upstream");
}

/// Sends an SSML SPEAK that must complete normally.
fn spoken_ssml(ch: &Channel, req: Request) {
    let id = ch.send(req);
    let done = expect_in_progress_then_complete(ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
}

/// (voice id, speed, stability) of an upstream request.
fn voice_speed_stability(r: &RecordedRequest) -> (String, Option<f64>, Option<f64>) {
    let settings = r.json.as_ref().and_then(|j| j.get("voice_settings"));
    let number = |name: &str| settings.and_then(|s| s.get(name)).and_then(|v| v.as_f64());
    (r.voice_id.clone(), number("speed"), number("stability"))
}

#[test]
fn set_params_reach_later_speaks_below_speak_headers_and_ssml() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    set_params(&rig, &ch, |r| {
        r.voice_name = Some("Rachel".into());
        r.prosody_rate = Some(ProsodyRate::XSlow);
        r.vendor_specific = vec![("stability".into(), "0.25".into())];
    });

    // A SPEAK without those headers speaks as SET-PARAMS said.
    let plain = spoken(&rig, &ch, "After SET-PARAMS.", Request::speak("After SET-PARAMS."));
    assert_eq!(voice_speed_stability(&plain), (RACHEL.into(), Some(0.7), Some(0.25)));

    // The SPEAK's own Voice-Name wins; the other stored fields still apply.
    let own = spoken(&rig, &ch, "Own voice.", speak_with("Own voice.", |r| r.voice_name = Some("Adam".into())));
    assert_eq!(voice_speed_stability(&own), (ADAM.into(), Some(0.7), Some(0.25)));

    // SSML <voice name> wins over both; text outside it keeps the SPEAK's
    // header voice, or the SET-PARAMS one when the SPEAK has none.
    let mut req = Request::speak_ssml(r#"<speak>Header voice. <voice name="SsmlVoice07">SSML voice.</voice></speak>"#);
    req.voice_name = Some("Adam".into());
    spoken_ssml(&ch, req);
    let header = request_for(&rig.upstream, "Header voice.");
    assert_eq!(voice_speed_stability(&header), (ADAM.into(), Some(0.7), Some(0.25)));
    let ssml = request_for(&rig.upstream, "SSML voice.");
    assert_eq!(voice_speed_stability(&ssml), ("SsmlVoice07".into(), Some(0.7), Some(0.25)));
    spoken_ssml(&ch, Request::speak_ssml(r#"<speak>Stored voice. <voice name="Adam">Named voice.</voice></speak>"#));
    assert_eq!(request_for(&rig.upstream, "Stored voice.").voice_id, RACHEL);
    assert_eq!(request_for(&rig.upstream, "Named voice.").voice_id, ADAM);
    assert_eq!(rig.upstream.request_count(), 6);
    assert_clean(&rig.server);
}

#[test]
fn set_params_are_kept_field_by_field_and_per_channel() {
    let rig = voice_rig();
    let ch = rig.server.open_channel(8000).unwrap();
    set_params(&rig, &ch, |r| {
        r.voice_name = Some("Rachel".into());
        r.prosody_rate = Some(ProsodyRate::XSlow);
        r.vendor_specific = vec![("stability".into(), "0.25".into()), ("seed".into(), "42".into())];
    });
    // A later SET-PARAMS replaces only the fields it carries.
    set_params(&rig, &ch, |r| r.voice_name = Some("Adam".into()));
    let json_of = |r: &RecordedRequest| r.json.clone().expect("a JSON body");
    let second = spoken(&rig, &ch, "Second SET-PARAMS.", Request::speak("Second SET-PARAMS."));
    assert_eq!(voice_speed_stability(&second), (ADAM.into(), Some(0.7), Some(0.25)));
    assert_eq!(json_of(&second)["seed"], 42);

    // Vendor-Specific-Parameters is one header field: a SPEAK with its own
    // inherits none of the stored ones.
    let own = spoken(
        &rig,
        &ch,
        "Own vendor params.",
        speak_with("Own vendor params.", |r| r.vendor_specific = vec![("style".into(), "0.5".into())]),
    );
    assert_eq!(voice_speed_stability(&own), (ADAM.into(), Some(0.7), None));
    assert_eq!(json_of(&own)["voice_settings"]["style"], 0.5);
    assert!(json_of(&own).get("seed").is_none(), "{:?}", own.json);

    // Stored on that channel only.
    let other = rig.server.open_channel(8000).unwrap();
    let fresh = spoken(&rig, &other, "Other channel.", Request::speak("Other channel."));
    assert_eq!(fresh.voice_id, VOICE);
    assert!(json_of(&fresh).get("voice_settings").is_none() && json_of(&fresh).get("seed").is_none());
    assert_clean(&rig.server);
}
