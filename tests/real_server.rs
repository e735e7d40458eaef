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

use std::fs;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
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
        <param name="cache_enabled" value="false"/>
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
    // Also accept linear 16 kHz (the client's wideband profile offers it;
    // the others offer PCMU first, and the client's order is used).
    let codecs = ["settings", "rtp-settings", "codecs"];
    let list = x[body_of(&x, &locate(&x, &codecs))].trim().to_string();
    if !list.contains("L16/99/16000") {
        x = set_body(&x, &codecs, &format!("{list} L16/99/16000"));
    }

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
    // A second set of RTP settings offering only linear 16 kHz audio, for
    // the uni2wb profile.
    let settings = locate(&x, &["settings", "rtp-settings"]);
    let mut wideband = with_attr(&x[settings.clone()], "id", "RTP-Settings-WB");
    wideband = set_body(&wideband, &["rtp-settings", "codecs"], "L16/99/16000");
    splice(&x, settings.end..settings.end, &format!("\n    {wideband}"))
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
    // uni2wb: uni2 with the wideband RTP settings.
    let uni2 = find_elements(&x, "mrcpv2-profile", locate(&x, &["profiles"]))
        .into_iter()
        .find(|span| attr(&x[span.clone()], "id") == Some("uni2"))
        .expect("a uni2 profile in client-profiles/unimrcp.xml");
    let mut wideband = with_attr(&x[uni2.clone()], "id", "uni2wb");
    wideband = set_child(&wideband, &["mrcpv2-profile"], "rtp-settings", "RTP-Settings-WB");
    splice(&x, uni2.end..uni2.end, &format!("\n    {wideband}"))
}

/// logger.xml: file:line marks, the default source at INFO and ours at
/// DEBUG (so a DEBUG line in the log can only have come through ours).
fn logger_xml(installed: Option<String>) -> String {
    let installed = installed.unwrap_or_else(|| {
        "<aptlogger>\n  <output>FILE</output>\n  <priority>INFO</priority>\n  <masking>NONE</masking>\n</aptlogger>\n"
            .to_string()
    });
    let mut x = strip_comments(&installed);
    x = set_child(&x, &["aptlogger"], "headers", "DATE,TIME,PRIORITY,MARK");
    x = set_child(&x, &["aptlogger"], "priority", "INFO");
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

/// One umc scenario file (`conf/umc-scenarios/<name>.xml`).
struct Scenario {
    name: &'static str,
    profile: &'static str,
    content_type: &'static str,
    /// Under `data/`; umc sends its bytes as the SPEAK body.
    data_file: &'static str,
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

/// The text of a simple SSML document such as the stock
/// `<s>Welcome to Uni MRCP.</s>`: markup removed, whitespace folded.
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
// The two programs.

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Polls `path` until `done` holds for its text; the text either way.
fn wait_file(path: &Path, limit: Duration, mut done: impl FnMut(&str) -> bool) -> Result<String, String> {
    let until = Instant::now() + limit;
    loop {
        let text = read_lossy(path);
        if done(&text) {
            return Ok(text);
        }
        if Instant::now() >= until {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(20));
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
    /// Starts `unimrcpserver -r <root> -o 2 -w` (log file only, no console)
    /// and waits until it says "MRCP Server Started".
    fn start(home: &Path, root: &Path, deadline: Instant) -> RealServer {
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
        let limit = remaining(deadline).min(Duration::from_secs(15));
        let child = server.child.as_mut().expect("child");
        let started = wait_file(&server.log, limit, |log| {
            log.contains("MRCP Server Started")
                || log.contains("engine open failed")
                || matches!(child.try_wait(), Ok(Some(_)))
        });
        match started {
            Ok(log) if log.contains("MRCP Server Started") && !log.contains("engine open failed") => server,
            Ok(log) | Err(log) => panic!("unimrcpserver did not start with the plugin; its log:\n{log}"),
        }
    }

    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// SIGTERM; the exit status (None if it had to be killed) and how long
    /// the server took.
    fn stop(&mut self) -> (Option<ExitStatus>, Duration) {
        let Some(mut child) = self.child.take() else { return (None, Duration::ZERO) };
        let started = Instant::now();
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child, which has not been reaped
            // (we hold its Child), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
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

/// umc driven through its console. Its stdout is block-buffered into a file,
/// so progress is read from its log file, which is flushed per line.
struct Umc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    console: PathBuf,
}

impl Umc {
    /// Starts `umc -r <root> -o 3` and waits until the client is up and has
    /// loaded the scenarios of `runs`.
    fn start(home: &Path, root: &Path, runs: &[Run], deadline: Instant) -> Umc {
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
        let umc = Umc { child: Some(child), stdin, log: root.join("log/unimrcpclient_current.log"), console };
        let limit = remaining(deadline).min(Duration::from_secs(15));
        umc.wait_log(limit, |log| {
            log.contains("MRCP Client Started")
                && runs.iter().all(|r| log.contains(&format!("Load Scenario Name [{}]", r.scenario)))
        })
        .unwrap_or_else(|log| panic!("umc did not start; its log:\n{log}"));
        umc
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("umc stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("write to umc");
    }

    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    fn console_text(&self) -> String {
        read_lossy(&self.console)
    }

    fn wait_log(&self, limit: Duration, done: impl Fn(&str) -> bool) -> Result<String, String> {
        wait_file(&self.log, limit, done)
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

// ---------------------------------------------------------------------------
// Reading the logs.

/// One log entry: its time of day in seconds, its first line, and the lines
/// that follow it (an MRCP, RTSP or SDP message).
#[derive(Clone, Debug)]
struct Entry {
    time: f64,
    head: String,
    body: Vec<String>,
}

fn entry_time(line: &str) -> Option<f64> {
    // "2026-11-21 06:10:35:254428 src/..."
    let b = line.as_bytes();
    if b.len() < 27 || b[4] != b'-' || b[10] != b' ' || b[26] != b' ' || !line[..4].bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let parts: Vec<f64> = line[11..26].split(':').map(|p| p.parse::<f64>().ok()).collect::<Option<_>>()?;
    match parts[..] {
        [h, m, s, us] => Some(h * 3600.0 + m * 60.0 + s + us / 1e6),
        _ => None,
    }
}

fn entries(log: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for line in log.lines() {
        match entry_time(line) {
            Some(time) => out.push(Entry { time, head: line.to_string(), body: Vec::new() }),
            None => {
                if let Some(last) = out.last_mut() {
                    if !line.trim().is_empty() {
                        last.body.push(line.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Value of header `name` in a message's lines.
fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What umc's log says about one session.
#[derive(Debug)]
struct SessionLog {
    umc_id: String,
    session_id: String,
    pcm: PathBuf,
    rate: u32,
    entries: Vec<Entry>,
}

impl SessionLog {
    fn parse(chunk: &str) -> Result<SessionLog, String> {
        let entries = entries(chunk);
        let umc_id = chunk
            .find("umc-")
            .map(|at| chunk[at + 4..].chars().take_while(char::is_ascii_digit).collect::<String>())
            .filter(|id| !id.is_empty())
            .ok_or("no umc session id in the log")?;
        let pcm = entries
            .iter()
            .find_map(|e| {
                let at = e.head.find("Open Speech Output File [")? + "Open Speech Output File [".len();
                Some(PathBuf::from(&e.head[at..at + e.head[at..].find(']')?]))
            })
            .ok_or("umc opened no speech output file")?;
        let name = pcm.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        // synth-<rate>kHz-<session id>.pcm
        let rest = name.strip_prefix("synth-").and_then(|r| r.strip_suffix(".pcm")).ok_or("odd output file name")?;
        let (khz, session_id) = rest.split_once("kHz-").ok_or("odd output file name")?;
        let rate = khz.parse::<u32>().map_err(|e| format!("rate in {name}: {e}"))? * 1000;
        Ok(SessionLog { umc_id, session_id: session_id.to_string(), pcm, rate, entries })
    }

    /// The first message umc sent (`send`) or received with a line for
    /// which `pred` holds.
    fn message(&self, send: bool, pred: impl Fn(&str) -> bool) -> Option<&Entry> {
        let dir = if send { "Send " } else { "Receive " };
        self.entries
            .iter()
            .find(|e| e.head.contains(dir) && e.head.contains(" Data ") && e.body.iter().any(|l| pred(l)))
    }

    fn speak_sent(&self) -> Option<&Entry> {
        self.message(true, |l| l.split_whitespace().any(|w| w == "SPEAK"))
    }

    fn in_progress(&self) -> Option<&Entry> {
        self.message(false, |l| l.contains("200 IN-PROGRESS"))
    }

    fn speak_complete(&self) -> Option<&Entry> {
        self.message(false, |l| l.contains("SPEAK-COMPLETE"))
    }

    fn stop_response(&self) -> Option<&Entry> {
        self.message(false, |l| l.contains(" 200 COMPLETE"))
    }

    /// The MRCP exchange and signalling milestones, with times relative to
    /// the first entry.
    fn exchange(&self) -> String {
        let t0 = self.entries.first().map_or(0.0, |e| e.time);
        let mut out = String::new();
        for e in &self.entries {
            let wanted = ["Data ", "SIP Call State", "Session Terminated", "Open RTP Receiver", "Close RTP Receiver"];
            if !wanted.iter().any(|w| e.head.contains(w)) {
                continue;
            }
            let what = e.head.split_once(" [").map_or(e.head.as_str(), |(_, rest)| rest);
            out.push_str(&format!("  +{:6.0} ms  [{what}\n", (e.time - t0) * 1000.0));
            for l in &e.body {
                if !l.starts_with('<') && !l.starts_with(' ') {
                    out.push_str(&format!("               | {l}\n"));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Audio.

fn samples(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(2).map(|b| i32::from(i16::from_le_bytes([b[0], b[1]]))).collect()
}

/// Best signal-to-error ratio (dB) of `got` against `sent` over alignments
/// `got[i + lag] ~ sent[i]` (lag from -20 to +500 ms), with the lag and the
/// overlap in samples.
fn best_alignment(sent: &[i32], got: &[i32], rate: u32) -> (f64, isize, usize) {
    let per_ms = rate as isize / 1000;
    let mut best = (f64::NEG_INFINITY, 0, 0);
    for lag in -20 * per_ms..=500 * per_ms {
        let (mut sig, mut err, mut n) = (0f64, 0f64, 0usize);
        for (i, &s) in sent.iter().enumerate() {
            let Some(&g) = usize::try_from(i as isize + lag).ok().and_then(|j| got.get(j)) else { continue };
            let d = f64::from(g - s);
            sig += f64::from(s) * f64::from(s);
            err += d * d;
            n += 1;
        }
        if n < sent.len() / 2 || sig == 0.0 {
            continue;
        }
        let snr = 10.0 * (sig / err.max(1.0)).log10();
        if snr > best.0 {
            best = (snr, lag, n);
        }
    }
    best
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&i| hay[i..i + needle.len()] == *needle)
}

fn ms(bytes: usize, rate: u32) -> f64 {
    bytes as f64 * 1000.0 / (f64::from(rate) * 2.0)
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
    let mut umc = Umc::start(&home, &root.path, &runs, deadline);
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

    // Each run, against what the upstream saw (one request per run, in order).
    assert_eq!(requests.len(), runs.len(), "one upstream request per SPEAK: {requests:#?}");
    for ((run, s), req) in runs.iter().zip(&sessions).zip(&requests) {
        check_run(run, s, req, &server_log);
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

    let audio = fs::read(&s.pcm).unwrap_or_else(|e| panic!("{ctx}: {}: {e}", s.pcm.display()));
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
            assert!(got_ms < 100.0, "{ctx}: {got_ms} ms of audio for a failed SPEAK");
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
    let x = server_xml(stock_server, &ports, "http://127.0.0.1:9");
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

    let logger = logger_xml(Some(
        "<aptlogger>\n<priority>DEBUG</priority>\n<sources>\n<source name=\"MPF\" priority=\"INFO\" masking=\"NONE\"/>\n</sources>\n</aptlogger>".into(),
    ));
    assert!(logger.contains("<priority>INFO</priority>"), "{logger}");
    assert!(logger.contains("<source name=\"MPF\""), "{logger}");
    assert!(logger.contains("<source name=\"ELEVENLABS-SYNTH\" priority=\"DEBUG\" masking=\"NONE\"/>"), "{logger}");
    assert_eq!(ssml_text(STOCK_SSML), STOCK_TEXT);
}
