//! A curl multi handle that may move to another thread.
//!
//! A warm transport (its multi handle holds a live keep-alive connection)
//! is made on the pre-warm thread and then used by a channel's worker.
//! curl-rust's `Multi` is not `Send` (it holds a raw pointer), but libcurl
//! allows moving a multi handle and its connections between threads as
//! long as only one thread uses them at a time.

use std::ops::{Deref, DerefMut};

use curl::multi::Multi;

pub struct MovableMulti(Multi);

// SAFETY: libcurl handles may be used from any thread, one at a time. A
// `MovableMulti` is owned (moved, never shared: it is not Sync), so one
// thread uses it at a time. curl-rust's transfer handles (Easy2Handle) hold
// a clone of the multi's pointer, but they only exist while a transfer
// borrows its transport mutably (tts::transport::Transfer), so none exists
// when the owner moves the transport to another thread.
unsafe impl Send for MovableMulti {}

impl MovableMulti {
    pub fn new() -> MovableMulti {
        MovableMulti(Multi::new())
    }
}

impl Default for MovableMulti {
    fn default() -> Self {
        MovableMulti::new()
    }
}

impl Deref for MovableMulti {
    type Target = Multi;
    fn deref(&self) -> &Multi {
        &self.0
    }
}

impl DerefMut for MovableMulti {
    fn deref_mut(&mut self) -> &mut Multi {
        &mut self.0
    }
}
