//! From a SPEAK body to the text sent upstream.
//!
//! `text/plain` is spoken as written, only trimmed, its line breaks kept
//! (UTF-8, or ISO-8859-1 when the charset says so). SSML bodies (`application/ssml+xml`, and
//! `application/synthesis+ssml` which umc sends) are read by [`ssml`].
//! Bodies that would make nothing to play are refused before any request
//! goes upstream.

pub mod split;
pub mod ssml;

pub use split::split_for_requests;
pub use ssml::{Script, Segment, Speech};

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    Empty,
    NotUtf8,
    UnsupportedType(String),
    BadSsml(String),
    TooLarge(usize),
}

/// The largest SPEAK body read: about five hours of speech as text. The
/// body is read on the MRCP Server thread, which serves every call, so its
/// cost must stay small (a body this size parses in milliseconds).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Empty => write!(f, "SPEAK body has no text to speak"),
            BodyError::NotUtf8 => write!(f, "SPEAK body is not valid UTF-8"),
            BodyError::UnsupportedType(t) => write!(f, "unsupported Content-Type '{t}'"),
            BodyError::BadSsml(why) => write!(f, "malformed SSML: {why}"),
            BodyError::TooLarge(n) => write!(f, "SPEAK body of {n} bytes is over the {MAX_BODY_BYTES}-byte limit"),
        }
    }
}

enum Kind {
    Plain,
    Ssml,
}

fn classify(content_type: Option<&str>) -> Result<(Kind, bool), BodyError> {
    let Some(ct) = content_type else {
        return Ok((Kind::Plain, false));
    };
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut latin1 = false;
    for param in parts {
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case("charset") {
                match v.trim().trim_matches('"').to_ascii_lowercase().as_str() {
                    "utf-8" | "utf8" | "us-ascii" => {}
                    "iso-8859-1" | "latin1" | "latin-1" => latin1 = true,
                    other => return Err(BodyError::UnsupportedType(format!("{media}; charset={other}"))),
                }
            }
        }
    }
    let kind = match media.as_str() {
        "" | "text/plain" => Kind::Plain,
        "application/ssml+xml" | "application/synthesis+ssml" => Kind::Ssml,
        _ => return Err(BodyError::UnsupportedType(ct.trim().to_owned())),
    };
    Ok((kind, latin1))
}

/// A SPEAK body as what to play: text/plain as one segment, SSML read by
/// [`ssml::parse`]. `phonemes`: the model takes inline `<phoneme>` tags.
/// A body with nothing to play (no speech, no pause) is refused here,
/// before any request goes upstream.
pub fn script_from_body(
    content_type: Option<&str>,
    body: &[u8],
    phonemes: bool,
    lang: Option<&str>,
) -> Result<Script, BodyError> {
    let (kind, latin1) = classify(content_type)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge(body.len()));
    }
    let decoded: String = if latin1 {
        body.iter().map(|&b| b as char).collect()
    } else {
        std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?.to_owned()
    };
    let script = match kind {
        // A byte-order mark is not text (the XML parser skips it itself).
        Kind::Plain => ssml::plain(decoded.strip_prefix('\u{feff}').unwrap_or(&decoded)),
        Kind::Ssml => ssml::parse_in(&decoded, phonemes, lang).map_err(BodyError::BadSsml)?,
    };
    if script.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(script)
}

/// All the speech of a body, joined: what the tests below compare.
#[cfg(test)]
fn speakable_text(content_type: Option<&str>, body: &[u8]) -> Result<String, BodyError> {
    script_from_body(content_type, body, false, None).map(|s| s.text())
}

#[cfg(test)]
mod tests {
    use super::ssml::Segment;
    use super::*;

    #[test]
    fn plain_text_is_trimmed_and_checked() {
        assert_eq!(speakable_text(Some("text/plain"), b"  Hello.\n").unwrap(), "Hello.");
        assert_eq!(speakable_text(None, "Grüße".as_bytes()).unwrap(), "Grüße");
        assert_eq!(speakable_text(Some("text/plain"), b" \t\r\n "), Err(BodyError::Empty));
        assert_eq!(speakable_text(Some("text/plain"), b""), Err(BodyError::Empty));
        assert_eq!(speakable_text(Some("text/plain"), b"\xff\xfe"), Err(BodyError::NotUtf8));
    }

    #[test]
    fn charsets() {
        assert_eq!(speakable_text(Some("text/plain; charset=ISO-8859-1"), b"caf\xe9").unwrap(), "café");
        assert_eq!(speakable_text(Some("text/plain;charset=\"utf-8\""), b"ok").unwrap(), "ok");
        assert!(matches!(speakable_text(Some("text/plain; charset=koi8-r"), b"x"), Err(BodyError::UnsupportedType(_))));
    }

    #[test]
    fn unsupported_types_are_refused() {
        assert_eq!(speakable_text(Some("audio/wav"), b"x"), Err(BodyError::UnsupportedType("audio/wav".into())));
    }

    #[test]
    fn ssml_is_read_into_a_script() {
        let doc = r#"<?xml version="1.0"?>
<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">
  <!-- greeting --><p><s>Hello &amp; welcome,</s> <break time="300ms"/>
  <sub alias="World Wide Web Consortium">W3C</sub> rocks&#33;</p>
</speak>"#;
        for ct in ["application/ssml+xml", "application/synthesis+ssml", "Application/SSML+XML; charset=UTF-8"] {
            let script = script_from_body(Some(ct), doc.as_bytes(), false, None).unwrap();
            let texts: Vec<&str> = script
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Speech(s) => s.text.as_str(),
                    Segment::Pause { ms: 300 } => "<300ms>",
                    other => panic!("{other:?}"),
                })
                .collect();
            // The <s> ends a sentence: its closing comma becomes a full stop,
            // so the old reader's "welcome," is "welcome." now.
            assert_eq!(texts, ["Hello & welcome.", "<300ms>", "World Wide Web Consortium rocks!"], "{ct}");
            assert_eq!(
                speakable_text(Some(ct), doc.as_bytes()).unwrap(),
                "Hello & welcome. World Wide Web Consortium rocks!"
            );
        }
    }

    #[test]
    fn plain_text_is_one_segment_and_never_markup() {
        let script = script_from_body(Some("text/plain"), b"<speak>as is</speak>\n", true, None).unwrap();
        assert_eq!(script, ssml::plain("<speak>as is</speak>"));
        assert_eq!(speakable_text(None, "\u{feff}Hi there".as_bytes()).unwrap(), "Hi there", "BOM dropped");
    }

    #[test]
    fn latin1_ssml() {
        let doc = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><speak>caf\xe9</speak>";
        assert_eq!(speakable_text(Some("application/ssml+xml; charset=iso-8859-1"), doc).unwrap(), "caf\u{e9}");
    }

    #[test]
    fn phonemes_pass_through_only_when_asked() {
        let doc = br#"<speak><phoneme alphabet="ipa" ph="ta">tomato</phoneme></speak>"#;
        let with = script_from_body(Some("application/ssml+xml"), doc, true, None).unwrap();
        assert_eq!(with.text(), r#"<phoneme alphabet="ipa" ph="ta">tomato</phoneme>"#);
        assert_eq!(speakable_text(Some("application/ssml+xml"), doc).unwrap(), "tomato");
    }

    #[test]
    fn malformed_ssml_is_refused() {
        for doc in [
            "<speak>unclosed",
            "<speak><p>x</s></speak>",
            "not xml at all",
            "<voice>x</voice>",
            "<speak>a &bogus; b</speak>",
            "<speak>x</speak><speak>y</speak>",
            r#"<speak><break time="soon"/></speak>"#,
            r#"<!DOCTYPE speak [<!ENTITY e "x">]><speak>&e;</speak>"#,
        ] {
            assert!(
                matches!(
                    script_from_body(Some("application/ssml+xml"), doc.as_bytes(), false, None),
                    Err(BodyError::BadSsml(_))
                ),
                "{doc}"
            );
        }
        let e = speakable_text(Some("application/ssml+xml"), b"<html/>").unwrap_err();
        assert_eq!(e.to_string(), "malformed SSML: root element is <html>, not <speak>");
    }

    #[test]
    fn nothing_to_play_is_refused_but_a_pause_alone_is_played() {
        for doc in ["<speak> </speak>", "<speak><p> </p><mark name=\"m\"/></speak>", "<speak/>"] {
            assert_eq!(
                script_from_body(Some("application/ssml+xml"), doc.as_bytes(), false, None),
                Err(BodyError::Empty),
                "{doc}"
            );
        }
        // Unlike the old text-only reader: a break is something to play.
        let pause = script_from_body(Some("application/ssml+xml"), b"<speak> <break/> </speak>", false, None).unwrap();
        assert_eq!(pause.segments, vec![Segment::Pause { ms: 400 }]);
        assert_eq!(speakable_text(Some("application/ssml+xml"), b"<speak> <break/> </speak>").unwrap(), "");
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        assert_eq!(script_from_body(None, &big, false, None), Err(BodyError::TooLarge(MAX_BODY_BYTES + 1)));
        let mut doc = b"<speak>".to_vec();
        doc.resize(MAX_BODY_BYTES - 8, b'a');
        doc.extend_from_slice(b"</speak>");
        let started = std::time::Instant::now();
        assert!(script_from_body(Some("application/ssml+xml"), &doc, false, None).is_ok());
        // Not a timing assertion: printed for the reader of --nocapture.
        println!("a {}-byte SSML body read in {:?}", doc.len(), started.elapsed());
    }
}
