//! ElevenLabs' streaming text-to-speech API: `POST
//! /v1/text-to-speech/{voice_id}/stream[/with-timestamps]?output_format=pcm_{rate}`
//! with a JSON body, answered with raw PCM (or JSON lines of base64 audio
//! and character alignment), or an error whose `detail` is
//! `{"status", "message"}` or a list of validation errors.

mod timestamps;

use serde::{Deserialize, Serialize};

use super::{BodyDecoder, Provider, SpeechRequest, Told};
use crate::config::{Config, VoiceSettings};

pub use timestamps::TimestampStream;

const USER_AGENT_ACCEPT: &str = "Accept: audio/pcm, application/octet-stream, application/json";

/// The request body. Fields that are not set are left out, so ElevenLabs
/// uses the voice's own settings.
#[derive(Serialize)]
struct Body<'a> {
    text: &'a str,
    model_id: &'a str,
    #[serde(skip_serializing_if = "Settings::is_empty")]
    voice_settings: Settings,
    #[serde(skip_serializing_if = "Option::is_none")]
    language_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apply_text_normalization: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pronunciation_dictionary_locators: Vec<DictionaryLocator<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_text: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    previous_request_ids: &'a [String],
}

/// `{"pronunciation_dictionary_id": .., "version_id": ..}`; without a
/// version ElevenLabs uses the dictionary's latest.
#[derive(Serialize)]
struct DictionaryLocator<'a> {
    pronunciation_dictionary_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<&'a str>,
}

#[derive(Serialize, Default, PartialEq)]
struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    stability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    similarity_boost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    style: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_speaker_boost: Option<bool>,
}

impl Settings {
    fn is_empty(&self) -> bool {
        *self == Settings::default()
    }
}

impl From<&VoiceSettings> for Settings {
    fn from(v: &VoiceSettings) -> Self {
        Settings {
            stability: v.stability,
            similarity_boost: v.similarity_boost,
            style: v.style,
            speed: v.speed,
            use_speaker_boost: v.use_speaker_boost,
        }
    }
}

fn body(req: &SpeechRequest) -> Body<'_> {
    let c = &req.config;
    Body {
        text: &req.text,
        model_id: &c.model_id,
        voice_settings: Settings::from(&c.voice_settings),
        language_code: c.language_code.as_deref(),
        seed: c.seed,
        apply_text_normalization: c.apply_text_normalization.as_deref(),
        pronunciation_dictionary_locators: c
            .pronunciation_dictionaries
            .iter()
            .map(|d| DictionaryLocator { pronunciation_dictionary_id: &d.id, version_id: d.version.as_deref() })
            .collect(),
        // ElevenLabs ignores previous_text when previous_request_ids are
        // given ("In case both previous_text and previous_request_ids is
        // send, previous_text will be ignored"): send one or the other.
        previous_text: if req.previous_request_ids.is_empty() { req.previous_text.as_deref() } else { None },
        next_text: req.next_text.as_deref(),
        previous_request_ids: &req.previous_request_ids,
    }
}

/// Whether an error body names a pronunciation dictionary: the status or
/// message of `{"detail":{"status","message"}}`, a plain-string detail, or
/// the `loc` of a validation item (`body.pronunciation_dictionary_locators…`).
fn names_dictionary(body: &[u8]) -> bool {
    let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
        return false;
    };
    let mentions = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.contains("pronunciation_dictionar") || s.contains("pronunciation dictionar")
    };
    match parsed.detail {
        Detail::Status { status, message } => {
            status.as_deref().is_some_and(mentions) || message.as_deref().is_some_and(mentions)
        }
        Detail::Validation(items) => items.iter().any(|item| {
            item.msg.as_deref().is_some_and(mentions) || item.loc.iter().any(|p| p.as_str().is_some_and(mentions))
        }),
        Detail::Text(s) => mentions(&s),
    }
}

/// ElevenLabs' error body.
#[derive(Deserialize)]
struct ErrorBody {
    detail: Detail,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Detail {
    Status { status: Option<String>, message: Option<String> },
    Validation(Vec<Invalid>),
    Text(String),
}

#[derive(Deserialize)]
struct Invalid {
    #[serde(default)]
    loc: Vec<serde_json::Value>,
    msg: Option<String>,
}

/// The ElevenLabs provider.
pub struct ElevenLabs;

impl ElevenLabs {
    fn path(req: &SpeechRequest) -> String {
        format!(
            "/v1/text-to-speech/{}/stream{}?output_format=pcm_{}",
            req.config.voice_id,
            if req.with_timestamps { "/with-timestamps" } else { "" },
            req.sample_rate
        )
    }
}

impl Provider for ElevenLabs {
    fn url(&self, base: &str, req: &SpeechRequest) -> String {
        format!("{base}{}", Self::path(req))
    }

    fn headers(&self, req: &SpeechRequest) -> Vec<String> {
        vec![
            format!("xi-api-key: {}", req.config.api_key),
            "Content-Type: application/json".to_owned(),
            USER_AGENT_ACCEPT.to_owned(),
            // No 100-continue round trip before the body.
            "Expect:".to_owned(),
        ]
    }

    fn probe(&self, base: &str, config: &Config) -> (String, Vec<String>) {
        // GET /v1/models: documented, free, and authenticated, so a warm
        // connection also proves the key.
        (
            format!("{base}/v1/models"),
            vec![format!("xi-api-key: {}", config.api_key), "Accept: application/json".to_owned()],
        )
    }

    fn body(&self, req: &SpeechRequest) -> String {
        serde_json::to_string(&body(req)).expect("a body of strings and numbers serializes")
    }

    fn identity(&self, req: &SpeechRequest) -> Vec<u8> {
        // The endpoint (voice, timestamps, output format) and the body: not
        // the host, which does not change the audio, nor the key. The body
        // as planned: stitching ids name earlier parts of the same SPEAK,
        // which the key already covers, and differ on every synthesis.
        let mut out = Self::path(req).into_bytes();
        out.push(b'\n');
        let body = if req.previous_request_ids.is_empty() {
            self.body(req)
        } else {
            self.body(&SpeechRequest { previous_request_ids: Vec::new(), ..req.clone() })
        };
        out.extend_from_slice(body.as_bytes());
        out
    }

    fn decoder(&self, req: &SpeechRequest) -> Option<Box<dyn BodyDecoder>> {
        req.with_timestamps.then(|| Box::new(TimestampStream::new(req.sample_rate)) as Box<dyn BodyDecoder>)
    }

    fn rejects_dictionary(&self, status: u32, body: &[u8]) -> bool {
        (400..500).contains(&status) && names_dictionary(body)
    }

    fn request_id_header(&self) -> Option<&'static str> {
        // Each answer names its generation in the `request-id` header;
        // that id is what `previous_request_ids` takes.
        Some("request-id")
    }

    fn read_header(&self, name: &str, value: &str) -> Option<Told> {
        // Documented response headers: what the request cost, and where
        // the account stands against its concurrency limit.
        let value = value.trim();
        if name.eq_ignore_ascii_case("character-cost") {
            value.parse().ok().map(Told::Characters)
        } else if name.eq_ignore_ascii_case("maximum-concurrent-requests") {
            value.parse().ok().map(Told::MaxConcurrency)
        } else if name.eq_ignore_ascii_case("x-region") {
            // Printable and short: it goes into a log line.
            let region: String = value.chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
            (!region.is_empty()).then_some(Told::Region(region))
        } else {
            None
        }
    }

    fn is_audio(&self, ct: &str, decoded: bool) -> bool {
        if decoded {
            ct.starts_with("application/json")
                || ct.starts_with("application/x-ndjson")
                || ct.starts_with("text/event-stream")
        } else {
            ct.starts_with("audio/") || ct.starts_with("application/octet-stream")
        }
    }

    fn error_detail(&self, body: &[u8]) -> (Option<String>, Option<String>) {
        let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
            return (None, None);
        };
        match parsed.detail {
            Detail::Status { status, message } => (status, message),
            Detail::Validation(items) => {
                let msgs: Vec<String> = items
                    .iter()
                    .filter_map(|item| {
                        let msg = item.msg.as_deref()?;
                        let loc: Vec<String> = item
                            .loc
                            .iter()
                            .map(|p| match p {
                                serde_json::Value::String(s) => s.clone(),
                                serde_json::Value::Number(n) => n.to_string(),
                                _ => String::new(),
                            })
                            .collect();
                        let loc = loc.join(".");
                        Some(if loc.is_empty() { msg.to_owned() } else { format!("{loc}: {msg}") })
                    })
                    .collect();
                (None, (!msgs.is_empty()).then(|| msgs.join("; ")))
            }
            Detail::Text(s) => (None, Some(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::config::Config;

    fn config() -> Config {
        Config::from_params(
            &[
                ("api_key".into(), "k".into()),
                ("voice_id".into(), "voice1".into()),
                ("base_url".into(), "http://127.0.0.1:1".into()),
            ],
            |_| unreachable!(),
        )
        .unwrap()
    }

    fn request(c: Config, text: &str) -> SpeechRequest {
        SpeechRequest::plain(Arc::new(c), text, 8000)
    }

    #[test]
    fn reads_what_the_headers_tell() {
        assert_eq!(ElevenLabs.read_header("Character-Cost", " 42"), Some(Told::Characters(42)));
        assert_eq!(ElevenLabs.read_header("maximum-concurrent-requests", "15"), Some(Told::MaxConcurrency(15)));
        assert_eq!(ElevenLabs.read_header("x-region", "us-central1"), Some(Told::Region("us-central1".into())));
        assert_eq!(ElevenLabs.read_header("character-cost", "lots"), None);
        assert_eq!(ElevenLabs.read_header("current-concurrent-requests", "3"), None);
    }

    #[test]
    fn url_names_voice_and_rate() {
        let mut r = request(config(), "hi");
        assert_eq!(
            ElevenLabs.url(&r.config.base_url, &r),
            "http://127.0.0.1:1/v1/text-to-speech/voice1/stream?output_format=pcm_8000"
        );
        r.with_timestamps = true;
        assert_eq!(
            ElevenLabs.url(&r.config.base_url, &r),
            "http://127.0.0.1:1/v1/text-to-speech/voice1/stream/with-timestamps?output_format=pcm_8000"
        );
        assert_eq!(
            ElevenLabs.url("https://api.eu.residency.elevenlabs.io", &r),
            "https://api.eu.residency.elevenlabs.io/v1/text-to-speech/voice1/stream/with-timestamps?output_format=pcm_8000"
        );
    }

    #[test]
    fn body_carries_text_model_and_only_set_settings() {
        let mut c = config();
        let v: Value = serde_json::from_str(&ElevenLabs.body(&request(c.clone(), "say \"hi\"\n"))).unwrap();
        assert_eq!(v["text"], "say \"hi\"\n");
        assert_eq!(v["model_id"], "eleven_flash_v2_5");
        assert!(v.get("voice_settings").is_none());
        assert!(v.get("language_code").is_none());

        c.voice_settings = VoiceSettings { stability: Some(0.5), use_speaker_boost: Some(true), ..Default::default() };
        c.language_code = Some("de".into());
        let mut r = request(c, "x");
        r.previous_text = Some("before".into());
        r.next_text = Some("after".into());
        let v: Value = serde_json::from_str(&ElevenLabs.body(&r)).unwrap();
        assert_eq!(v["voice_settings"]["stability"], 0.5);
        assert_eq!(v["voice_settings"]["use_speaker_boost"], true);
        assert!(v["voice_settings"].get("style").is_none());
        assert_eq!(v["language_code"], "de");
        assert_eq!(v["previous_text"], "before");
        assert_eq!(v["next_text"], "after");
    }

    #[test]
    fn identity_has_what_shapes_the_audio_and_never_the_key() {
        let r = request(config(), "hi");
        let id = String::from_utf8(ElevenLabs.identity(&r)).unwrap();
        assert!(id.contains("voice1") && id.contains("pcm_8000") && id.contains("\"hi\""), "{id}");
        assert!(!id.contains("127.0.0.1") && !id.contains("\"k\""), "{id}");
        let mut other = r.clone();
        other.sample_rate = 16000;
        assert_ne!(ElevenLabs.identity(&other), ElevenLabs.identity(&r));
    }

    #[test]
    fn error_bodies_are_read() {
        let body = br#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;
        assert_eq!(ElevenLabs.error_detail(body), (Some("invalid_api_key".into()), Some("Invalid API key".into())));
        let body = br#"{"detail":[{"loc":["body","text"],"msg":"field required","type":"value_error.missing"}]}"#;
        assert_eq!(ElevenLabs.error_detail(body), (None, Some("body.text: field required".into())));
        assert_eq!(ElevenLabs.error_detail(b"<html>oops</html>"), (None, None));
        assert_eq!(ElevenLabs.error_detail(br#"{"detail":"plain words"}"#), (None, Some("plain words".into())));
    }

    #[test]
    fn dictionaries_are_locators_in_order_with_versions_only_when_given() {
        let mut c = config();
        let v: Value = serde_json::from_str(&ElevenLabs.body(&request(c.clone(), "x"))).unwrap();
        assert!(v.get("pronunciation_dictionary_locators").is_none());
        c.pronunciation_dictionaries = vec![
            crate::config::Locator { id: "dictA".into(), version: Some("v7".into()) },
            crate::config::Locator { id: "dictB".into(), version: None },
        ];
        let with = request(c, "x");
        let v: Value = serde_json::from_str(&ElevenLabs.body(&with)).unwrap();
        assert_eq!(
            v["pronunciation_dictionary_locators"],
            serde_json::json!([
                {"pronunciation_dictionary_id": "dictA", "version_id": "v7"},
                {"pronunciation_dictionary_id": "dictB"}
            ])
        );
        assert_ne!(ElevenLabs.identity(&with), ElevenLabs.identity(&request(config(), "x")));
    }

    #[test]
    fn request_ids_replace_previous_text_and_stay_out_of_the_key() {
        let mut r = request(config(), "x");
        r.previous_text = Some("before".into());
        r.next_text = Some("after".into());
        let planned = ElevenLabs.identity(&r);
        r.previous_request_ids = vec!["id1".into(), "id2".into()];
        let v: Value = serde_json::from_str(&ElevenLabs.body(&r)).unwrap();
        assert_eq!(v["previous_request_ids"], serde_json::json!(["id1", "id2"]));
        assert!(v.get("previous_text").is_none(), "ignored by ElevenLabs next to the ids");
        assert_eq!(v["next_text"], "after");
        assert_eq!(ElevenLabs.identity(&r), planned);
    }

    #[test]
    fn dictionary_rejections_are_told_from_other_errors() {
        let not_found = br#"{"detail":{"status":"pronunciation_dictionary_not_found","message":"Pronunciation dictionary dictX was not found."}}"#;
        assert!(ElevenLabs.rejects_dictionary(404, not_found));
        assert!(ElevenLabs.rejects_dictionary(400, br#"{"detail":{"status":"invalid_request","message":"Pronunciation dictionary version v9 does not exist"}}"#));
        let invalid = br#"{"detail":[{"loc":["body","pronunciation_dictionary_locators",0,"version_id"],"msg":"str type expected","type":"type_error.str"}]}"#;
        assert!(ElevenLabs.rejects_dictionary(422, invalid));
        assert!(!ElevenLabs.rejects_dictionary(500, not_found), "a server error is not the dictionary's fault");
        assert!(!ElevenLabs.rejects_dictionary(
            404,
            br#"{"detail":{"status":"voice_not_found","message":"A voice with the voice_id provided was not found."}}"#
        ));
        assert!(!ElevenLabs.rejects_dictionary(400, b"<html>"));
    }
}
