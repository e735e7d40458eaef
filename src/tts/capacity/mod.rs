//! Engine-wide upstream capacity: how many requests may be in flight
//! (`limiter`), whether the upstream is there at all (`breaker`, one per
//! endpoint, with an optional fallback endpoint), and what a failed attempt
//! means for the next one (`retry`).
//!
//! Shared by every channel of the engine (and the cache warm-up); each
//! part behind its own leaf lock. The waiting itself happens on the
//! caller's thread (a channel's worker), never on the MRCP Server or media
//! thread: see synth/player.rs.

pub mod breaker;
pub mod budget;
pub mod limiter;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

pub use breaker::{Admission, Breaker};
pub use budget::Budget;
pub use limiter::{Limiter, Permit, Ticket};
pub use retry::{Health, Next};

use crate::config::Config;
use crate::error::Failure;

/// One base URL and its circuit.
pub struct Endpoint {
    pub base_url: String,
    pub breaker: Breaker,
}

pub struct Capacity {
    pub limiter: Arc<Limiter>,
    /// The primary (`base_url`), then `fallback_base_url` if set.
    endpoints: Vec<Endpoint>,
    pub max_retries: u32,
    pub queue_timeout: Duration,
    /// The thread that shares the limit through Redis (`redis_url`).
    pub budget: Option<Budget>,
}

impl Capacity {
    pub fn new(config: &Config) -> Arc<Capacity> {
        let breaker = |name| Breaker::new(name, config.circuit_failure_threshold, config.circuit_open);
        let mut endpoints = vec![Endpoint { base_url: config.base_url.clone(), breaker: breaker("primary") }];
        if let Some(url) = &config.fallback_base_url {
            endpoints.push(Endpoint { base_url: url.clone(), breaker: breaker("fallback") });
        }
        let (limiter, budget) = match config.shared.as_ref().and_then(Budget::start) {
            Some((limiter, budget)) => (limiter, Some(budget)),
            None => (Limiter::new(config.max_concurrent_requests), None),
        };
        Arc::new(Capacity {
            limiter,
            budget,
            endpoints,
            max_retries: config.max_retries,
            queue_timeout: config.queue_timeout,
        })
    }

    /// Stops the budget thread, releasing its leases (engine close, off
    /// the MRCP Server thread).
    pub fn stop(&self) {
        if let Some(budget) = &self.budget {
            budget.stop();
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Where the next request goes: the primary while its circuit lets it,
    /// else the fallback while its circuit lets it. When neither does, the
    /// request fails at once with the primary's reason.
    pub fn route(self: &Arc<Self>) -> Result<Pass, Failure> {
        let mut refusal = None;
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            match endpoint.breaker.admit() {
                Admission::Closed => return Ok(Pass { capacity: Arc::clone(self), index, probe: false }),
                Admission::Probe => return Ok(Pass { capacity: Arc::clone(self), index, probe: true }),
                Admission::Refused { since, last_error } => {
                    refusal.get_or_insert(Failure::Unavailable { since, last_error });
                }
            }
        }
        Err(refusal.expect("at least the primary endpoint"))
    }
}

/// Leave to send one attempt to one endpoint; says how it went.
pub struct Pass {
    capacity: Arc<Capacity>,
    index: usize,
    probe: bool,
}

impl Pass {
    pub fn base_url(&self) -> &str {
        &self.capacity.endpoints[self.index].base_url
    }

    pub fn is_fallback(&self) -> bool {
        self.index > 0
    }

    /// Tells the endpoint's circuit what the attempt showed.
    pub fn report(mut self, health: Health, reason: &str) {
        let breaker = &self.capacity.endpoints[self.index].breaker;
        match health {
            Health::Up => breaker.success(),
            Health::Down => breaker.failure(reason),
            Health::Unknown => {
                if self.probe {
                    breaker.abandon_probe();
                }
            }
        }
        self.probe = false;
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        // A probe that ended without a verdict (STOP): the next one probes.
        if self.probe {
            self.capacity.endpoints[self.index].breaker.abandon_probe();
        }
    }
}
