//! Keeps the exported server functions in every binary that uses the host.
//!
//! The plugin .so leaves the server's symbols undefined and finds them in
//! the process when it is dlopened (RTLD_NOW), as it finds libunimrcpserver's
//! in a real server. Binaries using the host are linked with
//! `-Wl,--export-dynamic`, but the linker only keeps code something refers
//! to. This `#[used]` table refers to every export, and `anchor()` (called by
//! `Server::start` and `PluginLibrary::load`) refers to the table.

use std::ffi::c_void;

use super::{apr, engine, log, message};

/// Names of every function and data symbol the host exports to the plugin.
pub const EXPORTED_SYMBOLS: [&str; 20] = [
    "apr_palloc",
    "apr_array_push",
    "apr_table_get",
    "apr_table_elts",
    "apr_pstrmemdup",
    "apt_log",
    "apt_log_instance_set",
    "apt_def_log_source_set",
    "apt_log_source_assign",
    "def_log_source",
    "mpf_stream_capabilities_create",
    "mrcp_response_create",
    "mrcp_event_create",
    "mrcp_generic_header_property_add",
    "mrcp_resource_header_property_add",
    "mrcp_engine_create",
    "mrcp_engine_param_get",
    "mrcp_engine_channel_create",
    "mrcp_engine_audio_termination_create",
    "mrcp_engine_source_stream_codec_get",
];

struct KeepAlive([*const c_void; 20]);
// SAFETY: the addresses are only ever read, never dereferenced through here.
unsafe impl Sync for KeepAlive {}

#[used]
static KEEP_ALIVE: KeepAlive = KeepAlive([
    apr::apr_palloc as *const c_void,
    apr::apr_array_push as *const c_void,
    apr::apr_table_get as *const c_void,
    apr::apr_table_elts as *const c_void,
    apr::apr_pstrmemdup as *const c_void,
    log::apt_log as *const c_void,
    log::apt_log_instance_set as *const c_void,
    log::apt_def_log_source_set as *const c_void,
    log::apt_log_source_assign as *const c_void,
    &log::def_log_source as *const log::LogSource as *const c_void,
    engine::mpf_stream_capabilities_create as *const c_void,
    message::mrcp_response_create as *const c_void,
    message::mrcp_event_create as *const c_void,
    message::mrcp_generic_header_property_add as *const c_void,
    message::mrcp_resource_header_property_add as *const c_void,
    engine::mrcp_engine_create as *const c_void,
    engine::mrcp_engine_param_get as *const c_void,
    engine::mrcp_engine_channel_create as *const c_void,
    engine::mrcp_engine_audio_termination_create as *const c_void,
    engine::mrcp_engine_source_stream_codec_get as *const c_void,
]);

/// References the keep-alive table so the linker keeps every export.
/// Returns the number of exported symbols.
pub fn anchor() -> usize {
    std::hint::black_box(&KEEP_ALIVE).0.len()
}
