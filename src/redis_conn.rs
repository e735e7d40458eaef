//! The one way the plugin talks to Redis (issue #13: a budget and a cache
//! tier shared by several servers): a connection opened with short
//! connect/read/write timeouts, so a Redis that is down or slow costs a
//! bounded wait on the calling thread, which is always a worker (the budget
//! thread or a channel's worker), never the MRCP Server or media thread.
//!
//! The URL may carry a password (`redis://:pw@host:port/db`); `Target`
//! keeps it only inside the parsed connection info and shows the URL with
//! the password replaced, so no log line can carry it.

use std::fmt;
use std::time::Duration;

use redis::{Client, Connection, RedisError};

/// Limit on connecting, and on each read and write once connected.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// A Redis server to talk to.
#[derive(Clone)]
pub struct Target {
    client: Client,
    /// The URL as logs may show it.
    shown: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        // The parsed form: two spellings of one server are one target.
        format!("{:?}", self.client.get_connection_info()) == format!("{:?}", other.client.get_connection_info())
    }
}

impl Target {
    /// Parses a `redis://` URL. The error never repeats the URL (it may
    /// hold a password).
    pub fn parse(url: &str) -> Result<Target, String> {
        if !url.starts_with("redis://") {
            return Err("is not a redis:// URL".into());
        }
        let client = Client::open(url).map_err(|e| format!("cannot be read ({:?})", e.kind()))?;
        Ok(Target { client, shown: redact(url) })
    }

    /// A connection with the short timeouts (AUTH and SELECT are done by
    /// the client as part of connecting).
    pub fn connect(&self) -> Result<Connection, RedisError> {
        let con = self.client.get_connection_with_timeout(TIMEOUT)?;
        con.set_read_timeout(Some(TIMEOUT))?;
        con.set_write_timeout(Some(TIMEOUT))?;
        Ok(con)
    }
}

/// What a Redis error says, for a log line: its kind and, for a server
/// error, the server's words, which never include a password (Redis
/// answers AUTH with `WRONGPASS invalid username-password pair`).
pub fn describe(e: &RedisError) -> String {
    match e.code() {
        Some(code) => format!("{code}: {}", e.detail().unwrap_or("")),
        None if e.is_timeout() => "timed out".into(),
        // An I/O error's text is the OS's ("Connection refused (os error
        // 111)"); it never holds the URL.
        None if e.is_io_error() => format!("connection failed: {e}"),
        None => format!("{:?}", e.kind()),
    }
}

/// The URL with its password (and user) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(rest) = url.strip_prefix("redis://") else {
        return "redis://***".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rfind('@') {
        Some(at) => format!("redis://***@{}{path}", &authority[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@10.0.0.5:6379/0"), "redis://***@10.0.0.5:6379/0");
        assert_eq!(redact("redis://user:s3cret@host"), "redis://***@host");
        assert_eq!(redact("redis://10.0.0.5:6379/2"), "redis://10.0.0.5:6379/2");
        let t = Target::parse("redis://:s3cret@127.0.0.1:6379/1").unwrap();
        assert!(!format!("{t} {t:?}").contains("s3cret"));
        assert!(Target::parse("http://x").is_err());
        let e = Target::parse("redis://:s3cret@[bad").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
