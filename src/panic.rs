//! One panic guard for every callback the server makes into the plugin.
//!
//! A panic must never unwind into C (that aborts unimrcpserver and every call
//! on it). Each `extern "C"` trampoline runs its body through [`guard`]; a
//! panic is logged with the callback's name and turned into the trampoline's
//! fallback (an error response, FALSE, a silent frame, ...).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`; on panic logs it and returns `None`.
pub fn guard<R>(callback: &'static str, body: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(|| {
        inject(callback);
        body()
    })) {
        Ok(value) => Some(value),
        Err(payload) => {
            log::error!("panic in {callback}: {}", describe(payload.as_ref()));
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
