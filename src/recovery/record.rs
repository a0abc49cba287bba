//! What a disconnected socket leaves behind for its return: who it was, its rooms, and from
//! which offset each room's events were its own.

use super::Offset;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The private session id the client presents to recover (`pid`).
    pub pid: String,
    /// The Socket.IO socket id, given back on recovery.
    pub sid: String,
    /// The authenticated user; a recovery must present a token for the same one.
    pub user: Option<String>,
    /// Each room and the offset current when the socket joined it.
    pub rooms: Vec<(String, String)>,
}

impl SessionRecord {
    /// The rooms with their join offsets; a room whose offset does not parse is left out
    /// rather than replayed from the start.
    pub fn joined(&self) -> Vec<(String, Offset)> {
        self.rooms
            .iter()
            .filter_map(|(r, o)| Some((r.clone(), Offset::parse(o)?)))
            .collect()
    }

    pub fn to_json(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &[u8]) -> Option<SessionRecord> {
        serde_json::from_slice(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_drops_bad_offsets() {
        let r = SessionRecord {
            pid: "p".into(),
            sid: "s".into(),
            user: Some("u-1".into()),
            rooms: vec![
                ("trades:BTCUSDT".into(), "5-1".into()),
                ("x".into(), "bad".into()),
            ],
        };
        let back = SessionRecord::from_json(r.to_json().as_bytes()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.joined(),
            vec![("trades:BTCUSDT".to_owned(), Offset::new(5, 1))]
        );
        assert!(SessionRecord::from_json(b"{\"pid\":1}").is_none());
    }
}
