//! Test host for the unimrcp-elevenlabs plugin.
//!
//! * `host`: a stand-in for unimrcpserver that loads the plugin .so as the
//!   real server does and exports the server functions it links against.
//! * `upstream`: a local ElevenLabs-compatible HTTP server for tests.
//! * `realserver`: running the plugin in a real UniMRCP install (a private
//!   root, unimrcpserver and umc, their logs) for tests/real_server.rs.
//! * `sys`: the Rust view of the UniMRCP ABI (the `unimrcp-sys` crate).
//!
//! Binaries using the host must be linked with `-Wl,--export-dynamic` (see
//! build.rs) so the plugin can resolve the exported server functions.

pub mod host;
pub mod realserver;
pub mod sys;
pub mod upstream;

pub use host::anchor;
