//! Makes test and bench binaries export their symbols, so the plugin they
//! dlopen resolves the server functions from the in-process test host, as it
//! would from libunimrcpserver in a real server. (The UniMRCP declarations
//! come from the unimrcp-sys crate.)
//!
//! And refuses a libcurl that curl-sys compiled from its own sources: it
//! does that, silently, when pkg-config finds no system libcurl while it
//! builds (no libcurl4-openssl-dev yet, or a target dir built before it was
//! installed). That copy (curl 8.22 in curl-sys 0.4.91) waits on sockets
//! with select(), not poll(): curl-sys defines HAVE_POLL_FINE where that
//! curl looks for HAVE_POLL. select() cannot watch a descriptor of 1024 or
//! more, so with a few hundred channels open every new connection failed,
//! "Could not connect to server" (bench [11]: 182 of 200 SPEAKs, every
//! batch; the system libcurl: none).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
    println!("cargo:rustc-link-arg-benches=-Wl,--export-dynamic");
    // curl-sys (`links = "curl"`) says `static=1` when it built libcurl itself.
    println!("cargo:rerun-if-env-changed=DEP_CURL_STATIC");
    if std::env::var_os("DEP_CURL_STATIC").is_some() {
        panic!(
            "curl-sys compiled its own libcurl because pkg-config found no system libcurl when it was built. \
             The plugin links the system libcurl: install it (`scripts/setup build`, or apt-get install \
             libcurl4-openssl-dev pkg-config), then `cargo clean -p curl-sys` and build again."
        );
    }
}
