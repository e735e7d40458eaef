//! `MappedVec`: a growable array of plain values in pages of its own
//! (anonymous `mmap`, grown with `mremap`), for the host's big recordings
//! (each channel's audio and frame log, the read_frame durations).
//!
//! Pool blocks and pool headers (pool.rs) come from [`map_pages`] for the
//! same reason.
//!
//! Why not a `Vec`: those recordings grow by doubling to tens or hundreds of
//! KiB per channel, hundreds of channels at a time, and are all freed when
//! the channels go. In glibc's heap that churn leaves the freed space behind
//! (once a freed mmapped chunk has raised the dynamic mmap threshold, later
//! ones land in the arenas, and small long-lived blocks allocated between
//! them keep those pages from being trimmed), so the host's own RSS crept up
//! batch after batch and hid the plugin's figure in the benchmark's memory
//! scenario. Pages of their own go back to the OS the moment the recording
//! is dropped, and the host's recordings no longer share (and fragment) the
//! heap the plugin under test allocates from. Untouched pages of a mapping
//! cost no RSS, so growing by doubling wastes address space only.

use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;

/// A `Vec`-like array of `T` in its own anonymous mapping (none while empty
/// and never grown).
pub(crate) struct MappedVec<T: Copy> {
    /// Start of the mapping, or dangling while `cap_bytes` is 0.
    ptr: NonNull<T>,
    len: usize,
    /// Size of the mapping in bytes (a multiple of the page size), 0 = none.
    cap_bytes: usize,
    _owns: PhantomData<T>,
}

// SAFETY: the mapping is owned by this value alone (like a Vec's buffer);
// T is plain data that may itself move between threads.
unsafe impl<T: Copy + Send> Send for MappedVec<T> {}
// SAFETY: &MappedVec only gives out shared slices of T.
unsafe impl<T: Copy + Sync> Sync for MappedVec<T> {}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// A fresh zeroed private anonymous mapping of `bytes` (a multiple of the
/// page size), page-aligned; aborts like a failed allocation if the kernel
/// refuses. Give it back with [`unmap`].
pub(crate) fn map_pages(bytes: usize) -> NonNull<u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is
    // affected.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    mapped_or_abort(addr, bytes)
}

fn mapped_or_abort(addr: *mut libc::c_void, bytes: usize) -> NonNull<u8> {
    if addr == libc::MAP_FAILED {
        let layout = std::alloc::Layout::from_size_align(bytes, page_size()).expect("mapping layout");
        std::alloc::handle_alloc_error(layout);
    }
    NonNull::new(addr.cast::<u8>()).expect("mmap returned NULL")
}

/// Unmaps what [`map_pages`] returned.
///
/// # Safety
/// `ptr` and `bytes` must be exactly one mapping from `map_pages` (or
/// `MappedVec`'s), not used afterwards.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
    // SAFETY: per the function contract.
    unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
}

impl<T: Copy> Default for MappedVec<T> {
    fn default() -> Self {
        MappedVec::new()
    }
}

impl<T: Copy> MappedVec<T> {
    pub fn new() -> MappedVec<T> {
        assert!(std::mem::size_of::<T>() > 0, "MappedVec of a zero-sized type");
        MappedVec { ptr: NonNull::dangling(), len: 0, cap_bytes: 0, _owns: PhantomData }
    }

    /// Room for `additional` more values without moving: address space
    /// only, pages are allocated when written.
    pub fn reserve(&mut self, additional: usize) {
        let size = std::mem::size_of::<T>();
        let needed = self.len.checked_add(additional).and_then(|n| n.checked_mul(size)).expect("MappedVec size");
        if needed <= self.cap_bytes {
            return;
        }
        let page = page_size();
        assert!(std::mem::align_of::<T>() <= page);
        let new_bytes = needed.max(self.cap_bytes.saturating_mul(2)).div_ceil(page) * page;
        let addr = if self.cap_bytes == 0 {
            map_pages(new_bytes)
        } else {
            // SAFETY: ptr/cap_bytes describe exactly the mapping this value
            // owns; with MREMAP_MAYMOVE the kernel keeps its contents, and
            // no reference into it outlives this &mut borrow.
            let addr =
                unsafe { libc::mremap(self.ptr.as_ptr().cast(), self.cap_bytes, new_bytes, libc::MREMAP_MAYMOVE) };
            mapped_or_abort(addr, new_bytes)
        };
        self.ptr = addr.cast::<T>();
        self.cap_bytes = new_bytes;
    }

    pub fn push(&mut self, value: T) {
        self.extend_from_slice(std::slice::from_ref(&value));
    }

    pub fn extend_from_slice(&mut self, values: &[T]) {
        if values.is_empty() {
            return;
        }
        self.reserve(values.len());
        // SAFETY: reserve made room for len + values.len() values in the
        // mapping; a slice we were given cannot overlap memory we own
        // exclusively.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.as_ptr().add(self.len), values.len()) };
        self.len += values.len();
    }
}

impl<T: Copy> Deref for MappedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the first len values were written by extend_from_slice;
        // with no mapping, ptr is dangling but aligned and len is 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for MappedVec<T> {
    fn drop(&mut self) {
        if self.cap_bytes > 0 {
            // SAFETY: the mapping is ours and nothing borrows it any more.
            unsafe { unmap(self.ptr.cast(), self.cap_bytes) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_across_pages_and_keeps_contents() {
        let mut v: MappedVec<u64> = MappedVec::new();
        assert!(v.is_empty());
        for i in 0..10_000u64 {
            v.push(i * 3);
        }
        v.extend_from_slice(&[7, 8, 9]);
        assert_eq!(v.len(), 10_003);
        assert!(v.iter().take(10_000).enumerate().all(|(i, &x)| x == i as u64 * 3));
        assert_eq!(&v[10_000..], &[7, 8, 9]);
        assert_eq!(v.to_vec().len(), 10_003);
    }

    #[test]
    fn reserve_does_not_move_later_pushes() {
        let mut v: MappedVec<u8> = MappedVec::new();
        v.reserve(100_000);
        v.push(1);
        let start = v.as_ptr();
        v.extend_from_slice(&[2u8; 99_999]);
        assert_eq!(v.as_ptr(), start);
        assert_eq!(v.len(), 100_000);
        assert_eq!(v[0], 1);
        assert!(v[1..].iter().all(|&b| b == 2));
    }

    #[test]
    fn empty_never_maps() {
        let mut v: MappedVec<u16> = MappedVec::default();
        v.extend_from_slice(&[]);
        assert_eq!(v.cap_bytes, 0);
        assert_eq!(&*v, &[] as &[u16]);
    }
}
