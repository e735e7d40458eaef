//! A SPEAK as its worker plays it: upstream requests (each with the
//! settings its SSML style asks for), pauses and marks, in order, all into
//! one buffer generation so that they play back to back.
//!
//! Built on the MRCP Server thread from the parsed body and the headers
//! (pure computation, no IO). Precedence: SSML over SPEAK headers over
//! SET-PARAMS (merged into the headers by the server) over engine params.

use std::sync::Arc;

use crate::cache::Key;
use crate::config::{self, Config, Locator, Refusal, Resolved};
use crate::text::{split_for_requests, Script, Segment, Speech};
use crate::tts::{Provider, SpeechRequest};

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

    /// The cache key of everything that shapes this SPEAK's audio: each
    /// request as `provider` identifies it, pauses and gains. A plain SPEAK
    /// (one utterance at unit gain) keys as its requests alone, so it
    /// shares entries with the warm-up file.
    pub fn cache_key(&self, sample_rate: u32, provider: &dyn Provider) -> Key {
        let say_key = |u: &Utterance| {
            let identities: Vec<Vec<u8>> = requests(u, sample_rate).iter().map(|(_, r)| provider.identity(r)).collect();
            Key::of_requests(&identities)
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
/// (`config::resolve`).
pub fn build(script: &Script, mut resolved: Resolved, base: &Config) -> Result<Plan, Refusal> {
    // SSML's <lexicon>s apply to the whole document and replace the
    // dictionaries the headers or the engine chose.
    if !script.lexicons.is_empty() {
        let list = script.lexicons.iter().map(|uri| lexicon(uri)).collect::<Result<Vec<_>, _>>()?;
        resolved.config.pronunciation_dictionaries = config::dictionaries(list)?;
    }
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

/// The URI scheme of an SSML `<lexicon>` naming an ElevenLabs dictionary.
const LEXICON_SCHEME: &str = "elevenlabs:";

/// `<lexicon uri="elevenlabs:ID[:VERSION]">` as a dictionary locator;
/// nothing else can be loaded (the plugin fetches nothing).
fn lexicon(uri: &str) -> Result<Locator, Refusal> {
    let refuse = |why: String| Refusal::Lexicon(format!("<lexicon uri=\"{uri}\">: {why}"));
    if uri.is_empty() {
        return Err(Refusal::Lexicon("<lexicon> without a uri".to_owned()));
    }
    let has_scheme =
        uri.len() >= LEXICON_SCHEME.len() && uri[..LEXICON_SCHEME.len()].eq_ignore_ascii_case(LEXICON_SCHEME);
    if !has_scheme {
        return Err(refuse(
            "only ElevenLabs dictionaries (elevenlabs:ID or elevenlabs:ID:VERSION) are loaded".to_owned(),
        ));
    }
    Locator::parse(&uri[LEXICON_SCHEME.len()..]).map_err(refuse)
}

fn utterance(speech: &Speech, resolved: &Resolved, base: &Config) -> Result<Utterance, Refusal> {
    let style = &speech.style;
    let mut c = resolved.config.clone();
    // The innermost known name; SSML leaves the choice to the processor
    // when a voice cannot be found, so an unknown one falls back to the
    // enclosing names, then the gender in scope, then the SPEAK's voice.
    let names = &style.voice_names;
    match names.iter().rev().find_map(|n| config::voice_by_name(base, n.trim())) {
        Some(id) => c.voice_id = id,
        None => {
            if let Some(id) = style.gender.and_then(|g| config::voice_by_gender(base, g)) {
                c.voice_id = id;
            }
        }
    }
    if let Some(unknown) = names.last().filter(|n| config::voice_by_name(base, n.trim()).is_none()) {
        log::warn!("SSML <voice name='{unknown}'> is not in voice_map nor a voice id: using {}", c.voice_id);
    }
    if let Some(lang) = &style.lang {
        config::apply_language(&mut c, lang)?;
    }
    if style.rate.absolute.is_some() || style.rate.factor != 1.0 {
        let from = style.rate.absolute.unwrap_or_else(|| c.voice_settings.speed.unwrap_or(1.0));
        c.voice_settings.speed = Some(config::clamp_speed(from * style.rate.factor));
    }
    let gain = if style.volume.absolute.is_none() && style.volume.factor == 1.0 {
        resolved.gain
    } else {
        config::clamp_gain(style.volume.absolute.unwrap_or(f64::from(resolved.gain)) * style.volume.factor)
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
    let texts = split_for_requests(&u.text, u.config.max_request_chars());
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

/// Context for continuity across parts: ElevenLabs conditions the
/// prosody on the text around a request; a few hundred characters do.
const CONTEXT_CHARS: usize = 300;

fn context_tail(text: &str) -> &str {
    let n = text.chars().count();
    let skip = n.saturating_sub(CONTEXT_CHARS);
    text.char_indices().nth(skip).map_or(text, |(i, _)| &text[i..])
}

fn context_head(text: &str) -> &str {
    text.char_indices().nth(CONTEXT_CHARS).map_or(text, |(i, _)| &text[..i])
}

/// The upstream requests of an utterance, one per part, each with the text
/// around it: what the worker sends, the warm-up sends, and the cache key
/// is made of (one function, so they cannot disagree).
pub fn requests(u: &Utterance, sample_rate: u32) -> Vec<(Part, SpeechRequest)> {
    let parts = parts(u);
    let requests: Vec<SpeechRequest> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| SpeechRequest {
            config: Arc::clone(&u.config),
            text: part.text.clone(),
            sample_rate,
            previous_text: i.checked_sub(1).map(|p| context_tail(&parts[p].text).to_owned()),
            next_text: parts.get(i + 1).map(|n| context_head(&n.text).to_owned()),
            previous_request_ids: Vec::new(),
            gain: u.gain,
            with_timestamps: needs_alignment(part),
        })
        .collect();
    parts.into_iter().zip(requests).collect()
}

/// ElevenLabs takes at most this many `previous_request_ids`.
const MAX_STITCHED: usize = 3;

/// Request stitching: a part sent after others of the same utterance names
/// the upstream's ids of those parts (`previous_request_ids`, at most 3, in
/// the order they were generated, the most recent last), so that the voice
/// carries on from the audio actually generated rather than from its text.
/// ElevenLabs ignores `previous_text` when it gets both, so the body then
/// carries no `previous_text` (`next_text` stays: the next parts do not
/// exist yet). Only on models that take the ids (not `eleven_v3`), and only
/// when the part just before has an id: a part whose audio did not come
/// from a request of ours (a cache entry, or an upstream that sent no
/// `request-id`) has none, and this part keeps its text fields.
/// `before`: the ids of the utterance's earlier parts, in order.
pub fn stitch(request: &mut SpeechRequest, before: &[Option<String>]) {
    if !config::takes_request_ids(&request.config.model_id) {
        return;
    }
    let known: Vec<String> = before.iter().rev().map_while(Clone::clone).take(MAX_STITCHED).collect();
    request.previous_request_ids = known.into_iter().rev().collect();
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
    use crate::mrcp::{SpeakHeaders, VoiceGender};
    use crate::text::ssml::{Scale, Style};
    use crate::tts::elevenlabs::ElevenLabs;

    fn build(script: &Script, headers: &SpeakHeaders, base: &Config) -> Result<Plan, Refusal> {
        super::build(script, config::resolve(base, headers)?, base)
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
            prosody_rate: Some(crate::mrcp::Rate::Relative(1.1)),
            prosody_volume: Some(crate::mrcp::Volume::Numeric(25.0)),
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
                speech("Male.", Style { gender: Some(VoiceGender::Male), ..Default::default() }),
                Segment::Mark("end".into()),
            ],
            ..Default::default()
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
        let lang = Script {
            segments: vec![speech("x", Style { lang: Some("xx".into()), ..Default::default() })],
            ..Default::default()
        };
        assert!(matches!(build(&lang, &SpeakHeaders::default(), &base()), Err(Refusal::Language(_))));
    }

    #[test]
    fn an_unknown_voice_name_falls_back_to_the_enclosing_one_then_the_gender() {
        let say = |style: Style| {
            let script = Script { segments: vec![speech("x", style)], ..Default::default() };
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
        let male = Some(VoiceGender::Male);
        assert_eq!(
            say(Style { voice_names: names(&["No Such Voice"]), gender: male, ..Default::default() }),
            "maleVoice"
        );
        assert_eq!(say(Style { voice_names: names(&["No Such Voice"]), ..Default::default() }), "defaultVoice");
    }

    #[test]
    fn plain_speaks_key_like_their_requests_and_scripts_apart() {
        let plain = build(&crate::text::ssml::plain("Hello."), &SpeakHeaders::default(), &base()).unwrap();
        let request = SpeechRequest::plain(Arc::new(base()), "Hello.", 8000);
        let alone = Key::of_requests(&[ElevenLabs.identity(&request)]);
        assert_eq!(plain.cache_key(8000, &ElevenLabs), alone);
        assert_ne!(plain.cache_key(16000, &ElevenLabs), alone);
        let mut paused = plain.clone();
        paused.steps.push(Step::Pause { ms: 500 });
        let mut longer = plain.clone();
        longer.steps.push(Step::Pause { ms: 600 });
        assert_ne!(paused.cache_key(8000, &ElevenLabs), plain.cache_key(8000, &ElevenLabs));
        assert_ne!(paused.cache_key(8000, &ElevenLabs), longer.cache_key(8000, &ElevenLabs));
    }

    #[test]
    fn requests_carry_the_text_around_them() {
        let u = Utterance {
            text: "First sentence is here. Second one is here too. Third.".into(),
            config: Arc::new(base()),
            gain: 1.0,
            marks: vec![],
        };
        let reqs = requests(&u, 8000);
        assert_eq!(reqs.len(), 2, "max_request_chars 40");
        assert_eq!(reqs[0].1.previous_text, None);
        assert_eq!(reqs[0].1.next_text.as_deref(), Some(reqs[1].0.text.as_str()));
        assert_eq!(reqs[1].1.previous_text.as_deref(), Some(reqs[0].0.text.as_str()));
        assert_eq!(reqs[1].1.next_text, None);
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

    #[test]
    fn lexicons_replace_the_dictionaries_or_refuse_the_speak() {
        let mut engine = base();
        engine.pronunciation_dictionaries = vec![Locator { id: "engineDict".into(), version: None }];
        let with = |uris: &[&str]| {
            let mut script = crate::text::ssml::plain("Hi.");
            script.lexicons = uris.iter().map(|u| u.to_string()).collect();
            build(&script, &SpeakHeaders::default(), &engine)
        };
        let dicts = |plan: Plan| match &plan.steps[0] {
            Step::Say(u) => u.config.pronunciation_dictionaries.clone(),
            _ => unreachable!(),
        };
        assert_eq!(dicts(with(&[]).unwrap()), engine.pronunciation_dictionaries);
        assert_eq!(
            dicts(with(&["elevenlabs:a", "ElevenLabs:b:v2"]).unwrap()),
            vec![Locator { id: "a".into(), version: None }, Locator { id: "b".into(), version: Some("v2".into()) }]
        );
        for bad in [
            &["elevenlabs:a", "elevenlabs:b", "elevenlabs:c", "elevenlabs:d"][..],
            &["https://example.com/lex.pls"],
            &["elevenlabs:"],
            &["elevenlabs:a b"],
            &[""],
        ] {
            assert!(matches!(with(bad), Err(Refusal::Lexicon(_))), "{bad:?}");
        }
        match with(&["http://x/l.pls"]) {
            Err(Refusal::Lexicon(why)) => {
                assert!(why.contains("http://x/l.pls") && why.contains("elevenlabs:"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stitching_names_the_parts_before_most_recent_last() {
        let u = Utterance {
            text: "First sentence is here. Second one is here too. Third.".into(),
            config: Arc::new(base()),
            gain: 1.0,
            marks: vec![],
        };
        let mut req = requests(&u, 8000).remove(1).1;
        let ids = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        stitch(&mut req, &ids(&["r1", "r2", "r3", "r4"]));
        assert_eq!(req.previous_request_ids, vec!["r2", "r3", "r4"]);
        stitch(&mut req, &[Some("r1".into()), None, Some("r3".into())]);
        assert_eq!(req.previous_request_ids, vec!["r3"], "only the run of known ids just before");
        stitch(&mut req, &[Some("r1".into()), None]);
        assert!(req.previous_request_ids.is_empty(), "after a part without an id: the text fields");
        let mut c = base();
        c.model_id = "eleven_v3".into();
        req.config = Arc::new(c);
        stitch(&mut req, &ids(&["r1"]));
        assert!(req.previous_request_ids.is_empty(), "eleven_v3 takes no request ids");
    }
}
