use std::sync::Arc;

use super::{EntryWriter, Flight};

/// The copies of a synthesis besides the caller's own buffer: the flight
/// other SPEAKs follow, and the entry being written.
#[derive(Default)]
pub struct Tee {
    pub flight: Option<Arc<Flight>>,
    /// Boxed: the writer's buffer and hash state are large.
    pub writer: Option<Box<EntryWriter>>,
    /// Bytes already played from an abandoned shared synthesis: not played
    /// again, but still stored.
    pub skip: usize,
}

impl Tee {
    pub fn copy(&mut self, data: &[u8]) {
        if let Some(flight) = &self.flight {
            flight.append(data);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.write(data);
        }
    }
}
