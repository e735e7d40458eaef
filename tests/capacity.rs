//! Engine-wide upstream capacity: the account's concurrency limit shared by
//! every channel, 429s absorbed, retries before audio only, the circuit
//! breaker and the fallback endpoint, the cost guard, and what the upstream
//! tells in its headers. The test upstream keeps its own count of what it
//! served at once and what it refused, so every assertion is on its view.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{Channel, Recorded, Request};
use unimrcp_shim::upstream::{Behavior, Fault, MockUpstream};

fn reason(m: &Recorded) -> &str {
    m.completion_reason.as_deref().expect("a Completion-Reason")
}

/// The one request for `text` the upstream answered 200.
fn answered(upstream: &MockUpstream, text: &str) -> Vec<u8> {
    let ok: Vec<_> =
        upstream.requests().into_iter().filter(|r| r.text.as_deref() == Some(text) && r.status == 200).collect();
    assert_eq!(ok.len(), 1, "one request for {text:?} was answered with audio");
    ok[0].audio_sent.clone()
}

/// Requests that reached the upstream for `text`, however answered.
fn sent_for(upstream: &MockUpstream, text: &str) -> usize {
    upstream.requests().iter().filter(|r| r.text.as_deref() == Some(text)).count()
}

/// 30 channels speak at once; each prompt is ~0.35 s at the upstream.
fn thirty_at_once(rig: &Rig) -> Vec<(Channel, u32, String)> {
    let started: Vec<(Channel, u32, String)> = (0..30)
        .map(|i| {
            let ch = rig.server.open_channel(8000).unwrap();
            let text = format!("Caller {i} hears the menu.");
            let id = ch.speak(&text);
            (ch, id, text)
        })
        .collect();
    for (ch, id, text) in &started {
        let done = expect_in_progress_then_complete(ch, *id);
        assert_eq!(done.completion_cause, Some(NORMAL), "{text}: {done:#?}");
        assert_eq!(ch.audio(), padded(&answered(&rig.upstream, text), 160), "{text}: exact audio");
    }
    started
}

fn plan_of_five(rig: &Rig) {
    rig.upstream.set_plan_limit(Some(5));
    rig.upstream.set_default(
        Behavior::default().with_speed(4.0).with_audio_ms(1000).with_first_byte_delay(Duration::from_millis(100)),
    );
}

#[test]
fn thirty_callers_on_a_plan_of_five_never_exceed_it() {
    // The queue may hold a SPEAK for several rounds: this is about the
    // count, not the time.
    let rig = rig(&[("max_concurrent_requests", "5"), ("queue_timeout_ms", "120000")]);
    plan_of_five(&rig);
    thirty_at_once(&rig);
    assert_eq!(rig.upstream.plan_refusals(), 0, "the upstream never refused one");
    assert_eq!(rig.upstream.max_concurrent(), 5, "and never served more than 5 at once");
    assert_eq!(rig.upstream.request_count(), 30);
    assert!(wait_for_log(&rig.server, "queue_ms=", 30) == 30);
    assert_clean(&rig.server);
}

#[test]
fn with_no_limit_configured_the_429s_are_absorbed() {
    let rig = rig(&[("queue_timeout_ms", "120000")]);
    plan_of_five(&rig);
    thirty_at_once(&rig);
    let refused = rig.upstream.plan_refusals();
    eprintln!(
        "30 channels, no max_concurrent_requests, upstream plan of 5: {refused} 429 too_many_concurrent_requests absorbed, {} requests in all, at most {} at once",
        rig.upstream.request_count(),
        rig.upstream.max_concurrent()
    );
    assert_eq!(rig.upstream.request_count(), 30 + refused);
    assert!(rig.upstream.max_concurrent() <= 5);
    assert_clean(&rig.server);
}

#[test]
fn a_queued_speak_stopped_never_reaches_the_upstream_and_frees_its_place() {
    let rig = rig(&[("max_concurrent_requests", "1"), ("queue_timeout_ms", "120000")]);
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(20_000));
    let a = rig.server.open_channel(8000).unwrap();
    let b = rig.server.open_channel(8000).unwrap();
    let holder = a.speak("I hold the only slot.");
    rig.upstream.wait_for_requests(1, WAIT);
    let queued = b.speak("I wait in the queue.");
    let progress = b.wait_response(queued, WAIT).expect("IN-PROGRESS");
    assert_eq!(progress.request_state, IN_PROGRESS);
    let stop = b.stop();
    let answer = b.wait_response(stop, WAIT).expect("STOP answered");
    assert_eq!(answer.active_request_ids.as_deref(), Some(&[queued][..]), "the queued SPEAK is stopped");
    // The holder's turn ends; the next SPEAK gets the slot, not the
    // stopped one.
    let stop = a.stop();
    assert_eq!(a.wait_response(stop, WAIT).unwrap().active_request_ids.as_deref(), Some(&[holder][..]));
    rig.upstream.set_default(Behavior::default().with_audio_ms(300));
    let next = b.speak("Next in line.");
    assert_eq!(expect_in_progress_then_complete(&b, next).completion_cause, Some(NORMAL));
    assert!(rig.upstream.wait_until_idle(Duration::from_secs(5)));
    assert_eq!(sent_for(&rig.upstream, "I wait in the queue."), 0, "never sent upstream");
    assert_eq!(b.messages().iter().filter(|m| m.request_id == queued && is_speak_complete(m)).count(), 0);
    assert_clean(&rig.server);
}

#[test]
fn a_speak_that_waits_too_long_for_a_slot_says_so() {
    let rig = rig(&[("max_concurrent_requests", "1"), ("queue_timeout_ms", "300")]);
    rig.upstream.set_default(Behavior::realtime().with_audio_ms(20_000));
    let a = rig.server.open_channel(8000).unwrap();
    let b = rig.server.open_channel(8000).unwrap();
    let holder = a.speak("I hold the only slot.");
    rig.upstream.wait_for_requests(1, WAIT);
    let id = b.speak("I give up waiting.");
    let done = expect_in_progress_then_complete(&b, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    let r = reason(&done);
    let waited: u64 = r
        .strip_prefix("upstream busy: waited ")
        .and_then(|rest| rest.strip_suffix(" ms for one of 1 slots"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    assert!(waited >= 300, "{r}");
    assert_eq!(sent_for(&rig.upstream, "I give up waiting."), 0);
    let stop = a.stop();
    assert_eq!(a.wait_response(stop, WAIT).unwrap().active_request_ids.as_deref(), Some(&[holder][..]));
    assert_clean(&rig.server);
}

#[test]
fn busy_and_server_errors_before_audio_are_retried_within_the_budget() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).unwrap();
    rig.upstream.fail_next(2, Fault::system_busy());
    let id = ch.speak("Third time lucky.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
    assert_eq!(sent_for(&rig.upstream, "Third time lucky."), 3);
    assert_eq!(ch.audio(), padded(&answered(&rig.upstream, "Third time lucky."), 160), "heard once, exactly");
    assert_eq!(wait_for_log(&rig.server, "tries=3 ", 1), 1);

    // max_retries=2: the third failure is the answer, with the tries and
    // the id to quote.
    rig.upstream.fail_next(3, Fault::server_error(503));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Never lucky.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    let last = MockUpstream::request_id_of(rig.upstream.request_count() - 1);
    assert!(reason(&done).starts_with("upstream HTTP 503"), "{}", reason(&done));
    assert!(reason(&done).ends_with(&format!(" (3 tries, request-id {last})")), "{}", reason(&done));
    assert_eq!(sent_for(&rig.upstream, "Never lucky."), 3);
    assert_clean(&rig.server);
}

#[test]
fn a_retry_that_runs_out_of_budget_reports_the_upstreams_answer() {
    // The busy answer comes at once and the first backoff is at most
    // 200 ms, so the retry starts well inside the 1.5 s budget even on a
    // busy machine; its answer would come long after it.
    let rig = rig(&[("first_byte_timeout_ms", "1500")]);
    rig.upstream.set_default(Behavior::default().with_first_byte_delay(Duration::from_millis(10_000)));
    rig.upstream.fail_next(1, Fault::system_busy());
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Busy, then slow.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    let r = reason(&done);
    assert!(r.starts_with("upstream HTTP 429 system_busy"), "{r}");
    assert!(r.ends_with(" (2 tries, request-id mock-1)"), "{r}");
    assert_clean(&rig.server);
}

#[test]
fn no_retry_once_audio_has_been_received() {
    let rig = rig(&[]);
    rig.upstream.set_default(Behavior::fault(Fault::CutAfterBytes(3200)).with_audio_ms(2000));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Cut in the middle.");
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    assert!(reason(&done).starts_with("upstream stream cut short"), "{}", reason(&done));
    assert_eq!(rig.upstream.request_count(), 1, "a caller never hears a phrase twice");
    assert_clean(&rig.server);
}

#[test]
fn an_open_circuit_fails_at_once_then_a_probe_closes_it() {
    const OPEN_MS: u64 = 4000;
    let open_ms = OPEN_MS.to_string();
    let rig = rig(&[("circuit_failure_threshold", "3"), ("circuit_open_ms", &open_ms), ("max_retries", "0")]);
    rig.upstream.set_failing(Some(Fault::server_error(500)));
    let ch = rig.server.open_channel(8000).unwrap();
    let mut opened_at = Instant::now();
    for i in 0..3 {
        let id = ch.speak(&format!("Failure {i}."));
        let done = expect_in_progress_then_complete(&ch, id);
        assert!(reason(&done).starts_with("upstream HTTP 500"), "{}", reason(&done));
        opened_at = done.at;
    }
    assert_eq!(rig.upstream.request_count(), 3);
    // Open: nothing goes upstream, the SPEAK ends at once.
    let mut took = Vec::new();
    for i in 0..5 {
        let id = ch.speak(&format!("While open {i}."));
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(ERROR));
        // (Only a machine too busy to run five SPEAKs in 3.5 s would see
        // the open time end here.)
        if done.at < opened_at + Duration::from_millis(OPEN_MS - 500) {
            let r = reason(&done);
            assert!(r.starts_with("upstream unavailable (circuit open since 20"), "{r}");
            assert!(r.ends_with(", last error upstream HTTP 500: Internal server error)"), "{r}");
        }
        took.push(done.at.duration_since(ch.sent_at(id).unwrap()));
    }
    let sent_while_open = rig
        .upstream
        .requests()
        .iter()
        .filter(|r| r.received_at < opened_at + Duration::from_millis(OPEN_MS - 500))
        .count();
    assert_eq!(sent_while_open, 3, "the upstream got no request while the circuit was open");
    took.sort();
    eprintln!("SPEAK -> SPEAK-COMPLETE while the circuit is open: {took:?}");
    // The upstream recovers; after the open time one probe closes it.
    rig.upstream.set_failing(None);
    let wait = (opened_at + Duration::from_millis(OPEN_MS + 50)).saturating_duration_since(Instant::now());
    std::thread::sleep(wait);
    for text in ["The probe.", "Closed again."] {
        let id = ch.speak(text);
        assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL), "{text}");
    }
    assert_eq!(wait_for_log(&rig.server, "upstream circuit (primary) closed", 1), 1);
    let logs = rig.server.logs_text();
    assert_eq!(logs.matches("upstream circuit (primary) open for").count(), 1, "one line per change");
    assert_eq!(logs.matches("upstream circuit (primary) half-open").count(), 1);
    assert_clean(&rig.server);
}

#[test]
fn while_the_primary_is_down_the_fallback_speaks() {
    // Nothing listens on the primary's port: connections are refused.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let fallback = MockUpstream::start(API_KEY);
    let rig = rig(&[
        ("base_url", &dead),
        ("fallback_base_url", &fallback.base_url()),
        ("circuit_failure_threshold", "2"),
        ("circuit_open_ms", "60000"),
    ]);
    let ch = rig.server.open_channel(8000).unwrap();
    // Two refused connects open the primary's circuit; the retry goes to
    // the fallback: the very first SPEAK is heard.
    for text in ["First caller.", "Second caller."] {
        let id = ch.speak(text);
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(NORMAL), "{text}: {done:#?}");
    }
    let audio: Vec<u8> =
        ["First caller.", "Second caller."].iter().flat_map(|t| padded(&answered(&fallback, t), 160)).collect();
    assert_eq!(ch.audio(), audio);
    assert_eq!(wait_for_log(&rig.server, "source=fallback", 2), 2);
    assert_eq!(rig.upstream.request_count(), 0);
    assert_clean(&rig.server);
}

#[test]
fn the_cost_guard_refuses_before_any_request() {
    let rig = rig(&[]);
    rig.upstream.set_default(Behavior::default().with_audio_ms(500));
    let ch = rig.server.open_channel(8000).unwrap();
    let digits: String = (0..3000).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
    let ssml = format!(
        r#"<speak version="1.0" xml:lang="en-US">Your code is <say-as interpret-as="digits">{digits}</say-as>.</speak>"#
    );
    let id = ch.send(Request::speak_ssml(&ssml));
    let done = expect_in_progress_then_complete(&ch, id);
    assert_eq!(done.completion_cause, Some(ERROR));
    let r = reason(&done);
    let chars: usize = r
        .strip_prefix("SPEAK would send ")
        .and_then(|rest| rest.strip_suffix(" characters upstream, max_speak_chars=5000"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    assert!(chars > 2 * 3000, "{chars}: the digits as spoken, after expansion");
    // Under the cap, the same body shape goes through.
    let id = ch.send(Request::speak_ssml(&ssml.replace(&digits, &digits[..1000])));
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    assert_eq!(rig.upstream.request_count(), 1, "the long one never went upstream");
    assert_clean(&rig.server);
}

#[test]
fn the_summary_line_carries_what_the_upstream_told() {
    let rig = rig(&[]);
    rig.upstream.set_region(Some("eu-west-1"));
    let ch = rig.server.open_channel(8000).unwrap();
    let text = "Billed by the character.";
    let id = ch.speak(text);
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    let told = format!("chars_billed={} region=eu-west-1 tries=1 queue_ms=", text.chars().count());
    assert_eq!(wait_for_log(&rig.server, &told, 1), 1, "{}", rig.server.logs_text());
    assert_eq!(wait_for_log(&rig.server, " request_id=mock-1 cause=000 normal", 1), 1);
    assert_clean(&rig.server);
}

#[test]
fn the_advertised_limit_is_learned_from_the_first_answer() {
    // No max_concurrent_requests: the first answers carry
    // maximum-concurrent-requests: 2, and from then on no more than 2 go.
    let rig = rig(&[("queue_timeout_ms", "120000")]);
    rig.upstream.set_plan_limit(Some(2));
    rig.upstream.set_default(Behavior::default().with_audio_ms(300));
    let ch = rig.server.open_channel(8000).unwrap();
    let id = ch.speak("Tell me your limit.");
    assert_eq!(expect_in_progress_then_complete(&ch, id).completion_cause, Some(NORMAL));
    rig.upstream.set_default(
        Behavior::default().with_speed(4.0).with_audio_ms(1000).with_first_byte_delay(Duration::from_millis(100)),
    );
    rig.upstream.reset_max_concurrent();
    let channels: Vec<(Channel, u32)> = (0..8)
        .map(|i| {
            let ch = rig.server.open_channel(8000).unwrap();
            let id = ch.speak(&format!("Learned caller {i}."));
            (ch, id)
        })
        .collect();
    for (ch, id) in &channels {
        assert_eq!(expect_in_progress_then_complete(ch, *id).completion_cause, Some(NORMAL));
    }
    assert_eq!(rig.upstream.plan_refusals(), 0);
    assert_eq!(rig.upstream.max_concurrent(), 2);
    assert_clean(&rig.server);
}
