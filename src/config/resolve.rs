//! What one SPEAK asks for, from its MRCP headers, resolved against the
//! engine params into the settings sent upstream.
//!
//! Precedence (README): SSML over SPEAK headers over SET-PARAMS over engine
//! params. The server merges SET-PARAMS values into each SPEAK's headers,
//! so here a header is a header; Vendor-Specific-Parameters, being the
//! ElevenLabs-native way to say it, win over the generic MRCP headers.

use super::{too_many_dictionaries, valid_voice_id, Config, Locator, MAX_DICTIONARIES};
use crate::mrcp::{Rate, RateLabel, SpeakHeaders, VoiceGender, Volume, VolumeLabel};

/// The settings of one SPEAK.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The engine config with this SPEAK's choices applied.
    pub config: Config,
    /// Linear gain for the samples (Prosody-Volume); 1.0 leaves them as sent.
    pub gain: f32,
}

/// Why a SPEAK cannot be spoken as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 005 language-unsupported.
    Language(String),
    /// A header value we cannot honour (409).
    Value(String),
    /// 006 lexicon-load-failure: pronunciation dictionaries that cannot be
    /// used (too many, or a `<lexicon>` that is not an ElevenLabs one).
    Lexicon(String),
}

/// ElevenLabs' `speed` range.
const SPEED_MIN: f64 = 0.7;
const SPEED_MAX: f64 = 1.2;

/// Languages per model family (ISO 639-1, as ElevenLabs names them).
const MULTILINGUAL_V2: &[&str] = &[
    "en", "ja", "zh", "de", "hi", "fr", "ko", "pt", "it", "es", "id", "nl", "tr", "fil", "pl", "sv", "bg", "ro", "ar",
    "cs", "el", "fi", "hr", "ms", "sk", "da", "ta", "uk", "ru",
];
const V2_5_EXTRA: &[&str] = &["hu", "no", "vi"];

/// Which languages `model` speaks (None: not known here, accept any), and
/// whether it takes `language_code` (only the v2.5 models do; the others
/// detect the language from the text and reject the field).
fn languages(model: &str) -> (Option<Vec<&'static str>>, bool) {
    match model {
        "eleven_flash_v2_5" | "eleven_turbo_v2_5" => {
            (Some(MULTILINGUAL_V2.iter().chain(V2_5_EXTRA).copied().collect()), true)
        }
        "eleven_multilingual_v2" => (Some(MULTILINGUAL_V2.to_vec()), false),
        "eleven_flash_v2" | "eleven_turbo_v2" | "eleven_monolingual_v1" => (Some(vec!["en"]), false),
        _ => (None, false),
    }
}

/// "en-US" → "en"; "fil-PH" → "fil".
fn primary_subtag(tag: &str) -> String {
    tag.split(['-', '_']).next().unwrap_or("").trim().to_ascii_lowercase()
}

fn rate_speed(rate: Rate, base: f64) -> Option<f64> {
    let speed = match rate {
        Rate::Label(l) => match l {
            RateLabel::XSlow => 0.7,
            RateLabel::Slow => 0.85,
            RateLabel::Medium => 1.0,
            RateLabel::Fast => 1.1,
            RateLabel::XFast => 1.2,
            RateLabel::Default => return None, // the voice's own
        },
        // UniMRCP parses "150%" as 150 (the sign is dropped): no one means
        // a ten-fold speed, so a value of 10 or more is a percentage.
        Rate::Relative(r) if r.is_finite() && r >= 10.0 => base * f64::from(r) / 100.0,
        Rate::Relative(r) if r.is_finite() && r > 0.0 => base * f64::from(r),
        Rate::Relative(_) => return None,
    };
    Some(speed.clamp(SPEED_MIN, SPEED_MAX))
}

fn volume_gain(volume: Volume) -> f32 {
    let gain = match volume {
        Volume::Label(l) => match l {
            VolumeLabel::Silent => 0.0,
            VolumeLabel::XSoft => 0.25,
            VolumeLabel::Soft => 0.5,
            VolumeLabel::Loud => 1.41,
            VolumeLabel::XLoud => 2.0,
            VolumeLabel::Medium | VolumeLabel::Default => 1.0,
        },
        Volume::Numeric(n) if n.is_finite() => n / 50.0,
        // SSML 1.0: "+10" / "-5.5" change the 0–100 scale (medium is 50).
        Volume::Relative(r) if r.is_finite() => (50.0 + r) / 50.0,
        _ => 1.0,
    };
    gain.clamp(0.0, 4.0)
}

fn vendor_key(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    n.strip_prefix("elevenlabs.").map(str::to_owned).unwrap_or(n)
}

fn unit(name: &str, value: &str, min: f64, max: f64) -> Result<f64, Refusal> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (min..=max).contains(v))
        .ok_or_else(|| Refusal::Value(format!("Vendor-Specific-Parameters {name}={value} is outside {min}..={max}")))
}

/// The voice id a Voice-Name (or SSML `<voice name>`) means: a name from
/// `voice_map` (any case), else the value itself when it is a voice id.
pub fn voice_by_name(base: &Config, name: &str) -> Option<String> {
    match base.voice_map.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, id)) => Some(id.clone()),
        None if valid_voice_id(name) => Some(name.to_owned()),
        None => None,
    }
}

/// The configured default voice for a VOICE_GENDER_* value, if any.
pub fn voice_by_gender(base: &Config, gender: VoiceGender) -> Option<String> {
    match gender {
        VoiceGender::Male => base.voice_id_male.clone(),
        VoiceGender::Female => base.voice_id_female.clone(),
        VoiceGender::Neutral => base.voice_id_neutral.clone(),
    }
}

/// Applies a BCP 47 language to `c` (after its model is final): refused
/// when the model does not speak it; sent as `language_code` only to
/// models that take one.
pub fn apply_language(c: &mut Config, tag: &str) -> Result<(), Refusal> {
    let lang = primary_subtag(tag);
    if lang.is_empty() {
        return Ok(());
    }
    let (supported, takes_code) = languages(&c.model_id);
    if supported.is_some_and(|list| !list.contains(&lang.as_str())) {
        return Err(Refusal::Language(format!("model {} does not speak '{lang}'", c.model_id)));
    }
    c.language_code = takes_code.then_some(lang);
    Ok(())
}

/// The dictionaries of a SPEAK, refused (006) when there are more than
/// ElevenLabs applies.
pub fn dictionaries(list: Vec<Locator>) -> Result<Vec<Locator>, Refusal> {
    if list.len() > MAX_DICTIONARIES {
        return Err(Refusal::Lexicon(too_many_dictionaries(list.len())));
    }
    Ok(list)
}

/// Whether `model` takes `previous_request_ids` (request stitching):
/// ElevenLabs documents it for every model but `eleven_v3`.
pub fn takes_request_ids(model: &str) -> bool {
    !model.starts_with("eleven_v3")
}

/// Whether `model` reads ElevenLabs `<phoneme>` tags inline (the English
/// v1/v2 models do; the others skip the tagged word).
pub fn takes_phonemes(model: &str) -> bool {
    matches!(model, "eleven_flash_v2" | "eleven_turbo_v2" | "eleven_monolingual_v1")
}

/// `speed` within what the API accepts.
pub fn clamp_speed(speed: f64) -> f64 {
    speed.clamp(SPEED_MIN, SPEED_MAX)
}

/// A gain within what we apply (silence to four times as loud).
pub fn clamp_gain(gain: f64) -> f32 {
    (gain as f32).clamp(0.0, 4.0)
}

pub fn resolve(base: &Config, h: &SpeakHeaders) -> Result<Resolved, Refusal> {
    let mut c = base.clone();
    // Voice: by name (configured map) or id, else by gender.
    if let Some(name) = h.voice_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        c.voice_id = voice_by_name(base, name)
            .ok_or_else(|| Refusal::Value(format!("unknown Voice-Name '{name}' (not in voice_map, not a voice id)")))?;
    } else if let Some(gender) = h.voice_gender {
        if let Some(id) = voice_by_gender(base, gender) {
            c.voice_id = id;
        }
    }
    if let Some(rate) = h.prosody_rate {
        if let Some(speed) = rate_speed(rate, base.voice_settings.speed.unwrap_or(1.0)) {
            c.voice_settings.speed = Some(speed);
        }
    }
    let mut gain = h.prosody_volume.map_or(1.0, volume_gain);
    let mut language = h.speech_language.as_deref().map(primary_subtag).filter(|l| !l.is_empty());

    for (name, value) in &h.vendor {
        let v = value.trim();
        match vendor_key(name).as_str() {
            "voice_id" if valid_voice_id(v) => c.voice_id = v.to_owned(),
            "model_id" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) => {
                c.model_id = v.to_owned()
            }
            "voice_id" | "model_id" => {
                return Err(Refusal::Value(format!("Vendor-Specific-Parameters {name}={v} is not a valid id")))
            }
            "stability" => c.voice_settings.stability = Some(unit(name, v, 0.0, 1.0)?),
            "similarity_boost" => c.voice_settings.similarity_boost = Some(unit(name, v, 0.0, 1.0)?),
            "style" => c.voice_settings.style = Some(unit(name, v, 0.0, 1.0)?),
            "speed" => c.voice_settings.speed = Some(unit(name, v, SPEED_MIN, SPEED_MAX)?),
            "use_speaker_boost" => {
                c.voice_settings.use_speaker_boost = Some(match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => {
                        return Err(Refusal::Value(format!("Vendor-Specific-Parameters {name}={v} is not true/false")))
                    }
                })
            }
            "seed" => {
                c.seed = Some(v.parse().map_err(|_| {
                    Refusal::Value(format!(
                        "Vendor-Specific-Parameters {name}={v} is not a whole number in 0..=4294967295"
                    ))
                })?)
            }
            "apply_text_normalization" | "text_normalization" => match v.to_ascii_lowercase().as_str() {
                n @ ("auto" | "on" | "off") => c.apply_text_normalization = Some(n.to_owned()),
                _ => return Err(Refusal::Value(format!("Vendor-Specific-Parameters {name}={v}: auto, on or off"))),
            },
            "language_code" => language = Some(primary_subtag(v)).filter(|l| !l.is_empty()),
            "pronunciation_dictionaries" => {
                let list = Locator::parse_list(v)
                    .map_err(|e| Refusal::Value(format!("Vendor-Specific-Parameters {name}: {e}")))?;
                c.pronunciation_dictionaries = dictionaries(list)?;
            }
            "volume_gain" => gain = unit(name, v, 0.0, 4.0)? as f32,
            other => log::debug!("Vendor-Specific-Parameters: '{other}' is not ours, ignored"),
        }
    }

    // The SPEAK's language, else the engine's: checked against the model
    // either way, and sent only to models that take a language_code.
    if let Some(lang) = language.or_else(|| c.language_code.clone()) {
        apply_language(&mut c, &lang)?;
    }
    Ok(Resolved { config: c, gain })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        let p: Vec<(String, String)> = [
            ("api_key", "k"),
            ("voice_id", "defaultVoice"),
            ("voice_map", "Rachel=21m00Tcm4TlvDq8ikWAM; Adam = pNInz6obpgDQGcFmaJgB"),
            ("voice_id_female", "femaleVoice"),
            ("voice_id_male", "maleVoice"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Config::from_params(&p, |_| unreachable!()).unwrap()
    }

    fn with(f: impl FnOnce(&mut SpeakHeaders)) -> Result<Resolved, Refusal> {
        let mut h = SpeakHeaders::default();
        f(&mut h);
        resolve(&base(), &h)
    }

    #[test]
    fn voice_by_name_id_or_gender() {
        assert_eq!(with(|h| h.voice_name = Some("rachel".into())).unwrap().config.voice_id, "21m00Tcm4TlvDq8ikWAM");
        assert_eq!(with(|h| h.voice_name = Some("Adam".into())).unwrap().config.voice_id, "pNInz6obpgDQGcFmaJgB");
        assert_eq!(with(|h| h.voice_name = Some("someVoiceId".into())).unwrap().config.voice_id, "someVoiceId");
        assert!(matches!(with(|h| h.voice_name = Some("Mary Poppins".into())), Err(Refusal::Value(_))));
        assert_eq!(with(|h| h.voice_gender = Some(VoiceGender::Female)).unwrap().config.voice_id, "femaleVoice");
        assert_eq!(with(|h| h.voice_gender = Some(VoiceGender::Neutral)).unwrap().config.voice_id, "defaultVoice");
        let named = with(|h| {
            h.voice_name = Some("Adam".into());
            h.voice_gender = Some(VoiceGender::Female);
        });
        assert_eq!(named.unwrap().config.voice_id, "pNInz6obpgDQGcFmaJgB", "a name beats a gender");
    }

    #[test]
    fn rate_becomes_a_clamped_speed() {
        let speed = |r| with(|h| h.prosody_rate = Some(r)).unwrap().config.voice_settings.speed;
        assert_eq!(speed(Rate::Label(RateLabel::XSlow)), Some(0.7));
        assert_eq!(speed(Rate::Label(RateLabel::Fast)), Some(1.1));
        assert_eq!(speed(Rate::Label(RateLabel::Default)), None);
        assert_eq!(speed(Rate::Relative(1.1)), Some(1.1f32 as f64));
        assert_eq!(speed(Rate::Relative(3.0)), Some(1.2));
        assert_eq!(speed(Rate::Relative(0.1)), Some(0.7));
        assert_eq!(speed(Rate::Relative(90.0)), Some(0.9), "'90%' reaches us as 90");
    }

    #[test]
    fn volume_becomes_a_gain() {
        let gain = |v| with(|h| h.prosody_volume = Some(v)).unwrap().gain;
        assert_eq!(gain(Volume::Label(VolumeLabel::Silent)), 0.0);
        assert_eq!(gain(Volume::Label(VolumeLabel::Soft)), 0.5);
        assert_eq!(gain(Volume::Label(VolumeLabel::Medium)), 1.0);
        assert_eq!(gain(Volume::Numeric(100.0)), 2.0);
        assert_eq!(gain(Volume::Relative(10.0)), 1.2);
        assert_eq!(gain(Volume::Relative(-25.0)), 0.5);
        assert_eq!(gain(Volume::Relative(-80.0)), 0.0);
        assert_eq!(gain(Volume::Relative(500.0)), 4.0);
    }

    #[test]
    fn language_is_checked_and_sent_only_where_the_model_takes_it() {
        let r = with(|h| h.speech_language = Some("de-DE".into())).unwrap();
        assert_eq!(r.config.language_code.as_deref(), Some("de"));
        assert_eq!(
            with(|h| h.speech_language = Some("xx-YY".into())),
            Err(Refusal::Language("model eleven_flash_v2_5 does not speak 'xx'".into()))
        );
        let multilingual = with(|h| {
            h.speech_language = Some("fr-FR".into());
            h.vendor = vec![("model_id".into(), "eleven_multilingual_v2".into())];
        })
        .unwrap();
        assert_eq!(multilingual.config.model_id, "eleven_multilingual_v2");
        assert_eq!(multilingual.config.language_code, None, "multilingual v2 detects the language itself");
        assert!(matches!(
            with(|h| {
                h.speech_language = Some("vi".into());
                h.vendor = vec![("model_id".into(), "eleven_multilingual_v2".into())];
            }),
            Err(Refusal::Language(_))
        ));
    }

    #[test]
    fn the_engine_language_is_checked_like_a_speaks() {
        let mut engine = base();
        engine.language_code = Some("xx".into());
        assert!(matches!(resolve(&engine, &SpeakHeaders::default()), Err(Refusal::Language(_))));
        let own = SpeakHeaders { speech_language: Some("de".into()), ..Default::default() };
        assert_eq!(resolve(&engine, &own).unwrap().config.language_code.as_deref(), Some("de"));
        engine.language_code = Some("fr".into());
        engine.model_id = "eleven_multilingual_v2".into();
        assert_eq!(resolve(&engine, &SpeakHeaders::default()).unwrap().config.language_code, None);
    }

    #[test]
    fn vendor_parameters_set_any_elevenlabs_setting() {
        let r = with(|h| {
            h.prosody_rate = Some(Rate::Label(RateLabel::Slow));
            h.vendor = vec![
                ("elevenlabs.stability".into(), "0.2".into()),
                ("similarity_boost".into(), "0.9".into()),
                ("style".into(), "0.3".into()),
                ("speed".into(), "1.15".into()),
                ("use_speaker_boost".into(), "false".into()),
                ("seed".into(), "42".into()),
                ("apply_text_normalization".into(), "off".into()),
                ("voice_id".into(), "vendorVoice".into()),
                ("other.vendor".into(), "ignored".into()),
            ];
        })
        .unwrap();
        let vs = &r.config.voice_settings;
        assert_eq!((vs.stability, vs.similarity_boost, vs.style), (Some(0.2), Some(0.9), Some(0.3)));
        assert_eq!(vs.speed, Some(1.15), "vendor params win over Prosody-Rate");
        assert_eq!(vs.use_speaker_boost, Some(false));
        assert_eq!(r.config.seed, Some(42));
        assert_eq!(r.config.apply_text_normalization.as_deref(), Some("off"));
        assert_eq!(r.config.voice_id, "vendorVoice");
        assert!(matches!(with(|h| h.vendor = vec![("stability".into(), "7".into())]), Err(Refusal::Value(_))));
    }

    #[test]
    fn vendor_dictionaries_replace_the_engines() {
        let mut engine = base();
        engine.pronunciation_dictionaries = vec![Locator { id: "engineDict".into(), version: None }];
        let vendor = |v: &str| SpeakHeaders {
            vendor: vec![("elevenlabs.pronunciation_dictionaries".into(), v.into())],
            ..Default::default()
        };
        assert_eq!(resolve(&engine, &SpeakHeaders::default()).unwrap().config.pronunciation_dictionaries.len(), 1);
        let r = resolve(&engine, &vendor("a:1, b")).unwrap();
        assert_eq!(
            r.config.pronunciation_dictionaries,
            vec![Locator { id: "a".into(), version: Some("1".into()) }, Locator { id: "b".into(), version: None }]
        );
        assert_eq!(resolve(&engine, &vendor("")).unwrap().config.pronunciation_dictionaries, vec![]);
        assert!(matches!(resolve(&engine, &vendor("a b")), Err(Refusal::Value(_))));
        match resolve(&engine, &vendor("a,b,c,d")) {
            Err(Refusal::Lexicon(why)) => assert!(why.contains("at most 3"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(takes_request_ids("eleven_multilingual_v2") && !takes_request_ids("eleven_v3"));
    }
}
