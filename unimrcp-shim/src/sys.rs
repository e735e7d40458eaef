//! Rust view of our shim headers (bindgen output).
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/unimrcp_sys.rs"));
