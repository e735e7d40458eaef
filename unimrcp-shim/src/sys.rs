//! The Rust view of the UniMRCP ABI, from the `unimrcp-sys` crate: the same
//! declarations the plugin is built with.

pub use unimrcp_sys::*;
