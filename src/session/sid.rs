//! Engine.IO session ids that name their owning shard, so a poll or an upgrade that the
//! kernel hands to another shard can be passed to the right one without shared state.

use rand::Rng;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
pub const SID_LEN: usize = 20;

/// A random 20-character id; its first two characters are the shard index in hex.
pub fn new_sid(shard: usize) -> String {
    let mut rng = rand::rng();
    let mut s = format!("{:02x}", shard & 0xff);
    s.extend((0..SID_LEN - 2).map(|_| ALPHABET[rng.random_range(0..64)] as char));
    s
}

/// A random id for a Socket.IO socket (one per namespace connection).
pub fn new_socket_id() -> String {
    let mut rng = rand::rng();
    (0..SID_LEN)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

/// The shard a session id names, if it is well formed.
pub fn shard_of(sid: &str) -> Option<usize> {
    if sid.len() != SID_LEN {
        return None;
    }
    usize::from_str_radix(sid.get(..2)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_names_its_shard() {
        for shard in [0, 1, 7, 255] {
            let sid = new_sid(shard);
            assert_eq!(sid.len(), SID_LEN);
            assert_eq!(shard_of(&sid), Some(shard));
        }
        assert_eq!(shard_of("zz"), None);
        assert_eq!(shard_of("zzzzzzzzzzzzzzzzzzzz"), None);
    }
}
