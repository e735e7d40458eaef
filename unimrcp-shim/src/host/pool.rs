//! Memory pools: the host's stand-in for APR pools.
//!
//! A pool is an arena: allocations live until the pool is dropped, then all
//! go at once. Like the pools UniMRCP creates with `apt_pool_create` (which
//! carry a mutex on a patched APR), ours may be allocated from on any thread
//! at the same time, because the plugin allocates responses/events from a
//! request's pool on its own worker threads while the host uses it too.
//!
//! The C side sees a pool only as an opaque `apr_pool_t *`: the address of
//! our `PoolInner`. Dropping a pool frees its memory blocks but keeps the
//! small `PoolInner` header forever, marked dead: so `apr_palloc` on a pool
//! that was already destroyed (a plugin keeping a pointer too long) is
//! detected and reported instead of corrupting memory, and a header address
//! is never reused by a later pool.
//!
//! Those headers are carved from pages of their own (`header_slot`), with
//! the name inline, rather than from the heap: a header outlives its pool,
//! so in the heap every channel would leave two small blocks behind between
//! the freed blocks of its pools, and those pinned blocks kept glibc from
//! giving the freed space back (the benchmark's memory scenario saw the
//! host's RSS creep batch after batch). A dead header holds no heap memory.

use std::ffi::c_char;
use std::ptr::NonNull;

use parking_lot::Mutex;

use super::mapped::{map_pages, page_size, unmap};

use crate::sys;

/// Alignment of every allocation (APR guarantees 8; 16 also suits SSE types).
const ALIGN: usize = 16;
/// Size of the chunks small allocations are carved from.
const CHUNK: usize = 8 * 1024;
/// Allocations larger than this get a block of their own.
const LARGE: usize = 2 * 1024;

/// First field of every `PoolInner`, to recognise our pools behind a C pointer.
const MAGIC: u64 = 0x6c6f_6f70_6d69_6873; // "shimpool"
/// Bytes of a pool's name kept: the host's longest, "request N of
/// <16 hex>@speechsynth", fits up to N = 99999. Small, as every pool ever
/// made keeps its header.
const NAME_BYTES: usize = 47;
/// What every pool ever made keeps for the rest of the process: its header.
pub const DEAD_POOL_BYTES: usize = std::mem::size_of::<PoolInner>();
// Kept small on purpose (the name inline but short, the arena boxed).
const _: () = assert!(DEAD_POOL_BYTES <= 72);
/// Size of each mapping pool headers are carved from.
const HEADER_PAGES_BYTES: usize = 64 * 1024;

/// A mapping of its own (see `map_pages`): whole pages.
struct Block {
    ptr: NonNull<u8>,
    bytes: usize,
}

#[derive(Default)]
struct Arena {
    blocks: Vec<Block>,
    /// Free space at the end of the newest chunk: (next, end).
    bump: Option<(usize, usize)>,
    allocated: usize,
}

/// A pool's name, inline (cut at a character boundary if longer).
struct PoolName {
    len: u8,
    bytes: [u8; NAME_BYTES],
}

impl PoolName {
    fn new(name: &str) -> PoolName {
        let mut len = name.len().min(NAME_BYTES);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; NAME_BYTES];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        PoolName { len: len as u8, bytes }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

#[repr(C)]
struct PoolInner {
    magic: u64,
    name: PoolName,
    /// None once the pool is dropped (dead). Boxed, so a dead header is
    /// small; the box goes with the pool.
    arena: Mutex<Option<Box<Arena>>>,
}

/// Free space in the newest header mapping: (next, end).
static HEADER_PAGES: Mutex<(usize, usize)> = Mutex::new((0, 0));

/// Room for one `PoolInner`, never freed (see the module comment).
fn header_slot() -> NonNull<PoolInner> {
    let size = std::mem::size_of::<PoolInner>().next_multiple_of(std::mem::align_of::<PoolInner>());
    let mut pages = HEADER_PAGES.lock();
    if pages.1 - pages.0 < size {
        // Never unmapped.
        let p = map_pages(HEADER_PAGES_BYTES).as_ptr() as usize;
        *pages = (p, p + HEADER_PAGES_BYTES);
    }
    let slot = pages.0;
    pages.0 += size;
    // A mapping is page-aligned and size is a multiple of the alignment.
    NonNull::new(slot as *mut PoolInner).expect("mapped header")
}

/// An owned pool; dropping it frees everything allocated from it.
pub struct Pool {
    inner: NonNull<PoolInner>,
}

// SAFETY: PoolInner's mutable state is behind its mutex; the raw blocks are
// plain memory whose users synchronise themselves, as with APR pools.
unsafe impl Send for Pool {}
// SAFETY: as above; all methods take &self and lock.
unsafe impl Sync for Pool {}

impl Pool {
    /// A new, empty pool; `name` shows up in diagnostics.
    pub fn new(name: &str) -> Pool {
        let inner = header_slot();
        // SAFETY: the slot is fresh, aligned and large enough for a
        // PoolInner, and nothing else will ever use it.
        unsafe {
            inner.as_ptr().write(PoolInner {
                magic: MAGIC,
                name: PoolName::new(name),
                arena: Mutex::new(Some(Box::default())),
            })
        };
        Pool { inner }
    }

    /// The pointer handed to C as `apr_pool_t *`.
    pub fn as_ptr(&self) -> *mut sys::apr_pool_t {
        self.inner.as_ptr().cast()
    }

    pub fn name(&self) -> &str {
        // SAFETY: inner stays valid until self is dropped.
        unsafe { self.inner.as_ref().name.as_str() }
    }

    /// Bytes handed out so far.
    pub fn allocated(&self) -> usize {
        // SAFETY: inner stays valid until self is dropped.
        unsafe { self.inner.as_ref().arena.lock().as_ref().map_or(0, |a| a.allocated) }
    }

    /// `size` zeroed bytes, 16-byte aligned, valid until the pool is dropped.
    pub fn alloc_zeroed(&self, size: usize) -> *mut u8 {
        // SAFETY: inner stays valid until self is dropped.
        unsafe { self.inner.as_ref().alloc(size, true) }.expect("allocation from a live pool")
    }

    /// Moves `value` into the pool. Its destructor never runs, so only use
    /// this for plain C data.
    pub fn alloc_value<T: Copy>(&self, value: T) -> *mut T {
        assert!(std::mem::align_of::<T>() <= ALIGN);
        let p = self.alloc_zeroed(std::mem::size_of::<T>()).cast::<T>();
        // SAFETY: p is fresh, aligned and large enough for a T.
        unsafe { p.write(value) };
        p
    }

    /// A NUL-terminated copy of `bytes` (which may themselves contain NULs).
    pub fn dup_bytes(&self, bytes: &[u8]) -> *mut c_char {
        let p = self.alloc_zeroed(bytes.len() + 1);
        // SAFETY: p has room for len + 1 bytes; the regions cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        p.cast()
    }

    /// An `apt_str_t` holding a NUL-terminated copy of `s`.
    pub fn apt_str(&self, s: &str) -> sys::apt_str_t {
        sys::apt_str_t { buf: self.dup_bytes(s.as_bytes()), length: s.len() }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the header is never freed (see the module comment).
        let inner = unsafe { self.inner.as_ref() };
        let Some(arena) = inner.arena.lock().take() else {
            return;
        };
        for block in arena.blocks {
            // SAFETY: each block is one mapping of exactly this size, and
            // the pool (the only way to its memory) is being dropped.
            unsafe { unmap(block.ptr, block.bytes) };
        }
    }
}

impl PoolInner {
    /// Allocates from the arena; `zero` decides whether the memory is
    /// cleared (APR's palloc does not clear; we fill it with a pattern then,
    /// so a plugin relying on zeroed memory shows up in tests).
    /// None once the pool has been dropped.
    fn alloc(&self, size: usize, zero: bool) -> Option<*mut u8> {
        let rounded = size.max(1).div_ceil(ALIGN) * ALIGN;
        let mut guard = self.arena.lock();
        let arena = guard.as_mut()?;
        arena.allocated += rounded;
        let p = if rounded > LARGE {
            arena.new_block(rounded)
        } else {
            match arena.bump {
                Some((next, end)) if end - next >= rounded => {
                    arena.bump = Some((next + rounded, end));
                    next as *mut u8
                }
                _ => {
                    let chunk = arena.new_block(CHUNK);
                    let start = chunk as usize;
                    arena.bump = Some((start + rounded, start + CHUNK));
                    chunk
                }
            }
        };
        drop(guard);
        // SAFETY: p points to at least `rounded` bytes owned by this pool.
        unsafe { std::ptr::write_bytes(p, if zero { 0 } else { 0xBE }, rounded) };
        Some(p)
    }
}

impl Arena {
    /// `size` bytes (rounded up to whole pages) in a mapping of their own,
    /// so a dropped pool's memory goes straight back to the OS instead of
    /// leaving holes in the heap the plugin under test allocates from.
    fn new_block(&mut self, size: usize) -> *mut u8 {
        let bytes = size.next_multiple_of(page_size());
        let ptr = map_pages(bytes);
        self.blocks.push(Block { ptr, bytes });
        ptr.as_ptr()
    }
}

/// The header behind a C pool pointer, if it looks like one of ours.
fn header(pool: *const sys::apr_pool_t) -> Option<&'static PoolInner> {
    if pool.is_null() || (pool as usize) & (std::mem::align_of::<PoolInner>() - 1) != 0 {
        return None;
    }
    // SAFETY: every pool pointer we hand out is a PoolInner that is never
    // freed. A pointer that is not ours is a plugin bug; reading its first
    // word is the best check we can make (APR would crash outright).
    let inner = unsafe { &*(pool as *const PoolInner) };
    (inner.magic == MAGIC).then_some(inner)
}

/// Allocates from a pool known only by its C pointer (the `apr_palloc`
/// path). None if `pool` is not a pool of ours or was already dropped.
pub(crate) fn alloc_from_raw(pool: *mut sys::apr_pool_t, size: usize, zero: bool) -> Option<*mut u8> {
    header(pool)?.alloc(size, zero)
}

/// Whether `pool` is a pool of ours that has not been dropped.
#[cfg(test)]
pub(crate) fn is_live(pool: *const sys::apr_pool_t) -> bool {
    header(pool).is_some_and(|inner| inner.arena.lock().is_some())
}

/// Name of the pool behind a C pointer, for diagnostics.
pub(crate) fn name_of(pool: *const sys::apr_pool_t) -> String {
    header(pool).map_or_else(|| format!("{pool:p} (not a host pool)"), |inner| inner.name.as_str().to_string())
}

/// Copies `s` into the pool identified by a raw pointer, NUL-terminated.
pub(crate) fn dup_into_raw(pool: *mut sys::apr_pool_t, bytes: &[u8]) -> Option<*mut c_char> {
    let p = alloc_from_raw(pool, bytes.len() + 1, true)?;
    // SAFETY: p has room for len + 1 bytes (zeroed, so the NUL is there).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    Some(p.cast())
}

/// Copies a value into the pool identified by a raw pointer.
pub(crate) fn value_into_raw<T: Copy>(pool: *mut sys::apr_pool_t, value: T) -> Option<*mut T> {
    assert!(std::mem::align_of::<T>() <= ALIGN);
    let p = alloc_from_raw(pool, std::mem::size_of::<T>(), true)?.cast::<T>();
    // SAFETY: p is fresh, aligned and large enough for a T.
    unsafe { p.write(value) };
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_distinct() {
        let pool = Pool::new("t");
        let mut seen = Vec::new();
        for size in [1usize, 7, 16, 100, 3000, 9000, 1] {
            let p = pool.alloc_zeroed(size) as usize;
            assert_eq!(p % ALIGN, 0);
            seen.push((p, size));
        }
        seen.sort();
        for w in seen.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
        }
    }

    #[test]
    fn usable_from_many_threads_at_once() {
        let pool = std::sync::Arc::new(Pool::new("mt"));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut ptrs = Vec::new();
                    for i in 0..2000usize {
                        let size = 1 + (i * 37) % 300;
                        let p = alloc_from_raw(pool.as_ptr(), size, false).unwrap();
                        // SAFETY: p has `size` bytes.
                        unsafe { std::ptr::write_bytes(p, t, size) };
                        ptrs.push((p as usize, size));
                    }
                    ptrs
                })
            })
            .collect();
        let mut all: Vec<(usize, usize)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        for w in all.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap between threads");
        }
    }

    #[test]
    fn names_are_kept_and_cut_at_a_character_boundary() {
        let long = format!("request 99999 of {:016x}@speechsynth", u64::MAX);
        assert_eq!(Pool::new(&long).name(), long);
        let cut = "é".repeat(40); // 80 bytes
        let pool = Pool::new(&cut);
        assert_eq!(pool.name(), "é".repeat(23));
        assert_eq!(name_of(pool.as_ptr()), "é".repeat(23));
    }

    #[test]
    fn headers_are_never_reused() {
        let first = Pool::new("first");
        let raw = first.as_ptr();
        drop(first);
        // Enough pools to need more than one mapping of headers.
        let later: Vec<Pool> = (0..1000).map(|i| Pool::new(&format!("later {i}"))).collect();
        assert!(later.iter().all(|p| p.as_ptr() != raw));
        assert!(!is_live(raw));
        assert_eq!(name_of(raw), "first");
    }

    #[test]
    fn dead_pool_is_refused() {
        let pool = Pool::new("dead");
        let raw = pool.as_ptr();
        assert!(is_live(raw));
        drop(pool);
        assert!(!is_live(raw));
        assert!(alloc_from_raw(raw, 8, true).is_none());
    }
}
