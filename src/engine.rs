//! The engine: the plugin's one object in the server. Its vtable runs on
//! the "MRCP Server" thread (open, close, create_channel) and the main
//! thread (destroy).

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::abi::{self, ChannelRef, SendPtr};
use crate::channel::{Channel, CHANNEL_VTABLE, SAMPLE_RATE_MASK};
use crate::config::Config;
use crate::stream::STREAM_VTABLE;
use crate::sys;
use crate::worker::{self, Command, WorkerHandle};

/// What channels share with the engine.
#[derive(Default)]
pub struct EngineState {
    /// Set by a successful open.
    pub config: Mutex<Option<Arc<Config>>>,
    /// The prompt cache, when enabled and usable.
    pub cache: Mutex<Option<Arc<crate::cache::Cache>>>,
    /// The cache warm-up thread, while it runs.
    warmup: Mutex<Option<crate::warmup::Warmup>>,
    /// Every channel's worker slot, so engine close can stop them all.
    workers: Mutex<Vec<Arc<Mutex<Option<WorkerHandle>>>>>,
    channel_seq: std::sync::atomic::AtomicU64,
}

impl EngineState {
    pub fn forget_worker(&self, slot: &Arc<Mutex<Option<WorkerHandle>>>) {
        self.workers.lock().retain(|s| !Arc::ptr_eq(s, slot));
    }
}

/// engine->obj.
pub struct Engine {
    pub state: Arc<EngineState>,
    /// The thread that stops and joins the workers at engine close.
    closer: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    pub fn new() -> Engine {
        Engine { state: Arc::new(EngineState::default()), closer: Mutex::new(None) }
    }

    fn open(&self, engine: *mut sys::mrcp_engine_t) -> bool {
        // SAFETY: the server sets engine->config before open.
        let params = unsafe { abi::engine_params(engine) };
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
        let cache = config.cache.clone().and_then(crate::cache::Cache::open);
        if let Some(cache) = &cache {
            let c = cache.config();
            log::info!("cache: {} (max {} MiB, max age {:?})", c.dir.display(), c.max_bytes / (1024 * 1024), c.max_age);
        }
        let config = Arc::new(config);
        if let (Some(cache), Some(file)) = (&cache, &config.cache_warmup_file) {
            *self.state.warmup.lock() =
                crate::warmup::Warmup::start(file.clone(), Arc::clone(&config), Arc::clone(cache));
        }
        *self.state.cache.lock() = cache;
        if let Some(lang) = &config.language_code {
            // Not fatal: a SPEAK's own language still works; this one would
            // fail every SPEAK that relies on it.
            if let Err(crate::speak_params::Refusal::Language(why)) =
                crate::speak_params::apply_language(&mut Config::clone(&config), lang)
            {
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
        *self.state.config.lock() = Some(config);
        true
    }

    fn close(&self, engine: *mut sys::mrcp_engine_t) {
        let handles: Vec<WorkerHandle> =
            self.state.workers.lock().iter().filter_map(|slot| slot.lock().take()).collect();
        log::info!("engine close: stopping {} channel thread(s)", handles.len());
        let engine = SendPtr(engine);
        let cache = self.state.cache.lock().take();
        let warmup = self.state.warmup.lock().take();
        // Joining may wait for a transfer to unwind: never on the MRCP
        // Server thread.
        let stop_all = move || {
            for h in &handles {
                h.send(Command::Shutdown { respond_close: false, reason: "engine closing" });
            }
            for h in handles {
                worker::join(h.thread, "engine close");
            }
            if let Some(warmup) = warmup {
                warmup.stop();
            }
            if let Some(cache) = cache {
                cache.stop();
            }
            let engine = engine;
            // SAFETY: the engine outlives close (destroy comes after).
            unsafe { abi::engine_close_respond(engine.0) };
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
                // SAFETY: as above.
                unsafe { abi::engine_close_respond(engine.0) };
            }
        }
    }

    fn destroy(&self) {
        if let Some(closer) = self.closer.lock().take() {
            let _ = closer.join();
        }
    }

    fn create_channel(
        &self,
        engine: *mut sys::mrcp_engine_t,
        pool: *mut sys::apr_pool_t,
    ) -> *mut sys::mrcp_engine_channel_t {
        let Some(config) = self.state.config.lock().clone() else {
            log::error!("create_channel before a successful engine open");
            return std::ptr::null_mut();
        };
        let channel = match Channel::new(Arc::clone(&self.state), config) {
            Ok(c) => Box::new(c),
            Err(e) => {
                log::error!("create_channel: cannot create the wake-up fd: {e}");
                return std::ptr::null_mut();
            }
        };
        let slot = Arc::clone(&channel.worker);
        let shared = Arc::clone(&channel.shared);
        let obj = abi::into_obj(channel);
        // SAFETY: exported server functions with the session pool; obj stays
        // valid until channel destroy; our vtables are 'static.
        let ch = unsafe {
            let caps = sys::mpf_stream_capabilities_create(sys::STREAM_DIRECTION_RECEIVE, pool);
            let termination = if caps.is_null() || !abi::codec_capabilities_add(caps, SAMPLE_RATE_MASK, "LPCM") {
                std::ptr::null_mut()
            } else {
                sys::mrcp_engine_audio_termination_create(obj, &STREAM_VTABLE, caps, pool)
            };
            if termination.is_null() {
                std::ptr::null_mut()
            } else {
                sys::mrcp_engine_channel_create(engine, &CHANNEL_VTABLE, obj, termination, pool)
            }
        };
        if ch.is_null() {
            log::error!("create_channel: the server refused the termination or channel");
            // SAFETY: obj came from into_obj above and nobody else holds it.
            drop(unsafe { Box::from_raw(obj as *mut Channel) });
            return std::ptr::null_mut();
        }
        // SAFETY: ch was just created by the server.
        let chref = unsafe { ChannelRef::new(ch) };
        let n = self.state.channel_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match WorkerHandle::spawn(format!("elevenlabs-{n}"), chref, shared) {
            Ok(handle) => {
                *slot.lock() = Some(handle);
                self.state.workers.lock().push(slot);
                log::debug!("channel created (worker elevenlabs-{n})");
                ch
            }
            Err(e) => {
                log::error!("create_channel: cannot start the channel thread: {e}");
                // SAFETY: the server never saw this channel; reclaim our object.
                unsafe {
                    (*ch).method_obj = std::ptr::null_mut();
                    drop(Box::from_raw(obj as *mut Channel));
                }
                std::ptr::null_mut()
            }
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

// ------------------------------------------------------------- trampolines

/// # Safety
/// `engine` is the engine we created in mrcp_plugin_create.
unsafe fn this<'a>(engine: *mut sys::mrcp_engine_t) -> Option<&'a Engine> {
    // SAFETY: engine->obj is our leaked Box<Engine>, alive until destroy.
    unsafe { engine.as_ref().and_then(|e| (e.obj as *const Engine).as_ref()) }
}

unsafe extern "C" fn engine_destroy(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    // As channel_destroy: out first, so a panicking body cannot leak it.
    // SAFETY: destroy is the server's last call on the engine; obj is the
    // Box<Engine> we leaked in mrcp_plugin_create.
    let obj = unsafe {
        let Some(e) = engine.as_mut() else { return abi::FALSE };
        let obj = std::mem::replace(&mut e.obj, std::ptr::null_mut()) as *mut Engine;
        if obj.is_null() {
            return abi::FALSE;
        }
        Box::from_raw(obj)
    };
    let done = crate::panic::guard("engine_destroy", || obj.destroy());
    let freed = crate::panic::guard("engine_destroy (free)", move || drop(obj));
    abi::apt_bool(done.is_some() && freed.is_some())
}

unsafe extern "C" fn engine_open(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    // SAFETY: our engine.
    let ok = crate::panic::guard("engine_open", || unsafe { this(engine) }.is_some_and(|e| e.open(engine)));
    // SAFETY: our engine; open is always answered.
    unsafe { abi::engine_open_respond(engine, ok == Some(true)) };
    abi::TRUE
}

unsafe extern "C" fn engine_close(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    let done = crate::panic::guard("engine_close", || {
        // SAFETY: our engine.
        match unsafe { this(engine) } {
            Some(e) => {
                e.close(engine);
                true
            }
            None => false,
        }
    });
    if done != Some(true) {
        // SAFETY: our engine; close is always answered.
        unsafe { abi::engine_close_respond(engine) };
    }
    abi::TRUE
}

unsafe extern "C" fn engine_create_channel(
    engine: *mut sys::mrcp_engine_t,
    pool: *mut sys::apr_pool_t,
) -> *mut sys::mrcp_engine_channel_t {
    crate::panic::guard("create_channel", || {
        // SAFETY: our engine.
        match unsafe { this(engine) } {
            Some(e) => e.create_channel(engine, pool),
            None => std::ptr::null_mut(),
        }
    })
    .unwrap_or(std::ptr::null_mut())
}

pub static ENGINE_VTABLE: sys::mrcp_engine_method_vtable_t = sys::mrcp_engine_method_vtable_t {
    destroy: Some(engine_destroy),
    open: Some(engine_open),
    close: Some(engine_close),
    create_channel: Some(engine_create_channel),
};
