//! Giving the heap's free memory back once channels have gone.
//!
//! What the workers' threads allocated (curl's handles and buffers, a
//! SPEAK's plan) and what the channels allocated on the MRCP Server thread
//! is freed into glibc's arenas, which keep it, scattered, until
//! `malloc_trim` walks them. A walk takes 1-4 ms after 200 channels
//! (measured), far too long for the MRCP Server thread where channel
//! destroy runs, so it runs on a short-lived thread of its own.
//!
//! A burst of channels ending (a batch of calls hanging up) asks for a
//! walk at each halving of the channels alive (`EngineShared`); each walks
//! at once, or right after the one under way. Those early walks matter:
//! what a walk finds free between live chunks it hands back page by page,
//! and those pages stay out of memory when the chunks later merge into an
//! arena's top, which `malloc_trim` never shrinks in the threads' arenas.
//! But what a burst frees keeps coming after its last destroy (the channel
//! objects, dropped after destroy returns, and the host's session memory),
//! so one more walk follows once requests have been quiet for `SETTLE`.
//! Without it 1.5 MiB stayed free but kept after 200 channels (bench [11],
//! `malloc_info` before and after a second walk); with only that late walk
//! (none during the burst) 3 MiB more stayed in the arenas' tops.
//!
//! Lock: `state`, a leaf held to read or change the fields, and by the
//! thread's condvar wait (which releases it); never across the walk, nor
//! across a join that could wait (a handle is joined under it only once
//! its thread has returned).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::ffi;

/// Quiet time after the last request before the settled walk.
pub const SETTLE: Duration = Duration::from_millis(100);
/// Longest the settled walk waits for quiet after the first request, so
/// channels that keep ending (a busy server) still get their memory
/// returned.
pub const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

/// The heap trim: at most one thread at a time, walking when asked and
/// once more when requests have been quiet for `SETTLE`.
#[derive(Default)]
pub struct HeapTrim {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    thread: Option<JoinHandle<()>>,
    /// Earlier threads, past their last step but perhaps not yet returned.
    exiting: Vec<JoinHandle<()>>,
    /// A thread is waiting or walking (it clears this itself, under the
    /// lock, when no request is left).
    running: bool,
    /// A walk is wanted now (the first of a burst, or one asked for while
    /// another was under way).
    now: bool,
    /// When the settled walk may start, and the latest it waits for.
    due: Option<Instant>,
    latest: Option<Instant>,
    /// Engine close: walk now, skip the settling.
    hurry: bool,
    /// What the request said, for the log.
    reason: String,
    /// Walks done so far.
    walks: u64,
}

impl HeapTrim {
    /// Asks for a walk now (or as soon as the one under way is done) and
    /// another `SETTLE` from now (a later request moves that one later, up
    /// to `SETTLE_AT_MOST` after the first).
    pub fn request(self: &Arc<Self>, reason: String) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.now = true;
        let latest = *state.latest.get_or_insert(now + SETTLE_AT_MOST);
        state.due = Some((now + SETTLE).min(latest));
        state.reason = reason;
        if state.running {
            self.wake.notify_all(); // its thread picks the request up
            return;
        }
        // Threads that said they are done: joined once they have returned
        // (at once), else kept for `finish`, since a join that could wait
        // has no place on the MRCP Server thread.
        let state = &mut *state;
        state.exiting.extend(state.thread.take());
        for done in std::mem::take(&mut state.exiting) {
            if done.is_finished() {
                let _ = done.join();
            } else {
                state.exiting.push(done);
            }
        }
        let trim = Arc::clone(self);
        match std::thread::Builder::new().name("elevenlabs-trim".into()).spawn(move || trim.run()) {
            Ok(thread) => {
                state.thread = Some(thread);
                state.running = true;
            }
            Err(e) => {
                state.now = false;
                state.due = None;
                state.latest = None;
                log::debug!("heap trim skipped: cannot start its thread ({e})");
            }
        }
    }

    /// The thread: walks at once for a request that finds no walk under
    /// way, and once more when the quiet time is over; ends when no
    /// request is left.
    fn run(&self) {
        let mut state = self.state.lock();
        loop {
            if std::mem::take(&mut state.now) {
                state = self.walk(state);
                continue;
            }
            let Some(due) = state.due else { break };
            if !state.hurry && Instant::now() < due {
                // Woken early by a request (a new due time, perhaps a walk
                // now) or by engine close (hurry): the loop looks again.
                self.wake.wait_until(&mut state, due);
                continue;
            }
            state.due = None;
            state.latest = None;
            state = self.walk(state);
        }
        state.running = false;
    }

    /// One `malloc_trim`, with the lock released meanwhile.
    fn walk<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let reason = state.reason.clone();
        drop(state);
        let started = Instant::now();
        ffi::release_free_heap();
        log::debug!("{reason}: free heap memory returned to the system in {} us", started.elapsed().as_micros());
        state = self.state.lock();
        state.walks += 1;
        state
    }

    /// Engine close and destroy (never on the MRCP Server thread): a
    /// pending walk happens now, and is waited for.
    pub fn finish(&self) {
        let threads = {
            let mut state = self.state.lock();
            state.hurry = true;
            self.wake.notify_all();
            let mut threads = std::mem::take(&mut state.exiting);
            threads.extend(state.thread.take());
            threads
        };
        for thread in threads {
            let _ = thread.join();
        }
        self.state.lock().hurry = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` until it holds or 30 s pass (a busy machine can delay the
    /// thread, never fail the test).
    fn eventually(trim: &HeapTrim, f: impl Fn(&State) -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if f(&trim.state.lock()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn a_request_walks_at_once_and_once_more_after_the_quiet_time() {
        let trim = Arc::new(HeapTrim::default());
        let asked = Instant::now();
        trim.request("200 -> 100 channels".into());
        assert!(eventually(&trim, |s| s.walks >= 1), "no walk");
        // The settled walk is still to come, on the same thread.
        let thread = trim.state.lock().thread.as_ref().map(|t| t.thread().id());
        assert!(eventually(&trim, |s| !s.running), "the thread never ended");
        assert_eq!(trim.state.lock().walks, 2);
        assert!(asked.elapsed() >= SETTLE, "ended {:?} after the request", asked.elapsed());
        assert_eq!(trim.state.lock().thread.as_ref().map(|t| t.thread().id()), thread);
        trim.finish();
        assert!(trim.state.lock().thread.is_none());
    }

    #[test]
    fn a_request_during_the_quiet_time_walks_at_once_and_moves_the_settled_walk() {
        let trim = Arc::new(HeapTrim::default());
        trim.request("200 -> 100 channels".into());
        assert!(eventually(&trim, |s| s.walks >= 1));
        let first_due = trim.state.lock().due;
        std::thread::sleep(SETTLE / 4);
        trim.request("100 -> 50 channels".into());
        let moved = trim.state.lock().due;
        assert!(moved > first_due, "{moved:?} vs {first_due:?}");
        assert!(eventually(&trim, |s| !s.running));
        // At once for each request, plus one settled walk (4 if a busy
        // machine stretched the sleep past the first settled walk, which
        // then ended its thread: the second request started another).
        let walks = trim.state.lock().walks;
        assert!((3..=4).contains(&walks), "{walks} walks");
        trim.finish();
    }

    #[test]
    fn requests_that_never_stop_still_get_the_settled_walk() {
        let trim = Arc::new(HeapTrim::default());
        trim.request("first".into());
        let first_latest = trim.state.lock().latest;
        assert!(first_latest.is_some());
        // A request every 20 ms never leaves SETTLE of quiet; the settled
        // walk still comes by SETTLE_AT_MOST after the first request, and
        // the next request starts a new wait (a new latest time).
        let started = Instant::now();
        while trim.state.lock().latest == first_latest && started.elapsed() < Duration::from_secs(30) {
            trim.request("more".into());
            std::thread::sleep(Duration::from_millis(20));
        }
        // (No lower bound on when: a busy machine may stretch a 20 ms
        // sleep past SETTLE, which legitimately lets the walk come early.)
        assert_ne!(trim.state.lock().latest, first_latest, "no settled walk in {:?}", started.elapsed());
        trim.finish();
    }

    #[test]
    fn finish_does_the_pending_walks_at_once_and_joins() {
        let trim = Arc::new(HeapTrim::default());
        trim.request("close".into());
        trim.finish();
        let state = trim.state.lock();
        assert!(!state.running && state.thread.is_none() && state.exiting.is_empty() && state.due.is_none());
        assert_eq!(state.walks, 2, "the pending walks were done, not dropped");
    }
}
