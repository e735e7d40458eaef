//! The prompt cache tier shared through Redis (`cache_redis`, issue #13):
//! a prompt synthesized by one server is a hit on another (each with its
//! own disk cache), a corrupted Redis entry is refused and synthesized
//! again, and two servers missing at once make one upstream request.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::child::{host_params, owned, sha1_hex, ChildHost};
use common::redis_server::RedisServer;
use common::*;
use unimrcp_shim::host::{MediaClock, Server};
use unimrcp_shim::upstream::{Behavior, MockUpstream};

/// The second server's side (see `common::child`).
#[test]
#[ignore = "run by the other tests of this file, in a process of its own"]
fn child_host() {
    common::child::run();
}

/// A fresh, private cache dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("elevenlabs-cache-redis-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }

    /// The entry files (40 hex digits) in it.
    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.len() == 40)).collect())
            .unwrap_or_default()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiered(redis: &RedisServer, dir: &Dir) -> Vec<(String, String)> {
    owned(&[
        ("redis_url", &redis.url()),
        ("max_concurrent_requests", "5"),
        ("cache_enabled", "true"),
        ("cache_dir", &dir.path()),
        ("cache_redis", "on"),
    ])
}

fn host(upstream: &MockUpstream, extra: &[(String, String)]) -> Server {
    start_server(host_params(&upstream.base_url(), extra), MediaClock::Every(Duration::from_millis(2)))
}

/// Speaks `text` on a new channel: 000 and its audio.
fn speak(server: &Server, text: &str) -> Vec<u8> {
    let ch = server.open_channel(8000).unwrap();
    let id = ch.speak(text);
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    ch.audio()
}

fn redis_entries(redis: &RedisServer) -> Vec<String> {
    let mut con = redis.connection();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("elevenlabs:cache:*").query(&mut con).unwrap();
    keys.retain(|k| !k.ends_with(":lock"));
    keys
}

#[test]
fn a_prompt_synthesized_on_one_server_is_a_hit_on_the_other() {
    let redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    let text = "Welcome to the shared prompt cache.";
    let (dir_a, dir_b) = (Dir::new("hit-a"), Dir::new("hit-b"));
    let a = host(&upstream, &tiered(&redis, &dir_a));
    let heard_a = speak(&a, text);
    assert_eq!(heard_a, padded(&request_for(&upstream, text).audio_sent, 160));
    assert_eq!(redis_entries(&redis).len(), 1, "written to Redis after the whole synthesis");
    assert_clean(&a);
    a.shutdown().unwrap();

    let b = host(&upstream, &tiered(&redis, &dir_b));
    assert!(dir_b.entries().is_empty());
    let heard_b = speak(&b, text);
    assert_eq!(heard_b, heard_a, "the same audio, from Redis");
    assert_eq!(upstream.request_count(), 1, "one upstream request in all");
    assert_eq!(wait_for_log(&b, "source=redis", 1), 1);
    assert_eq!(dir_b.entries().len(), 1, "a Redis hit is written to the local disk cache too");
    assert_eq!(speak(&b, text), heard_a);
    assert_eq!(wait_for_log(&b, "source=cache", 1), 1, "then the disk cache, the first tier, answers");
    assert_eq!(upstream.request_count(), 1);
    assert_clean(&b);
}

#[test]
fn a_corrupted_redis_entry_is_refused_deleted_and_synthesized_again() {
    let redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    let text = "This entry will be damaged in Redis.";
    let (dir_a, dir_b) = (Dir::new("bad-a"), Dir::new("bad-b"));
    let a = host(&upstream, &tiered(&redis, &dir_a));
    speak(&a, text);
    a.shutdown().unwrap();
    let keys = redis_entries(&redis);
    assert_eq!(keys.len(), 1);
    let mut con = redis.connection();
    let good: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut con).unwrap();
    // One audio byte flipped: the header's SHA-1 no longer matches.
    let _: i64 = redis::cmd("SETRANGE").arg(&keys[0]).arg(100).arg(&[good[100] ^ 0x55][..]).query(&mut con).unwrap();

    let b = host(&upstream, &tiered(&redis, &dir_b));
    let heard = speak(&b, text);
    assert_eq!(upstream.request_count(), 2, "refused, so synthesized again");
    let second = &upstream.requests()[1];
    assert_eq!(heard, padded(&second.audio_sent, 160), "the fresh synthesis is what plays");
    assert_eq!(wait_for_log(&b, "is invalid (checksum mismatch): refused, deleted", 1), 1);
    let again: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut con).unwrap();
    assert_eq!(again, std::fs::read(&dir_b.entries()[0]).unwrap(), "replaced by the fresh, valid entry");
    assert_clean(&b);
}

#[test]
fn two_servers_missing_at_once_make_one_upstream_request() {
    let redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    let text = "Both servers want this prompt at once.";
    // Slow enough that the second server asks while the first synthesizes.
    upstream.set_default(Behavior::default().with_first_byte_delay(Duration::from_millis(1500)).with_audio_ms(1000));
    let (dir_a, dir_b) = (Dir::new("flight-a"), Dir::new("flight-b"));
    let a = host(&upstream, &tiered(&redis, &dir_a));
    let ch = a.open_channel(8000).unwrap();
    let id = ch.speak(text);
    upstream.wait_for_requests(1, WAIT);
    let b_params = tiered(&redis, &dir_b);
    let b_params: Vec<(&str, &str)> = b_params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = ChildHost::spawn(&upstream, &b_params, &[text.to_owned()], false);
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL));
    let (results, child_logs) = child.results();
    let expected = sha1_hex(&padded(&request_for(&upstream, text).audio_sent, 160));
    assert_eq!(sha1_hex(&ch.audio()), expected);
    assert_eq!(results.len(), 1);
    assert_eq!((results[0].1, &results[0].2), (NORMAL, &expected), "server B played the same audio");
    assert_eq!(upstream.request_count(), 1, "server B waited for A's entry instead of calling upstream");
    assert!(child_logs.contains("source=redis"), "{child_logs}");
    assert_clean(&a);
}

/// Waits (bounded) for the warm-up's closing line.
fn warm_up_done(server: &Server) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let logs = server.logs_text();
        if let Some(line) = logs.lines().find(|l| l.contains("cache warm-up done")) {
            return line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "warm-up did not finish: {logs}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_warm_up_on_one_server_warms_the_others() {
    let redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    let (dir_a, dir_b, files) = (Dir::new("warm-a"), Dir::new("warm-b"), Dir::new("warm-file"));
    std::fs::create_dir_all(&files.0).unwrap();
    let file = files.0.join("prompts.txt");
    std::fs::write(&file, "Welcome to the bank.\nPress one for sales.\n").unwrap();
    let file = file.display().to_string();
    let with_warm_up = |dir: &Dir| {
        let mut p = tiered(&redis, dir);
        p.push(("cache_warmup_file".into(), file.clone()));
        p
    };
    let a = host(&upstream, &with_warm_up(&dir_a));
    assert!(warm_up_done(&a).contains("2 synthesized"));
    assert_eq!(redis_entries(&redis).len(), 2, "the warm-up's entries went to Redis too");
    a.shutdown().unwrap();

    let b = host(&upstream, &with_warm_up(&dir_b));
    let line = warm_up_done(&b);
    assert!(line.contains("0 synthesized, 2 already cached, 0 failed"), "{line}");
    assert_eq!(dir_b.entries().len(), 2, "copied from Redis to this server's disk");
    assert_eq!(upstream.request_count(), 2, "each prompt synthesized once for both servers");
    assert_clean(&b);
}
