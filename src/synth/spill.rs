//! A SPEAK's audio beyond the channel's buffer, held in a spill file, so
//! that its upstream transfer runs at the upstream's speed and ends (its
//! connection and concurrency slot free again) when generation ends, not
//! when playback does.
//!
//! `SpillSink` is the SPEAK's `AudioSink` for all of its buffer generation:
//! every upstream request and every `<break>`'s silence goes through it, in
//! order. While nothing is spilled, bytes that fit go straight into the
//! buffer; anything else is appended to the file, and the worker moves it
//! into the buffer (`pump`) as the media thread makes room, a bounded chunk
//! per hold of the buffer's lock, woken through `Link::want_space` once a
//! useful chunk fits. After the last request the worker drains what is
//! left (`Worker::drain_spill`) while serving commands, then lets the
//! buffer play out as before.
//!
//! The file is made on the first byte that does not fit, in the cache dir
//! when the cache is on (else the system's temp dir), unlinked at once
//! (`O_TMPFILE`, or a unique name removed right away), 0600, and closed
//! when the sink is dropped at the SPEAK's end: it never outlives the
//! SPEAK, and holds at most the SPEAK's own audio (it is reused from its
//! start whenever it has been drained). If it cannot be made or written,
//! that is logged once and the SPEAK falls back to backpressure: `push`
//! says `Full` and the transfer is paused until there is room, as it was
//! before the spill existed.
//!
//! Locks: only `link.playback`, for a copy; no other lock is held with it,
//! and the file is never touched under it. The media thread is not
//! involved beyond what it always did (`read_frame` sees `want_space`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::player::Part;
use super::sources::ROOM_WAIT;
use super::{Job, Worker};
use crate::error::Failure;
use crate::media::{AudioSink, Link, PlayState, Playback, Push};

/// Room the worker waits for before it refills the buffer from the file
/// (at most half the SPEAK's buffer): each refill is one wake-up of the
/// worker, so the larger, the fewer (two per 4 s of audio spilled at
/// 8 kHz and the default max_buffer_ms, bench [10]).
const PUMP_WAKE: usize = 32 * 1024;
/// Bytes moved from the file into the buffer per read and per hold of its
/// lock; a refill fills all the room there is in pieces this size. The
/// piece is allocated for as long as the SPEAK spills, so it is small
/// (bench [11]); a piece is one `pread`, a few per refill.
const PUMP_COPY: usize = 4 * 1024;

/// One SPEAK's way into the channel's buffer, spilling what does not fit.
pub(super) struct SpillSink {
    link: Arc<Link>,
    generation: u64,
    /// Where the file is made.
    dir: PathBuf,
    /// The channel's label and the SPEAK's request id, for log lines.
    label: String,
    request_id: u32,
    /// Made on the first byte that does not fit.
    file: Option<File>,
    /// Bytes `read..written` of the file are held: spilled, not yet in the
    /// buffer.
    read: u64,
    written: u64,
    /// Reused for every chunk moved into the buffer; allocated with the
    /// file.
    chunk: Vec<u8>,
    /// The file could not be made or written: backpressure from now on.
    failed: bool,
    /// The SPEAK was stopped (its generation is gone).
    stale: bool,
    /// Held audio could not be read back.
    lost: Option<String>,
    /// Test hook: file writes fail once this many bytes were written.
    #[cfg(test)]
    fail_writes_after: Option<u64>,
}

impl SpillSink {
    pub(super) fn new(link: Arc<Link>, generation: u64, dir: PathBuf, label: String, request_id: u32) -> SpillSink {
        SpillSink {
            link,
            generation,
            dir,
            label,
            request_id,
            file: None,
            read: 0,
            written: 0,
            chunk: Vec::new(),
            failed: false,
            stale: false,
            lost: None,
            #[cfg(test)]
            fail_writes_after: None,
        }
    }

    /// Bytes spilled and not yet in the buffer.
    fn held(&self) -> u64 {
        self.written - self.read
    }

    fn gone(&self, playback: &Playback) -> bool {
        playback.generation != self.generation || playback.state == PlayState::Idle
    }

    /// Appends `data` to the file (made now if need be). False, logged
    /// once, when that cannot be done: the sink then falls back to
    /// backpressure for the rest of the SPEAK.
    fn spill(&mut self, data: &[u8]) -> bool {
        if self.file.is_none() {
            match create(&self.dir) {
                Ok(file) => {
                    log::debug!(
                        "[{}] SPEAK {}: audio beyond max_buffer_ms goes to a spill file in {}",
                        self.label,
                        self.request_id,
                        self.dir.display()
                    );
                    self.file = Some(file);
                    self.chunk = vec![0; PUMP_COPY];
                }
                Err(e) => return self.give_up(&format!("cannot create a spill file in {}: {e}", self.dir.display())),
            }
        }
        let file = self.file.as_ref().expect("made above");
        #[cfg(test)]
        if self.fail_writes_after.is_some_and(|n| self.written + data.len() as u64 > n) {
            return self.give_up("cannot write the spill file: injected failure");
        }
        match file.write_all_at(data, self.written) {
            Ok(()) => {
                self.written += data.len() as u64;
                true
            }
            Err(e) => self.give_up(&format!("cannot write the spill file in {}: {e}", self.dir.display())),
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
}

impl AudioSink for SpillSink {
    /// Into the buffer while nothing is held and it fits; otherwise, behind
    /// what is held, into the file. `Full` only once the file has failed.
    fn push(&mut self, data: &[u8]) -> Push {
        if self.held() > 0 && self.pump() == Push::Stale {
            return Push::Stale;
        }
        if self.stale || self.lost.is_some() {
            return Push::Stale;
        }
        if self.held() == 0 {
            let outcome = self.link.playback.lock().push(self.generation, data);
            match outcome {
                Push::Stale => {
                    self.stale = true;
                    return Push::Stale;
                }
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
        if self.stale || self.lost.is_some() {
            return Push::Stale;
        }
        // Once a refill has started, it fills all the room there is.
        let mut refilling = false;
        loop {
            let held = self.held();
            if held == 0 {
                // All in the buffer: the file is reused from its start.
                self.read = 0;
                self.written = 0;
                return Push::Stored;
            }
            let (room, wanted) = {
                let playback = self.link.playback.lock();
                if self.gone(&playback) {
                    drop(playback);
                    self.stale = true;
                    return Push::Stale;
                }
                // Woken once a useful refill fits, not at every frame:
                // PUMP_WAKE, at most half the SPEAK's buffer (so the rest
                // still plays while the worker wakes), at most what is held.
                let wanted =
                    PUMP_WAKE.min(playback.limit() / 2).max(1).min(usize::try_from(held).unwrap_or(usize::MAX));
                (playback.free(), wanted)
            };
            if room == 0 || (!refilling && room < wanted) {
                self.want(wanted);
                return Push::Full;
            }
            refilling = true;
            let n = room.min(PUMP_COPY).min(usize::try_from(held).unwrap_or(usize::MAX));
            let file = self.file.as_ref().expect("bytes are held only in the file");
            if let Err(e) = file.read_exact_at(&mut self.chunk[..n], self.read) {
                log::error!("[{}] SPEAK {}: cannot read the spill file back: {e}", self.label, self.request_id);
                self.lost = Some(format!("internal: cannot read the spill file back: {e}"));
                return Push::Stale;
            }
            // Room only grows meanwhile (the media thread takes bytes out).
            let outcome = self.link.playback.lock().push(self.generation, &self.chunk[..n]);
            match outcome {
                Push::Stored => self.read += n as u64,
                Push::Stale => {
                    self.stale = true;
                    return Push::Stale;
                }
                Push::Full => return Push::Full,
            }
        }
    }

    fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    fn ahead(&self) -> usize {
        let buffered = self.link.playback.lock().buffered();
        buffered.saturating_add(usize::try_from(self.held()).unwrap_or(usize::MAX))
    }
}

/// An unnamed file in `dir`, open for reading and writing, 0600: gone from
/// the directory before anything is written to it.
fn create(dir: &Path) -> io::Result<File> {
    let unnamed =
        OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE | libc::O_EXCL).open(dir);
    match unnamed {
        Ok(file) => Ok(file),
        Err(_) => create_named(dir),
    }
}

/// For a file system without O_TMPFILE: a unique name, removed at once.
/// The `.tmp-` prefix lets the cache's janitor clear one that a crash left
/// between the two steps.
fn create_named(dir: &Path) -> io::Result<File> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".tmp-spill-{}-{seq}", std::process::id()));
    let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Where a SPEAK's spill file goes: the cache dir when the cache is on,
/// else the system's temp dir.
pub(super) fn spill_dir(job: &Job) -> PathBuf {
    match &job.cache {
        Some(cache) => cache.config().dir.clone(),
        None => std::env::temp_dir(),
    }
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
                Push::Full => self.shared.link.waker.wait(Some(ROOM_WAIT)),
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

    fn sink(link: &Arc<Link>, generation: u64) -> SpillSink {
        SpillSink::new(Arc::clone(link), generation, std::env::temp_dir(), "test".into(), 1)
    }

    fn bytes(from: usize, n: usize) -> Vec<u8> {
        (from..from + n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Takes frames until the buffer is empty; the bytes taken.
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
        let mut played = Vec::new();
        let mut rounds = 0;
        loop {
            let pumped = s.pump();
            played.extend(play_out(&link, 160));
            if pumped == Push::Stored {
                break;
            }
            rounds += 1;
            assert!(rounds < 1000);
        }
        link.playback.lock().finish(g);
        played.extend(play_out(&link, 160));
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
        assert_eq!(link.want_space.load(Ordering::Acquire), 20_000, "half the buffer");
        // The media thread wakes the worker once a refill fits, and clears
        // the request.
        let mut big = vec![0u8; 20_000 - 320];
        link.read_frame(&mut big);
        assert_eq!(link.want_space.load(Ordering::Acquire), 0);
        // The refill fills all the room, in pieces.
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 30_000);
        assert_eq!(link.playback.lock().free(), 0);
        assert_eq!(link.want_space.load(Ordering::Acquire), 20_000);
        // Less than a refill's room waits for the next wake-up.
        link.read_frame(&mut frame);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(s.held(), 30_000);
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
    fn a_small_buffer_wakes_the_worker_at_half_its_size() {
        let (link, g) = link(2000);
        let mut s = sink(&link, g);
        assert_eq!(s.push(&bytes(0, 2000)), Push::Stored);
        assert_eq!(s.push(&bytes(2000, 4000)), Push::Stored);
        assert_eq!(s.pump(), Push::Full);
        assert_eq!(link.want_space.load(Ordering::Acquire), 1000);
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
    fn the_file_is_unnamed_private_and_closed_with_the_sink() {
        let dir = std::env::temp_dir().join(format!("spill-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (link, g) = link(1000);
        let mut s = SpillSink::new(Arc::clone(&link), g, dir.clone(), "test".into(), 1);
        assert_eq!(s.push(&bytes(0, 1000)), Push::Stored);
        assert_eq!(s.push(&bytes(1000, 4000)), Push::Stored);
        let file = s.file.as_ref().expect("spilled");
        let meta = file.metadata().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 4000);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name in the directory");
        // Its descriptor, as the kernel names it ("<dir>/#<inode> (deleted)").
        let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
        let target = std::fs::read_link(&fd).unwrap();
        assert!(target.to_string_lossy().ends_with("(deleted)"), "{target:?}");
        drop(s);
        assert_ne!(std::fs::read_link(&fd).ok(), Some(target), "the file is closed with the sink");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_named_file_is_removed_at_once_where_o_tmpfile_is_missing() {
        let dir = std::env::temp_dir().join(format!("spill-named-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The fallback on its own (O_TMPFILE works on this machine).
        let file = create_named(&dir).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        let mut back = [0u8; 3];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"abc");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name left in the directory");
        drop(file);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn no_spill_dir_falls_back_to_backpressure() {
        let (link, g) = link(1000);
        let mut s = SpillSink::new(Arc::clone(&link), g, "/nonexistent/spill/dir".into(), "test".into(), 1);
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
    fn a_failed_write_keeps_order_and_drains_what_was_spilled_first() {
        let (link, g) = link(1000);
        let mut s = sink(&link, g);
        s.fail_writes_after = Some(1000);
        let all = bytes(0, 4000);
        assert_eq!(s.push(&all[..1000]), Push::Stored);
        assert_eq!(s.push(&all[1000..1600]), Push::Stored, "spilled");
        assert_eq!(s.push(&all[1600..2200]), Push::Full, "the disk is full: backpressure");
        assert_eq!(s.held(), 600);
        assert_eq!(s.free(), 0, "held bytes go first");
        assert!(!s.fits(1));
        assert_eq!(s.push(&all[1600..2200]), Push::Full, "still nothing stored out of order");
        let mut played = Vec::new();
        let mut at = 1600;
        while at < all.len() {
            played.extend(play_out(&link, 160));
            let n = (all.len() - at).min(600);
            match s.push(&all[at..at + n]) {
                Push::Stored => at += n,
                Push::Full => {}
                Push::Stale => panic!("stale"),
            }
        }
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
        // A file that cannot be read: opened write-only.
        let path = std::env::temp_dir().join(format!("spill-wo-{}", std::process::id()));
        s.file = Some(OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        let mut frame = vec![0u8; 1000];
        link.read_frame(&mut frame);
        assert_eq!(s.pump(), Push::Stale);
        assert!(s.lost().is_some_and(|why| why.contains("spill file")));
        assert_eq!(s.push(&[1, 2]), Push::Stale, "the transfer is aborted");
        assert!(matches!(lost_or_stopped(&s), Part::Failed(_)));
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
        // One wake-up per refill of half the buffer (20,000 bytes), for
        // over a thousand frames.
        assert_eq!(wakes, spilled.div_ceil(20_000), "{wakes} wake-ups over {frames} frames");
    }
}
