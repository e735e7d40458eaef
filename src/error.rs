//! Why a SPEAK did not play as asked, typed, with one mapping to what MRCP
//! says: the status of the response, the Completion-Cause, and the
//! Completion-Reason an operator can act on.

use std::time::Duration;

use crate::config::Refusal;
use crate::mrcp::{Completion, CompletionCause, Status};
use crate::text::BodyError;

/// A synthesis that failed after its SPEAK went IN-PROGRESS: it ends with
/// SPEAK-COMPLETE and this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The upstream answered with an error, or not with audio, or the
    /// connection failed; the text says which, with the vendor's detail.
    #[error("{0}")]
    Upstream(String),
    #[error("no response from upstream within first_byte_timeout_ms={}", .0.as_millis())]
    FirstByteTimeout(Duration),
    #[error("upstream stalled: no data for stall_timeout_ms={}", .0.as_millis())]
    Stalled(Duration),
    /// The upstream refused a pronunciation dictionary the request named
    /// (classified by the provider): 006 lexicon-load-failure.
    #[error("{0}")]
    Lexicon(String),
    /// The plugin itself (a curl handle it could not set up, a panic).
    #[error("{0}")]
    Internal(String),
    /// Which request of several failed.
    #[error("{cause} ({at})")]
    At { cause: Box<Failure>, at: String },
    /// No slot of the account's concurrency came free in time.
    #[error("upstream busy: waited {} ms for one of {slots} slots", .waited.as_millis())]
    Busy { waited: Duration, slots: usize },
    /// The upstream's circuit is open (and the fallback's, if any).
    #[error("upstream unavailable (circuit open since {since}, last error {last_error})")]
    Unavailable { since: String, last_error: String },
    /// What the upstream said, after how many tries, and the id of the last
    /// request (what ElevenLabs support asks for).
    #[error("{cause} ({})", tries_and_id(*.tries, .request_id.as_deref()))]
    Tried { cause: Box<Failure>, tries: u32, request_id: Option<String> },
}

fn tries_and_id(tries: u32, request_id: Option<&str>) -> String {
    match (tries, request_id) {
        (0 | 1, Some(id)) => format!("request-id {id}"),
        (n, Some(id)) => format!("{n} tries, request-id {id}"),
        (n, None) => format!("{n} tries"),
    }
}

impl Failure {
    pub fn at(self, at: String) -> Failure {
        Failure::At { cause: Box::new(self), at }
    }

    /// SPEAK-COMPLETE's cause and reason.
    /// Notes the tries made and the last request id, when there is
    /// something to say (several tries, or an id to quote).
    pub fn tried(self, tries: u32, request_id: Option<String>) -> Failure {
        if tries <= 1 && request_id.is_none() {
            return self;
        }
        Failure::Tried { cause: Box::new(self), tries, request_id }
    }

    pub fn completion(&self) -> Completion {
        Completion { cause: self.cause(), reason: Some(self.to_string()) }
    }

    fn cause(&self) -> CompletionCause {
        match self {
            Failure::Lexicon(_) => CompletionCause::LexiconLoadFailure,
            Failure::At { cause, .. } | Failure::Tried { cause, .. } => cause.cause(),
            _ => CompletionCause::Error,
        }
    }
}

/// A SPEAK refused before anything went upstream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpeakError {
    #[error("no LPCM 8/16/32/48 kHz stream was negotiated for this channel")]
    NoStream,
    #[error("{0}")]
    Body(BodyError),
    #[error("{}", match .0 { Refusal::Language(r) | Refusal::Value(r) | Refusal::Lexicon(r) => r })]
    Refused(Refusal),
    /// The server queues SPEAKs; a second one here is a client of the
    /// plugin breaking the protocol.
    #[error("another SPEAK is in progress")]
    Busy,
    /// The cost guard: more characters than `max_speak_chars` would go
    /// upstream.
    #[error("SPEAK would send {chars} characters upstream, max_speak_chars={max}")]
    TooLong { chars: usize, max: usize },
}

impl From<BodyError> for SpeakError {
    fn from(e: BodyError) -> Self {
        SpeakError::Body(e)
    }
}

impl From<Refusal> for SpeakError {
    fn from(r: Refusal) -> Self {
        SpeakError::Refused(r)
    }
}

/// How a refused SPEAK is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A final response with this status.
    Refuse(Status),
    /// `200 IN-PROGRESS`, then SPEAK-COMPLETE at once (RFC 6787 completion
    /// causes 002 and 005: the request was valid, its content cannot be
    /// spoken).
    CompleteAtOnce,
}

impl SpeakError {
    pub fn answer(&self) -> (Answer, Completion) {
        let (answer, cause) = match self {
            SpeakError::NoStream => (Answer::Refuse(Status::MethodFailed), CompletionCause::Error),
            SpeakError::Body(BodyError::UnsupportedType(_)) => {
                (Answer::Refuse(Status::UnsupportedParamValue), CompletionCause::ParseFailure)
            }
            SpeakError::Body(_) => (Answer::CompleteAtOnce, CompletionCause::ParseFailure),
            SpeakError::Refused(Refusal::Language(_)) => (Answer::CompleteAtOnce, CompletionCause::LanguageUnsupported),
            SpeakError::Refused(Refusal::Lexicon(_)) => (Answer::CompleteAtOnce, CompletionCause::LexiconLoadFailure),
            SpeakError::Refused(Refusal::Value(_)) => {
                (Answer::Refuse(Status::UnsupportedParamValue), CompletionCause::Error)
            }
            SpeakError::Busy => (Answer::Refuse(Status::MethodNotValid), CompletionCause::Error),
            SpeakError::TooLong { .. } => (Answer::CompleteAtOnce, CompletionCause::Error),
        };
        (answer, Completion { cause, reason: Some(self.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_one_answer() {
        let (a, c) = SpeakError::Body(BodyError::Empty).answer();
        assert_eq!((a, c.cause), (Answer::CompleteAtOnce, CompletionCause::ParseFailure));
        assert_eq!(c.reason.as_deref(), Some("SPEAK body has no text to speak"));
        let (a, c) = SpeakError::Refused(Refusal::Language("model m does not speak 'xx'".into())).answer();
        assert_eq!((a, c.cause), (Answer::CompleteAtOnce, CompletionCause::LanguageUnsupported));
        assert_eq!(c.reason.as_deref(), Some("model m does not speak 'xx'"));
        let (a, c) = SpeakError::Body(BodyError::UnsupportedType("x/y".into())).answer();
        assert_eq!((a, c.cause), (Answer::Refuse(Status::UnsupportedParamValue), CompletionCause::ParseFailure));
        assert_eq!(SpeakError::Busy.answer().0, Answer::Refuse(Status::MethodNotValid));
    }

    #[test]
    fn failures_read_as_before_and_carry_where_they_happened() {
        let f = Failure::FirstByteTimeout(Duration::from_millis(700)).at("part 2 of 3".into());
        assert_eq!(f.to_string(), "no response from upstream within first_byte_timeout_ms=700 (part 2 of 3)");
        assert_eq!(f.completion().cause, CompletionCause::Error);
        let f =
            Failure::Lexicon("upstream HTTP 404 pronunciation_dictionary_not_found".into()).at("part 2 of 2".into());
        assert_eq!(f.completion().cause, CompletionCause::LexiconLoadFailure);
        assert_eq!(f.to_string(), "upstream HTTP 404 pronunciation_dictionary_not_found (part 2 of 2)");
        let f = Failure::Upstream("upstream HTTP 503: down".into()).tried(3, Some("req-9".into()));
        assert_eq!(f.to_string(), "upstream HTTP 503: down (3 tries, request-id req-9)");
        let f = Failure::Upstream("upstream HTTP 500".into()).tried(1, None);
        assert_eq!(f.to_string(), "upstream HTTP 500", "nothing to add");
        let f = Failure::Stalled(Duration::from_millis(500)).tried(1, Some("mock-1".into()));
        assert_eq!(f.to_string(), "upstream stalled: no data for stall_timeout_ms=500 (request-id mock-1)");
        let f = Failure::Busy { waited: Duration::from_millis(8000), slots: 5 };
        assert_eq!(f.to_string(), "upstream busy: waited 8000 ms for one of 5 slots");
        let f = Failure::Unavailable { since: "2026-12-01T17:30:05Z".into(), last_error: "upstream HTTP 503".into() };
        assert_eq!(
            f.to_string(),
            "upstream unavailable (circuit open since 2026-12-01T17:30:05Z, last error upstream HTTP 503)"
        );
        let (a, c) = SpeakError::TooLong { chars: 200_000, max: 5000 }.answer();
        assert_eq!((a, c.cause), (Answer::CompleteAtOnce, CompletionCause::Error));
        assert_eq!(c.reason.as_deref(), Some("SPEAK would send 200000 characters upstream, max_speak_chars=5000"));
        let (a, c) = SpeakError::Refused(Refusal::Lexicon("4 pronunciation dictionaries".into())).answer();
        assert_eq!((a, c.cause), (Answer::CompleteAtOnce, CompletionCause::LexiconLoadFailure));
    }
}
