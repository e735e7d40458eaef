//! Generates the plugin's view of the UniMRCP ABI (src/sys.rs includes it)
//! and makes test and bench binaries export their symbols, so the plugin
//! they dlopen resolves the server functions from the in-process test host,
//! as it would from libunimrcpserver in a real server.

#[path = "unimrcp-shim/bindings_build.rs"]
mod bindings_build;

use std::env;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = bindings_build::header_source_from_env(&root.join("unimrcp-shim/include"));
    if let bindings_build::HeaderSource::Install { unimrcp, apr } = &source {
        println!("cargo:warning=building against UniMRCP headers in {} (APR: {})", unimrcp.display(), apr.display());
    }
    bindings_build::generate(&root.join("include/unimrcp_elevenlabs_abi.h"), &source, &out.join("unimrcp_sys.rs"));
    println!("cargo:rerun-if-changed=unimrcp-shim/bindings_build.rs");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
    println!("cargo:rustc-link-arg-benches=-Wl,--export-dynamic");
}
