//! From a SPEAK body to the text sent upstream.
//!
//! `text/plain` is spoken as is (UTF-8, or ISO-8859-1 when the charset says
//! so). SSML bodies (`application/ssml+xml`, and `application/synthesis+ssml`
//! which umc sends) are reduced to their text content: markup removed,
//! entities decoded, `<sub alias>` spoken as its alias, whitespace folded.
//! Bodies that would make nothing to say are refused before any request
//! goes upstream.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    Empty,
    NotUtf8,
    UnsupportedType(String),
    BadSsml(String),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Empty => write!(f, "SPEAK body has no text to speak"),
            BodyError::NotUtf8 => write!(f, "SPEAK body is not valid UTF-8"),
            BodyError::UnsupportedType(t) => write!(f, "unsupported Content-Type '{t}'"),
            BodyError::BadSsml(why) => write!(f, "malformed SSML: {why}"),
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

/// The text to send upstream for a SPEAK body.
pub fn speakable_text(content_type: Option<&str>, body: &[u8]) -> Result<String, BodyError> {
    let (kind, latin1) = classify(content_type)?;
    let decoded = if latin1 {
        body.iter().map(|&b| b as char).collect()
    } else {
        std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?.to_owned()
    };
    let text = match kind {
        Kind::Plain => decoded.trim().to_owned(),
        Kind::Ssml => ssml_text(&decoded)?,
    };
    if text.chars().all(|c| c.is_whitespace() || c.is_control()) {
        return Err(BodyError::Empty);
    }
    Ok(text)
}

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = tag;
    while let Some(pos) = rest.find(name) {
        let after = &rest[pos + name.len()..];
        let boundary = pos == 0 || rest.as_bytes()[pos - 1].is_ascii_whitespace();
        let after_trim = after.trim_start();
        if boundary && after_trim.starts_with('=') {
            let v = after_trim[1..].trim_start();
            let quote = v.chars().next()?;
            if quote == '"' || quote == '\'' {
                let end = v[1..].find(quote)?;
                return Some(&v[1..1 + end]);
            }
        }
        rest = after;
    }
    None
}

/// The spoken text of an SSML document: a light reader (full SSML is
/// parsed elsewhere); tags must balance and entities must be known.
fn ssml_text(doc: &str) -> Result<String, BodyError> {
    let mut out = String::with_capacity(doc.len());
    let mut stack: Vec<String> = Vec::new();
    let mut skip_depth: Option<usize> = None; // inside <sub>: speak the alias instead
    let mut rest = doc;
    let mut saw_speak = false;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            if let Some(body) = after.strip_prefix("!--") {
                let end = body.find("-->").ok_or_else(|| BodyError::BadSsml("unterminated comment".into()))?;
                rest = &body[end + 3..];
                continue;
            }
            if after.starts_with('?') || after.starts_with('!') {
                let end = after.find('>').ok_or_else(|| BodyError::BadSsml("unterminated declaration".into()))?;
                rest = &after[end + 1..];
                continue;
            }
            let end = after.find('>').ok_or_else(|| BodyError::BadSsml("unterminated tag".into()))?;
            let tag = &after[..end];
            rest = &after[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let name = name.trim();
                match stack.pop() {
                    Some(open) if open == name => {}
                    Some(open) => return Err(BodyError::BadSsml(format!("</{name}> closes <{open}>"))),
                    None => return Err(BodyError::BadSsml(format!("</{name}> without an open tag"))),
                }
                if skip_depth.is_some_and(|d| d > stack.len()) {
                    skip_depth = None;
                }
                if separates(name) {
                    out.push(' ');
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name = tag.split_whitespace().next().unwrap_or("").to_owned();
            if name.is_empty() {
                return Err(BodyError::BadSsml("empty tag name".into()));
            }
            if stack.is_empty() {
                if saw_speak || name != "speak" {
                    return Err(BodyError::BadSsml(format!("root element is <{name}>, not <speak>")));
                }
                saw_speak = true;
            }
            if name == "sub" {
                if let Some(alias) = attr(tag, "alias") {
                    if skip_depth.is_none() {
                        out.push_str(&decode_text(alias)?);
                    }
                    if !self_closing {
                        skip_depth = Some(stack.len() + 1);
                    }
                }
            }
            if separates(&name) {
                out.push(' ');
            }
            if !self_closing {
                stack.push(name);
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            rest = &rest[end..];
            if stack.is_empty() {
                if !text.trim().is_empty() {
                    return Err(BodyError::BadSsml("text outside <speak>".into()));
                }
                continue;
            }
            if skip_depth.is_none() {
                out.push_str(&decode_text(text)?);
            }
        }
    }
    if let Some(open) = stack.pop() {
        return Err(BodyError::BadSsml(format!("<{open}> is not closed")));
    }
    if !saw_speak {
        return Err(BodyError::BadSsml("no <speak> element".into()));
    }
    Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Elements that stand between words (paragraphs, sentences, pauses);
/// inline ones (sub, say-as, emphasis, mark, ...) join their neighbours as
/// written.
fn separates(name: &str) -> bool {
    matches!(name, "speak" | "p" | "s" | "paragraph" | "sentence" | "break" | "voice" | "audio")
}

fn decode_text(text: &str) -> Result<String, BodyError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let end =
            after.find(';').filter(|&e| e <= 10).ok_or_else(|| BodyError::BadSsml("unterminated entity".into()))?;
        let c = decode_entity(&after[..end])
            .ok_or_else(|| BodyError::BadSsml(format!("unknown entity &{};", &after[..end])))?;
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
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
    fn ssml_is_reduced_to_its_text() {
        let doc = r#"<?xml version="1.0"?>
<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">
  <!-- greeting --><p><s>Hello &amp; welcome,</s> <break time="300ms"/>
  <sub alias="World Wide Web Consortium">W3C</sub> rocks&#33;</p>
</speak>"#;
        for ct in ["application/ssml+xml", "application/synthesis+ssml"] {
            assert_eq!(
                speakable_text(Some(ct), doc.as_bytes()).unwrap(),
                "Hello & welcome, World Wide Web Consortium rocks!"
            );
        }
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
        ] {
            assert!(
                matches!(speakable_text(Some("application/ssml+xml"), doc.as_bytes()), Err(BodyError::BadSsml(_))),
                "{doc}"
            );
        }
        assert_eq!(speakable_text(Some("application/ssml+xml"), b"<speak> <break/> </speak>"), Err(BodyError::Empty));
    }
}
