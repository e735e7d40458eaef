//! The one bindgen run for the UniMRCP ABI: include/unimrcp_elevenlabs_abi.h
//! with our stand-in headers (unimrcp-shim/include/) on the include path, or a real install's
//! ($UNIMRCP_DIR/include plus APR's headers) when UNIMRCP_DIR is set. The
//! plugin and the test host both use its output (see src/lib.rs).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The workspace keeps the headers where a reader looks for them: the
    // wrapper (what the plugin and the host need, by UniMRCP header name) in
    // include/, our stand-in declarations beside the test host.
    let workspace = root.parent().expect("unimrcp-sys sits in the workspace");
    let source = header_source_from_env(&workspace.join("unimrcp-shim/include"));
    if let HeaderSource::Install { unimrcp, apr } = &source {
        println!("cargo:warning=building against UniMRCP headers in {} (APR: {})", unimrcp.display(), apr.display());
    }
    generate(&workspace.join("include/unimrcp_elevenlabs_abi.h"), &source, &out.join("unimrcp_sys.rs"));
    println!("cargo:rerun-if-changed=build.rs");
}

/// Where the C declarations come from.
enum HeaderSource {
    /// Our own declarations in unimrcp-shim/include.
    Shim(PathBuf),
    /// A real UniMRCP install (UNIMRCP_DIR) plus APR's headers.
    Install { unimrcp: PathBuf, apr: PathBuf },
}

impl HeaderSource {
    fn include_dirs(&self) -> Vec<PathBuf> {
        match self {
            HeaderSource::Shim(dir) => vec![dir.clone()],
            HeaderSource::Install { unimrcp, apr } => vec![unimrcp.clone(), apr.clone()],
        }
    }
}

/// UNIMRCP_DIR selects a real install; its APR headers are found through
/// APR_INCLUDE_DIR or the places UniMRCP's own build installs them.
fn header_source_from_env(shim_include: &Path) -> HeaderSource {
    println!("cargo:rerun-if-env-changed=UNIMRCP_DIR");
    println!("cargo:rerun-if-env-changed=APR_INCLUDE_DIR");
    let Some(dir) = env::var_os("UNIMRCP_DIR").filter(|d| !d.is_empty()) else {
        return HeaderSource::Shim(shim_include.to_path_buf());
    };
    let dir = PathBuf::from(dir);
    let unimrcp = dir.join("include");
    if !unimrcp.join("mrcp_synth_engine.h").exists() {
        panic!(
            "UNIMRCP_DIR={} has no include/mrcp_synth_engine.h; point it at a UniMRCP install prefix",
            dir.display()
        );
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(apr) = env::var_os("APR_INCLUDE_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(apr));
    }
    candidates.push(unimrcp.clone());
    candidates.push(PathBuf::from("/usr/local/apr/include/apr-1"));
    candidates.push(PathBuf::from("/usr/include/apr-1.0"));
    candidates.push(PathBuf::from("/usr/include/apr-1"));
    let apr = candidates.into_iter().find(|d| d.join("apr_tables.h").exists()).unwrap_or_else(|| {
        panic!("APR headers (apr_tables.h) not found; set APR_INCLUDE_DIR to the directory that holds them")
    });
    HeaderSource::Install { unimrcp, apr }
}

/// Runs bindgen on `wrapper` and writes `out_file`.
fn generate(wrapper: &Path, source: &HeaderSource, out_file: &Path) {
    println!("cargo:rerun-if-changed={}", wrapper.display());
    for dir in source.include_dirs() {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let mut builder = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_args(source.include_dirs().iter().map(|d| format!("-I{}", d.display())))
        // Constants keep their C names (MRCP_STATUS_CODE_SUCCESS, ...), the
        // same whichever headers are used.
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .use_core();
    for ty in [
        "apr_pool_t",
        "apr_table_t",
        "apr_array_header_t",
        "apr_table_entry_t",
        "apr_version_t",
        "apr_size_t",
        "apt_bool_t",
        "apt_str_t",
        "apt_pair_t",
        "apt_pair_arr_t",
        "apt_log_source_t",
        "apt_logger_t",
        "apt_log_priority_e",
        "apt_header_field_t",
        "apt_header_section_t",
        "mpf_.*_e",
        "mpf_codec_descriptor_t",
        "mpf_codec_attribs_t",
        "mpf_codec_capabilities_t",
        "mpf_stream_capabilities_t",
        "mpf_codec_frame_t",
        "mpf_frame_t",
        "mpf_audio_stream_t",
        "mpf_audio_stream_vtable_t",
        "mpf_termination_t",
        "mpf_codec_t",
        "mrcp_engine_t",
        "mrcp_engine_config_t",
        "mrcp_engine_method_vtable_t",
        "mrcp_engine_event_vtable_t",
        "mrcp_engine_channel_t",
        "mrcp_engine_channel_method_vtable_t",
        "mrcp_engine_channel_event_vtable_t",
        "mrcp_plugin_version_t",
        "mrcp_message_t",
        "mrcp_start_line_t",
        "mrcp_channel_id",
        "mrcp_message_header_t",
        "mrcp_header_accessor_t",
        "mrcp_header_vtable_t",
        "mrcp_generic_header_t",
        "mrcp_generic_header_id",
        "mrcp_request_id_list_t",
        "mrcp_synth_header_t",
        "mrcp_synthesizer_method_id",
        "mrcp_synthesizer_event_id",
        "mrcp_synthesizer_header_id",
        "mrcp_synth_completion_cause_e",
        "mrcp_status_code_e",
        "mrcp_request_state_e",
        "mrcp_message_type_e",
        "mrcp_version_e",
        "mrcp_resource_type_e",
        "mrcp_voice_gender_e",
        "mrcp_prosody_.*",
        "mrcp_speech_.*",
    ] {
        builder = builder.allowlist_type(ty);
    }
    for func in [
        "apr_palloc",
        "apr_array_push",
        "apr_table_get",
        "apr_table_elts",
        "apr_pstrmemdup",
        "apt_log",
        "apt_log_instance_set",
        "apt_def_log_source_set",
        "apt_log_source_assign",
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
    ] {
        builder = builder.allowlist_function(func);
    }
    for var in [
        "def_log_source",
        "MAX_ACTIVE_REQUEST_ID_COUNT",
        "CODEC_FRAME_TIME_BASE",
        "BYTES_PER_SAMPLE",
        // Enumerators of the allowlisted enums come along with their types;
        // these name a few used in arithmetic.
        "GENERIC_HEADER_.*",
        "SYNTHESIZER_.*",
        "MRCP_.*",
        "MPF_SAMPLE_RATE_.*",
        "MEDIA_FRAME_TYPE_.*",
        "STREAM_DIRECTION_.*",
        "APT_PRIO_.*",
        "VOICE_GENDER_.*",
        "PROSODY_.*",
    ] {
        builder = builder.allowlist_var(var);
    }
    let bindings = builder.generate().unwrap_or_else(|e| panic!("bindgen failed on {}: {e}", wrapper.display()));
    bindings.write_to_file(out_file).unwrap_or_else(|e| panic!("writing {}: {e}", out_file.display()));
}
