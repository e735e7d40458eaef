//! A channel's worker thread gives back, once idle, the stack pages its
//! SPEAK touched (a thread otherwise keeps every page it ever touched: each
//! idle channel would hold the deepest moment of its last SPEAK). The worker
//! reports the figures (mincore on its own stack) in a debug line.

mod common;

use common::*;

/// Resident stack of a worker after a SPEAK, KiB. Measured here: 20 KiB
/// (release build; up to 34 KiB at the peak of bench [11] before the
/// worker's idle frame was slimmed), 40 KiB unoptimised. A frame that grew by a large on-stack buffer, or recursion,
/// goes past it.
const SPEAK_STACK_KIB: u64 = 128;
/// Resident stack once given back: the thread's descriptor and TLS at the
/// top of its stack, the frames down to the idle loop and a page of margin.
/// Measured: 12 KiB (release), 16 KiB unoptimised.
const IDLE_STACK_KIB: u64 = 32;

/// (during the SPEAK, once released) of each "worker idle" line so far.
fn idle_figures(rig: &Rig) -> Vec<(u64, u64)> {
    rig.server
        .logs()
        .iter()
        .filter_map(|l| {
            let rest = l.text.split("worker idle: stack ").nth(1)?;
            let before = rest.split(' ').next()?.parse().ok()?;
            let after = rest.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((before, after))
        })
        .collect()
}

#[test]
fn an_idle_worker_gives_back_the_stack_its_speak_touched() {
    let rig = rig(&[]);
    let ch = rig.server.open_channel(8000).expect("channel opens");
    for round in 1..=2 {
        let id = ch.speak(&format!("Round {round} of stack pages touched and given back."));
        let done = expect_in_progress_then_complete(&ch, id);
        assert_eq!(done.completion_cause, Some(NORMAL), "{done:#?}");
        assert_eq!(wait_for_log(&rig.server, "worker idle: stack ", round), round);
    }
    let figures = idle_figures(&rig);
    assert_eq!(figures.len(), 2, "{figures:?}");
    for &(during, released) in &figures {
        assert!(during <= SPEAK_STACK_KIB, "a SPEAK used {during} KiB of stack");
        assert!(released < during, "nothing given back: {during} KiB, then {released} KiB");
        assert!(released <= IDLE_STACK_KIB, "{released} KiB of stack left resident when idle");
    }
    assert_clean(&rig.server);
}
