//! The prompt cache: a repeated SPEAK costs nothing upstream and starts at
//! the next media tick.
//!
//! * Key (`key`): SHA-1 over the provider's identity of each request (the
//!   endpoint, output format and serialized body), so two requests that
//!   can sound different never share an entry.
//! * Entries: `<40 hex>` files in the cache dir (created 0700): a 48-byte
//!   header (magic, format version, sample rate, audio length, SHA-1 of the
//!   audio) and the raw PCM. An entry that fails any check is deleted and
//!   synthesized again, never played.
//! * Write-through: audio goes to a temporary file as it arrives and is
//!   renamed into place only after the whole response succeeded; several
//!   server processes may share the dir (atomic renames; readers only ever
//!   see whole files).
//! * Single flight: SPEAKs for a key that is being synthesized follow the
//!   leader's transfer instead of making their own request.
//! * Bounds: a janitor thread evicts least recently used entries over
//!   `cache_max_mb`, expired ones, and stale temporary files, off any
//!   SPEAK's path. A hit refreshes the entry's mtime (its LRU stamp).
//!
//! All file work happens on channel worker threads or the cache's own
//! threads, never on the MRCP Server or media threads.

mod flight;
mod key;
mod policy;
mod redis_tier;
mod store;
mod tee;

pub use flight::{Flight, FlightEnd};
pub use key::Key;
pub use policy::Policy;
pub use redis_tier::{Probe, RedisTier, POLL as REDIS_POLL};
pub use store::{Cache, EntryWriter, Lookup};
pub use tee::Tee;
