use std::sync::Arc;

use parking_lot::Mutex;

use super::Speak;
use crate::ffi::ChannelRef;
use crate::media::Link;

/// What a channel shares with its worker (and, through `link`, with the
/// media thread).
///
/// Lock order (never take an earlier one while holding a later one):
///   engine `workers` → channel `worker` slot → `active` → `link.playback`,
///   and `active` → a SPEAK's `last_mark` (a leaf: held for one copy).
/// `logging_tag`, a flight's state and the metrics' own locks are leaves.
pub struct Shared {
    pub link: Arc<Link>,
    /// The SPEAK in progress, until its terminal message.
    pub active: Mutex<Option<Arc<Speak>>>,
    /// The client's Logging-Tag for this session, shown in log lines.
    pub logging_tag: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(buffer_capacity: usize) -> std::io::Result<Shared> {
        Ok(Shared {
            link: Arc::new(Link::new(buffer_capacity)?),
            active: Mutex::new(None),
            logging_tag: Mutex::new(None),
        })
    }

    /// The channel id for log lines, with the Logging-Tag when one was set.
    pub fn label(&self, ch: ChannelRef) -> String {
        match self.logging_tag.lock().as_deref() {
            Some(tag) => format!("{} tag={tag}", ch.id()),
            None => ch.id(),
        }
    }
}
