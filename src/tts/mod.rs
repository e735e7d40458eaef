//! Text to speech over HTTP: what one request asks for (`SpeechRequest`),
//! the vendor seam (`Provider`), and the vendor-free transport that runs a
//! request on a channel's own curl handles.
//!
//! To add a provider (another vendor, or another ElevenLabs endpoint):
//! implement `Provider` beside `elevenlabs/`, and choose it in
//! `engine::Engine::open`. The transport, the cache and the worker stay as
//! they are. The cache key is the provider's `identity` of each request
//! (its serialized body and output format), so it cannot drift from what
//! is sent.

pub mod capacity;
pub mod elevenlabs;
pub mod network;
pub mod prewarm;
mod transport;

use std::sync::Arc;

use crate::config::Config;

pub use network::Network;
pub use transport::{Outcome, Stats, Transport, Trouble, READ_BUFFER};

/// One upstream request: a part of a SPEAK's text in one voice and style.
#[derive(Clone, Debug)]
pub struct SpeechRequest {
    pub config: Arc<Config>,
    pub text: String,
    pub sample_rate: u32,
    /// Text spoken just before / after this request (long SPEAKs are sent
    /// in parts), so the voice carries on naturally across the seam.
    pub previous_text: Option<String>,
    pub next_text: Option<String>,
    /// The upstream's ids of the parts sent before this one (at most 3,
    /// most recent last), when the model takes them (request stitching).
    /// Known only once those parts were answered, so they are set by the
    /// worker (`plan::stitch`), never part of the plan or the cache key.
    pub previous_request_ids: Vec<String>,
    /// Linear gain for the samples (Prosody-Volume); 1.0 passes them as sent.
    pub gain: f32,
    /// Ask for character alignment: the request has `<mark>`s inside its
    /// text.
    pub with_timestamps: bool,
}

impl SpeechRequest {
    /// One whole text at unit gain, no neighbours: what unit tests build.
    #[cfg(test)]
    pub fn plain(config: Arc<Config>, text: &str, sample_rate: u32) -> SpeechRequest {
        SpeechRequest {
            config,
            text: text.into(),
            sample_rate,
            previous_text: None,
            next_text: None,
            previous_request_ids: Vec::new(),
            gain: 1.0,
            with_timestamps: false,
        }
    }
}

/// Reads a response body that is not raw PCM (e.g. JSON lines carrying
/// base64 audio and alignment).
pub trait BodyDecoder: Send {
    /// Consumes `data`: decoded PCM is appended to `audio`, the start time
    /// (seconds) of each newly aligned character to `starts`.
    fn feed(&mut self, data: &[u8], audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String>;
    /// The body ended.
    fn finish(&mut self, audio: &mut Vec<u8>, starts: &mut Vec<f64>) -> Result<(), String>;
}

/// A TTS vendor's HTTP API.
pub trait Provider: Send + Sync {
    /// The request's URL at `base` (the primary base URL, or the fallback
    /// while the primary's circuit is open).
    fn url(&self, base: &str, req: &SpeechRequest) -> String;
    /// Request headers, secrets included (never logged).
    fn headers(&self, req: &SpeechRequest) -> Vec<String>;
    fn body(&self, req: &SpeechRequest) -> String;
    /// Everything that shapes the audio, without secrets: hashed into the
    /// cache key.
    fn identity(&self, req: &SpeechRequest) -> Vec<u8>;
    /// None: the body is the PCM itself.
    fn decoder(&self, req: &SpeechRequest) -> Option<Box<dyn BodyDecoder>>;
    /// Whether a 2xx response of this content type carries what we asked for.
    fn is_audio(&self, content_type: &str, decoded: bool) -> bool;
    /// (status, message) of an error body, as the vendor words them.
    fn error_detail(&self, body: &[u8]) -> (Option<String>, Option<String>);
    /// Whether an error response refuses a pronunciation dictionary the
    /// request named (the SPEAK then ends 006 lexicon-load-failure).
    fn rejects_dictionary(&self, _status: u32, _body: &[u8]) -> bool {
        false
    }
    /// The response header that carries the upstream's id of the request
    /// (lowercase), for stitching and the summary line.
    fn request_id_header(&self) -> Option<&'static str> {
        None
    }
    /// What a response header tells about the account or the request.
    fn read_header(&self, _name: &str, _value: &str) -> Option<Told> {
        None
    }
    /// A GET at `base` that costs nothing (no characters) and proves the
    /// connection and the key: URL and headers (secrets included, never
    /// logged). Used to open and refresh warm connections (`prewarm`).
    fn probe(&self, base: &str, config: &Config) -> (String, Vec<String>);
}

/// What the upstream tells in a response header, beside the audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Told {
    /// Characters billed for the request.
    Characters(u64),
    /// The region that served it.
    Region(String),
    /// The account's concurrency limit.
    MaxConcurrency(usize),
}
