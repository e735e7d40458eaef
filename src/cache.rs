//! The prompt cache: a repeated SPEAK costs nothing upstream and starts at
//! the next media tick.
//!
//! * Key: SHA-1 over a versioned, length-prefixed encoding of everything
//!   that changes the audio (`KeyInput`), so two requests that can sound
//!   different never share an entry.
//! * Entries: `<40 hex>` files in the cache dir (created 0700): a 48-byte
//!   header (magic, format version, sample rate, audio length, SHA-1 of the
//!   audio) and the raw PCM. An entry that fails any check is deleted and
//!   synthesized again, never played.
//! * Write-through: audio goes to a temporary file as it arrives and is
//!   renamed into place only after the whole response succeeded; several
//!   server processes may share the dir (atomic renames; readers only ever
//!   see whole files).
//! * Single flight: SPEAKs for a key that is being synthesized follow the
//!   leader's transfer instead of making their own request.
//! * Bounds: a janitor thread evicts least recently used entries over
//!   `cache_max_mb`, expired ones, and stale temporary files, off any
//!   SPEAK's path. A hit refreshes the entry's mtime (its LRU stamp).
//!
//! All file work happens on channel worker threads or the cache's own
//! threads, never on the MRCP Server or media threads.

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

use crate::channel::Shared;
use crate::config::VoiceSettings;

const MAGIC: &[u8; 8] = b"ELABPCM\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
/// Temporary files older than this belong to a crashed writer.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// The janitor's pass interval when nothing asks for one sooner.
const JANITOR_PERIOD: Duration = Duration::from_secs(60);

/// Cache settings from the engine params.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Entries older than this are not served (None: no limit).
    pub max_age: Option<Duration>,
}

/// Everything that changes the audio of a SPEAK.
pub struct KeyInput<'a> {
    /// The text exactly as sent upstream, part by part.
    pub parts: &'a [String],
    pub voice_id: &'a str,
    pub model_id: &'a str,
    pub sample_rate: u32,
    pub settings: &'a VoiceSettings,
    pub language_code: Option<&'a str>,
    pub seed: Option<u64>,
    pub text_normalization: Option<&'a str>,
    pub pronunciation_dictionaries: &'a [String],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key([u8; 20]);

impl Key {
    /// A key over a sequence of encoded steps (an SSML SPEAK: several
    /// requests, pauses, gains), tagged apart from single-request keys.
    pub fn of_sequence(steps: &[Vec<u8>]) -> Key {
        let mut h = Sha1::new();
        field(&mut h, 0, b"unimrcp-elevenlabs sequence key v1");
        for step in steps {
            field(&mut h, 16, step);
        }
        Key(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Appends one field: a tag, its length, its bytes. No two different
/// inputs encode alike (unlike fields glued together).
fn field(h: &mut Sha1, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn opt_f64(v: Option<f64>) -> Vec<u8> {
    v.map_or_else(Vec::new, |x| x.to_bits().to_le_bytes().to_vec())
}

impl KeyInput<'_> {
    pub fn key(&self) -> Key {
        let mut h = Sha1::new();
        field(&mut h, 0, b"unimrcp-elevenlabs cache key v1");
        field(&mut h, 1, &(self.parts.len() as u64).to_le_bytes());
        for part in self.parts {
            field(&mut h, 2, part.as_bytes());
        }
        field(&mut h, 3, self.voice_id.as_bytes());
        field(&mut h, 4, self.model_id.as_bytes());
        field(&mut h, 5, format!("pcm_{}", self.sample_rate).as_bytes());
        field(&mut h, 6, &opt_f64(self.settings.stability));
        field(&mut h, 7, &opt_f64(self.settings.similarity_boost));
        field(&mut h, 8, &opt_f64(self.settings.style));
        field(&mut h, 9, &opt_f64(self.settings.speed));
        field(&mut h, 10, &self.settings.use_speaker_boost.map_or_else(Vec::new, |b| vec![u8::from(b)]));
        field(&mut h, 11, self.language_code.unwrap_or("").as_bytes());
        field(&mut h, 12, &self.seed.map_or_else(Vec::new, |s| s.to_le_bytes().to_vec()));
        field(&mut h, 13, self.text_normalization.unwrap_or("").as_bytes());
        field(&mut h, 14, &(self.pronunciation_dictionaries.len() as u64).to_le_bytes());
        for d in self.pronunciation_dictionaries {
            field(&mut h, 15, d.as_bytes());
        }
        Key(h.finalize().into())
    }
}

/// Entry header: magic, version, rate, audio length, SHA-1 of the audio,
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
fn created(bytes: &[u8]) -> Option<SystemTime> {
    let secs = u32::from_le_bytes(bytes.get(44..48)?.try_into().ok()?);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
}

/// The audio of a well-formed entry for `sample_rate`, or why not.
fn validate(bytes: &[u8], sample_rate: u32) -> Result<&[u8], &'static str> {
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

// ------------------------------------------------------------------ policy

/// What a SPEAK's Cache-Control header allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Serve from (and follow flights in) the cache.
    pub read: bool,
    /// Store the result.
    pub write: bool,
    /// Serve only entries younger than this.
    pub max_age: Option<Duration>,
}

impl Policy {
    /// `no-cache` bypasses the cache for the request (the fresh result
    /// still refreshes the entry), `no-store` keeps it out, `max-age=N`
    /// limits the age of what is served. Unknown directives are ignored.
    pub fn from_header(value: Option<&str>) -> Policy {
        let mut policy = Policy { read: true, write: true, max_age: None };
        for directive in value.unwrap_or("").split(',') {
            let d = directive.trim().to_ascii_lowercase();
            match d.split_once('=') {
                None if d == "no-cache" => policy.read = false,
                None if d == "no-store" => {
                    policy.read = false;
                    policy.write = false;
                }
                Some(("max-age", n)) => {
                    if let Ok(secs) = n.trim().trim_matches('"').parse::<u64>() {
                        policy.max_age = Some(Duration::from_secs(secs));
                    }
                }
                _ => {}
            }
        }
        policy
    }
}

// ------------------------------------------------------------ single flight

/// How a flight ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlightEnd {
    Complete,
    Failed(String),
    /// The leader went away before the end (its channel closed).
    Abandoned,
}

#[derive(Default)]
struct FlightState {
    audio: Vec<u8>,
    end: Option<FlightEnd>,
    followers: Vec<Arc<Shared>>,
}

/// One synthesis in progress that other SPEAKs of the same key follow.
#[derive(Default)]
pub struct Flight {
    state: Mutex<FlightState>,
}

impl Flight {
    /// The leader's bytes, as they arrive; wakes the followers.
    pub fn append(&self, data: &[u8]) {
        let followers = {
            let mut s = self.state.lock();
            s.audio.extend_from_slice(data);
            s.followers.clone()
        };
        followers.iter().for_each(|f| f.waker.wake());
    }

    pub fn end(&self, end: FlightEnd) {
        let followers = {
            let mut s = self.state.lock();
            s.end.get_or_insert(end);
            std::mem::take(&mut s.followers)
        };
        followers.iter().for_each(|f| f.waker.wake());
    }

    fn follow(&self, shared: Arc<Shared>) {
        let mut s = self.state.lock();
        if s.end.is_none() {
            s.followers.push(shared);
        }
    }

    pub fn unfollow(&self, shared: &Arc<Shared>) {
        self.state.lock().followers.retain(|f| !Arc::ptr_eq(f, shared));
    }

    /// Copies up to `max` bytes from `offset` with `copy`; says whether the
    /// flight has ended (and how) once everything was taken.
    pub fn take(&self, offset: usize, max: usize, copy: impl FnOnce(&[u8])) -> (usize, Option<FlightEnd>) {
        let s = self.state.lock();
        let end = offset.saturating_add(max).min(s.audio.len());
        let n = end.saturating_sub(offset);
        if n > 0 {
            copy(&s.audio[offset..end]);
        }
        let done = if offset + n >= s.audio.len() { s.end.clone() } else { None };
        (n, done)
    }
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

// ------------------------------------------------------------------ writer

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

// ------------------------------------------------------------------- cache

pub struct Cache {
    config: CacheConfig,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    /// One log line for a cache that cannot be used, not one per SPEAK.
    trouble_logged: AtomicBool,
    tmp_seq: AtomicU64,
    janitor: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl Cache {
    /// Creates the dir (0700) and checks it can be written; None (logged
    /// once) when it cannot: synthesis then goes on without a cache.
    pub fn open(config: CacheConfig) -> Option<Arc<Cache>> {
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
        shared: &Arc<Shared>,
    ) -> Lookup {
        if let Some(audio) = self.read(&key, sample_rate, max_age) {
            return Lookup::Hit(audio);
        }
        let mut flights = self.flights.lock();
        if let Some(flight) = flights.get(&key) {
            flight.follow(Arc::clone(shared));
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
                flight.follow(Arc::clone(shared));
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
                let _ = fs::remove_file(item.path());
                continue;
            }
            entries.push((meta.modified().unwrap_or(now), meta.len(), item.path()));
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= self.config.max_bytes {
            return;
        }
        entries.sort_by_key(|e| e.0);
        for (_, len, path) in entries {
            if total <= self.config.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(parts: &'a [String], settings: &'a VoiceSettings) -> KeyInput<'a> {
        KeyInput {
            parts,
            voice_id: "v",
            model_id: "m",
            sample_rate: 8000,
            settings,
            language_code: None,
            seed: None,
            text_normalization: None,
            pronunciation_dictionaries: &[],
        }
    }

    #[test]
    fn every_field_changes_the_key_and_fields_cannot_run_together() {
        let s = VoiceSettings::default();
        let a = vec!["ab".to_string()];
        let base = input(&a, &s).key();
        let split = vec!["a".to_string(), "b".to_string()];
        assert_ne!(input(&split, &s).key(), base, "part boundaries count");
        let mut other = input(&a, &s);
        other.voice_id = "w";
        assert_ne!(other.key(), base);
        let mut glued = input(&a, &s);
        glued.voice_id = "vm";
        glued.model_id = "";
        let mut apart = input(&a, &s);
        apart.voice_id = "v";
        apart.model_id = "m";
        assert_ne!(glued.key(), apart.key(), "length prefixes keep fields apart");
        let mut rate = input(&a, &s);
        rate.sample_rate = 16000;
        assert_ne!(rate.key(), base);
        let tuned = VoiceSettings { stability: Some(0.5), ..Default::default() };
        assert_ne!(input(&a, &tuned).key(), base);
        let mut lang = input(&a, &s);
        lang.language_code = Some("de");
        assert_ne!(lang.key(), base);
        let mut seed = input(&a, &s);
        seed.seed = Some(1);
        assert_ne!(seed.key(), base);
        assert_eq!(input(&a, &s).key(), base, "deterministic");
        assert!(is_entry_name(&base.hex()));
    }

    #[test]
    fn cache_control_directives() {
        assert_eq!(Policy::from_header(None), Policy { read: true, write: true, max_age: None });
        assert_eq!(Policy::from_header(Some("no-cache")), Policy { read: false, write: true, max_age: None });
        assert_eq!(Policy::from_header(Some("No-Store")), Policy { read: false, write: false, max_age: None });
        assert_eq!(
            Policy::from_header(Some("max-age=60, private")),
            Policy { read: true, write: true, max_age: Some(Duration::from_secs(60)) }
        );
    }

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
