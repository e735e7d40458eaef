//! A circuit breaker per upstream endpoint.
//!
//! When ElevenLabs is down, every SPEAK would otherwise wait for its own
//! connect or first-byte timeout before failing, one after the other. After
//! `circuit_failure_threshold` consecutive failures (connect errors,
//! timeouts, 5xx, 401) the circuit opens for `circuit_open_ms`: SPEAKs that
//! need the upstream end at once (cache hits still play). Then one probe
//! request is let through (half-open); its success closes the circuit, its
//! failure opens it again. Every change of state is one log line.
//!
//! Lock order: `state` is a leaf; nothing is called under it but the clock
//! and the log.

use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// What the breaker says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// The one request let through while half-open; report how it went.
    Probe,
    Refused {
        /// When the circuit opened (UTC, for the Completion-Reason).
        since: String,
        last_error: String,
    },
}

/// The state, as numbers for metrics: 0 closed, 1 open, 2 half-open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out (or was, and was abandoned: then the next request
    /// probes).
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// When the circuit last opened, and the failure that opened it (or
    /// the latest one since).
    opened_at: Option<SystemTime>,
    last_error: String,
    transitions: u64,
}

pub struct Breaker {
    /// Which endpoint, for the log: "primary" or "fallback".
    name: &'static str,
    /// 0: never opens.
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(name: &'static str, threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            name,
            threshold,
            open_for,
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                opened_at: None,
                last_error: String::new(),
                transitions: 0,
            }),
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.inner.lock().state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Changes of state so far.
    pub fn transitions(&self) -> u64 {
        self.inner.lock().transitions
    }

    /// May a request go to this endpoint now?
    pub fn admit(&self) -> Admission {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed { .. } => Admission::Closed,
            State::Open { until } if Instant::now() >= until => {
                inner.state = State::HalfOpen { probing: true };
                inner.transitions += 1;
                log::warn!("upstream circuit ({}) half-open: letting one probe request through", self.name);
                Admission::Probe
            }
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::Open { .. } | State::HalfOpen { probing: true } => Admission::Refused {
                since: inner.opened_at.map(utc).unwrap_or_default(),
                last_error: inner.last_error.clone(),
            },
        }
    }

    /// The upstream answered (anything but a failure): it is there.
    pub fn success(&self) {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed { ref mut failures } => *failures = 0,
            State::HalfOpen { .. } | State::Open { .. } => {
                inner.state = State::Closed { failures: 0 };
                inner.transitions += 1;
                log::warn!("upstream circuit ({}) closed: the probe request succeeded", self.name);
            }
        }
    }

    /// The upstream failed a request (connect error, timeout, 5xx, 401).
    pub fn failure(&self, reason: &str) {
        let mut inner = self.inner.lock();
        inner.last_error = reason.to_owned();
        let open = match inner.state {
            State::Closed { ref mut failures } => {
                *failures += 1;
                self.threshold > 0 && *failures >= self.threshold
            }
            State::HalfOpen { .. } => true,
            // A request admitted before the circuit opened.
            State::Open { .. } => false,
        };
        if open {
            let probe_failed = matches!(inner.state, State::HalfOpen { .. });
            inner.state = State::Open { until: Instant::now() + self.open_for };
            inner.opened_at = Some(SystemTime::now());
            inner.transitions += 1;
            if probe_failed {
                log::warn!(
                    "upstream circuit ({}) open again for {} ms: the probe failed: {reason}",
                    self.name,
                    self.open_for.as_millis()
                );
            } else {
                log::warn!(
                    "upstream circuit ({}) open for {} ms after {} consecutive failures, last: {reason}",
                    self.name,
                    self.open_for.as_millis(),
                    self.threshold
                );
            }
        }
    }

    /// A probe ended without a verdict (the SPEAK was stopped): the next
    /// request probes instead.
    pub fn abandon_probe(&self) {
        let mut inner = self.inner.lock();
        if let State::HalfOpen { probing: true } = inner.state {
            inner.state = State::HalfOpen { probing: false };
        }
    }
}

/// `2026-12-01T17:30:05Z`.
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian
    // calendar's 400-year cycle, counted from 0000-03-01).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_refuses_with_the_last_error() {
        let b = Breaker::new("primary", 3, Duration::from_secs(3600));
        b.failure("cannot connect");
        b.success(); // the count is of consecutive failures
        b.failure("one");
        b.failure("two");
        assert_eq!(b.admit(), Admission::Closed);
        b.failure("upstream HTTP 503");
        assert_eq!(b.state(), CircuitState::Open);
        match b.admit() {
            Admission::Refused { since, last_error } => {
                assert_eq!(last_error, "upstream HTTP 503");
                assert!(since.ends_with('Z') && since.len() == 20, "{since}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.transitions(), 1);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_result_decides() {
        let b = Breaker::new("primary", 1, Duration::ZERO);
        b.failure("down");
        assert_eq!(b.admit(), Admission::Probe);
        assert!(matches!(b.admit(), Admission::Refused { .. }), "one probe at a time");
        b.failure("still down");
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(), Admission::Probe, "open_for is zero: probe again");
        b.abandon_probe();
        assert_eq!(b.admit(), Admission::Probe, "an abandoned probe is replaced");
        b.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(), Admission::Closed);
        assert_eq!(b.transitions(), 5);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new("primary", 0, Duration::from_secs(1));
        for _ in 0..100 {
            b.failure("x");
        }
        assert_eq!(b.admit(), Admission::Closed);
    }

    #[test]
    fn utc_formats_civil_time() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_146_205);
        assert_eq!(utc(t), "2026-12-01T17:30:05Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00Z");
    }
}
