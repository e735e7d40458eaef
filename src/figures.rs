//! What a scrape reads from the engine's own objects (README "Monitoring",
//! "Architecture: where to add a metric"): state is read where it lives,
//! at scrape time, on the metrics thread, never mirrored on the hot paths.
//!
//! To add a figure kept by an engine object: give `EngineFigures` the
//! object (an `Arc`, set in `engine::Engine::open`) and add one
//! `out.gauge(..)` (or `out.counter_with(..)`) line to `read`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::channel::EngineShared;
use crate::ffi;
use crate::metrics::{Reader, Readings};
use crate::tts::capacity::Capacity;

pub struct EngineFigures {
    pub shared: Arc<EngineShared>,
    pub capacity: Arc<Capacity>,
}

impl Reader for EngineFigures {
    fn read(&self, out: &mut Readings) {
        // Channels: the slots are copied out so that the engine's
        // `workers` lock is held for a copy only (lock order: workers →
        // slot → active).
        let slots = self.shared.workers.lock().clone();
        let (mut open, mut speaking) = (0usize, 0usize);
        for slot in &slots {
            if let Some(handle) = slot.lock().as_ref() {
                open += 1;
                speaking += usize::from(handle.speaking());
            }
        }
        out.gauge("channels", "Channels open (created and not yet closed)", open as f64);
        out.gauge("speaks_active", "SPEAKs in progress", speaking as f64);
        out.gauge(
            "worker_threads",
            "Channel worker threads running",
            self.shared.worker_threads.load(Ordering::Relaxed) as f64,
        );

        let f = self.capacity.limiter.figures();
        out.gauge(
            "upstream_concurrency_limit",
            "Upstream requests the engine lets run at once now (configured, stated by the upstream, or learned)",
            f.limit as f64,
        );
        out.gauge("upstream_slots_in_use", "Upstream requests running now", f.in_use as f64);
        out.gauge("upstream_queue_waiting", "Requests waiting in the queue for an upstream slot", f.waiting as f64);
        out.counter_with(
            "upstream_concurrency_rejections",
            "Concurrency 429s (too_many_concurrent_requests) the limiter absorbed",
            &[],
            f.rejections,
        );
        for (i, endpoint) in self.capacity.endpoints().iter().enumerate() {
            let label = [("endpoint", if i == 0 { "primary" } else { "fallback" })];
            out.gauge_with(
                "circuit_state",
                "The endpoint's circuit: 0 closed, 1 open, 2 half-open",
                &label,
                endpoint.breaker.state() as u8 as f64,
            );
            out.counter_with(
                "circuit_transitions",
                "Changes of the endpoint's circuit state",
                &label,
                endpoint.breaker.transitions(),
            );
        }

        let cache = self.shared.cache.lock().clone();
        if let Some(cache) = cache {
            let c = cache.figures();
            out.gauge(
                "cache_bytes",
                "Bytes of prompt cache entries on disk (as of the janitor's last pass)",
                c.bytes as f64,
            );
            out.gauge(
                "cache_entries",
                "Prompt cache entries on disk (as of the janitor's last pass)",
                c.entries as f64,
            );
            out.counter_with("cache_evictions", "Cache entries removed for age or for room", &[], c.evictions);
        }

        out.counter_with(
            "panics_caught",
            "Panics caught and turned into an error answer (process-wide: every engine in the process reports the same count)",
            &[],
            ffi::panic::caught(),
        );
    }
}
