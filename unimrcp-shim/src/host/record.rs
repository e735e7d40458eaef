//! What the host records: log lines, the MRCP messages the plugin sent,
//! channel open/close answers and the media frames read.

use std::time::{Duration, Instant};

use super::log::PRIORITY_NAMES;

/// One `apt_log` call.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Instant,
    /// The log source's configured name, or "default" for `def_log_source`.
    pub source: String,
    /// APT priority: 0 EMERGENCY .. 3 ERROR, 4 WARNING, 5 NOTICE, 6 INFO, 7 DEBUG.
    pub priority: u32,
    pub text: String,
    /// OS name of the thread that logged.
    pub thread: String,
    pub file: String,
    pub line: i32,
}

impl LogLine {
    pub fn priority_name(&self) -> &'static str {
        PRIORITY_NAMES.get(self.priority as usize).copied().unwrap_or("?")
    }

    /// One line of text, with the time relative to `epoch`.
    pub fn display(&self, epoch: Instant) -> String {
        let ms = self.at.saturating_duration_since(epoch).as_secs_f64() * 1000.0;
        format!("{ms:10.3} [{:<8}] [{}] [{}] {}", self.priority_name(), self.source, self.thread, self.text)
    }
}

/// Message type of a recorded MRCP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Response,
    Event,
    /// Anything else in `start_line.message_type` (a plugin bug).
    Other(u32),
}

/// An MRCP message the plugin sent (`mrcp_engine_channel_message_send`),
/// copied out when it was sent.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    /// Thread that called on_message.
    pub thread: String,
    pub kind: Kind,
    pub request_id: u32,
    pub method_id: usize,
    pub method_name: String,
    pub status_code: u32,
    pub request_state: u32,
    /// From the header fields the plugin added (what goes on the wire).
    pub completion_cause: Option<u32>,
    pub completion_reason: Option<String>,
    pub active_request_ids: Option<Vec<u32>>,
    pub speech_marker: Option<String>,
    /// Every header field present, in header-id order, as MRCP text.
    pub header_fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A compact one-line rendering, e.g. "RESPONSE 1 200 IN-PROGRESS".
    pub fn summary(&self) -> String {
        let state = match self.request_state {
            0 => "COMPLETE",
            1 => "IN-PROGRESS",
            2 => "PENDING",
            _ => "?",
        };
        match self.kind {
            Kind::Response => format!("RESPONSE {} {} {}", self.request_id, self.status_code, state),
            Kind::Event => {
                let mut s = format!("EVENT {} {} {}", self.method_name, self.request_id, state);
                if let Some(cause) = self.header("Completion-Cause") {
                    s.push_str(&format!(" Completion-Cause: {cause}"));
                }
                s
            }
            Kind::Other(t) => format!("MESSAGE(type {t}) {} {}", self.request_id, self.method_name),
        }
    }
}

/// A channel's open or close answer, or something the host did to it.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    pub at: Instant,
    pub thread: String,
    pub what: LifecycleKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleKind {
    /// `mrcp_engine_channel_open_respond(ch, status)`.
    OpenResponded(bool),
    /// `mrcp_engine_channel_close_respond(ch)`.
    CloseResponded,
}

/// Frame flag: read_frame set MEDIA_FRAME_TYPE_AUDIO.
pub const FRAME_AUDIO: u8 = 1;
/// Frame flag: an audio frame whose bytes are all zero.
pub const FRAME_ALL_ZERO: u8 = 2;
/// Frame flag: AUDIO was set but the buffer still holds the host's 0xA5
/// fill pattern (the plugin flagged audio without writing it).
pub const FRAME_UNWRITTEN: u8 = 4;
/// Frame flag: read_frame returned FALSE.
pub const FRAME_READ_FAILED: u8 = 8;
/// Frame flag: MEDIA_FRAME_TYPE_EVENT was set.
pub const FRAME_EVENT: u8 = 16;
/// Frame flag: the plugin changed codec_frame.buffer or .size.
pub const FRAME_BAD_BUFFER: u8 = 32;

/// One read_frame call of one channel.
#[derive(Clone, Copy, Debug)]
pub struct FrameEntry {
    /// Media clock tick (shared by all channels of the server).
    pub tick: u64,
    /// When the tick started, in nanoseconds since `FrameLog::epoch`.
    pub at_nanos: u64,
    /// When the clock meant it to start (its deadline), in nanoseconds since
    /// `FrameLog::epoch`; `at_nanos` for a manual tick. A tick never starts
    /// before it is due; how late it starts is up to the OS scheduler.
    pub due_nanos: u64,
    /// FRAME_* bits.
    pub flags: u8,
}

impl FrameEntry {
    pub fn is_audio(&self) -> bool {
        self.flags & FRAME_AUDIO != 0
    }

    /// Audio with at least one non-zero byte.
    pub fn is_audible(&self) -> bool {
        self.is_audio() && self.flags & FRAME_ALL_ZERO == 0
    }
}

/// Every frame read for one channel, in order.
#[derive(Clone, Debug)]
pub struct FrameLog {
    pub epoch: Instant,
    /// Bytes per frame (rate / 100 * 2).
    pub frame_bytes: usize,
    pub frames: Vec<FrameEntry>,
}

impl FrameLog {
    pub fn at(&self, entry: &FrameEntry) -> Instant {
        self.epoch + Duration::from_nanos(entry.at_nanos)
    }

    /// The first frame that carried non-zero audio.
    pub fn first_audible(&self) -> Option<FrameEntry> {
        self.frames.iter().copied().find(FrameEntry::is_audible)
    }

    /// The first audible frame at or after `t`.
    pub fn first_audible_after(&self, t: Instant) -> Option<FrameEntry> {
        self.frames.iter().copied().find(|f| f.is_audible() && self.at(f) >= t)
    }

    /// Frames flagged AUDIO whose tick started at or after `t`.
    pub fn audio_frames_after(&self, t: Instant) -> usize {
        self.frames.iter().filter(|f| f.is_audio() && self.at(f) >= t).count()
    }

    pub fn audio_frames(&self) -> usize {
        self.frames.iter().filter(|f| f.is_audio()).count()
    }

    /// Frames with any of the given FRAME_* bits.
    pub fn count_flagged(&self, bits: u8) -> usize {
        self.frames.iter().filter(|f| f.flags & bits != 0).count()
    }

    /// Milliseconds of audio delivered (AUDIO frames × 10 ms).
    pub fn audio_ms(&self) -> u64 {
        self.audio_frames() as u64 * 10
    }
}
