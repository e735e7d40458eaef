use std::sync::Arc;

use parking_lot::Mutex;

use crate::media::Waker;

/// How a flight ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlightEnd {
    Complete,
    Failed(crate::error::Failure),
    /// The leader went away before the end (its channel closed).
    Abandoned,
}

#[derive(Default)]
struct FlightState {
    audio: Vec<u8>,
    end: Option<FlightEnd>,
    followers: Vec<Arc<Waker>>,
}

/// One synthesis in progress that other SPEAKs of the same key follow.
#[derive(Default)]
pub struct Flight {
    state: Mutex<FlightState>,
}

impl Flight {
    /// The leader's bytes, as they arrive; wakes the followers.
    pub fn append(&self, data: &[u8]) {
        let followers = {
            let mut s = self.state.lock();
            s.audio.extend_from_slice(data);
            s.followers.clone()
        };
        followers.iter().for_each(|f| f.wake());
    }

    pub fn end(&self, end: FlightEnd) {
        let followers = {
            let mut s = self.state.lock();
            s.end.get_or_insert(end);
            std::mem::take(&mut s.followers)
        };
        followers.iter().for_each(|f| f.wake());
    }

    pub(super) fn follow(&self, waker: Arc<Waker>) {
        let mut s = self.state.lock();
        if s.end.is_none() {
            s.followers.push(waker);
        }
    }

    pub fn unfollow(&self, waker: &Arc<Waker>) {
        self.state.lock().followers.retain(|f| !Arc::ptr_eq(f, waker));
    }

    /// Copies up to `max` bytes from `offset` with `copy`; says whether the
    /// flight has ended (and how) once everything was taken.
    pub fn take(&self, offset: usize, max: usize, copy: impl FnOnce(&[u8])) -> (usize, Option<FlightEnd>) {
        let s = self.state.lock();
        let end = offset.saturating_add(max).min(s.audio.len());
        let n = end.saturating_sub(offset);
        if n > 0 {
            copy(&s.audio[offset..end]);
        }
        let done = if offset + n >= s.audio.len() { s.end.clone() } else { None };
        (n, done)
    }
}
