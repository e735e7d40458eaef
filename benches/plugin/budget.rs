//! [8] Several servers on one account (issue #13): the time to acquire a
//! slot of the budget shared through a real `redis-server` on loopback,
//! and the upstream requests the shared cache tier saves when two servers
//! speak the same prompts. Skipped, in one line, without `redis-server`.
//!
//! One test host per process at a time, so the "two servers" take turns:
//! each round server A speaks every prompt, then server B, each with its
//! own disk cache dir that lives across rounds, as two machines would.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use super::*;

const PLAN: usize = 5;
/// Budget acquisition: SPEAKs in rounds of `PLAN` (nobody waits for another).
const ACQUIRE_ROUNDS: usize = 40;
const PROMPTS: usize = 10;
const ROUNDS: usize = 3;
const AUDIO_MS: u32 = 300;

/// A `redis-server` on 127.0.0.1, no persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// None: `redis-server` is not installed.
    fn start() -> Result<Option<Redis>, String> {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("redis-server: {e}")),
        };
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis.ping() {
            if Instant::now() > deadline {
                return Err("redis-server never answered PING".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(redis))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
            .is_ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(plugin: &Path, mock: &MockUpstream, dir: Option<&Path>, extra: &[(&str, &str)]) -> Result<Server, String> {
    start_server_with(plugin, mock, dir, extra)
}

/// Closes the channels and the server (the upstream serves every round).
fn close(server: Server, channels: Vec<Channel>, failures: &mut Failures) {
    for ch in channels {
        let _ = ch.close();
    }
    let violations = server.violations();
    if !violations.is_empty() {
        failures.add(format!("{} ABI violations detected by the host: {}", violations.len(), violations.join("; ")));
    }
    if let Err(e) = server.shutdown() {
        failures.add(format!("server shutdown: {e}"));
    }
}

pub fn bench_budget(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let Some(redis) = Redis::start()? else {
        println!("  skipped: redis-server not found");
        return Ok(());
    };
    acquire_times(plugin, &redis, failures)?;
    tier_savings(plugin, &redis, failures)
}

/// A number after `label` in `text` (`… p50 123 us …`).
fn figure_after(text: &str, label: &str) -> Option<u64> {
    text.split(label).nth(1)?.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty())?.parse().ok()
}

fn acquire_times(plugin: &Path, redis: &Redis, failures: &mut Failures) -> Result<(), String> {
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(Behavior::default().with_speed(4.0).with_audio_ms(AUDIO_MS));
    let url = redis.url();
    let plan = PLAN.to_string();
    let mut server = server(plugin, &mock, None, &[("redis_url", &url), ("max_concurrent_requests", &plan)])?;
    let channels = open_channels(&server, PLAN, 8000)?;
    let mut completed = 0;
    for round in 0..ACQUIRE_ROUNDS {
        let speaks: Vec<(usize, u32)> = channels
            .iter()
            .enumerate()
            .map(|(i, ch)| (i, ch.speak(&format!("Budget round {round} caller {i}."))))
            .collect();
        completed +=
            check_completions("budget acquire", &speaks, &channels, Instant::now() + Duration::from_secs(20), failures);
    }
    // The figures are logged at engine close, after the channels went.
    for ch in channels {
        let _ = ch.close();
    }
    server.close_engine().map_err(|e| format!("engine close: {e}"))?;
    let logs = server.logs_text();
    let line = logs.lines().find(|l| l.contains("shared budget at close")).unwrap_or("").to_owned();
    let (p50, p99, leases) =
        (figure_after(&line, "wait p50 "), figure_after(&line, "p99 "), figure_after(&line, "changes, "));
    println!(
        "  a) time to acquire a slot (ticket queued in Redis -> lease granted, Redis on loopback), {PLAN} channels x {ACQUIRE_ROUNDS} rounds, {completed} SPEAKs 000:"
    );
    match (p50, p99, leases) {
        (Some(p50), Some(p99), Some(n)) => {
            println!("     p50 {:.2} ms, p99 {:.2} ms over {n} leases", p50 as f64 / 1000.0, p99 as f64 / 1000.0)
        }
        _ => failures.add(format!("no shared budget figures at engine close: {line:?}")),
    }
    if logs.contains("unreachable") {
        failures.add("the budget went local during the run".into());
    }
    close(server, Vec::new(), failures);
    drop(mock);
    Ok(())
}

fn tier_savings(plugin: &Path, redis: &Redis, failures: &mut Failures) -> Result<(), String> {
    let texts: Vec<String> = (0..PROMPTS).map(|k| format!("Shared tier prompt {k}: please hold the line.")).collect();
    let url = redis.url();
    let plan = PLAN.to_string();
    let mut requests = [0usize; 2];
    for (run, tier) in ["off", "on"].into_iter().enumerate() {
        let mock = MockUpstream::start(API_KEY);
        mock.set_default(Behavior::default().with_speed(4.0).with_audio_ms(AUDIO_MS));
        // Fresh Redis entries per run: the "off" run writes none anyway.
        if let Ok(mut con) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
            let _: Result<(), _> = redis::cmd("FLUSHDB").query(&mut con);
        }
        let dirs = [TempCacheDir::new(&format!("tier-{tier}-a")), TempCacheDir::new(&format!("tier-{tier}-b"))];
        let mut completed = 0;
        for round in 0..ROUNDS {
            for (host, dir) in dirs.iter().enumerate() {
                let extra =
                    [("redis_url", url.as_str()), ("max_concurrent_requests", plan.as_str()), ("cache_redis", tier)];
                let server = server(plugin, &mock, Some(dir.path()), &extra)?;
                let channels = open_channels(&server, PROMPTS, 8000)?;
                let speaks: Vec<(usize, u32)> =
                    channels.iter().enumerate().map(|(i, ch)| (i, ch.speak(&texts[i]))).collect();
                let label = format!("shared tier {tier}, round {}, server {}", round + 1, ["A", "B"][host]);
                completed +=
                    check_completions(&label, &speaks, &channels, Instant::now() + Duration::from_secs(20), failures);
                close(server, channels, failures);
            }
        }
        requests[run] = mock.request_count();
        println!(
            "  {}) two servers, {PROMPTS} prompts x {ROUNDS} rounds each, cache_redis={tier}: {} upstream requests ({completed} of {} SPEAKs 000)",
            ["b", "c"][run],
            requests[run],
            PROMPTS * ROUNDS * 2
        );
    }
    let saved = requests[0].saturating_sub(requests[1]);
    println!(
        "     upstream requests saved by the shared tier: {saved} of {} ({:.0} %)",
        requests[0],
        100.0 * saved as f64 / requests[0].max(1) as f64
    );
    if requests[1] != PROMPTS {
        failures.add(format!("with the shared tier {} upstream requests for {PROMPTS} prompts", requests[1]));
    }
    Ok(())
}
