//! A channel's worker thread gives back the stack pages its SPEAK touched
//! (a thread otherwise keeps every page it ever touched: each idle channel
//! would hold the deepest moment of its last SPEAK), once it has been idle
//! `idle_stack_release_ms` after the SPEAK: not after every SPEAK, since
//! the next prompt of a call would fault the same pages in again. The
//! worker reports the figures (mincore on its own stack) in a debug line.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;

/// Resident stack of a worker after a SPEAK, KiB. Measured here: 20 KiB
/// (release build; up to 34 KiB at the peak of bench [11] before the
/// worker's idle frame was slimmed), 44 KiB unoptimised. A frame that grew by
/// a large on-stack buffer, or recursion, goes past it.
const SPEAK_STACK_KIB: u64 = 128;
/// Resident stack once given back: the thread's descriptor and TLS at the
/// top of its stack, the frames down to the idle loop and a page of margin.
/// Measured: 12 KiB (release), 16 KiB unoptimised.
const IDLE_STACK_KIB: u64 = 32;
/// The idle time before the release, in the tests that wait for it: short,
/// so that they wait little.
const RELEASE_MS: &str = "200";
/// How long a test waits for the release: the delay above, many times over
/// (a busy machine).
const RELEASE_WAIT: Duration = Duration::from_secs(30);
const IDLE_LINE: &str = "worker idle: stack ";

/// The tests count the wake-ups of the one worker thread alive: one test
/// at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// (during the SPEAK, once released) of each "worker idle" line so far.
fn idle_figures(rig: &Rig) -> Vec<(u64, u64)> {
    rig.server
        .logs()
        .iter()
        .filter_map(|l| {
            let rest = l.text.split(IDLE_LINE).nth(1)?;
            let before = rest.split(' ').next()?.parse().ok()?;
            let after = rest.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((before, after))
        })
        .collect()
}

/// Voluntary context switches (sleeps that ended) of the one channel
/// worker thread alive, from /proc: every wake-up of the worker is one.
fn worker_wakeups() -> u64 {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let is_worker = comm
            .trim()
            .strip_prefix("elevenlabs-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_worker {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("voluntary_ctxt_switches in the worker's status");
        found.push(switches);
    }
    assert_eq!(found.len(), 1, "one channel worker thread alive: {found:?}");
    found[0]
}

#[test]
fn a_worker_idle_after_its_speak_gives_back_the_stack_then_sleeps_without_waking() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rig = rig(&[("idle_stack_release_ms", RELEASE_MS)]);
    let ch = rig.server.open_channel(8000).expect("channel opens");
    for round in 1..=2 {
        let id = ch.speak(&format!("Round {round} of stack pages touched and given back."));
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
        assert_eq!(
            wait_for_log_within(&rig.server, IDLE_LINE, round, RELEASE_WAIT),
            round,
            "round {round}: the stack is given back once idle"
        );
        // Only once the SPEAK is over: its summary line (written after
        // the SPEAK-COMPLETE, on the same stack) comes first.
        let logs = rig.server.logs();
        let released = logs.iter().rposition(|l| l.text.contains(IDLE_LINE)).expect("counted above");
        let summary = logs.iter().rposition(|l| l.text.contains(" done: ")).expect("the SPEAK's summary line");
        assert!(summary < released, "round {round}: stack given back before the SPEAK's summary");
    }
    let figures = idle_figures(&rig);
    eprintln!("resident stack KiB (during the SPEAK, once given back), per round: {figures:?}");
    assert_eq!(figures.len(), 2, "{figures:?}");
    for &(during, released) in &figures {
        assert!(during <= SPEAK_STACK_KIB, "a SPEAK used {during} KiB of stack");
        assert!(released < during, "nothing given back: {during} KiB, then {released} KiB");
        assert!(released <= IDLE_STACK_KIB, "{released} KiB of stack left resident when idle");
    }
    // Rested, the worker sleeps without a time limit: over many times the
    // release delay, nothing wakes it (a worker still on a timed wait
    // would wake at least every 200 ms).
    let before = worker_wakeups();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(worker_wakeups(), before, "the rested worker woke up");
    assert_clean(&rig.server);
}

#[test]
fn a_worker_spoken_to_again_within_the_delay_keeps_its_stack() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Ten minutes: no test machine is that slow between two SPEAKs.
    let rig = rig(&[("idle_stack_release_ms", "600000")]);
    let ch = rig.server.open_channel(8000).expect("channel opens");
    for round in 1..=2 {
        let id = ch.speak(&format!("Prompt {round} of a dialog, the next one within seconds."));
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
        assert_eq!(wait_for_log(&rig.server, " done: ", round), round, "round {round}: summary line");
    }
    // After every SPEAK, the pages would have been given back (and
    // faulted in again by the next): the old way, and a madvise each.
    assert_eq!(idle_figures(&rig), Vec::<(u64, u64)>::new(), "stack given back between prompts");
    assert_clean(&rig.server);
}
