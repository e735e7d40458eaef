//! Entries on disk, the single-flight table, and the janitor.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use sha1::{Digest, Sha1};

use super::{Flight, FlightEnd, Key, RedisTier};
use crate::config::CacheConfig;
use crate::media::Waker;

const MAGIC: &[u8; 8] = b"ELABPCM\0";
const FORMAT_VERSION: u32 = 1;
pub(super) const HEADER_LEN: usize = 48;
/// Temporary files older than this belong to a crashed writer.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// The janitor's pass interval when nothing asks for one sooner.
const JANITOR_PERIOD: Duration = Duration::from_secs(60);

/// and when the entry was made (seconds since the epoch; ctime will not
/// do: refreshing the LRU stamp changes it).
fn header(sample_rate: u32, len: u64, digest: &[u8], created: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&sample_rate.to_le_bytes());
    out[16..24].copy_from_slice(&len.to_le_bytes());
    out[24..44].copy_from_slice(digest);
    out[44..48].copy_from_slice(&created.to_le_bytes());
    out
}

fn now_secs() -> u32 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

/// When the entry whose header starts `bytes` was made.
pub(super) fn created(bytes: &[u8]) -> Option<SystemTime> {
    let secs = u32::from_le_bytes(bytes.get(44..48)?.try_into().ok()?);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
}

/// The audio of a well-formed entry for `sample_rate`, or why not.
pub(super) fn validate(bytes: &[u8], sample_rate: u32) -> Result<&[u8], &'static str> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("not a cache entry");
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if u32_at(8) != FORMAT_VERSION {
        return Err("other format version");
    }
    if u32_at(12) != sample_rate {
        return Err("other sample rate");
    }
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let audio = &bytes[HEADER_LEN..];
    if audio.len() as u64 != len || len == 0 {
        return Err("truncated");
    }
    if Sha1::digest(audio).as_slice() != &bytes[24..44] {
        return Err("checksum mismatch");
    }
    Ok(audio)
}

fn is_entry_name(name: &str) -> bool {
    name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
/// What a SPEAK gets from the cache.
pub enum Lookup {
    /// A valid entry: its audio.
    Hit(Vec<u8>),
    /// Someone is synthesizing this key: follow them.
    Follow(Arc<Flight>),
    /// Synthesize it, teeing the audio to the flight and the writer.
    Lead(Arc<Flight>, Option<EntryWriter>),
}

/// A temporary file receiving a response as it arrives.
pub struct EntryWriter {
    cache: Arc<Cache>,
    key: Key,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha1,
    len: u64,
    sample_rate: u32,
}

impl EntryWriter {
    pub fn write(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
        if let Some(file) = self.file.as_mut() {
            if let Err(e) = file.write_all(data) {
                self.cache.trouble(&format!("writing {}: {e}", self.tmp.display()));
                self.file = None;
            }
        }
    }

    /// The whole response succeeded: complete the header and rename the
    /// file into place.
    pub fn commit(mut self) {
        let Some(file) = self.file.take() else {
            let _ = fs::remove_file(&self.tmp);
            return;
        };
        let digest: [u8; 20] = std::mem::take(&mut self.hasher).finalize().into();
        let result = (|| -> io::Result<()> {
            let mut file = file.into_inner().map_err(|e| e.into_error())?;
            let head = header(self.sample_rate, self.len, &digest, now_secs());
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&head)?;
            file.sync_data()?;
            fs::rename(&self.tmp, self.cache.entry_path(&self.key))
        })();
        match result {
            Ok(()) => self.cache.kick_janitor(),
            Err(e) => {
                self.cache.trouble(&format!("storing entry {}: {e}", self.key.hex()));
                let _ = fs::remove_file(&self.tmp);
            }
        }
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        // Not committed: a failed, stopped or truncated synthesis never
        // becomes an entry.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

pub struct Cache {
    config: CacheConfig,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    /// One log line for a cache that cannot be used, not one per SPEAK.
    trouble_logged: AtomicBool,
    tmp_seq: AtomicU64,
    janitor: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    /// The tier shared with other servers (`cache_redis`), if on.
    redis: Option<RedisTier>,
    /// As of the janitor's last pass (it runs after every new entry).
    figures: Figures,
}

/// What the cache holds, for the metrics.
#[derive(Default)]
struct Figures {
    bytes: AtomicU64,
    entries: AtomicU64,
    /// Entries removed for age or for room, since open.
    evictions: AtomicU64,
}

/// A copy of `Figures`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheFigures {
    pub bytes: u64,
    pub entries: u64,
    pub evictions: u64,
}

impl Cache {
    /// Creates the dir (0700) and checks it can be written; None (logged
    /// once) when it cannot: synthesis then goes on without a cache.
    pub fn open(config: CacheConfig, redis: Option<RedisTier>) -> Option<Arc<Cache>> {
        let dir = &config.dir;
        let ready = (|| -> io::Result<()> {
            if !dir.exists() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
            let probe = dir.join(format!(".probe-{}", std::process::id()));
            File::create(&probe)?;
            fs::remove_file(&probe)
        })();
        if let Err(e) = ready {
            log::error!("cache dir {} is not usable ({e}); synthesizing without a cache", dir.display());
            return None;
        }
        let cache = Arc::new(Cache {
            config,
            flights: Mutex::new(HashMap::new()),
            trouble_logged: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
            janitor: Mutex::new(None),
            redis,
            figures: Figures::default(),
        });
        let (tx, rx) = crossbeam_channel::bounded(1);
        let for_thread = Arc::clone(&cache);
        match std::thread::Builder::new().name("elevenlabs-cache".into()).spawn(move || for_thread.janitor(rx)) {
            Ok(handle) => *cache.janitor.lock() = Some((tx, handle)),
            Err(e) => log::warn!("cache: no janitor thread ({e}); entries will not be evicted"),
        }
        Some(cache)
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    /// An entry's bytes as stored (header and audio), for the shared tier.
    pub fn entry_bytes(&self, key: &Key) -> Option<Vec<u8>> {
        fs::read(self.entry_path(key)).ok()
    }

    /// Bytes and entries on disk as of the janitor's last pass, and
    /// evictions since open.
    pub fn figures(&self) -> CacheFigures {
        CacheFigures {
            bytes: self.figures.bytes.load(Ordering::Relaxed),
            entries: self.figures.entries.load(Ordering::Relaxed),
            evictions: self.figures.evictions.load(Ordering::Relaxed),
        }
    }

    /// Stops and joins the janitor (engine close; not on the MRCP thread).
    pub fn stop(&self) {
        let janitor = self.janitor.lock().take();
        if let Some((tx, handle)) = janitor {
            drop(tx);
            let _ = handle.join();
        }
    }

    fn trouble(&self, what: &str) {
        if !self.trouble_logged.swap(true, Ordering::Relaxed) {
            log::error!("cache: {what}; further cache errors are not logged");
        }
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        self.config.dir.join(key.hex())
    }

    /// The valid entry for `key`, if one is young enough.
    pub fn read(&self, key: &Key, sample_rate: u32, max_age: Option<Duration>) -> Option<Vec<u8>> {
        let path = self.entry_path(key);
        let mut file = File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        let limit = match (self.config.max_age, max_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).ok()?;
        match validate(&bytes, sample_rate) {
            Ok(_) => {
                let made = created(&bytes).unwrap_or(SystemTime::UNIX_EPOCH);
                if limit.is_some_and(|limit| made.elapsed().unwrap_or_default() > limit) {
                    return None; // too old to serve; the janitor removes it
                }
                // LRU stamp: a hit makes the entry young for eviction.
                let _ = file.set_modified(SystemTime::now());
                bytes.drain(..HEADER_LEN);
                Some(bytes)
            }
            Err(why) => {
                log::warn!("cache entry {} is invalid ({why}): deleted, synthesizing again", key.hex());
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// A hit, a flight to follow, or the lead of a new flight.
    pub fn lookup(
        self: &Arc<Self>,
        key: Key,
        sample_rate: u32,
        max_age: Option<Duration>,
        follower: &Arc<Waker>,
    ) -> Lookup {
        if let Some(audio) = self.read(&key, sample_rate, max_age) {
            return Lookup::Hit(audio);
        }
        let mut flights = self.flights.lock();
        if let Some(flight) = flights.get(&key) {
            flight.follow(Arc::clone(follower));
            return Lookup::Follow(Arc::clone(flight));
        }
        // A leader may have stored the entry and landed between our read
        // and this lock: look once more (outside the lock) before leading.
        if self.entry_path(&key).exists() {
            drop(flights);
            if let Some(audio) = self.read(&key, sample_rate, max_age) {
                return Lookup::Hit(audio);
            }
            flights = self.flights.lock();
            if let Some(flight) = flights.get(&key) {
                flight.follow(Arc::clone(follower));
                return Lookup::Follow(Arc::clone(flight));
            }
        }
        let flight = Arc::new(Flight::default());
        flights.insert(key, Arc::clone(&flight));
        drop(flights);
        Lookup::Lead(flight, self.writer(key, sample_rate))
    }

    /// The leader is done with its flight, however it ended.
    pub fn land(&self, key: Key, flight: &Arc<Flight>, end: FlightEnd) {
        {
            let mut flights = self.flights.lock();
            if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                flights.remove(&key);
            }
        }
        flight.end(end);
    }

    /// A temporary file for `key` (None, logged once, if it cannot be made).
    pub fn writer(self: &Arc<Self>, key: Key, sample_rate: u32) -> Option<EntryWriter> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.config.dir.join(format!(".tmp-{}-{}-{seq}", key.hex(), std::process::id()));
        let opened = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).and_then(|mut f| {
            f.write_all(&[0u8; HEADER_LEN])?;
            Ok(f)
        });
        match opened {
            Ok(f) => Some(EntryWriter {
                cache: Arc::clone(self),
                key,
                tmp,
                file: Some(BufWriter::with_capacity(64 * 1024, f)),
                hasher: Sha1::new(),
                len: 0,
                sample_rate,
            }),
            Err(e) => {
                self.trouble(&format!("cannot create {}: {e}", tmp.display()));
                None
            }
        }
    }

    fn kick_janitor(&self) {
        if let Some((tx, _)) = self.janitor.lock().as_ref() {
            let _ = tx.try_send(());
        }
    }

    fn janitor(&self, rx: Receiver<()>) {
        loop {
            self.sweep();
            match rx.recv_timeout(JANITOR_PERIOD) {
                Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One pass: stale temporary files, expired entries, then least
    /// recently used entries until the cache fits its bound.
    pub fn sweep(&self) {
        let Ok(dir) = fs::read_dir(&self.config.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for item in dir.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let Ok(meta) = item.metadata() else { continue };
            let age = now.duration_since(meta.modified().unwrap_or(now)).unwrap_or_default();
            if name.starts_with(".tmp-") {
                if age > STALE_TMP {
                    let _ = fs::remove_file(item.path());
                }
                continue;
            }
            if !is_entry_name(&name) {
                continue;
            }
            let mut head = [0u8; HEADER_LEN];
            let made = File::open(item.path())
                .and_then(|mut f| f.read_exact(&mut head))
                .ok()
                .and_then(|()| created(&head))
                .unwrap_or(now);
            if self.config.max_age.is_some_and(|max| now.duration_since(made).unwrap_or_default() > max) {
                if fs::remove_file(item.path()).is_ok() {
                    self.figures.evictions.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            entries.push((meta.modified().unwrap_or(now), meta.len(), item.path()));
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let mut count = entries.len() as u64;
        if total > self.config.max_bytes {
            entries.sort_by_key(|e| e.0);
            for (_, len, path) in entries {
                if total <= self.config.max_bytes {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    total = total.saturating_sub(len);
                    count -= 1;
                    self.figures.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.figures.bytes.store(total, Ordering::Relaxed);
        self.figures.entries.store(count, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_validate_and_corruption_is_caught() {
        let audio: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut file = header(8000, audio.len() as u64, &Sha1::digest(&audio), now_secs()).to_vec();
        file.extend_from_slice(&audio);
        assert_eq!(validate(&file, 8000), Ok(&audio[..]));
        assert_eq!(validate(&file, 16000), Err("other sample rate"));
        assert_eq!(validate(&file[..file.len() - 1], 8000), Err("truncated"));
        let mut flipped = file.clone();
        flipped[HEADER_LEN + 10] ^= 1;
        assert_eq!(validate(&flipped, 8000), Err("checksum mismatch"));
        assert_eq!(validate(b"garbage", 8000), Err("not a cache entry"));
    }
}
