//! `Server`: the stand-in for unimrcpserver. It loads the plugin on the
//! calling thread (the real server's main thread), runs engine and channel
//! callbacks on an "MRCP Server" thread and the media clock on an
//! "MPF Scheduler" thread, and records what the plugin does.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Condvar, Mutex};

use super::apr::{table_create, table_set};
use super::channel::{self, Channel, ChannelShared};
use super::context::{self, thread_name, violation, HostContext, ServerSlot};
use super::error::HostError;
use super::exports::anchor;
use super::media::{spawn_scheduler, MediaClock, MediaCmd, MediaStats};
use super::plugin::PluginLibrary;
use super::record::LogLine;
use super::worker::{post, run_on, spawn_mrcp_server, SendPtr, Task, WorkerThread};
use crate::sys;

/// How long the plugin may take to answer engine open and channel
/// open/close (as `*_respond` calls), and to return from a callback.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the plugin may take to answer engine close.
pub const ENGINE_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Server::start` waits for another server of the process to end.
pub const SLOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The engine id (the `id` attribute of the `<engine>` element).
pub const ENGINE_ID: &str = "ElevenLabs-1";

/// The parts of unimrcpserver.xml / logger.xml the host emulates.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The engine's `<param name value>` children; None → `engine->config->params`
    /// is NULL (an `<engine>` element with no children).
    pub params: Option<Vec<(String, String)>>,
    /// `<max-channel-count>`; 0 = unlimited. Enforced before create_channel.
    pub max_channel_count: usize,
    /// Log source names configured in logger.xml (e.g. "ELEVENLABS-SYNTH").
    pub log_sources: Vec<String>,
    pub clock: MediaClock,
    /// Also print log lines to stderr (default: when SHIM_LOG is set).
    pub echo_logs: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            params: None,
            max_channel_count: 0,
            log_sources: Vec::new(),
            clock: MediaClock::RealTime,
            echo_logs: std::env::var_os("SHIM_LOG").is_some(),
        }
    }
}

impl ServerConfig {
    /// Default config with these engine params.
    pub fn with_params(params: &[(&str, &str)]) -> ServerConfig {
        ServerConfig {
            params: Some(params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ServerConfig::default()
        }
    }
}

/// One `mrcp_engine_open_respond` / `close_respond` the plugin made.
#[derive(Clone, Debug)]
pub struct EngineAnswer {
    pub at: Instant,
    pub thread: String,
    /// The status for open; always true for close.
    pub status: bool,
}

#[derive(Default)]
pub(crate) struct EngineState {
    pub open_calls: usize,
    pub open_answers: Vec<EngineAnswer>,
    pub close_calls: usize,
    pub close_answers: Vec<EngineAnswer>,
}

/// State shared by the server's threads, channels and the plugin callbacks.
pub(crate) struct ServerShared {
    pub ctx: Arc<HostContext>,
    pub tasks: Sender<Task>,
    pub media: Sender<MediaCmd>,
    pub stats: Arc<MediaStats>,
    /// Held by the media thread during each tick (see ChannelMedia).
    pub tick_lock: Arc<Mutex<()>>,
    pub engine: SendPtr<sys::mrcp_engine_t>,
    pub max_channel_count: usize,
    pub engine_state: Mutex<EngineState>,
    pub engine_cv: Condvar,
    /// Every channel opened (kept to close leftovers at shutdown).
    pub channels: Mutex<Vec<Arc<ChannelShared>>>,
}

/// The engine's event vtable (what `mrcp_engine_open_respond` and
/// `mrcp_engine_close_respond`, inline in UniMRCP, call).
static ENGINE_EVENTS: sys::mrcp_engine_event_vtable_t =
    sys::mrcp_engine_event_vtable_t { on_open: Some(engine_on_open), on_close: Some(engine_on_close) };

/// The server behind an engine's event_obj (a leaked `Weak`, so a call
/// after the server is gone is detected instead of touching freed memory).
unsafe fn engine_router(engine: *mut sys::mrcp_engine_t) -> Option<Arc<ServerShared>> {
    if engine.is_null() {
        return None;
    }
    // SAFETY: engine is the plugin's engine; event_obj was set by the host
    // to a leaked Box<Weak<ServerShared>>.
    let router = unsafe { (*engine).event_obj }.cast::<Weak<ServerShared>>();
    if router.is_null() {
        return None;
    }
    // SAFETY: see above; the Weak is never freed.
    unsafe { (*router).upgrade() }
}

unsafe extern "C" fn engine_on_open(engine: *mut sys::mrcp_engine_t, status: sys::apt_bool_t) -> sys::apt_bool_t {
    // SAFETY: called by the plugin with its engine.
    let Some(server) = (unsafe { engine_router(engine) }) else {
        violation("mrcp_engine_open_respond for an engine whose server is gone");
        return 0;
    };
    let answer = EngineAnswer { at: Instant::now(), thread: thread_name(), status: status != 0 };
    {
        let mut st = server.engine_state.lock();
        if st.open_answers.len() >= st.open_calls {
            violation("mrcp_engine_open_respond without a pending engine open (answered twice?)");
        }
        st.open_answers.push(answer);
    }
    server.engine_cv.notify_all();
    // The real server handles the answer on its own thread.
    let engine = SendPtr::new(engine);
    post(&server.tasks, move || {
        // SAFETY: the engine lives until destroy, after this thread stops.
        unsafe { (*engine.get()).is_open = status };
    });
    1
}

unsafe extern "C" fn engine_on_close(engine: *mut sys::mrcp_engine_t) -> sys::apt_bool_t {
    // SAFETY: called by the plugin with its engine.
    let Some(server) = (unsafe { engine_router(engine) }) else {
        violation("mrcp_engine_close_respond for an engine whose server is gone");
        return 0;
    };
    let answer = EngineAnswer { at: Instant::now(), thread: thread_name(), status: true };
    {
        let mut st = server.engine_state.lock();
        if st.close_answers.len() >= st.close_calls {
            violation("mrcp_engine_close_respond without a pending engine close (answered twice?)");
        }
        st.close_answers.push(answer);
    }
    server.engine_cv.notify_all();
    let engine = SendPtr::new(engine);
    post(&server.tasks, move || {
        // SAFETY: as in engine_on_open.
        unsafe { (*engine.get()).is_open = 0 };
    });
    1
}

/// The stand-in for unimrcpserver with one synthesizer engine: the plugin.
pub struct Server {
    shared: Arc<ServerShared>,
    plugin: Option<PluginLibrary>,
    mrcp_thread: WorkerThread,
    media_thread: WorkerThread,
    clock: MediaClock,
    stopped: bool,
    engine_open: bool,
    /// Set when the plugin may still run code (a callback or answer never
    /// came): the library then stays loaded and its memory allocated.
    must_leak: bool,
    _slot: ServerSlot,
}

impl Server {
    /// Loads the plugin and opens its engine. Only one server runs per
    /// process at a time; this waits for a previous one to be dropped.
    pub fn start(plugin_path: &Path, config: ServerConfig) -> Result<Server, HostError> {
        anchor();
        let slot = ServerSlot::acquire(SLOT_TIMEOUT)
            .ok_or_else(|| HostError::Host("another Server is still running in this process".into()))?;
        let ctx = Arc::new(HostContext::new(config.log_sources.clone(), config.echo_logs));
        context::set_current(Some(ctx.clone()));

        let plugin = match PluginLibrary::load(plugin_path) {
            Ok(p) => p,
            Err(e) => {
                context::set_current(None);
                return Err(with_logs(e, &ctx));
            }
        };
        let engine = plugin.engine();
        install_engine_config(&plugin, &config);

        let stats = Arc::new(MediaStats::default());
        stats.read_nanos.lock().reserve(1 << 18);
        let tick_lock = Arc::new(Mutex::new(()));
        let threads = spawn_mrcp_server().and_then(|(tasks, mrcp_thread)| {
            let (media, media_thread) = spawn_scheduler(config.clock, ctx.epoch, stats.clone(), tick_lock.clone())?;
            Ok((tasks, mrcp_thread, media, media_thread))
        });
        let (tasks, mrcp_thread, media, media_thread) = match threads {
            Ok(t) => t,
            Err(e) => {
                drop(plugin);
                context::set_current(None);
                return Err(HostError::Host(format!("spawning server threads: {e}")));
            }
        };
        let shared = Arc::new(ServerShared {
            ctx,
            tasks,
            media,
            stats,
            tick_lock,
            engine: SendPtr::new(engine),
            max_channel_count: config.max_channel_count,
            engine_state: Mutex::new(EngineState::default()),
            engine_cv: Condvar::new(),
            channels: Mutex::new(Vec::new()),
        });
        let router: &'static Weak<ServerShared> = Box::leak(Box::new(Arc::downgrade(&shared)));
        // SAFETY: the engine is valid and no other thread uses it yet.
        unsafe {
            (*engine).event_vtable = &ENGINE_EVENTS;
            (*engine).event_obj = (router as *const Weak<ServerShared>).cast_mut().cast();
        }

        let mut server = Server {
            shared,
            plugin: Some(plugin),
            mrcp_thread,
            media_thread,
            clock: config.clock,
            stopped: false,
            engine_open: false,
            must_leak: false,
            _slot: slot,
        };
        if let Err(e) = server.open_engine() {
            let e = with_logs(e, &server.shared.ctx);
            let _ = server.stop();
            return Err(e);
        }
        Ok(server)
    }

    /// Engine open on "MRCP Server"; waits for `mrcp_engine_open_respond`.
    fn open_engine(&mut self) -> Result<(), HostError> {
        let engine = self.shared.engine;
        self.shared.engine_state.lock().open_calls += 1;
        let returned = run_on(&self.shared.tasks, ANSWER_TIMEOUT, move || {
            // SAFETY: the engine and its vtable are the plugin's; open runs
            // on the MRCP Server thread as in UniMRCP.
            unsafe {
                let e = engine.get();
                match (*(*e).method_vtable).open {
                    Some(open) => open(e) != 0,
                    None => false,
                }
            }
        });
        let Some(returned) = returned else {
            self.must_leak = true;
            return Err(HostError::Timeout("engine open did not return".into()));
        };
        let answer = self.wait_engine(ANSWER_TIMEOUT, |st| st.open_answers.first().map(|a| a.status));
        match answer {
            Some(true) => {
                self.engine_open = true;
                Ok(())
            }
            Some(false) => Err(HostError::Refused(format!("engine open answered FALSE (open returned {returned})"))),
            None => {
                self.must_leak = true;
                Err(HostError::Timeout(format!(
                    "no mrcp_engine_open_respond within {ANSWER_TIMEOUT:?} (open returned {returned})"
                )))
            }
        }
    }

    fn wait_engine<R>(&self, timeout: Duration, f: impl Fn(&EngineState) -> Option<R>) -> Option<R> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.engine_state.lock();
        loop {
            if let Some(r) = f(&st) {
                return Some(r);
            }
            if self.shared.engine_cv.wait_until(&mut st, deadline).timed_out() {
                return f(&st);
            }
        }
    }

    /// Opens a channel (an MRCP session with the synthesizer) whose
    /// negotiated codec is LPCM at `sample_rate`.
    pub fn open_channel(&self, sample_rate: u32) -> Result<Channel, HostError> {
        if self.stopped {
            return Err(HostError::Host("server is stopped".into()));
        }
        channel::open(&self.shared, sample_rate)
    }

    /// Manual clock: one 10 ms tick for every stream, synchronously. (With
    /// the other clocks this adds an extra tick.)
    pub fn tick(&self) {
        let (tx, rx) = bounded(1);
        if self.shared.media.send(MediaCmd::Tick { reply: tx }).is_ok() && rx.recv_timeout(ANSWER_TIMEOUT).is_err() {
            violation("a media tick did not finish within 10 s (read_frame blocking?)");
        }
    }

    /// `n` manual ticks.
    pub fn tick_n(&self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Engine close on "MRCP Server"; waits for `mrcp_engine_close_respond`.
    pub fn close_engine(&mut self) -> Result<(), HostError> {
        if !self.engine_open {
            return Ok(());
        }
        self.engine_open = false;
        let engine = self.shared.engine;
        let calls = {
            let mut st = self.shared.engine_state.lock();
            st.close_calls += 1;
            st.close_calls
        };
        let returned = run_on(&self.shared.tasks, ENGINE_CLOSE_TIMEOUT, move || {
            // SAFETY: as in open_engine.
            unsafe {
                let e = engine.get();
                match (*(*e).method_vtable).close {
                    Some(close) => close(e) != 0,
                    None => false,
                }
            }
        });
        if returned.is_none() {
            self.must_leak = true;
            return Err(HostError::Timeout("engine close did not return".into()));
        }
        if self.wait_engine(ENGINE_CLOSE_TIMEOUT, |st| (st.close_answers.len() >= calls).then_some(())).is_none() {
            self.must_leak = true;
            return Err(HostError::Timeout(format!("no mrcp_engine_close_respond within {ENGINE_CLOSE_TIMEOUT:?}")));
        }
        Ok(())
    }

    /// Closes leftover channels, closes the engine, stops and joins the
    /// threads, destroys the engine (on this thread) and unloads the plugin.
    /// Logs and recordings stay readable. Never hangs: every wait is
    /// bounded; a plugin that does not answer is left loaded.
    pub fn stop(&mut self) -> Result<(), HostError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut first_error: Option<HostError> = None;
        let mut note = |r: Result<(), HostError>| {
            if let Err(e) = r {
                eprintln!("[unimrcp-shim] shutdown: {e}");
                first_error.get_or_insert(e);
            }
        };

        let channels: Vec<Arc<ChannelShared>> = self.shared.channels.lock().clone();
        for ch in channels {
            let r = ch.close();
            if ch.is_stuck() {
                self.must_leak = true;
            }
            note(r);
        }
        let r = self.close_engine();
        note(r);

        let _ = self.shared.media.send(MediaCmd::Stop);
        let media_joined = self.media_thread.join_timeout(ANSWER_TIMEOUT);
        let _ = self.shared.tasks.send(Task::Stop);
        let mrcp_joined = self.mrcp_thread.join_timeout(ANSWER_TIMEOUT);
        if !media_joined || !mrcp_joined {
            self.must_leak = true;
            note(Err(HostError::Timeout("a server thread is stuck in a plugin callback".into())));
        }

        if let Some(plugin) = self.plugin.take() {
            if self.must_leak {
                eprintln!("[unimrcp-shim] leaving the plugin loaded (it may still be running)");
                plugin.leak();
            } else {
                let engine = self.shared.engine.get();
                // SAFETY: every server thread has stopped; destroy runs on
                // the main thread as in UniMRCP, before the dlclose below.
                unsafe {
                    if let Some(destroy) = (*(*engine).method_vtable).destroy {
                        destroy(engine);
                    }
                }
                drop(plugin);
            }
        }
        context::set_current(None);
        first_error.map_or(Ok(()), Err)
    }

    /// `stop()`, consuming the server.
    pub fn shutdown(mut self) -> Result<(), HostError> {
        self.stop()
    }

    /// Every `apt_log` line so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.shared.ctx.logs.lock().clone()
    }

    /// Log lines as text (one per line), for failure messages.
    pub fn logs_text(&self) -> String {
        let epoch = self.shared.ctx.epoch;
        self.logs().iter().map(|l| l.display(epoch)).collect::<Vec<_>>().join("\n")
    }

    /// ABI contract breaches the host detected (empty for a correct plugin).
    pub fn violations(&self) -> Vec<String> {
        self.shared.ctx.violations.lock().clone()
    }

    /// Duration of every read_frame call so far, in nanoseconds.
    pub fn read_frame_nanos(&self) -> Vec<u64> {
        self.shared.stats.read_nanos.lock().to_vec()
    }

    /// Media ticks so far.
    pub fn ticks(&self) -> u64 {
        self.shared.stats.ticks.load(Ordering::Relaxed)
    }

    /// Real-time ticks that started more than one period late.
    pub fn late_ticks(&self) -> u64 {
        self.shared.stats.late_ticks.load(Ordering::Relaxed)
    }

    pub fn clock(&self) -> MediaClock {
        self.clock
    }

    /// When the server started; log and frame times are relative to it.
    pub fn epoch(&self) -> Instant {
        self.shared.ctx.epoch
    }

    /// `mrcp_engine_open_respond` calls so far.
    pub fn engine_open_answers(&self) -> Vec<EngineAnswer> {
        self.shared.engine_state.lock().open_answers.clone()
    }

    /// `mrcp_engine_close_respond` calls so far.
    pub fn engine_close_answers(&self) -> Vec<EngineAnswer> {
        self.shared.engine_state.lock().close_answers.clone()
    }

    pub fn engine_open_count(&self) -> usize {
        self.engine_open_answers().len()
    }

    pub fn engine_close_count(&self) -> usize {
        self.engine_close_answers().len()
    }

    /// Drops what the host recorded about closed channels (their messages,
    /// frames and audio), the log lines and the read_frame durations so far
    /// (`read_frame_nanos` starts afresh): for long runs whose memory
    /// figures must show the plugin's, not the host's bookkeeping (the
    /// benchmark's batches of channels). A stuck channel is kept: the plugin
    /// may still use its memory.
    pub fn forget_closed_channels(&self) {
        self.shared.channels.lock().retain(|c| !c.is_closed());
        self.shared.ctx.logs.lock().clear();
        // Replaced, not cleared: the old pages go back to the OS (after the
        // lock is released, so the media thread does not wait on munmap).
        let durations = std::mem::take(&mut *self.shared.stats.read_nanos.lock());
        drop(durations);
    }

    /// Channels opened and not yet closed.
    pub fn open_channel_count(&self) -> usize {
        self.shared.channels.lock().iter().filter(|c| c.is_open()).count()
    }

    /// Whether the plugin installed the logger / default source through its
    /// optional hooks (`apt_log_instance_set`, `apt_def_log_source_set`).
    pub fn logger_hooks_called(&self) -> (bool, bool) {
        (self.shared.ctx.logger_set.lock().is_some(), self.shared.ctx.def_source_set.lock().is_some())
    }

    pub fn plugin_version(&self) -> Option<(i32, i32, i32, i32)> {
        self.plugin.as_ref().map(PluginLibrary::version)
    }

    /// The plugin's engine (for tests that inspect it directly).
    pub fn engine_ptr(&self) -> *mut sys::mrcp_engine_t {
        self.shared.engine.get()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Sets `engine->id` and `engine->config` (max channels + params table), as
/// the server does right after `mrcp_plugin_create` returns.
fn install_engine_config(plugin: &PluginLibrary, config: &ServerConfig) {
    let pool = plugin.pool();
    let params = match &config.params {
        Some(list) => {
            let table = table_create(pool);
            for (k, v) in list {
                table_set(pool, table, k, v);
            }
            table
        }
        None => std::ptr::null_mut(),
    };
    let cfg = pool.alloc_value(sys::mrcp_engine_config_t { max_channel_count: config.max_channel_count, params });
    let engine = plugin.engine();
    // SAFETY: the engine was just created and no other thread uses it yet.
    unsafe {
        (*engine).id = pool.dup_bytes(ENGINE_ID.as_bytes());
        (*engine).config = cfg;
        (*engine).dir_layout = std::ptr::null();
        (*engine).codec_manager = std::ptr::null();
    }
}

/// Appends the last log lines to an error's text.
fn with_logs(e: HostError, ctx: &HostContext) -> HostError {
    let logs = ctx.logs.lock();
    if logs.is_empty() {
        return e;
    }
    let tail: Vec<String> = logs.iter().rev().take(20).rev().map(|l| l.display(ctx.epoch)).collect();
    let add = |m: String| format!("{m}\nlast plugin log lines:\n{}", tail.join("\n"));
    match e {
        HostError::Load(m) => HostError::Load(add(m)),
        HostError::Refused(m) => HostError::Refused(add(m)),
        HostError::Timeout(m) => HostError::Timeout(add(m)),
        HostError::Host(m) => HostError::Host(add(m)),
    }
}
