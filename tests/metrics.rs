//! What operators see: `/metrics` scraped over 127.0.0.1 and parsed the
//! way a scraper would (prometheus-parse), counter by counter against what
//! the test did and what the test upstream saw; the endpoint under hostile
//! clients; an address in use; the node_exporter textfile never seen half
//! written; engines in one process keeping their own figures.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};
use unimrcp_shim::host::{Request, Server};
use unimrcp_shim::upstream::Fault;

const PREFIX: &str = "unimrcp_elevenlabs_";

/// A private directory under the system temp dir, emptied first.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("elevenlabs-metrics-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where the engine serves its metrics, from its log line (it listens on
/// port 0: the kernel picks a free one, no race with other tests).
fn metrics_addr(server: &Server) -> SocketAddr {
    let logs = server.logs_text();
    let rest = logs.split("metrics: serving http://").nth(1).expect("the endpoint's log line");
    rest.split("/metrics").next().unwrap().parse().expect("an address")
}

/// One raw HTTP exchange: sends `request`, reads until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{response:?}"))
}

fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// Strictly checks a Prometheus 0.0.4 exposition: every line a HELP, a
/// TYPE or a sample whose value parses, the text ends with a newline, each
/// family's TYPE comes once; then parses it with prometheus-parse.
fn parse_strict(text: &str) -> Scrape {
    assert!(text.ends_with('\n'), "a whole exposition ends with a newline");
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_owned()), "TYPE of {name} given twice");
            let kind = rest.split(' ').nth(1).unwrap_or("");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "0.0.4 counters are named with _total: {line}");
            }
        } else if line.starts_with("# HELP ") {
        } else {
            assert!(line.starts_with(PREFIX), "a sample of ours: {line:?}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "value of {line:?}");
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn scrape(addr: SocketAddr) -> Scrape {
    let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(header_of(&response, "content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    parse_strict(response.split_once("\r\n\r\n").unwrap().1)
}

/// The value of the sample `name` (without the prefix) whose labels
/// include `labels`, summed over the others; 0 when there is none.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let full = format!("{PREFIX}{name}");
    s.samples
        .iter()
        .filter(|x| x.metric == full && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{full} is {other:?}"),
        })
        .sum()
}

/// Scrapes until `done` holds (the summary of a SPEAK is reported just
/// after its SPEAK-COMPLETE); returns the last scrape either way.
fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(addr);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_counter_equals_what_happened() {
    let cache = temp_dir("counters");
    let cache_dir = cache.to_string_lossy().into_owned();
    let rig = rig(&[("metrics_listen", "127.0.0.1:0"), ("cache_enabled", "true"), ("cache_dir", &cache_dir)]);
    let addr = metrics_addr(&rig.server);
    let ch = rig.server.open_channel(8000).unwrap();

    // A miss, then a hit of the same prompt.
    for _ in 0..2 {
        let id = ch.speak("Welcome to the metrics line.");
        assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    }
    // A 503, retried once.
    rig.upstream.fail_next(1, Fault::server_error(503));
    let id = ch.speak("Once more after a server error.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    // A concurrency 429, put back in the queue.
    rig.upstream.fail_next(1, Fault::too_many_concurrent_requests());
    let id = ch.speak("Back to the head of the queue.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    // A failure the SPEAK ends with.
    rig.upstream.fail_next(1, Fault::voice_not_found());
    let id = ch.speak("This voice is gone.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(ERROR));
    // Refused at once: 002, never reaches the worker.
    let id = ch.send(Request::speak_ssml("<speak>never closed"));
    assert_eq!(ch.wait_complete(id, WAIT).unwrap().completion_cause, Some(PARSE_FAILURE));

    let s = scrape_until(addr, |s| value(s, "speaks_total", &[]) >= 6.0);
    assert_eq!(value(&s, "speaks_total", &[("cause", "000 normal")]), 4.0);
    assert_eq!(value(&s, "speaks_total", &[("cause", "004 error")]), 1.0);
    assert_eq!(value(&s, "speaks_total", &[("cause", "002 parse-failure")]), 1.0);
    assert_eq!(value(&s, "speaks_total", &[]), 6.0);
    assert_eq!(value(&s, "mrcp_requests_total", &[("method", "SPEAK")]), 6.0);
    assert_eq!(value(&s, "cache_lookups_total", &[("result", "hit")]), 1.0);
    assert_eq!(value(&s, "cache_lookups_total", &[("result", "miss")]), 4.0);
    assert_eq!(value(&s, "cache_lookups_total", &[("result", "follower")]), 0.0);

    // Upstream requests by status, as the upstream itself saw them.
    let seen = rig.upstream.requests();
    assert_eq!(seen.len(), 6, "4 answered, a 503, a 429: {seen:#?}");
    for status in [200u16, 503, 429, 404] {
        let n = seen.iter().filter(|r| r.status == status).count() as f64;
        assert_eq!(value(&s, "upstream_requests_total", &[("status", &status.to_string())]), n, "status {status}");
    }
    assert_eq!(value(&s, "upstream_requests_total", &[]), 6.0);
    assert_eq!(
        value(&s, "upstream_requests_total", &[("status", "429"), ("detail", "too_many_concurrent_requests")]),
        1.0
    );
    assert_eq!(value(&s, "upstream_requests_total", &[("status", "404"), ("detail", "voice_not_found")]), 1.0);
    assert_eq!(value(&s, "upstream_requests_total", &[("endpoint", "fallback")]), 0.0);
    assert_eq!(value(&s, "upstream_retries_total", &[("kind", "retry")]), 1.0);
    assert_eq!(value(&s, "upstream_retries_total", &[("kind", "requeue")]), 1.0);
    let sent: usize = seen.iter().map(|r| r.text.as_deref().unwrap_or("").chars().count()).sum();
    assert_eq!(value(&s, "characters_sent_total", &[]), sent as f64);
    let billed: usize =
        seen.iter().filter(|r| r.status == 200).map(|r| r.text.as_deref().unwrap_or("").chars().count()).sum();
    assert_eq!(value(&s, "characters_billed_total", &[]), billed as f64, "character-cost of the 200s");

    // Histograms: one duration per SPEAK the worker ran, one first audio
    // per SPEAK heard, one first byte per response with a byte, one queue
    // wait per slot asked for.
    assert_eq!(value(&s, "speak_duration_seconds_count", &[]), 5.0);
    assert_eq!(value(&s, "speak_first_audio_seconds_count", &[]), 4.0);
    assert_eq!(value(&s, "upstream_first_byte_seconds_count", &[]), 6.0);
    assert_eq!(value(&s, "queue_wait_seconds_count", &[]), 6.0);

    // State read at scrape time.
    assert_eq!(value(&s, "channels", &[]), 1.0);
    assert_eq!(value(&s, "worker_threads", &[]), 1.0);
    assert_eq!(value(&s, "speaks_active", &[]), 0.0);
    assert_eq!(value(&s, "upstream_slots_in_use", &[]), 0.0);
    assert_eq!(value(&s, "upstream_queue_waiting", &[]), 0.0);
    assert_eq!(value(&s, "upstream_concurrency_rejections_total", &[]), 1.0);
    assert_eq!(value(&s, "circuit_state", &[("endpoint", "primary")]), 0.0);
    assert_eq!(
        value(&s, "build_info", &[("version", env!("CARGO_PKG_VERSION")), ("model_id", "eleven_flash_v2_5")]),
        1.0
    );
    // The janitor counts entries after each new one: three prompts stored
    // (the hit stored nothing, the failed SPEAK nothing).
    let s = scrape_until(addr, |s| value(s, "cache_entries", &[]) == 3.0);
    assert_eq!(value(&s, "cache_entries", &[]), 3.0);
    assert!(value(&s, "cache_bytes", &[]) > 0.0);
    assert_eq!(value(&s, "cache_evictions_total", &[]), 0.0);

    // A SPEAK in progress shows as one, with its slot.
    rig.upstream.set_default(unimrcp_shim::upstream::Behavior::realtime().with_audio_ms(20_000));
    let id = ch.speak("A long announcement in progress.");
    rig.upstream.wait_for_requests(7, WAIT);
    let s = scrape_until(addr, |s| value(s, "upstream_slots_in_use", &[]) == 1.0);
    assert_eq!(value(&s, "speaks_active", &[]), 1.0);
    assert_eq!(value(&s, "upstream_slots_in_use", &[]), 1.0);
    let stop = ch.stop();
    assert_eq!(ch.wait_response(stop, WAIT).unwrap().active_request_ids.as_deref(), Some(&[id][..]));
    let s = scrape_until(addr, |s| value(s, "speaks_total", &[("cause", "stopped")]) == 1.0);
    assert_eq!(value(&s, "speaks_total", &[("cause", "stopped")]), 1.0);
    assert_eq!(value(&s, "mrcp_requests_total", &[("method", "STOP")]), 1.0);
    assert_eq!(value(&s, "speaks_active", &[]), 0.0);

    // The summary line keeps its request id and billed characters.
    assert!(rig.server.logs_text().contains("chars_billed="));
    assert!(rig.server.logs_text().contains("request_id="));
    assert_clean(&rig.server);
    drop(rig);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn the_endpoint_survives_hostile_clients_and_keeps_answering() {
    let rig = rig(&[("metrics_listen", "127.0.0.1:0")]);
    let addr = metrics_addr(&rig.server);

    let r = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 404, "{r}");
    let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(status_of(&r), 405, "{r}");
    assert_eq!(header_of(&r, "allow"), Some("GET, HEAD"));
    let r = exchange(addr, b"this is not http\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    let r = exchange(addr, b"\x00\xff\xfe garbage \x01\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    let r = exchange(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("\r\n\r\n"), "HEAD: no body");
    // OpenMetrics for a scraper that asks for it.
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n");
    assert_eq!(header_of(&r, "content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(r.ends_with("# EOF\n"));

    // A 1 MiB request line: refused after the head limit, never buffered.
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = b"GET /".to_vec();
    line.resize(1024 * 1024, b'a');
    // The server may close before taking it all: a failed write is fine.
    let _ = big.write_all(&line);
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || status_of(&answer) == 414, "{answer}");

    // Clients that connect and never send, and one that asks and never
    // reads: they hold at most a serving thread each, for a bounded time.
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut deaf = TcpStream::connect(addr).unwrap();
    deaf.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let slow = TcpStream::connect(addr).unwrap();
    (&slow).write_all(b"GET /met").unwrap();

    // No thread per connection: one accepting and 4 serving, whatever
    // connects.
    assert_eq!(metrics_threads(), 5);

    // Meanwhile a few scrapers at once are all answered.
    let scrapers: Vec<_> = (0..4).map(|_| std::thread::spawn(move || scrape(addr).samples.len())).collect();
    for s in scrapers {
        assert!(s.join().unwrap() > 10);
    }
    // And calls go on.
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Calls go on.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let s = scrape_until(addr, |s| value(s, "speaks_total", &[]) == 1.0);
    assert_eq!(value(&s, "speaks_total", &[("cause", "000 normal")]), 1.0);
    assert_clean(&rig.server);
    // Engine close ends and joins them, silent clients or not.
    let Rig { mut server, upstream: _upstream } = rig;
    drop(ch);
    server.close_engine().unwrap();
    assert_eq!(metrics_threads(), 0, "joined at engine close");
    drop((silent, deaf, slow));
}

/// The exporter's threads alive now. The OS keeps 15 bytes of a thread's
/// name, so "elevenlabs-metrics" and "elevenlabs-metrics-file" both show
/// as "elevenlabs-metr" (as "elevenlabs-cache" shows as "elevenlabs-cach").
fn metrics_threads() -> usize {
    unimrcp_shim::host::thread_names().iter().filter(|n| n.as_str() == "elevenlabs-metr").count()
}

#[test]
fn an_address_in_use_is_one_error_line_and_calls_go_on() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let rig = rig(&[("metrics_listen", &addr)]);
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Nobody scrapes this.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let logs = rig.server.logs_text();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("metrics_listen")).collect();
    assert_eq!(errors.len(), 1, "{logs}");
    assert!(errors[0].contains(&addr) && errors[0].contains("running without them"), "{}", errors[0]);
    assert!(!logs.contains("metrics: serving"));
    assert_clean(&rig.server);
}

/// The families every exposition has.
const FAMILIES: &[&str] = &[
    "build_info",
    "speaks_total",
    "upstream_first_byte_seconds",
    "speak_first_audio_seconds",
    "channels",
    "upstream_concurrency_limit",
    "circuit_state",
    "panics_caught_total",
];

fn read_whole(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[test]
fn the_textfile_is_never_seen_half_written() {
    let dir = temp_dir("textfile");
    let path = dir.join("elevenlabs.prom");
    let file = path.to_string_lossy().into_owned();
    let mut rig = rig(&[("metrics_textfile", &file), ("metrics_interval_ms", "10")]);
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Written for the textfile collector.");
    let deadline = Instant::now() + WAIT;
    let mut versions = std::collections::HashSet::new();
    let mut reads = 0;
    // Bounded: 2000 reads or the deadline, and at least 20 rewrites seen.
    while reads < 2000 && Instant::now() < deadline && (versions.len() < 20 || reads < 200) {
        let Some(text) = read_whole(&path) else {
            assert_eq!(reads, 0, "the file never disappears once written");
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        reads += 1;
        let scrape = parse_strict(&text);
        for family in FAMILIES {
            let name = format!("{PREFIX}{family}");
            assert!(scrape.docs.contains_key(&name), "{name} in read {reads}:\n{text}");
        }
        // What changes between versions: the histograms' sums move with
        // every SPEAK, the panics count may; the file's own bytes do.
        versions.insert(text);
        std::thread::yield_now();
    }
    assert!(versions.len() >= 2, "the writer rewrote the file during {reads} reads");
    assert_eq!(metrics_threads(), 1, "one writing thread, no endpoint");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let s = {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = parse_strict(&read_whole(&path).unwrap());
            if value(&s, "speaks_total", &[]) == 1.0 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(value(&s, "speaks_total", &[("cause", "000 normal")]), 1.0);
    // Only the file itself: no temporary file left beside it.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n == "elevenlabs.prom" || n.ends_with(".tmp")), "{names:?}");
    drop(ch);
    rig.server.close_engine().unwrap();
    assert!(!path.exists(), "removed at engine close");
    assert_eq!(metrics_threads(), 0, "the writer is joined at engine close");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn engines_in_one_process_keep_their_own_figures() {
    // The test host runs one server at a time per process, but they all
    // load the same .so: the figures are per engine, not in statics.
    let a = rig(&[("metrics_listen", "127.0.0.1:0")]);
    let addr_a = metrics_addr(&a.server);
    let ch = a.server.open_channel(8000).unwrap();
    for text in ["One for engine a.", "Two for engine a."] {
        let id = ch.speak(text);
        assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    }
    let s = scrape_until(addr_a, |s| value(s, "speaks_total", &[]) == 2.0);
    assert_eq!(value(&s, "speaks_total", &[]), 2.0);
    assert_eq!(value(&s, "channels", &[]), 1.0);
    // Engine close stops and joins the endpoint's threads: the port is free.
    drop(ch);
    let mut server = a.server;
    server.close_engine().unwrap();
    assert!(TcpListener::bind(addr_a).is_ok(), "the endpoint's port is released at engine close");
    drop(server);

    let b = rig(&[("metrics_listen", "127.0.0.1:0")]);
    let addr_b = metrics_addr(&b.server);
    let s = scrape(addr_b);
    assert_eq!(value(&s, "speaks_total", &[]), 0.0, "engine b starts from nothing");
    assert_eq!(value(&s, "mrcp_requests_total", &[]), 0.0);
    assert_eq!(value(&s, "channels", &[]), 0.0);
    let ch = b.server.open_channel(8000).unwrap();
    let id = ch.speak("One for engine b.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let s = scrape_until(addr_b, |s| value(s, "speaks_total", &[]) == 1.0);
    assert_eq!(value(&s, "speaks_total", &[]), 1.0, "b counts its own SPEAK once");
    assert_eq!(value(&s, "mrcp_requests_total", &[("method", "SPEAK")]), 1.0);
    assert_clean(&b.server);
}

#[test]
fn the_dashboard_plots_only_metrics_the_plugin_serves() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    let rig = rig(&[("metrics_listen", "127.0.0.1:0")]);
    let served: Vec<String> = scrape(metrics_addr(&rig.server)).docs.into_keys().collect();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        assert!(!panel["description"].as_str().unwrap_or("").is_empty(), "{} is described", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 8);
    for expr in &exprs {
        for (i, _) in expr.match_indices(PREFIX) {
            let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let family = name.trim_end_matches("_bucket");
            assert!(served.iter().any(|s| s == family), "{family} (in {expr}) is not served: {served:?}");
        }
    }
}

#[test]
fn warm_connection_figures_are_served() {
    let rig = rig(&[("metrics_listen", "127.0.0.1:0"), ("prewarm_connections", "2")]);
    let addr = metrics_addr(&rig.server);
    // The pre-warm thread fills its pool of two with GET /v1/models.
    let s = scrape_until(addr, |s| value(s, "warm_connections_ready", &[]) == 2.0);
    assert_eq!(value(&s, "warm_connections_ready", &[]), 2.0);
    // One probe per connection opened (the next refresh is 20 s away).
    assert_eq!(value(&s, "warm_connection_probes_total", &[]), 2.0);

    // A new channel takes one; the next scrape counts it as warm.
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("A warm welcome.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let s = scrape_until(addr, |s| value(s, "channel_connections_total", &[("connection", "warm")]) == 1.0);
    assert_eq!(value(&s, "channel_connections_total", &[("connection", "warm")]), 1.0);
    assert_eq!(value(&s, "channel_connections_total", &[("connection", "cold")]), 0.0);
    // Without redis_url no budget figures are served.
    assert!(!s.samples.iter().any(|x| x.metric.starts_with(&format!("{PREFIX}budget_"))));
}

#[test]
fn shared_budget_and_redis_tier_figures_are_served() {
    let mut redis = common::redis_server::RedisServer::start(None);
    let cache = temp_dir("redis-tier");
    let cache_dir = cache.to_string_lossy().into_owned();
    let url = redis.url();
    let rig = rig(&[
        ("metrics_listen", "127.0.0.1:0"),
        ("redis_url", &url),
        ("max_concurrent_requests", "5"),
        ("cache_enabled", "true"),
        ("cache_dir", &cache_dir),
        ("cache_redis", "on"),
    ]);
    let addr = metrics_addr(&rig.server);
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("One prompt for every server.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let s = scrape_until(addr, |s| value(s, "cache_redis_stores_total", &[]) == 1.0);
    assert_eq!(value(&s, "budget_shared", &[]), 1.0);
    assert_eq!(value(&s, "budget_leases_acquired_total", &[]), 1.0, "one request, one lease");
    assert_eq!(value(&s, "budget_mode_changes_total", &[]), 0.0);
    assert_eq!(value(&s, "cache_redis_lookups_total", &[("result", "miss")]), 1.0);
    assert_eq!(value(&s, "cache_redis_lookups_total", &[("result", "hit")]), 0.0);
    assert_eq!(value(&s, "cache_redis_stores_total", &[]), 1.0);
    assert_eq!(value(&s, "cache_redis_corrupt_total", &[]), 0.0);

    // Redis gone: the next SPEAK runs on the local share, and the mode
    // change is counted once.
    redis.stop();
    let id = ch.speak("Spoken while Redis is away.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let s = scrape_until(addr, |s| value(s, "budget_shared", &[]) == 0.0);
    assert_eq!(value(&s, "budget_shared", &[]), 0.0);
    assert_eq!(value(&s, "budget_mode_changes_total", &[]), 1.0);
    assert!(value(&s, "cache_redis_errors_total", &[]) >= 1.0);
    drop(ch);
    drop(rig);
    let _ = std::fs::remove_dir_all(&cache);
}
