//! A shard's room membership table: room name → the local sessions in it. Owned by one
//! thread, so joins, leaves and fan-out take no lock.

use indexmap::IndexSet;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Rooms {
    members: HashMap<Arc<str>, IndexSet<usize>>,
}

impl Rooms {
    pub fn join(&mut self, room: Arc<str>, session: usize) {
        self.members.entry(room).or_default().insert(session);
    }

    pub fn leave(&mut self, room: &str, session: usize) {
        if let Some(set) = self.members.get_mut(room) {
            set.swap_remove(&session);
            if set.is_empty() {
                self.members.remove(room);
            }
        }
    }

    pub fn members(&self, room: &str) -> Option<&IndexSet<usize>> {
        self.members.get(room)
    }

    pub fn room_count(&self) -> usize {
        self.members.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.members.values().map(IndexSet::len).sum()
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
        assert_eq!(r.members("trades:BTCUSDT").unwrap().len(), 2);
        r.leave("trades:BTCUSDT", 1);
        r.leave("trades:BTCUSDT", 2);
        assert!(r.members("trades:BTCUSDT").is_none());
        assert_eq!(r.room_count(), 0);
    }
}
