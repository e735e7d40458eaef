//! The protocol rules a run must keep whatever the interleaving, as checks
//! that any test can apply to what a channel recorded: one response per
//! request, one terminal message per SPEAK, no SPEAK-COMPLETE after the
//! response that stopped the SPEAK, SPEECH-MARKERs only while their SPEAK is
//! in progress and in document order, no audio outside a SPEAK or while it
//! is paused, exact audio.
//!
//! The checks return failure messages (an empty `Vec` or `None` when the
//! rule held) rather than panic, so that a long run (tests/chaos.rs) can
//! report every failure at once; a short test asserts on them.
//!
//! Times in messages are milliseconds since the channel's frame epoch.

use std::time::{Duration, Instant};

use unimrcp_shim::host::{
    Channel, FrameLog, Kind, Recorded, FRAME_BAD_BUFFER, FRAME_EVENT, FRAME_READ_FAILED, FRAME_UNWRITTEN,
};

use super::{for_request, is_speak_complete, COMPLETE, ERROR, IN_PROGRESS, NORMAL};

/// SYNTHESIZER_SPEECH_MARKER.
pub const SPEECH_MARKER: usize = 0;

/// Milliseconds from `epoch` to `at` (0 before it), for messages.
pub fn ms_since(epoch: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(epoch).as_secs_f64() * 1000.0
}

fn cause_text(cause: Option<u32>) -> String {
    cause.map_or_else(|| "none".into(), |c| format!("{c:03}"))
}

// ------------------------------------------------------------- responses

/// Every message refers to a request that was sent (`sent`: id and method
/// name, in the order sent), is a response or an event (no other message
/// type), and every request sent got exactly one response.
pub fn one_response_per_request(msgs: &[Recorded], sent: &[(u32, &str)]) -> Vec<String> {
    let mut f = Vec::new();
    let mut responses: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for m in msgs {
        if !sent.iter().any(|(id, _)| *id == m.request_id) {
            f.push(format!("{} refers to request {} that was never sent", m.summary(), m.request_id));
        }
        match m.kind {
            Kind::Response => *responses.entry(m.request_id).or_default() += 1,
            Kind::Event => {}
            Kind::Other(k) => f.push(format!("message of type {k}: {}", m.summary())),
        }
    }
    for (id, name) in sent {
        let n = responses.get(id).copied().unwrap_or(0);
        if n != 1 {
            f.push(format!("{name} {id} got {n} responses, expected exactly one"));
        }
    }
    f
}

/// A control request that ends no SPEAK (PAUSE, RESUME, STOP, …) is
/// answered `200 COMPLETE`.
pub fn answered_200_complete(name: &str, id: u32, m: &Recorded) -> Option<String> {
    (m.status_code != 200 || m.request_state != COMPLETE)
        .then(|| format!("{name} {id}: expected 200 COMPLETE, got {}", m.summary()))
}

/// A SPEAK-COMPLETE's Completion-Cause is `000 normal` or `004 error`, and
/// a `004` carries a non-empty Completion-Reason (what an operator acts on).
pub fn normal_or_error_with_reason(id: u32, m: &Recorded) -> Option<String> {
    match m.completion_cause {
        Some(NORMAL) => None,
        Some(ERROR) => (!matches!(m.completion_reason.as_deref(), Some(r) if !r.trim().is_empty()))
            .then(|| format!("SPEAK-COMPLETE {id} with cause 004 but no Completion-Reason")),
        other => Some(format!("SPEAK-COMPLETE {id} with Completion-Cause {} (000 or 004 expected)", cause_text(other))),
    }
}

/// The mark name of a Speech-Marker value, which must be
/// `timestamp=<digits>;<name>`.
pub fn marker_name(value: Option<&str>) -> Result<&str, String> {
    let value = value.ok_or("no Speech-Marker header")?;
    let (stamp, name) = value.split_once(';').ok_or_else(|| format!("Speech-Marker {value:?} names no mark"))?;
    let digits = stamp.strip_prefix("timestamp=").unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(format!("Speech-Marker {value:?} is not timestamp=<digits>;<name>"));
    }
    Ok(name)
}

// ------------------------------------------------------- SPEAK terminals

/// How a SPEAK ended: its terminal message.
#[derive(Clone, Debug)]
pub enum End {
    /// Its SPEAK-COMPLETE.
    Complete { cause: Option<u32>, reason: Option<String> },
    /// The response of a STOP-like request (`by`, request `id`) listing it.
    Stopped { by: &'static str, id: u32 },
}

impl End {
    /// "SPEAK-COMPLETE (cause 004)" / "STOP 7 response", for messages.
    pub fn describe(&self) -> String {
        match self {
            End::Complete { cause, .. } => format!("SPEAK-COMPLETE (cause {})", cause_text(*cause)),
            End::Stopped { by, id } => format!("{by} {id} response"),
        }
    }
}

/// A SPEAK answered IN-PROGRESS.
#[derive(Clone, Debug)]
pub struct Speak {
    pub id: u32,
    /// When the SPEAK was sent.
    pub sent: Instant,
    /// When and how it ended (None: no terminal message yet).
    pub end: Option<(Instant, End)>,
    /// Names of the SPEECH-MARKERs received for it, in order.
    pub marks: Vec<String>,
}

impl Speak {
    /// When it ended; panics if it did not (check that first).
    pub fn ended_at(&self) -> Instant {
        self.end.as_ref().expect("the SPEAK ended").0
    }
}

/// The SPEAKs of one channel, rebuilt from its messages in the order the
/// plugin sent them. Feed each message to the method for its kind; each
/// method checks the rules that message must keep against what came before
/// and records the failures in `f`. Together they check that every SPEAK
/// answered IN-PROGRESS gets exactly one terminal message (one
/// SPEAK-COMPLETE, or a STOP-like response listing it, then nothing).
pub struct SpeakSequence {
    /// Every SPEAK that went IN-PROGRESS, in order.
    pub speaks: Vec<Speak>,
    /// Index into `speaks` of the one in progress.
    pub current: Option<usize>,
    epoch: Instant,
}

impl SpeakSequence {
    pub fn new(epoch: Instant) -> SpeakSequence {
        SpeakSequence { speaks: Vec::new(), current: None, epoch }
    }

    fn rel(&self, at: Instant) -> f64 {
        ms_since(self.epoch, at)
    }

    /// The SPEAK in progress, as a list (what a STOP-like response must list).
    pub fn in_progress_ids(&self) -> Vec<u32> {
        self.current.map(|c| vec![self.speaks[c].id]).unwrap_or_default()
    }

    /// SPEAK `id` (sent at `sent`) was answered 200 IN-PROGRESS. Rule: at
    /// most one SPEAK is in progress per channel. Returns its index.
    pub fn in_progress(&mut self, id: u32, sent: Instant, f: &mut Vec<String>) -> usize {
        if let Some(c) = self.current {
            f.push(format!("SPEAK {id} went IN-PROGRESS while SPEAK {} was still in progress", self.speaks[c].id));
        }
        self.speaks.push(Speak { id, sent, end: None, marks: Vec::new() });
        self.current = Some(self.speaks.len() - 1);
        self.speaks.len() - 1
    }

    /// `m` answers a request that ends the SPEAK in progress (STOP,
    /// BARGE-IN-OCCURRED, DEACTIVATE; `name` and request `id`). Rules: it is
    /// `200 COMPLETE`; its Active-Request-Id-List lists exactly the SPEAK in
    /// progress at that moment (nothing when none was), and that is the
    /// SPEAK's terminal message.
    pub fn stop_like(&mut self, name: &'static str, id: u32, m: &Recorded, f: &mut Vec<String>) {
        f.extend(answered_200_complete(name, id, m));
        let listed = m.active_request_ids.clone().unwrap_or_default();
        let expected = self.in_progress_ids();
        if listed != expected {
            f.push(format!(
                "{name} {id} response at {:.1} ms lists {listed:?}, but the SPEAK in progress then was {expected:?}",
                self.rel(m.at)
            ));
        }
        if let Some(c) = self.current {
            if listed.contains(&self.speaks[c].id) {
                self.speaks[c].end = Some((m.at, End::Stopped { by: name, id }));
                self.current = None;
            }
        }
    }

    /// `m` answers PAUSE or RESUME (`name`, request `id`). Rules: it is
    /// `200 COMPLETE`, and it lists no SPEAK but the one in progress.
    pub fn pause_like(&self, name: &str, id: u32, m: &Recorded, f: &mut Vec<String>) {
        f.extend(answered_200_complete(name, id, m));
        let listed = m.active_request_ids.clone().unwrap_or_default();
        let in_progress = self.in_progress_ids();
        if !listed.iter().all(|l| in_progress.contains(l)) {
            f.push(format!("{name} {id} lists {listed:?}, but the SPEAK in progress was {in_progress:?}"));
        }
    }

    /// Why a message for SPEAK `id`, which is not the one in progress, is
    /// out of place: after its terminal message, or before it went
    /// IN-PROGRESS.
    fn not_in_progress(&self, id: u32, complete: bool) -> String {
        match self.speaks.iter().find(|s| s.id == id).and_then(|s| s.end.as_ref()) {
            Some((at, End::Stopped { by, id: sid })) => {
                format!("after the {by} {sid} response at {:.1} ms that listed it (and so ended it)", self.rel(*at))
            }
            Some((at, End::Complete { cause, .. })) if !complete => {
                format!("after its SPEAK-COMPLETE {} at {:.1} ms", cause_text(*cause), self.rel(*at))
            }
            Some((at, End::Complete { .. })) => format!("a second one (the first at {:.1} ms)", self.rel(*at)),
            None if complete => "for a SPEAK that was not in progress".into(),
            None if self.speaks.iter().any(|s| s.id == id) => "while it was not in progress".into(),
            None => "before its 200 IN-PROGRESS (or for a SPEAK never in progress)".into(),
        }
    }

    /// `m` is a SPEECH-MARKER event for SPEAK `id`, whose document has the
    /// marks `doc_marks` in document order (`describe` tells the document).
    /// Rules: its Speech-Marker is `timestamp=<digits>;<name>`; it is
    /// IN-PROGRESS; it comes before the channel's close answer (`closed_at`),
    /// after the SPEAK's 200 IN-PROGRESS and before its terminal message;
    /// it names a mark of that document, each at most once, in document
    /// order, none skipped.
    pub fn marker(
        &mut self,
        id: u32,
        m: &Recorded,
        closed_at: Option<Instant>,
        doc_marks: &[String],
        describe: impl Fn() -> String,
        f: &mut Vec<String>,
    ) {
        let name = match marker_name(m.speech_marker.as_deref()) {
            Ok(name) => name.to_owned(),
            Err(e) => {
                f.push(format!("SPEECH-MARKER {id} at {:.1} ms: {e}", self.rel(m.at)));
                return;
            }
        };
        let what = format!("SPEECH-MARKER {name:?} for SPEAK {id} at {:.1} ms", self.rel(m.at));
        if m.request_state != IN_PROGRESS {
            f.push(format!("{what} with request state {} (IN-PROGRESS expected)", m.request_state));
        }
        if let Some(closed) = closed_at {
            if m.at > closed {
                f.push(format!("{what}: after the channel's close answer at {:.1} ms", self.rel(closed)));
            }
        }
        let Some(c) = self.current.filter(|&c| self.speaks[c].id == id) else {
            f.push(format!("{what}: {}", self.not_in_progress(id, false)));
            return;
        };
        let got = &mut self.speaks[c].marks;
        match doc_marks.iter().position(|n| *n == name) {
            None => f.push(format!("{what}: no such mark in its document ({})", describe())),
            Some(_) if got.contains(&name) => f.push(format!("{what}: a second time (received {got:?})")),
            Some(k) => {
                let next = got.last().and_then(|l| doc_marks.iter().position(|n| n == l)).map_or(0, |i| i + 1);
                if k < next {
                    f.push(format!("{what}: out of document order {doc_marks:?} (received {got:?})"));
                } else if k > next {
                    f.push(format!(
                        "{what}: skips {:?} of document order {doc_marks:?} (received {got:?})",
                        &doc_marks[next..k]
                    ));
                }
            }
        }
        got.push(name);
    }

    /// `m` is the SPEAK-COMPLETE of SPEAK `id` (document marks `doc_marks`).
    /// Rules: it is COMPLETE; it is the terminal message of the SPEAK in
    /// progress (never after a STOP-like response that listed the SPEAK,
    /// never a second one); a `000` of a marked SPEAK follows every one of
    /// its marks and carries the last in its Speech-Marker; any other
    /// carries, if anything, the last mark received. Returns the SPEAK's
    /// index when it ended it.
    pub fn complete(
        &mut self,
        id: u32,
        m: &Recorded,
        doc_marks: &[String],
        describe: impl Fn() -> String,
        f: &mut Vec<String>,
    ) -> Option<usize> {
        if m.request_state != COMPLETE {
            f.push(format!("SPEAK-COMPLETE {id} with request state {}", m.request_state));
        }
        let Some(c) = self.current.filter(|&c| self.speaks[c].id == id) else {
            f.push(format!("SPEAK-COMPLETE {id} at {:.1} ms: {}", self.rel(m.at), self.not_in_progress(id, true)));
            return None;
        };
        let got = &self.speaks[c].marks;
        let what = format!("SPEAK-COMPLETE {id} {} at {:.1} ms", cause_text(m.completion_cause), self.rel(m.at));
        if m.completion_cause == Some(NORMAL) && !doc_marks.is_empty() && *got != doc_marks {
            f.push(format!(
                "{what}: SPEECH-MARKERs {got:?} received, but the document has {doc_marks:?} ({})",
                describe()
            ));
        }
        if m.speech_marker.is_some() {
            match (marker_name(m.speech_marker.as_deref()), got.last()) {
                (Err(e), _) => f.push(format!("{what}: {e}")),
                (Ok(name), Some(last)) if name == last => {}
                (Ok(name), last) => f.push(format!(
                    "{what} carries Speech-Marker {name:?}, but the last SPEECH-MARKER received was {last:?} ({})",
                    describe()
                )),
            }
        } else if m.completion_cause == Some(NORMAL) && !doc_marks.is_empty() {
            f.push(format!("{what} carries no Speech-Marker (its last mark is {:?})", doc_marks.last()));
        }
        let end = End::Complete { cause: m.completion_cause, reason: m.completion_reason.clone() };
        self.speaks[c].end = Some((m.at, end));
        self.current = None;
        Some(c)
    }
}

/// After a SPEAK and a STOP raced (`stop` is the STOP's response, `msgs`
/// the SPEAK's messages): either the STOP stopped it (its response lists
/// exactly the SPEAK) and no SPEAK-COMPLETE exists, or the SPEAK completed
/// first (the STOP lists nothing) with exactly one SPEAK-COMPLETE. Returns
/// that SPEAK-COMPLETE (None: the STOP won).
pub fn one_terminal_after_stop<'m>(
    msgs: &'m [Recorded],
    speak: u32,
    stop: &Recorded,
) -> Result<Option<&'m Recorded>, String> {
    let completes: Vec<&Recorded> = msgs.iter().filter(|m| is_speak_complete(m)).collect();
    match stop.active_request_ids.as_deref() {
        Some([id]) if *id == speak => {
            if completes.is_empty() {
                Ok(None)
            } else {
                Err(format!("SPEAK-COMPLETE after a STOP that stopped it: {msgs:#?}"))
            }
        }
        None => match completes[..] {
            [one] => Ok(Some(one)),
            _ => Err(format!("the SPEAK completed, exactly once: {msgs:#?}")),
        },
        other => Err(format!("unexpected Active-Request-Id-List {other:?}")),
    }
}

/// SPEAK `id` got exactly one SPEAK-COMPLETE (its terminal message when
/// nothing stopped it); the count of them otherwise.
pub fn exactly_one_complete(ch: &Channel, id: u32) -> Result<(), String> {
    let msgs = for_request(ch, id);
    match msgs.iter().filter(|m| is_speak_complete(m)).count() {
        1 => Ok(()),
        n => Err(format!("{n} SPEAK-COMPLETEs, exactly one terminal message expected: {msgs:#?}")),
    }
}

// ------------------------------------------------------------------ audio

/// The host flagged no frame as misuse: a frame left unwritten, a read that
/// failed, a changed buffer, or an event returned from read_frame.
pub fn no_flagged_frames(frames: &FrameLog) -> Option<String> {
    let bad = frames.count_flagged(FRAME_UNWRITTEN | FRAME_READ_FAILED | FRAME_BAD_BUFFER | FRAME_EVENT);
    (bad > 0).then(|| format!("{bad} frames flagged unwritten / read failed / bad buffer / event"))
}

/// The audio recorded is whole frames: `frame_bytes` per audio frame.
pub fn whole_frames(frames: &FrameLog, audio: &[u8], frame_bytes: usize) -> Option<String> {
    let audio_frames = frames.audio_frames();
    (audio_frames * frame_bytes != audio.len())
        .then(|| format!("{audio_frames} audio frames but {} audio bytes", audio.len()))
}

/// No audio after the STOP-like response `stop` (the 1 ms leaves the tick
/// that raced it).
pub fn no_audio_after_stop(ch: &Channel, stop: &Recorded) -> Result<(), String> {
    match ch.frames().audio_frames_after(stop.at + Duration::from_millis(1)) {
        0 => Ok(()),
        n => Err(format!("{n} audio frames after the STOP response")),
    }
}

/// Index of the first byte where `a` and `b` differ (the shorter length
/// when one is a prefix of the other).
pub fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// A SPEAK that did not complete normally played a prefix of what it
/// would have played (`sent`): never anything else.
pub fn is_prefix(played: &[u8], sent: &[u8]) -> bool {
    played.len() <= sent.len() && *played == sent[..played.len()]
}

/// Every audio frame of a channel attributed to the SPEAK playing then.
///
/// A frame's time is when its media tick started; the channel may be read
/// later in that tick. So the tick that started just before a SPEAK was
/// sent may already carry its audio (the racing tick), and a tick that
/// started before a SPEAK ended may carry the next SPEAK's first frame when
/// that followed at once (the straddling tick): such a frame is attributed
/// by its bytes, which are unique per SPEAK.
pub struct Attribution<'a> {
    pub frames: &'a FrameLog,
    pub audio: &'a [u8],
    pub frame_bytes: usize,
    /// Per frame: index of the SPEAK it belongs to.
    pub owner: Vec<Option<usize>>,
    /// Per frame: how many audio frames came before it.
    audio_index: Vec<usize>,
    /// Straddling ticks attributed by their bytes.
    pub straddling: usize,
}

impl<'a> Attribution<'a> {
    /// `speaks` must all have ended, each sent after the previous one
    /// ended; `expected[i]` is what SPEAK i can play (last frame padded).
    pub fn new(
        frames: &'a FrameLog,
        audio: &'a [u8],
        frame_bytes: usize,
        speaks: &[Speak],
        expected: &[Vec<u8>],
    ) -> Attribution<'a> {
        let fb = frame_bytes;
        let fr = &frames.frames;
        let mut audio_index = Vec::with_capacity(fr.len());
        let mut k = 0usize;
        for e in fr {
            audio_index.push(k);
            if e.is_audio() {
                k += 1;
            }
        }
        let mut a = Attribution { frames, audio, frame_bytes, owner: vec![None; fr.len()], audio_index, straddling: 0 };
        let mut prev_hi = 0usize;
        for (i, s) in speaks.iter().enumerate() {
            let end = s.ended_at();
            let racing = a.first_at_or_after(s.sent).saturating_sub(1);
            let mut lo = racing.max(prev_hi);
            // A tick that started before the previous SPEAK ended and read
            // this channel after this SPEAK was sent carries the audio of one
            // of the two: its bytes tell which (every SPEAK's audio is unique)
            // unless they fit the SPEAK it was given by time just as well (a
            // break's silence; the caller sends no SPEAK that starts with one
            // at once).
            let fits_owner = |o: usize| {
                let k = (0..racing).filter(|&j| a.owner[j] == Some(o) && fr[j].is_audio()).count();
                expected[o].get(k * fb..(k + 1) * fb) == Some(a.audio_of(racing))
            };
            if i > 0
                && racing + 1 == prev_hi
                && fr[racing].is_audio()
                && expected[i].get(..fb) == Some(a.audio_of(racing))
                && !a.owner[racing].is_some_and(fits_owner)
            {
                a.owner[racing] = Some(i);
                lo = racing;
                a.straddling += 1;
            }
            let hi = a.first_at_or_after(end).max(lo);
            for o in &mut a.owner[lo..hi] {
                *o = Some(i);
            }
            prev_hi = hi;
        }
        a
    }

    /// When frame `j`'s tick started.
    pub fn at(&self, j: usize) -> Instant {
        self.frames.at(&self.frames.frames[j])
    }

    /// Index of the first frame whose tick started at or after `t`.
    pub fn first_at_or_after(&self, t: Instant) -> usize {
        self.frames.frames.partition_point(|e| self.frames.at(e) < t)
    }

    /// The bytes of audio frame `j`.
    pub fn audio_of(&self, j: usize) -> &'a [u8] {
        let k = self.audio_index[j];
        &self.audio[k * self.frame_bytes..(k + 1) * self.frame_bytes]
    }

    /// What each of `n` SPEAKs played, frame after frame.
    pub fn played(&self, n: usize) -> Vec<Vec<u8>> {
        let mut played: Vec<Vec<u8>> = vec![Vec::new(); n];
        for (j, e) in self.frames.frames.iter().enumerate() {
            if let (true, Some(i)) = (e.is_audio(), self.owner[j]) {
                played[i].extend_from_slice(self.audio_of(j));
            }
        }
        played
    }

    /// Rule: no audio while no SPEAK is playing: after a SPEAK's terminal
    /// message until the next SPEAK, except a tick within `margin` of the
    /// terminal message (it raced the message). Returns the failure and how
    /// many racing ticks were tolerated.
    pub fn no_audio_outside_speaks(&self, speaks: &[Speak], margin: Duration) -> (Option<String>, usize) {
        let rel = |at: Instant| ms_since(self.frames.epoch, at);
        let (mut racing, mut outside) = (0usize, 0usize);
        let mut first_outside: Option<String> = None;
        for (j, e) in self.frames.frames.iter().enumerate() {
            if !e.is_audio() || self.owner[j].is_some() {
                continue;
            }
            let t_j = self.at(j);
            let prev = speaks.iter().rev().find(|s| s.ended_at() <= t_j);
            match prev {
                Some(s) if t_j < s.ended_at() + margin => racing += 1,
                _ => {
                    outside += 1;
                    if first_outside.is_none() {
                        let after = match prev {
                            Some(s) => {
                                let (end_at, end) = s.end.as_ref().expect("checked");
                                format!(
                                    "{:.1} ms after SPEAK {} ended by its {}",
                                    (t_j - *end_at).as_secs_f64() * 1000.0,
                                    s.id,
                                    end.describe()
                                )
                            }
                            None => "before any SPEAK".into(),
                        };
                        let next = speaks
                            .iter()
                            .find(|s| s.sent > t_j)
                            .map(|s| format!("; next SPEAK {} sent at {:.1} ms", s.id, rel(s.sent)));
                        first_outside = Some(format!(
                            "audio frame (tick {}) at {:.1} ms {after}{}",
                            e.tick,
                            rel(t_j),
                            next.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        let failure =
            first_outside.map(|first| format!("{outside} audio frame(s) while no SPEAK was playing; first: {first}"));
        (failure, racing)
    }

    /// Rule: silence while paused. `pauses` are (PAUSE response time, PAUSE
    /// request id, index of the SPEAK it listed), `resumes` (RESUME request
    /// id, when it was sent). From `margin` after the PAUSE response until
    /// the next RESUME was sent (the tick that started just before may race
    /// it; the RESUME's response may even be recorded after the SPEAK
    /// completed) or the SPEAK ended, the SPEAK plays nothing. `describe`
    /// tells a SPEAK by id, `msgs` are the channel's, for the message.
    pub fn silent_while_paused(
        &self,
        speaks: &[Speak],
        pauses: &[(Instant, u32, usize)],
        resumes: &[(u32, Instant)],
        margin: Duration,
        msgs: &[Recorded],
        describe: impl Fn(u32) -> String,
    ) -> Vec<String> {
        let rel = |at: Instant| ms_since(self.frames.epoch, at);
        let fr = &self.frames.frames;
        let mut f = Vec::new();
        for (p_at, p_id, c) in pauses {
            let speak = &speaks[*c];
            let (s_end, end) = speak.end.as_ref().expect("checked");
            let resume = resumes.iter().filter(|(id, _)| id > p_id).min_by_key(|(id, _)| *id).copied();
            let (until, racing) = match resume {
                Some((_, sent)) if sent < *s_end => (sent, true),
                _ => (*s_end, false),
            };
            let from = self.first_at_or_after(*p_at + margin);
            let mut to = self.first_at_or_after(until);
            if racing {
                to = to.saturating_sub(1); // the tick racing the RESUME
            }
            // (A frame of that range may belong to the next SPEAK: the tick
            // that straddled the end, recognised by its bytes.)
            if let Some(j) = (from..to.max(from)).find(|&j| fr[j].is_audio() && self.owner[j] == Some(*c)) {
                let ended = match end {
                    End::Complete { cause, reason } => {
                        format!("SPEAK-COMPLETE {} {:?}", cause_text(*cause), reason.as_deref().unwrap_or(""))
                    }
                    End::Stopped { by, id } => format!("{by} {id} response"),
                };
                let resume = match resume {
                    Some((id, sent)) => format!("next RESUME {id} sent at {:.1} ms", rel(sent)),
                    None => "no RESUME after it".into(),
                };
                let around: Vec<String> = msgs
                    .iter()
                    .filter(|m| m.at + Duration::from_secs(2) > *p_at && m.at < *s_end + Duration::from_millis(500))
                    .map(|m| format!("{:.1} ms {}", rel(m.at), m.summary()))
                    .collect();
                f.push(format!(
                    "audio frame (tick {}) at {:.1} ms while SPEAK {} ({}) was paused: PAUSE {p_id} answered at {:.1} ms; \
                     {resume}; SPEAK ended at {:.1} ms by {ended}; messages around: {around:?}",
                    fr[j].tick,
                    rel(self.at(j)),
                    speak.id,
                    describe(speak.id),
                    rel(*p_at),
                    rel(*s_end),
                ));
            }
        }
        f
    }

    /// The frames and messages around the end of SPEAK `i`, for failure
    /// messages.
    pub fn around_end(&self, i: usize, speaks: &[Speak], msgs: &[Recorded]) -> String {
        let rel = |at: Instant| ms_since(self.frames.epoch, at);
        let fr = &self.frames.frames;
        let end_at = speaks[i].ended_at();
        let last = self.owner.iter().rposition(|o| *o == Some(i)).unwrap_or_else(|| self.first_at_or_after(end_at));
        let frames: Vec<String> = (last.saturating_sub(2)..(last + 4).min(fr.len()))
            .map(|j| {
                let kind = if !fr[j].is_audio() {
                    "no audio"
                } else if fr[j].is_audible() {
                    "audio"
                } else {
                    "silent audio"
                };
                let whose = self.owner[j].map_or("nobody's".to_string(), |o| format!("SPEAK {}'s", speaks[o].id));
                format!("tick {} at {:.1} ms: {kind}, {whose}", fr[j].tick, rel(self.at(j)))
            })
            .collect();
        let near: Vec<String> = msgs
            .iter()
            .filter(|m| m.at + Duration::from_millis(100) > end_at && m.at < end_at + Duration::from_millis(100))
            .map(|m| format!("{:.1} ms {}", rel(m.at), m.summary()))
            .collect();
        format!("ended at {:.1} ms; frames {frames:?}; messages {near:?}", rel(end_at))
    }
}
