//! The APR functions the plugin calls (`apr_palloc`, `apr_array_push`,
//! `apr_table_get`, `apr_table_elts`, `apr_pstrmemdup`), plus the host-side
//! helpers that build arrays and tables the way APR lays them out.

use std::ffi::{c_char, c_int, c_void, CStr};

use super::context::violation;
use super::pool::{self, Pool};
use crate::sys;

/// APR's table: it starts with the array of `apr_table_entry_t` that
/// `apr_table_elts` returns (APR's own struct has more fields after it, which
/// nobody outside APR reads).
#[repr(C)]
#[derive(Clone, Copy)]
struct ShimTable {
    entries: sys::apr_array_header_t,
}

#[no_mangle]
pub unsafe extern "C" fn apr_palloc(pool: *mut sys::apr_pool_t, size: sys::apr_size_t) -> *mut c_void {
    match pool::alloc_from_raw(pool, size, false) {
        Some(p) => p.cast(),
        None => {
            violation(format!("apr_palloc({size}) on {}: not a live pool", pool::name_of(pool)));
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn apr_pstrmemdup(
    pool: *mut sys::apr_pool_t,
    s: *const c_char,
    n: sys::apr_size_t,
) -> *mut c_char {
    if s.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the caller promises s points to n readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), n) };
    match pool::dup_into_raw(pool, bytes) {
        Some(p) => p,
        None => {
            violation(format!("apr_pstrmemdup({n}) on {}: not a live pool", pool::name_of(pool)));
            std::ptr::null_mut()
        }
    }
}

/// Appends one zeroed element, doubling the storage (from `arr->pool`) when
/// it is full; returns the new element.
#[no_mangle]
pub unsafe extern "C" fn apr_array_push(arr: *mut sys::apr_array_header_t) -> *mut c_void {
    if arr.is_null() {
        violation("apr_array_push(NULL)");
        return std::ptr::null_mut();
    }
    // SAFETY: the caller passes an array header made by APR (here: by us).
    let a = unsafe { &mut *arr };
    let elt = a.elt_size.max(0) as usize;
    if a.nelts == a.nalloc {
        let new_alloc = if a.nalloc <= 0 { 1 } else { a.nalloc * 2 };
        let Some(new_elts) = pool::alloc_from_raw(a.pool, elt * new_alloc as usize, true) else {
            violation(format!("apr_array_push: array pool {} is not a live pool", pool::name_of(a.pool)));
            return std::ptr::null_mut();
        };
        if a.nelts > 0 && !a.elts.is_null() {
            // SAFETY: the old storage holds nelts elements; the new one is
            // larger and freshly allocated.
            unsafe { std::ptr::copy_nonoverlapping(a.elts.cast::<u8>(), new_elts, elt * a.nelts as usize) };
        }
        a.elts = new_elts.cast();
        a.nalloc = new_alloc;
    }
    // SAFETY: nelts < nalloc now, so the slot is inside the storage.
    let slot = unsafe { a.elts.cast::<u8>().add(elt * a.nelts as usize) };
    // SAFETY: the slot has elt bytes.
    unsafe { std::ptr::write_bytes(slot, 0, elt) };
    a.nelts += 1;
    slot.cast()
}

#[no_mangle]
pub unsafe extern "C" fn apr_table_elts(table: *const sys::apr_table_t) -> *const sys::apr_array_header_t {
    // The entries array is the first field of our table.
    table.cast()
}

/// Case-insensitive lookup (APR compares keys with strcasecmp); the first
/// matching entry wins.
#[no_mangle]
pub unsafe extern "C" fn apr_table_get(table: *const sys::apr_table_t, key: *const c_char) -> *const c_char {
    if table.is_null() || key.is_null() {
        return std::ptr::null();
    }
    // SAFETY: key is a C string (APR's contract).
    let key = unsafe { CStr::from_ptr(key) }.to_bytes();
    // SAFETY: table was created by table_create below.
    let entries = unsafe { table_entries(table) };
    for e in entries {
        // SAFETY: keys are C strings we copied into the table's pool.
        if !e.key.is_null() && unsafe { CStr::from_ptr(e.key) }.to_bytes().eq_ignore_ascii_case(key) {
            return e.val;
        }
    }
    std::ptr::null()
}

/// The entries of a table made by `table_create`.
///
/// # Safety
/// `table` must come from `table_create` and stay alive while the slice is used.
unsafe fn table_entries<'a>(table: *const sys::apr_table_t) -> &'a [sys::apr_table_entry_t] {
    // SAFETY: per the function contract.
    let a = unsafe { &(*table.cast::<ShimTable>()).entries };
    if a.nelts <= 0 || a.elts.is_null() {
        return &[];
    }
    // SAFETY: elts holds nelts entries.
    unsafe { std::slice::from_raw_parts(a.elts.cast::<sys::apr_table_entry_t>(), a.nelts as usize) }
}

/// A new empty array of `elt_size`-byte elements in `pool` (apr_array_make).
pub(crate) fn array_make(pool: &Pool, nalloc: c_int, elt_size: usize) -> *mut sys::apr_array_header_t {
    array_make_raw(pool.as_ptr(), nalloc, elt_size).expect("array in a live pool")
}

/// `array_make` for a pool known by its C pointer; None if it is not live.
pub(crate) fn array_make_raw(
    pool: *mut sys::apr_pool_t,
    nalloc: c_int,
    elt_size: usize,
) -> Option<*mut sys::apr_array_header_t> {
    let nalloc = nalloc.max(1);
    let elts = pool::alloc_from_raw(pool, elt_size * nalloc as usize, true)?;
    pool::value_into_raw(
        pool,
        sys::apr_array_header_t { pool, elt_size: elt_size as c_int, nelts: 0, nalloc, elts: elts.cast() },
    )
}

/// A new empty table in `pool`.
pub(crate) fn table_create(pool: &Pool) -> *mut sys::apr_table_t {
    let arr = array_make(pool, 4, std::mem::size_of::<sys::apr_table_entry_t>());
    // SAFETY: arr was just created.
    let entries = unsafe { *arr };
    pool.alloc_value(ShimTable { entries }).cast()
}

/// apr_table_set: replaces the value of an existing key (compared without
/// case) or appends the pair; both are copied into `pool`.
pub(crate) fn table_set(pool: &Pool, table: *mut sys::apr_table_t, key: &str, val: &str) {
    let v = pool.dup_bytes(val.as_bytes());
    // SAFETY: table comes from table_create; nothing else uses it right now.
    let a = unsafe { &mut (*table.cast::<ShimTable>()).entries };
    // SAFETY: same table.
    for e in unsafe { table_entries(table) } {
        // SAFETY: keys are C strings we copied.
        if unsafe { CStr::from_ptr(e.key) }.to_bytes().eq_ignore_ascii_case(key.as_bytes()) {
            let e = e as *const sys::apr_table_entry_t as *mut sys::apr_table_entry_t;
            // SAFETY: e points into the table's storage, which we own here.
            unsafe { (*e).val = v };
            return;
        }
    }
    // SAFETY: a is a valid array of table entries.
    let e = unsafe { apr_array_push(a) }.cast::<sys::apr_table_entry_t>();
    // SAFETY: apr_array_push returned a zeroed entry slot.
    unsafe {
        (*e).key = pool.dup_bytes(key.as_bytes());
        (*e).val = v;
        (*e).key_checksum = key_checksum(key);
    }
}

/// APR keeps a checksum of the first four key bytes (upper-cased) to speed
/// up lookups; we fill it in the same spirit although only we read tables.
fn key_checksum(key: &str) -> u32 {
    key.bytes().take(4).fold(0u32, |acc, b| (acc << 8) | u32::from(b.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn array_push_grows_and_zeroes() {
        let pool = Pool::new("arr");
        let arr = array_make(&pool, 1, 24);
        let mut ptrs = Vec::new();
        for i in 0..100u8 {
            // SAFETY: arr is a live array of 24-byte elements.
            let p = unsafe { apr_array_push(arr) }.cast::<u8>();
            // SAFETY: the element has 24 bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p, 24) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(i);
            ptrs.push(p);
        }
        // SAFETY: arr is live.
        let a = unsafe { &*arr };
        assert_eq!(a.nelts, 100);
        assert_eq!(a.nalloc, 128);
        for i in 0..100usize {
            // SAFETY: elts holds 100 elements.
            assert_eq!(unsafe { *a.elts.cast::<u8>().add(i * 24 + 23) }, i as u8);
        }
    }

    #[test]
    fn table_lookup_ignores_case() {
        let pool = Pool::new("tbl");
        let t = table_create(&pool);
        table_set(&pool, t, "api_key", "k1");
        table_set(&pool, t, "Voice_ID", "v");
        table_set(&pool, t, "API_KEY", "k2");
        let get = |k: &str| {
            let k = CString::new(k).unwrap();
            // SAFETY: t is a live table, k a C string.
            let v = unsafe { apr_table_get(t, k.as_ptr()) };
            // SAFETY: values are C strings in the pool.
            (!v.is_null()).then(|| unsafe { CStr::from_ptr(v) }.to_str().unwrap().to_string())
        };
        assert_eq!(get("Api_Key").as_deref(), Some("k2"));
        assert_eq!(get("voice_id").as_deref(), Some("v"));
        assert_eq!(get("missing"), None);
        // SAFETY: t is a live table.
        let elts = unsafe { &*apr_table_elts(t) };
        assert_eq!(elts.nelts, 2);
        assert_eq!(elts.elt_size as usize, std::mem::size_of::<sys::apr_table_entry_t>());
    }

    #[test]
    fn pstrmemdup_terminates() {
        let pool = Pool::new("dup");
        // SAFETY: the source has 3 readable bytes.
        let p = unsafe { apr_pstrmemdup(pool.as_ptr(), b"abcdef".as_ptr().cast(), 3) };
        // SAFETY: p is a C string in the pool.
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_bytes(), b"abc");
    }
}
