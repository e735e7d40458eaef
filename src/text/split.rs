//! Long texts in parts: ElevenLabs caps the characters of one request per
//! model. A SPEAK longer than that is sent as consecutive requests, cut at
//! sentence ends (else at a space, else anywhere) and played back to back.

/// Splits `text` into parts of at most `max_chars` characters. Parts are
/// whole sentences where possible; each is trimmed; none is empty.
pub fn split_for_requests(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    if text.chars().count() <= max_chars {
        return vec![text.to_owned()];
    }
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    for sentence in sentences(text) {
        let sentence = sentence.trim();
        if sentence.is_empty() {
            continue;
        }
        let joined = current.chars().count() + usize::from(!current.is_empty()) + sentence.chars().count();
        if joined <= max_chars {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(sentence);
            continue;
        }
        if !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        }
        if sentence.chars().count() <= max_chars {
            current.push_str(sentence);
        } else {
            let mut pieces = cut_long(sentence, max_chars);
            current = pieces.pop().unwrap_or_default();
            parts.extend(pieces);
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// Sentences, each with its closing punctuation and following space.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let ends = matches!(c, '.' | '!' | '?' | ';' | '。' | '！' | '？' | '\n');
        let next_is_space = chars.peek().map_or(true, |(_, n)| n.is_whitespace());
        if ends && next_is_space {
            let end = i + c.len_utf8();
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// A sentence longer than the limit: cut at the last space that fits,
/// or at the limit itself when there is none.
fn cut_long(sentence: &str, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = sentence.trim();
    while rest.chars().count() > max_chars {
        let limit_byte = rest.char_indices().nth(max_chars).map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit_byte].rfind(char::is_whitespace).filter(|&i| i > 0).unwrap_or(limit_byte);
        out.push(rest[..cut].trim().to_owned());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn short_text_is_one_part_unchanged() {
        assert_eq!(split_for_requests("Hello there.", 100), vec!["Hello there."]);
    }

    #[test]
    fn sentences_are_packed_under_the_limit() {
        let text = "One two three. Four five six! Seven eight nine? Ten.";
        let parts = split_for_requests(text, 30);
        assert_eq!(parts, vec!["One two three. Four five six!", "Seven eight nine? Ten."]);
        assert!(parts.iter().all(|p| p.chars().count() <= 30));
        assert_eq!(words(&parts.join(" ")), words(text), "nothing lost or repeated");
    }

    #[test]
    fn a_long_sentence_is_cut_at_spaces_then_anywhere() {
        let text = "aaaa bbbb cccc dddd eeee. Xxxxxxxxxxxxxxxxxxxxxxx";
        let parts = split_for_requests(text, 10);
        assert!(parts.iter().all(|p| !p.is_empty() && p.chars().count() <= 10), "{parts:?}");
        assert_eq!(parts.concat().replace(' ', ""), text.replace(' ', ""));
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let text = "Grüße aus Köln. ".repeat(20) + &"日本語".repeat(30);
        let parts = split_for_requests(&text, 37);
        assert!(parts.iter().all(|p| p.chars().count() <= 37));
        assert_eq!(parts.concat().replace(' ', ""), text.replace(' ', ""));
    }

    #[test]
    fn decimals_and_abbreviations_do_not_end_sentences() {
        let parts = split_for_requests("Pi is 3.14 exactly. Next sentence here.", 25);
        assert_eq!(parts, vec!["Pi is 3.14 exactly.", "Next sentence here."]);
    }
}
