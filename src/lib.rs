//! unimrcp-elevenlabs: a UniMRCP 1.8 synthesizer plugin that speaks with
//! ElevenLabs voices.
//!
//! The server dlopens this library, checks [`mrcp_plugin_version`], calls
//! the log setters and then [`mrcp_plugin_create`]. Everything else happens
//! through the vtables in `engine`, `channel` and `stream`:
//!
//! * "MRCP Server" thread: engine open/close/create_channel, channel
//!   open/close/process_request (never waits on the network or a join);
//! * "MPF Scheduler" thread: stream open_rx/read_frame/close_rx (bounded,
//!   allocation-free, never blocks);
//! * one worker thread per channel (`worker`): owns the channel's curl
//!   handles and streams ElevenLabs audio into the channel's buffer.
//!
//! Only the four plugin entry points below are exported (the server loads
//! plugins RTLD_GLOBAL). `unsafe` lives in the FFI layer: abi, engine,
//! channel, stream, logging, wake.

mod abi;
mod audio;
mod cache;
mod channel;
mod config;
mod engine;
mod json;
mod logging;
mod panic;
mod plan;
mod speak;
mod speak_params;
mod split;
mod ssml;
mod stream;
mod synth;
mod sys;
mod text;
mod timestamps;
mod wake;
mod warmup;
mod worker;

// Unit tests link the stand-in server library so the plugin's references to
// server functions resolve.
#[cfg(test)]
extern crate unimrcp_shim;

/// The UniMRCP plugin ABI this plugin was written against: 1.8.0. The
/// server loads plugins whose version is not newer than its own.
#[no_mangle]
pub static mrcp_plugin_version: sys::mrcp_plugin_version_t =
    sys::mrcp_plugin_version_t { major: 1, minor: 8, patch: 0, is_dev: 0 };

/// The plugin's creator, called once by the server's main thread.
///
/// # Safety
/// Called by unimrcpserver with the pool the engine lives in.
#[no_mangle]
pub unsafe extern "C" fn mrcp_plugin_create(pool: *mut sys::apr_pool_t) -> *mut sys::mrcp_engine_t {
    // SAFETY: forwarded from the server's call.
    panic::guard("mrcp_plugin_create", || unsafe { create_engine(pool) })
        .and_then(Result::ok)
        .unwrap_or(std::ptr::null_mut())
}

unsafe fn create_engine(pool: *mut sys::apr_pool_t) -> Result<*mut sys::mrcp_engine_t, &'static str> {
    logging::init();
    panic::install_hook();
    let obj = abi::into_obj(Box::new(engine::Engine::new()));
    // SAFETY: exported server function; our vtable is 'static and obj stays
    // valid until engine destroy frees it.
    let engine = unsafe {
        sys::mrcp_engine_create(
            sys::MRCP_SYNTHESIZER_RESOURCE as sys::mrcp_resource_id,
            obj,
            &engine::ENGINE_VTABLE,
            pool,
        )
    };
    if engine.is_null() {
        // SAFETY: the server did not take obj; reclaim it.
        drop(unsafe { Box::from_raw(obj as *mut engine::Engine) });
        log::error!("mrcp_engine_create failed");
        return Err("mrcp_engine_create failed");
    }
    log::info!("ElevenLabs synthesizer plugin {} loaded", env!("CARGO_PKG_VERSION"));
    Ok(engine)
}

/// Optional: the server hands us its logger (one per process on Linux).
///
/// # Safety
/// Called by unimrcpserver with its logger.
#[no_mangle]
pub unsafe extern "C" fn mrcp_plugin_logger_set(logger: *mut sys::apt_logger_t) -> sys::apt_bool_t {
    // SAFETY: forwarded from the server's call.
    let ok = panic::guard("mrcp_plugin_logger_set", || unsafe { sys::apt_log_instance_set(logger) });
    abi::apt_bool(ok.is_some_and(|r| r != abi::FALSE))
}

/// Optional: the server's default log source; we then look up our own
/// source, `ELEVENLABS-SYNTH`, configured in logger.xml.
///
/// # Safety
/// Called by unimrcpserver with its default log source.
#[no_mangle]
pub unsafe extern "C" fn mrcp_plugin_log_source_set(orig: *mut sys::apt_log_source_t) {
    // SAFETY: forwarded from the server's call.
    let _ = panic::guard("mrcp_plugin_log_source_set", || unsafe { logging::adopt_log_source(orig) });
}
