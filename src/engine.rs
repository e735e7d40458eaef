//! The engine: the plugin's one object in the server. open, close and
//! create_channel run on the "MRCP Server" thread, destroy on the main
//! thread. Engine-wide things live here: the config, the provider, the
//! prompt cache and its warm-up, and every channel's worker slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::cache::Cache;
use crate::channel::{Channel, EngineShared};
use crate::config::{self, Config, Refusal};
use crate::events::Observers;
use crate::ffi::{self, ChannelRef, EngineRef};
use crate::figures::EngineFigures;
use crate::metrics::{self, Metrics};
use crate::synth::{self, warmup::Warmup, Command, WorkerHandle};
use crate::tts::capacity::Capacity;
use crate::tts::elevenlabs::ElevenLabs;
use crate::tts::prewarm::{Pool, Prewarm};
use crate::tts::{Network, Provider};

/// engine->obj.
pub struct Engine {
    shared: Arc<EngineShared>,
    /// Set by a successful open.
    config: Mutex<Option<Arc<Config>>>,
    /// The account's slots and the upstream's circuits, from open on.
    capacity: Mutex<Option<Arc<Capacity>>>,
    provider: Arc<dyn Provider>,
    /// The cache warm-up thread, while it runs.
    warmup: Mutex<Option<Warmup>>,
    /// The thread that stops and joins the workers at engine close.
    closer: Mutex<Option<JoinHandle<()>>>,
    channel_seq: AtomicU64,
    /// curl set-up shared by every handle (DNS and TLS session share, CA
    /// file), from open on.
    net: Mutex<Option<Arc<Network>>>,
    /// The pre-warm thread, while it runs, and its pool of warm transports
    /// (what new channels take from). Both leaves, never held together.
    prewarm: Mutex<Option<Prewarm>>,
    warm_pool: Mutex<Option<Arc<Pool>>>,
    /// The engine's observers (its metrics), from open on; every channel
    /// and SPEAK carries a copy.
    observers: Mutex<Observers>,
    /// The metrics endpoint and textfile writer, while they run.
    exporters: Mutex<Exporters>,
}

/// The threads that hand the metrics out (README "Monitoring").
#[derive(Default)]
struct Exporters {
    endpoint: Option<metrics::http::Endpoint>,
    textfile: Option<metrics::textfile::Writer>,
}

impl Exporters {
    /// Starts what the config asks for. An address in use is one error
    /// line, and the plugin runs on without the endpoint.
    fn start(config: &Config, metrics: &Arc<Metrics>) -> Exporters {
        let mut out = Exporters::default();
        if let Some(addr) = config.metrics.listen {
            match metrics::http::Endpoint::start(addr, Arc::clone(metrics)) {
                Ok(endpoint) => {
                    log::info!("metrics: serving http://{}/metrics", endpoint.local_addr());
                    out.endpoint = Some(endpoint);
                }
                Err(e) => log::error!("metrics_listen {addr}: cannot serve metrics there ({e}); running without them"),
            }
        }
        if let Some(path) = &config.metrics.textfile {
            match metrics::textfile::Writer::start(path.clone(), config.metrics.interval, Arc::clone(metrics)) {
                Ok(writer) => {
                    log::info!("metrics: writing {} every {} ms", path.display(), config.metrics.interval.as_millis());
                    out.textfile = Some(writer);
                }
                Err(e) => log::error!("metrics_textfile: cannot start its thread ({e}); running without it"),
            }
        }
        out
    }

    /// Ends and joins the threads (file I/O, joins: not on the MRCP Server
    /// thread).
    fn stop(self) {
        if let Some(endpoint) = self.endpoint {
            endpoint.stop();
        }
        if let Some(writer) = self.textfile {
            writer.stop();
        }
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine {
            shared: Arc::new(EngineShared::default()),
            config: Mutex::new(None),
            capacity: Mutex::new(None),
            provider: Arc::new(ElevenLabs),
            warmup: Mutex::new(None),
            closer: Mutex::new(None),
            channel_seq: AtomicU64::new(0),
            net: Mutex::new(None),
            prewarm: Mutex::new(None),
            warm_pool: Mutex::new(None),
            observers: Mutex::new(Observers::default()),
            exporters: Mutex::new(Exporters::default()),
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl ffi::Engine for Engine {
    type Channel = Channel;

    fn open(&self, engine: EngineRef) -> bool {
        let params = engine.params();
        for unknown in Config::unknown_params(&params) {
            log::warn!("engine param '{unknown}' is not known and is ignored");
        }
        let config = match Config::from_params(&params, |path| std::fs::read_to_string(path)) {
            Ok(config) => config,
            Err(e) => {
                log::error!("engine open failed: {e}");
                return false;
            }
        };
        if let Some(ca) = &config.ca_file {
            // Checked now, so a typo fails the open rather than every SPEAK.
            if let Err(e) = std::fs::File::open(ca) {
                log::error!("engine open failed: engine param 'ca_file': cannot read '{ca}': {e}");
                return false;
            }
        }
        // The one curl_global_init of the process (curl::init runs it once).
        curl::init();
        let net = Arc::new(Network::new(&config));
        let tier = config
            .shared
            .as_ref()
            .and_then(|s| s.cache.clone().map(|c| crate::cache::RedisTier::new(s.redis.clone(), c)));
        let cache = config.cache.clone().and_then(|c| Cache::open(c, tier));
        if let Some(cache) = &cache {
            let c = cache.config();
            log::info!("cache: {} (max {} MiB, max age {:?})", c.dir.display(), c.max_bytes / (1024 * 1024), c.max_age);
        }
        let config = Arc::new(config);
        let capacity = Capacity::new(&config);
        if let (Some(cache), Some(file)) = (&cache, &config.cache_warmup_file) {
            *self.warmup.lock() = Warmup::start(
                file.clone(),
                Arc::clone(&config),
                Arc::clone(cache),
                Arc::clone(&self.provider),
                Arc::clone(&capacity),
                Arc::clone(&net),
            );
        }
        *self.shared.cache.lock() = cache;
        if let Some(lang) = &config.language_code {
            // Not fatal: a SPEAK's own language still works; this one would
            // fail every SPEAK that relies on it.
            if let Err(Refusal::Language(why)) = config::apply_language(&mut Config::clone(&config), lang) {
                log::warn!("engine param language_code={lang}: {why}; SPEAKs without a language of their own will be refused with 005");
            }
        }
        log::info!(
            "engine open: base_url={} voice_id={} model_id={} max_buffer_ms={} (curl {})",
            config.base_url,
            config.voice_id,
            config.model_id,
            config.max_buffer_ms,
            curl::Version::get().version()
        );
        log::info!(
            "upstream capacity: max_concurrent_requests={} queue_timeout_ms={} max_retries={} circuit_failure_threshold={} circuit_open_ms={} fallback_base_url={} max_speak_chars={}",
            config.max_concurrent_requests.map_or_else(|| "learned".to_owned(), |n| n.to_string()),
            config.queue_timeout.as_millis(),
            config.max_retries,
            config.circuit_failure_threshold,
            config.circuit_open.as_millis(),
            config.fallback_base_url.as_deref().unwrap_or("-"),
            config.max_speak_chars
        );
        log::info!(
            "connections: prewarm_connections={} prewarm_refresh_ms={} ca_file={} shared DNS/TLS sessions={}",
            config.prewarm_connections,
            config.prewarm_refresh.as_millis(),
            config.ca_file.as_deref().unwrap_or("system CAs"),
            if net.share().is_some() { "on" } else { "off" }
        );
        let prewarm =
            Prewarm::start(Arc::clone(&config), Arc::clone(&net), Arc::clone(&self.provider), Arc::clone(&capacity));
        *self.warm_pool.lock() = prewarm.as_ref().map(|p| Arc::clone(p.pool()));
        *self.prewarm.lock() = prewarm;
        *self.net.lock() = Some(net);
        if let Some(shared) = &config.shared {
            log::info!(
                "shared budget: {} slots shared through Redis {} as '{}' (lease_ttl_ms={}, local_share={} of expected_servers={}), cache tier {}",
                shared.limit,
                shared.redis,
                shared.budget_key,
                shared.lease_ttl.as_millis(),
                shared.local_share,
                shared.expected_servers,
                if shared.cache.is_some() { "on" } else { "off" }
            );
        }
        let figures = EngineFigures {
            shared: Arc::clone(&self.shared),
            capacity: Arc::clone(&capacity),
            warm_pool: self.warm_pool.lock().clone(),
        };
        let metrics = Arc::new(Metrics::new(&config.model_id, vec![Box::new(figures)]));
        *self.observers.lock() = Observers::new(vec![Arc::clone(&metrics) as Arc<dyn crate::events::Observer>]);
        let previous = std::mem::replace(&mut *self.exporters.lock(), Exporters::start(&config, &metrics));
        if previous.endpoint.is_some() || previous.textfile.is_some() {
            // Open after open without a close: the old ones go (their
            // threads end within their bounded waits).
            previous.stop();
        }
        *self.capacity.lock() = Some(capacity);
        *self.config.lock() = Some(config);
        true
    }

    fn close(&self, engine: EngineRef) {
        let handles: Vec<WorkerHandle> =
            self.shared.workers.lock().iter().filter_map(|slot| slot.lock().take()).collect();
        log::info!("engine close: stopping {} channel thread(s)", handles.len());
        let cache = self.shared.cache.lock().take();
        if let Some(tier) = cache.as_ref().and_then(|c| c.redis()) {
            let t = tier.figures();
            log::info!(
                "cache tier at close: {} hits, {} misses, {} stored, {} waited for another server, {} corrupt refused, {} Redis errors",
                t.hits,
                t.misses,
                t.stores,
                t.waits,
                t.corrupt,
                t.errors
            );
        }
        let capacity = self.capacity.lock().clone();
        if let Some(capacity) = capacity.as_ref() {
            let f = capacity.limiter.figures();
            let circuits: Vec<String> = capacity
                .endpoints()
                .iter()
                .map(|e| format!("{} {:?} after {} changes", e.base_url, e.breaker.state(), e.breaker.transitions()))
                .collect();
            log::info!(
                "upstream capacity at close: limit {} slots, peak {} in use, {} concurrency 429s; circuits: {}",
                f.limit,
                f.peak_in_use,
                f.rejections,
                circuits.join(", ")
            );
            if let Some(budget) = &capacity.budget {
                let b = budget.figures();
                log::info!(
                    "shared budget at close: {} now, {} mode changes, {} leases acquired (wait p50 {} us, p99 {} us), {} held, {} expired before renewal, {} overruns",
                    if b.shared { "shared" } else { "local" },
                    b.mode_changes,
                    b.leases_acquired,
                    b.acquire_wait_us_p50,
                    b.acquire_wait_us_p99,
                    b.leases_held,
                    b.leases_lost,
                    b.overruns
                );
            }
        }
        let warmup = self.warmup.lock().take();
        // New channels open their own connections from now on.
        self.warm_pool.lock().take();
        let prewarm = self.prewarm.lock().take();
        let exporters = std::mem::take(&mut *self.exporters.lock());
        let shared = Arc::clone(&self.shared);
        // Joining may wait for a transfer to unwind: never on the MRCP
        // Server thread.
        let stop_all = move || {
            for h in &handles {
                h.send(Command::Shutdown { respond_close: false, reason: "engine closing" });
            }
            for h in handles {
                synth::join(h.thread, "engine close");
            }
            // The SPEAKs are over: the spill files they kept for the next
            // ones go too.
            synth::close_spill_files();
            if let Some(warmup) = warmup {
                warmup.stop();
            }
            if let Some(prewarm) = prewarm {
                prewarm.stop();
            }
            if let Some(capacity) = capacity {
                capacity.stop();
            }
            if let Some(cache) = cache {
                cache.stop();
            }
            exporters.stop();
            shared.join_trim();
            engine.close_respond();
        };
        let mut closer = self.closer.lock();
        // A previous closer (close called twice) is joined first.
        if let Some(previous) = closer.take() {
            let _ = previous.join();
        }
        match std::thread::Builder::new().name("elevenlabs-close".into()).spawn(stop_all) {
            Ok(thread) => *closer = Some(thread),
            Err(e) => {
                log::error!("engine close: cannot start the closing thread ({e}); stopping inline");
                // stop_all was moved into the failed spawn; nothing left to do
                // but answer. Workers exit when their channels are destroyed.
                engine.close_respond();
            }
        }
    }

    fn new_channel(&self) -> Option<Channel> {
        let config = self.config.lock().clone();
        let capacity = self.capacity.lock().clone();
        let (Some(config), Some(capacity)) = (config, capacity) else {
            log::error!("create_channel before a successful engine open");
            return None;
        };
        let observers = self.observers.lock().clone();
        Channel::new(Arc::clone(&self.shared), config, Arc::clone(&self.provider), capacity, observers)
            .map_err(|e| log::error!("create_channel: cannot create the wake-up fd: {e}"))
            .ok()
    }

    fn attach(&self, channel: &Channel, ch: ChannelRef) -> bool {
        let n = self.channel_seq.fetch_add(1, Ordering::Relaxed);
        let Some(net) = self.net.lock().clone() else {
            log::error!("create_channel before a successful engine open");
            return false;
        };
        // Taken from the pool under its leaf lock (no wait); the pre-warm
        // thread makes the next one.
        let pool = self.warm_pool.lock().clone();
        let warm = pool.and_then(|pool| pool.take());
        let warmed = warm.is_some();
        let live = Arc::clone(&self.shared.worker_threads);
        match WorkerHandle::spawn(format!("elevenlabs-{n}"), ch, Arc::clone(&channel.shared), net, warm, live) {
            Ok(handle) => {
                *channel.worker.lock() = Some(handle);
                self.shared.add_worker(Arc::clone(&channel.worker));
                log::debug!("channel created (worker elevenlabs-{n}, warm connection: {warmed})");
                true
            }
            Err(e) => {
                log::error!("create_channel: cannot start the channel thread: {e}");
                false
            }
        }
    }

    fn destroy(&self) {
        if let Some(closer) = self.closer.lock().take() {
            let _ = closer.join();
        }
        // A trim started by a channel destroyed after engine close.
        self.shared.join_trim();
    }
}
