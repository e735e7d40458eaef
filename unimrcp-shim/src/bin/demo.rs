//! Speaks one SPEAK through the plugin inside the test host, in real time,
//! prints the MRCP exchange (SPEECH-MARKER events included) and writes what
//! the media path received to a WAV file. The default body is SSML with a
//! pause and two marks; `--text` takes plain text or an SSML document.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p unimrcp-shim --bin demo -- [--rate 8000|16000] [--text "..."] [--out demo.wav]
//! ```
//!
//! With ELEVENLABS_API_KEY set it uses the real ElevenLabs API (voice from
//! ELEVENLABS_VOICE_ID, or a default public voice); otherwise it starts the
//! local test upstream on 127.0.0.1 and points the plugin at it. The local
//! upstream speaks with eSpeak NG when `libespeak-ng.so.1` is installed
//! (`apt-get install espeak-ng`), and in test tones otherwise.
//!
//! After the exchange it lists where a caller hears each SPEECH-MARKER and
//! each pause, in ms into the received audio (the same offsets as in the
//! WAV file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use unimrcp_shim::host::{FrameLog, MediaClock, PluginLibrary, Recorded, Request, Server, ServerConfig};
use unimrcp_shim::upstream::{espeak, Behavior, MockUpstream, Voice};

const DEFAULT_VOICE_ID: &str = "JBFqnCBsd6RMkjVDRZzb";
const DEFAULT_TEXT: &str = r#"<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">
  <s>Hello!</s> <mark name="greeted"/>This sentence was synthesized by ElevenLabs,<break time="400ms"/>
  and streamed into the call by <sub alias="uni M R C P">UniMRCP</sub>.<mark name="done"/>
</speak>"#;

struct Args {
    rate: u32,
    text: String,
    out: PathBuf,
}

fn usage() -> String {
    "usage: demo [--rate 8000|16000] [--text \"plain text or <speak>SSML</speak>\"] [--out demo.wav]".to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { rate: 8000, text: DEFAULT_TEXT.to_string(), out: PathBuf::from("demo.wav") };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{}", usage()));
        match arg.as_str() {
            "--rate" => {
                args.rate = match value("--rate")?.as_str() {
                    "8000" => 8000,
                    "16000" => 16000,
                    other => return Err(format!("--rate must be 8000 or 16000, not {other}")),
                }
            }
            "--text" => args.text = value("--text")?,
            "--out" => args.out = PathBuf::from(value("--out")?),
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if args.text.trim().is_empty() {
        return Err("--text is empty".into());
    }
    Ok(args)
}

/// A 16-bit mono PCM WAV file: the 44-byte RIFF header, then the samples.
fn write_wav(path: &Path, rate: u32, pcm: &[u8]) -> std::io::Result<()> {
    let data_len = pcm.len() as u32;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&(36 + data_len).to_le_bytes());
    header.extend_from_slice(b"WAVE");
    header.extend_from_slice(b"fmt ");
    header.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    header.extend_from_slice(&1u16.to_le_bytes()); // PCM
    header.extend_from_slice(&1u16.to_le_bytes()); // mono
    header.extend_from_slice(&rate.to_le_bytes());
    header.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    header.extend_from_slice(&2u16.to_le_bytes()); // block align
    header.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_len.to_le_bytes());
    let mut file = std::fs::File::create(path)?;
    file.write_all(&header)?;
    file.write_all(pcm)?;
    file.flush()
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1000.0
}

/// AUDIO frames read at or before `t`.
fn audio_frames_until(frames: &FrameLog, t: Instant) -> usize {
    frames.frames.iter().filter(|f| f.is_audio() && frames.at(f) <= t).count()
}

/// Quieter than this (of 32767, about -50 dBFS) is silence.
const SILENCE_LEVEL: u16 = 100;
/// Shorter quiet stretches are the gaps inside speech (stop consonants).
const MIN_PAUSE_MS: f64 = 250.0;

/// The stretches of silence of at least [`MIN_PAUSE_MS`] between sounds of
/// `pcm` (16-bit LE mono at `rate`), as (start, end) ms. Silence before the
/// first sound and after the last is not a pause.
fn pauses(pcm: &[u8], rate: u32) -> Vec<(f64, f64)> {
    let ms = |i: usize| i as f64 * 1000.0 / f64::from(rate);
    let loud: Vec<usize> = pcm
        .chunks_exact(2)
        .enumerate()
        .filter(|(_, c)| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() > SILENCE_LEVEL)
        .map(|(i, _)| i)
        .collect();
    loud.windows(2).filter(|w| ms(w[1] - w[0] - 1) >= MIN_PAUSE_MS).map(|w| (ms(w[0] + 1), ms(w[1]))).collect()
}

fn describe(m: &Recorded) -> String {
    let state = match m.request_state {
        0 => "COMPLETE",
        1 => "IN-PROGRESS",
        2 => "PENDING",
        _ => "?",
    };
    if m.method_name == "SPEAK-COMPLETE" {
        let cause = m.header("Completion-Cause").unwrap_or("(no Completion-Cause)");
        let reason = m.completion_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        format!("← SPEAK-COMPLETE {cause}{reason}")
    } else if m.method_name == "SPEECH-MARKER" {
        format!("← SPEECH-MARKER {}", m.speech_marker.as_deref().unwrap_or(""))
    } else {
        format!("← {} {state}", m.status_code)
    }
}

fn run(args: Args) -> Result<(), String> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().map_or(manifest.clone(), Path::to_path_buf);
    let plugin = PluginLibrary::find_in_workspace(&workspace).map_err(|e| e.to_string())?;

    // Keep the mock alive for the whole run (dropping it stops it).
    let mut _mock = None;
    let params: Vec<(String, String)> = match std::env::var("ELEVENLABS_API_KEY").ok().filter(|k| !k.is_empty()) {
        Some(key) => {
            let voice = std::env::var("ELEVENLABS_VOICE_ID").unwrap_or_else(|_| DEFAULT_VOICE_ID.to_string());
            println!("upstream: ElevenLabs API, voice {voice}");
            // A repeated demo sentence is served from this cache (no credits).
            let cache = std::env::temp_dir().join("unimrcp-elevenlabs-demo-cache");
            vec![("api_key".into(), key), ("voice_id".into(), voice), ("cache_dir".into(), cache.display().to_string())]
        }
        None => {
            let mock = MockUpstream::start("demo-key");
            // Like the real service: a short wait, then faster than real time.
            mock.set_default(
                Behavior::default()
                    .with_first_byte_delay(Duration::from_millis(150))
                    .with_speed(2.0)
                    .with_voice(Voice::Espeak),
            );
            println!(
                "upstream: local test upstream at {} (set ELEVENLABS_API_KEY to use the real API)",
                mock.base_url()
            );
            match espeak::available() {
                Ok(()) => println!("voice:    eSpeak NG ({})", espeak::LIBRARY),
                Err(why) => {
                    println!("voice:    test tones, not speech: {why}; `apt-get install espeak-ng` gives a real voice")
                }
            }
            let params = vec![
                ("api_key".into(), "demo-key".into()),
                ("base_url".into(), mock.base_url()),
                ("voice_id".into(), DEFAULT_VOICE_ID.into()),
                ("cache_enabled".into(), "false".into()),
            ];
            _mock = Some(mock);
            params
        }
    };
    println!("plugin:   {}", plugin.display());

    let config = ServerConfig {
        params: Some(params),
        log_sources: vec!["ELEVENLABS-SYNTH".into()],
        clock: MediaClock::RealTime,
        ..ServerConfig::default()
    };
    let server = Server::start(&plugin, config).map_err(|e| e.to_string())?;
    let channel = server.open_channel(args.rate).map_err(|e| e.to_string())?;
    println!("channel:  {} (LPCM {} Hz)\n", channel.id(), args.rate);

    let ssml = args.text.trim_start().starts_with("<speak") || args.text.trim_start().starts_with("<?xml");
    let request = if ssml { Request::speak_ssml(&args.text) } else { Request::speak(&args.text) };
    let id = channel.send(request);
    let t0 = channel.sent_at(id).unwrap_or_else(Instant::now);
    // Generous: the real API streams faster than real time, but a long text
    // still takes its spoken length to play out.
    let timeout = Duration::from_secs(30) + Duration::from_millis(120 * args.text.len() as u64);
    let complete = channel.wait_complete(id, timeout);

    let body = if ssml { "application/ssml+xml" } else { "text/plain" };
    let mut lines: Vec<(f64, String)> = vec![(0.0, format!("→ SPEAK {id} ({body})"))];
    for m in channel.messages().iter().filter(|m| m.request_id == id) {
        lines.push((ms_since(t0, m.at), describe(m)));
    }
    let frames = channel.frames();
    if let Some(first) = frames.first_audible_after(t0) {
        lines.push((ms_since(t0, frames.at(&first)), "first audio frame".into()));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (ms, text) in &lines {
        println!("{ms:8.1} ms  {text}");
    }

    let audio = channel.audio();
    let audio_ms = audio.len() as f64 / (f64::from(args.rate) * 2.0) * 1000.0;
    println!("\naudio:    {audio_ms:.0} ms, {} bytes; a caller hears (ms into the audio):", audio.len());
    let mut heard: Vec<(f64, f64, String)> = Vec::new();
    for m in channel.messages().iter().filter(|m| m.request_id == id && m.method_name == "SPEECH-MARKER") {
        let name = m.speech_marker.as_deref().and_then(|v| v.split_once(';')).map_or("", |(_, name)| name);
        // The marker goes out when the frame holding the mark's audio is
        // read: the mark lies within that 10 ms frame.
        let end = audio_frames_until(&frames, m.at) as f64 * 10.0;
        heard.push(((end - 10.0).max(0.0), end, format!("← mark {name}")));
    }
    for (start, end) in pauses(&audio, args.rate) {
        heard.push((start, end, format!("silence ({:.0} ms)", end - start)));
    }
    heard.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (start, end, text) in &heard {
        println!("{:>14} ms  {text}", format!("{start:.0}..{end:.0}"));
    }
    write_wav(&args.out, args.rate, &audio).map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    println!("wrote     {}", args.out.display());

    let _ = channel.close();
    let violations = server.violations();
    let mut server = server;
    let stopped = server.stop();
    if complete.is_none() {
        eprintln!("\nno SPEAK-COMPLETE within {timeout:?}; plugin log:\n{}", server.logs_text());
        return Err("the SPEAK did not complete".into());
    }
    if !violations.is_empty() {
        eprintln!("\nABI violations detected by the host:\n  {}", violations.join("\n  "));
    }
    stopped.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}
