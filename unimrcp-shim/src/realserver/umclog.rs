//! Reading UniMRCP's log files (umc's and the server's): entries with their
//! time of day, and what umc's log says about one session.

use std::path::PathBuf;

/// One log entry: its time of day in seconds, its first line, and the lines
/// that follow it (an MRCP, RTSP or SDP message).
#[derive(Clone, Debug)]
pub struct Entry {
    pub time: f64,
    pub head: String,
    pub body: Vec<String>,
}

/// The time of day of a line that starts an entry
/// ("2026-11-21 06:10:35:254428 src/..."), in seconds.
pub fn entry_time(line: &str) -> Option<f64> {
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

/// The log's entries, in order (blank continuation lines dropped).
pub fn entries(log: &str) -> Vec<Entry> {
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
pub fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What umc's log says about one session.
#[derive(Debug)]
pub struct SessionLog {
    /// umc's own id of the session (`umc-<id>`; what `stop`/`kill` take).
    pub umc_id: String,
    /// The MRCP session id (the server logs it as the channel id).
    pub session_id: String,
    /// The speech output file umc saved.
    pub pcm: PathBuf,
    /// The negotiated rate, from the output file's name.
    pub rate: u32,
    pub entries: Vec<Entry>,
}

impl SessionLog {
    /// Reads the part of umc's log about one session.
    pub fn parse(chunk: &str) -> Result<SessionLog, String> {
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
    pub fn message(&self, send: bool, pred: impl Fn(&str) -> bool) -> Option<&Entry> {
        let dir = if send { "Send " } else { "Receive " };
        self.entries
            .iter()
            .find(|e| e.head.contains(dir) && e.head.contains(" Data ") && e.body.iter().any(|l| pred(l)))
    }

    pub fn speak_sent(&self) -> Option<&Entry> {
        self.message(true, |l| l.split_whitespace().any(|w| w == "SPEAK"))
    }

    pub fn in_progress(&self) -> Option<&Entry> {
        self.message(false, |l| l.contains("200 IN-PROGRESS"))
    }

    pub fn speak_complete(&self) -> Option<&Entry> {
        self.message(false, |l| l.contains("SPEAK-COMPLETE"))
    }

    pub fn stop_response(&self) -> Option<&Entry> {
        self.message(false, |l| l.contains(" 200 COMPLETE"))
    }

    /// The MRCP exchange and signalling milestones, with times relative to
    /// the first entry.
    pub fn exchange(&self) -> String {
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
