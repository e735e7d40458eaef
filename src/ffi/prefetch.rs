//! A hint to the CPU: start loading these bytes into the cache now, so
//! that a read of them shortly after finds them there instead of waiting
//! on memory (media/ahead.rs uses it to fetch the next channel's state
//! while the media thread serves this one).
//!
//! The address is a plain number, never turned into a reference: the
//! bytes may have been freed and reused since the address was noted, and
//! that is fine, because a prefetch neither reads anything into the
//! program nor faults. Not FFI with UniMRCP, but `unsafe` lives here.

/// One cache line: prefetches go line by line.
const LINE: usize = 64;

/// Asks for the `len` bytes from `addr` (at most `MAX_LINES` lines).
#[inline]
pub fn prefetch(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut line = addr & !(LINE - 1);
        let end = addr.saturating_add(len.min(MAX_LINES * LINE));
        while line < end {
            // SAFETY: SSE is part of every x86_64 CPU, and PREFETCHT0 is
            // only a hint: whatever the address (freed, unmapped, null), it
            // cannot fault, and it changes nothing the program can see.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, len);
}

/// A bound on the work one call does (a 48 kHz frame is 15 lines).
pub const MAX_LINES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_harmless() {
        // Freed, unmapped, null, the top of the address space: a hint
        // never faults.
        let block = vec![0u8; 256];
        let freed = block.as_ptr() as usize;
        drop(block);
        for addr in [freed, 0, 8, usize::MAX - 4096, 0xdead_0000] {
            prefetch(addr, 1024);
        }
    }
}
