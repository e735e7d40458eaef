//! The stand-in for unimrcpserver that tests, benchmarks and the demo use.
//!
//! It loads the plugin .so exactly as unimrcpserver does, exports the server
//! functions the plugin links against (see `exports`), drives the engine,
//! channel and stream callbacks on threads named like the real ones
//! ("MRCP Server", "MPF Scheduler"), sends MRCP requests and records
//! everything the plugin does, including breaches of the ABI contract
//! (`Server::violations`).

mod apr;
mod channel;
mod context;
mod engine;
mod error;
pub mod exports;
mod headers;
mod log;
mod mapped;
mod media;
mod message;
pub mod plugin;
pub mod pool;
mod record;
mod request;
mod server;
mod worker;

#[cfg(test)]
mod tests;

pub use channel::Channel;
pub use context::orphan_logs;
pub use error::HostError;
pub use exports::{anchor, EXPORTED_SYMBOLS};
pub use headers::{COMPLETION_CAUSE_NAMES, GENERIC_NAMES, SYNTH_NAMES};
pub use log::LogSource;
pub use media::{set_read_frame_probe, MediaClock, ReadFrameProbe, FILL_PATTERN};
pub use plugin::{PluginLibrary, PLUGIN_FILE_NAME, PLUGIN_PATH_ENV};
pub use record::{
    FrameEntry, FrameLog, Kind, Lifecycle, LifecycleKind, LogLine, Recorded, FRAME_ALL_ZERO, FRAME_AUDIO,
    FRAME_BAD_BUFFER, FRAME_EVENT, FRAME_READ_FAILED, FRAME_UNWRITTEN,
};
pub use request::{ProsodyRate, ProsodyVolume, Request};
pub use server::{EngineAnswer, Server, ServerConfig, ANSWER_TIMEOUT, ENGINE_CLOSE_TIMEOUT, ENGINE_ID};

/// Threads of this process (entries in /proc/self/task).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Open file descriptors of this process (entries in /proc/self/fd, not
/// counting the one used to list them).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// Names of this process's threads (from /proc/self/task/*/comm).
pub fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim_end().to_string())
        .collect()
}
