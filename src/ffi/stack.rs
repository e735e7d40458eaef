//! The calling thread's own stack: how much of it is resident, and giving
//! back the pages below the frame that asks.
//!
//! A thread's stack pages, once touched, stay resident until the thread
//! ends, even when the frames that touched them returned long ago. With a
//! worker thread per channel, the deepest moment of each worker's life is
//! what every channel keeps (bench [11]). Not FFI with UniMRCP, but
//! `unsafe` lives in this module.

use std::cell::Cell;
use std::io;

thread_local! {
    /// This thread's `bounds`, once asked: a thread's stack never moves,
    /// and asking glibc costs an allocation or four and a
    /// sched_getaffinity syscall each time (pthread_getattr_np fills in the
    /// thread's CPU set too).
    static BOUNDS: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// The calling thread's stack: `[low, high)`, page-aligned, without its
/// guard page (glibc's `pthread_getattr_np`; it also spans glibc's thread
/// descriptor and static TLS at the top).
fn bounds() -> io::Result<(usize, usize)> {
    if let Some(known) = BOUNDS.with(Cell::get) {
        return Ok(known);
    }
    let found = ask_bounds()?;
    BOUNDS.with(|b| b.set(Some(found)));
    Ok(found)
}

fn ask_bounds() -> io::Result<(usize, usize)> {
    // SAFETY: the attr is initialised by pthread_getattr_np before it is
    // read, and destroyed exactly once after a successful init.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        let rc = libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let page = page_size();
        let low = (addr as usize).next_multiple_of(page);
        let high = (addr as usize + size) / page * page;
        Ok((low, high.max(low)))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// An address inside the caller's frame (the stack grows down: everything
/// below it is free).
#[inline(never)]
fn here() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Bytes of the calling thread's stack that are resident now (mincore).
pub fn resident_stack_bytes() -> io::Result<usize> {
    let (low, high) = bounds()?;
    let page = page_size();
    let pages = (high - low) / page;
    let mut vec = vec![0u8; pages];
    // SAFETY: [low, high) is this thread's mapped stack (page-aligned), and
    // `vec` holds one byte per page of it, as mincore writes.
    let rc = unsafe { libc::mincore(low as *mut libc::c_void, high - low, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() * page)
}

/// Gives back to the kernel the calling thread's stack pages below the
/// caller's frame, less a page of margin (MADV_DONTNEED: they read as
/// zeros when touched again, which a stack below its pointer never
/// relies on). Nothing else can be there: the frames that used them have
/// returned, and a signal handler on this thread would be running instead
/// of us. Costs one syscall, and a page fault per page touched again.
pub fn release_stack_below() -> io::Result<()> {
    let (low, high) = bounds()?;
    let page = page_size();
    let at = here();
    if at < low || at >= high {
        return Err(io::Error::other("not on this thread's stack"));
    }
    let end = (at / page).saturating_sub(1) * page;
    if end <= low {
        return Ok(());
    }
    // SAFETY: [low, end) lies inside this thread's stack, wholly below the
    // live frames (a page under this one's), so no live data is dropped.
    let rc = unsafe { libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches `kib` KiB of stack below the caller, so that it is resident.
    #[inline(never)]
    fn go_deep(kib: usize) -> u8 {
        let mut block = [0u8; 1024];
        std::hint::black_box(&mut block);
        if kib <= 1 {
            block[7]
        } else {
            block[7].wrapping_add(go_deep(kib - 1))
        }
    }

    #[test]
    fn deep_frames_stay_resident_until_released() {
        let thread = std::thread::Builder::new().stack_size(1 << 20).spawn(|| {
            let idle = resident_stack_bytes().unwrap();
            std::hint::black_box(go_deep(256));
            let deep = resident_stack_bytes().unwrap();
            release_stack_below().unwrap();
            let released = resident_stack_bytes().unwrap();
            // The frame after a release still works (its pages come back).
            std::hint::black_box(go_deep(64));
            (idle, deep, released)
        });
        let (idle, deep, released) = thread.unwrap().join().unwrap();
        assert!(deep >= idle + 250 * 1024, "idle {idle}, after 256 KiB of frames {deep}");
        assert!(released <= idle + 8 * 1024, "idle {idle}, released {released}");
    }
}
