//! Cache keys: SHA-1 over a versioned, length-prefixed encoding. A single
//! request's part of the key is the provider's `identity` of it (endpoint,
//! output format and serialized body), so two requests that can sound
//! different never share an entry, and a new request field cannot be
//! forgotten in the key.

use sha1::{Digest, Sha1};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key([u8; 20]);

impl Key {
    /// The key of a SPEAK sent as these requests, each as its provider
    /// identifies it.
    pub fn of_requests(identities: &[Vec<u8>]) -> Key {
        let mut h = Sha1::new();
        field(&mut h, 0, b"unimrcp-elevenlabs cache key v2");
        field(&mut h, 1, &(identities.len() as u64).to_le_bytes());
        for identity in identities {
            field(&mut h, 2, identity);
        }
        Key(h.finalize().into())
    }

    /// A key over a sequence of encoded steps (an SSML SPEAK: several
    /// requests, pauses, gains), tagged apart from single-request keys.
    pub fn of_sequence(steps: &[Vec<u8>]) -> Key {
        let mut h = Sha1::new();
        field(&mut h, 0, b"unimrcp-elevenlabs sequence key v1");
        for step in steps {
            field(&mut h, 16, step);
        }
        Key(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Appends one field: a tag, its length, its bytes. No two different
/// inputs encode alike (unlike fields glued together).
fn field(h: &mut Sha1, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_boundaries_and_order_count() {
        let ab = Key::of_requests(&[b"ab".to_vec()]);
        assert_ne!(Key::of_requests(&[b"a".to_vec(), b"b".to_vec()]), ab, "part boundaries count");
        assert_ne!(
            Key::of_requests(&[b"b".to_vec(), b"a".to_vec()]),
            Key::of_requests(&[b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(Key::of_requests(&[b"ab".to_vec()]), ab, "deterministic");
        assert_ne!(Key::of_sequence(&[b"ab".to_vec()]), ab, "sequences are tagged apart");
        assert_eq!(ab.hex().len(), 40);
    }
}
