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
use crate::ffi::{self, ChannelRef, EngineRef};
use crate::synth::{self, warmup::Warmup, Command, WorkerHandle};
use crate::tts::capacity::Capacity;
use crate::tts::elevenlabs::ElevenLabs;
use crate::tts::Provider;

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
        // The one curl_global_init of the process (curl::init runs it once).
        curl::init();
        let cache = config.cache.clone().and_then(Cache::open);
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
        *self.capacity.lock() = Some(capacity);
        *self.config.lock() = Some(config);
        true
    }

    fn close(&self, engine: EngineRef) {
        let handles: Vec<WorkerHandle> =
            self.shared.workers.lock().iter().filter_map(|slot| slot.lock().take()).collect();
        log::info!("engine close: stopping {} channel thread(s)", handles.len());
        let cache = self.shared.cache.lock().take();
        if let Some(capacity) = self.capacity.lock().as_ref() {
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
        }
        let warmup = self.warmup.lock().take();
        // Joining may wait for a transfer to unwind: never on the MRCP
        // Server thread.
        let stop_all = move || {
            for h in &handles {
                h.send(Command::Shutdown { respond_close: false, reason: "engine closing" });
            }
            for h in handles {
                synth::join(h.thread, "engine close");
            }
            if let Some(warmup) = warmup {
                warmup.stop();
            }
            if let Some(cache) = cache {
                cache.stop();
            }
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
        Channel::new(Arc::clone(&self.shared), config, Arc::clone(&self.provider), capacity)
            .map_err(|e| log::error!("create_channel: cannot create the wake-up fd: {e}"))
            .ok()
    }

    fn attach(&self, channel: &Channel, ch: ChannelRef) -> bool {
        let n = self.channel_seq.fetch_add(1, Ordering::Relaxed);
        match WorkerHandle::spawn(format!("elevenlabs-{n}"), ch, Arc::clone(&channel.shared)) {
            Ok(handle) => {
                *channel.worker.lock() = Some(handle);
                self.shared.add_worker(Arc::clone(&channel.worker));
                log::debug!("channel created (worker elevenlabs-{n})");
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
    }
}
