//! SSML (W3C Speech Synthesis Markup Language 1.0/1.1) read into a
//! [`Script`]: what to say, in which style, with pauses and marks between.
//!
//! ElevenLabs takes text (and, on some models, inline `<phoneme>` tags), so
//! each SSML element ends up as one of:
//! * text the model reads naturally: `<say-as>`, `<sub>`, sentence ends;
//! * the style of one upstream request: `<voice>`, `<prosody>`, `xml:lang`
//!   (a change of style starts a new segment, i.e. a new request);
//! * silence we make ourselves: `<break>`;
//! * a position in the text: `<mark>`.
//!
//! Nothing is fetched: `<audio>` speaks its fallback content, and a
//! `<lexicon>` only names a dictionary that ElevenLabs holds
//! (`elevenlabs:ID[:VERSION]`, see [`Script::lexicons`]). The tree is walked without recursion, so a deeply nested body
//! cannot exhaust the stack of the thread reading it.

use crate::mrcp::VoiceGender;
use roxmltree::{Document, Node, NS_XML_URI};

/// A SPEAK body as an ordered list of what to play.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Script {
    pub segments: Vec<Segment>,
    /// The `uri` of each `<lexicon>`, as written, in document order (an
    /// absent `uri` is an empty string). SSML 1.0 puts them directly in
    /// `<speak>`, applying to the whole document; the plan turns them into
    /// the SPEAK's pronunciation dictionaries or refuses them (006).
    pub lexicons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// Text for one upstream request, in one style.
    Speech(Speech),
    /// Silence of this length (from `<break>`); consecutive breaks are
    /// merged (summed), zero-length ones dropped.
    Pause { ms: u32 },
    /// A `<mark>` with no speech after it (at the very end, or only pauses
    /// follow): reached once everything before it has played.
    Mark(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Speech {
    /// Whitespace folded (runs → one space), trimmed; exactly what goes
    /// upstream (including any inline `<phoneme>` tags).
    pub text: String,
    pub style: Style,
    /// (offset in chars into `text`, mark name); offsets non-decreasing,
    /// each <= `text.chars().count()`.
    pub marks: Vec<(usize, String)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Style {
    /// `<voice name="...">`s in scope, innermost last: the first of them,
    /// from the inside out, that names a known voice is used.
    pub voice_names: Vec<String>,
    /// `<voice gender="...">`.
    pub gender: Option<VoiceGender>,
    /// `xml:lang` in scope, as written (e.g. "de-DE").
    pub lang: Option<String>,
    /// `<prosody rate>`: the speed.
    pub rate: Scale,
    /// `<prosody volume>`: a linear gain.
    pub volume: Scale,
}

/// An absolute value set by a label (None: inherit what the MRCP
/// headers/engine say) times a relative factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub absolute: Option<f64>,
    pub factor: f64,
}

impl Default for Scale {
    fn default() -> Self {
        Scale { absolute: None, factor: 1.0 }
    }
}

impl Script {
    /// Nothing to play: no Speech and no Pause (marks alone are not worth a
    /// SPEAK).
    pub fn is_empty(&self) -> bool {
        !self.segments.iter().any(|s| matches!(s, Segment::Speech(_) | Segment::Pause { .. }))
    }

    /// All speech text joined with single spaces: what tests compare.
    #[cfg(test)]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            if let Segment::Speech(s) = segment {
                if !out.is_empty() && !s.text.is_empty() {
                    out.push(' ');
                }
                out.push_str(&s.text);
            }
        }
        out
    }
}

/// A plain-text body as a one-segment script (default style, no marks);
/// empty Script if the text is blank.
pub fn plain(text: &str) -> Script {
    // Plain text goes upstream as written (only trimmed): its line breaks
    // are the author's, and both split.rs and the model read them.
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.chars().all(is_space) {
        return Script::default();
    }
    Script {
        segments: vec![Segment::Speech(Speech { text: text.to_owned(), style: Style::default(), marks: Vec::new() })],
        lexicons: Vec::new(),
    }
}

const SSML_NS: &str = "http://www.w3.org/2001/10/synthesis";

/// The longest single `<break>` (SSML sets no limit): one element cannot
/// hold the channel in silence for longer.
const MAX_BREAK_MS: u32 = 30_000;

/// Parses an SSML document. `phonemes`: the model takes ElevenLabs
/// `<phoneme>` tags inline. Err is the reason for a 002 parse-failure.
#[cfg(test)]
pub fn parse(doc: &str, phonemes: bool) -> Result<Script, String> {
    parse_in(doc, phonemes, None)
}

/// As [`parse`], for a SPEAK whose language (Speech-Language, possibly from
/// SET-PARAMS) is `lang`: the language in scope wherever the document sets
/// no `xml:lang`. It decides language-specific readings (`<say-as>`
/// ordinals and dates); requests get their language from the headers.
pub fn parse_in(doc: &str, phonemes: bool, lang: Option<&str>) -> Result<Script, String> {
    // Default options: no DTD, hence no external or recursive entities.
    let tree = Document::parse(doc).map_err(|e| match e {
        roxmltree::Error::DtdDetected => "a DOCTYPE is not accepted (SSML bodies take no DTD or entities)".to_owned(),
        e => format!("malformed XML: {e}"),
    })?;
    let root = tree.root_element();
    let name = root.tag_name();
    if name.name() != "speak" {
        return Err(format!("root element is <{}>, not <speak>", name.name()));
    }
    if let Some(ns) = name.namespace().filter(|&ns| ns != SSML_NS) {
        return Err(format!("root element <speak> is in namespace '{ns}', not {SSML_NS}"));
    }
    let mut reader = Reader { b: Builder::default(), phonemes, lang: lang.map(str::to_owned), lexicons: Vec::new() };
    reader.walk(root)?;
    let mut script = reader.b.finish();
    script.lexicons = reader.lexicons;
    Ok(script)
}

/// What an element still has to do once its children have been read.
struct Frame {
    style: Style,
    /// A `<p>`/`<s>`: `Builder::pieces` when it opened.
    sentence_from: Option<usize>,
    /// Stands between words (paragraphs, sentences, voices).
    separates: bool,
}

struct Reader {
    b: Builder,
    phonemes: bool,
    /// The SPEAK's language where no `xml:lang` is in scope.
    lang: Option<String>,
    /// `<lexicon uri>`s seen.
    lexicons: Vec<String>,
}

impl Reader {
    /// Depth-first over `root` with an explicit stack of open elements.
    fn walk(&mut self, root: Node) -> Result<(), String> {
        let no_style = Style::default();
        let mut stack: Vec<(Node, Frame)> = Vec::new();
        let mut cur = Some(root);
        while let Some(node) = cur {
            let parent_style = stack.last().map_or(&no_style, |(_, f)| &f.style);
            if let Some(frame) = self.enter(node, parent_style)? {
                if let Some(child) = node.first_child() {
                    stack.push((node, frame));
                    cur = Some(child);
                    continue;
                }
                self.leave(frame);
            }
            // `node` is done: on to its next sibling, closing the elements
            // whose last child it was. Nothing beside the root is content.
            cur = None;
            let mut done = node;
            loop {
                if !stack.is_empty() {
                    if let Some(sibling) = done.next_sibling() {
                        cur = Some(sibling);
                        break;
                    }
                }
                match stack.pop() {
                    Some((parent, frame)) => {
                        self.leave(frame);
                        done = parent;
                    }
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Reads one node; Some(frame) when its children are to be read too.
    fn enter(&mut self, node: Node, parent_style: &Style) -> Result<Option<Frame>, String> {
        if node.is_text() {
            self.b.text(node.text().unwrap_or(""), parent_style);
            return Ok(None);
        }
        if !node.is_element() {
            return Ok(None); // comments, processing instructions
        }
        let mut style = parent_style.clone();
        if let Some(lang) = node.attribute((NS_XML_URI, "lang")) {
            // xml:lang="" means "no language" (XML 1.0 §2.12).
            style.lang = Some(lang.trim()).filter(|l| !l.is_empty()).map(str::to_owned);
        }
        let tag = node.tag_name();
        let name = match tag.namespace() {
            None | Some(SSML_NS) => tag.name(),
            Some(_) => "", // a vendor extension: unknown, its content spoken
        };
        let mut frame = Frame { style, sentence_from: None, separates: false };
        match name {
            "speak" => frame.separates = true,
            "p" | "paragraph" | "s" | "sentence" => {
                frame.separates = true;
                frame.sentence_from = Some(self.b.pieces);
            }
            "voice" => {
                voice(node, &mut frame.style)?;
                frame.separates = true;
            }
            "prosody" => {
                if let Some(v) = node.attribute("rate") {
                    frame.style.rate = rate(v, frame.style.rate)?;
                }
                if let Some(v) = node.attribute("volume") {
                    frame.style.volume = volume(v, frame.style.volume)?;
                }
            }
            "break" => {
                self.b.pause(break_ms(node)?);
                return Ok(None);
            }
            "mark" => {
                let name = node.attribute("name").map(str::trim).filter(|n| !n.is_empty());
                let name = name.ok_or("<mark> without a name")?;
                self.b.mark(name.to_owned());
                return Ok(None);
            }
            "say-as" => {
                let said = say_as(node, frame.style.lang.as_deref().or(self.lang.as_deref()));
                self.b.text(&said, &frame.style);
                return Ok(None);
            }
            "sub" => {
                if let Some(alias) = node.attribute("alias").filter(|a| !fold(a).is_empty()) {
                    self.b.text(alias, &frame.style);
                    return Ok(None);
                }
                // No alias: the content is all there is to say.
            }
            "phoneme" => {
                if let Some(tag) = self.phoneme(node) {
                    self.b.piece(&tag, &frame.style);
                    return Ok(None);
                }
            }
            "lexicon" => {
                self.lexicons.push(node.attribute("uri").unwrap_or("").trim().to_owned());
                return Ok(None);
            }
            "desc" | "meta" | "metadata" => return Ok(None),
            // <audio> is never fetched: its content is the fallback, inline
            // like emphasis ("friends<audio ...>, enjoy</audio>.").
            "audio" | "emphasis" | "lang" | "token" | "w" | "lookup" => {}
            _ => log::debug!("SSML: <{}> is not an element we know; its content is spoken", tag.name()),
        }
        if frame.separates {
            self.b.space = true;
        }
        Ok(Some(frame))
    }

    fn leave(&mut self, frame: Frame) {
        if let Some(from) = frame.sentence_from {
            self.b.end_sentence(from);
        }
        if frame.separates {
            self.b.space = true;
        }
    }

    /// The ElevenLabs `<phoneme>` tag for `node`, when the model takes one
    /// and the alphabet is one ElevenLabs knows.
    fn phoneme(&self, node: Node) -> Option<String> {
        if !self.phonemes {
            return None;
        }
        let alphabet = match node.attribute("alphabet")?.trim().to_ascii_lowercase().as_str() {
            "ipa" => "ipa",
            "cmu-arpabet" | "x-cmu" | "x-arpabet" | "arpabet" => "cmu-arpabet",
            _ => return None,
        };
        let ph = fold(node.attribute("ph")?);
        let word = fold(&content(node));
        if ph.is_empty() || word.is_empty() {
            return None;
        }
        // The word is escaped too: the tag must stay well-formed for the
        // upstream parser whatever the word holds.
        Some(format!(r#"<phoneme alphabet="{alphabet}" ph="{}">{}</phoneme>"#, escape(&ph), escape(&word)))
    }
}

/// Builds the segments as content arrives in document order.
#[derive(Default)]
struct Builder {
    segments: Vec<Segment>,
    /// The open Speech (never with empty text) and its length in chars.
    open: Option<(Speech, usize)>,
    /// A word boundary is due before the next piece of text. Kept as a
    /// flag rather than a space in the text, so no segment ever starts or
    /// ends with a space.
    space: bool,
    /// Marks met while no Speech was open: they go to the next one.
    waiting: Vec<String>,
    /// How many pieces of text have been added, to tell whether a
    /// sentence said anything.
    pieces: usize,
}

impl Builder {
    /// Adds text, folding its whitespace.
    fn text(&mut self, text: &str, style: &Style) {
        for (i, word) in text.split(is_space).enumerate() {
            if i > 0 {
                self.space = true;
            }
            if !word.is_empty() {
                self.piece(word, style);
            }
        }
    }

    /// Adds `piece` (no whitespace at either end) in `style`.
    fn piece(&mut self, piece: &str, style: &Style) {
        if self.open.as_ref().is_some_and(|(s, _)| s.style != *style) {
            self.close();
        }
        let waiting = &mut self.waiting;
        let (speech, chars) = self.open.get_or_insert_with(|| {
            let marks = waiting.drain(..).map(|name| (0, name)).collect();
            (Speech { text: String::new(), style: style.clone(), marks }, 0)
        });
        if self.space && *chars > 0 {
            speech.text.push(' ');
            *chars += 1;
        }
        self.space = false;
        speech.text.push_str(piece);
        *chars += piece.chars().count();
        self.pieces += 1;
    }

    /// A mark sits where it stands in the folded text: after a due space,
    /// i.e. at the start of the next word ("Hello, <mark/>world" marks
    /// "world"), which is when the listener has heard what precedes it.
    /// Should the segment close before that space is written, `close`
    /// brings the offset back to the end.
    fn mark(&mut self, name: String) {
        match &mut self.open {
            Some((speech, chars)) => speech.marks.push((*chars + usize::from(self.space), name)),
            None => self.waiting.push(name),
        }
    }

    fn pause(&mut self, ms: u32) {
        if ms == 0 {
            // strength="none": no pause, and no reason to split the
            // request; still a word boundary.
            self.space = true;
            return;
        }
        self.close();
        match self.segments.last_mut() {
            Some(Segment::Pause { ms: before }) => *before = before.saturating_add(ms),
            _ => self.segments.push(Segment::Pause { ms }),
        }
    }

    /// The end of a `<p>` or `<s>` that said something: make the model hear
    /// it, unless the text already ends a sentence.
    fn end_sentence(&mut self, pieces_before: usize) {
        self.space = true;
        if self.pieces == pieces_before {
            return;
        }
        let Some((speech, chars)) = &mut self.open else {
            return; // a break already ended the request, and so the sentence
        };
        const CLOSERS: &[char] = &['"', '\'', '”', '’', '»', ')', ']', '}', '」', '』'];
        const FINAL: &[char] = &['.', '!', '?', '…', ':', ';', '。', '！', '？'];
        let text = &mut speech.text;
        let body = text.trim_end_matches(CLOSERS);
        let unclosed = body.len() == text.len();
        match body.chars().last() {
            None => {}
            Some(c) if FINAL.contains(&c) => {}
            // The author ended the sentence at a comma: a comma followed
            // by a full stop reads oddly, so the stop takes its place.
            Some(',') if unclosed => {
                text.pop();
                text.push('.');
            }
            Some('，' | '、') if unclosed => {
                text.pop();
                text.push('。');
            }
            Some(_) => {
                text.push('.');
                *chars += 1;
            }
        }
    }

    fn close(&mut self) {
        if let Some((mut speech, chars)) = self.open.take() {
            // The due space is not written at the end of a segment.
            for (offset, _) in &mut speech.marks {
                *offset = (*offset).min(chars);
            }
            self.segments.push(Segment::Speech(speech));
        }
    }

    fn finish(mut self) -> Script {
        self.close();
        self.segments.extend(self.waiting.drain(..).map(Segment::Mark));
        Script { segments: self.segments, lexicons: Vec::new() }
    }
}

/// Whitespace for folding. Control characters count too: they have no
/// sound, and keeping them would only put them in the request.
fn is_space(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// Runs of whitespace to one space, trimmed.
fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// All the text inside `node`, markup removed.
fn content(node: Node) -> String {
    node.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn voice(node: Node, style: &mut Style) -> Result<(), String> {
    let gender = match node.attribute("gender") {
        None => None,
        Some(gender) => Some(match gender.trim().to_ascii_lowercase().as_str() {
            "male" => VoiceGender::Male,
            "female" => VoiceGender::Female,
            "neutral" => VoiceGender::Neutral,
            _ => return Err(format!("voice gender='{gender}' is not male, female or neutral")),
        }),
    };
    match node.attribute("name").map(str::trim).filter(|n| !n.is_empty()) {
        // An enclosing name stays as the fallback should this one be unknown.
        Some(name) => style.voice_names.push(name.to_owned()),
        // A gender alone asks for another voice than the named one in scope.
        None if gender.is_some() => style.voice_names.clear(),
        None => {}
    }
    if gender.is_some() {
        style.gender = gender;
    }
    Ok(())
}

/// An unsigned decimal ("12", "1.5", ".5"). `str::parse::<f64>` alone
/// would also take signs, exponents, "inf" and "NaN".
fn decimal(text: &str) -> Option<f64> {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let dots = text.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != text.len() {
        return None;
    }
    text.parse().ok()
}

/// A relative rate as a multiplier: "150%" → 1.5, "+10%" → 1.1,
/// "-20%" → 0.8, "1.2" → 1.2.
fn multiplier(text: &str) -> Option<f64> {
    let Some(percent) = text.strip_suffix('%') else {
        return decimal(text);
    };
    Some(match (percent.strip_prefix('+'), percent.strip_prefix('-')) {
        (Some(up), _) => 1.0 + decimal(up)? / 100.0,
        (_, Some(down)) => 1.0 - decimal(down)? / 100.0,
        _ => decimal(percent)? / 100.0,
    })
}

fn rate(value: &str, inherited: Scale) -> Result<Scale, String> {
    let absolute = match value.trim().to_ascii_lowercase().as_str() {
        "x-slow" => 0.7,
        "slow" => 0.85,
        "medium" => 1.0,
        "fast" => 1.1,
        "x-fast" => 1.2,
        "default" => return Ok(Scale::default()),
        relative => {
            // Zero or less would be no speech at all, not a rate.
            return multiplier(relative)
                .map(|m| m * inherited.factor)
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(|factor| Scale { factor, ..inherited })
                .ok_or_else(|| format!("prosody rate='{value}' is not a rate"));
        }
    };
    Ok(Scale { absolute: Some(absolute), factor: 1.0 })
}

fn volume(value: &str, inherited: Scale) -> Result<Scale, String> {
    let bad = || format!("prosody volume='{value}' is not a volume");
    let absolute = match value.trim().to_ascii_lowercase().as_str() {
        "silent" => 0.0,
        "x-soft" => 0.25,
        "soft" => 0.5,
        "medium" => 1.0,
        "loud" => 1.41,
        "x-loud" => 2.0,
        "default" => return Ok(Scale::default()),
        other => {
            if let Some(db) = other.strip_suffix("db").map(str::trim_end) {
                // The sign is SSML's; an unsigned value is read as a gain.
                let db = match (db.strip_prefix('+'), db.strip_prefix('-')) {
                    (Some(up), _) => decimal(up),
                    (_, Some(down)) => decimal(down).map(|d| -d),
                    _ => decimal(db),
                };
                let factor = db.map(|db| inherited.factor * 10f64.powf(db / 20.0)).filter(|f| f.is_finite());
                return factor.map(|factor| Scale { factor, ..inherited }).ok_or_else(bad);
            }
            decimal(other).filter(|n| *n <= 100.0).ok_or_else(bad)? / 50.0
        }
    };
    Ok(Scale { absolute: Some(absolute), factor: 1.0 })
}

fn break_ms(node: Node) -> Result<u32, String> {
    // time wins over strength; only the attribute used is checked.
    let ms = if let Some(time) = node.attribute("time") {
        let t = time.trim().to_ascii_lowercase();
        let (number, unit) = match t.strip_suffix("ms") {
            Some(n) => (n, 1.0),
            None => (t.strip_suffix('s').unwrap_or("x"), 1000.0),
        };
        let ms = decimal(number.trim_end())
            .ok_or_else(|| format!("break time='{time}' is not a time like 500ms or 1.5s"))?;
        (ms * unit).round()
    } else {
        match node.attribute("strength").map(str::trim) {
            None | Some("medium") => 400.0,
            Some("none") => 0.0,
            Some("x-weak") => 100.0,
            Some("weak") => 200.0,
            Some("strong") => 700.0,
            Some("x-strong") => 1000.0,
            Some(other) => return Err(format!("break strength='{other}' is not a strength")),
        }
    };
    Ok(ms.min(f64::from(MAX_BREAK_MS)) as u32)
}

/// Whether English-only readings (ordinal suffixes, month names) fit the
/// language in scope.
fn english(lang: Option<&str>) -> bool {
    lang.map_or(true, |l| l.split(['-', '_']).next().is_some_and(|p| p.eq_ignore_ascii_case("en")))
}

/// `<say-as>` as words the model reads the intended way. Whatever we do
/// not know is spoken as written: never dropped.
fn say_as(node: Node, lang: Option<&str>) -> String {
    let text = fold(&content(node));
    if text.is_empty() {
        return text;
    }
    let interpret = node.attribute("interpret-as").unwrap_or("").trim().to_ascii_lowercase();
    // "number:digits" is the SSML 1.0 draft's way of saying
    // interpret-as="number" format="digits".
    let (kind, sub) = interpret.split_once(':').unwrap_or((interpret.as_str(), ""));
    let format = node.attribute("format").map(|f| f.trim().to_ascii_lowercase()).unwrap_or_else(|| sub.to_owned());
    let kind = match (kind, format.as_str()) {
        ("number", "digits") => "digits",
        ("number", "ordinal") => "ordinal",
        (kind, _) => kind,
    };
    match kind {
        "characters" | "spell-out" | "letters" | "verbatim" | "digits" => spell(&text),
        "ordinal" if english(lang) => ordinal(&text).unwrap_or(text),
        "telephone" => telephone(&text).unwrap_or(text),
        "date" if english(lang) => date(&text, &format).unwrap_or(text),
        "expletive" | "bleep" => "beep".to_owned(),
        _ => text, // cardinal, number, time, currency, measure, address, …
    }
}

/// Every character on its own: "IBM" → "I B M".
fn spell(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars().filter(|&c| !is_space(c)) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// "1" → "1st", "12" → "12th", "102" → "102nd"; None unless all digits.
fn ordinal(digits: &str) -> Option<String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.trim_start_matches('0');
    let n = if n.is_empty() { "0" } else { n };
    // Only the last two digits choose the suffix; no overflow on long ones.
    let last_two: u32 = n[n.len().saturating_sub(2)..].parse().ok()?;
    let suffix = match (last_two % 100, last_two % 10) {
        (11..=13, _) => "th",
        (_, 1) => "st",
        (_, 2) => "nd",
        (_, 3) => "rd",
        _ => "th",
    };
    Some(format!("{n}{suffix}"))
}

/// "555-0100" → "5 5 5, 0 1 0 0": each group spelled, a short pause (the
/// comma) between groups. None when there are no digits.
fn telephone(text: &str) -> Option<String> {
    if !text.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let groups: Vec<String> = text.split(|c: char| !c.is_alphanumeric()).filter(|g| !g.is_empty()).map(spell).collect();
    Some(groups.join(", "))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A numeric date in English words: "2024-03-05" → "March 5th, 2024".
/// None when the parts do not fit the format.
fn date(text: &str, format: &str) -> Option<String> {
    let parts: Vec<&str> = text.split(['-', '/', '.']).map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let four_digit = |p: &&str| p.len() == 4;
    let format = match (format, parts.len()) {
        ("", 3) if parts.first().is_some_and(four_digit) => "ymd",
        ("", 3) => "mdy",
        ("", 2) if parts.first().is_some_and(four_digit) => "ym",
        ("", 2) if parts.last().is_some_and(four_digit) => "my",
        ("", 2) => "md",
        (f @ ("mdy" | "dmy" | "ymd" | "ym" | "my" | "md" | "dm"), n) if f.len() == n => f,
        _ => return None,
    };
    let (mut year, mut month, mut day) = (None, None, None);
    for (field, part) in format.chars().zip(parts) {
        match field {
            'y' => year = Some(part),
            'm' => month = Some(part.parse::<usize>().ok().filter(|m| (1..=12).contains(m))?),
            _ => day = Some(part.parse::<u32>().ok().filter(|d| (1..=31).contains(d))?),
        }
    }
    let month = MONTHS[month? - 1];
    let day = day.and_then(|d| ordinal(&d.to_string()));
    Some(match (day, year) {
        (Some(day), Some(year)) => format!("{month} {day}, {year}"),
        (Some(day), None) => format!("{month} {day}"),
        (None, Some(year)) => format!("{month} {year}"),
        (None, None) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speak(body: &str) -> String {
        format!(r#"<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis">{body}</speak>"#)
    }

    fn script(body: &str) -> Script {
        parse(&speak(body), false).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn err(body: &str) -> String {
        parse(&speak(body), false).expect_err(body)
    }

    fn speech(text: &str, style: Style, marks: &[(usize, &str)]) -> Segment {
        let marks = marks.iter().map(|&(o, n)| (o, n.to_owned())).collect();
        Segment::Speech(Speech { text: text.into(), style, marks })
    }

    fn said(text: &str) -> Segment {
        speech(text, Style::default(), &[])
    }

    /// The text of a document whose content is all in one style.
    fn text(body: &str) -> String {
        script(body).text()
    }

    fn styles(body: &str) -> Vec<Style> {
        script(body)
            .segments
            .into_iter()
            .filter_map(|s| match s {
                Segment::Speech(s) => Some(s.style),
                _ => None,
            })
            .collect()
    }

    fn lang(l: &str) -> Style {
        Style { lang: Some(l.into()), ..Style::default() }
    }

    fn scale(absolute: Option<f64>, factor: f64) -> Scale {
        Scale { absolute, factor }
    }

    fn assert_close(a: Scale, b: Scale) {
        assert_eq!(a.absolute, b.absolute);
        assert!((a.factor - b.factor).abs() < 1e-9, "{a:?} vs {b:?}");
    }

    // -- root and well-formedness ------------------------------------------

    #[test]
    fn root_must_be_speak_in_the_ssml_namespace_or_none() {
        assert_eq!(parse("<speak>Hi</speak>", false).unwrap().segments, vec![said("Hi")]);
        assert_eq!(parse(&speak("Hi"), false).unwrap().segments, vec![said("Hi")]);
        let prefixed = r#"<s:speak xmlns:s="http://www.w3.org/2001/10/synthesis">Hi</s:speak>"#;
        assert_eq!(parse(prefixed, false).unwrap().segments, vec![said("Hi")]);
        assert_eq!(parse("<foo>x</foo>", false), Err("root element is <foo>, not <speak>".into()));
        assert_eq!(parse("<voice>x</voice>", false), Err("root element is <voice>, not <speak>".into()));
        let foreign = parse(r#"<speak xmlns="urn:other">x</speak>"#, false).unwrap_err();
        assert!(foreign.contains("namespace 'urn:other'"), "{foreign}");
    }

    #[test]
    fn malformed_xml_is_refused_with_the_reason() {
        for doc in [
            "<speak>unclosed",
            "<speak><p>x</s></speak>",
            "not xml at all",
            "<speak>a &bogus; b</speak>",
            "<speak>x</speak><speak>y</speak>",
            "",
        ] {
            let e = parse(doc, false).expect_err(doc);
            assert!(e.starts_with("malformed XML: "), "{doc}: {e}");
        }
    }

    #[test]
    fn doctypes_and_entities_are_refused() {
        let xxe =
            r#"<?xml version="1.0"?><!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>"#;
        let e = parse(xxe, false).unwrap_err();
        assert!(e.contains("DOCTYPE"), "{e}");
        assert!(parse(r#"<!DOCTYPE speak SYSTEM "synthesis.dtd"><speak>x</speak>"#, false).is_err());
    }

    #[test]
    fn prolog_comments_and_processing_instructions_are_not_spoken() {
        let doc =
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- a --><speak>a<!-- b -->b<?pi x?>c</speak><!-- c -->";
        assert_eq!(parse(doc, false).unwrap().segments, vec![said("abc")]);
    }

    #[test]
    fn deep_nesting_does_not_exhaust_the_stack() {
        let depth = 100_000;
        let doc = speak(&format!("{}deep{}", "<emphasis>".repeat(depth), "</emphasis>".repeat(depth)));
        assert_eq!(parse(&doc, false).unwrap().text(), "deep");
    }

    // -- text -----------------------------------------------------------------

    #[test]
    fn entities_are_decoded_and_whitespace_folded() {
        assert_eq!(text("  Fish &amp; chips\n\t &lt;3 &#x263A; &#65;  "), "Fish & chips <3 \u{263a} A");
        assert_eq!(text("a<emphasis> b </emphasis>c"), "a b c");
        assert_eq!(text("un<emphasis>believ</emphasis>able"), "unbelievable", "inline elements join as written");
        assert_eq!(text("x\u{85}\u{a0}y"), "x y", "Unicode whitespace and controls fold too");
    }

    #[test]
    fn segments_never_start_or_end_with_a_space_and_marks_stay_inside() {
        let s = script(r#"  <mark name="a"/>  Hello <mark name="b"/>  <mark name="c"/> "#);
        assert_eq!(s.segments, vec![speech("Hello", Style::default(), &[(0, "a"), (5, "b"), (5, "c")])]);
        let s = script(r#"Hello <mark name="m"/> world"#);
        assert_eq!(s.segments, vec![speech("Hello world", Style::default(), &[(6, "m")])], "the next word's start");
        let s = script(r#"Hello<mark name="m"/> world"#);
        assert_eq!(s.segments, vec![speech("Hello world", Style::default(), &[(5, "m")])], "where it stands");
        let s = script(r#"<p> Hi <mark name="m"/> </p> <break time="1s"/>"#);
        assert_eq!(s.segments, vec![speech("Hi.", Style::default(), &[(3, "m")]), Segment::Pause { ms: 1000 }]);
        let s = script(r#"<p>One</p><mark name="m"/><p>Two</p>"#);
        assert_eq!(s.segments, vec![speech("One. Two.", Style::default(), &[(5, "m")])]);
        for seg in script(r#" <voice name="a"> one </voice> <mark name="m"/> <voice name="b"> two </voice> "#).segments
        {
            if let Segment::Speech(s) = seg {
                assert_eq!(s.text, s.text.trim());
                assert!(s.marks.iter().all(|(o, _)| *o <= s.text.chars().count()));
            }
        }
    }

    // -- grouping ---------------------------------------------------------------

    #[test]
    fn equal_styles_join_and_a_change_of_style_starts_a_segment() {
        let rachel = Style { voice_names: vec!["Rachel".into()], ..Style::default() };
        assert_eq!(
            script(r#"One <prosody rate="default">two</prosody> <voice>three</voice>"#).segments,
            vec![said("One two three")],
            "elements that change nothing do not split"
        );
        assert_eq!(
            script(r#"One <voice name="Rachel">two <emphasis>three</emphasis></voice> four"#).segments,
            vec![said("One"), speech("two three", rachel.clone(), &[]), said("four")]
        );
        assert_eq!(
            script(r#"<voice name="Rachel">a</voice><voice name="Rachel">b</voice>"#).segments,
            vec![speech("a b", rachel, &[])],
            "adjacent voices of the same style join (voice separates words)"
        );
    }

    #[test]
    fn whitespace_alone_does_not_split_or_open_a_segment() {
        let rachel = Style { voice_names: vec!["Rachel".into()], ..Style::default() };
        let s = script(r#"One <voice name="Rachel"> </voice> two <prosody rate="fast">  </prosody>"#);
        assert_eq!(s.segments, vec![said("One two")]);
        let s = script(r#"Hi<break/><voice name="Rachel"> <mark name="m"/> </voice> there"#);
        let moved = speech("there", Style::default(), &[(0, "m")]);
        assert_eq!(
            s.segments,
            vec![said("Hi"), Segment::Pause { ms: 400 }, moved],
            "no empty segment: its mark moves on"
        );
        let s = script(r#"<voice name="Rachel">Hi</voice> <mark name="m"/> there"#);
        assert_eq!(s.segments, vec![speech("Hi", rachel, &[(2, "m")]), said("there")]);
    }

    // -- marks ------------------------------------------------------------------

    #[test]
    fn marks_attach_to_the_open_segment_or_wait_for_the_next() {
        let fast = Style { rate: scale(Some(1.1), 1.0), ..Style::default() };
        let s = script(
            r#"<mark name="start"/>Hello <mark name="mid"/>there <break/><mark name="after"/>
               again<mark name="end1"/> <prosody rate="fast">quick<mark name="q"/></prosody>"#,
        );
        assert_eq!(
            s.segments,
            vec![
                speech("Hello there", Style::default(), &[(0, "start"), (6, "mid")]),
                Segment::Pause { ms: 400 },
                speech("again", Style::default(), &[(0, "after"), (5, "end1")]),
                speech("quick", fast, &[(5, "q")]),
            ]
        );
    }

    #[test]
    fn marks_with_no_speech_after_them_end_the_script() {
        let s = script(r#"Hi<break time="1s"/><mark name="a"/><break time="500ms"/><mark name="b"/>"#);
        assert_eq!(
            s.segments,
            vec![said("Hi"), Segment::Pause { ms: 1500 }, Segment::Mark("a".into()), Segment::Mark("b".into())]
        );
        assert_eq!(script(r#"<mark name="x"/>"#).segments, vec![Segment::Mark("x".into())]);
        let s = script(r#"<mark name="a"/><break time="1s"/><mark name="b"/> Hi"#);
        assert_eq!(
            s.segments,
            vec![Segment::Pause { ms: 1000 }, speech("Hi", Style::default(), &[(0, "a"), (0, "b")])]
        );
    }

    #[test]
    fn a_mark_needs_a_name() {
        assert_eq!(err(r#"<mark/>"#), "<mark> without a name");
        assert_eq!(err(r#"<mark name="  "/>"#), "<mark> without a name");
    }

    // -- breaks -----------------------------------------------------------------

    #[test]
    fn break_times_and_strengths() {
        let pause = |attrs: &str| match script(&format!("a<break {attrs}/>b")).segments.as_slice() {
            [_, Segment::Pause { ms }, _] => *ms,
            other => panic!("{attrs}: {other:?}"),
        };
        assert_eq!(pause(r#"time="500ms""#), 500);
        assert_eq!(pause(r#"time="1.5s""#), 1500);
        assert_eq!(pause(r#"time=" 2s ""#), 2000);
        assert_eq!(pause(r#"time="0.25s""#), 250);
        assert_eq!(pause(""), 400);
        assert_eq!(pause(r#"strength="x-weak""#), 100);
        assert_eq!(pause(r#"strength="weak""#), 200);
        assert_eq!(pause(r#"strength="medium""#), 400);
        assert_eq!(pause(r#"strength="strong""#), 700);
        assert_eq!(pause(r#"strength="x-strong""#), 1000);
        assert_eq!(pause(r#"strength="x-strong" time="50ms""#), 50, "time wins");
        assert_eq!(pause(r#"time="90s""#), 30_000, "clamped");
        assert_eq!(pause(r#"time="99999999999999999999s""#), 30_000);
    }

    #[test]
    fn bad_break_values_are_refused() {
        for t in ["abc", "5", "-1s", "1.2.3s", "ms", "inf s", "1e3ms", "NaNs"] {
            let e = err(&format!(r#"a<break time="{t}"/>"#));
            assert!(e.starts_with("break time="), "{t}: {e}");
        }
        assert!(err(r#"<break strength="huge"/>"#).contains("huge"));
    }

    #[test]
    fn consecutive_breaks_merge_and_zero_ones_vanish() {
        let s = script(r#"a<break time="300ms"/> <break time="200ms"/><break strength="none"/>b"#);
        assert_eq!(s.segments, vec![said("a"), Segment::Pause { ms: 500 }, said("b")]);
        let s = script(r#"a<break strength="none"/>b <break time="0s"/> c"#);
        assert_eq!(s.segments, vec![said("a b c")], "no pause, no split; still a word boundary");
        let s = script(r#"<break time="1s"/>a"#);
        assert_eq!(s.segments, vec![Segment::Pause { ms: 1000 }, said("a")]);
        assert_eq!(script(r#"<break time="1s"/>"#).segments, vec![Segment::Pause { ms: 1000 }]);
    }

    // -- paragraphs and sentences ----------------------------------------------

    #[test]
    fn sentences_end_audibly() {
        assert_eq!(text("<s>Hello</s><s>World</s>"), "Hello. World.");
        assert_eq!(text("<p>One</p><paragraph>Two!</paragraph><sentence>Three?</sentence>"), "One. Two! Three?");
        assert_eq!(
            text("<p><s>Ends with</s><s>colon:</s><s>semi;</s><s>dots…</s></p>"),
            "Ends with. colon: semi; dots…"
        );
        assert_eq!(text("<s>日本語。</s><s>中文！</s><s>好？</s>"), "日本語。 中文！ 好？");
        assert_eq!(text(r#"<s>He said "hi."</s><s>(see below)</s>"#), r#"He said "hi." (see below)."#);
        assert_eq!(
            text("<s>Hello &amp; welcome,</s><s>friends</s>"),
            "Hello & welcome. friends.",
            "comma becomes stop"
        );
        assert_eq!(text("<s>你好，</s>"), "你好。");
        assert_eq!(text("A<s></s>B"), "A B", "an empty sentence adds no stop");
        assert_eq!(text("<p>a<s>b</s>c</p>"), "a b. c.");
    }

    #[test]
    fn a_sentence_cut_by_a_break_gets_no_stop() {
        let s = script(r#"<s>Wait<break time="1s"/></s><s>Go</s>"#);
        assert_eq!(s.segments, vec![said("Wait"), Segment::Pause { ms: 1000 }, said("Go.")]);
    }

    #[test]
    fn paragraphs_and_sentences_carry_a_language() {
        let s = script(r#"<p xml:lang="de-DE">Hallo</p><s xml:lang="fr">Salut</s>"#);
        assert_eq!(s.segments, vec![speech("Hallo.", lang("de-DE"), &[]), speech("Salut.", lang("fr"), &[])]);
    }

    // -- voice and language ------------------------------------------------------

    #[test]
    fn voices_set_name_gender_and_language() {
        let doc = r#"<voice name="Rachel" gender="female" age="30" variant="2">a
            <voice gender="male">b</voice><voice xml:lang="es-ES">c</voice><voice name="Adam">d</voice></voice>"#;
        let base = Style { voice_names: vec!["Rachel".into()], gender: Some(VoiceGender::Female), ..Style::default() };
        assert_eq!(
            styles(doc),
            vec![
                base.clone(),
                // A gender alone selects by gender: the name in scope is
                // not a male voice.
                Style { voice_names: vec![], gender: Some(VoiceGender::Male), ..base.clone() },
                Style { lang: Some("es-ES".into()), ..base.clone() },
                Style { voice_names: vec!["Rachel".into(), "Adam".into()], ..base },
            ]
        );
        assert_eq!(styles(r#"<voice gender="Neutral">x</voice>"#)[0].gender, Some(VoiceGender::Neutral));
        assert_eq!(err(r#"<voice gender="robot">x</voice>"#), "voice gender='robot' is not male, female or neutral");
    }

    #[test]
    fn xml_lang_from_any_element_is_in_scope() {
        let doc = r#"<speak xml:lang="en-US">Hello <lang xml:lang="de-DE">Welt</lang>
            <emphasis xml:lang="fr">oui</emphasis> <s xml:lang="">none</s></speak>"#;
        let s = parse(doc, false).unwrap();
        let got: Vec<(String, Option<String>)> = s
            .segments
            .into_iter()
            .filter_map(|seg| match seg {
                Segment::Speech(s) => Some((s.text, s.style.lang)),
                _ => None,
            })
            .collect();
        let want = [("Hello", Some("en-US")), ("Welt", Some("de-DE")), ("oui", Some("fr")), ("none.", None)];
        let want: Vec<(String, Option<String>)> =
            want.iter().map(|(t, l)| (t.to_string(), l.map(str::to_owned))).collect();
        assert_eq!(got, want);
    }

    // -- prosody ------------------------------------------------------------------

    fn prosody(attrs: &str) -> Style {
        styles(&format!("<prosody {attrs}>x</prosody>")).pop().expect(attrs)
    }

    #[test]
    fn rate_labels_percentages_and_numbers() {
        for (label, v) in [("x-slow", 0.7), ("slow", 0.85), ("medium", 1.0), ("fast", 1.1), ("x-fast", 1.2)] {
            assert_eq!(prosody(&format!(r#"rate="{label}""#)).rate, scale(Some(v), 1.0), "{label}");
        }
        assert_eq!(prosody(r#"rate="default""#).rate, Scale::default());
        assert_close(prosody(r#"rate="150%""#).rate, scale(None, 1.5));
        assert_close(prosody(r#"rate="+10%""#).rate, scale(None, 1.1));
        assert_close(prosody(r#"rate="-20%""#).rate, scale(None, 0.8));
        assert_close(prosody(r#"rate="1.2""#).rate, scale(None, 1.2));
        assert_close(prosody(r#"rate=" 0.5 ""#).rate, scale(None, 0.5));
    }

    #[test]
    fn volume_labels_numbers_and_decibels() {
        for (label, v) in
            [("silent", 0.0), ("x-soft", 0.25), ("soft", 0.5), ("medium", 1.0), ("loud", 1.41), ("x-loud", 2.0)]
        {
            assert_eq!(prosody(&format!(r#"volume="{label}""#)).volume, scale(Some(v), 1.0), "{label}");
        }
        assert_eq!(prosody(r#"volume="default""#).volume, Scale::default());
        assert_eq!(prosody(r#"volume="0""#).volume, scale(Some(0.0), 1.0));
        assert_eq!(prosody(r#"volume="100""#).volume, scale(Some(2.0), 1.0));
        assert_eq!(prosody(r#"volume="25.5""#).volume, scale(Some(0.51), 1.0));
        assert_close(prosody(r#"volume="+6dB""#).volume, scale(None, 10f64.powf(0.3)));
        assert_close(prosody(r#"volume="-3.5dB""#).volume, scale(None, 10f64.powf(-3.5 / 20.0)));
        assert_close(prosody(r#"volume="+0dB""#).volume, scale(None, 1.0));
    }

    #[test]
    fn other_prosody_attributes_are_ignored() {
        assert_eq!(
            prosody(r#"pitch="high" contour="(0%,+20Hz)" range="x-low" duration="2s""#),
            Style::default(),
            "pitch, contour, range and duration change nothing"
        );
    }

    #[test]
    fn bad_prosody_values_name_the_attribute() {
        for v in ["abc", "-1.2", "+1.2", "0", "0%", "-100%", "-150%", "fast!", "1,5", "inf", "NaN", "1e2", ""] {
            assert_eq!(
                err(&format!(r#"<prosody rate="{v}">x</prosody>"#)),
                format!("prosody rate='{v}' is not a rate")
            );
        }
        for v in ["abc", "101", "-5", "+5", "150%", "6 dBm", "dB", "+dB", "loudest"] {
            assert_eq!(
                err(&format!(r#"<prosody volume="{v}">x</prosody>"#)),
                format!("prosody volume='{v}' is not a volume")
            );
        }
    }

    #[test]
    fn nested_prosody_compounds() {
        let doc = r#"<prosody rate="slow" volume="+6dB">a<prosody rate="150%" volume="-6dB">b
            <prosody rate="+10%">c<prosody rate="default">d</prosody></prosody></prosody>
            <prosody volume="loud">e<prosody volume="+6dB">f</prosody></prosody></prosody>"#;
        let got = styles(doc);
        let up6 = 10f64.powf(0.3);
        let want = [
            (scale(Some(0.85), 1.0), scale(None, up6)),
            (scale(Some(0.85), 1.5), scale(None, 1.0)),
            (scale(Some(0.85), 1.65), scale(None, 1.0)),
            (Scale::default(), scale(None, 1.0)),
            (scale(Some(0.85), 1.0), scale(Some(1.41), 1.0)),
            (scale(Some(0.85), 1.0), scale(Some(1.41), up6)),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, (rate, volume)) in got.iter().zip(want) {
            assert_close(g.rate, rate);
            assert_close(g.volume, volume);
        }
    }

    // -- say-as ---------------------------------------------------------------------

    fn say(attrs: &str, content: &str) -> String {
        text(&format!("<say-as {attrs}>{content}</say-as>"))
    }

    #[test]
    fn say_as_characters_and_digits() {
        for kind in ["characters", "spell-out", "letters", "verbatim"] {
            assert_eq!(say(&format!(r#"interpret-as="{kind}""#), "IBM"), "I B M", "{kind}");
        }
        assert_eq!(say(r#"interpret-as="characters""#, " a b\nc "), "a b c");
        assert_eq!(say(r#"interpret-as="digits""#, "1234"), "1 2 3 4");
        assert_eq!(say(r#"interpret-as="number" format="digits""#, "42"), "4 2");
        assert_eq!(say(r#"interpret-as="number:digits""#, "42"), "4 2");
        assert_eq!(text(r#"Call <say-as interpret-as="characters">IBM</say-as> now"#), "Call I B M now");
    }

    #[test]
    fn say_as_ordinals_in_english() {
        let ord = |n: &str| say(r#"interpret-as="ordinal""#, n);
        let cases = [("1", "1st"), ("2", "2nd"), ("3", "3rd"), ("4", "4th"), ("11", "11th"), ("12", "12th")];
        for (n, want) in cases.into_iter().chain([("13", "13th"), ("21", "21st"), ("102", "102nd"), ("111", "111th")]) {
            assert_eq!(ord(n), want);
        }
        assert_eq!(ord("0"), "0th");
        assert_eq!(ord("007"), "7th");
        assert_eq!(ord("123456789012345678901234567890"), "123456789012345678901234567890th");
        assert_eq!(say(r#"interpret-as="number" format="ordinal""#, "22"), "22nd");
        assert_eq!(say(r#"interpret-as="number:ordinal""#, "23"), "23rd");
        assert_eq!(ord("1,000"), "1,000", "not all digits: as written");
        assert_eq!(ord("third"), "third");
        assert_eq!(text(r#"<lang xml:lang="en-GB"><say-as interpret-as="ordinal">1</say-as></lang>"#), "1st");
        assert_eq!(text(r#"<lang xml:lang="de-DE"><say-as interpret-as="ordinal">1</say-as></lang>"#), "1");
        // The SPEAK's own language where the document names none.
        let ordinal = r#"<speak><say-as interpret-as="ordinal">2</say-as></speak>"#;
        assert_eq!(parse_in(ordinal, false, Some("de-DE")).unwrap().text(), "2");
        assert_eq!(parse_in(ordinal, false, Some("en-GB")).unwrap().text(), "2nd");
        let overridden = r#"<speak xml:lang="en-US"><say-as interpret-as="ordinal">2</say-as></speak>"#;
        assert_eq!(parse_in(overridden, false, Some("de-DE")).unwrap().text(), "2nd");
    }

    #[test]
    fn say_as_cardinals_telephones_and_bleeps() {
        assert_eq!(say(r#"interpret-as="cardinal""#, "1,234,567"), "1,234,567");
        assert_eq!(say(r#"interpret-as="number""#, "1,234"), "1,234");
        assert_eq!(say(r#"interpret-as="telephone""#, "555-0100"), "5 5 5, 0 1 0 0");
        assert_eq!(say(r#"interpret-as="telephone""#, "+1 (800) 555-0100"), "1, 8 0 0, 5 5 5, 0 1 0 0");
        assert_eq!(say(r#"interpret-as="telephone""#, "none"), "none");
        assert_eq!(say(r#"interpret-as="expletive""#, "darn"), "beep");
        assert_eq!(say(r#"interpret-as="bleep""#, "darn"), "beep");
    }

    #[test]
    fn say_as_dates() {
        let date = |format: &str, d: &str| say(&format!(r#"interpret-as="date" format="{format}""#), d);
        assert_eq!(date("mdy", "3/5/2024"), "March 5th, 2024");
        assert_eq!(date("dmy", "05.03.2024"), "March 5th, 2024");
        assert_eq!(date("ymd", "2024-03-05"), "March 5th, 2024");
        assert_eq!(date("ym", "2024-03"), "March 2024");
        assert_eq!(date("my", "03/2024"), "March 2024");
        assert_eq!(date("md", "12-31"), "December 31st");
        assert_eq!(date("dm", "22/1"), "January 22nd");
        let default = |d: &str| say(r#"interpret-as="date""#, d);
        assert_eq!(default("2024-12-01"), "December 1st, 2024");
        assert_eq!(default("12/01/2024"), "December 1st, 2024");
        assert_eq!(date("mdy", "13/5/2024"), "13/5/2024", "no 13th month: as written");
        assert_eq!(date("mdy", "2024-03"), "2024-03", "parts do not fit the format");
        assert_eq!(date("xyz", "2024-03-05"), "2024-03-05");
        assert_eq!(default("yesterday"), "yesterday");
        assert_eq!(
            text(r#"<lang xml:lang="fr-FR"><say-as interpret-as="date">2024-03-05</say-as></lang>"#),
            "2024-03-05"
        );
    }

    #[test]
    fn say_as_anything_else_is_spoken_as_written() {
        for kind in ["time", "currency", "measure", "address", "name", "net", "whatever", ""] {
            assert_eq!(say(&format!(r#"interpret-as="{kind}""#), " 10:30  am "), "10:30 am", "{kind}");
        }
        assert_eq!(say("", "plain"), "plain");
    }

    // -- sub, phoneme, audio, the rest ---------------------------------------------

    #[test]
    fn sub_speaks_its_alias() {
        assert_eq!(text(r#"The <sub alias="World Wide Web Consortium">W3C</sub>."#), "The World Wide Web Consortium.");
        assert_eq!(text(r#"<sub alias=" Mister  Smith ">Mr. Smith</sub>"#), "Mister Smith");
        assert_eq!(text(r#"<sub>W3C</sub>"#), "W3C", "no alias: the content");
        assert_eq!(text(r#"<sub alias=" ">W3C</sub>"#), "W3C", "blank alias: the content");
    }

    #[test]
    fn phonemes_inline_only_where_the_model_takes_them() {
        let doc = speak(r#"Say <phoneme alphabet="ipa" ph="təˈmeɪtoʊ">tomato</phoneme> now"#);
        assert_eq!(
            parse(&doc, true).unwrap().text(),
            r#"Say <phoneme alphabet="ipa" ph="təˈmeɪtoʊ">tomato</phoneme> now"#
        );
        assert_eq!(parse(&doc, false).unwrap().text(), "Say tomato now");
        for alphabet in ["cmu-arpabet", "x-cmu", "x-arpabet", "arpabet", "CMU-Arpabet"] {
            let doc = speak(&format!(r#"<phoneme alphabet="{alphabet}" ph="M AE1  D IH0 S AH0 N">Madison</phoneme>"#));
            assert_eq!(
                parse(&doc, true).unwrap().text(),
                r#"<phoneme alphabet="cmu-arpabet" ph="M AE1 D IH0 S AH0 N">Madison</phoneme>"#,
                "{alphabet}"
            );
        }
        let escaped = speak(r#"<phoneme alphabet="ipa" ph="a&quot;b&amp;c&lt;d">A&amp;B</phoneme>"#);
        assert_eq!(
            parse(&escaped, true).unwrap().text(),
            r#"<phoneme alphabet="ipa" ph="a&quot;b&amp;c&lt;d">A&amp;B</phoneme>"#
        );
        for fallback in [
            r#"<phoneme alphabet="x-sampa" ph="t@meItoU">tomato</phoneme>"#,
            r#"<phoneme ph="təˈmeɪtoʊ">tomato</phoneme>"#,
            r#"<phoneme alphabet="ipa">tomato</phoneme>"#,
            r#"<phoneme alphabet="ipa" ph=" ">tomato</phoneme>"#,
        ] {
            assert_eq!(parse(&speak(fallback), true).unwrap().text(), "tomato", "{fallback}");
        }
    }

    #[test]
    fn audio_speaks_its_fallback_not_its_description() {
        let doc = r#"Before <audio src="http://example.com/x.wav">the fallback<desc>a bell</desc></audio> after"#;
        assert_eq!(text(doc), "Before the fallback after");
        assert_eq!(text(r#"friends<audio src="x.wav">, enjoy</audio>."#), "friends, enjoy.", "inline");
        assert_eq!(text(r#"a <audio src="x.wav"/> b"#), "a b");
    }

    #[test]
    fn containers_speak_their_content_and_metadata_nothing() {
        let doc = r#"<meta name="x" content="y"/><metadata><rdf>no</rdf></metadata><lexicon uri="x.pls"/>
            <emphasis level="strong">loud</emphasis> <lang xml:lang="en">and</lang> <token>tok</token> <w>word</w>
            <unknown>kept</unknown> <x:vendor xmlns:x="urn:v">too</x:vendor> <desc>hidden</desc>"#;
        assert_eq!(text(doc), "loud and tok word kept too");
        assert_eq!(script(doc).lexicons, vec!["x.pls".to_owned()]);
    }

    #[test]
    fn lexicons_are_collected_in_order_and_say_nothing() {
        let s =
            script(r#"<lexicon uri=" elevenlabs:dictA "/><lexicon uri="elevenlabs:dictB:v1"></lexicon><lexicon/>Hi"#);
        assert_eq!(s.lexicons, vec!["elevenlabs:dictA".to_owned(), "elevenlabs:dictB:v1".to_owned(), String::new()]);
        assert_eq!(s.text(), "Hi");
        assert_eq!(script("Hi").lexicons, Vec::<String>::new());
    }

    // -- the script ----------------------------------------------------------------

    #[test]
    fn emptiness_counts_speech_and_pauses_only() {
        assert!(script(" ").is_empty());
        assert!(script("<p> </p><s/>").is_empty());
        assert!(script(r#"<mark name="x"/>"#).is_empty(), "marks alone: nothing to play");
        assert!(!script(r#"<break time="1s"/>"#).is_empty());
        assert!(!script("x").is_empty());
        assert!(Script::default().is_empty());
    }

    #[test]
    fn text_joins_the_speech_with_spaces() {
        let s = script(r#"One<break/>two <voice name="v">three</voice><mark name="m"/>"#);
        assert_eq!(s.text(), "One two three");
        assert_eq!(Script::default().text(), "");
    }

    #[test]
    fn plain_text_is_one_segment_as_written() {
        assert_eq!(plain("\u{feff}  Hello,\n  world.  ").segments, vec![said("Hello,\n  world.")]);
        assert_eq!(plain("<speak>not markup</speak>").segments, vec![said("<speak>not markup</speak>")]);
        assert!(plain(" \t\r\n ").segments.is_empty());
        assert!(plain("").is_empty());
    }

    #[test]
    fn inline_elements_keep_punctuation_attached() {
        let doc = r#"<p><s>Hello <say-as interpret-as="characters">IBM</say-as></s>
          <s>Call <say-as interpret-as="telephone">555-0100</say-as> on the <say-as interpret-as="ordinal">3</say-as> ring</s></p>
          <break time="300ms"/>
          <voice name="Rachel"><prosody rate="slow" volume="loud">Welcome to the <sub alias="World Wide Web Consortium">W3C</sub>
          &amp; <emphasis>friends</emphasis><audio src="a.wav">, enjoy<desc>applause</desc></audio>.</prosody></voice>"#;
        let texts: Vec<String> = script(doc)
            .segments
            .into_iter()
            .filter_map(|s| match s {
                Segment::Speech(s) => Some(s.text),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            [
                "Hello I B M. Call 5 5 5, 0 1 0 0 on the 3rd ring.",
                "Welcome to the World Wide Web Consortium & friends, enjoy."
            ]
        );
        let s = script(
            r#"Hello there, <mark name="m1"/>general Kenobi.<break time="200ms"/><mark name="m2"/>Bye now.<mark name="end"/>"#,
        );
        assert_eq!(
            s.segments,
            vec![
                speech("Hello there, general Kenobi.", Style::default(), &[(13, "m1")]),
                Segment::Pause { ms: 200 },
                speech("Bye now.", Style::default(), &[(0, "m2"), (8, "end")]),
            ]
        );
    }

    #[test]
    fn a_full_document() {
        let doc = r#"<?xml version="1.0"?>
<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">
  <p><s>Your order <say-as interpret-as="characters">AB12</say-as> ships on
     <say-as interpret-as="date" format="mdy">3/5/2024</say-as></s>
  <mark name="shipped"/><break time="500ms"/>
  <voice gender="female"><prosody rate="slow">Thank you</prosody></voice></p>
</speak>"#;
        let en = lang("en-US");
        let slow_female = Style { gender: Some(VoiceGender::Female), rate: scale(Some(0.85), 1.0), ..en.clone() };
        assert_eq!(
            parse(doc, false).unwrap().segments,
            vec![
                speech("Your order A B 1 2 ships on March 5th, 2024.", en, &[(44, "shipped")]),
                Segment::Pause { ms: 500 },
                speech("Thank you.", slow_female, &[]),
            ]
        );
    }
}
