//! A second server in a process of its own: the test binary runs again with
//! `--exact child_host --ignored`, and its `child_host` test calls `run`,
//! which starts a test host with the upstream, params and texts from its
//! environment, speaks every text at once and prints what happened on
//! stdout (`READY`, then `RESULT\ttext\tcause\tsha1 of the audio` per
//! SPEAK, `LOG\t…` lines, `DONE`). The test upstream stays in the parent.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use unimrcp_shim::host::{Channel, MediaClock};
use unimrcp_shim::upstream::MockUpstream;

use super::*;

const ENV_UPSTREAM: &str = "BUDGET_CHILD_UPSTREAM";
const ENV_PARAMS: &str = "BUDGET_CHILD_PARAMS";
const ENV_TEXTS: &str = "BUDGET_CHILD_TEXTS";
const ENV_HOLD: &str = "BUDGET_CHILD_HOLD";
/// Generous: a child may queue many SPEAKs on few slots on a busy machine.
pub const LONG: Duration = Duration::from_secs(120);

pub fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The engine params of a test host (the parent's or the child's).
pub fn host_params(base_url: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("api_key".into(), API_KEY.into()),
        ("voice_id".into(), VOICE.into()),
        ("base_url".into(), base_url.into()),
        ("first_byte_timeout_ms".into(), "5000".into()),
        ("stall_timeout_ms".into(), "3000".into()),
        ("cache_enabled".into(), "false".into()),
        ("queue_timeout_ms".into(), "120000".into()),
        // These tests count upstream requests; the pre-warm probes would add
        // theirs (tests/connections.rs covers warm connections).
        ("prewarm_connections".into(), "0".into()),
    ];
    for (k, v) in extra {
        p.retain(|(name, _)| name != k);
        p.push((k.clone(), v.clone()));
    }
    p
}

pub fn owned(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The second server: this binary again, running only `child_host`.
pub struct ChildHost {
    child: Child,
    lines: Receiver<String>,
}

impl ChildHost {
    pub fn spawn(upstream: &MockUpstream, extra: &[(&str, &str)], texts: &[String], hold: bool) -> ChildHost {
        let params: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "child_host", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(ENV_UPSTREAM, upstream.base_url())
            .env(ENV_PARAMS, params.join(";"))
            .env(ENV_TEXTS, texts.join("|"))
            .env(ENV_HOLD, if hold { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the child host starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness starts the test's first line with its name.
                let line = line.strip_prefix("test child_host ... ").map(str::to_owned).unwrap_or(line);
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildHost { child, lines }
    }

    /// The next line starting with `prefix` (others are the harness's).
    pub fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("the child host never said {prefix} ({e})"),
            }
        }
    }

    /// (text, cause, sha1 of the audio) of every SPEAK, once it is done.
    pub fn results(mut self) -> (Vec<(String, u32, String)>, String) {
        let mut results = Vec::new();
        let mut logs = String::new();
        loop {
            let line = self.expect("");
            if line == "DONE" {
                break;
            }
            if let Some(rest) = line.strip_prefix("RESULT\t") {
                let f: Vec<&str> = rest.split('\t').collect();
                results.push((f[0].to_owned(), f[1].parse().expect("a cause"), f[2].to_owned()));
            } else if let Some(rest) = line.strip_prefix("LOG\t") {
                logs.push_str(rest);
                logs.push('\n');
            }
        }
        let status = self.child.wait().expect("the child ends");
        assert!(status.success(), "the child host failed: {status}");
        (results, logs)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildHost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child's side: run by `child_host` in the test binary re-executed;
/// alone (no environment) it does nothing.
pub fn run() {
    let Ok(base_url) = std::env::var(ENV_UPSTREAM) else { return };
    let extra: Vec<(String, String)> = std::env::var(ENV_PARAMS)
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let texts: Vec<String> = std::env::var(ENV_TEXTS).unwrap_or_default().split('|').map(str::to_owned).collect();
    let hold = std::env::var(ENV_HOLD).as_deref() == Ok("1");
    let server = start_server(host_params(&base_url, &extra), MediaClock::Every(Duration::from_millis(2)));
    let started: Vec<(Channel, u32, &String)> = texts
        .iter()
        .map(|t| {
            let ch = server.open_channel(8000).expect("a channel");
            let id = ch.speak(t);
            (ch, id, t)
        })
        .collect();
    for (ch, id, _) in &started {
        ch.wait_response(*id, WAIT).expect("IN-PROGRESS");
    }
    println!("READY");
    if hold {
        // Killed by the parent while its transfers run.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    for (ch, id, text) in &started {
        let done = ch.wait_complete(*id, LONG).expect("SPEAK-COMPLETE");
        println!("RESULT\t{text}\t{}\t{}", done.completion_cause.unwrap_or(999), sha1_hex(&ch.audio()));
    }
    for line in server
        .logs_text()
        .lines()
        .filter(|l| l.contains("shared budget") || l.contains("cache tier") || l.contains("source="))
    {
        println!("LOG\t{line}");
    }
    assert_clean(&server);
    println!("DONE");
}
