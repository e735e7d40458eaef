//! Fetching the next channel's state while the media thread serves this
//! one.
//!
//! Every 10 ms the media thread calls `read_frame` for each channel in
//! turn, in the same order tick after tick (the scheduler walks its
//! contexts). Between two visits of one channel, 10 ms of other work has
//! pushed its state out of the cache, so each visit used to start with
//! waits on memory: the channel's `Link` and then the next frame's bytes in
//! its ring (bench [10]: most of `read_frame`'s time, where the baseline
//! fixture, which makes its frames up, waits only once).
//!
//! So the media thread notes the order in which it visits the channels
//! (`ORDER`, one entry per position), and at each visit asks the CPU to
//! fetch what the *next* position will read: its `Link` and the frame its
//! ring will give next (noted at that channel's previous visit). Those
//! loads then run while this channel is served, about a microsecond ahead.
//!
//! Everything here is a hint. Entries are plain addresses, never
//! dereferenced: a channel destroyed since its entry was written leaves a
//! stale address, and prefetching it is harmless (ffi/prefetch.rs). The
//! order is relearned as channels come and go: a channel not found at the
//! cursor goes back to its earlier position of the previous tick (the
//! first channel of each tick does so), or else takes the cursor's, which
//! closes the order up behind channels that left. A server
//! with more than one media thread (several media engines) shares the one
//! table, so their hints mix and help less, and past `POSITIONS` channels
//! on one thread the rest are served without. Relaxed atomics throughout:
//! no ordering is needed for a hint, and the work is bounded (a few loads
//! and stores, at most two prefetches).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::ffi::prefetch;

/// Positions noted; channels beyond this per media thread go without.
pub const POSITIONS: usize = 2048;
/// No position (a `Link` not yet seen).
pub const NO_POSITION: usize = usize::MAX;
/// How far ahead the fetch goes: two visits (one visit, about a
/// microsecond of the host's work and ours, is less than a miss takes
/// when the page walk misses too).
const AHEAD: usize = 2;
/// Bytes of a `Link` to fetch: its hot block (link.rs).
const LINK_BYTES: usize = 128;

/// The process's one order, for every media thread.
static ORDER: Order<POSITIONS> = Order::new();

/// A visit begins: notes `link` (its address) in the order and fetches
/// what the next position will read. `last` is the position this link had
/// (its `Link::position`); returns its position now, to store there and to
/// pass to `leave`.
#[inline]
pub fn arrive(link: usize, last: usize) -> usize {
    ORDER.arrive(link, last)
}

/// A visit ends: where this channel's next frame will come from (its
/// ring's bytes), for the visit before it next tick to fetch.
#[inline]
pub fn leave(position: usize, next_frame: &[u8]) {
    ORDER.leave(position, next_frame)
}

struct Entry {
    /// The `Link` visited at this position last tick.
    link: AtomicUsize,
    /// Where its next frame is, and how long (0: none to fetch).
    frame: AtomicUsize,
    frame_len: AtomicUsize,
}

/// The visits' order: `N` positions and a cursor.
pub(crate) struct Order<const N: usize> {
    entries: [Entry; N],
    /// The position the next visit is expected at.
    cursor: AtomicUsize,
}

impl<const N: usize> Order<N> {
    #[allow(clippy::declare_interior_mutable_const)] // the array's initializer
    const EMPTY: Entry =
        Entry { link: AtomicUsize::new(0), frame: AtomicUsize::new(0), frame_len: AtomicUsize::new(0) };

    pub(crate) const fn new() -> Self {
        Order { entries: [Self::EMPTY; N], cursor: AtomicUsize::new(0) }
    }

    #[inline]
    fn arrive(&self, link: usize, last: usize) -> usize {
        let mut at = self.cursor.load(Relaxed);
        if at >= N || self.entries[at].link.load(Relaxed) != link {
            if last < at && self.entries[last].link.load(Relaxed) == link {
                // Back to its place of the previous tick: a new tick begins
                // (or channels before it were added).
                at = last;
            } else if at < N {
                // New, or channels before it left: it takes the cursor's
                // place, so the order closes up behind the ones that left.
                self.entries[at].link.store(link, Relaxed);
                self.entries[at].frame_len.store(0, Relaxed);
            } else {
                // Past the table: no hints for this one.
                return NO_POSITION;
            }
        }
        self.cursor.store(at + 1, Relaxed);
        // Only the entry AHEAD positions on: the ones between were asked
        // for at the visits before (a prefetch is not free: a new line
        // takes a fill buffer, a new page a page walk). A tick's first
        // visit also asks for the ones between, which no visit asked for.
        let nearest = if at == 0 { 1 } else { AHEAD };
        for next in self.entries.iter().skip(at + nearest).take(AHEAD + 1 - nearest) {
            prefetch(next.link.load(Relaxed), LINK_BYTES);
            let len = next.frame_len.load(Relaxed);
            if len > 0 {
                prefetch(next.frame.load(Relaxed), len);
            }
        }
        at
    }

    #[inline]
    fn leave(&self, position: usize, next_frame: &[u8]) {
        if let Some(entry) = self.entries.get(position) {
            entry.frame.store(next_frame.as_ptr() as usize, Relaxed);
            entry.frame_len.store(next_frame.len(), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<const N: usize> Order<N> {
        fn link_at(&self, position: usize) -> usize {
            self.entries[position].link.load(Relaxed)
        }

        /// One tick: every link visited in turn, each with the position it
        /// was given last time, which is updated.
        fn tick(&self, links: &[usize], positions: &mut [usize], frame: &[u8]) {
            for (&l, p) in links.iter().zip(positions.iter_mut()) {
                *p = self.arrive(l, *p);
                self.leave(*p, frame);
            }
        }
    }

    #[test]
    fn the_order_is_learned_and_each_visit_points_at_the_next() {
        let order = Order::<8>::new();
        let links = [0x1000_0080usize, 0x2000_0100, 0x3000_0180];
        let mut positions = [NO_POSITION; 3];
        for _tick in 0..3 {
            order.tick(&links, &mut positions, &[]);
        }
        // Tick after tick, the first channel went back to position 0.
        assert_eq!(positions, [0, 1, 2]);
        assert_eq!([order.link_at(0), order.link_at(1), order.link_at(2)], links);
        // The middle channel leaves: the last one takes its place at once.
        let rest = [links[0], links[2]];
        let mut pos = [positions[0], positions[2]];
        for _tick in 0..2 {
            order.tick(&rest, &mut pos, &[]);
            assert_eq!(pos, [0, 1]);
        }
        assert_eq!([order.link_at(0), order.link_at(1)], rest);
        // A channel joins in the middle: the order is right after one tick.
        let joined = [links[0], 0x4000_0200, links[2]];
        let mut pos = [0, NO_POSITION, 1];
        for _tick in 0..2 {
            order.tick(&joined, &mut pos, &[]);
        }
        assert_eq!(pos, [0, 1, 2]);
        assert_eq!([order.link_at(0), order.link_at(1), order.link_at(2)], joined);
    }

    #[test]
    fn a_visit_notes_where_its_next_frame_is() {
        let order = Order::<4>::new();
        let ring = [7u8; 320];
        let p = order.arrive(0x4000_0000, NO_POSITION);
        order.leave(p, &ring[160..]);
        assert_eq!(order.entries[p].frame.load(Relaxed), ring[160..].as_ptr() as usize);
        assert_eq!(order.entries[p].frame_len.load(Relaxed), 160);
    }

    #[test]
    fn past_the_table_a_visit_gets_no_position_until_the_next_tick() {
        let order = Order::<2>::new();
        let links = [0x1000usize, 0x2000, 0x3000];
        let mut pos = [NO_POSITION; 3];
        for _tick in 0..3 {
            // The third has no position: nothing is noted for it.
            order.tick(&links, &mut pos, &[1, 2, 3]);
            assert_eq!(pos, [0, 1, NO_POSITION]);
        }
    }
}
