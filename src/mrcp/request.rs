use super::{Method, RateLabel, VoiceGender, VolumeLabel};

/// Which server message a `Request` came from: only `ffi` turns it back
/// into a pointer, to build replies in that message's pool. The server
/// keeps the message alive until its final response (a SPEAK: until its
/// SPEAK-COMPLETE, or the STOP response that ends it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin(usize);

impl Origin {
    pub fn from_addr(addr: usize) -> Origin {
        Origin(addr)
    }

    pub fn addr(self) -> usize {
        self.0
    }
}

/// Prosody-Rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Label(RateLabel),
    /// A relative change: 1.5 is 50 % faster.
    Relative(f32),
}

/// Prosody-Volume.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Volume {
    Label(VolumeLabel),
    /// 0–100; 50 is medium.
    Numeric(f32),
    /// A relative change: 2.0 is twice as loud.
    Relative(f32),
}

/// The headers that choose how a SPEAK sounds (the server has already
/// merged SET-PARAMS values into them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpeakHeaders {
    pub voice_name: Option<String>,
    pub voice_gender: Option<VoiceGender>,
    pub speech_language: Option<String>,
    pub prosody_rate: Option<Rate>,
    pub prosody_volume: Option<Volume>,
    /// Vendor-Specific-Parameters, as name/value pairs.
    pub vendor: Vec<(String, String)>,
}

/// A request, decoded once on the MRCP Server thread. To add a header:
/// read it in `ffi::message::decode`, add its field here (or to
/// `SpeakHeaders`), and use it in `config::resolve` (README "Architecture").
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub origin: Origin,
    pub id: u32,
    pub method: Method,
    /// As the client wrote it, for log lines.
    pub method_name: String,
    pub content_type: Option<String>,
    pub logging_tag: Option<String>,
    pub cache_control: Option<String>,
    pub speak: SpeakHeaders,
    /// The body, copied (a SPEAK body is bounded, text::MAX_BODY_BYTES).
    pub body: Vec<u8>,
}
