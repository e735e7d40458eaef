//! MRCP as the plugin speaks it, in plain Rust: the methods, status codes,
//! request states and completion causes of the synthesizer resource, a
//! request decoded once at the boundary (`Request`), and what the plugin
//! sends back (`Reply`).
//!
//! Nothing here touches the server: `ffi` decodes the server's messages into
//! these types and encodes replies from them. Everything above `ffi` works
//! with these owned values and can be tested without a host.

mod codes;
mod marker;
mod reply;
mod request;

pub use codes::{CompletionCause, Method, RateLabel, RequestState, Status, VoiceGender, VolumeLabel};
pub use marker::speech_marker;
pub use reply::{sanitize_header_value, Completion, Reply};
pub use request::{Origin, Rate, Request, SpeakHeaders, Volume};
