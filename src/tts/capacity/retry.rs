//! What one failed upstream attempt means for the next: put it back in the
//! queue (the account's concurrency was full), retry it after a backoff
//! (the upstream is busy or briefly unreachable), or give up; and whether
//! it counts against the upstream's health (the circuit breaker).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::tts::Trouble;

/// The backoff before retry `n` (1-based) is drawn from
/// [d/2, d], d = min(BACKOFF_CAP, BACKOFF_BASE × 2^(n-1)): spread out, so
/// that the channels refused together do not come back together.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(3);
/// After a concurrency 429 a request waits at the head of the queue at
/// least this (grown the same way), so one refused request does not hammer
/// an account that other servers keep full.
const REQUEUE_BASE: Duration = Duration::from_millis(50);
const REQUEUE_CAP: Duration = Duration::from_secs(1);

/// How one failed attempt is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// 429 `too_many_concurrent_requests`: back to the head of the queue
    /// (not a retry: the upstream did nothing wrong), the limit shrinks.
    Requeue,
    /// Worth another try after a backoff, if audio has not reached the
    /// buffer and the budgets allow.
    Retry,
    /// Another try would get the same answer.
    GiveUp,
}

/// What the attempt says about the upstream, for its circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// It answered: it is there.
    Up,
    /// Connect error, timeout, 5xx, 401, a stream cut short.
    Down,
    /// Says nothing either way (it is overloaded, or we could not read
    /// what it sent).
    Unknown,
}

/// Judges a failed attempt from what went wrong.
pub fn judge(trouble: Option<&Trouble>) -> (Next, Health) {
    match trouble {
        Some(Trouble::Status { code: 429, detail }) if detail.as_deref() == Some("too_many_concurrent_requests") => {
            (Next::Requeue, Health::Up)
        }
        Some(Trouble::Status { code: 429, .. }) => (Next::Retry, Health::Unknown),
        Some(Trouble::Status { code, .. }) if *code >= 500 => (Next::Retry, Health::Down),
        Some(Trouble::Status { code: 401, .. }) => (Next::GiveUp, Health::Down),
        Some(Trouble::Status { .. }) => (Next::GiveUp, Health::Up),
        Some(Trouble::Connect) | Some(Trouble::CutShort) => (Next::Retry, Health::Down),
        // A timeout has used up the time a retry would need; the budget
        // check says so when it is not the case (a short connect timeout).
        Some(Trouble::Timeout) => (Next::Retry, Health::Down),
        Some(Trouble::Content) => (Next::GiveUp, Health::Unknown),
        None => (Next::GiveUp, Health::Unknown),
    }
}

/// Backoff before retry `n` (1-based).
pub fn backoff(n: u32) -> Duration {
    jittered(BACKOFF_BASE, BACKOFF_CAP, n)
}

/// Wait at the head of the queue after the `n`th concurrency 429.
pub fn requeue_delay(n: u32) -> Duration {
    jittered(REQUEUE_BASE, REQUEUE_CAP, n)
}

fn jittered(base: Duration, cap: Duration, n: u32) -> Duration {
    let d = base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(cap);
    let half = d / 2;
    half + Duration::from_nanos(random() % (half.as_nanos() as u64 + 1))
}

/// A random number without a crate: std seeds each `RandomState` afresh.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u32, detail: &str) -> Trouble {
        Trouble::Status { code, detail: (!detail.is_empty()).then(|| detail.to_owned()) }
    }

    #[test]
    fn each_trouble_has_its_handling() {
        assert_eq!(judge(Some(&status(429, "too_many_concurrent_requests"))), (Next::Requeue, Health::Up));
        assert_eq!(judge(Some(&status(429, "system_busy"))), (Next::Retry, Health::Unknown));
        assert_eq!(judge(Some(&status(503, ""))), (Next::Retry, Health::Down));
        assert_eq!(judge(Some(&status(401, "invalid_api_key"))), (Next::GiveUp, Health::Down));
        assert_eq!(judge(Some(&status(422, ""))), (Next::GiveUp, Health::Up));
        assert_eq!(judge(Some(&Trouble::Connect)), (Next::Retry, Health::Down));
        assert_eq!(judge(Some(&Trouble::Content)), (Next::GiveUp, Health::Unknown));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for n in 1..=12 {
            let d = backoff(n);
            let full = (BACKOFF_BASE * (1 << (n - 1).min(16))).min(BACKOFF_CAP);
            assert!(d >= full / 2 && d <= full, "retry {n}: {d:?} within [{:?}, {full:?}]", full / 2);
        }
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(3)).collect();
        assert!(draws.len() > 10, "jittered: {} distinct of 50", draws.len());
        assert!(requeue_delay(1) <= REQUEUE_BASE && requeue_delay(30) <= REQUEUE_CAP);
    }
}
