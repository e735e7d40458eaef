use super::{CompletionCause, RequestState, Status};

/// Why a SPEAK ended, as MRCP puts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub cause: CompletionCause,
    pub reason: Option<String>,
}

impl Completion {
    pub fn normal() -> Self {
        Completion { cause: CompletionCause::Normal, reason: None }
    }

    pub fn error(reason: impl Into<String>) -> Self {
        Completion { cause: CompletionCause::Error, reason: Some(reason.into()) }
    }

    /// The three-digit code and name, for log lines.
    pub fn code(&self) -> &'static str {
        self.cause.code()
    }
}

/// A message the plugin sends about a request: its response, or an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Response {
        status: Status,
        state: RequestState,
        /// Completion-Cause / Completion-Reason (refusals).
        completion: Option<Completion>,
        /// Active-Request-Id-List (STOP, BARGE-IN-OCCURRED, PAUSE, RESUME).
        active_ids: Vec<u32>,
        /// Speech-Marker value.
        marker: Option<String>,
    },
    /// SPEAK-COMPLETE.
    SpeakComplete { completion: Completion, marker: Option<String> },
    /// SPEECH-MARKER.
    SpeechMarker { marker: String },
}

impl Reply {
    /// A response with nothing but its status and state.
    pub fn response(status: Status, state: RequestState) -> Reply {
        Reply::Response { status, state, completion: None, active_ids: Vec::new(), marker: None }
    }

    /// A final response with a completion (a refused request).
    pub fn refusal(status: Status, completion: Completion) -> Reply {
        Reply::Response {
            status,
            state: RequestState::Complete,
            completion: Some(completion),
            active_ids: Vec::new(),
            marker: None,
        }
    }
}

/// A header value is one line of printable text: no CR/LF (that would
/// inject header lines), bounded in length.
pub fn sanitize_header_value(value: &str) -> String {
    const MAX: usize = 240;
    let mut out: String =
        value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned();
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(sanitize_header_value("a\r\nInjected: x"), "a  Injected: x");
        let long = "é".repeat(300);
        let s = sanitize_header_value(&long);
        assert!(s.len() <= 240 && s.chars().all(|c| c == 'é'));
    }
}
