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
use crate::tts::prewarm::Pool;

pub struct EngineFigures {
    pub shared: Arc<EngineShared>,
    pub capacity: Arc<Capacity>,
    /// The warm connections' pool (None: `prewarm_connections=0`).
    pub warm_pool: Option<Arc<Pool>>,
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

        if let Some(budget) = &self.capacity.budget {
            let b = budget.figures();
            out.gauge(
                "budget_shared",
                "1 while the concurrency budget is shared through Redis, 0 while this server runs on its local_share",
                f64::from(u8::from(b.shared)),
            );
            out.counter_with(
                "budget_mode_changes",
                "Changes between the Redis-shared budget and the local share",
                &[],
                b.mode_changes,
            );
            out.gauge("budget_leases_held", "Leases of the shared budget this server holds now", b.leases_held as f64);
            out.counter_with("budget_leases_acquired", "Leases of the shared budget acquired", &[], b.leases_acquired);
            out.counter_with(
                "budget_leases_lost",
                "Leases that expired in Redis before their renewal",
                &[],
                b.leases_lost,
            );
            out.counter_with(
                "budget_lease_overruns",
                "Transfers that ran on after their lease expired",
                &[],
                b.overruns,
            );
            out.gauge_with(
                "budget_acquire_wait_seconds",
                "Time from a ticket queued in Redis to its lease, over the last 4096 leases",
                &[("quantile", "0.5")],
                b.acquire_wait_us_p50 as f64 / 1e6,
            );
            out.gauge_with(
                "budget_acquire_wait_seconds",
                "Time from a ticket queued in Redis to its lease, over the last 4096 leases",
                &[("quantile", "0.99")],
                b.acquire_wait_us_p99 as f64 / 1e6,
            );
        }

        if let Some(pool) = &self.warm_pool {
            out.gauge(
                "warm_connections_ready",
                "Warm upstream connections ready for new channels",
                pool.ready() as f64,
            );
            out.counter_with(
                "warm_connection_probes",
                "Requests (GET /v1/models) sent to open or refresh warm connections",
                &[],
                pool.probes(),
            );
            let (taken, missed) = pool.takes();
            let help = "New channels by whether a warm connection was ready for them";
            out.counter_with("channel_connections", help, &[("connection", "warm")], taken);
            out.counter_with("channel_connections", help, &[("connection", "cold")], missed);
        }

        let cache = self.shared.cache.lock().clone();
        if let Some(cache) = cache {
            if let Some(tier) = cache.redis() {
                let r = tier.figures();
                let help = "Lookups in the shared Redis cache tier after a local miss, by result";
                out.counter_with("cache_redis_lookups", help, &[("result", "hit")], r.hits);
                out.counter_with("cache_redis_lookups", help, &[("result", "miss")], r.misses);
                out.counter_with(
                    "cache_redis_corrupt",
                    "Redis cache tier entries refused for a bad header or checksum (then deleted; also counted as a miss)",
                    &[],
                    r.corrupt,
                );
                out.counter_with(
                    "cache_redis_waits",
                    "Misses that waited for another server's synthesis of the same prompt",
                    &[],
                    r.waits,
                );
                out.counter_with("cache_redis_stores", "Entries written to the shared Redis cache tier", &[], r.stores);
                out.counter_with("cache_redis_errors", "Redis errors of the shared cache tier", &[], r.errors);
            }
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
