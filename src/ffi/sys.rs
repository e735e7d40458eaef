//! bindgen's view of the UniMRCP ABI, from the `unimrcp-sys` crate (our
//! headers, or a real install's when UNIMRCP_DIR is set). The thin safe
//! layers over it are the other `ffi` modules.

pub use unimrcp_sys::*;
