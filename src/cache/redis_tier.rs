//! The shared cache tier (issue #13, `cache_redis`): entries in Redis, so a
//! prompt synthesized by one server is a hit on the others.
//!
//! * An entry is the disk entry's bytes exactly (the same checksummed
//!   header, then the audio), at `elevenlabs:cache:<key hex>`, with a TTL
//!   (`cache_redis_ttl_s`) and only when it fits `cache_redis_max_bytes`.
//!   One that fails the header or checksum check is refused, logged,
//!   deleted, and the prompt is synthesized again.
//! * It is read on a local miss, by the channel's worker, before going
//!   upstream; a hit is written to the local disk cache too (the first tier).
//! * Single flight across servers: the server that misses takes
//!   `…:lock` (`SET NX PX`); the others poll for the entry (serving
//!   commands) while the lock stands, at most `LOCK_TTL`; if the holder
//!   fails it deletes its lock and they go upstream at once, if it dies
//!   they go once the lock expires.
//!
//! Connections come from a small pool (a leaf lock held only to take or
//! return one, never across a Redis call). Any Redis error makes the SPEAK
//! go on without the tier, and the tier is skipped for a second (so a Redis
//! that is away costs at most one connect timeout a second, not one per
//! SPEAK): one WARNING until the tier works again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use redis::{Connection, RedisResult, Script};

use super::store::{created, validate};
use super::Key;
use crate::config::RedisCacheConfig;
use crate::redis_conn::{describe, Target};

/// How long one server's synthesis holds the others back; also how long
/// they wait for it at most.
pub const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a waiting server looks for the entry.
pub const POLL: Duration = Duration::from_millis(50);
/// Connections kept for reuse.
const POOL: usize = 8;
/// After a failure the tier is skipped this long: a Redis that is down or
/// blackholed must not cost every SPEAK a connect timeout.
const RETRY: Duration = Duration::from_secs(1);

/// Deletes the lock only if it is still ours.
const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Figures of the tier, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub hits: u64,
    pub misses: u64,
    /// Entries written to Redis.
    pub stores: u64,
    /// Entries refused for a bad header or checksum.
    pub corrupt: u64,
    /// Misses that waited for another server's synthesis.
    pub waits: u64,
    pub errors: u64,
}

pub struct RedisTier {
    target: Target,
    config: RedisCacheConfig,
    pool: Mutex<Vec<Connection>>,
    /// Set by a failure: the tier is not tried again before then (a leaf,
    /// held for a copy).
    retry_at: Mutex<Option<Instant>>,
    unlock: Script,
    troubled: AtomicBool,
    seq: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stores: AtomicU64,
    corrupt: AtomicU64,
    waits: AtomicU64,
    errors: AtomicU64,
}

/// What the tier has for a key.
pub enum Probe {
    /// A valid entry's audio.
    Hit(Vec<u8>),
    /// None there: this server synthesizes it, holding the lock (token).
    Lead(String),
    /// Another server is synthesizing it.
    Busy,
    /// Redis failed: go on without the tier.
    Unavailable,
}

fn entry_key(key: &Key) -> String {
    format!("elevenlabs:cache:{}", key.hex())
}

fn lock_key(key: &Key) -> String {
    format!("elevenlabs:cache:{}:lock", key.hex())
}

impl RedisTier {
    pub fn new(target: Target, config: RedisCacheConfig) -> RedisTier {
        RedisTier {
            target,
            config,
            pool: Mutex::new(Vec::new()),
            retry_at: Mutex::new(None),
            unlock: Script::new(UNLOCK),
            troubled: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The longest a server waits for another's synthesis.
    pub fn lock_ttl() -> Duration {
        LOCK_TTL
    }

    pub fn figures(&self) -> Figures {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Figures {
            hits: n(&self.hits),
            misses: n(&self.misses),
            stores: n(&self.stores),
            corrupt: n(&self.corrupt),
            waits: n(&self.waits),
            errors: n(&self.errors),
        }
    }

    /// Runs `f` on a pooled connection (a new one if none is free); a
    /// connection that failed is dropped, and the failure logged once.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Option<T> {
        let retry_at = *self.retry_at.lock();
        if retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let pooled = self.pool.lock().pop();
        let result = match pooled {
            Some(c) => Ok(c),
            None => self.target.connect(),
        }
        .and_then(|mut con| f(&mut con).map(|v| (v, con)));
        match result {
            Ok((value, con)) => {
                let mut pool = self.pool.lock();
                if pool.len() < POOL {
                    pool.push(con);
                }
                drop(pool);
                if self.troubled.swap(false, Ordering::Relaxed) {
                    log::info!("cache tier: Redis {} answers again", self.target);
                }
                Some(value)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                *self.retry_at.lock() = Some(Instant::now() + RETRY);
                if !self.troubled.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "cache tier: Redis {} failed ({}); synthesizing without the shared tier until it answers",
                        self.target,
                        describe(&e)
                    );
                }
                None
            }
        }
    }

    /// The entry for `key` if Redis has a valid, young enough one; else
    /// the lock to synthesize it, or word that another server holds it.
    pub fn probe(&self, key: &Key, sample_rate: u32, max_age: Option<Duration>, waited: bool) -> Probe {
        let entry = entry_key(key);
        let Some(bytes) = self.with(|c| redis::cmd("GET").arg(&entry).query::<Option<Vec<u8>>>(c)) else {
            return Probe::Unavailable;
        };
        if let Some(mut bytes) = bytes {
            match validate(&bytes, sample_rate) {
                Ok(_) => {
                    let made = created(&bytes).unwrap_or(SystemTime::UNIX_EPOCH);
                    if !max_age.is_some_and(|limit| made.elapsed().unwrap_or_default() > limit) {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        if waited {
                            self.waits.fetch_add(1, Ordering::Relaxed);
                        }
                        bytes.drain(..super::store::HEADER_LEN);
                        return Probe::Hit(bytes);
                    }
                }
                Err(why) => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "cache tier: Redis entry {} is invalid ({why}): refused, deleted, synthesizing again",
                        key.hex()
                    );
                    let _ = self.with(|c| redis::cmd("DEL").arg(&entry).query::<()>(c));
                }
            }
        }
        let token = format!("{}-{}", std::process::id(), self.seq.fetch_add(1, Ordering::Relaxed));
        let lock = lock_key(key);
        let got = self.with(|c| {
            redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query::<Option<String>>(c)
        });
        match got {
            None => Probe::Unavailable,
            Some(Some(_)) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                Probe::Lead(token)
            }
            Some(None) => Probe::Busy,
        }
    }

    /// After a whole synthesis: the entry as it is on disk (header and
    /// audio), if it fits the cap. Then the lock goes.
    pub fn store(&self, key: &Key, entry: Option<&[u8]>, token: &str) {
        if let Some(bytes) = entry.filter(|b| b.len() <= self.config.max_bytes) {
            let stored = self.with(|c| {
                redis::cmd("SET")
                    .arg(entry_key(key))
                    .arg(bytes)
                    .arg("PX")
                    .arg(self.config.ttl.as_millis() as u64)
                    .query::<()>(c)
            });
            if stored.is_some() {
                self.stores.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.unlock(key, token);
    }

    /// Gives the lock back (a failed or stopped synthesis: the others go
    /// upstream at once rather than wait out the lock).
    pub fn unlock(&self, key: &Key, token: &str) {
        let _ = self.with(|c| self.unlock.key(lock_key(key)).arg(token).invoke::<i64>(c));
    }
}
