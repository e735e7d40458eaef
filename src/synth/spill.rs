//! A SPEAK's audio beyond the channel's buffer, held in a spill file, so
//! that its upstream transfer runs at the upstream's speed and ends (its
//! connection and concurrency slot free again) when generation ends, not
//! when playback does.
//!
//! `SpillSink` is the SPEAK's `AudioSink` for all of its buffer generation:
//! every upstream request and every `<break>`'s silence goes through it, in
//! order. While nothing is held back, bytes that fit go straight into the
//! buffer; anything else joins what is held, which is, in order, the
//! file's part (`read..written`) and then the stage: a buffer lent by the
//! engine's pool (media/pool.rs) where spilled bytes gather, so that the
//! file is written in large pieces (a full stage, or whatever is staged
//! when the worker goes to sleep: `pump` and `flush`), not once per network
//! chunk. The worker moves what is held into the buffer (`pump`) as the
//! media thread makes room, a refill per wake-up, woken through
//! `Link::want_space` once a useful refill fits: the file's part in reads
//! of a pool buffer, then the staged bytes straight from memory. After the
//! last request the worker drains what is left (`Worker::drain_spill`)
//! while serving commands, then lets the buffer play out as before.
//!
//! The file is taken on the first byte that does not fit, from the
//! process's spill files (`spill_files.rs`: one kept from an earlier SPEAK,
//! emptied, else a new one), where the engine's `spill_dir` says: in
//! memory by default (a memfd, never written to a disk), else in that
//! directory, unlinked at once (`O_TMPFILE`, or a unique name removed right
//! away), 0600. The SPEAK reads back only bytes it wrote
//! itself: its part, `read..written`, starts at 0 in a file it took empty,
//! and starts again at 0 whenever it has been drained. When the sink is
//! dropped at the SPEAK's end the file goes back, emptied (its pages freed
//! at once), to serve a later SPEAK, or is closed (a write or read of it
//! failed, too many are idle, or it is past its life). If no file can be
//! had or written, that is logged once and the SPEAK falls back to
//! backpressure: what is held (staged bytes included) still drains in
//! order, and `push` says `Full` (the transfer is paused) until there is
//! room, as it was before the spill existed.
//!
//! Locks: `link.playback`, for a copy, and the pools' lists (buffers,
//! files), for a push or a pop; never two at once, and the file is never
//! touched under any (nor made, emptied or closed). The
//! media thread is not involved beyond what it always did (`read_frame`
//! sees `want_space`).

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::player::Part;
use super::sources::ROOM_WAIT;
use super::spill_files::{spill_files, FilePool, SpillFile, SpillPlace};
use super::{Job, Worker};
use crate::error::Failure;
use crate::media::{bytes_per_ms, spill_buffers, AudioSink, BufferPool, Link, Loan, PlayState, Playback, Push};

/// Room the worker waits for before it refills the buffer from what is
/// held (at most three quarters of the SPEAK's buffer): each refill is one
/// wake-up of the worker, so the larger, the fewer (at the default
/// max_buffer_ms of 2000 and 8 kHz, one per 1.5 s of audio spilled, bench
/// [10]; it was one per second when the last half was kept). At most a
/// pool buffer, so that a refill is one read of the file.
const PUMP_WAKE: usize = 32 * 1024;

/// A timed refill sleeps this much past the moment its room should be
/// free: the media thread takes a frame per 10 ms tick, and a tick may come
/// late; waking before the room is there would cost a second sleep.
const DUE_SLACK: Duration = Duration::from_millis(20);

/// What the buffer must still hold when a refill deferred to the end of a
/// linger comes (`refill_after`): a timed wake-up that comes late (a loaded
/// server) still finds audio to play. The safety net left with
/// `read_frame` covers a wake-up later than that.
const DEFER_MARGIN: Duration = Duration::from_millis(100);

/// One SPEAK's way into the channel's buffer, spilling what does not fit.
pub(super) struct SpillSink {
    link: Arc<Link>,
    generation: u64,
    /// Where the file is made.
    place: SpillPlace,
    /// The channel's label and the SPEAK's request id, for log lines.
    label: String,
    request_id: u32,
    /// Lends the stage and the refills' buffers.
    pool: Arc<BufferPool>,
    /// Lends the file.
    files: Arc<FilePool>,
    /// Taken from `files` on the first byte that does not fit; given back
    /// when the sink is dropped, unless writing or reading it failed.
    file: Option<SpillFile>,
    /// Bytes `read..written` of the file are held: spilled, not yet in the
    /// buffer.
    read: u64,
    written: u64,
    /// Bytes `staged..stage_end` of `stage` are held after the file's part:
    /// accepted, not yet written (nor in the buffer). The loan is kept only
    /// while it holds bytes (and within a wake-up that is filling it).
    stage: Option<Loan>,
    staged: usize,
    stage_end: usize,
    /// The file could not be made or written: backpressure from now on.
    failed: bool,
    /// The SPEAK was stopped (its generation is gone).
    stale: bool,
    /// Held audio could not be read back.
    lost: Option<String>,
    /// Bytes the caller plays per ms (the SPEAK's rate): when room will be
    /// free, for a timed refill.
    bytes_per_ms: usize,
    /// `played` when the last timed refill was chosen: a timed wake that
    /// finds it unchanged saw no playing (PAUSE), and the next sleep waits
    /// for `read_frame` instead.
    timed_at: Option<u64>,
    /// Writes to the file and reads from it so far (what the tests count).
    #[cfg(test)]
    writes: u64,
    #[cfg(test)]
    reads: u64,
    /// Test hook: file writes fail once this many bytes were written.
    #[cfg(test)]
    fail_writes_after: Option<u64>,
}

impl SpillSink {
    pub(super) fn new(
        link: Arc<Link>,
        generation: u64,
        place: SpillPlace,
        label: String,
        request_id: u32,
        sample_rate: u32,
    ) -> SpillSink {
        let pools = (Arc::clone(spill_buffers()), Arc::clone(spill_files()));
        let mut sink = SpillSink::with_pools(link, generation, place, label, request_id, pools);
        sink.bytes_per_ms = bytes_per_ms(sample_rate);
        sink
    }

    fn with_pools(
        link: Arc<Link>,
        generation: u64,
        place: SpillPlace,
        label: String,
        request_id: u32,
        (pool, files): (Arc<BufferPool>, Arc<FilePool>),
    ) -> SpillSink {
        SpillSink {
            link,
            generation,
            place,
            label,
            request_id,
            pool,
            files,
            file: None,
            read: 0,
            written: 0,
            stage: None,
            staged: 0,
            stage_end: 0,
            failed: false,
            stale: false,
            lost: None,
            bytes_per_ms: bytes_per_ms(8000),
            timed_at: None,
            #[cfg(test)]
            writes: 0,
            #[cfg(test)]
            reads: 0,
            #[cfg(test)]
            fail_writes_after: None,
        }
    }

    /// Bytes held back in the file.
    fn in_file(&self) -> u64 {
        self.written - self.read
    }

    /// Bytes held back in the stage.
    fn in_stage(&self) -> usize {
        self.stage_end - self.staged
    }

    /// Bytes held back: spilled or staged, not yet in the buffer.
    fn held(&self) -> u64 {
        self.in_file() + self.in_stage() as u64
    }

    fn gone(&self, playback: &Playback) -> bool {
        playback.generation != self.generation || playback.state == PlayState::Idle
    }

    /// Stopped: what is held goes nowhere, its memory back to the pool.
    fn go_stale(&mut self) -> Push {
        self.stale = true;
        self.drop_stage();
        Push::Stale
    }

    fn drop_stage(&mut self) {
        self.stage = None;
        self.staged = 0;
        self.stage_end = 0;
    }

    /// Takes `data` behind what is held: into the stage, which goes to the
    /// file whenever it is full (the file made now if need be). False,
    /// logged once, when that cannot be done: nothing of `data` is taken
    /// and the sink falls back to backpressure for the rest of the SPEAK.
    fn spill(&mut self, data: &[u8]) -> bool {
        if self.file.is_none() {
            match self.files.take(&self.place) {
                Ok(file) => {
                    log::debug!(
                        "[{}] SPEAK {}: audio beyond max_buffer_ms goes to a spill file in {}",
                        self.label,
                        self.request_id,
                        self.place
                    );
                    self.file = Some(file);
                }
                Err(e) => return self.give_up(&format!("cannot create a spill file in {}: {e}", self.place)),
            }
        }
        let size = self.pool.size();
        if self.stage_end + data.len() > size {
            // No room behind the staged bytes: they go first.
            if !self.write_stage() {
                return false;
            }
            if data.len() >= size {
                // Larger than a stage: straight behind them.
                return self.write(data);
            }
        }
        if self.stage.is_none() {
            match self.pool.lend() {
                Ok(loan) => self.stage = Some(loan),
                Err(e) => return self.give_up(&format!("no memory to stage spilled audio: {e}")),
            }
        }
        let stage = self.stage.as_mut().expect("lent above");
        stage[self.stage_end..self.stage_end + data.len()].copy_from_slice(data);
        self.stage_end += data.len();
        true
    }

    /// Writes the staged bytes behind the file's part; the (empty) stage
    /// stays lent. False when the write failed: the bytes stay staged.
    fn write_stage(&mut self) -> bool {
        if self.in_stage() == 0 {
            self.staged = 0;
            self.stage_end = 0;
            return true;
        }
        let Some(stage) = self.stage.take() else { return true };
        let written = self.write(&stage[self.staged..self.stage_end]);
        self.stage = Some(stage);
        if written {
            self.staged = 0;
            self.stage_end = 0;
        }
        written
    }

    /// Appends `data` to the file's part; false (logged) when it cannot.
    fn write(&mut self, data: &[u8]) -> bool {
        #[cfg(test)]
        {
            self.writes += 1;
        }
        #[cfg(test)]
        if self.fail_writes_after.is_some_and(|n| self.written + data.len() as u64 > n) {
            return self.give_up("cannot write the spill file: injected failure");
        }
        let spill = self.file.as_mut().expect("taken before anything is held");
        match spill.file.write_all_at(data, self.written) {
            Ok(()) => {
                self.written += data.len() as u64;
                // What the file holds now, for its cut when given back.
                spill.len = spill.len.max(self.written);
                true
            }
            Err(e) => self.give_up(&format!("cannot write the spill file in {}: {e}", self.place)),
        }
    }

    fn give_up(&mut self, why: &str) -> bool {
        log::warn!(
            "[{}] SPEAK {}: {why}; the upstream transfer is held back until the buffer has room instead",
            self.label,
            self.request_id
        );
        self.failed = true;
        false
    }

    /// Moves what is held into the buffer once a useful refill fits
    /// (`PUMP_WAKE`), then all the room there is: the file's part first, in
    /// reads of a pool buffer lent for the refill, then the staged bytes.
    fn refill(&mut self) -> Push {
        if self.stale || self.lost.is_some() {
            return Push::Stale;
        }
        let mut refilling = false;
        let mut scratch: Option<Loan> = None;
        // Awake now: an earlier request (a timed refill's safety net, see
        // `room_due`) is withdrawn, so read_frame does not wake the worker
        // for room it no longer waits for; a new one follows if need be.
        if self.link.want_space.load(Ordering::Relaxed) != 0 {
            self.want(0);
        }
        loop {
            let held = self.held();
            if held == 0 {
                return Push::Stored;
            }
            let (room, wanted) = {
                let playback = self.link.playback.lock();
                if self.gone(&playback) {
                    drop(playback);
                    return self.go_stale();
                }
                // Woken once a useful refill fits, not at every frame:
                // PUMP_WAKE, at most three quarters of the SPEAK's buffer
                // (the last quarter still plays while the worker wakes and
                // reads: 500 ms at the default 2000 and 8 kHz), at most
                // what is held.
                let wanted =
                    PUMP_WAKE.min(playback.limit() / 4 * 3).max(1).min(usize::try_from(held).unwrap_or(usize::MAX));
                (playback.free(), wanted)
            };
            if room == 0 || (!refilling && room < wanted) {
                self.want(wanted);
                return Push::Full;
            }
            refilling = true;
            let outcome = if self.in_file() > 0 {
                if scratch.is_none() {
                    match self.pool.lend() {
                        Ok(loan) => scratch = Some(loan),
                        Err(e) => return self.lose(&format!("no memory to read the spill file back: {e}")),
                    }
                }
                let buf = scratch.as_mut().expect("lent above");
                let n = room.min(buf.len()).min(usize::try_from(self.in_file()).unwrap_or(usize::MAX));
                let file = &self.file.as_ref().expect("bytes are held in the file").file;
                #[cfg(test)]
                {
                    self.reads += 1;
                }
                if let Err(e) = file.read_exact_at(&mut buf[..n], self.read) {
                    return self.lose(&format!("cannot read the spill file back: {e}"));
                }
                // Room only grows meanwhile (the media thread takes bytes out).
                let outcome = self.link.playback.lock().push(self.generation, &buf[..n]);
                if outcome == Push::Stored {
                    self.read += n as u64;
                    if self.read == self.written {
                        // The file's part is all in the buffer: it is
                        // reused from its start (staged bytes go there).
                        self.read = 0;
                        self.written = 0;
                    }
                }
                outcome
            } else {
                let stage = self.stage.as_ref().expect("held bytes not in the file are staged");
                let n = room.min(self.in_stage());
                let outcome = self.link.playback.lock().push(self.generation, &stage[self.staged..self.staged + n]);
                if outcome == Push::Stored {
                    self.staged += n;
                    if self.in_stage() == 0 {
                        self.drop_stage();
                    }
                }
                outcome
            };
            match outcome {
                Push::Stored => {}
                Push::Stale => return self.go_stale(),
                Push::Full => return Push::Full,
            }
        }
    }

    /// Held audio cannot be read back: the SPEAK fails.
    fn lose(&mut self, why: &str) -> Push {
        log::error!("[{}] SPEAK {}: {why}", self.label, self.request_id);
        self.lost = Some(format!("internal: {why}"));
        self.drop_stage();
        Push::Stale
    }
}

impl AudioSink for SpillSink {
    /// Into the buffer while nothing is held and it fits; otherwise, behind
    /// what is held, into the stage. `Full` only once the file has failed.
    fn push(&mut self, data: &[u8]) -> Push {
        if self.held() > 0 && self.refill() == Push::Stale {
            return Push::Stale;
        }
        if self.stale || self.lost.is_some() {
            return Push::Stale;
        }
        if self.held() == 0 {
            let outcome = self.link.playback.lock().push(self.generation, data);
            match outcome {
                Push::Stale => return self.go_stale(),
                Push::Full if !self.failed => {}
                other => return other,
            }
        } else if self.failed {
            return Push::Full;
        }
        if data.is_empty() || self.spill(data) {
            Push::Stored
        } else {
            Push::Full
        }
    }

    fn free(&self) -> usize {
        if !self.failed {
            usize::MAX // what does not fit is spilled
        } else if self.held() > 0 {
            0
        } else {
            self.link.playback.lock().free()
        }
    }

    fn fits(&self, n: usize) -> bool {
        !self.failed || (self.held() == 0 && self.link.playback.lock().fits(n))
    }

    fn want(&self, n: usize) {
        self.link.want_space.store(n, Ordering::Release);
    }

    fn pump(&mut self) -> Push {
        let outcome = self.refill();
        if outcome == Push::Full {
            self.flush();
        }
        outcome
    }

    fn flush(&mut self) {
        if self.stale || self.lost.is_some() {
            self.drop_stage();
            return;
        }
        // After a failed write the staged bytes stay (lent) until they
        // drain into the buffer.
        if !self.failed && self.write_stage() {
            self.drop_stage();
        }
    }

    fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// The refill `pump` asked for (`want_space`) fits once the caller has
    /// played the missing room: at the SPEAK's rate, plus DUE_SLACK. Then
    /// `read_frame` is asked to wake the worker only later, halfway through
    /// the audio left at that moment (a safety net that a punctual timer
    /// never lets fire), so a refill costs the media thread no eventfd
    /// write. Not while the caller does not play (PAUSE, jitter reserve):
    /// then, and after a timed wake that saw nothing played, `read_frame`
    /// wakes the worker as before.
    fn room_due(&mut self) -> Option<Duration> {
        let want = self.link.want_space.load(Ordering::Acquire);
        if want == 0 {
            return None; // read_frame already took the request: woken at once
        }
        let (room, limit, played, consuming) = {
            let playback = self.link.playback.lock();
            (playback.free(), playback.limit(), playback.played(), playback.consuming())
        };
        if !consuming || self.timed_at == Some(played) {
            self.timed_at = None;
            return None;
        }
        let net = want.saturating_add(limit.saturating_sub(want) / 2).min(limit).max(want);
        // Only if read_frame has not taken the request meanwhile (then the
        // worker is already signalled).
        if self.link.want_space.compare_exchange(want, net, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return None;
        }
        self.timed_at = Some(played);
        let missing = want.saturating_sub(room);
        Some(Duration::from_millis((missing / self.bytes_per_ms) as u64) + DUE_SLACK)
    }

    /// Deferred only while the buffer's own audio (what is held does not
    /// count: it plays only after a refill) lasts past the sleep by
    /// DEFER_MARGIN; otherwise `read_frame` wakes the worker as before.
    fn refill_after(&mut self, sleep: Duration) -> bool {
        if self.link.want_space.load(Ordering::Acquire) == 0 {
            return false;
        }
        let buffered = self.link.playback.lock().buffered();
        let lasts = Duration::from_millis((buffered / self.bytes_per_ms.max(1)) as u64);
        if lasts < sleep + DEFER_MARGIN {
            return false;
        }
        // room_due moves read_frame's wake-up to its later safety net; the
        // pump at the linger's end does the refill.
        self.room_due().is_some()
    }

    fn ahead(&self) -> usize {
        let buffered = self.link.playback.lock().buffered();
        buffered.saturating_add(usize::try_from(self.held()).unwrap_or(usize::MAX))
    }
}

impl Drop for SpillSink {
    /// The file goes back for the next SPEAK, unless it failed: a write
    /// (the disk may be full or the file damaged) or a read (`lost`).
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            if !self.failed && self.lost.is_none() {
                self.files.give_back(std::mem::take(&mut self.place), file);
            }
        }
    }
}

/// Where a SPEAK's spill file goes: the engine's `spill_dir`, else memory.
pub(super) fn spill_place(job: &Job) -> SpillPlace {
    job.config.spill_dir.clone().map_or(SpillPlace::Memory, SpillPlace::Dir)
}

impl Worker {
    /// The SPEAK's last request is in: moves what is still spilled into the
    /// buffer as the media thread makes room, serving commands meanwhile
    /// (STOP, BARGE-IN and shutdown end it within a wake-up) and announcing
    /// marks as their audio plays.
    pub(super) fn drain_spill(&mut self, job: &Job, sink: &mut dyn AudioSink) -> Part {
        loop {
            if self.serve_commands(job) {
                return Part::Interrupted;
            }
            self.announce(&job.speak, false);
            match sink.pump() {
                Push::Stored => return Part::Done,
                // `pump` asked read_frame to wake us once a chunk fits
                // (want_space): no polling per frame.
                // or, while the caller plays, sleep until that much has
                // played (`room_due`): no eventfd write on the media thread.
                Push::Full => {
                    let wait = sink.room_due().map_or(ROOM_WAIT, |due| due.min(ROOM_WAIT));
                    self.shared.link.waker.wait(Some(wait));
                }
                Push::Stale => return lost_or_stopped(sink),
            }
        }
    }
}

/// A sink said `Stale`: stopped, or its held audio was lost.
pub(super) fn lost_or_stopped(sink: &dyn AudioSink) -> Part {
    match sink.lost() {
        Some(why) => Part::Failed(Failure::Internal(why.to_owned())),
        None => Part::Interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 KiB buffer playing one SPEAK that may hold `limit` bytes;
    /// frames are taken by hand (`read_frame`).
    fn link(limit: usize) -> (Arc<Link>, u64) {
        let link = Arc::new(Link::new(64 * 1024).unwrap());
        let generation = link.playback.lock().start(limit, 0);
        (link, generation)
    }

    /// A sink with a pool of its own, so that its figures are the test's.
    fn sink(link: &Arc<Link>, generation: u64) -> SpillSink {
        sink_in(link, generation, SpillPlace::Memory)
    }

    fn sink_in(link: &Arc<Link>, generation: u64, place: SpillPlace) -> SpillSink {
        let pool = BufferPool::new(crate::media::SPILL_BUFFER_BYTES, 2);
        let files = FilePool::new(2, std::time::Duration::from_secs(3600));
        SpillSink::with_pools(Arc::clone(link), generation, place, "test".into(), 1, (pool, files))
    }

    fn bytes(from: usize, n: usize) -> Vec<u8> {
        (from..from + n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Takes frames until the buffer is empty; the bytes taken.
    /// Pumps and plays until everything held is in the buffer, then ends
    /// the generation and plays the rest: every byte the sink took.
    fn drain_and_play(s: &mut SpillSink, link: &Link, g: u64) -> Vec<u8> {
        let mut played = Vec::new();
        for _ in 0..1000 {
            let pumped = s.pump();
            played.extend(play_out(link, 160));
            if pumped == Push::Stored {
                link.playback.lock().finish(g);
                played.extend(play_out(link, 160));
                return played;
            }
        }
        panic!("the spill never drained");
    }

    fn play_out(link: &Link, frame: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; frame];
        loop {
            let before = link.playback.lock().played();
            link.read_frame(&mut buf);
            let after = link.playback.lock().played();
            if after == before {
                return out;
            }
            out.extend_from_slice(&buf[..(after - before) as usize]);
        }
    }

    #[test]
    fn what_does_not_fit_is_spilled_and_comes_back_in_order() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        let all = bytes(0, 10_000);
        for piece in all.chunks(333) {
            assert_eq!(s.push(piece), Push::Stored, "never Full while the spill works");
        }
        assert!(s.file.is_some(), "the overflow went to a file");
        assert!(s.held() > 0);
        assert_eq!(s.free(), usize::MAX);
        assert!(s.fits(1 << 20));
        let played = drain_and_play(&mut s, &link, g);
        assert_eq!(played, all, "every byte once, in order");
        assert_eq!((s.read, s.written), (0, 0), "the drained file is reused from its start");
    }

    #[test]
    fn pump_waits_for_a_useful_refill_then_fills_all_the_room() {
        let (link, g) = link(40_000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 40_000)), Push::Stored);
        assert_eq!(s.push(&bytes(40_000, 50_000)), Push::Stored);
        assert_eq!(s.held(), 50_000);
        // One frame of room is not worth a wake-up.
        let mut frame = [0u8; 320];
        link.read_frame(&mut frame);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 50_000);
        assert_eq!(link.want_space.load(Ordering::Acquire), 30_000, "three quarters of the buffer");
        // The media thread wakes the worker once a refill fits, and clears
        // the request.
        let mut big = vec![0u8; 30_000 - 320];
        link.read_frame(&mut big);
        assert_eq!(link.want_space.load(Ordering::Acquire), 0);
        // The refill fills all the room, in pieces.
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 20_000);
        assert_eq!(link.playback.lock().free(), 0);
        assert_eq!(link.want_space.load(Ordering::Acquire), 20_000, "no more than is held");
        // Less than a refill's room waits for the next wake-up.
        link.read_frame(&mut frame);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 20_000);
    }

    /// While the caller plays, a draining worker sleeps until its refill
    /// fits (timed), and read_frame is only asked to wake it later, as a
    /// safety net: no eventfd write for a refill that comes on time.
    #[test]
    fn a_refill_is_timed_from_the_playing_pace_and_read_frame_does_not_wake_for_it() {
        let (link, g) = link(32_000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 32_000)), Push::Stored);
        assert_eq!(s.push(&bytes(32_000, 40_000)), Push::Stored);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(link.want_space.load(Ordering::Acquire), 24_000);
        // 24,000 bytes at 16 per ms (8 kHz), plus the slack.
        assert_eq!(s.room_due(), Some(Duration::from_millis(1500) + DUE_SLACK));
        assert_eq!(link.want_space.load(Ordering::Acquire), 28_000, "halfway through the last quarter");
        let mut frame = [0u8; 160];
        for _ in 0..150 {
            link.read_frame(&mut frame);
        }
        assert_eq!(link.playback.lock().free(), 24_000);
        assert!(!link.waker.take(), "read_frame did not wake the worker for the refill");
        // The timed wake: the refill fills the room, the next one is timed.
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 16_000);
        assert_eq!(link.want_space.load(Ordering::Acquire), 16_000, "what is held");
        assert_eq!(s.room_due(), Some(Duration::from_millis(1000) + DUE_SLACK));
        // Were the timer late, read_frame would still wake it, in time.
        for _ in 0..175 {
            link.read_frame(&mut frame);
        }
        assert!(link.waker.take(), "the safety net");
        assert_eq!(s.pump(), Push::Stored, "all in the buffer");
        assert_eq!(link.want_space.load(Ordering::Acquire), 0);
    }

    /// A worker about to linger while its transfer runs: the refill it
    /// asked read_frame for waits for the linger's end when the buffer's
    /// own audio lasts past it by DEFER_MARGIN (read_frame keeps only the
    /// safety net); with less in the buffer, read_frame wakes it as before.
    #[test]
    fn a_refill_waits_for_the_lingers_end_only_while_the_buffer_lasts_past_it() {
        let ms = Duration::from_millis;
        let mut frame = [0u8; 160];
        let (early, g) = link(32_000);
        let mut s = sink(&early, g);
        assert_eq!(s.push(&bytes(0, 32_000)), Push::Stored);
        assert_eq!(s.push(&bytes(32_000, 8_000)), Push::Stored);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(early.want_space.load(Ordering::Acquire), 8_000, "what is held");
        // 2000 ms in the buffer: a linger of 1900 ms is covered, 1901 not.
        assert!(!s.refill_after(ms(1901)));
        assert_eq!(early.want_space.load(Ordering::Acquire), 8_000, "left as it was");
        assert!(s.refill_after(ms(1900)));
        assert_eq!(early.want_space.load(Ordering::Acquire), 20_000, "the safety net: halfway to the limit");
        // 500 ms play: room for the refill, and read_frame stays quiet.
        for _ in 0..50 {
            early.read_frame(&mut frame);
        }
        assert!(!early.waker.take(), "read_frame did not wake the worker mid-linger");
        // The linger ends: the pump refills, and the audio is whole.
        assert_eq!(s.pump(), Push::Stored);
        assert_eq!(early.want_space.load(Ordering::Acquire), 0);

        // 40,000 held; 9,120 bytes (570 ms) left in the buffer when the
        // worker would linger 500 ms: too little, read_frame wakes it.
        let (late, g) = link(32_000);
        let mut s = sink(&late, g);
        assert_eq!(s.push(&bytes(0, 32_000)), Push::Stored);
        assert_eq!(s.push(&bytes(32_000, 40_000)), Push::Stored);
        for _ in 0..143 {
            late.read_frame(&mut frame);
        }
        assert_eq!(late.playback.lock().buffered(), 9_120);
        assert_eq!(s.pump(), Push::Full, "22,880 bytes of room: less than the refill's 24,000");
        assert!(!s.refill_after(ms(500)));
        assert_eq!(late.want_space.load(Ordering::Acquire), 24_000);
        for _ in 0..7 {
            late.read_frame(&mut frame);
        }
        assert!(late.waker.take(), "woken once the refill fits");
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 16_000);
    }

    /// A timed wake that finds nothing played (PAUSE) stops timing: the
    /// next sleep waits for read_frame, which wakes the worker once the
    /// refill fits; so does a caller that is not playing at all.
    #[test]
    fn no_timed_refill_while_nothing_plays() {
        let (link, g) = link(32_000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 32_000)), Push::Stored);
        assert_eq!(s.push(&bytes(32_000, 40_000)), Push::Stored);
        assert_eq!(s.pump(), Push::Full);
        assert!(s.room_due().is_some());
        // Woken by the timer, nothing was played.
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.room_due(), None);
        assert_eq!(link.want_space.load(Ordering::Acquire), 24_000, "read_frame is asked");
        let mut frame = [0u8; 160];
        for _ in 0..150 {
            link.read_frame(&mut frame);
        }
        assert!(link.waker.take(), "read_frame woke it once the refill fit");
        // Paused: not playing, not timed.
        assert_eq!(s.pump(), Push::Full);
        link.playback.lock().state = PlayState::Paused;
        assert_eq!(s.room_due(), None);
    }

    #[test]
    fn a_large_buffer_is_refilled_per_pump_wake_bytes() {
        let link = Arc::new(Link::new(256 * 1024).unwrap());
        let g = link.playback.lock().start(200_000, 0);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 200_000)), Push::Stored);
        assert_eq!(s.push(&bytes(200_000, 250_000)), Push::Stored);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(link.want_space.load(Ordering::Acquire), PUMP_WAKE, "not half of this buffer");
    }

    #[test]
    fn a_small_buffer_wakes_the_worker_with_a_quarter_of_it_left() {
        let (link, g) = link(2000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 2000)), Push::Stored);
        assert_eq!(s.push(&bytes(2000, 4000)), Push::Stored);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(link.want_space.load(Ordering::Acquire), 1500);
    }

    #[test]
    fn a_stop_makes_it_stale_and_its_audio_goes_nowhere() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 2000)), Push::Stored);
        assert_eq!(s.held(), 2000);
        link.playback.lock().stop();
        assert_eq!(s.push(&bytes(3000, 10)), Push::Stale);
        assert_eq!(s.pump(), Push::Stale);
        assert_eq!(s.lost(), None, "stopped, not lost");
        let g2 = link.playback.lock().start(1000, 0);
        assert_eq!(link.playback.lock().free(), 1000, "nothing of the old SPEAK in the new one");
        assert!(g2 > g);
    }

    #[test]
    fn the_file_is_unnamed_private_and_kept_for_the_next_speak() {
        let dir = std::env::temp_dir().join(format!("spill-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (link, g) = link(1000);
        let mut s = sink_in(&link, g, SpillPlace::Dir(dir.clone()));
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 4000)), Push::Stored);
        s.flush();
        let file = &s.file.as_ref().expect("spilled").file;
        let meta = file.metadata().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 4000);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name in the directory");
        // Its descriptor, as the kernel names it ("<dir>/#<inode> (deleted)").
        let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
        let target = std::fs::read_link(&fd).unwrap();
        assert!(target.to_string_lossy().ends_with("(deleted)"), "{target:?}");
        let files = Arc::clone(&s.files);
        drop(s);
        assert_eq!(files.idle(), 1, "kept, open, for the next SPEAK");
        assert_eq!(std::fs::read_link(&fd).ok().as_ref(), Some(&target));
        files.close_idle();
        assert_ne!(std::fs::read_link(&fd).ok(), Some(target), "closed with the pool's idle files");
        std::fs::remove_dir(&dir).unwrap();
    }

    /// A SPEAK that takes the file a longer one used finds it empty and
    /// reads back exactly its own bytes.
    #[test]
    fn a_file_taken_again_holds_only_the_new_speaks_bytes() {
        use std::os::unix::fs::MetadataExt;
        let files = FilePool::new(2, std::time::Duration::from_secs(3600));
        let pool = BufferPool::new(crate::media::SPILL_BUFFER_BYTES, 2);
        let pools = || (Arc::clone(&pool), Arc::clone(&files));
        // The first SPEAK spills 100,000 bytes of one pattern.
        let (link1, g1) = link(1000);
        let mut s = SpillSink::with_pools(Arc::clone(&link1), g1, SpillPlace::Memory, "test".into(), 1, pools());
        let first: Vec<u8> = vec![0xAA; 101_000];
        assert_eq!(s.push(&first[..1000]), Push::Stored);
        for piece in first[1000..].chunks(2400) {
            assert_eq!(s.push(piece), Push::Stored);
        }
        s.flush();
        assert_eq!(s.file.as_ref().unwrap().len, 100_000);
        let ino = s.file.as_ref().unwrap().file.metadata().unwrap().ino();
        drop(s);
        assert_eq!((files.idle(), files.made()), (1, 1));
        // The second takes it again: it spills less, and gets back exactly
        // its own bytes.
        let (link2, g2) = link(1000);
        let mut s = SpillSink::with_pools(Arc::clone(&link2), g2, SpillPlace::Memory, "test".into(), 2, pools());
        let second = bytes(0, 1000 + 5000);
        assert_eq!(s.push(&second[..1000]), Push::Stored);
        assert_eq!(s.push(&second[1000..]), Push::Stored);
        s.flush();
        let spill = s.file.as_ref().unwrap();
        assert_eq!((files.idle(), files.made()), (0, 1), "taken, not made");
        assert_eq!(spill.file.metadata().unwrap().ino(), ino, "the same file");
        assert_eq!(spill.file.metadata().unwrap().len(), 5000, "its own bytes only: the first's were cut");
        assert_eq!((s.read, s.written), (0, 5000), "its part starts empty");
        assert_eq!(drain_and_play(&mut s, &link2, g2), second, "its own bytes, none of the first's");
    }

    #[test]
    fn a_file_whose_write_failed_is_not_kept() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        s.fail_writes_after = Some(0);
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 500)), Push::Stored, "staged");
        s.flush();
        assert!(s.failed && s.file.is_some());
        let files = Arc::clone(&s.files);
        let played = drain_and_play(&mut s, &link, g);
        assert_eq!(played, bytes(0, 1500), "what was staged still drains");
        drop(s);
        assert_eq!((files.idle(), files.made()), (0, 1), "closed, not kept");
    }

    #[test]
    fn no_spill_dir_falls_back_to_backpressure() {
        let (link, g) = link(1000);
        let mut s = sink_in(&link, g, SpillPlace::Dir("/nonexistent/spill/dir".into()));
        assert_eq!(s.push(&bytes(0, 800)), Push::Stored, "what fits goes straight in");
        assert_eq!(s.push(&bytes(800, 300)), Push::Full, "nothing stored: the transfer waits");
        assert!(s.failed && s.file.is_none());
        assert_eq!(s.free(), 200);
        assert!(!s.fits(300) && s.fits(200));
        assert_eq!(s.push(&bytes(800, 200)), Push::Stored);
        let mut frame = [0u8; 500];
        link.read_frame(&mut frame);
        assert_eq!(s.push(&bytes(1000, 300)), Push::Stored, "room again: stored");
        assert_eq!(s.pump(), Push::Stored, "nothing held");
    }

    #[test]
    fn a_failed_write_keeps_order_and_drains_what_was_spilled_and_staged_first() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        s.fail_writes_after = Some(1000);
        let all = bytes(0, 4000);
        assert_eq!(s.push(&all[..1000]), Push::Stored);
        assert_eq!(s.push(&all[1000..1600]), Push::Stored, "staged");
        s.flush();
        assert_eq!((s.written, s.writes, s.in_stage()), (600, 1, 0), "written, the stage given back");
        assert_eq!(s.push(&all[1600..2200]), Push::Stored, "staged: the failure shows at the next write");
        s.flush();
        assert!(s.failed, "the disk is full: backpressure");
        assert_eq!((s.in_file(), s.in_stage()), (600, 600), "the staged bytes are kept, lent");
        assert_eq!(s.pool.figures().lent, 1);
        assert_eq!(s.free(), 0, "held bytes go first");
        assert!(!s.fits(1));
        assert_eq!(s.push(&all[2200..2800]), Push::Full, "nothing stored out of order");
        let mut played = Vec::new();
        let mut at = 2200;
        while at < all.len() {
            played.extend(play_out(&link, 160));
            let n = (all.len() - at).min(600);
            match s.push(&all[at..at + n]) {
                Push::Stored => at += n,
                Push::Full => {}
                Push::Stale => panic!("stale"),
            }
        }
        assert_eq!(s.writes, 2, "the failed write is not tried again");
        assert_eq!(s.pool.figures().lent, 0, "the stage went back once drained");
        link.playback.lock().finish(g);
        played.extend(play_out(&link, 160));
        assert_eq!(played, all);
    }

    #[test]
    fn held_audio_that_cannot_be_read_back_is_lost_not_skipped() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 2000)), Push::Stored);
        s.flush();
        assert_eq!(s.in_file(), 2000);
        // A file that cannot be read: opened write-only.
        let path = std::env::temp_dir().join(format!("spill-wo-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        s.file = Some(SpillFile::new(file, 2000));
        std::fs::remove_file(&path).unwrap();
        let mut frame = vec![0u8; 1000];
        link.read_frame(&mut frame);
        assert_eq!(s.pump(), Push::Stale);
        assert!(s.lost().is_some_and(|why| why.contains("spill file")));
        assert_eq!(s.push(&[1, 2]), Push::Stale, "the transfer is aborted");
        assert!(matches!(lost_or_stopped(&s), Part::Failed(_)));
        let files = Arc::clone(&s.files);
        drop(s);
        assert_eq!(files.idle(), 0, "a file that could not be read back is not kept");
    }

    /// The hysteresis, frame by frame: a sink holding spilled audio is
    /// woken by `read_frame` once a refill chunk fits, never for a frame,
    /// and every byte comes out once, in order.
    #[test]
    fn a_sink_waiting_for_room_is_woken_once_per_refill() {
        let (link, g) = link(40_000);
        let mut s = sink(&link, g);
        let all = bytes(0, 200_000);
        for piece in all.chunks(1601) {
            assert_eq!(s.push(piece), Push::Stored);
        }
        let spilled = s.held();
        assert!(spilled > 150_000);
        let mut pumped = s.pump();
        assert_eq!(pumped, Push::Full);
        let (mut played, mut frame, mut frames, mut wakes) = (Vec::new(), [0u8; 160], 0u64, 0u64);
        loop {
            let before = link.playback.lock().played();
            link.read_frame(&mut frame);
            let after = link.playback.lock().played();
            played.extend_from_slice(&frame[..(after - before) as usize]);
            frames += 1;
            if link.waker.take() {
                wakes += 1;
                pumped = s.pump();
                if pumped == Push::Stored {
                    break;
                }
            }
            assert!(frames < 10_000);
        }
        link.playback.lock().finish(g);
        played.extend(play_out(&link, 160));
        assert_eq!(played, all, "every byte once, in order");
        // One wake-up per refill of three quarters of the buffer (30,000
        // bytes), for over a thousand frames.
        assert_eq!(wakes, spilled.div_ceil(30_000), "{wakes} wake-ups over {frames} frames");
    }

    /// Network-sized pieces (2.4 KB, as curl hands them over) within one
    /// wake-up: staged, then one write when the worker goes to sleep.
    #[test]
    fn spilled_pieces_are_written_in_one_piece_per_sleep_or_full_stage() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        let all = bytes(0, 1000 + 10 * 2400);
        assert_eq!(s.push(&all[..1000]), Push::Stored);
        for piece in all[1000..].chunks(2400) {
            assert_eq!(s.push(piece), Push::Stored);
        }
        assert_eq!((s.writes, s.in_stage()), (0, 24_000), "all staged, nothing written yet");
        assert_eq!(s.pump(), Push::Full, "no room");
        assert_eq!((s.writes, s.in_file(), s.in_stage()), (1, 24_000, 0), "one write before the sleep");
        assert!(s.stage.is_none());
        assert_eq!(s.pool.figures().lent, 0, "nothing lent while the worker sleeps");
        // More than a stage between two sleeps: one write per full stage.
        let size = s.pool.size();
        let more = bytes(all.len(), 3 * size + 100);
        for piece in more.chunks(1000) {
            assert_eq!(s.push(piece), Push::Stored);
        }
        assert_eq!(s.writes, 1 + 3);
        s.flush();
        assert_eq!(s.writes, 1 + 4);
        assert_eq!(s.in_file(), (24_000 + 3 * size + 100) as u64);
        let played = drain_and_play(&mut s, &link, g);
        assert_eq!(played, [all, more].concat(), "every byte once, in order");
        assert_eq!(s.pool.figures().lent, 0);
    }

    /// Once the file's part is in the buffer, staged bytes go straight in:
    /// no write, no read.
    #[test]
    fn staged_bytes_go_straight_into_the_buffer_after_the_files_part() {
        let (link, g) = link(8000);
        let mut s = sink(&link, g);
        let all = bytes(0, 8000 + 3000 + 2000);
        assert_eq!(s.push(&all[..8000]), Push::Stored);
        assert_eq!(s.push(&all[8000..11_000]), Push::Stored);
        s.flush();
        assert_eq!((s.writes, s.in_file()), (1, 3000));
        assert_eq!(s.push(&all[11_000..]), Push::Stored);
        assert_eq!(s.in_stage(), 2000, "behind the file's part");
        // Room for all of it: one read of the file's part, then the stage.
        let mut out = vec![0u8; 6000];
        link.read_frame(&mut out);
        assert_eq!(s.pump(), Push::Stored, "nothing held any more");
        assert_eq!((s.writes, s.reads), (1, 1), "the staged bytes never went through the file");
        assert_eq!((s.read, s.written), (0, 0), "the file is reused from its start");
        assert_eq!(s.pool.figures().lent, 0);
        link.playback.lock().finish(g);
        let played = [out, play_out(&link, 160)].concat();
        assert_eq!(played, all);
    }

    /// Staged only (the file's part drained, or never written): a refill
    /// serves the stage from memory and gives the loan back once empty.
    #[test]
    fn a_refill_serves_the_stage_and_gives_it_back_when_empty() {
        let (link, g) = link(4000);
        let mut s = sink(&link, g);
        let all = bytes(0, 8000);
        assert_eq!(s.push(&all[..4000]), Push::Stored);
        assert_eq!(s.push(&all[4000..]), Push::Stored);
        assert_eq!(s.pool.figures().lent, 1, "the stage");
        let mut out = vec![0u8; 3000];
        link.read_frame(&mut out);
        // Three quarters of the buffer are free: a refill, from the stage
        // alone.
        assert_eq!(s.pump(), Push::Full);
        assert_eq!((s.writes, s.reads, s.in_stage()), (1, 0, 0), "the rest written before the sleep");
        assert_eq!(s.in_file(), 1000);
        assert_eq!(s.pool.figures().lent, 0);
        let mut rest = vec![0u8; 2000];
        link.read_frame(&mut rest);
        assert_eq!(s.pump(), Push::Stored);
        assert_eq!(s.reads, 1);
        link.playback.lock().finish(g);
        assert_eq!([out, rest, play_out(&link, 160)].concat(), all);
    }

    /// A refill fills the room with as few reads as the pool's buffers
    /// allow: one for a refill of up to a buffer.
    #[test]
    fn a_refill_is_one_read_per_pool_buffer() {
        let link = Arc::new(Link::new(256 * 1024).unwrap());
        let g = link.playback.lock().start(200_000, 0);
        let mut s = sink(&link, g);
        let size = s.pool.size();
        assert_eq!(s.push(&bytes(0, 200_000)), Push::Stored);
        assert_eq!(s.push(&bytes(200_000, 150_000)), Push::Stored);
        s.flush();
        let mut out = vec![0u8; PUMP_WAKE];
        link.read_frame(&mut out);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.reads, 1, "one read for {PUMP_WAKE} bytes of room");
        let mut out = vec![0u8; 3 * size + 10];
        link.read_frame(&mut out);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.reads, 1 + 4, "three full buffers and a bit");
        assert_eq!(s.pool.figures(), crate::media::PoolFigures { lent: 0, most_lent: 1, idle: 1, mapped: 1 });
    }

    #[test]
    fn a_stop_mid_spill_gives_the_stage_back() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 3000)), Push::Stored);
        s.flush();
        assert_eq!(s.push(&bytes(4000, 500)), Push::Stored);
        assert_eq!(s.pool.figures().lent, 1);
        link.playback.lock().stop();
        assert_eq!(s.push(&bytes(4500, 10)), Push::Stale);
        assert_eq!(s.pool.figures().lent, 0, "given back at once, not at the sink's drop");
        s.flush();
        assert_eq!(s.writes, 1, "a stopped SPEAK's stage is not written");
        assert_eq!(s.pump(), Push::Stale);
    }

    /// A transfer that fails leaves the sink to the next request (a retry)
    /// or to its drop (the SPEAK fails): the staged bytes keep their place
    /// in the first case, and the loan comes back in the second.
    #[test]
    fn the_stage_survives_a_transfers_end_and_goes_back_with_the_sink() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        let all = bytes(0, 3000);
        assert_eq!(s.push(&all[..1000]), Push::Stored);
        assert_eq!(s.push(&all[1000..1500]), Push::Stored);
        // Queued for a slot for the next request: flushed.
        s.flush();
        assert_eq!((s.in_file(), s.in_stage(), s.pool.figures().lent), (500, 0, 0));
        assert_eq!(s.push(&all[1500..3000]), Push::Stored);
        let played = drain_and_play(&mut s, &link, g);
        assert_eq!(played, all);

        let (link2, g2) = super::tests::link(1000);
        let mut s = sink(&link2, g2);
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 500)), Push::Stored);
        let pool = Arc::clone(&s.pool);
        assert_eq!(pool.figures().lent, 1);
        drop(s);
        assert_eq!(pool.figures(), crate::media::PoolFigures { lent: 0, most_lent: 1, idle: 1, mapped: 1 });
    }
}
