//! The plugin inside a real `unimrcpserver`, spoken to by UniMRCP's own `umc`.
//!
//! Runs only when `UNIMRCP_HOME` names an installed UniMRCP 1.8 prefix (with
//! `bin/unimrcpserver`, `bin/umc` and `conf/`); otherwise each test says so
//! and passes. Nothing under `UNIMRCP_HOME` is modified: the test builds a
//! private root (`conf/ plugin/ log/ data/ var/`) in a temp dir, copies the
//! built plugin there as `plugin/elevenlabs.so`, derives the server and
//! client configurations from the installed ones (everything on 127.0.0.1,
//! free ports, speechsynth routed to our engine, the engine pointed at the
//! local ElevenLabs-compatible test upstream), and starts both programs with
//! `-r <root>`. Everything is loopback and bounded in time; the server is
//! stopped (SIGTERM, then SIGKILL) by a guard even when an assertion fails,
//! and the root is kept for inspection when the test fails.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use unimrcp_shim::host::PluginLibrary;
use unimrcp_shim::upstream::{Behavior, Fault, MockUpstream, RecordedRequest};

const SKIP: &str = "UNIMRCP_HOME not set: skipping the real-server test (see README)";
const API_KEY: &str = "sk_realserver_7f3a91c0d2e84b65";
const VOICE: &str = "RealServerVoice01";
const ENGINE_ID: &str = "ElevenLabs-1";
/// Our log source in logger.xml (src/logging.rs).
const LOG_SOURCE: &str = "ELEVENLABS-SYNTH";
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

// ---------------------------------------------------------------------------
// Text edits of UniMRCP's XML configuration files.
//
// The files are small and regular; comments are removed first so that
// commented-out examples are never matched. Elements are found by name,
// optionally inside a chain of parents, and are assumed not to nest inside
// an element of the same name (true of every element edited here).

fn strip_comments(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Span of the first `<tag ...>...</tag>` or `<tag .../>` in `xml[within]`.
fn find_element(xml: &str, tag: &str, within: Range<usize>) -> Option<Range<usize>> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut from = within.start;
    while let Some(pos) = xml[from..within.end].find(&open) {
        let start = from + pos;
        let after = start + open.len();
        let next = xml[after..].chars().next()?;
        if !(next.is_whitespace() || next == '>' || next == '/') {
            from = after;
            continue;
        }
        let head_end = after + xml[after..within.end].find('>')? + 1;
        if xml[..head_end].ends_with("/>") {
            return Some(start..head_end);
        }
        let end = head_end + xml[head_end..within.end].find(&close)? + close.len();
        return Some(start..end);
    }
    None
}

/// Every element named `tag` in `xml[within]`, in order.
fn find_elements(xml: &str, tag: &str, within: Range<usize>) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut from = within.start;
    while let Some(span) = find_element(xml, tag, from..within.end) {
        from = span.end;
        found.push(span);
    }
    found
}

/// The element reached through `path` (each name inside the previous one).
fn locate(xml: &str, path: &[&str]) -> Range<usize> {
    let mut span = 0..xml.len();
    for tag in path {
        span = find_element(xml, tag, span).unwrap_or_else(|| panic!("no <{}> in the configuration", path.join("> <")));
    }
    span
}

/// Where the content of the element at `span` starts and ends (empty at the
/// end of the head for a self-closing element).
fn body_of(xml: &str, span: &Range<usize>) -> Range<usize> {
    let head_end = span.start + xml[span.clone()].find('>').expect("element head") + 1;
    if xml[..head_end].ends_with("/>") {
        head_end..head_end
    } else {
        head_end..span.start + xml[span.clone()].rfind("</").expect("closing tag")
    }
}

fn splice(xml: &str, span: Range<usize>, with: &str) -> String {
    format!("{}{}{}", &xml[..span.start], with, &xml[span.end..])
}

/// Replaces the content of the element at `path`.
fn set_body(xml: &str, path: &[&str], body: &str) -> String {
    let span = locate(xml, path);
    let tag = path.last().expect("non-empty path");
    let head_end = span.start + xml[span.clone()].find('>').expect("element head") + 1;
    let head = xml[span.start..head_end].trim_end_matches('>').trim_end_matches('/');
    splice(xml, span, &format!("{head}>{body}</{tag}>"))
}

/// Sets `<child>value</child>` inside the element at `path`, replacing the
/// child or adding it.
fn set_child(xml: &str, path: &[&str], child: &str, value: &str) -> String {
    let parent = locate(xml, path);
    let new = format!("<{child}>{value}</{child}>");
    match find_element(xml, child, body_of(xml, &parent)) {
        Some(old) => splice(xml, old, &new),
        None => {
            let at = body_of(xml, &parent).end;
            splice(xml, at..at, &format!("  {new}\n"))
        }
    }
}

/// The value of attribute `name` in an element's start tag.
fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let head = &element[..element.find('>')?];
    let key = format!(" {name}=\"");
    let start = head.find(&key)? + key.len();
    Some(&head[start..start + head[start..].find('"')?])
}

/// `element` with attribute `name` set to `value` in its start tag.
fn with_attr(element: &str, name: &str, value: &str) -> String {
    let head_len = element.find('>').expect("element head");
    let key = format!(" {name}=\"");
    if let Some(pos) = element[..head_len].find(&key) {
        let start = pos + key.len();
        let end = start + element[start..].find('"').expect("closing quote");
        format!("{}{}{}", &element[..start], value, &element[end..])
    } else {
        let at = if element[..=head_len].ends_with("/>") { head_len - 1 } else { head_len };
        format!("{} {name}=\"{value}\"{}", &element[..at], &element[at..])
    }
}

// ---------------------------------------------------------------------------
// Ports.

/// Sockets held while choosing ports so that no two choices collide; dropped
/// just before the programs start.
#[derive(Default)]
struct PortPicker {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl PortPicker {
    fn tcp(&mut self) -> u16 {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind a TCP port on 127.0.0.1");
        let port = l.local_addr().expect("local addr").port();
        self.tcp.push(l);
        port
    }

    /// A port free for both TCP and UDP (SIP listens on both).
    fn tcp_and_udp(&mut self) -> u16 {
        for _ in 0..100 {
            let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind a TCP port on 127.0.0.1");
            let port = l.local_addr().expect("local addr").port();
            if let Ok(u) = UdpSocket::bind(("127.0.0.1", port)) {
                self.tcp.push(l);
                self.udp.push(u);
                return port;
            }
        }
        panic!("no port free for both TCP and UDP on 127.0.0.1");
    }

    fn udp(&mut self) -> u16 {
        let u = UdpSocket::bind(("127.0.0.1", 0)).expect("bind a UDP port on 127.0.0.1");
        let port = u.local_addr().expect("local addr").port();
        self.udp.push(u);
        port
    }

    /// `len` consecutive free UDP ports starting at an even one (RTP and
    /// RTCP pairs).
    fn udp_range(&mut self, len: u16) -> (u16, u16) {
        for _ in 0..100 {
            let probe = UdpSocket::bind(("127.0.0.1", 0)).expect("bind a UDP port on 127.0.0.1");
            let base = probe.local_addr().expect("local addr").port() & !1;
            drop(probe);
            if base < 1024 || u32::from(base) + u32::from(len) > 65_535 {
                continue;
            }
            let held: Vec<UdpSocket> =
                (base..base + len).map_while(|p| UdpSocket::bind(("127.0.0.1", p)).ok()).collect();
            if held.len() == usize::from(len) {
                self.udp.extend(held);
                return (base, base + len);
            }
        }
        panic!("no range of {len} free UDP ports on 127.0.0.1");
    }
}

#[derive(Debug)]
struct Ports {
    sip: u16,
    rtsp: u16,
    mrcp: u16,
    rtp: (u16, u16),
    client_sip: u16,
    client_rtp: (u16, u16),
}

// ---------------------------------------------------------------------------
// The private root.

/// A temp dir removed on success and kept (and named) on failure.
struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    fn new() -> TempRoot {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("unimrcp-elevenlabs-real-{}-{nanos:08x}", std::process::id()));
        for sub in ["conf/client-profiles", "conf/umc-scenarios", "plugin", "log", "data", "var"] {
            fs::create_dir_all(path.join(sub)).expect("create the private root");
        }
        TempRoot { path }
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("real-server test failed: its root is kept at {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn engine_block(base_url: &str) -> String {
    format!(
        r#"
      <engine id="{ENGINE_ID}" name="elevenlabs" enable="true">
        <max-channel-count>10</max-channel-count>
        <param name="api_key" value="{API_KEY}"/>
        <param name="voice_id" value="{VOICE}"/>
        <param name="model_id" value="eleven_flash_v2_5"/>
        <param name="base_url" value="{base_url}"/>
        <param name="connect_timeout_ms" value="2000"/>
        <param name="first_byte_timeout_ms" value="5000"/>
        <param name="stall_timeout_ms" value="5000"/>
        <param name="max_buffer_ms" value="4000"/>
      </engine>
    "#
    )
}

/// unimrcpserver.xml: loopback only, our ports, every installed engine
/// disabled, ours added, and each profile's speechsynth mapped to it.
fn server_xml(installed: &str, ports: &Ports, base_url: &str) -> String {
    let mut x = strip_comments(installed);
    x = set_body(&x, &["properties"], "\n    <ip>127.0.0.1</ip>\n  ");
    let sip = ["components", "sip-uas"];
    x = set_child(&x, &sip, "sip-ip", "127.0.0.1");
    x = set_child(&x, &sip, "sip-port", &ports.sip.to_string());
    x = set_child(&x, &sip, "sip-transport", "udp,tcp");
    let rtsp = ["components", "rtsp-uas"];
    x = set_child(&x, &rtsp, "rtsp-ip", "127.0.0.1");
    x = set_child(&x, &rtsp, "rtsp-port", &ports.rtsp.to_string());
    let mrcp = ["components", "mrcpv2-uas"];
    x = set_child(&x, &mrcp, "mrcp-ip", "127.0.0.1");
    x = set_child(&x, &mrcp, "mrcp-port", &ports.mrcp.to_string());
    let rtp = ["components", "rtp-factory"];
    x = set_child(&x, &rtp, "rtp-ip", "127.0.0.1");
    x = set_child(&x, &rtp, "rtp-port-min", &ports.rtp.0.to_string());
    x = set_child(&x, &rtp, "rtp-port-max", &ports.rtp.1.to_string());

    // Plugin factory: the installed engines stay listed but disabled (their
    // .so files are not in our plugin dir); any earlier block of ours goes.
    let factory = locate(&x, &["components", "plugin-factory"]);
    let body = body_of(&x, &factory);
    let mut engines = String::from("\n");
    for span in find_elements(&x, "engine", body.clone()) {
        let e = &x[span];
        if attr(e, "id") == Some(ENGINE_ID) || attr(e, "name") == Some("elevenlabs") {
            continue;
        }
        engines.push_str("      ");
        engines.push_str(&with_attr(e, "enable", "false"));
        engines.push('\n');
    }
    engines.push_str(&engine_block(base_url));
    x = splice(&x, body, &engines);

    // Each profile routes speechsynth to our engine.
    let map = format!(
        "\n      <resource-engine-map>\n        <resource id=\"speechsynth\" engine=\"{ENGINE_ID}\"/>\n      </resource-engine-map>\n    "
    );
    for kind in ["mrcpv2-profile", "mrcpv1-profile"] {
        let mut from = 0;
        while let Some(span) = find_element(&x, kind, from..x.len()) {
            let mut profile = x[span.clone()].to_string();
            while let Some(old) = find_element(&profile, "resource-engine-map", 0..profile.len()) {
                profile = splice(&profile, old, "");
            }
            let close = profile.rfind("</").expect("profile closing tag");
            profile = splice(&profile, close..close, &map);
            from = span.start + profile.len();
            x = splice(&x, span, &profile);
        }
    }
    assert!(x.contains(&format!("engine=\"{ENGINE_ID}\"")), "the configuration has no profile to route");
    x
}

/// unimrcpclient.xml: loopback only, our ports.
fn client_xml(installed: &str, ports: &Ports) -> String {
    let mut x = strip_comments(installed);
    x = set_body(&x, &["properties"], "\n    <ip>127.0.0.1</ip>\n    <server-ip>127.0.0.1</server-ip>\n  ");
    let sip = ["components", "sip-uac"];
    x = set_child(&x, &sip, "sip-ip", "127.0.0.1");
    x = set_child(&x, &sip, "sip-port", &ports.client_sip.to_string());
    x = set_child(&x, &sip, "sip-transport", "udp");
    let rtp = ["components", "rtp-factory"];
    x = set_child(&x, &rtp, "rtp-ip", "127.0.0.1");
    x = set_child(&x, &rtp, "rtp-port-min", &ports.client_rtp.0.to_string());
    x = set_child(&x, &rtp, "rtp-port-max", &ports.client_rtp.1.to_string());
    x
}

/// client-profiles/unimrcp.xml: the uni2 (SIP) and uni1 (RTSP) profiles
/// aimed at our server.
fn client_profile_xml(installed: &str, ports: &Ports) -> String {
    let mut x = strip_comments(installed);
    let sip = ["settings", "sip-settings"];
    x = set_child(&x, &sip, "server-ip", "127.0.0.1");
    x = set_child(&x, &sip, "server-port", &ports.sip.to_string());
    let rtsp = ["settings", "rtsp-settings"];
    x = set_child(&x, &rtsp, "server-ip", "127.0.0.1");
    x = set_child(&x, &rtsp, "server-port", &ports.rtsp.to_string());
    x
}

/// logger.xml: file output, file:line marks, our source at DEBUG (the
/// default source stays at the installed priority, INFO in the stock file).
fn logger_xml(installed: Option<String>) -> String {
    let installed = installed.unwrap_or_else(|| {
        "<aptlogger>\n  <output>FILE</output>\n  <priority>INFO</priority>\n  <masking>NONE</masking>\n</aptlogger>\n"
            .to_string()
    });
    let mut x = strip_comments(&installed);
    x = set_child(&x, &["aptlogger"], "headers", "DATE,TIME,PRIORITY,MARK");
    let ours = format!("<source name=\"{LOG_SOURCE}\" priority=\"DEBUG\" masking=\"NONE\"/>");
    match find_element(&x, "sources", 0..x.len()) {
        Some(span) => {
            let body = body_of(&x, &span);
            let mut kept = String::from("\n");
            for s in find_elements(&x, "source", body.clone()) {
                if attr(&x[s.clone()], "name") != Some(LOG_SOURCE) {
                    kept.push_str(&format!("    {}\n", &x[s]));
                }
            }
            kept.push_str(&format!("    {ours}\n  "));
            x = splice(&x, body, &kept);
        }
        None => x = set_child(&x, &["aptlogger"], "sources", &format!("\n    {ours}\n  ")),
    }
    x
}

/// One umc scenario: what `run` is given and what it sends.
struct Scenario {
    name: &'static str,
    profile: &'static str,
    content_type: &'static str,
    data_file: &'static str,
    /// What the plugin must send upstream for the body.
    text: String,
}

fn scenario_xml(s: &Scenario) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<umcscenario name="{}" class="Synthesizer" profile="{}">
  <resource-discovery enable="0"/>
  <speak enable="1" content-type="{}" content-location="{}" speech-language="en-US"/>
  <termination enable="1">
    <capabilities>
      <codec name="LPCM" rates="8000 16000"/>
    </capabilities>
  </termination>
</umcscenario>
"#,
        s.name, s.profile, s.content_type, s.data_file
    )
}

/// The text of the stock SSML document `<s>Welcome to Uni MRCP.</s>`:
/// markup removed, whitespace folded.
fn ssml_text(ssml: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in ssml.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

const STOCK_SSML: &str = r#"<?xml version="1.0"?>
<speak version="1.0" xml:lang="en-US" xmlns="http://www.w3.org/2001/10/synthesis">
  <p>
    <s>Welcome to Uni MRCP.</s>
  </p>
</speak>
"#;

/// Writes the whole private root; returns the scenarios to run, in order.
fn prepare(home: &Path, root: &Path, ports: &Ports, base_url: &str) -> Vec<Scenario> {
    let conf = home.join("conf");
    let plugin = PluginLibrary::default_path().expect("the built plugin .so");
    fs::copy(&plugin, root.join("plugin/elevenlabs.so")).expect("copy the plugin");

    write(&root.join("conf/unimrcpserver.xml"), &server_xml(&read(&conf.join("unimrcpserver.xml")), ports, base_url));
    write(&root.join("conf/unimrcpclient.xml"), &client_xml(&read(&conf.join("unimrcpclient.xml")), ports));
    write(
        &root.join("conf/client-profiles/unimrcp.xml"),
        &client_profile_xml(&read(&conf.join("client-profiles/unimrcp.xml")), ports),
    );
    write(&root.join("conf/logger.xml"), &logger_xml(fs::read_to_string(conf.join("logger.xml")).ok()));
    if conf.join("logfile.xml").is_file() {
        fs::copy(conf.join("logfile.xml"), root.join("conf/logfile.xml")).expect("copy logfile.xml");
    }

    // The stock SPEAK bodies (umc sends the file's bytes as the body).
    let data = home.join("data");
    let ssml = fs::read_to_string(data.join("speak.xml")).unwrap_or_else(|_| STOCK_SSML.to_string());
    let plain = fs::read_to_string(data.join("speak.txt")).unwrap_or_else(|_| "Welcome to Uni MRCP.".to_string());
    write(&root.join("data/speak.xml"), &ssml);
    write(&root.join("data/speak.txt"), &plain);
    let busy = "This request meets a busy upstream [busy].";
    write(&root.join("data/busy.txt"), busy);

    let scenarios = vec![
        Scenario {
            name: "rs-ssml",
            profile: "uni2",
            content_type: "application/synthesis+ssml",
            data_file: "speak.xml",
            text: ssml_text(&ssml),
        },
        Scenario {
            name: "rs-text",
            profile: "uni2",
            content_type: "text/plain",
            data_file: "speak.txt",
            text: plain.trim().to_string(),
        },
        Scenario {
            name: "rs-mrcpv1",
            profile: "uni1",
            content_type: "application/synthesis+ssml",
            data_file: "speak.xml",
            text: ssml_text(&ssml),
        },
        Scenario {
            name: "rs-busy",
            profile: "uni2",
            content_type: "text/plain",
            data_file: "busy.txt",
            text: busy.to_string(),
        },
    ];
    for s in &scenarios {
        write(&root.join(format!("conf/umc-scenarios/{}.xml", s.name)), &scenario_xml(s));
    }
    scenarios
}

// ---------------------------------------------------------------------------
// The two programs.

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Waits for `child` to exit, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server process; SIGTERM (then SIGKILL) on drop.
struct RealServer {
    child: Option<Child>,
    log: PathBuf,
}

impl RealServer {
    fn start(home: &Path, root: &Path, mrcp_port: u16, deadline: Instant) -> RealServer {
        let console = fs::File::create(root.join("unimrcpserver.console")).expect("console file");
        let child = Command::new(home.join("bin/unimrcpserver"))
            .arg("-r")
            .arg(root)
            .args(["-o", "2", "-w"])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console file"))
            .stderr(console)
            .spawn()
            .expect("start unimrcpserver");
        let mut server = RealServer { child: Some(child), log: root.join("log/unimrcpserver_current.log") };
        let addr = SocketAddr::from(([127, 0, 0, 1], mrcp_port));
        let until = Instant::now() + remaining(deadline).min(Duration::from_secs(15));
        loop {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("unimrcpserver exited at start ({status}); log:\n{}", server.log_text());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(Instant::now() < until, "unimrcpserver not listening on {addr}; log:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log_text(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// SIGTERM, and how long the server took to exit.
    fn stop(&mut self) -> (Option<ExitStatus>, Duration) {
        let Some(mut child) = self.child.take() else { return (None, Duration::ZERO) };
        let started = Instant::now();
        signal(&child, libc::SIGTERM);
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (status, started.elapsed())
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// umc driven through its console; its log file (flushed per line) is
/// where progress is read, since its stdout is block-buffered.
struct Umc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    console: PathBuf,
}

impl Umc {
    fn start(home: &Path, root: &Path) -> Umc {
        let console = root.join("umc.console");
        let out = fs::File::create(&console).expect("console file");
        let mut child = Command::new(home.join("bin/umc"))
            .arg("-r")
            .arg(root)
            .args(["-o", "3"])
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("console file"))
            .stderr(out)
            .spawn()
            .expect("start umc");
        let stdin = child.stdin.take();
        Umc { child: Some(child), stdin, log: root.join("log/unimrcpclient_current.log"), console }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("umc stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("write to umc");
    }

    fn log_text(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn console_text(&self) -> String {
        fs::read(&self.console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Polls the log until `done` holds; the log either way.
    fn wait_log(&self, limit: Duration, done: impl Fn(&str) -> bool) -> Result<String, String> {
        let until = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if done(&text) {
                return Ok(text);
            }
            if Instant::now() >= until {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `quit` (umc spins on EOF, so it must be told), then wait.
    fn quit(&mut self) -> Option<ExitStatus> {
        if self.stdin.is_some() {
            self.send("quit");
        }
        let mut child = self.child.take()?;
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.stdin.take());
        status
    }
}

impl Drop for Umc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn real_server_exploration() {
    unimrcp_shim::anchor();
    let Some(home) = unimrcp_home() else { return };
    let deadline = Instant::now() + BUDGET;
    let mock = MockUpstream::start(API_KEY);
    mock.when_text_contains("[busy]", Behavior::fault(Fault::system_busy()));
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
    println!("ports: {ports:?}, root {}", root.path.display());
    let scenarios = prepare(&home, &root.path, &ports, &mock.base_url());
    drop(picker);
    let mut server = RealServer::start(&home, &root.path, ports.mrcp, deadline);
    let mut umc = Umc::start(&home, &root.path);
    std::thread::sleep(Duration::from_secs(1));
    umc.send(&format!("run {}", scenarios[0].name));
    std::thread::sleep(Duration::from_secs(4));
    umc.quit();
    let st = server.stop();
    println!("server stop {st:?}");
    println!("=== umc log\n{}", umc.log_text());
    println!("=== umc console\n{}", umc.console_text());
    println!("=== server log\n{}", server.log_text());
    let _: Vec<RecordedRequest> = mock.requests();
    let _ = umc.wait_log(Duration::ZERO, |_| true);
    panic!("keep");
}
