//! One panic guard for every callback the server makes into the plugin.
//!
//! A panic must never unwind into C (that aborts unimrcpserver and every call
//! on it). Each `extern "C"` trampoline runs its body through [`guard`]; a
//! panic is logged with the callback's name and turned into the trampoline's
//! fallback (an error response, FALSE, a silent frame, ...).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A callback that panics every time (read_frame runs 100 times a second
/// per channel) must not flood the server's log: per callback, one line per
/// second at most, with the count of those left out. A small fixed table,
/// keyed by the callback name's address (names are string literals).
struct Limiter {
    name: AtomicUsize,
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

const SLOTS: usize = 32;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Limiter =
    Limiter { name: AtomicUsize::new(0), last_second: AtomicU64::new(0), suppressed: AtomicU64::new(0) };
static LIMITERS: [Limiter; SLOTS] = [EMPTY; SLOTS];

fn limiter(callback: &'static str) -> &'static Limiter {
    let key = callback.as_ptr() as usize;
    for slot in &LIMITERS {
        match slot.name.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return slot,
            Err(existing) if existing == key => return slot,
            Err(_) => {}
        }
    }
    &LIMITERS[SLOTS - 1] // table full: the rest share the last slot
}

thread_local! {
    /// Where the last panic on this thread happened (set by our hook).
    static LOCATION: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The plugin links its own copy of std, so this hook sees only panics in
/// plugin code. It replaces the default hook (which would print a
/// backtrace to the server's stderr on every panic) with a note of where it
/// happened, for the one rate-limited log line the guard writes.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let _ = LOCATION.try_with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                *slot = at;
            }
        });
    }));
}

fn last_location() -> String {
    LOCATION.try_with(|cell| cell.try_borrow().map(|s| s.clone()).unwrap_or_default()).unwrap_or_default()
}

fn log_panic(callback: &'static str, payload: &(dyn Any + Send)) {
    let limit = limiter(callback);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_secs());
    let last = limit.last_second.load(Ordering::Relaxed);
    if now == last || limit.last_second.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        limit.suppressed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = limit.suppressed.swap(0, Ordering::Relaxed);
    let at = last_location();
    if suppressed > 0 {
        log::error!("panic in {callback}: {} at {at} ({suppressed} more panics not logged)", describe(payload));
    } else {
        log::error!("panic in {callback}: {} at {at}", describe(payload));
    }
}

/// Panics caught in the process, by the guard and by the channel workers
/// (process-wide: a panic is not always an engine's).
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// Counts a caught panic (the guard does; so does a worker's catch).
pub fn count_caught() {
    CAUGHT.fetch_add(1, Ordering::Relaxed);
}

/// Panics caught in this process so far.
pub fn caught() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}

/// Runs `body`; on panic logs it and returns `None`.
pub fn guard<R>(callback: &'static str, body: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(|| {
        inject(callback);
        body()
    })) {
        Ok(value) => Some(value),
        Err(payload) => {
            count_caught();
            log_panic(callback, payload.as_ref());
            None
        }
    }
}

/// The text of a panic payload.
pub fn describe(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "non-string panic payload"
    }
}

/// Test-only fault injection: with the `panic-injection` feature, the
/// environment variable ELEVENLABS_PANIC_IN names a callback (e.g.
/// "process_request") that panics on entry. Compiled out otherwise.
#[cfg(feature = "panic-injection")]
pub fn inject(callback: &'static str) {
    if std::env::var("ELEVENLABS_PANIC_IN").is_ok_and(|v| v == callback) {
        panic!("injected panic in {callback}");
    }
}

#[cfg(not(feature = "panic-injection"))]
#[inline(always)]
pub fn inject(_callback: &'static str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_returns_value_or_none() {
        assert_eq!(guard("t", || 7), Some(7));
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r: Option<u8> = guard("t", || panic!("boom"));
        std::panic::set_hook(prev);
        assert_eq!(r, None);
    }

    #[test]
    fn describe_reads_both_payload_kinds() {
        assert_eq!(describe(&"static"), "static");
        assert_eq!(describe(&String::from("owned")), "owned");
        assert_eq!(describe(&5u8), "non-string panic payload");
    }
}
