//! Open spill files kept between SPEAKs, so that a SPEAK that spills takes
//! a file instead of making one.
//!
//! A file is made where the engine's `spill_dir` says (`create`): by
//! default in memory (`ffi::memory_file`, a memfd: no inode on any file
//! system, its pages never written to a disk), else unnamed in that
//! directory (`O_TMPFILE`, 0600). It is lent to one SPEAK at a time, and
//! given back when the SPEAK's sink is dropped, unless a write or a read
//! of it failed (then it is closed). A given-back file is cut to nothing
//! (`ftruncate` to 0): its pages, the SPEAK's audio, are freed at once
//! (in a directory, dirty ones unwritten), so an idle file holds nothing
//! and the next SPEAK's part starts empty.
//!
//! What a kept file spares a SPEAK is the file's making and closing: a
//! memory file's are cheap (microseconds); a directory's cost an inode,
//! whose allocation on an ext4 without a journal reads the inode table to
//! skip every inode freed in the last 5-10 s, so it costs the more, the
//! more files were deleted lately (up to about 110 us of CPU per SPEAK on
//! the benchmark's machine, bench [10]; 6-9 % of the workers' CPU in
//! benches [10] and [13] before memory became the default).
//!
//! A file serves SPEAKs for `FILE_LIFE` after it was made, then it is
//! closed (at a give-back, or at a take that finds it idle). In a
//! directory, an inode in use is written back by the kernel once it has
//! been dirty for 30 s, and a file reused for good would stay dirty, so
//! its SPEAKs' audio would go to the disk; a file per 20 s is freed before
//! that (unless a SPEAK holds it for longer). A memory file is never
//! written back; the same life bounds how long a burst's idle descriptors
//! outlive it.
//!
//! As many idle files are kept as recent SPEAKs needed, wherever they are:
//! a file is made only when no idle one of that place is there, that is
//! when every live file is out, so the files alive never outnumber the
//! SPEAKs that spilled at once within the last `FILE_LIFE`. A burst of
//! calls that all spill (bench [13]: 100 sessions at once, every 10 s)
//! thus finds its files again instead of making them anew; with a handful
//! kept (8, as it was), 92 of 100 were made and closed every round.
//! `KEPT_FILES` only caps that. Files past their life are closed at the
//! next take or give-back, when a worker starts or ends
//! (`close_expired`), and all idle files when the engine closes
//! (`close_idle`): after the last call, at most that burst's worth of
//! empty files stays open until the next channel or the engine's close.
//!
//! Lock: `idle`, a leaf held for one push or pop of the list, never across
//! the file's creation, cut or close.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Idle files the process keeps at most: a bound on top of the natural one
/// (the SPEAKs spilling at once within a file's life, see above), so that
/// a burst beyond any server's channel count cannot pin descriptors.
const KEPT_FILES: usize = 1024;

/// How long a file serves SPEAKs after it was made: then it is closed at
/// its next give-back (or found so at a take), its pages dropped unwritten.
/// Below the kernel's default 30 s before dirty pages are written back
/// (`vm.dirty_expire_centisecs`), so that spilled audio in a `spill_dir`
/// does not reach the disk any more than with a file per SPEAK: a file
/// reused for long would have its dirty pages written back every 30 s.
const FILE_LIFE: Duration = Duration::from_secs(20);

/// The process's spill files.
pub(super) fn spill_files() -> &'static Arc<FilePool> {
    static POOL: OnceLock<Arc<FilePool>> = OnceLock::new();
    POOL.get_or_init(|| FilePool::new(KEPT_FILES, FILE_LIFE))
}

/// Closes the process's idle spill files (the engine closes).
pub fn close_idle() {
    spill_files().close_idle();
}

/// Closes the process's idle spill files that are past their life (a
/// worker starts or ends: after a burst, its files do not wait for the
/// engine's close once they can no longer serve).
pub fn close_expired() {
    spill_files().close_expired(Instant::now());
}

/// Idle spill files, empty, at most `keep`, none older than `life`.
pub(super) struct FilePool {
    keep: usize,
    life: Duration,
    /// In the order given back.
    idle: Mutex<Vec<Idle>>,
    /// Files made so far (a take the idle list could not serve).
    #[cfg(test)]
    made: AtomicU64,
}

struct Idle {
    place: SpillPlace,
    spill: SpillFile,
}

/// Where a SPEAK's spilled audio waits: the engine's `spill_dir`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpillPlace {
    /// An anonymous memory file (no `spill_dir`, the default).
    #[default]
    Memory,
    /// An unnamed file in this directory.
    Dir(PathBuf),
}

impl fmt::Display for SpillPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpillPlace::Memory => f.write_str("memory"),
            SpillPlace::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// A file lent to one SPEAK.
pub(super) struct SpillFile {
    pub(super) file: File,
    /// Its length: the end of what the SPEAK wrote to it (0 when taken).
    pub(super) len: u64,
    made: Instant,
}

impl SpillFile {
    #[cfg(test)]
    pub(super) fn new(file: File, len: u64) -> SpillFile {
        SpillFile { file, len, made: Instant::now() }
    }
}

impl FilePool {
    pub(super) fn new(keep: usize, life: Duration) -> Arc<FilePool> {
        Arc::new(FilePool {
            keep,
            life,
            idle: Mutex::new(Vec::new()),
            #[cfg(test)]
            made: AtomicU64::new(0),
        })
    }

    /// An idle file of `place` (the most recently given back), else a new
    /// one. Idle files past their life are closed on the way.
    pub(super) fn take(&self, place: &SpillPlace) -> io::Result<SpillFile> {
        let now = Instant::now();
        let (kept, expired) = {
            let mut idle = self.idle.lock();
            let expired = self.take_expired(&mut idle, now);
            (idle.iter().rposition(|i| i.place == *place).map(|at| idle.remove(at)), expired)
        };
        drop(expired); // closed outside the lock
        if let Some(Idle { spill, .. }) = kept {
            return Ok(spill);
        }
        let file = create(place)?;
        #[cfg(test)]
        self.made.fetch_add(1, Ordering::Relaxed);
        Ok(SpillFile { file, len: 0, made: now })
    }

    fn expired(&self, spill: &SpillFile, now: Instant) -> bool {
        now.saturating_duration_since(spill.made) >= self.life
    }

    /// The idle files past their life, out of the list (for the caller to
    /// close outside the lock).
    fn take_expired(&self, idle: &mut Vec<Idle>, now: Instant) -> Vec<Idle> {
        if !idle.iter().any(|i| self.expired(&i.spill, now)) {
            return Vec::new();
        }
        let (expired, live) = std::mem::take(idle).into_iter().partition(|i| self.expired(&i.spill, now));
        *idle = live;
        expired
    }

    pub(super) fn close_expired(&self, now: Instant) {
        let expired = self.take_expired(&mut self.idle.lock(), now);
        drop(expired); // closed outside the lock
    }

    /// Keeps a file of `place` for the next SPEAK, cut to nothing first
    /// (closed if that fails). Closed instead when past its life or when
    /// `keep` files are idle already (not emptied first: its close frees
    /// its pages anyway).
    pub(super) fn give_back(&self, place: SpillPlace, mut spill: SpillFile) {
        if self.expired(&spill, Instant::now()) || self.idle.lock().len() >= self.keep {
            return;
        }
        if spill.len > 0 {
            if let Err(e) = spill.file.set_len(0) {
                log::warn!("cannot empty a spill file in {place} for reuse (closed instead): {e}");
                return;
            }
            spill.len = 0;
        }
        let mut idle = self.idle.lock();
        let expired = self.take_expired(&mut idle, Instant::now());
        // Others may have given theirs back meanwhile.
        let kept = idle.len() < self.keep;
        if kept {
            idle.push(Idle { place, spill });
            drop(idle);
        } else {
            drop(idle);
            drop(spill); // closed outside the lock
        }
        drop(expired); // likewise
    }

    pub(super) fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        drop(idle);
    }

    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    #[cfg(test)]
    pub(super) fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

/// A new, empty file at `place`.
pub(super) fn create(place: &SpillPlace) -> io::Result<File> {
    match place {
        SpillPlace::Memory => crate::ffi::memory_file(c"elevenlabs-spill"),
        SpillPlace::Dir(dir) => create_in(dir),
    }
}

/// An unnamed file in `dir`, open for reading and writing, 0600: gone from
/// the directory before anything is written to it.
pub(super) fn create_in(dir: &Path) -> io::Result<File> {
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
pub(super) fn create_named(dir: &Path) -> io::Result<File> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".tmp-spill-{}-{seq}", std::process::id()));
    let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

    use super::*;

    fn at(dir: &Path) -> SpillPlace {
        SpillPlace::Dir(dir.to_path_buf())
    }

    /// Whether descriptor `fd` (its /proc path) still names the memory file
    /// `ino` (its number may have been reused since, by another test's).
    fn memory_file_open(fd: &str, ino: u64) -> bool {
        std::fs::read_link(fd).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:elevenlabs-spill"))
            && std::fs::metadata(fd).is_ok_and(|m| m.ino() == ino)
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spill-files-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_given_back_file_is_taken_again_empty() {
        let dir = scratch_dir("again");
        let pool = FilePool::new(2, Duration::from_secs(3600));
        let mut a = pool.take(&at(&dir)).unwrap();
        a.file.write_all_at(&[7u8; 10_000], 0).unwrap();
        a.len = 10_000;
        let ino = a.file.metadata().unwrap().ino();
        pool.give_back(at(&dir), a);
        assert_eq!((pool.idle(), pool.made()), (1, 1));
        let b = pool.take(&at(&dir)).unwrap();
        assert_eq!(b.file.metadata().unwrap().ino(), ino, "the same file, not a new one");
        assert_eq!((b.len, b.file.metadata().unwrap().len()), (0, 0), "emptied on its way back");
        let mut back = [1u8; 16];
        assert_eq!(b.file.read_at(&mut back, 0).unwrap(), 0, "nothing of the former SPEAK left");
        assert_eq!((pool.idle(), pool.made()), (0, 1));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name in the directory");
        drop(b);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_file_given_back_past_the_idle_bound_is_closed() {
        let dir = scratch_dir("bound");
        let pool = FilePool::new(2, Duration::from_secs(3600));
        let files: Vec<SpillFile> = (0..3).map(|_| pool.take(&at(&dir)).unwrap()).collect();
        assert_eq!(pool.made(), 3);
        let fds: Vec<String> =
            files.iter().map(|f| format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f.file))).collect();
        let inodes: Vec<u64> = files.iter().map(|f| f.file.metadata().unwrap().ino()).collect();
        // Whether descriptor `i` still names file `i` (its number may
        // have been reused since, by another test's file elsewhere).
        let open = |i: usize| {
            std::fs::read_link(&fds[i])
                .is_ok_and(|t| t.starts_with(&dir) && t.ends_with(format!("#{} (deleted)", inodes[i])))
        };
        assert!(open(0) && open(1) && open(2));
        for f in files {
            pool.give_back(at(&dir), f);
        }
        assert_eq!(pool.idle(), 2);
        assert!(open(0) && open(1), "the first two kept");
        assert!(!open(2), "the third closed");
        // The last one given back is taken first.
        assert_eq!(pool.take(&at(&dir)).unwrap().file.metadata().unwrap().ino(), inodes[1]);
        pool.close_idle();
        assert_eq!(pool.idle(), 0);
        assert!(!open(0), "closed with the idle ones");
        std::fs::remove_dir(&dir).unwrap();
    }

    /// A file is closed once past its life, given back or idle, so that
    /// its dirty pages are dropped before the kernel would write them back.
    #[test]
    fn a_file_past_its_life_is_closed_not_reused() {
        let dir = scratch_dir("life");
        let pool = FilePool::new(2, Duration::ZERO);
        let a = pool.take(&at(&dir)).unwrap();
        pool.give_back(at(&dir), a);
        assert_eq!(pool.idle(), 0, "closed at once");
        let pool = FilePool::new(2, Duration::from_millis(50));
        let a = pool.take(&at(&dir)).unwrap();
        pool.give_back(at(&dir), a);
        assert_eq!(pool.idle(), 1);
        std::thread::sleep(Duration::from_millis(100));
        let b = pool.take(&at(&dir)).unwrap();
        assert_eq!((pool.idle(), pool.made()), (0, 2), "the expired one dropped (closed), a new one made");
        drop(b);
        std::fs::remove_dir(&dir).unwrap();
    }

    /// A burst's files all come back and serve the next burst (none made),
    /// and are closed once past their life by `close_expired`, with no
    /// SPEAK to take or give one back.
    #[test]
    fn a_bursts_files_serve_the_next_burst_then_expire() {
        let dir = scratch_dir("burst");
        let life = Duration::from_millis(300);
        let pool = FilePool::new(KEPT_FILES, life);
        let burst = |pool: &FilePool| {
            let files: Vec<SpillFile> = (0..20).map(|_| pool.take(&at(&dir)).unwrap()).collect();
            for f in files {
                pool.give_back(at(&dir), f);
            }
        };
        burst(&pool);
        assert_eq!((pool.idle(), pool.made()), (20, 20), "all kept, not the old 8");
        burst(&pool);
        assert_eq!((pool.idle(), pool.made()), (20, 20), "the second burst made none");
        pool.close_expired(Instant::now());
        assert_eq!(pool.idle(), 20, "none past its life yet");
        pool.close_expired(Instant::now() + life);
        assert_eq!(pool.idle(), 0, "closed once past their life");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn files_are_kept_per_directory() {
        let (one, two) = (scratch_dir("one"), scratch_dir("two"));
        let pool = FilePool::new(4, Duration::from_secs(3600));
        let a = pool.take(&at(&one)).unwrap();
        let ino = a.file.metadata().unwrap().ino();
        pool.give_back(at(&one), a);
        let b = pool.take(&at(&two)).unwrap();
        assert_ne!(b.file.metadata().unwrap().ino(), ino, "not the other directory's file");
        assert_eq!((pool.idle(), pool.made()), (1, 2));
        assert_eq!(pool.take(&at(&one)).unwrap().file.metadata().unwrap().ino(), ino);
        drop(b);
        std::fs::remove_dir(&one).unwrap();
        std::fs::remove_dir(&two).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let pool = FilePool::new(2, Duration::from_secs(3600));
        assert!(pool.take(&at(Path::new("/nonexistent/spill/dir"))).is_err());
        assert_eq!((pool.idle(), pool.made()), (0, 0));
    }

    /// The default place: a memory file, taken again empty, kept apart from
    /// a directory's files, closed with the idle ones.
    #[test]
    fn a_memory_file_is_taken_again_empty_and_kept_apart_from_a_directorys() {
        let dir = scratch_dir("memory");
        let pool = FilePool::new(4, Duration::from_secs(3600));
        let mut a = pool.take(&SpillPlace::Memory).unwrap();
        let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&a.file));
        let ino = a.file.metadata().unwrap().ino();
        assert!(memory_file_open(&fd, ino), "a memfd: {:?}", std::fs::read_link(&fd));
        a.file.write_all_at(&[7u8; 10_000], 0).unwrap();
        a.len = 10_000;
        pool.give_back(SpillPlace::Memory, a);
        let d = pool.take(&at(&dir)).unwrap();
        assert_ne!(d.file.metadata().unwrap().ino(), ino, "a directory's SPEAK does not get the memory file");
        assert_eq!((pool.idle(), pool.made()), (1, 2));
        let b = pool.take(&SpillPlace::Memory).unwrap();
        assert_eq!(b.file.metadata().unwrap().ino(), ino, "the same memory file, not a new one");
        assert_eq!((b.len, b.file.metadata().unwrap().len()), (0, 0), "emptied on its way back");
        pool.give_back(SpillPlace::Memory, b);
        pool.close_idle();
        assert!(!memory_file_open(&fd, ino), "closed with the idle ones");
        drop(d);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_named_file_is_removed_at_once_where_o_tmpfile_is_missing() {
        let dir = scratch_dir("named");
        // The fallback on its own (O_TMPFILE works on this machine).
        let file = create_named(&dir).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        let mut back = [0u8; 3];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"abc");
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name left in the directory");
        drop(file);
        std::fs::remove_dir(&dir).unwrap();
    }
}
