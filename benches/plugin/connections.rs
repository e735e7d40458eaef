//! [7] Warm connections: over HTTPS with a 100 ms handshake delay (what a
//! TCP + TLS handshake to a distant API costs), the time from SPEAK to the
//! first audible frame for a new channel's first SPEAK and for a later
//! SPEAK on the same channel, without and with pre-warmed connections.

use super::*;

const CHANNELS: usize = 10;
const CONNECT_DELAY: Duration = Duration::from_millis(100);
const AUDIO_MS: u32 = 300;
const RATE: u32 = 8000;

pub fn bench_connections(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    println!(
        "  {CHANNELS} channels one after another, each: SPEAK, then a second SPEAK; TLS upstream, {} ms per new connection, first byte after {} ms",
        CONNECT_DELAY.as_millis(),
        FIRST_BYTE_DELAY.as_millis()
    );
    for prewarm in [0usize, 2] {
        run(plugin, prewarm, failures)?;
    }
    Ok(())
}

/// How often the pre-warmer has put a transport in its pool.
fn warm_ready(server: &Server) -> usize {
    server.logs_text().matches("warm connection(s) ready").count()
}

fn run(plugin: &Path, prewarm: usize, failures: &mut Failures) -> Result<(), String> {
    let mock = MockUpstream::start_tls(API_KEY);
    mock.set_connect_delay(CONNECT_DELAY);
    mock.set_default(Behavior::realtime().with_first_byte_delay(FIRST_BYTE_DELAY).with_audio_ms(AUDIO_MS));
    let dir = std::env::temp_dir().join(format!("elevenlabs-bench-ca-{}-{prewarm}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, mock.ca_pem().unwrap_or_default()).map_err(|e| format!("CA file: {e}"))?;
    let mut params: Vec<(String, String)> =
        engine_params(&mock.base_url(), None).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    params.retain(|(k, _)| k != "prewarm_connections");
    params.push(("prewarm_connections".into(), prewarm.to_string()));
    params.push(("ca_file".into(), ca.to_string_lossy().into_owned()));
    let config = ServerConfig {
        params: Some(params),
        log_sources: vec!["ELEVENLABS-SYNTH".into()],
        clock: MediaClock::RealTime,
        ..ServerConfig::default()
    };
    let server = Server::start(plugin, config).map_err(|e| format!("server start: {e}"))?;
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for i in 0..CHANNELS {
        if prewarm > 0 {
            // The pool is full again (the previous channel's take refilled).
            let deadline = Instant::now() + Duration::from_secs(10);
            while warm_ready(&server) < prewarm + i && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        let ch = server.open_channel(RATE).map_err(|e| format!("opening channel {i}: {e}"))?;
        let channels = vec![ch];
        let mut ids = Vec::new();
        for (k, label) in ["first", "later"].iter().enumerate() {
            let id = channels[0].speak(&format!("Welcome, caller {i}, this is prompt {k}."));
            check_completions(
                &format!("connections prewarm={prewarm} ch {i} {label}"),
                &[(0, id)],
                &channels,
                Instant::now() + Duration::from_secs(20),
                failures,
            );
            ids.push(id);
        }
        let log = channels[0].frames();
        for (k, &id) in ids.iter().enumerate() {
            let sent = channels[0].sent_at(id);
            let audible = sent.and_then(|s| log.first_audible_after(s)).map(|f| log.at(&f));
            match (sent, audible) {
                (Some(s), Some(a)) if k == 0 => first.push(ms_between(s, a)),
                (Some(s), Some(a)) => later.push(ms_between(s, a)),
                _ => failures.add(format!("connections prewarm={prewarm}: channel {i} SPEAK {k} has no audible frame")),
            }
        }
        for ch in channels {
            let id = ch.id();
            if let Err(e) = ch.close() {
                failures.add(format!("closing {id}: {e}"));
            }
        }
    }
    let (full, resumed) = mock.tls_handshakes();
    println!(
        "  prewarm_connections={prewarm}: SPEAK -> first audible frame, first SPEAK of a new channel {}; later SPEAK {}",
        p50_p99(first),
        p50_p99(later)
    );
    println!("      connections accepted {}, TLS handshakes: {full} full, {resumed} resumed", mock.connection_count());
    drop(server);
    drop(mock);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
