//! Speech markers: where each `<mark>` is in a SPEAK's audio, and the
//! SPEECH-MARKER sent once the media thread has played past it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::speak::send_marker;
use super::{Speak, Worker};
use crate::media::NO_CUE;
use crate::plan;

/// Marks placed in the current SPEAK's audio, in order: (byte position in
/// its buffer generation, name). Announced once the media thread has
/// played past them.
#[derive(Default)]
pub(super) struct Marks {
    pub(super) due: VecDeque<(u64, String)>,
}

impl Marks {
    pub(super) fn clear(&mut self) {
        self.due.clear();
    }

    /// Positions never go backwards: an estimate cannot overtake a mark
    /// already placed.
    pub(super) fn place(&mut self, position: u64, name: String) {
        let floor = self.due.back().map_or(0, |&(p, _)| p);
        self.due.push_back((position.max(floor), name));
    }
}

/// The marks inside one request's text, placed as its alignment arrives.
pub(super) struct PartMarks<'p> {
    /// Where the request's audio starts in the buffer generation.
    start: u64,
    chars: usize,
    marks: &'p [(usize, String)],
    next: usize,
    rate: u32,
}

impl<'p> PartMarks<'p> {
    pub(super) fn new(start: u64, part: &'p plan::Part, rate: u32) -> Self {
        PartMarks { start, chars: part.text.chars().count(), marks: &part.marks, next: 0, rate }
    }

    /// Places every mark whose position is known: at offset 0 the start;
    /// inside the text the start time of the character after it; at the
    /// end (or, if the alignment never covered it, proportionally) once
    /// the request's audio is all in.
    ///
    /// `starts` count from the start of this request's audio, whatever the
    /// lines said: ElevenLabs sends times from the start of the response
    /// (its documented example for /stream/with-timestamps concatenates the
    /// lines' times unchanged), and the decoder (tts/elevenlabs/timestamps.rs)
    /// shifts lines whose times go backwards (chunk-relative) onto that
    /// scale. A time past the audio received is placed there anyway (its
    /// audio is still to come) and clamped to the request's end once all
    /// of it is in.
    pub(super) fn place(&mut self, starts: &[f64], bytes: u64, finished: bool, into: &mut Marks) {
        while let Some((offset, name)) = self.marks.get(self.next) {
            let at = if *offset == 0 {
                0
            } else if let Some(&t) = starts.get(*offset) {
                ((t * f64::from(self.rate)).round() as u64 * 2).min(if finished { bytes } else { u64::MAX })
            } else if finished {
                let share = bytes as f64 * (*offset).min(self.chars) as f64 / self.chars.max(1) as f64;
                (share as u64) & !1
            } else {
                return;
            };
            into.place(self.start + at, name.clone());
            self.next += 1;
        }
    }
}

impl Worker {
    /// Sends SPEECH-MARKER for every mark the media thread has played past
    /// (all of them when `all`: the SPEAK's last frame was played), and arms
    /// the media thread's cue for the next one.
    pub(super) fn announce(&mut self, speak: &Arc<Speak>, all: bool) {
        while let Some(&(position, _)) = self.marks.due.front() {
            if !all {
                self.shared.link.cue_at.store(position, Ordering::Release);
                // Read after arming: a frame taken in between is seen here
                // or wakes us.
                let played = {
                    let playback = self.shared.link.playback.lock();
                    (playback.generation == speak.generation).then(|| playback.played())
                };
                if !played.is_some_and(|p| p > position) {
                    return;
                }
            }
            let (_, name) = self.marks.due.pop_front().expect("checked above");
            let _active = self.shared.active.lock();
            send_marker(self.channel, speak, &name);
        }
        self.shared.link.cue_at.store(NO_CUE, Ordering::Release);
    }
}
