//! The FFI layer: the only code that names UniMRCP's C declarations
//! (`sys`) or dereferences what the server owns.
//!
//! * `sys`: bindgen's output for our headers (or a real install's).
//! * `handles`: typed handles on the engine and channels, UniMRCP's inline
//!   helpers.
//! * `message`: requests decoded into `mrcp::Request`, replies encoded from
//!   `mrcp::Reply`; `codes` maps the vocabulary both ways.
//! * `vtable`: the `Engine` and `Channel` traits the plugin implements, and
//!   the guarded `extern "C"` trampolines the server calls.
//! * `panic`: the one guard every trampoline runs through.
//! * `logging`: the `log` crate over `apt_log`.
//! * `plugin`: the four exported entry points, declared by `declare_plugin!`.
//! * `curl_share`, `curl_multi`: what curl-rust lacks: a share object (DNS
//!   and TLS sessions across the engine's handles) and a multi handle that
//!   can move to another thread (warm transports).
//! * `pages`: memory mapped from the kernel and unmapped on drop (the
//!   channels' audio buffers).
//! * `eventfd`: the kernel counter a worker sleeps on (`media::Waker`).
//! * `memfd`: an anonymous file in memory, for spilled audio.
//! * `prefetch`: a cache hint for an address that may no longer be ours.
//! * `stack`: how much of a thread's stack is resident; giving back the
//!   pages below the current frame.
//!
//! Depends only on `mrcp` (the owned types it converts to and from).

mod codes;
pub mod curl_multi;
pub mod curl_share;
mod eventfd;
mod handles;
pub mod logging;
mod memfd;
mod message;
mod pages;
pub mod panic;
mod plugin;
mod prefetch;
pub mod stack;
pub(crate) mod sys;
mod vtable;

pub use eventfd::EventFd;
pub use handles::{ChannelRef, EngineRef};
pub use memfd::memory_file;
pub use pages::{release_free_heap, Pages};
pub use plugin::{log_source_set, logger_set, plugin_create, PLUGIN_VERSION};
pub use prefetch::prefetch;
pub use vtable::{Channel, Engine, Stream};
