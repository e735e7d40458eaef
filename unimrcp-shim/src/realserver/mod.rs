//! Helpers for running the plugin inside a real UniMRCP install
//! (tests/real_server.rs): a private root derived from the installed
//! configuration, `unimrcpserver` and `umc` as child processes, and reading
//! their logs and umc's saved audio.
//!
//! * `xml`: structural edits of the XML configuration (roxmltree).
//! * `config`: the server's, client's and logger's configuration, and umc
//!   scenarios.
//! * `ports`: free loopback ports.
//! * `process`: the private root, `RealServer` and `Umc`.
//! * `umclog`: log entries and one umc session's exchange.
//! * `audio`: aligning received audio with what the upstream sent.

pub mod audio;
pub mod config;
pub mod ports;
pub mod process;
pub mod umclog;
pub mod xml;

pub use config::{
    client_profile_xml, client_xml, engine_block, logger_xml, scenario_xml, server_xml, ssml_text, Engine, Scenario,
};
pub use ports::{PortPicker, Ports};
pub use process::{read, read_lossy, remaining, wait_exit, wait_file, write, RealServer, TempRoot, Umc};
pub use umclog::{entries, header, Entry, SessionLog};
