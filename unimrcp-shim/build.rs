//! The demo and the tests load the plugin, which resolves the server
//! functions (exported by the host module) from the executable. (The
//! UniMRCP declarations come from the unimrcp-sys crate.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic");
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
}
