//! Process-wide state behind the exported server functions.
//!
//! Functions like `apt_log` or `apt_log_source_assign` get no pointer that
//! leads back to a particular server object (in UniMRCP they use a global
//! logger too), so the running `Server` registers its `HostContext` here.
//! Only one `Server` runs at a time in a process: `ServerSlot` serialises
//! them (tests of one binary run in parallel threads and would otherwise mix
//! their logs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::{Condvar, Mutex, RwLock};

use super::record::LogLine;

/// What the exported functions record into for the running server.
pub struct HostContext {
    pub epoch: Instant,
    pub echo_logs: bool,
    /// Log source names configured in "logger.xml".
    pub log_sources: Vec<String>,
    pub logs: Mutex<Vec<LogLine>>,
    pub violations: Mutex<Vec<String>>,
    /// The logger pointer the plugin passed to `apt_log_instance_set`.
    pub logger_set: Mutex<Option<usize>>,
    /// The source the plugin passed to `apt_def_log_source_set`.
    pub def_source_set: Mutex<Option<usize>>,
}

impl HostContext {
    pub fn new(log_sources: Vec<String>, echo_logs: bool) -> HostContext {
        HostContext {
            epoch: Instant::now(),
            echo_logs,
            log_sources,
            logs: Mutex::new(Vec::with_capacity(1024)),
            violations: Mutex::new(Vec::new()),
            logger_set: Mutex::new(None),
            def_source_set: Mutex::new(None),
        }
    }
}

static CURRENT: Lazy<RwLock<Option<Arc<HostContext>>>> = Lazy::new(|| RwLock::new(None));

/// Things recorded while no server was running (late plugin threads, unit
/// tests calling the exports directly).
static ORPHAN: Lazy<HostContext> = Lazy::new(|| HostContext::new(Vec::new(), true));

pub fn set_current(ctx: Option<Arc<HostContext>>) {
    *CURRENT.write() = ctx;
}

/// Runs `f` with the running server's context, or the orphan context.
pub fn with_current<R>(f: impl FnOnce(&HostContext) -> R) -> R {
    let current = CURRENT.read().clone();
    match current {
        Some(ctx) => f(&ctx),
        None => f(&ORPHAN),
    }
}

/// Log lines recorded while no server was running.
pub fn orphan_logs() -> Vec<LogLine> {
    ORPHAN.logs.lock().clone()
}

/// Records a breach of the plugin ABI contract that the host detected.
/// Always printed too: these are bugs, and test output is captured anyway.
pub fn violation(msg: impl Into<String>) {
    let msg = msg.into();
    eprintln!("[unimrcp-shim] ABI violation: {msg}");
    with_current(|ctx| ctx.violations.lock().push(msg));
}

/// The OS name of the calling thread (what /proc shows: 15 chars at most);
/// works for threads the plugin created by any means.
pub fn thread_name() -> String {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into buf.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr() as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return String::from("?");
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Lets one `Server` run at a time.
pub struct ServerSlot(());

static SLOT_TAKEN: Mutex<bool> = Mutex::new(false);
static SLOT_FREED: Condvar = Condvar::new();

impl ServerSlot {
    /// Waits (up to `timeout`) until no other server runs in this process.
    pub fn acquire(timeout: Duration) -> Option<ServerSlot> {
        let deadline = Instant::now() + timeout;
        let mut taken = SLOT_TAKEN.lock();
        while *taken {
            if SLOT_FREED.wait_until(&mut taken, deadline).timed_out() && *taken {
                return None;
            }
        }
        *taken = true;
        Some(ServerSlot(()))
    }
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        *SLOT_TAKEN.lock() = false;
        SLOT_FREED.notify_one();
    }
}
