//! A shard's room membership table: room name → the local sessions in it. Owned by one
//! thread, so joins, leaves and fan-out take no lock.

use indexmap::IndexSet;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Room {
    /// Tags this room's frames in outbound queues; never reused.
    pub id: u64,
    pub members: IndexSet<usize>,
}

#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<Arc<str>, Room>,
    next_id: u64,
    subscriptions: usize,
    by_kind: [usize; ROOM_KINDS.len()],
}

/// Room kinds by name prefix, for subscription counts by channel type.
pub const ROOM_KINDS: [&str; 6] = ["ticker", "orderbook", "trades", "klines", "user", "other"];

fn kind_of(room: &str) -> usize {
    let prefix = room.split(':').next().unwrap_or("");
    ROOM_KINDS[..5]
        .iter()
        .position(|k| *k == prefix)
        .unwrap_or(5)
}

impl Rooms {
    pub fn join(&mut self, room: Arc<str>, session: usize) {
        let room_name = room.clone();
        let next_id = &mut self.next_id;
        let entry = self.rooms.entry(room).or_insert_with(|| {
            *next_id += 1;
            Room {
                id: *next_id,
                members: IndexSet::new(),
            }
        });
        if entry.members.insert(session) {
            self.subscriptions += 1;
            self.by_kind[kind_of(&room_name)] += 1;
        }
    }

    pub fn leave(&mut self, room: &str, session: usize) {
        if let Some(r) = self.rooms.get_mut(room) {
            if r.members.swap_remove(&session) {
                self.subscriptions -= 1;
                self.by_kind[kind_of(room)] -= 1;
            }
            if r.members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    pub fn get(&self, room: &str) -> Option<&Room> {
        self.rooms.get(room)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Subscriptions per kind, in `ROOM_KINDS` order.
    pub fn subscriptions_by_kind(&self) -> [usize; ROOM_KINDS.len()] {
        self.by_kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_and_cleanup() {
        let mut r = Rooms::default();
        r.join(Arc::from("trades:BTCUSDT"), 1);
        r.join(Arc::from("trades:BTCUSDT"), 2);
        r.join(Arc::from("trades:BTCUSDT"), 2);
        assert_eq!(r.get("trades:BTCUSDT").unwrap().members.len(), 2);
        assert_eq!(r.subscription_count(), 2);
        r.leave("trades:BTCUSDT", 1);
        r.leave("trades:BTCUSDT", 2);
        assert!(r.get("trades:BTCUSDT").is_none());
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.subscription_count(), 0);
    }
}
