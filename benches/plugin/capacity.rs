//! [6] Engine-wide upstream capacity: the queue in front of a plan of 5
//! slots, how long a slot is held per second of audio, and how fast a SPEAK
//! ends while the circuit is open.

use super::*;

const PLAN: usize = 5;
const QUEUE_CHANNELS: usize = 30;
const QUEUE_AUDIO_MS: u32 = 1000;
const QUEUE_SPEED: f64 = 4.0;
const LONG_AUDIO_MS: u32 = 30_000;
const OPEN_SPEAKS: usize = 50;
const SEND_BUFFER: usize = 16 * 1024;

fn server_with(plugin: &Path, mock: &MockUpstream, extra: &[(&str, &str)]) -> Result<Server, String> {
    start_server_with(plugin, mock, None, extra)
}

/// `queue_ms=` of each SPEAK's summary line.
fn queue_waits(server: &Server) -> Vec<f64> {
    server
        .logs()
        .iter()
        .filter(|l| l.text.contains(" done: "))
        .filter_map(|l| l.text.split(" queue_ms=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

pub fn bench_capacity(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    queue_on_a_plan(plugin, failures)?;
    slot_held(plugin, failures)?;
    circuit_open(plugin, failures)
}

fn queue_on_a_plan(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let mock = MockUpstream::start(API_KEY);
    mock.set_plan_limit(Some(PLAN));
    mock.set_default(
        Behavior::default()
            .with_speed(QUEUE_SPEED)
            .with_audio_ms(QUEUE_AUDIO_MS)
            .with_first_byte_delay(FIRST_BYTE_DELAY),
    );
    let plan = PLAN.to_string();
    let server = server_with(plugin, &mock, &[("max_concurrent_requests", &plan), ("queue_timeout_ms", "60000")])?;
    let channels = open_channels(&server, QUEUE_CHANNELS, 8000)?;
    let speaks: Vec<(usize, u32)> =
        channels.iter().enumerate().map(|(i, ch)| (i, ch.speak(&format!("Caller {i} hears the menu.")))).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    check_completions("[6] queue", &speaks, &channels, deadline, failures);
    let totals = sorted_f64(
        speaks
            .iter()
            .filter_map(|&(c, id)| {
                let done = channels[c].wait_complete(id, Duration::ZERO)?;
                Some(ms_between(channels[c].sent_at(id)?, done.at))
            })
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut waits = queue_waits(&server);
    while waits.len() < QUEUE_CHANNELS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        waits = queue_waits(&server);
    }
    let waits = sorted_f64(waits);
    if mock.plan_refusals() != 0 || mock.max_concurrent() > PLAN {
        failures.add(format!(
            "[6] queue: the upstream refused {} and served {} at once with max_concurrent_requests={PLAN}",
            mock.plan_refusals(),
            mock.max_concurrent()
        ));
    }
    if totals.is_empty() || waits.is_empty() {
        return Err("no figures".into());
    }
    println!(
        "  queue: {QUEUE_CHANNELS} channels at once, max_concurrent_requests={PLAN}, upstream plan limit {PLAN}, {QUEUE_AUDIO_MS} ms prompts at {QUEUE_SPEED}x after {} ms: upstream served at most {} at once, refused {}",
        FIRST_BYTE_DELAY.as_millis(),
        mock.max_concurrent(),
        mock.plan_refusals()
    );
    println!(
        "    queue wait p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; SPEAK -> SPEAK-COMPLETE p50 {:.0} ms, p99 {:.0} ms (audio alone is {QUEUE_AUDIO_MS} ms)",
        pct(&waits, 50.0),
        pct(&waits, 99.0),
        waits[waits.len() - 1],
        pct(&totals, 50.0),
        pct(&totals, 99.0)
    );
    teardown(server, channels, mock, failures);
    Ok(())
}

fn slot_held(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let mock = MockUpstream::start(API_KEY);
    // A small socket send buffer at the upstream, as across a real network:
    // on loopback the kernel would otherwise absorb the whole prompt and
    // hide any backpressure from the upstream's view.
    mock.set_default(
        Behavior::default().with_speed(QUEUE_SPEED).with_audio_ms(LONG_AUDIO_MS).with_send_buffer(SEND_BUFFER),
    );
    let server = server_with(plugin, &mock, &[("max_concurrent_requests", "1")])?;
    let channels = open_channels(&server, 1, 8000)?;
    let id = channels[0].speak("A long announcement.");
    check_completions("[6] slot", &[(0, id)], &channels, Instant::now() + Duration::from_secs(90), failures);
    let req = mock.requests().pop().ok_or("no request")?;
    let held = match req.ended_at {
        Some(end) => end.duration_since(req.received_at).as_secs_f64(),
        None => return Err("the request never ended".into()),
    };
    let audio_s = f64::from(LONG_AUDIO_MS) / 1000.0;
    println!(
        "  slot held: one {audio_s:.0} s prompt at {QUEUE_SPEED}x real time, max_buffer_ms={MAX_BUFFER_MS}, upstream send buffer {SEND_BUFFER} bytes: the upstream's request was open {held:.2} s = {:.3} s per second of audio (generation alone: {:.3})",
        held / audio_s,
        1.0 / QUEUE_SPEED
    );
    teardown(server, channels, mock, failures);
    Ok(())
}

fn circuit_open(plugin: &Path, failures: &mut Failures) -> Result<(), String> {
    let mock = MockUpstream::start(API_KEY);
    mock.set_failing(Some(unimrcp_shim::upstream::Fault::server_error(503)));
    let server = server_with(
        plugin,
        &mock,
        &[("circuit_failure_threshold", "3"), ("circuit_open_ms", "600000"), ("max_retries", "0")],
    )?;
    let channels = open_channels(&server, 1, 8000)?;
    let ch = &channels[0];
    for i in 0..3 {
        let id = ch.speak(&format!("Failure {i}."));
        ch.wait_complete(id, Duration::from_secs(30)).ok_or("no SPEAK-COMPLETE")?;
    }
    let before = mock.request_count();
    let mut took = Vec::new();
    for i in 0..OPEN_SPEAKS {
        let id = ch.speak(&format!("While open {i}."));
        let done = ch.wait_complete(id, Duration::from_secs(30)).ok_or("no SPEAK-COMPLETE")?;
        if !done.completion_reason.as_deref().unwrap_or("").starts_with("upstream unavailable (circuit open") {
            failures.add(format!("[6] circuit: {:?}", done.completion_reason));
        }
        took.push(ms_between(ch.sent_at(id).ok_or("no send time")?, done.at));
    }
    let took = sorted_f64(took);
    println!(
        "  circuit open: {OPEN_SPEAKS} SPEAKs one after another: SPEAK -> SPEAK-COMPLETE 004 p50 {:.3} ms, p99 {:.3} ms; requests sent upstream meanwhile: {}",
        pct(&took, 50.0),
        pct(&took, 99.0),
        mock.request_count() - before
    );
    teardown(server, channels, mock, failures);
    Ok(())
}
