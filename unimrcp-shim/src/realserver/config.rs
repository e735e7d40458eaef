//! The configuration of a private unimrcpserver / umc root, derived from an
//! installed UniMRCP's files: everything on 127.0.0.1 and on chosen ports,
//! every installed engine disabled, the plugin's engine added and each
//! profile's speechsynth routed to it. All edits go through [`super::xml`].

use super::ports::Ports;
use super::xml::{self, splice};

/// The plugin's engine block in unimrcpserver.xml.
#[derive(Clone, Debug)]
pub struct Engine<'a> {
    /// The engine id the profiles route speechsynth to.
    pub id: &'a str,
    pub api_key: &'a str,
    pub voice: &'a str,
    /// The (test) upstream's base URL.
    pub base_url: &'a str,
}

/// `<engine>` for the plugin (`plugin/elevenlabs.so`), with short
/// timeouts, the cache off and no warm connections (the test counts one
/// upstream request per SPEAK).
pub fn engine_block(engine: &Engine) -> String {
    let Engine { id, api_key, voice, base_url } = engine;
    format!(
        r#"
      <engine id="{id}" name="elevenlabs" enable="true">
        <max-channel-count>10</max-channel-count>
        <param name="api_key" value="{api_key}"/>
        <param name="voice_id" value="{voice}"/>
        <param name="model_id" value="eleven_flash_v2_5"/>
        <param name="base_url" value="{base_url}"/>
        <param name="connect_timeout_ms" value="2000"/>
        <param name="first_byte_timeout_ms" value="5000"/>
        <param name="stall_timeout_ms" value="5000"/>
        <param name="max_buffer_ms" value="4000"/>
        <param name="cache_enabled" value="false"/>
        <param name="prewarm_connections" value="0"/>
      </engine>
    "#
    )
}

/// unimrcpserver.xml: loopback only, our ports, every installed engine
/// disabled, ours added, and each profile's speechsynth mapped to it.
pub fn server_xml(installed: &str, ports: &Ports, engine: &Engine) -> String {
    let mut x = xml::strip_comments(installed);
    x = xml::set_body(&x, &["properties"], "\n    <ip>127.0.0.1</ip>\n  ");
    let sip = ["components", "sip-uas"];
    x = xml::set_child(&x, &sip, "sip-ip", "127.0.0.1");
    x = xml::set_child(&x, &sip, "sip-port", &ports.sip.to_string());
    x = xml::set_child(&x, &sip, "sip-transport", "udp,tcp");
    let rtsp = ["components", "rtsp-uas"];
    x = xml::set_child(&x, &rtsp, "rtsp-ip", "127.0.0.1");
    x = xml::set_child(&x, &rtsp, "rtsp-port", &ports.rtsp.to_string());
    let mrcp = ["components", "mrcpv2-uas"];
    x = xml::set_child(&x, &mrcp, "mrcp-ip", "127.0.0.1");
    x = xml::set_child(&x, &mrcp, "mrcp-port", &ports.mrcp.to_string());
    let rtp = ["components", "rtp-factory"];
    x = xml::set_child(&x, &rtp, "rtp-ip", "127.0.0.1");
    x = xml::set_child(&x, &rtp, "rtp-port-min", &ports.rtp.0.to_string());
    x = xml::set_child(&x, &rtp, "rtp-port-max", &ports.rtp.1.to_string());
    // Also accept linear 16 kHz (the client's wideband profile offers it;
    // the others offer PCMU first, and the client's order is used).
    let codecs = ["settings", "rtp-settings", "codecs"];
    let list = x[xml::locate(&x, &codecs).body].trim().to_string();
    if !list.contains("L16/99/16000") {
        x = xml::set_body(&x, &codecs, &format!("{list} L16/99/16000"));
    }

    // Plugin factory: the installed engines stay listed but disabled (their
    // .so files are not in our plugin dir); any earlier block of ours goes.
    let factory = ["components", "plugin-factory"];
    let mut engines = String::from("\n");
    for span in xml::children(&x, &factory, "engine") {
        let e = &x[span.outer];
        let attr = |name| xml::attr(e, &[], name);
        if attr("id").as_deref() == Some(engine.id) || attr("name").as_deref() == Some("elevenlabs") {
            continue;
        }
        engines.push_str("      ");
        engines.push_str(&xml::set_attr(e, &[], "enable", "false"));
        engines.push('\n');
    }
    engines.push_str(&engine_block(engine));
    x = xml::set_body(&x, &factory, &engines);

    // Each profile routes speechsynth to our engine. (From the last one
    // back, so that the earlier spans stay valid.)
    let map = format!(
        "\n      <resource-engine-map>\n        <resource id=\"speechsynth\" engine=\"{}\"/>\n      </resource-engine-map>\n    ",
        engine.id
    );
    for span in xml::descendants(&x, &[], &["mrcpv2-profile", "mrcpv1-profile"]).into_iter().rev() {
        let mut profile = x[span.outer.clone()].to_string();
        for old in xml::descendants(&profile, &[], &["resource-engine-map"]).into_iter().rev() {
            profile = splice(&profile, old.outer, "");
        }
        profile = xml::append(&profile, &[], &map);
        x = splice(&x, span.outer, &profile);
    }
    assert!(x.contains(&format!("engine=\"{}\"", engine.id)), "the configuration has no profile to route");
    x
}

/// unimrcpclient.xml: loopback only, our ports, and a second set of RTP
/// settings (`RTP-Settings-WB`) offering only linear 16 kHz audio.
pub fn client_xml(installed: &str, ports: &Ports) -> String {
    let mut x = xml::strip_comments(installed);
    x = xml::set_body(&x, &["properties"], "\n    <ip>127.0.0.1</ip>\n    <server-ip>127.0.0.1</server-ip>\n  ");
    let sip = ["components", "sip-uac"];
    x = xml::set_child(&x, &sip, "sip-ip", "127.0.0.1");
    x = xml::set_child(&x, &sip, "sip-port", &ports.client_sip.to_string());
    x = xml::set_child(&x, &sip, "sip-transport", "udp");
    let rtp = ["components", "rtp-factory"];
    x = xml::set_child(&x, &rtp, "rtp-ip", "127.0.0.1");
    x = xml::set_child(&x, &rtp, "rtp-port-min", &ports.client_rtp.0.to_string());
    x = xml::set_child(&x, &rtp, "rtp-port-max", &ports.client_rtp.1.to_string());
    // A second set of RTP settings offering only linear 16 kHz audio, for
    // the uni2wb profile.
    let settings = xml::locate(&x, &["settings", "rtp-settings"]);
    let mut wideband = xml::set_attr(&x[settings.outer.clone()], &[], "id", "RTP-Settings-WB");
    wideband = xml::set_body(&wideband, &["rtp-settings", "codecs"], "L16/99/16000");
    splice(&x, settings.outer.end..settings.outer.end, &format!("\n    {wideband}"))
}

/// client-profiles/unimrcp.xml: the uni2 (SIP) and uni1 (RTSP) profiles
/// aimed at our server, and `uni2wb`: uni2 with the wideband RTP settings.
pub fn client_profile_xml(installed: &str, ports: &Ports) -> String {
    let mut x = xml::strip_comments(installed);
    let sip = ["settings", "sip-settings"];
    x = xml::set_child(&x, &sip, "server-ip", "127.0.0.1");
    x = xml::set_child(&x, &sip, "server-port", &ports.sip.to_string());
    let rtsp = ["settings", "rtsp-settings"];
    x = xml::set_child(&x, &rtsp, "server-ip", "127.0.0.1");
    x = xml::set_child(&x, &rtsp, "server-port", &ports.rtsp.to_string());
    let uni2 = xml::descendants(&x, &["profiles"], &["mrcpv2-profile"])
        .into_iter()
        .find(|span| xml::attr(&x[span.outer.clone()], &[], "id").as_deref() == Some("uni2"))
        .expect("a uni2 profile in client-profiles/unimrcp.xml");
    let mut wideband = xml::set_attr(&x[uni2.outer.clone()], &[], "id", "uni2wb");
    wideband = xml::set_child(&wideband, &["mrcpv2-profile"], "rtp-settings", "RTP-Settings-WB");
    splice(&x, uni2.outer.end..uni2.outer.end, &format!("\n    {wideband}"))
}

/// logger.xml (a minimal one when none is installed): file:line marks, the
/// default source at INFO and `source` at DEBUG (so a DEBUG line in the log
/// can only have come through it).
pub fn logger_xml(installed: Option<String>, source: &str) -> String {
    let installed = installed.unwrap_or_else(|| {
        "<aptlogger>\n  <output>FILE</output>\n  <priority>INFO</priority>\n  <masking>NONE</masking>\n</aptlogger>\n"
            .to_string()
    });
    let mut x = xml::strip_comments(&installed);
    x = xml::set_child(&x, &["aptlogger"], "headers", "DATE,TIME,PRIORITY,MARK");
    x = xml::set_child(&x, &["aptlogger"], "priority", "INFO");
    let ours = format!("<source name=\"{source}\" priority=\"DEBUG\" masking=\"NONE\"/>");
    match xml::element(&x, &["sources"]) {
        Some(_) => {
            let mut kept = String::from("\n");
            for s in xml::children(&x, &["sources"], "source") {
                let s = &x[s.outer];
                if xml::attr(s, &[], "name").as_deref() != Some(source) {
                    kept.push_str(&format!("    {s}\n"));
                }
            }
            kept.push_str(&format!("    {ours}\n  "));
            x = xml::set_body(&x, &["sources"], &kept);
        }
        None => x = xml::set_child(&x, &["aptlogger"], "sources", &format!("\n    {ours}\n  ")),
    }
    x
}

/// One umc scenario file (`conf/umc-scenarios/<name>.xml`).
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub profile: &'static str,
    pub content_type: &'static str,
    /// Under `data/`; umc sends its bytes as the SPEAK body.
    pub data_file: &'static str,
}

/// A synthesizer scenario: one SPEAK of the data file, LPCM at 8 or 16 kHz.
pub fn scenario_xml(s: &Scenario) -> String {
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
pub fn ssml_text(ssml: &str) -> String {
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
