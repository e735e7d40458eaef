//! The plugin's exported entry points. `declare_plugin!` (used once, in
//! lib.rs) defines the four symbols UniMRCP looks up; each calls a guarded
//! function here.

use super::handles::{apt_bool, FALSE};
use super::panic::guard;
use super::{logging, sys, vtable};

/// The UniMRCP plugin ABI this plugin was written against: 1.8.0. The
/// server loads plugins whose version is not newer than its own.
pub const PLUGIN_VERSION: sys::mrcp_plugin_version_t =
    sys::mrcp_plugin_version_t { major: 1, minor: 8, patch: 0, is_dev: 0 };

/// mrcp_plugin_create: installs the logger and the panic hook, then creates
/// the engine around `make()`.
///
/// # Safety
/// Called by unimrcpserver with the pool the engine lives in.
pub unsafe fn plugin_create<E: vtable::Engine>(
    pool: *mut sys::apr_pool_t,
    make: impl FnOnce() -> E,
) -> *mut sys::mrcp_engine_t {
    guard("mrcp_plugin_create", || {
        logging::init();
        super::panic::install_hook();
        // SAFETY: forwarded from the server's call.
        let engine = unsafe { vtable::create_engine(make(), pool) };
        if !engine.is_null() {
            log::info!("ElevenLabs synthesizer plugin {} loaded", env!("CARGO_PKG_VERSION"));
        }
        engine
    })
    .unwrap_or(std::ptr::null_mut())
}

/// mrcp_plugin_logger_set: the server hands us its logger.
///
/// # Safety
/// Called by unimrcpserver with its logger.
pub unsafe fn logger_set(logger: *mut sys::apt_logger_t) -> sys::apt_bool_t {
    // SAFETY: forwarded from the server's call.
    let ok = guard("mrcp_plugin_logger_set", || unsafe { sys::apt_log_instance_set(logger) });
    apt_bool(ok.is_some_and(|r| r != FALSE))
}

/// mrcp_plugin_log_source_set: the server's default log source; we then
/// look up our own, `ELEVENLABS-SYNTH`, configured in logger.xml.
///
/// # Safety
/// Called by unimrcpserver with its default log source.
pub unsafe fn log_source_set(orig: *mut sys::apt_log_source_t) {
    // SAFETY: forwarded from the server's call.
    let _ = guard("mrcp_plugin_log_source_set", || unsafe { logging::adopt_log_source(orig) });
}

/// Declares the plugin's exported symbols for an engine type: the version,
/// the creator and the two log setters, and nothing else (the server loads
/// plugins RTLD_GLOBAL, so every export is visible server-wide).
#[macro_export]
macro_rules! declare_plugin {
    ($engine:ty, $make:expr) => {
        /// The plugin ABI version the server checks before anything else.
        #[no_mangle]
        pub static mrcp_plugin_version: $crate::ffi::sys::mrcp_plugin_version_t = $crate::ffi::PLUGIN_VERSION;

        /// # Safety
        /// Called by unimrcpserver with the pool the engine lives in.
        #[no_mangle]
        pub unsafe extern "C" fn mrcp_plugin_create(
            pool: *mut $crate::ffi::sys::apr_pool_t,
        ) -> *mut $crate::ffi::sys::mrcp_engine_t {
            let make = $make;
            // SAFETY: forwarded from the server's call.
            unsafe { $crate::ffi::plugin_create::<$engine>(pool, make) }
        }

        /// # Safety
        /// Called by unimrcpserver with its logger.
        #[no_mangle]
        pub unsafe extern "C" fn mrcp_plugin_logger_set(
            logger: *mut $crate::ffi::sys::apt_logger_t,
        ) -> $crate::ffi::sys::apt_bool_t {
            // SAFETY: forwarded from the server's call.
            unsafe { $crate::ffi::logger_set(logger) }
        }

        /// # Safety
        /// Called by unimrcpserver with its default log source.
        #[no_mangle]
        pub unsafe extern "C" fn mrcp_plugin_log_source_set(orig: *mut $crate::ffi::sys::apt_log_source_t) {
            // SAFETY: forwarded from the server's call.
            unsafe { $crate::ffi::log_source_set(orig) }
        }
    };
}
