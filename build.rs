//! Makes test and bench binaries export their symbols, so the plugin they
//! dlopen resolves the server functions from the in-process test host, as it
//! would from libunimrcpserver in a real server. (The UniMRCP declarations
//! come from the unimrcp-sys crate.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
    println!("cargo:rustc-link-arg-benches=-Wl,--export-dynamic");
}
