//! A SPEAK as its worker plays it: upstream requests (each with the
//! settings its SSML style asks for), pauses and marks, in order, all into
//! one buffer generation so that they play back to back.
//!
//! Built on the MRCP Server thread from the parsed body and the headers
//! (pure computation, no IO). Precedence: SSML over SPEAK headers over
//! SET-PARAMS (merged into the headers by the server) over engine params.

use std::sync::Arc;

use crate::cache::{Key, KeyInput};
use crate::config::Config;
use crate::speak_params::{self, Refusal, Resolved};
use crate::ssml::{Script, Segment, Speech};

/// Text for one request (split further at sentence ends when it is longer
/// than the model takes), in one voice and style.
#[derive(Clone, Debug)]
pub struct Utterance {
    pub text: String,
    pub config: Arc<Config>,
    /// Linear gain for its samples (Prosody-Volume, `<prosody volume>`).
    pub gain: f32,
    /// (char offset into `text`, name) of the `<mark>`s in it.
    pub marks: Vec<(usize, String)>,
}

#[derive(Clone, Debug)]
pub enum Step {
    Say(Utterance),
    /// Silence (`<break>`).
    Pause {
        ms: u32,
    },
    /// A mark reached once everything before it has played.
    Mark(String),
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The settings the headers chose (the first utterance may differ).
    pub config: Arc<Config>,
}

impl Plan {
    pub fn has_marks(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Say(u) => !u.marks.is_empty(),
            Step::Mark(_) => true,
            Step::Pause { .. } => false,
        })
    }

    /// Characters sent upstream, for log lines.
    pub fn chars(&self) -> usize {
        self.steps.iter().map(|s| if let Step::Say(u) = s { u.text.chars().count() } else { 0 }).sum()
    }

    /// The cache key of everything that shapes this SPEAK's audio. A plain
    /// SPEAK (one utterance at unit gain) keys as a single request, so it
    /// shares entries with the warm-up file.
    pub fn cache_key(&self, sample_rate: u32) -> Key {
        let say_key = |u: &Utterance| {
            let parts = crate::split::split_for_requests(&u.text, u.config.max_request_chars());
            let c = &u.config;
            KeyInput {
                parts: &parts,
                voice_id: &c.voice_id,
                model_id: &c.model_id,
                sample_rate,
                settings: &c.voice_settings,
                language_code: c.language_code.as_deref(),
                seed: c.seed,
                text_normalization: c.apply_text_normalization.as_deref(),
                pronunciation_dictionaries: &[],
            }
            .key()
        };
        if let [Step::Say(u)] = self.steps.as_slice() {
            if u.gain == 1.0 {
                return say_key(u);
            }
        }
        let encoded: Vec<Vec<u8>> = self
            .steps
            .iter()
            .map(|step| match step {
                Step::Say(u) => {
                    let mut e = vec![b'S'];
                    e.extend_from_slice(say_key(u).as_bytes());
                    e.extend_from_slice(&u.gain.to_bits().to_le_bytes());
                    e
                }
                Step::Pause { ms } => {
                    let mut e = vec![b'P'];
                    e.extend_from_slice(&ms.to_le_bytes());
                    e
                }
                Step::Mark(_) => vec![b'M'], // no audio of its own
            })
            .collect();
        Key::of_sequence(&encoded)
    }
}

/// The plan for a parsed body under the settings its headers resolved to
/// (`speak_params::resolve`).
pub fn build(script: &Script, resolved: Resolved, base: &Config) -> Result<Plan, Refusal> {
    let mut steps = Vec::with_capacity(script.segments.len());
    for segment in &script.segments {
        steps.push(match segment {
            Segment::Speech(speech) => Step::Say(utterance(speech, &resolved, base)?),
            Segment::Pause { ms } => Step::Pause { ms: *ms },
            Segment::Mark(name) => Step::Mark(name.clone()),
        });
    }
    Ok(Plan { steps, config: Arc::new(resolved.config) })
}

fn utterance(speech: &Speech, resolved: &Resolved, base: &Config) -> Result<Utterance, Refusal> {
    let style = &speech.style;
    let mut c = resolved.config.clone();
    // The innermost known name; SSML leaves the choice to the processor
    // when a voice cannot be found, so an unknown one falls back to the
    // enclosing names, then the gender in scope, then the SPEAK's voice.
    let names = &style.voice_names;
    match names.iter().rev().find_map(|n| speak_params::voice_by_name(base, n.trim())) {
        Some(id) => c.voice_id = id,
        None => {
            if let Some(id) = style.gender.and_then(|g| speak_params::voice_by_gender(base, g)) {
                c.voice_id = id;
            }
        }
    }
    if let Some(unknown) = names.last().filter(|n| speak_params::voice_by_name(base, n.trim()).is_none()) {
        log::warn!("SSML <voice name='{unknown}'> is not in voice_map nor a voice id: using {}", c.voice_id);
    }
    if let Some(lang) = &style.lang {
        speak_params::apply_language(&mut c, lang)?;
    }
    if style.rate.absolute.is_some() || style.rate.factor != 1.0 {
        let from = style.rate.absolute.unwrap_or_else(|| c.voice_settings.speed.unwrap_or(1.0));
        c.voice_settings.speed = Some(speak_params::clamp_speed(from * style.rate.factor));
    }
    let gain = if style.volume.absolute.is_none() && style.volume.factor == 1.0 {
        resolved.gain
    } else {
        speak_params::clamp_gain(style.volume.absolute.unwrap_or(f64::from(resolved.gain)) * style.volume.factor)
    };
    Ok(Utterance { text: speech.text.clone(), config: Arc::new(c), gain, marks: speech.marks.clone() })
}

/// One request of an utterance after splitting: its text and the marks
/// inside it (char offsets into that text).
#[derive(Debug, PartialEq)]
pub struct Part {
    pub text: String,
    pub marks: Vec<(usize, String)>,
}

/// Splits an utterance at sentence ends under its model's limit, keeping
/// each mark with the part whose text it precedes (a mark at the very end
/// stays at the end of the last part).
pub fn parts(u: &Utterance) -> Vec<Part> {
    let texts = crate::split::split_for_requests(&u.text, u.config.max_request_chars());
    // Where each part starts and ends in the utterance, in chars: parts are
    // trimmed slices of the (whitespace-folded) text, in order.
    let mut ranges = Vec::with_capacity(texts.len());
    let mut from = 0usize; // byte offset searched from
    for t in &texts {
        let at = u.text[from..].find(t.as_str()).map_or(from, |i| from + i);
        let start = u.text[..at].chars().count();
        ranges.push((start, start + t.chars().count()));
        from = (at + t.len()).min(u.text.len());
    }
    let mut out: Vec<Part> = texts.into_iter().map(|text| Part { text, marks: Vec::new() }).collect();
    for (offset, name) in &u.marks {
        let i = ranges.iter().position(|&(_, end)| *offset < end).unwrap_or(ranges.len().saturating_sub(1));
        let (start, end) = ranges.get(i).copied().unwrap_or((0, 0));
        if let Some(part) = out.get_mut(i) {
            part.marks.push((offset.saturating_sub(start).min(end - start), name.clone()));
        }
    }
    out
}

/// Whether a part needs character alignment: a mark strictly inside it.
/// Marks at either end sit where known byte counts put them.
pub fn needs_alignment(part: &Part) -> bool {
    let n = part.text.chars().count();
    part.marks.iter().any(|&(offset, _)| offset > 0 && offset < n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speak_params::SpeakHeaders;
    use crate::ssml::{Scale, Style};

    fn build(script: &Script, headers: &SpeakHeaders, base: &Config) -> Result<Plan, Refusal> {
        super::build(script, speak_params::resolve(base, headers)?, base)
    }

    fn base() -> Config {
        let p: Vec<(String, String)> = [
            ("api_key", "k"),
            ("voice_id", "defaultVoice"),
            ("voice_map", "Rachel=21m00Tcm4TlvDq8ikWAM"),
            ("voice_id_male", "maleVoice"),
            ("max_request_chars", "40"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Config::from_params(&p, |_| unreachable!()).unwrap()
    }

    fn speech(text: &str, style: Style) -> Segment {
        Segment::Speech(Speech { text: text.into(), style, marks: vec![] })
    }

    #[test]
    fn styles_override_headers() {
        let headers = SpeakHeaders {
            prosody_rate: Some(speak_params::Rate::Relative(1.1)),
            prosody_volume: Some(speak_params::Volume::Numeric(25.0)),
            ..Default::default()
        };
        let script = Script {
            segments: vec![
                speech("Plain.", Style::default()),
                Segment::Pause { ms: 300 },
                speech(
                    "Styled.",
                    Style {
                        voice_names: vec!["rachel".into()],
                        lang: Some("de-DE".into()),
                        rate: Scale { absolute: Some(0.85), factor: 1.0 },
                        volume: Scale { absolute: None, factor: 2.0 },
                        ..Default::default()
                    },
                ),
                speech("Male.", Style { gender: Some(crate::sys::VOICE_GENDER_MALE), ..Default::default() }),
                Segment::Mark("end".into()),
            ],
        };
        let plan = build(&script, &headers, &base()).unwrap();
        let says: Vec<&Utterance> =
            plan.steps.iter().filter_map(|s| if let Step::Say(u) = s { Some(u) } else { None }).collect();
        assert_eq!(says[0].config.voice_id, "defaultVoice");
        assert_eq!(says[0].config.voice_settings.speed, Some(1.1f32 as f64));
        assert_eq!(says[0].gain, 0.5);
        assert_eq!(says[1].config.voice_id, "21m00Tcm4TlvDq8ikWAM");
        assert_eq!(says[1].config.language_code.as_deref(), Some("de"));
        assert_eq!(says[1].config.voice_settings.speed, Some(0.85));
        assert_eq!(says[1].gain, 1.0, "relative volume compounds on the header's");
        assert_eq!(says[2].config.voice_id, "maleVoice");
        assert!(plan.has_marks());
        let lang = Script { segments: vec![speech("x", Style { lang: Some("xx".into()), ..Default::default() })] };
        assert!(matches!(build(&lang, &SpeakHeaders::default(), &base()), Err(Refusal::Language(_))));
    }

    #[test]
    fn an_unknown_voice_name_falls_back_to_the_enclosing_one_then_the_gender() {
        let say = |style: Style| {
            let script = Script { segments: vec![speech("x", style)] };
            let plan = build(&script, &SpeakHeaders::default(), &base()).unwrap();
            match &plan.steps[0] {
                Step::Say(u) => u.config.voice_id.clone(),
                _ => unreachable!(),
            }
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            say(Style { voice_names: names(&["Rachel", "No Such Voice"]), ..Default::default() }),
            "21m00Tcm4TlvDq8ikWAM"
        );
        let male = Some(crate::sys::VOICE_GENDER_MALE);
        assert_eq!(
            say(Style { voice_names: names(&["No Such Voice"]), gender: male, ..Default::default() }),
            "maleVoice"
        );
        assert_eq!(say(Style { voice_names: names(&["No Such Voice"]), ..Default::default() }), "defaultVoice");
    }

    #[test]
    fn plain_speaks_key_like_the_warm_up_and_scripts_apart() {
        let plain = build(&crate::ssml::plain("Hello."), &SpeakHeaders::default(), &base()).unwrap();
        let c = base();
        let parts = vec!["Hello.".to_owned()];
        let warm = KeyInput {
            parts: &parts,
            voice_id: &c.voice_id,
            model_id: &c.model_id,
            sample_rate: 8000,
            settings: &c.voice_settings,
            language_code: None,
            seed: None,
            text_normalization: None,
            pronunciation_dictionaries: &[],
        }
        .key();
        assert_eq!(plain.cache_key(8000), warm);
        let mut paused = plain.clone();
        paused.steps.push(Step::Pause { ms: 500 });
        let mut longer = plain.clone();
        longer.steps.push(Step::Pause { ms: 600 });
        assert_ne!(paused.cache_key(8000), plain.cache_key(8000));
        assert_ne!(paused.cache_key(8000), longer.cache_key(8000));
    }

    #[test]
    fn marks_follow_their_part() {
        let c = Arc::new(base());
        let text = "First sentence is here. Second one, marked here. Third.";
        let at = |s: &str| text[..text.find(s).unwrap()].chars().count();
        let u = Utterance {
            text: text.into(),
            config: c,
            gain: 1.0,
            marks: vec![(0, "start".into()), (at("marked"), "mid".into()), (text.chars().count(), "end".into())],
        };
        let parts = parts(&u);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0].marks, vec![(0, "start".to_owned())]);
        assert_eq!(parts[1].text, "Second one, marked here. Third.");
        let second = "Second one, marked here. Third.".len();
        assert_eq!(parts[1].marks, vec![("Second one, ".len(), "mid".to_owned()), (second, "end".to_owned())]);
        assert!(!needs_alignment(&parts[0]));
        assert!(needs_alignment(&parts[1]));
    }
}
