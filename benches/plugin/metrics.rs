//! [9] What scraping costs a call: 100 channels speak in rounds for about
//! 10 s, once with nobody scraping and once with 4 clients scraping
//! `/metrics` as fast as they can; read_frame cost and added latency (as
//! in [1] and [2]) side by side, and the scrapes served per second.
//!
//! `cargo bench --bench plugin -- metrics` runs this scenario alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicU64;

use super::*;

const CHANNELS: usize = 100;
const RATE: u32 = 8000;
const AUDIO_MS: u32 = 1000;
const RUN: Duration = Duration::from_secs(10);
const SCRAPERS: usize = 4;

struct RunResult {
    /// read_frame ns of every call while the run's SPEAKs played.
    read_frame: Vec<u64>,
    added_ms: Vec<f64>,
    speaks: usize,
    scrapes: u64,
    scrape_ms: Vec<f64>,
    bytes: u64,
    secs: f64,
}

fn server_with_metrics(plugin: &Path, mock: &MockUpstream) -> Result<Server, String> {
    start_server_with(plugin, mock, None, &[("metrics_listen", "127.0.0.1:0")])
}

/// The endpoint's address, from its log line.
fn endpoint(server: &Server) -> Result<SocketAddr, String> {
    let logs = server.logs_text();
    logs.split("metrics: serving http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next()?.parse().ok())
        .ok_or_else(|| "no metrics endpoint in the log".to_string())
}

/// One scrape; its size when answered 200.
fn scrape_once(addr: SocketAddr) -> Option<usize> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut out = Vec::with_capacity(32 * 1024);
    s.read_to_end(&mut out).ok()?;
    out.starts_with(b"HTTP/1.1 200 ").then_some(out.len())
}

fn run(plugin: &Path, scrapers: usize, failures: &mut Failures) -> Result<RunResult, String> {
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(Behavior::realtime().with_first_byte_delay(FIRST_BYTE_DELAY).with_audio_ms(AUDIO_MS));
    let server = server_with_metrics(plugin, &mock)?;
    let addr = match endpoint(&server) {
        Ok(a) => a,
        Err(e) => {
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };
    let channels = match open_channels(&server, CHANNELS, RATE) {
        Ok(c) => c,
        Err(e) => {
            teardown(server, Vec::new(), mock, failures);
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (count, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..scrapers)
        .map(|_| {
            let (stop, count, bytes) = (stop.clone(), count.clone(), bytes.clone());
            thread::spawn(move || {
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Some(n) = scrape_once(addr) {
                        took.push(ms(t.elapsed()));
                        count.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                took
            })
        })
        .collect();

    let started = Instant::now();
    let nanos_before = server.read_frame_nanos().len();
    let mut all: Vec<(usize, u32)> = Vec::new();
    let mut round = 0;
    let gap = Duration::from_millis(100) / CHANNELS as u32;
    while started.elapsed() < RUN {
        let round_start = Instant::now();
        let mut speaks = Vec::with_capacity(CHANNELS);
        for (c, ch) in channels.iter().enumerate() {
            if let Some(wait) = (round_start + gap * c as u32).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            speaks.push((c, ch.speak(&format!("Metrics probe channel {c} round {round}."))));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        check_completions(
            &format!("metrics run, {scrapers} scrapers, round {round}"),
            &speaks,
            &channels,
            deadline,
            failures,
        );
        all.extend(speaks);
        round += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut scrape_ms = Vec::new();
    for t in threads {
        scrape_ms.extend(t.join().unwrap_or_default());
    }
    let read_frame = server.read_frame_nanos()[nanos_before..].to_vec();

    let logs: Vec<_> = channels.iter().map(Channel::frames).collect();
    let mut added_ms = Vec::with_capacity(all.len());
    for &(c, id) in &all {
        if let Some(sent) = channels[c].sent_at(id) {
            if let Some(first) = logs[c].first_audible_after(sent) {
                added_ms.push(ms_between(sent, logs[c].at(&first)) - ms(FIRST_BYTE_DELAY));
            }
        }
    }
    if added_ms.len() != all.len() {
        failures.add(format!(
            "metrics run: {} of {} SPEAKs without an audible frame",
            all.len() - added_ms.len(),
            all.len()
        ));
    }
    let result = RunResult {
        read_frame,
        added_ms,
        speaks: all.len(),
        scrapes: count.load(Ordering::Relaxed),
        scrape_ms,
        bytes: bytes.load(Ordering::Relaxed),
        secs,
    };
    teardown(server, channels, mock, failures);
    Ok(result)
}

fn print(label: &str, r: &mut RunResult) {
    r.read_frame.sort_unstable();
    let added = sorted_f64(r.added_ms.clone());
    if r.read_frame.is_empty() || added.is_empty() {
        println!("  {label}: no samples");
        return;
    }
    println!(
        "  {label}: read_frame ns p50 {}  p99 {}  max {} ({} calls); added latency p50 {:.1} ms  p99 {:.1} ms ({} SPEAKs in {:.1} s)",
        pct(&r.read_frame, 50.0),
        pct(&r.read_frame, 99.0),
        r.read_frame[r.read_frame.len() - 1],
        r.read_frame.len(),
        pct(&added, 50.0),
        pct(&added, 99.0),
        r.speaks,
        r.secs
    );
    if r.scrapes > 0 {
        let took = sorted_f64(r.scrape_ms.clone());
        println!(
            "  {label}: {} scrapes, {:.0} scrapes/s, {:.1} KiB each; scrape time p50 {:.2} ms  p99 {:.2} ms",
            r.scrapes,
            r.scrapes as f64 / r.secs,
            r.bytes as f64 / r.scrapes as f64 / 1024.0,
            pct(&took, 50.0),
            pct(&took, 99.0)
        );
    }
}

pub fn bench_metrics(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let mut quiet = run(plugin, 0, failures)?;
    print("no scrapers ", &mut quiet);
    let mut busy = run(plugin, SCRAPERS, failures)?;
    print(&format!("{SCRAPERS} scrapers  "), &mut busy);
    if busy.scrapes == 0 {
        failures.add("metrics run: no scrape was answered".into());
    }
    Ok(())
}
