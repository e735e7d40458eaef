//! Fixed-size byte buffers lent to the SPEAKs that spill (synth/spill.rs),
//! for as long as one holds audio in memory (its stage, written to the
//! spill file in large pieces) or is refilling the channel's buffer from
//! the file, and given back the moment it is empty: the memory follows the
//! spilling work in progress, not the channels.
//!
//! A given-back buffer is kept for the next loan, up to `keep` of them;
//! beyond that it is unmapped. The buffers are `Pages` (their own
//! mappings), so one that goes is returned to the system at once instead
//! of staying in a glibc arena of whichever worker thread made it.
//!
//! One pool serves the whole process (`spill_buffers`): UniMRCP loads the
//! plugin once and opens its one engine, so that is the engine's pool; the
//! several engines of a test process simply share it.
//!
//! Lock: `idle`, a leaf held for one push or pop of the list (never while
//! a buffer is mapped, unmapped or used).

use std::ops::{Deref, DerefMut};
#[cfg(test)]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::ffi::Pages;

/// Bytes per buffer: one write to the spill file, one read back from it.
/// At 8 kHz that is 2 s of audio, as much as a worker gathers between two
/// sleeps (a linger of synth/player.rs lets up to `GATHER`, two curl reads,
/// gather in the socket), and at least the room a refill waits for
/// (spill.rs `PUMP_WAKE`), so a refill is one read.
pub const SPILL_BUFFER_BYTES: usize = 32 * 1024;
/// Given-back buffers the process keeps for the next loans (256 KiB).
/// Loans are short (one wake-up of a worker, mostly), so only a few are
/// out at a time even with hundreds of channels spilling.
const SPILL_BUFFERS_KEPT: usize = 8;

/// The process's pool of spill buffers.
pub fn spill_buffers() -> &'static Arc<BufferPool> {
    static POOL: OnceLock<Arc<BufferPool>> = OnceLock::new();
    POOL.get_or_init(|| BufferPool::new(SPILL_BUFFER_BYTES, SPILL_BUFFERS_KEPT))
}

/// Buffers of `size` bytes, lent out and kept for reuse (at most `keep`).
pub struct BufferPool {
    size: usize,
    keep: usize,
    idle: Mutex<Vec<Pages>>,
    /// Buffers out on loan now, and the most ever at once.
    #[cfg(test)]
    lent: AtomicUsize,
    #[cfg(test)]
    most_lent: AtomicUsize,
    /// Buffers mapped so far (a loan the idle list could not serve).
    #[cfg(test)]
    mapped: AtomicUsize,
}

/// What a pool holds and has done, for tests.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFigures {
    pub lent: usize,
    pub most_lent: usize,
    pub idle: usize,
    pub mapped: usize,
}

impl BufferPool {
    pub fn new(size: usize, keep: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            size,
            keep,
            idle: Mutex::new(Vec::with_capacity(keep)),
            #[cfg(test)]
            lent: AtomicUsize::new(0),
            #[cfg(test)]
            most_lent: AtomicUsize::new(0),
            #[cfg(test)]
            mapped: AtomicUsize::new(0),
        })
    }

    /// Bytes in each buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A buffer (a kept one, else a fresh mapping; its bytes are whatever
    /// the last borrower left), back in the pool when the loan is dropped.
    pub fn lend(self: &Arc<Self>) -> std::io::Result<Loan> {
        let kept = self.idle.lock().pop();
        let pages = match kept {
            Some(pages) => pages,
            None => {
                let pages = Pages::zeroed(self.size)?;
                #[cfg(test)]
                self.mapped.fetch_add(1, Ordering::Relaxed);
                pages
            }
        };
        #[cfg(test)]
        {
            let lent = self.lent.fetch_add(1, Ordering::Relaxed) + 1;
            self.most_lent.fetch_max(lent, Ordering::Relaxed);
        }
        Ok(Loan { pages: Some(pages), pool: Arc::clone(self) })
    }

    fn give_back(&self, pages: Pages) {
        #[cfg(test)]
        self.lent.fetch_sub(1, Ordering::Relaxed);
        let mut idle = self.idle.lock();
        if idle.len() < self.keep {
            idle.push(pages);
            return;
        }
        drop(idle);
        drop(pages); // unmapped outside the lock
    }

    #[cfg(test)]
    pub fn figures(&self) -> PoolFigures {
        PoolFigures {
            lent: self.lent.load(Ordering::Relaxed),
            most_lent: self.most_lent.load(Ordering::Relaxed),
            idle: self.idle.lock().len(),
            mapped: self.mapped.load(Ordering::Relaxed),
        }
    }
}

/// One lent buffer: its bytes, until dropped (then back to the pool).
pub struct Loan {
    /// Always Some until the drop takes it.
    pages: Option<Pages>,
    pool: Arc<BufferPool>,
}

impl Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.pages.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.pages.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(pages) = self.pages.take() {
            self.pool.give_back(pages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_lent_again_with_its_mapping() {
        let pool = BufferPool::new(4096, 2);
        let mut a = pool.lend().unwrap();
        assert_eq!(a.len(), 4096);
        a[0] = 7;
        let at = a.as_ptr();
        assert_eq!(pool.figures(), PoolFigures { lent: 1, most_lent: 1, idle: 0, mapped: 1 });
        drop(a);
        assert_eq!(pool.figures(), PoolFigures { lent: 0, most_lent: 1, idle: 1, mapped: 1 });
        let b = pool.lend().unwrap();
        assert_eq!(b.as_ptr(), at, "the same buffer, not a new mapping");
        assert_eq!(pool.figures().mapped, 1);
    }

    #[test]
    fn it_keeps_at_most_keep_idle_buffers() {
        let pool = BufferPool::new(4096, 2);
        let loans: Vec<Loan> = (0..5).map(|_| pool.lend().unwrap()).collect();
        assert_eq!(pool.figures(), PoolFigures { lent: 5, most_lent: 5, idle: 0, mapped: 5 });
        drop(loans);
        assert_eq!(pool.figures(), PoolFigures { lent: 0, most_lent: 5, idle: 2, mapped: 5 });
        // Two come from the idle list, the third is mapped afresh.
        let again: Vec<Loan> = (0..3).map(|_| pool.lend().unwrap()).collect();
        assert_eq!(pool.figures(), PoolFigures { lent: 3, most_lent: 5, idle: 0, mapped: 6 });
        drop(again);
    }

    #[test]
    fn loans_from_many_threads_all_come_back() {
        let pool = BufferPool::new(4096, 4);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let mut loan = pool.lend().unwrap();
                        loan[0] = (t * 31 + i) as u8;
                        loan[4095] = loan[0];
                        assert_eq!(loan[0], loan[4095]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let f = pool.figures();
        assert_eq!(f.lent, 0);
        assert!(f.idle <= 4 && f.idle >= 1, "{f:?}");
        assert!(f.most_lent <= 8, "{f:?}");
    }
}
