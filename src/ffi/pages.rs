//! Memory straight from the kernel (an anonymous private mapping), given
//! back to it (`munmap`) when dropped.
//!
//! The channels' audio buffers live here instead of on the heap: freed
//! heap blocks stay in glibc's (per-thread) arenas, so a server that had
//! many channels kept their buffers' memory after they closed. A mapping
//! is returned whole the moment its channel is destroyed, and only the
//! pages that audio was written to were ever resident.
//!
//! Not FFI with UniMRCP, but `unsafe` lives in this module.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zero-filled, fixed-size byte buffer in its own mapping.
pub struct Pages {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: Pages owns its mapping exclusively, like a Box<[u8]>; access goes
// through &/&mut.
unsafe impl Send for Pages {}
// SAFETY: shared access is read-only (&[u8]).
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` zero bytes (none mapped for 0).
    pub fn zeroed(len: usize) -> std::io::Result<Pages> {
        if len == 0 {
            return Ok(Pages { ptr: NonNull::dangling(), len: 0 });
        }
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched. The kernel zero-fills it on first touch.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Pages { ptr, len })
    }
}

impl Deref for Pages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (mapped read/write, zeroed)
        // for as long as self lives; dangling with len 0 is allowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `zeroed`, which
            // nothing refers to any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// Gives the free memory of the heap's arenas back to the system
/// (`malloc_trim(0)`: whole free pages inside the arenas, not only at their
/// tops). Changes no allocator setting; the next allocations simply fault
/// fresh pages in. Costs a walk over the free chunks, so it is for rare
/// moments (many channels gone). A no-op off glibc.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganises glibc's own free lists; it takes
    // each arena's lock itself and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_zeroed_and_keep_what_is_written() {
        let mut p = Pages::zeroed(10_000).unwrap();
        assert_eq!(p.len(), 10_000);
        assert!(p.iter().all(|&b| b == 0));
        p[9_999] = 7;
        p[0] = 1;
        assert_eq!((p[0], p[9_999]), (1, 7));
        let empty = Pages::zeroed(0).unwrap();
        assert!(empty.is_empty());
    }
}
