//! The host always uses our own declarations: it is the stand-in server, so
//! its layouts are the ones the plugin is checked against.

#[path = "bindings_build.rs"]
mod bindings_build;

use std::env;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = bindings_build::HeaderSource::Shim(root.join("include"));
    bindings_build::generate(&root.join("include/unimrcp_shim_abi.h"), &source, &out.join("unimrcp_sys.rs"));
    println!("cargo:rerun-if-changed=bindings_build.rs");
    println!("cargo:rerun-if-changed=build.rs");
    // The demo and the tests load the plugin, which resolves the server
    // functions (exported by the host module) from the executable.
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic");
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
}
