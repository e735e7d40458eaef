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

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::ffi::c_char;
use std::ptr::NonNull;

use parking_lot::Mutex;

use crate::sys;

/// Alignment of every allocation (APR guarantees 8; 16 also suits SSE types).
const ALIGN: usize = 16;
/// Size of the chunks small allocations are carved from.
const CHUNK: usize = 8 * 1024;
/// Allocations larger than this get a block of their own.
const LARGE: usize = 2 * 1024;

/// First field of every `PoolInner`, to recognise our pools behind a C pointer.
const MAGIC: u64 = 0x6c6f_6f70_6d69_6873; // "shimpool"

struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

#[derive(Default)]
struct Arena {
    dead: bool,
    blocks: Vec<Block>,
    /// Free space at the end of the newest chunk: (next, end).
    bump: Option<(usize, usize)>,
    allocated: usize,
}

#[repr(C)]
struct PoolInner {
    magic: u64,
    name: String,
    arena: Mutex<Arena>,
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
        let inner = Box::new(PoolInner { magic: MAGIC, name: name.to_string(), arena: Mutex::new(Arena::default()) });
        Pool { inner: NonNull::from(Box::leak(inner)) }
    }

    /// The pointer handed to C as `apr_pool_t *`.
    pub fn as_ptr(&self) -> *mut sys::apr_pool_t {
        self.inner.as_ptr().cast()
    }

    pub fn name(&self) -> &str {
        // SAFETY: inner stays valid until self is dropped.
        unsafe { &self.inner.as_ref().name }
    }

    /// Bytes handed out so far.
    pub fn allocated(&self) -> usize {
        // SAFETY: inner stays valid until self is dropped.
        unsafe { self.inner.as_ref().arena.lock().allocated }
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
        let mut arena = inner.arena.lock();
        arena.dead = true;
        arena.bump = None;
        for block in std::mem::take(&mut arena.blocks) {
            // SAFETY: each block was allocated with exactly this layout.
            unsafe { dealloc(block.ptr.as_ptr(), block.layout) };
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
        let mut arena = self.arena.lock();
        if arena.dead {
            return None;
        }
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
        drop(arena);
        // SAFETY: p points to at least `rounded` bytes owned by this pool.
        unsafe { std::ptr::write_bytes(p, if zero { 0 } else { 0xBE }, rounded) };
        Some(p)
    }
}

impl Arena {
    fn new_block(&mut self, size: usize) -> *mut u8 {
        let layout = Layout::from_size_align(size, ALIGN).expect("pool block layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe {
            if size >= CHUNK {
                alloc(layout)
            } else {
                alloc_zeroed(layout)
            }
        };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        self.blocks.push(Block { ptr, layout });
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
    header(pool).is_some_and(|inner| !inner.arena.lock().dead)
}

/// Name of the pool behind a C pointer, for diagnostics.
pub(crate) fn name_of(pool: *const sys::apr_pool_t) -> String {
    header(pool).map_or_else(|| format!("{pool:p} (not a host pool)"), |inner| inner.name.clone())
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
    fn dead_pool_is_refused() {
        let pool = Pool::new("dead");
        let raw = pool.as_ptr();
        assert!(is_live(raw));
        drop(pool);
        assert!(!is_live(raw));
        assert!(alloc_from_raw(raw, 8, true).is_none());
    }
}
