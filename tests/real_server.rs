//! The plugin inside a real `unimrcpserver`, spoken to by UniMRCP's own `umc`.
//!
//! Runs only when `UNIMRCP_HOME` names an installed UniMRCP 1.8 prefix (with
//! `bin/unimrcpserver`, `bin/umc` and `conf/`); otherwise the test says so and
//! passes (the configuration edits are checked either way). Nothing under
//! `UNIMRCP_HOME` is modified: the test builds a private root (`conf/ plugin/
//! log/ data/ var/`) in a temp dir, copies the built plugin there as
//! `plugin/elevenlabs.so`, derives the server and client configurations from
//! the installed ones (everything on 127.0.0.1, free ports, every installed
//! engine disabled, speechsynth routed to ours, which points at the local
//! ElevenLabs-compatible test upstream), and starts both programs with
//! `-r <root>`. One server and one umc make six calls in turn: SSML and
//! text/plain over SIP/MRCPv2, SSML over RTSP/MRCPv1 (all PCMU at 8 kHz),
//! text over linear 16 kHz audio, an upstream 429, and a STOP mid-stream.
//! Each is checked against what umc printed and saved, what the upstream
//! received, and what the plugin logged.
//!
//! Everything is loopback and bounded in time (about 12 s); the server is
//! stopped (SIGTERM, then SIGKILL) by a guard even when an assertion fails,
//! and the root is kept for inspection when the test fails.
//!
//! The machinery (the configuration edits, ports, the private root, the two
//! programs, reading their logs and umc's audio) is
//! `unimrcp_shim::realserver`; this file holds the runs and what each must
//! lead to.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unimrcp_shim::host::PluginLibrary;
use unimrcp_shim::realserver::audio::{best_alignment, find_bytes, ms, samples, without_repeated_frames};
use unimrcp_shim::realserver::{
    client_profile_xml, client_xml, header, logger_xml, read, remaining, scenario_xml, server_xml, ssml_text, write,
    Engine, Entry, PortPicker, Ports, RealServer, Scenario, SessionLog, TempRoot, Umc,
};
use unimrcp_shim::upstream::{Behavior, Fault, MockUpstream, RecordedRequest};

const SKIP: &str = "UNIMRCP_HOME not set: skipping the real-server test (see README)";
const API_KEY: &str = "sk_realserver_7f3a91c0d2e84b65";
const VOICE: &str = "RealServerVoice01";
const ENGINE_ID: &str = "ElevenLabs-1";
/// Our log source in logger.xml (src/logging.rs).
const LOG_SOURCE: &str = "ELEVENLABS-SYNTH";
/// Frames umc may write twice in one call (see `without_repeated_frames`):
/// seen once in five runs on a loaded 2-core machine.
const MAX_UMC_REPEATS: usize = 5;
/// Whole-test budget: every wait below is cut off by it.
const BUDGET: Duration = Duration::from_secs(55);

/// The installed UniMRCP prefix, or `None` (after saying so) to skip.
fn unimrcp_home() -> Option<PathBuf> {
    let Some(home) = std::env::var_os("UNIMRCP_HOME").filter(|v| !v.is_empty()) else {
        println!("{SKIP}");
        eprintln!("{SKIP}");
        return None;
    };
    let home = PathBuf::from(home);
    for needed in ["bin/unimrcpserver", "bin/umc", "conf/unimrcpserver.xml", "conf/unimrcpclient.xml"] {
        assert!(
            home.join(needed).is_file(),
            "UNIMRCP_HOME={} has no {needed}: it must be an installed UniMRCP prefix",
            home.display()
        );
    }
    Some(home)
}

/// Our engine in unimrcpserver.xml, pointing at the test upstream.
fn engine(base_url: &str) -> Engine<'_> {
    Engine { id: ENGINE_ID, api_key: API_KEY, voice: VOICE, base_url }
}

const STOCK_SSML: &str = r#"<?xml version="1.0"?>
<speak version="1.0" xml:lang="en-US" xmlns="http://www.w3.org/2001/10/synthesis">
  <p>
    <s>Welcome to Uni MRCP.</s>
  </p>
</speak>
"#;
const STOCK_TEXT: &str = "Welcome to Uni MRCP.";
const MARKS_SSML: &str = r#"<?xml version="1.0"?>
<speak version="1.0" xml:lang="en-US" xmlns="http://www.w3.org/2001/10/synthesis">
  <s>For sales press one, <mark name="support"/>for support press two.</s><mark name="end"/>
</speak>
"#;
const MARKS_TEXT: &str = "For sales press one, for support press two.";
/// (mark, the text it precedes in MARKS_TEXT; "" for the end).
const MARKS: &[(&str, &str)] = &[("support", "for support"), ("end", "")];
const WIDEBAND_TEXT: &str = "Sixteen kilohertz linear audio, carried bit for bit.";
const BUSY_TEXT: &str = "This request meets a busy upstream [busy].";
/// Upstream requests of the busy run: a `system_busy` 429 before any audio
/// is retried, `max_retries` (default 2) times after the first try.
const BUSY_ATTEMPTS: usize = 3;
const LONG_TEXT: &str = "[long] This sentence is long enough to still be playing when the caller \
    says stop: the audio must end at once, the transfer must be aborted, and no completion event \
    may follow the answer to the stop request, because the request was ended by the client.";

/// What one `run` must lead to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// `SPEAK-COMPLETE` `000 normal`; with `exact`, the received audio holds
    /// the upstream's bytes unchanged (linear codec), else it is compared
    /// after the G.711 round trip.
    Normal { exact: bool },
    /// `SPEAK-COMPLETE` `004 error` with a `Completion-Reason` containing this.
    Error(&'static str),
    /// `stop <id>` this long after `200 IN-PROGRESS`, then `kill <id>`.
    StopAfter(Duration),
    /// SSML with `<mark>`s: a SPEECH-MARKER per name, in order, each when
    /// its audio plays, then `000 normal` carrying the last one.
    Markers(&'static [(&'static str, &'static str)]),
}

/// One `run` of umc and what must come of it.
struct Run {
    scenario: &'static str,
    /// Second word of `run`: the client profile, when not the scenario's.
    profile: Option<&'static str>,
    what: &'static str,
    /// What the plugin must send upstream for the body.
    text: String,
    /// The rate the call negotiates (the codec decides it).
    rate: u32,
    expect: Expect,
}

/// Writes the whole private root; returns the runs to make, in order.
fn prepare(home: &Path, root: &Path, ports: &Ports, base_url: &str) -> Vec<Run> {
    let conf = home.join("conf");
    let plugin = PluginLibrary::default_path().expect("the built plugin .so");
    fs::copy(&plugin, root.join("plugin/elevenlabs.so")).expect("copy the plugin");

    write(
        &root.join("conf/unimrcpserver.xml"),
        &server_xml(&read(&conf.join("unimrcpserver.xml")), ports, &engine(base_url)),
    );
    write(&root.join("conf/unimrcpclient.xml"), &client_xml(&read(&conf.join("unimrcpclient.xml")), ports));
    write(
        &root.join("conf/client-profiles/unimrcp.xml"),
        &client_profile_xml(&read(&conf.join("client-profiles/unimrcp.xml")), ports),
    );
    write(&root.join("conf/logger.xml"), &logger_xml(fs::read_to_string(conf.join("logger.xml")).ok(), LOG_SOURCE));
    if conf.join("logfile.xml").is_file() {
        fs::copy(conf.join("logfile.xml"), root.join("conf/logfile.xml")).expect("copy logfile.xml");
    }

    // The stock SPEAK bodies, and ours.
    let data = home.join("data");
    let ssml = fs::read_to_string(data.join("speak.xml")).unwrap_or_else(|_| STOCK_SSML.to_string());
    let plain = fs::read_to_string(data.join("speak.txt")).unwrap_or_else(|_| STOCK_TEXT.to_string());
    for (file, text) in [
        ("speak.xml", ssml.as_str()),
        ("speak.txt", plain.as_str()),
        ("wideband.txt", WIDEBAND_TEXT),
        ("busy.txt", BUSY_TEXT),
        ("long.txt", LONG_TEXT),
        ("marks.xml", MARKS_SSML),
    ] {
        write(&root.join("data").join(file), text);
    }
    let ssml_type = "application/synthesis+ssml";
    let scenarios = [
        Scenario { name: "rs-ssml", profile: "uni2", content_type: ssml_type, data_file: "speak.xml" },
        Scenario { name: "rs-text", profile: "uni2", content_type: "text/plain", data_file: "speak.txt" },
        Scenario { name: "rs-wideband", profile: "uni2wb", content_type: "text/plain", data_file: "wideband.txt" },
        Scenario { name: "rs-busy", profile: "uni2", content_type: "text/plain", data_file: "busy.txt" },
        Scenario { name: "rs-stop", profile: "uni2", content_type: "text/plain", data_file: "long.txt" },
        Scenario { name: "rs-marks", profile: "uni2", content_type: ssml_type, data_file: "marks.xml" },
    ];
    for s in &scenarios {
        write(&root.join(format!("conf/umc-scenarios/{}.xml", s.name)), &scenario_xml(s));
    }
    let normal = Expect::Normal { exact: false };
    let run = |scenario, profile, what, text: &str, rate, expect| Run {
        scenario,
        profile,
        what,
        text: text.to_string(),
        rate,
        expect,
    };
    vec![
        run("rs-ssml", None, "SIP/MRCPv2, SSML body, PCMU", &ssml_text(&ssml), 8000, normal),
        run("rs-text", None, "SIP/MRCPv2, text/plain body, PCMU", plain.trim(), 8000, normal),
        run("rs-ssml", Some("uni1"), "RTSP/MRCPv1, SSML body, PCMU", &ssml_text(&ssml), 8000, normal),
        run("rs-wideband", None, "SIP/MRCPv2, L16/16000", WIDEBAND_TEXT, 16000, Expect::Normal { exact: true }),
        run("rs-busy", None, "SIP/MRCPv2, upstream answers 429", BUSY_TEXT, 8000, Expect::Error("429")),
        run("rs-stop", None, "SIP/MRCPv2, STOP mid-stream", LONG_TEXT, 8000, Expect::StopAfter(Duration::from_secs(1))),
        run("rs-marks", None, "SIP/MRCPv2, SSML with marks, PCMU", MARKS_TEXT, 8000, Expect::Markers(MARKS)),
    ]
}

// ---------------------------------------------------------------------------
// The test.

/// Makes `run` and waits until umc has destroyed its session (the
/// `done_sessions`-th "Destroy MRCP Handle"); returns umc's log of it.
fn make_run(umc: &mut Umc, run: &Run, done_sessions: usize, deadline: Instant) -> SessionLog {
    let before = umc.log_text().len();
    let command = match run.profile {
        Some(p) => format!("run {} {p}", run.scenario),
        None => format!("run {}", run.scenario),
    };
    umc.send(&command);
    let chunk = |log: &str| log.get(before..).unwrap_or_default().to_string();
    let limit = || remaining(deadline).min(Duration::from_secs(20));
    if let Expect::StopAfter(after) = run.expect {
        let log = umc
            .wait_log(limit(), |l| chunk(l).contains("200 IN-PROGRESS"))
            .unwrap_or_else(|l| panic!("{command}: no IN-PROGRESS; umc log:\n{}", chunk(&l)));
        std::thread::sleep(after);
        let id = SessionLog::parse(&chunk(&log)).map(|s| s.umc_id).unwrap_or_else(|e| panic!("{command}: {e}"));
        umc.send(&format!("stop {id}"));
        umc.wait_log(limit(), |l| chunk(l).contains(" 200 COMPLETE"))
            .unwrap_or_else(|l| panic!("{command}: STOP got no 200 COMPLETE; umc log:\n{}", chunk(&l)));
        umc.send(&format!("kill {id}"));
    }
    let log = umc
        .wait_log(limit(), |l| l.matches("Destroy MRCP Handle").count() >= done_sessions)
        .unwrap_or_else(|l| panic!("{command}: the session did not end; umc log:\n{}", chunk(&l)));
    SessionLog::parse(&chunk(&log)).unwrap_or_else(|e| panic!("{command}: {e}; umc log:\n{}", chunk(&log)))
}

#[test]
fn speaks_through_a_real_unimrcpserver_to_umc() {
    unimrcp_shim::anchor();
    let Some(home) = unimrcp_home() else { return };
    let started = Instant::now();
    let deadline = started + BUDGET;

    let mock = MockUpstream::start(API_KEY);
    // Streams at twice real time after 100 ms, as a fast upstream would.
    mock.set_default(Behavior::default().with_speed(2.0).with_first_byte_delay(Duration::from_millis(100)));
    mock.when_text_contains("[busy]", Behavior::fault(Fault::system_busy()));
    // 1.5x: still streaming when the STOP comes. (At exactly 1x the plugin,
    // which plays from the first bytes on, may underrun for a frame.)
    mock.when_text_contains("[long]", Behavior::default().with_speed(1.5));

    let root = TempRoot::new();
    let mut picker = PortPicker::default();
    let ports = Ports {
        sip: picker.tcp_and_udp(),
        rtsp: picker.tcp(),
        mrcp: picker.tcp(),
        rtp: picker.udp_range(20),
        client_sip: picker.udp(),
        client_rtp: picker.udp_range(20),
    };
    let runs = prepare(&home, &root.path, &ports, &mock.base_url());
    drop(picker);
    println!("real server: UNIMRCP_HOME={}, root {}, {ports:?}", home.display(), root.path.display());

    let mut server = RealServer::start(&home, &root.path, deadline);
    let server_up = started.elapsed();
    let scenarios: Vec<&str> = runs.iter().map(|r| r.scenario).collect();
    let mut umc = Umc::start(&home, &root.path, &scenarios, deadline);
    let mut sessions = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        sessions.push(make_run(&mut umc, run, i + 1, deadline));
    }
    let umc_status = umc.quit();
    let (server_status, stop_took) = server.stop();
    let server_log = server.log_text();
    let umc_log = umc.log_text();
    let requests = mock.requests();
    assert!(mock.wait_until_idle(Duration::from_secs(3)), "the upstream still has a transfer open");

    // What happened, for the reader of --nocapture.
    println!("server up (MRCP Server Started) {} ms after spawn", server_up.as_millis());
    for (run, s) in runs.iter().zip(&sessions) {
        println!(
            "\n== run {}{} ({}): umc session {}, MRCP session {}, {} Hz",
            run.scenario,
            run.profile.map(|p| format!(" {p}")).unwrap_or_default(),
            run.what,
            s.umc_id,
            s.session_id,
            s.rate
        );
        print!("{}", s.exchange());
        for line in server_log.lines().filter(|l| l.contains(".rs:") && l.contains(&s.session_id)) {
            println!("  server: {}", line.get(11..).unwrap_or(line));
        }
    }
    println!("\numc exit {umc_status:?}; server exit {server_status:?} {} ms after SIGTERM", stop_took.as_millis());

    // The server loaded the plugin, opened the engine and routed to it.
    let plugin_lines: Vec<&str> = server_log.lines().filter(|l| l.contains(" src/") && l.contains(".rs:")).collect();
    println!("plugin lines without a channel:");
    for l in plugin_lines.iter().filter(|l| !l.contains("] [")) {
        println!("  {}", l.get(11..).unwrap_or(l));
    }
    assert!(server_log.contains(&format!("Load Plugin [{ENGINE_ID}]")), "{server_log}");
    assert!(plugin_lines.iter().any(|l| l.contains("ElevenLabs synthesizer plugin") && l.ends_with("loaded")));
    let open = format!("engine open: base_url={} voice_id={VOICE} ", mock.base_url());
    assert!(plugin_lines.iter().any(|l| l.contains(&open)), "no '{open}' in the server log:\n{server_log}");
    for profile in ["uni2", "uni1"] {
        let assoc = format!("Associate Resource [speechsynth] to Engine [{ENGINE_ID}] in Profile [{profile}]");
        assert!(server_log.contains(&assoc), "no '{assoc}' in the server log");
    }
    // Our DEBUG lines are there while the default source is at INFO: the
    // ELEVENLABS-SYNTH source of logger.xml is the one the plugin uses.
    let debug: Vec<&str> = server_log.lines().filter(|l| l.contains("[DEBUG]")).collect();
    assert!(debug.iter().any(|l| l.contains(".rs:")), "no DEBUG line from the plugin");
    assert!(debug.iter().all(|l| l.contains(".rs:")), "DEBUG lines not from the plugin: {debug:#?}");
    // The key is never logged, by either side.
    for (name, text) in [
        ("server log", server_log.as_str()),
        ("umc log", umc_log.as_str()),
        ("server console", &fs::read_to_string(root.path.join("unimrcpserver.console")).unwrap_or_default()),
        ("umc console", &umc.console_text()),
    ] {
        assert!(!text.contains(API_KEY), "the API key appears in the {name}");
        assert!(!text.contains("panicked") && !text.contains("panic in "), "a panic in the {name}");
    }
    // Clean shutdown with the plugin loaded.
    assert!(server_status.is_some_and(|s| s.success()), "unimrcpserver's exit on SIGTERM: {server_status:?}");
    assert!(plugin_lines.iter().any(|l| l.contains("engine close")), "no engine close in the server log");
    assert!(server_log.contains("Unload Plugins"), "the server did not unload the plugins");
    assert!(umc_status.is_some(), "umc did not quit");

    // Each run, against what the upstream saw (in order: one request per
    // run, the busy one's retries included).
    let attempts: Vec<usize> =
        runs.iter().map(|r| if let Expect::Error(_) = r.expect { BUSY_ATTEMPTS } else { 1 }).collect();
    assert_eq!(
        requests.len(),
        attempts.iter().sum::<usize>(),
        "upstream requests per SPEAK {attempts:?}: {requests:#?}"
    );
    let mut rest = &requests[..];
    for ((run, s), n) in runs.iter().zip(&sessions).zip(attempts) {
        let (tries, more) = rest.split_at(n);
        rest = more;
        for earlier in &tries[..n - 1] {
            assert_eq!(
                (earlier.text.as_deref(), earlier.status),
                (Some(run.text.as_str()), 429),
                "{}: a retried try",
                run.scenario
            );
        }
        check_run(run, s, &tries[n - 1], &server_log);
    }
    let took = started.elapsed();
    println!("whole test: {} ms", took.as_millis());
    assert!(took < Duration::from_secs(60), "the real-server test took {took:?}");
}

fn check_run(run: &Run, s: &SessionLog, req: &RecordedRequest, server_log: &str) {
    let ctx =
        format!("run {}{} ({})", run.scenario, run.profile.map(|p| format!(" {p}")).unwrap_or_default(), run.what);
    // The request upstream: exactly the SPEAK's text, at the negotiated rate.
    assert_eq!(s.rate, run.rate, "{ctx}: negotiated rate");
    assert_eq!(req.text.as_deref(), Some(run.text.as_str()), "{ctx}: text sent upstream");
    assert_eq!(req.voice_id, VOICE, "{ctx}");
    let endpoint = if matches!(run.expect, Expect::Markers(_)) { "stream/with-timestamps" } else { "stream" };
    assert_eq!(req.path, format!("/v1/text-to-speech/{VOICE}/{endpoint}"), "{ctx}");
    assert_eq!(req.output_format.as_deref(), Some(format!("pcm_{}", s.rate).as_str()), "{ctx}: output_format");
    assert_eq!(req.header("xi-api-key"), Some(API_KEY), "{ctx}");

    // The exchange umc saw.
    let speak = s.speak_sent().unwrap_or_else(|| panic!("{ctx}: umc sent no SPEAK:\n{}", s.exchange()));
    let in_progress = s.in_progress().unwrap_or_else(|| panic!("{ctx}: no IN-PROGRESS:\n{}", s.exchange()));
    assert!(in_progress.time - speak.time < 0.5, "{ctx}: IN-PROGRESS took {} s", in_progress.time - speak.time);

    // The plugin's lines for this channel.
    let sid = &s.session_id;
    let ours: Vec<&str> =
        server_log.lines().filter(|l| l.contains(".rs:") && l.contains(&format!("[{sid}]"))).collect();
    for needle in [
        "channel open",
        "SPEAK 1 received",
        &format!("SPEAK 1: {} chars, {} Hz", run.text.chars().count(), s.rate),
        "channel close",
    ] {
        assert!(ours.iter().any(|l| l.contains(needle)), "{ctx}: no '[{sid}] {needle}' in the server log: {ours:#?}");
    }

    let saved = fs::read(&s.pcm).unwrap_or_else(|e| panic!("{ctx}: {}: {e}", s.pcm.display()));
    // umc writes a frame twice when its jitter buffer had none for a tick
    // (a late packet on a busy machine); a few such repeats are umc's, not
    // the server's or the plugin's.
    let (audio, repeats) = without_repeated_frames(&saved, s.rate);
    if repeats > 0 {
        println!("{ctx}: umc wrote {repeats} frame(s) twice (its jitter buffer ran dry); left out");
    }
    assert!(repeats <= MAX_UMC_REPEATS, "{ctx}: umc wrote {repeats} frames twice");
    // Next to umc's file, for a look when this fails (the root is kept).
    let _ = fs::write(s.pcm.with_file_name(format!("upstream-{}.pcm", s.session_id)), &req.audio_sent);
    let got_ms = ms(audio.len(), s.rate);
    let sent_ms = ms(req.audio_sent.len(), s.rate);
    match run.expect {
        Expect::Normal { exact } => {
            let done = s.speak_complete().unwrap_or_else(|| panic!("{ctx}: no SPEAK-COMPLETE:\n{}", s.exchange()));
            assert_eq!(header(&done.body, "Completion-Cause"), Some("000 normal"), "{ctx}: {done:#?}");
            assert!(req.completed && req.status == 200, "{ctx}: upstream response not completed: {req:?}");
            let summary = format!("SPEAK 1 done: chars={} ", run.text.chars().count());
            let line = ours.iter().find(|l| l.contains(&summary)).unwrap_or_else(|| panic!("{ctx}: no summary line"));
            assert!(line.contains(&format!("rate={} ", s.rate)) && line.ends_with("cause=000 normal"), "{ctx}: {line}");
            assert!(line.contains(&format!("bytes={} ", req.audio_sent.len())), "{ctx}: {line}");
            // Where the upstream's audio sits in umc's file. Silence comes
            // first: the wait for the upstream's first byte (RTP timestamps
            // carry it as a gap) and umc's jitter buffer delay. The file
            // ends when umc hangs up, on SPEAK-COMPLETE: the server sends it
            // once the last frame is played out, so what umc's own jitter
            // buffer still held then (about its playout delay) is not saved.
            let (lead_bytes, matched_bytes) = if exact {
                let head = &req.audio_sent[..req.audio_sent.len().min(64)];
                let lead = find_bytes(&audio, head)
                    .unwrap_or_else(|| panic!("{ctx}: the upstream's first bytes are not in umc's file"));
                let n = (audio.len() - lead).min(req.audio_sent.len());
                assert!(audio[lead..lead + n] == req.audio_sent[..n], "{ctx}: the audio differs from the upstream's");
                (lead, n)
            } else {
                let (snr, lag, n) = best_alignment(&samples(&req.audio_sent), &samples(&audio), s.rate);
                println!("{ctx}: G.711 round trip SNR {snr:.1} dB at lag {lag} over {n} samples");
                assert!(snr >= 25.0, "{ctx}: received audio is not the upstream's (SNR {snr:.1} dB)");
                (usize::try_from(lag).unwrap_or(0) * 2, n * 2)
            };
            let (lead_ms, audio_ms) = (ms(lead_bytes, s.rate), ms(matched_bytes, s.rate));
            let tail_ms = got_ms - lead_ms - audio_ms;
            println!(
                "{ctx}: upstream sent {sent_ms} ms; umc saved {got_ms} ms: {lead_ms} ms of silence, {audio_ms} ms of the upstream's audio{}, {tail_ms} ms after it",
                if exact { " (byte for byte)" } else { "" }
            );
            assert!(lead_ms <= 400.0, "{ctx}: {lead_ms} ms of silence before the audio");
            assert!(sent_ms - audio_ms <= 150.0, "{ctx}: only {audio_ms} of {sent_ms} ms reached umc's file");
            assert!(tail_ms.abs() <= 40.0, "{ctx}: {tail_ms} ms after the upstream's audio");
            let took = done.time - speak.time;
            assert!(took * 1000.0 >= sent_ms - 100.0, "{ctx}: SPEAK-COMPLETE after {took} s, before the audio played");
        }
        Expect::Error(reason) => {
            let done = s.speak_complete().unwrap_or_else(|| panic!("{ctx}: no SPEAK-COMPLETE:\n{}", s.exchange()));
            assert_eq!(header(&done.body, "Completion-Cause"), Some("004 error"), "{ctx}: {done:#?}");
            let why = header(&done.body, "Completion-Reason").unwrap_or_default();
            assert!(why.contains(reason), "{ctx}: Completion-Reason '{why}' lacks '{reason}'");
            assert_eq!(req.status, 429, "{ctx}");
            // The session stays up through the retries' backoff, so umc
            // may save the silence the bridge sent meanwhile, but no sound.
            assert!(samples(&audio).iter().all(|&x| x == 0), "{ctx}: sound in {got_ms} ms saved for a failed SPEAK");
            println!(
                "{ctx}: SPEAK-COMPLETE {} ms after SPEAK, Completion-Reason: {why}",
                ((done.time - speak.time) * 1000.0).round()
            );
        }
        Expect::Markers(marks) => {
            let done = s.speak_complete().unwrap_or_else(|| panic!("{ctx}: no SPEAK-COMPLETE:\n{}", s.exchange()));
            assert_eq!(header(&done.body, "Completion-Cause"), Some("000 normal"), "{ctx}: {done:#?}");
            let stamp = |value: &str| {
                let (ts, name) = value.split_once(';').unwrap_or((value, ""));
                let digits = ts.strip_prefix("timestamp=").unwrap_or("");
                assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{ctx}: '{value}'");
                name.to_owned()
            };
            let got: Vec<(&Entry, String)> = s
                .entries
                .iter()
                .filter(|e| e.head.contains("Receive ") && e.body.iter().any(|l| l.contains("SPEECH-MARKER")))
                .map(|e| (e, stamp(header(&e.body, "Speech-Marker").unwrap_or_default())))
                .collect();
            let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
            let wanted: Vec<&str> = marks.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, wanted, "{ctx}: SPEECH-MARKER events:\n{}", s.exchange());
            let last = stamp(header(&done.body, "Speech-Marker").unwrap_or_default());
            assert_eq!(last, wanted[wanted.len() - 1], "{ctx}: SPEAK-COMPLETE's Speech-Marker");
            assert!(stamp(header(&in_progress.body, "Speech-Marker").unwrap_or_default()).is_empty(), "{ctx}");
            // Each marker when its audio plays: the first byte came about
            // 100 ms after the SPEAK, the mark's character starts where the
            // upstream's alignment put it.
            let (snr, lag, n) = best_alignment(&samples(&req.audio_sent), &samples(&audio), s.rate);
            assert!(snr >= 25.0, "{ctx}: received audio is not the upstream's (SNR {snr:.1} dB)");
            let audio_ms = (sent_ms.round()) as u32;
            let first_byte = req.first_byte_at.map_or(0.0, |t| t.duration_since(req.received_at).as_secs_f64());
            for ((entry, name), (_, before)) in got.iter().zip(marks) {
                let offset = if before.is_empty() { run.text.chars().count() } else { run.text.find(before).unwrap() };
                let due_ms = unimrcp_shim::upstream::char_start_ms(&run.text, audio_ms, offset);
                let at_ms = (entry.time - in_progress.time - first_byte) * 1000.0;
                println!("{ctx}: SPEECH-MARKER {name} at +{at_ms:.0} ms of audio (due at {due_ms:.0} ms)");
                assert!((at_ms - due_ms).abs() <= 150.0, "{ctx}: {name} at {at_ms:.0} ms, its audio at {due_ms:.0} ms");
            }
            assert!(done.time >= got.last().unwrap().0.time, "{ctx}: SPEAK-COMPLETE before the last marker");
            println!("{ctx}: SNR {snr:.1} dB at lag {lag} over {n} samples");
        }
        Expect::StopAfter(_) => {
            assert!(s.speak_complete().is_none(), "{ctx}: SPEAK-COMPLETE after STOP:\n{}", s.exchange());
            let stop = s.stop_response().unwrap_or_else(|| panic!("{ctx}: no STOP response:\n{}", s.exchange()));
            assert_eq!(header(&stop.body, "Active-Request-Id-List"), Some("1"), "{ctx}: {stop:#?}");
            assert!(ours.iter().any(|l| l.contains("STOP 2: stopped [1]")), "{ctx}: {ours:#?}");
            assert!(!req.completed, "{ctx}: the upstream transfer ran to its end despite STOP");
            let full_ms = f64::from(unimrcp_shim::upstream::audio_ms_for_text(&run.text));
            assert!(sent_ms < full_ms, "{ctx}: upstream sent all {sent_ms} ms");
            let stop_sent = s
                .message(true, |l| l.split_whitespace().any(|w| w == "STOP"))
                .unwrap_or_else(|| panic!("{ctx}: umc sent no STOP:\n{}", s.exchange()));
            let (snr, lag, n) = best_alignment(&samples(&req.audio_sent), &samples(&audio), s.rate);
            let stopped_at_ms = (stop_sent.time - in_progress.time) * 1000.0;
            println!(
                "{ctx}: STOP {stopped_at_ms:.0} ms after IN-PROGRESS, answered in {:.1} ms; umc saved {got_ms} ms; upstream sent {sent_ms} of {full_ms} ms before the transfer was aborted; SNR {snr:.1} dB at lag {lag} over {n} samples",
                (stop.time - stop_sent.time) * 1000.0
            );
            // The audio ends at the STOP (umc hangs up ~20 ms after the answer).
            assert!(
                got_ms >= stopped_at_ms - 200.0 && got_ms <= stopped_at_ms + 250.0,
                "{ctx}: {got_ms} ms saved for a STOP {stopped_at_ms} ms into the SPEAK"
            );
            assert!(stop.time - stop_sent.time < 0.1, "{ctx}: STOP answered after {} s", stop.time - stop_sent.time);
            assert!(snr >= 25.0, "{ctx}: received audio is not the upstream's (SNR {snr:.1} dB)");
        }
    }
}

#[test]
fn config_edits_on_the_stock_file_shapes() {
    // Runs everywhere: the configuration edits, on the stock file shapes.
    let stock_server = r#"<unimrcpserver>
  <properties>
    <ip type="auto"/>
    <!-- <ip>10.10.0.1</ip> -->
  </properties>
  <components>
    <sip-uas id="SIP-Agent-1" type="SofiaSIP">
      <sip-port>8060</sip-port>
      <sip-transport>udp,tcp</sip-transport>
    </sip-uas>
    <rtsp-uas id="RTSP-Agent-1" type="UniRTSP">
      <rtsp-port>1554</rtsp-port>
    </rtsp-uas>
    <mrcpv2-uas id="MRCPv2-Agent-1">
      <mrcp-port>1544</mrcp-port>
    </mrcpv2-uas>
    <rtp-factory id="RTP-Factory-1">
      <rtp-port-min>5000</rtp-port-min>
      <rtp-port-max>6000</rtp-port-max>
    </rtp-factory>
    <plugin-factory>
      <engine id="Demo-Synth-1" name="demosynth" enable="true"/>
      <engine id="Demo-Recog-1" name="demorecog" enable="true">
        <max-channel-count>100</max-channel-count>
      </engine>
      <engine id="ElevenLabs-1" name="elevenlabs" enable="false"/>
    </plugin-factory>
  </components>
  <settings>
    <rtp-settings id="RTP-Settings-1">
      <codecs own-preference="false">PCMU PCMA G722 L16/96/8000 telephone-event/101/8000</codecs>
    </rtp-settings>
  </settings>
  <profiles>
    <mrcpv2-profile id="uni2">
      <sip-uas>SIP-Agent-1</sip-uas>
      <resource-engine-map>
        <resource id="speechsynth" engine="Demo-Synth-1"/>
      </resource-engine-map>
    </mrcpv2-profile>
    <mrcpv1-profile id="uni1">
      <rtsp-uas>RTSP-Agent-1</rtsp-uas>
    </mrcpv1-profile>
  </profiles>
</unimrcpserver>"#;
    let ports = Ports { sip: 1, rtsp: 2, mrcp: 3, rtp: (4, 24), client_sip: 5, client_rtp: (6, 26) };
    let x = server_xml(stock_server, &ports, &engine("http://127.0.0.1:9"));
    assert!(!x.contains("type=\"auto\"") && !x.contains("10.10.0.1"), "{x}");
    assert!(x.contains("<properties>\n    <ip>127.0.0.1</ip>\n  </properties>"), "{x}");
    for want in [
        "<sip-ip>127.0.0.1</sip-ip>",
        "<sip-port>1</sip-port>",
        "<rtsp-port>2</rtsp-port>",
        "<mrcp-port>3</mrcp-port>",
        "<rtp-port-min>4</rtp-port-min>",
        "<rtp-port-max>24</rtp-port-max>",
        "<engine id=\"Demo-Synth-1\" name=\"demosynth\" enable=\"false\"/>",
        "<engine id=\"Demo-Recog-1\" name=\"demorecog\" enable=\"false\">",
        "<param name=\"base_url\" value=\"http://127.0.0.1:9\"/>",
        "L16/99/16000",
        "own-preference=\"false\"",
    ] {
        assert!(x.contains(want), "no {want} in:\n{x}");
    }
    assert_eq!(x.matches("<engine id=\"ElevenLabs-1\"").count(), 1, "{x}");
    assert_eq!(x.matches("engine=\"ElevenLabs-1\"").count(), 2, "{x}");
    assert!(!x.contains("engine=\"Demo-Synth-1\""), "{x}");
    // The profiles' <sip-uas>/<rtsp-uas> references are untouched.
    assert!(x.contains("<sip-uas>SIP-Agent-1</sip-uas>") && x.contains("<rtsp-uas>RTSP-Agent-1</rtsp-uas>"), "{x}");

    let logger = logger_xml(
        Some(
            "<aptlogger>\n<priority>DEBUG</priority>\n<sources>\n<source name=\"MPF\" priority=\"INFO\" masking=\"NONE\"/>\n</sources>\n</aptlogger>".into(),
        ),
        LOG_SOURCE,
    );
    assert!(logger.contains("<priority>INFO</priority>"), "{logger}");
    assert!(logger.contains("<source name=\"MPF\""), "{logger}");
    assert!(logger.contains("<source name=\"ELEVENLABS-SYNTH\" priority=\"DEBUG\" masking=\"NONE\"/>"), "{logger}");
    assert_eq!(ssml_text(STOCK_SSML), STOCK_TEXT);
}
