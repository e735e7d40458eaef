//! [13] The plugin inside a real `unimrcpserver` (UniMRCP 1.8), against
//! UniMRCP's own `demosynth` in the same server: server CPU per second of
//! audio, driven by UniMRCP's `umc`.
//!
//! Runs only when `UNIMRCP_HOME` names an installed UniMRCP prefix (as
//! tests/real_server.rs; a fresh clone has none, and the section then says
//! so in one line and passes). Nothing under `UNIMRCP_HOME` is modified: a
//! private root in a temp dir gets the built plugin (`elevenlabs.so`) and
//! the installed `demosynth.so`, and configurations derived from the
//! installed ones (everything on 127.0.0.1, free ports).
//!
//! The server profile is chosen by the SIP agent a session arrives on, so
//! the server gets a second SIP agent: profile `uni2` (the first agent)
//! routes speechsynth to the plugin, `uni2demo` (the second) to demosynth;
//! umc has a client profile for each. Both share the MRCPv2 agent, the media
//! engine and its one `MPF Scheduler` thread.
//!
//! demosynth plays `data/demo-<rate>kHz.pcm` when the root has it; ours has
//! none, so it plays 10 ms of silence per character of the SPEAK body: an
//! 800-character body is 8 s of audio, written by its `read_frame` from
//! nothing (the floor: no synthesis, no network, no copy). The plugin gets a
//! text the mock upstream (in this process, at 4x real time, as [10]) turns
//! into the same length of audio.
//!
//! umc sends the SPEAK as soon as its session is up and ends the session on
//! SPEAK-COMPLETE, so a run's window (from just before the first `run`
//! command to the last session's end) also holds every session's SIP
//! set-up and tear-down, for both engines alike. The server's CPU is read
//! per thread from `/proc/<pid>/task/*/schedstat`, sampled every
//! [`SAMPLE_EVERY`] (a channel's worker thread ends with its session, and
//! takes its counters with it: what it used after its last sample is in
//! "unseen", the process total from `/proc/<pid>/stat` minus the threads).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::*;
use unimrcp_shim::realserver::{
    client_profile_xml, client_xml, entries, header, logger_xml, read, scenario_xml, server_xml, write, xml, Engine,
    PortPicker, Ports, RealServer, Scenario, TempRoot, Umc,
};

const SKIP: &str = "[13] real unimrcpserver: skipped, UNIMRCP_HOME is not set (it names an installed UniMRCP 1.8 prefix; see README, Benchmarks)";
/// Sessions per run, unless `UNIMRCP_BENCH_SESSIONS` says otherwise.
const SESSIONS: usize = 100;
const MAX_SESSIONS: usize = 500;
/// Runs of each engine, interleaved (demosynth, plugin, demosynth, ...).
const REPEATS: usize = 5;
/// Audio per SPEAK.
const AUDIO_MS: u32 = 8000;
const SPEED: f64 = 4.0;
/// demosynth's silence per character of the body, when its file is missing.
const DEMO_MS_PER_CHAR: u32 = 10;
/// How often the server's threads are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The kernel's USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100
/// in the user ABI of x86 and ARM Linux).
const USER_HZ: u64 = 100;
const ENGINE_ID: &str = "ElevenLabs-1";
const LOG_SOURCE: &str = "ELEVENLABS-SYNTH";
const DEMO_SIP_AGENT: &str = "SIP-Agent-Demo";
const DEMO_PROFILE: &str = "uni2demo";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Demo,
    Plugin,
}

impl Which {
    fn label(self) -> &'static str {
        match self {
            Which::Demo => "demosynth",
            Which::Plugin => "plugin   ",
        }
    }

    fn scenario(self) -> &'static str {
        match self {
            Which::Demo => "bench-demo",
            Which::Plugin => "bench-plugin",
        }
    }
}

/// The server's thread groups, in print order.
const GROUPS: [&str; 7] = ["media", "MRCP Server", "MRCPv2 agent", "SIP agents", "elevenlabs-*", "demosynth", "other"];

fn group_of(thread: &str) -> &'static str {
    match thread {
        // The one media thread: bridges, read_frame, RTP out.
        "MPF Scheduler" => "media",
        "MRCP Server" => "MRCP Server",
        n if n.starts_with("MRCPv2-Agent") => "MRCPv2 agent",
        n if n.starts_with("SIP-Agent") => "SIP agents",
        n if n.starts_with("elevenlabs") => "elevenlabs-*",
        n if n.starts_with("Demo-Synth") || n.starts_with("Demo Synth") => "demosynth",
        _ => "other",
    }
}

pub fn bench_real(plugin: &Path, failures: &mut Failures) {
    let Some(home) = std::env::var_os("UNIMRCP_HOME").filter(|v| !v.is_empty()) else {
        println!();
        println!("{SKIP}");
        return;
    };
    let home = PathBuf::from(home);
    let sessions = match std::env::var("UNIMRCP_BENCH_SESSIONS") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_SESSIONS).contains(&n) => n,
            _ => {
                failures
                    .add(format!("[13] UNIMRCP_BENCH_SESSIONS={v}: not a number of sessions in 1..={MAX_SESSIONS}"));
                return;
            }
        },
        Err(_) => SESSIONS,
    };
    println!();
    println!(
        "[13] real unimrcpserver ({}): {sessions} umc sessions at once, each one SPEAK of {} s (PCMU 8 kHz), first all to demosynth, then all to the plugin, {REPEATS} pairs; plugin upstream = mock at {SPEED}x real time (this process), cache off, default max_buffer_ms",
        home.display(),
        AUDIO_MS / 1000
    );
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("  load average before: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!(
        "  server CPU from /proc/<pid>/task/*/schedstat by thread, sampled every {} ms, over the window from just before the first session to the last one's end (set-up and tear-down included); unseen = /proc/<pid>/stat total - threads (threads ended between samples)",
        SAMPLE_EVERY.as_millis()
    );
    // The programs' guards stop them on a panic (the machinery panics
    // naming the problem, e.g. a server that does not start).
    let outcome = catch_unwind(AssertUnwindSafe(|| run_all(&home, plugin, sessions, failures)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.add(format!("[13] real server: {e}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.add(format!("[13] real server: {}", what.lines().next().unwrap_or("panicked")));
        }
    }
}

/// The ports of one server with two SIP agents, and of umc.
struct BenchPorts {
    base: Ports,
    demo_sip: u16,
}

fn pick_ports(sessions: usize) -> (PortPicker, BenchPorts) {
    let mut picker = PortPicker::default();
    // An RTP port pair per session, with room: the factory hands ports out
    // in turn, and a session's may not be free again at once.
    let rtp = u16::try_from(sessions * 4 + 40).unwrap_or(u16::MAX);
    let base = Ports {
        sip: picker.tcp_and_udp(),
        rtsp: picker.tcp(),
        mrcp: picker.tcp(),
        rtp: picker.udp_range(rtp),
        client_sip: picker.udp(),
        client_rtp: picker.udp_range(rtp),
    };
    let demo_sip = picker.tcp_and_udp();
    (picker, BenchPorts { base, demo_sip })
}

/// Our `<engine>`: [10]'s engine params, and room for every session.
fn engine_xml(base_url: &str, sessions: usize) -> String {
    let mut params: Vec<(&str, String)> = engine_params(base_url, None);
    params.retain(|(k, _)| *k != "max_buffer_ms");
    let lines: String =
        params.iter().map(|(k, v)| format!("        <param name=\"{k}\" value=\"{}\"/>\n", xml::escape(v))).collect();
    format!(
        "      <engine id=\"{ENGINE_ID}\" name=\"elevenlabs\" enable=\"true\">\n        <max-channel-count>{sessions}</max-channel-count>\n{lines}      </engine>\n"
    )
}

/// unimrcpserver.xml: the test's edits (loopback, our ports, speechsynth to
/// ours in every profile), then demosynth enabled, a second SIP agent and a
/// profile on it that routes speechsynth to demosynth, and connection
/// limits above the session count.
fn server_conf(installed: &str, ports: &BenchPorts, base_url: &str, sessions: usize) -> String {
    let engine = Engine { id: ENGINE_ID, api_key: API_KEY, voice: VOICE_ID, base_url };
    let mut x = server_xml(installed, &ports.base, &engine);
    let factory = ["components", "plugin-factory"];
    let mut body = String::from("\n");
    let mut demo_id = None;
    for span in xml::children(&x, &factory, "engine") {
        let e = &x[span.outer];
        match xml::attr(e, &[], "name").as_deref() {
            Some("elevenlabs") => continue,
            Some("demosynth") if demo_id.is_none() => {
                demo_id = xml::attr(e, &[], "id");
                body.push_str(&format!("      {}\n", xml::set_attr(e, &[], "enable", "true")));
            }
            _ => body.push_str(&format!("      {e}\n")),
        }
    }
    let demo_id = demo_id.unwrap_or_else(|| {
        body.push_str("      <engine id=\"Demo-Synth-1\" name=\"demosynth\" enable=\"true\"/>\n");
        "Demo-Synth-1".to_string()
    });
    body.push_str(&engine_xml(base_url, sessions));
    body.push_str("    ");
    x = xml::set_body(&x, &factory, &body);

    // UDP only (umc's transport): with TCP on two SofiaSIP agents, this
    // server build (Debian's sofia-sip 1.12.11) crashed at start every time
    // in tport_tbind, and one in three times with TCP on one of them.
    x = xml::set_child(&x, &["components", "sip-uas"], "sip-transport", "udp");
    let sip = xml::locate(&x, &["components", "sip-uas"]);
    let first_agent = xml::attr(&x[sip.outer.clone()], &[], "id").unwrap_or_default();
    let mut demo_agent = xml::set_attr(&x[sip.outer.clone()], &[], "id", DEMO_SIP_AGENT);
    demo_agent = xml::set_child(&demo_agent, &["sip-uas"], "sip-port", &ports.demo_sip.to_string());
    x = xml::splice(&x, sip.outer.end..sip.outer.end, &format!("\n    {demo_agent}"));
    let limit = (sessions + 100).to_string();
    for path in [["components", "mrcpv2-uas"], ["components", "rtsp-uas"]] {
        x = xml::set_child(&x, &path, "max-connection-count", &limit);
    }

    let map = format!("\n        <resource id=\"speechsynth\" engine=\"{demo_id}\"/>\n      ");
    with_demo_profile(&x, "unimrcpserver.xml", ("sip-uas", &first_agent, DEMO_SIP_AGENT), |demo| {
        xml::set_body(&demo, &["resource-engine-map"], &map)
    })
}

/// `x` with a copy of its `uni2` mrcpv2-profile added as DEMO_PROFILE:
/// the copy's `child` (which reads `was` in uni2) set to `now`, then
/// `edit`ed. Server and client configurations both route this way.
fn with_demo_profile(
    x: &str,
    file: &str,
    (child, was, now): (&str, &str, &str),
    edit: impl FnOnce(String) -> String,
) -> String {
    let uni2 = xml::descendants(x, &["profiles"], &["mrcpv2-profile"])
        .into_iter()
        .find(|s| xml::attr(&x[s.outer.clone()], &[], "id").as_deref() == Some("uni2"))
        .unwrap_or_else(|| panic!("a uni2 profile in {file}"));
    let ours = &x[uni2.outer.clone()];
    assert_eq!(xml::element(ours, &[child]).map(|s| ours[s.body].trim().to_string()).as_deref(), Some(was));
    let demo = xml::set_attr(ours, &[], "id", DEMO_PROFILE);
    let demo = edit(xml::set_child(&demo, &["mrcpv2-profile"], child, now));
    xml::splice(x, uni2.outer.end..uni2.outer.end, &format!("\n    {demo}"))
}

/// unimrcpclient.xml (the test's) with connection limits above the
/// session count.
fn client_conf(installed: &str, ports: &BenchPorts, sessions: usize) -> String {
    let mut x = client_xml(installed, &ports.base);
    let limit = (sessions + 100).to_string();
    for path in [["components", "mrcpv2-uac"], ["components", "rtsp-uac"]] {
        x = xml::set_child(&x, &path, "max-connection-count", &limit);
    }
    x
}

/// client-profiles/unimrcp.xml (the test's) plus `uni2demo`: uni2 aimed at
/// the server's second SIP agent.
fn client_profiles(installed: &str, ports: &BenchPorts) -> String {
    let mut x = client_profile_xml(installed, &ports.base);
    let settings = xml::locate(&x, &["settings", "sip-settings"]);
    let settings_id = xml::attr(&x[settings.outer.clone()], &[], "id").unwrap_or_default();
    let mut demo_settings = xml::set_attr(&x[settings.outer.clone()], &[], "id", "SIP-Settings-Demo");
    demo_settings = xml::set_child(&demo_settings, &["sip-settings"], "server-port", &ports.demo_sip.to_string());
    x = xml::splice(&x, settings.outer.end..settings.outer.end, &format!("\n    {demo_settings}"));
    with_demo_profile(&x, "client-profiles/unimrcp.xml", ("sip-settings", &settings_id, "SIP-Settings-Demo"), |d| d)
}

/// The SPEAK bodies: (plugin's text, demosynth's body), each `AUDIO_MS` of
/// audio (the plugin's to within one character of the mock's 55 ms).
fn bodies() -> (String, String) {
    let text = text_of_length("Every caller hears the same long menu.", AUDIO_MS);
    let demo = "x".repeat((AUDIO_MS / DEMO_MS_PER_CHAR) as usize);
    (text, demo)
}

/// Writes the private root.
fn prepare(home: &Path, root: &Path, plugin: &Path, ports: &BenchPorts, base_url: &str, sessions: usize) {
    let conf = home.join("conf");
    fs::copy(plugin, root.join("plugin/elevenlabs.so")).expect("copy the plugin");
    let demo = home.join("plugin/demosynth.so");
    fs::copy(&demo, root.join("plugin/demosynth.so"))
        .unwrap_or_else(|e| panic!("copy {}: {e} (UNIMRCP_HOME must hold the demo plugins)", demo.display()));
    write(
        &root.join("conf/unimrcpserver.xml"),
        &server_conf(&read(&conf.join("unimrcpserver.xml")), ports, base_url, sessions),
    );
    write(&root.join("conf/unimrcpclient.xml"), &client_conf(&read(&conf.join("unimrcpclient.xml")), ports, sessions));
    write(
        &root.join("conf/client-profiles/unimrcp.xml"),
        &client_profiles(&read(&conf.join("client-profiles/unimrcp.xml")), ports),
    );
    // Both engines log at the default INFO (the test's DEBUG for ours would
    // be our cost alone); umc's log at INFO is what says a session ended.
    let logger = logger_xml(fs::read_to_string(conf.join("logger.xml")).ok(), LOG_SOURCE);
    write(&root.join("conf/logger.xml"), &logger.replace("priority=\"DEBUG\"", "priority=\"INFO\""));
    // One log file per program for the whole run (it is read as it grows).
    write(
        &root.join("conf/logfile.xml"),
        "<aptlogfile>\n  <settings purge-existing=\"false\" max-age=\"0\" max-count=\"100\" max-size=\"4000\"/>\n</aptlogfile>\n",
    );
    let (text, demo_body) = bodies();
    write(&root.join("data/bench-plugin.txt"), &text);
    write(&root.join("data/bench-demo.txt"), &demo_body);
    for (which, profile) in [(Which::Plugin, "uni2"), (Which::Demo, DEMO_PROFILE)] {
        let name = which.scenario();
        let data_file = if which == Which::Plugin { "bench-plugin.txt" } else { "bench-demo.txt" };
        let s = Scenario { name, profile, content_type: "text/plain", data_file };
        write(&root.join(format!("conf/umc-scenarios/{name}.xml")), &scenario_xml(&s));
    }
}

/// Reads a growing log file from where it was last read.
struct LogTail {
    path: PathBuf,
    pos: u64,
    text: String,
}

impl LogTail {
    /// From the file's current end.
    fn at_end(path: PathBuf) -> LogTail {
        let pos = fs::metadata(&path).map_or(0, |m| m.len());
        LogTail { path, pos, text: String::new() }
    }

    fn poll(&mut self) {
        let Ok(mut f) = fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.pos += n as u64;
            self.text.push_str(&String::from_utf8_lossy(&buf));
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.text.matches(needle).count()
    }
}

/// One thread of the server as the sampler saw it.
struct Seen {
    name: String,
    /// Its schedstat CPU time at the window's start (0 when born in it).
    first_ns: u64,
    last_ns: u64,
}

/// The server's threads over a window.
struct Watch {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Watched>,
}

struct Watched {
    threads: HashMap<String, Seen>,
    /// utime + stime from /proc/<pid>/stat over the window (every thread,
    /// ended ones included), ns.
    process_ns: u64,
    start_rss_kib: u64,
    peak_rss_kib: u64,
    peak_threads: usize,
}

fn process_cpu_ns(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<u64>() * (1_000_000_000 / USER_HZ)
}

fn status_field(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Reads every thread's schedstat into `threads` (new ones named and
/// started at 0 unless `at_start`); the number of threads.
fn sample(pid: u32, threads: &mut HashMap<String, Seen>, at_start: bool) -> usize {
    let mut n = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let Some(ns) = fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue; // ended just now
        };
        n += 1;
        let seen = threads.entry(tid).or_insert_with(|| Seen {
            name: fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim_end().to_string(),
            first_ns: if at_start { ns } else { 0 },
            last_ns: ns,
        });
        seen.last_ns = seen.last_ns.max(ns);
    }
    n
}

impl Watch {
    /// Takes the window's first reading now, then samples until `finish`.
    fn start(pid: u32) -> Watch {
        let mut threads = HashMap::new();
        let count = sample(pid, &mut threads, true);
        let process_start = process_cpu_ns(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut peak_threads = count;
            let start_rss_kib = status_field(pid, "VmRSS:");
            let mut peak_rss_kib = start_rss_kib;
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(SAMPLE_EVERY);
                peak_threads = peak_threads.max(sample(pid, &mut threads, false));
                peak_rss_kib = peak_rss_kib.max(status_field(pid, "VmRSS:"));
            }
            sample(pid, &mut threads, false);
            let process_ns = process_cpu_ns(pid).saturating_sub(process_start);
            Watched { threads, process_ns, start_rss_kib, peak_rss_kib, peak_threads }
        });
        Watch { stop, handle }
    }

    fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the sampler thread")
    }
}

/// One run's figures.
struct RunFigures {
    /// µs of server CPU per second of audio, by group (GROUPS order).
    groups: [f64; GROUPS.len()],
    unseen: f64,
    /// Process total (from /proc/<pid>/stat), µs per s of audio.
    total: f64,
    start_rss_mib: f64,
    peak_rss_mib: f64,
    peak_threads: usize,
}

/// Starts `sessions` sessions of `which` and waits until each has ended;
/// checks that each SPEAK completed `000 normal`.
fn one_run(
    which: Which,
    sessions: usize,
    umc: &mut Umc,
    root: &Path,
    pid: u32,
    audio_ms: u32,
) -> Result<RunFigures, String> {
    let var = root.join("var");
    let mut log = LogTail::at_end(root.join("log/unimrcpclient_current.log"));
    let started = Instant::now();
    let watch = Watch::start(pid);
    for _ in 0..sessions {
        umc.send(&format!("run {}", which.scenario()));
    }
    let deadline = started + Duration::from_millis(u64::from(audio_ms)) + Duration::from_secs(60);
    loop {
        log.poll();
        if log.count("Destroy MRCP Handle") >= sessions || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let watched = watch.finish();
    let took = started.elapsed();
    log.poll();

    // Every SPEAK must have completed normally.
    let mut normal = 0;
    let mut other = Vec::new();
    for e in entries(&log.text) {
        if e.head.contains("Receive ") && e.body.iter().any(|l| l.contains("SPEAK-COMPLETE")) {
            match header(&e.body, "Completion-Cause") {
                Some("000 normal") => normal += 1,
                cause => other.push(cause.unwrap_or("none").to_string()),
            }
        }
    }
    let ended = log.count("Destroy MRCP Handle");
    // What umc saved, per session (the leading wait for audio included;
    // what its jitter buffer held at hang-up not).
    let mut saved = Vec::new();
    for f in fs::read_dir(&var).into_iter().flatten().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("synth-8kHz-") {
            saved.push(f.metadata().map_or(0, |m| m.len()) as f64 / 16_000.0);
        }
        let _ = fs::remove_file(f.path());
    }
    if normal < sessions {
        return Err(format!(
            "{}: {normal} of {sessions} SPEAKs completed 000 normal within {:.0} s ({ended} sessions ended; other causes: {other:?}); umc console: {}",
            which.label().trim(),
            took.as_secs_f64(),
            umc.console_text().lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }

    // The figures count the SPEAK's known length; what umc received must
    // agree with it.
    let each_s = f64::from(audio_ms) / 1000.0;
    let short = saved.iter().filter(|&&s| s < 0.9 * each_s).count();
    if saved.len() != sessions || short > 0 {
        println!(
            "  note: umc saved {} files for {sessions} sessions, {short} of them under 90 % of the {each_s:.2} s each SPEAK plays",
            saved.len()
        );
    }
    let audio_s = sessions as f64 * each_s;
    let mut groups = [0.0; GROUPS.len()];
    let mut threads_ns = 0u64;
    let mut others: HashMap<String, u64> = HashMap::new();
    for seen in watched.threads.values() {
        let ns = seen.last_ns.saturating_sub(seen.first_ns);
        threads_ns += ns;
        let g = group_of(&seen.name);
        if let Some(i) = GROUPS.iter().position(|x| *x == g) {
            groups[i] += ns as f64 / 1000.0 / audio_s;
        }
        if g == "other" {
            *others.entry(seen.name.clone()).or_default() += ns;
        }
    }
    let per_s = |ns: u64| ns as f64 / 1000.0 / audio_s;
    let fig = RunFigures {
        groups,
        unseen: per_s(watched.process_ns.saturating_sub(threads_ns)),
        total: per_s(watched.process_ns.max(threads_ns)),
        start_rss_mib: watched.start_rss_kib as f64 / 1024.0,
        peak_rss_mib: watched.peak_rss_kib as f64 / 1024.0,
        peak_threads: watched.peak_threads,
    };
    let by_group: Vec<String> = GROUPS.iter().zip(fig.groups).map(|(g, v)| format!("{g} {v:.0}")).collect();
    let mut other_names: Vec<(String, u64)> = others.into_iter().filter(|(_, ns)| *ns > 0).collect();
    other_names.sort_by_key(|o| std::cmp::Reverse(o.1));
    let other_names: Vec<String> = other_names.iter().take(4).map(|(n, ns)| format!("{n} {:.0}", per_s(*ns))).collect();
    println!(
        "  {}: {normal}/{sessions} SPEAK-COMPLETE 000 in {:.1} s; umc saved {:.2}-{:.2} s per session ({} files); us CPU per s of audio: total {:.0} = {}, unseen {:.0} (other: {}); RSS {:.1} MiB at the start, peak {:.1} MiB; peak threads {}",
        which.label(),
        took.as_secs_f64(),
        saved.iter().copied().fold(f64::INFINITY, f64::min),
        saved.iter().copied().fold(0.0, f64::max),
        saved.len(),
        fig.total,
        by_group.join(", "),
        fig.unseen,
        other_names.join(", "),
        fig.start_rss_mib,
        fig.peak_rss_mib,
        fig.peak_threads
    );
    Ok(fig)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run_all(home: &Path, plugin: &Path, sessions: usize, failures: &mut Failures) -> Result<(), String> {
    for needed in ["bin/unimrcpserver", "bin/umc", "conf/unimrcpserver.xml", "conf/unimrcpclient.xml"] {
        if !home.join(needed).is_file() {
            return Err(format!(
                "UNIMRCP_HOME={} has no {needed}: it must be an installed UniMRCP prefix",
                home.display()
            ));
        }
    }
    let mock = MockUpstream::start(API_KEY);
    mock.set_default(Behavior::default().with_speed(SPEED).with_first_byte_delay(FIRST_BYTE_DELAY));
    let root = TempRoot::new();
    let (picker, ports) = pick_ports(sessions);
    prepare(home, &root.path, plugin, &ports, &mock.base_url(), sessions);
    drop(picker);
    let (text, demo_body) = bodies();
    let audio_ms = |which| match which {
        Which::Plugin => audio_ms_for_text(&text),
        Which::Demo => demo_body.len() as u32 * DEMO_MS_PER_CHAR,
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    let server = RealServer::start(home, &root.path, deadline);
    let pid = server.pid().ok_or("no server process")?;
    let mut umc = Umc::start(home, &root.path, &[Which::Demo.scenario(), Which::Plugin.scenario()], deadline);
    let log = server.log_text();
    for (profile, engine) in [("uni2", ENGINE_ID), (DEMO_PROFILE, "Demo-Synth-1")] {
        let assoc = format!("Associate Resource [speechsynth] to Engine [{engine}] in Profile [{profile}]");
        if !log.contains(&assoc) {
            println!("  (the server log has no '{assoc}')");
        }
    }

    // A first, unmeasured run of each at full size (the server's and the
    // allocator's first pools and pages, for both).
    for which in [Which::Demo, Which::Plugin] {
        print!("  warm-up, ");
        one_run(which, sessions, &mut umc, &root.path, pid, audio_ms(which))?;
    }
    let mut runs: [Vec<RunFigures>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..REPEATS {
        for (i, which) in [Which::Demo, Which::Plugin].into_iter().enumerate() {
            thread::sleep(Duration::from_millis(500));
            runs[i].push(one_run(which, sessions, &mut umc, &root.path, pid, audio_ms(which))?);
        }
    }
    umc.quit();
    drop(server);
    if !mock.wait_until_idle(Duration::from_secs(3)) {
        failures.add("[13] the mock upstream still has a transfer open after the server stopped".into());
    }

    for (i, which) in [Which::Demo, Which::Plugin].into_iter().enumerate() {
        let r = &runs[i];
        let by_group: Vec<String> = GROUPS
            .iter()
            .enumerate()
            .map(|(g, name)| (name, median(&r.iter().map(|f| f.groups[g]).collect::<Vec<_>>())))
            .filter(|(_, v)| *v >= 0.5)
            .map(|(name, v)| format!("{name} {v:.0}"))
            .collect();
        let totals: Vec<String> = r.iter().map(|f| format!("{:.0}", f.total)).collect();
        println!(
            "  {} median: us CPU per s of audio {:.0} (runs {}) = {}, unseen {:.0}; RSS peak - start {:.1} MiB (largest of the runs); peak threads {}",
            which.label(),
            median(&r.iter().map(|f| f.total).collect::<Vec<_>>()),
            totals.join(" "),
            by_group.join(", "),
            median(&r.iter().map(|f| f.unseen).collect::<Vec<_>>()),
            r.iter().map(|f| f.peak_rss_mib - f.start_rss_mib).fold(f64::NEG_INFINITY, f64::max),
            r.iter().map(|f| f.peak_threads).max().unwrap_or(0)
        );
    }
    let pairs: Vec<f64> =
        runs[0].iter().zip(&runs[1]).filter(|(d, _)| d.total > 0.0).map(|(d, p)| p.total / d.total).collect();
    let each: Vec<String> = pairs.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "  plugin / demosynth, server CPU per s of audio, per pair (each plugin run against the demosynth run just before it): {} -> median {:.2}x",
        each.join(" "),
        median(&pairs)
    );
    Ok(())
}
