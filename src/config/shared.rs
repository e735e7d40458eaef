//! Params of several servers sharing one ElevenLabs account through Redis
//! (issue #13): the shared concurrency budget and the shared cache tier.

use std::time::Duration;

use sha1::{Digest, Sha1};

use super::{err, ConfigError, Params};
use crate::redis_conn::Target;

pub const DEFAULT_LEASE_TTL_MS: u64 = 15_000;
pub const DEFAULT_EXPECTED_SERVERS: u64 = 2;
pub const DEFAULT_CACHE_REDIS_MAX_BYTES: u64 = 2 * 1024 * 1024;
pub const DEFAULT_CACHE_REDIS_TTL_S: u64 = 24 * 3600;

#[derive(Clone, Debug, PartialEq)]
pub struct SharedConfig {
    pub redis: Target,
    /// Names the budget in Redis: servers with the same key share it.
    pub budget_key: String,
    /// A lease not renewed for this long is gone (its server died).
    pub lease_ttl: Duration,
    pub expected_servers: usize,
    /// Slots this server uses on its own while Redis is unreachable.
    pub local_share: usize,
    /// The account's limit that every server shares.
    pub limit: usize,
    /// The shared cache tier, when on.
    pub cache: Option<RedisCacheConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RedisCacheConfig {
    /// Entries larger than this (header included) are not stored in Redis.
    pub max_bytes: usize,
    pub ttl: Duration,
}

/// The default budget key: a hash of the API key, so servers on one account
/// meet in Redis without the key itself ever being written there.
pub fn budget_key_for(api_key: &str) -> String {
    let digest = Sha1::new().chain_update(b"unimrcp-elevenlabs budget v1\0").chain_update(api_key).finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("acct-{hex}")
}

pub(super) fn parse(
    p: &Params<'_>,
    api_key: &str,
    max_concurrent_requests: Option<usize>,
    disk_cache: bool,
) -> Result<Option<SharedConfig>, ConfigError> {
    let cache_redis = p.boolean("cache_redis")?.unwrap_or(false);
    let Some(url) = p.get("redis_url").filter(|u| !u.is_empty()) else {
        if cache_redis {
            return Err(err("cache_redis", "needs redis_url"));
        }
        return Ok(None);
    };
    let redis = Target::parse(url).map_err(|why| err("redis_url", why))?;
    let Some(limit) = max_concurrent_requests else {
        return Err(err("redis_url", "needs max_concurrent_requests: the account's limit that the servers share"));
    };
    let budget_key = match p.get("budget_key").filter(|k| !k.is_empty()) {
        None => budget_key_for(api_key),
        Some(k) if k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)) => k.into(),
        Some(k) => return Err(err("budget_key", format!("'{k}' is not letters, digits, _ - . : (at most 64)"))),
    };
    if budget_key == api_key {
        return Err(err("budget_key", "must not be the API key"));
    }
    let lease_ttl = Duration::from_millis(p.millis("lease_ttl_ms", DEFAULT_LEASE_TTL_MS, 300, 600_000)?);
    let expected_servers = p.millis("expected_servers", DEFAULT_EXPECTED_SERVERS, 1, 1000)? as usize;
    let default_share = (limit / expected_servers).max(1) as u64;
    let local_share = p.millis("local_share", default_share, 1, limit as u64)? as usize;
    let cache = if cache_redis {
        if !disk_cache {
            return Err(err("cache_redis", "needs the disk cache (cache_enabled)"));
        }
        Some(RedisCacheConfig {
            max_bytes: p.millis("cache_redis_max_bytes", DEFAULT_CACHE_REDIS_MAX_BYTES, 1024, 512 * 1024 * 1024)?
                as usize,
            ttl: Duration::from_secs(p.millis("cache_redis_ttl_s", DEFAULT_CACHE_REDIS_TTL_S, 1, 365 * 24 * 3600)?),
        })
    } else {
        None
    };
    Ok(Some(SharedConfig { redis, budget_key, lease_ttl, expected_servers, local_share, limit, cache }))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut p: Vec<(String, String)> =
            vec![("api_key".into(), "sk_secret".into()), ("voice_id".into(), "v".into())];
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_params(&p, |_| Err(std::io::Error::other("no files")))
    }

    #[test]
    fn unset_everything_stays_local() {
        assert_eq!(with(&[]).unwrap().shared, None);
        assert_eq!(with(&[("redis_url", "")]).unwrap().shared, None);
        assert_eq!(with(&[("cache_redis", "on")]).unwrap_err().param, "cache_redis");
    }

    #[test]
    fn defaults_and_bounds() {
        let c = with(&[("redis_url", "redis://:pw@127.0.0.1:6379/0"), ("max_concurrent_requests", "5")]).unwrap();
        let s = c.shared.unwrap();
        assert_eq!(s.lease_ttl, Duration::from_millis(15_000));
        assert_eq!((s.expected_servers, s.local_share, s.limit), (2, 2, 5));
        assert_eq!(s.budget_key, budget_key_for("sk_secret"));
        assert!(!s.budget_key.contains("sk_secret"));
        assert_eq!(s.cache, None);
        assert!(!format!("{s:?}").contains("pw"), "the password never shows");
        let one = with(&[("redis_url", "redis://h"), ("max_concurrent_requests", "1"), ("expected_servers", "3")]);
        assert_eq!(one.unwrap().shared.unwrap().local_share, 1, "at least 1");
        let c = with(&[
            ("redis_url", "redis://h"),
            ("max_concurrent_requests", "10"),
            ("budget_key", "team-a"),
            ("lease_ttl_ms", "1500"),
            ("local_share", "4"),
            ("cache_redis", "on"),
            ("cache_dir", "/tmp/x"),
            ("cache_redis_max_bytes", "65536"),
            ("cache_redis_ttl_s", "60"),
        ])
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!((s.budget_key.as_str(), s.local_share), ("team-a", 4));
        assert_eq!(s.cache, Some(RedisCacheConfig { max_bytes: 65536, ttl: Duration::from_secs(60) }));
        for (extra, param) in [
            (&[("redis_url", "redis://h")][..], "redis_url"),
            (&[("redis_url", "http://h"), ("max_concurrent_requests", "5")][..], "redis_url"),
            (&[("redis_url", "redis://h"), ("max_concurrent_requests", "5"), ("budget_key", "a b")][..], "budget_key"),
            (
                &[("redis_url", "redis://h"), ("max_concurrent_requests", "5"), ("budget_key", "sk_secret")][..],
                "budget_key",
            ),
            (
                &[("redis_url", "redis://h"), ("max_concurrent_requests", "5"), ("lease_ttl_ms", "10")][..],
                "lease_ttl_ms",
            ),
            (&[("redis_url", "redis://h"), ("max_concurrent_requests", "5"), ("local_share", "6")][..], "local_share"),
            (
                &[("redis_url", "redis://h"), ("max_concurrent_requests", "5"), ("expected_servers", "0")][..],
                "expected_servers",
            ),
            (
                &[
                    ("redis_url", "redis://h"),
                    ("max_concurrent_requests", "5"),
                    ("cache_redis", "on"),
                    ("cache_enabled", "off"),
                ][..],
                "cache_redis",
            ),
        ] {
            assert_eq!(with(extra).unwrap_err().param, param, "{extra:?}");
        }
    }
}
