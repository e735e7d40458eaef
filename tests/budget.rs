//! Several servers on one account (issue #13): the concurrency limit shared
//! through a real Redis, with two plugin engines in two processes (this
//! test binary runs again as a child host), a server killed mid-run, Redis
//! stopped and restarted, a password; and the Lua semaphore itself.
//!
//! The test upstream runs in the parent and counts what it serves at once
//! for both servers, so every assertion is on its view.

mod common;

use std::time::{Duration, Instant};

use common::child::{host_params, owned, sha1_hex, ChildHost};
use common::redis_server::RedisServer;
use common::*;
use unimrcp_shim::host::{Channel, MediaClock};
use unimrcp_shim::upstream::{Behavior, MockUpstream};

/// Generous: these tests queue 40 SPEAKs on 5 slots on a busy machine.
const LONG: Duration = Duration::from_secs(120);

/// The second server's side (see `common::child`).
#[test]
#[ignore = "run by the other tests of this file, in a process of its own"]
fn child_host() {
    common::child::run();
}

fn plan_of_five(upstream: &MockUpstream) {
    upstream.set_plan_limit(Some(5));
    upstream.set_default(
        Behavior::default().with_speed(4.0).with_audio_ms(1000).with_first_byte_delay(Duration::from_millis(100)),
    );
}

/// The audio the one 200 answer for `text` carried, as the media path
/// must have played it.
fn expected_audio_sha1(upstream: &MockUpstream, text: &str) -> String {
    let ok: Vec<_> =
        upstream.requests().into_iter().filter(|r| r.text.as_deref() == Some(text) && r.status == 200).collect();
    assert_eq!(ok.len(), 1, "one request for {text:?} was answered with audio");
    sha1_hex(&padded(&ok[0].audio_sent, 160))
}

/// Waits (bounded) for `needle` to be logged `count` times.
fn wait_log(server: &unimrcp_shim::host::Server, needle: &str, count: usize) -> usize {
    let deadline = Instant::now() + LONG;
    loop {
        let n = server.logs_text().matches(needle).count();
        if n >= count || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn speak_all(server: &unimrcp_shim::host::Server, texts: &[String]) -> Vec<(Channel, u32, String)> {
    texts
        .iter()
        .map(|t| {
            let ch = server.open_channel(8000).expect("a channel");
            let id = ch.speak(t);
            (ch, id, t.clone())
        })
        .collect()
}

fn expect_all_exact(upstream: &MockUpstream, started: &[(Channel, u32, String)]) {
    for (ch, id, text) in started {
        let done = ch.wait_complete(*id, LONG).expect("SPEAK-COMPLETE");
        assert_eq!(done.completion_cause, Some(NORMAL), "{text}: {done:#?}");
        assert_eq!(sha1_hex(&ch.audio()), expected_audio_sha1(upstream, text), "{text}: exact audio");
    }
}

#[test]
fn two_servers_in_two_processes_share_a_plan_of_five() {
    let redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    plan_of_five(&upstream);
    let url = redis.url();
    let shared = [("redis_url", url.as_str()), ("max_concurrent_requests", "5")];
    let theirs: Vec<String> = (0..20).map(|i| format!("Server B caller {i} hears the menu.")).collect();
    let child = ChildHost::spawn(&upstream, &shared, &theirs, false);
    child.expect("READY");
    let server =
        start_server(host_params(&upstream.base_url(), &owned(&shared)), MediaClock::Every(Duration::from_millis(2)));
    let ours: Vec<String> = (0..20).map(|i| format!("Server A caller {i} hears the menu.")).collect();
    let started = speak_all(&server, &ours);
    expect_all_exact(&upstream, &started);
    let (results, child_logs) = child.results();
    assert_eq!(results.len(), 20);
    for (text, cause, audio) in &results {
        assert_eq!(*cause, NORMAL, "{text}");
        assert_eq!(audio, &expected_audio_sha1(&upstream, text), "{text}: exact audio on server B");
    }
    assert_eq!(upstream.plan_refusals(), 0, "the upstream never refused one");
    assert_eq!(upstream.max_concurrent(), 5, "and never served more than 5 at once, for both servers");
    assert_eq!(upstream.request_count(), 40);
    for logs in [server.logs_text(), child_logs] {
        assert!(!logs.contains("unreachable"), "both stayed shared: {logs}");
    }
    assert_clean(&server);
}

#[test]
fn a_killed_servers_leases_expire_and_the_other_gets_every_slot() {
    let redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    upstream.set_plan_limit(Some(5));
    // The child's SPEAKs would run for a minute; ours take about a second.
    upstream.when_text_contains("holds a slot", Behavior::realtime().with_audio_ms(60_000));
    upstream.set_default(Behavior::default().with_speed(2.0).with_audio_ms(2000));
    let url = redis.url();
    let shared = [("redis_url", url.as_str()), ("max_concurrent_requests", "5"), ("lease_ttl_ms", "1500")];
    let holders: Vec<String> = (0..5).map(|i| format!("Server B caller {i} holds a slot.")).collect();
    let mut child = ChildHost::spawn(&upstream, &shared, &holders, true);
    child.expect("READY");
    let deadline = Instant::now() + LONG;
    while upstream.concurrent_requests() < 5 {
        assert!(Instant::now() < deadline, "the child's five requests never all reached the upstream");
        std::thread::sleep(Duration::from_millis(10));
    }
    let server =
        start_server(host_params(&upstream.base_url(), &owned(&shared)), MediaClock::Every(Duration::from_millis(2)));
    let ours: Vec<String> = (0..5).map(|i| format!("Server A caller {i} waits for a slot.")).collect();
    let started = speak_all(&server, &ours);
    for (ch, id, _) in &started {
        ch.wait_response(*id, WAIT).expect("IN-PROGRESS");
    }
    // Every slot is leased by the child: nothing of ours goes upstream.
    wait_log(&server, "shared budget: 5 slots shared", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        upstream.requests().iter().filter(|r| r.text.as_deref().is_some_and(|t| t.contains("waits"))).count(),
        0
    );
    child.kill();
    let killed = Instant::now();
    upstream.reset_max_concurrent();
    expect_all_exact(&upstream, &started);
    let ours_sent: Vec<_> =
        upstream.requests().into_iter().filter(|r| r.text.as_deref().is_some_and(|t| t.contains("waits"))).collect();
    assert_eq!(ours_sent.len(), 5);
    assert!(ours_sent.iter().all(|r| r.received_at > killed), "sent only once the dead server's leases expired");
    assert_eq!(upstream.max_concurrent(), 5, "all five slots served this server at once");
    assert_eq!(upstream.plan_refusals(), 0);
    assert_clean(&server);
}

#[test]
fn redis_stopped_mid_run_falls_back_to_the_local_share_and_back() {
    let mut redis = RedisServer::start(None);
    let upstream = MockUpstream::start(API_KEY);
    plan_of_five(&upstream);
    let url = redis.url();
    // 5 slots, 2 servers expected: a share of 2 while Redis is away.
    let shared = [("redis_url", url.as_str()), ("max_concurrent_requests", "5"), ("lease_ttl_ms", "1500")];
    let server =
        start_server(host_params(&upstream.base_url(), &owned(&shared)), MediaClock::Every(Duration::from_millis(2)));
    let round = |name: &str| -> Vec<String> { (0..10).map(|i| format!("Round {name} caller {i}.")).collect() };
    let started = speak_all(&server, &round("one"));
    expect_all_exact(&upstream, &started);
    assert_eq!(upstream.max_concurrent(), 5, "shared: all five slots");

    // Stopped while SPEAKs run and wait: the running go on, the waiting
    // go on with the local share, nothing hangs.
    let started = speak_all(&server, &round("two"));
    upstream.wait_for_requests(10 + 3, LONG);
    redis.stop();
    expect_all_exact(&upstream, &started);
    assert_eq!(wait_log(&server, "unreachable", 1), 1, "the change is logged");
    upstream.reset_max_concurrent();
    let started = speak_all(&server, &round("local"));
    expect_all_exact(&upstream, &started);
    assert_eq!(upstream.max_concurrent(), 2, "the local share: 5 / expected_servers 2");

    redis.restart();
    assert_eq!(wait_log(&server, "answers again", 1), 1, "back to shared, logged");
    upstream.reset_max_concurrent();
    let started = speak_all(&server, &round("three"));
    expect_all_exact(&upstream, &started);
    assert_eq!(upstream.max_concurrent(), 5, "shared again: all five slots");

    let logs = server.logs_text();
    assert_eq!(logs.matches("unreachable").count(), 1, "one line going local: {logs}");
    assert_eq!(logs.matches("answers again").count(), 1, "one line back");
    let warning = logs.lines().find(|l| l.contains("unreachable")).unwrap();
    assert!(warning.contains("local share of 2 of 5"), "{warning}");
    assert_eq!(upstream.plan_refusals(), 0);
    assert_clean(&server);
}

#[test]
fn a_password_in_redis_url_works_and_a_wrong_one_fails_cleanly() {
    let redis = RedisServer::start(Some("pw-right-4711"));
    let upstream = MockUpstream::start(API_KEY);
    plan_of_five(&upstream);
    let right = redis.url();
    let params = [("redis_url", right.as_str()), ("max_concurrent_requests", "5")];
    let server =
        start_server(host_params(&upstream.base_url(), &owned(&params)), MediaClock::Every(Duration::from_millis(2)));
    let started = speak_all(&server, &["With the right password.".to_owned()]);
    expect_all_exact(&upstream, &started);
    // The lease went through Redis: its queue counter moved.
    let mut con = redis.connection();
    let seqs: Vec<String> = redis::cmd("KEYS").arg("elevenlabs:budget:*:seq").query(&mut con).unwrap();
    assert_eq!(seqs.len(), 1, "one budget in Redis: {seqs:?}");
    let n: u64 = redis::cmd("GET").arg(&seqs[0]).query(&mut con).unwrap();
    assert!(n >= 1);
    assert!(!seqs[0].contains(API_KEY), "the budget key is a hash, never the API key");
    let logs = server.logs_text();
    assert!(!logs.contains("unreachable"), "{logs}");
    assert!(!logs.contains("pw-right-4711"), "the password never appears in the log");
    assert_clean(&server);
    // One test host per process: this server goes before the next comes.
    server.shutdown().expect("shuts down");

    let wrong = right.replace("pw-right-4711", "pw-wrong-0815");
    let params = [("redis_url", wrong.as_str()), ("max_concurrent_requests", "5")];
    let other =
        start_server(host_params(&upstream.base_url(), &owned(&params)), MediaClock::Every(Duration::from_millis(2)));
    let started = speak_all(&other, &["With the wrong password.".to_owned()]);
    expect_all_exact(&upstream, &started);
    assert_eq!(wait_log(&other, "unreachable", 1), 1);
    let logs = other.logs_text();
    let line = logs.lines().find(|l| l.contains("unreachable")).unwrap();
    assert!(line.contains("local share of 2 of 5") && line.contains("redis://***@127.0.0.1"), "{line}");
    assert!(!logs.contains("pw-wrong-0815") && !logs.contains("pw-right-4711"), "no password in the log: {logs}");
    assert_clean(&other);
}

/// The semaphore's scripts, called as the budget thread calls them.
mod lua {
    use super::*;

    const ACQUIRE: &str = include_str!("../src/tts/capacity/acquire.lua");
    const RENEW: &str = include_str!("../src/tts/capacity/renew.lua");
    const KEYS: [&str; 4] = ["t:{b}:leases", "t:{b}:queue", "t:{b}:tickets", "t:{b}:seq"];

    fn acquire(con: &mut redis::Connection, limit: usize, ttl_ms: u64, tickets: &[&str]) -> Vec<String> {
        let script = redis::Script::new(ACQUIRE);
        let mut call = script.prepare_invoke();
        for k in KEYS {
            call.key(k);
        }
        call.arg(limit).arg(ttl_ms);
        for t in tickets {
            call.arg(*t);
        }
        call.invoke(con).expect("acquire runs")
    }

    fn renew(con: &mut redis::Connection, ttl_ms: u64, leases: &[&str]) -> Vec<String> {
        let script = redis::Script::new(RENEW);
        let mut call = script.prepare_invoke();
        call.key(KEYS[0]).arg(ttl_ms);
        for l in leases {
            call.arg(*l);
        }
        call.invoke(con).expect("renew runs")
    }

    fn release(con: &mut redis::Connection, id: &str) {
        let _: () = redis::cmd("ZREM").arg(KEYS[0]).arg(id).query(con).unwrap();
    }

    /// Calls `f` until it returns Some (bounded; expiry is Redis' clock).
    fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "never happened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn leases_go_in_arrival_order_across_servers() {
        let redis = RedisServer::start(None);
        let mut con = redis.connection();
        let ttl = 60_000;
        assert_eq!(acquire(&mut con, 2, ttl, &["a1", "a2", "a3"]), ["a1", "a2"], "two free slots, in order");
        assert_eq!(acquire(&mut con, 2, ttl, &["b1"]), Vec::<String>::new(), "full: b1 queues behind a3");
        release(&mut con, "a1");
        assert_eq!(acquire(&mut con, 2, ttl, &["b1"]), Vec::<String>::new(), "a3 came first");
        assert_eq!(acquire(&mut con, 2, ttl, &["a3"]), ["a3"]);
        release(&mut con, "a2");
        assert_eq!(acquire(&mut con, 2, ttl, &["a4"]), Vec::<String>::new(), "b1 is ahead of a4");
        assert_eq!(acquire(&mut con, 2, ttl, &["b1"]), ["b1"]);
        assert_eq!(renew(&mut con, ttl, &["a3", "b1", "a1"]), ["a1"], "a released lease is reported gone");
    }

    #[test]
    fn a_dead_servers_leases_and_tickets_expire() {
        let redis = RedisServer::start(None);
        let mut con = redis.connection();
        // The dead server's lease and its queued ticket, never renewed.
        assert_eq!(acquire(&mut con, 1, 400, &["dead1"]), ["dead1"]);
        assert_eq!(acquire(&mut con, 1, 400, &["dead2"]), Vec::<String>::new());
        // The live server keeps asking (refreshing its own ticket).
        let got = eventually(|| Some(acquire(&mut con, 1, 60_000, &["live1"])).filter(|g| !g.is_empty()));
        assert_eq!(got, ["live1"], "after both expired, the live server's ticket gets the lease");
        assert_eq!(renew(&mut con, 400, &["dead1"]), ["dead1"], "renewing too late reports it lost");
        let queue: Vec<String> = redis::cmd("ZRANGE").arg(KEYS[1]).arg(0).arg(-1).query(&mut con).unwrap();
        assert!(queue.is_empty(), "the dead ticket left the queue: {queue:?}");
    }
}
