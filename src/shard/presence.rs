//! Which rooms a shard has members in, as the publishing side sees it, so a batch wakes only
//! the shards that deliver some of it. The shard writes the set when a room gets its first
//! member or loses its last (rare); ingest reads it once per batch per shard.
//!
//! A batch is still queued to every shard, in order: a shard keeps the last values and views
//! of rooms it has no member in yet, and its recovery offset, from every batch. A shard that
//! is not woken takes its queue at its next turn, which starts with the queue, so nothing a
//! client then asks for is answered from older state than before.

use crate::shard::handle::Broadcast;
use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Presence {
    rooms: RwLock<HashSet<Arc<str>>>,
}

impl Presence {
    /// `room` got its first member on this shard.
    pub fn joined(&self, room: &Arc<str>) {
        self.rooms.write().insert(room.clone());
    }

    /// `room` lost its last member on this shard.
    pub fn left(&self, room: &str) {
        self.rooms.write().remove(room);
    }

    #[cfg(test)]
    pub fn wants_room(&self, room: &str) -> bool {
        self.rooms.read().contains(room)
    }

    /// Whether the shard has something to deliver in `batch`: a member in one of its rooms,
    /// or a view's state that members wait for.
    ///
    /// A publisher queues the batch before asking, and the shard drains its queue after it
    /// changes the set, so a room joined while a batch was on its way is never missed by both.
    pub fn wants(&self, batch: &[Broadcast]) -> bool {
        let rooms = self.rooms.read();
        batch
            .iter()
            .any(|b| b.refresh.is_some() || rooms.contains(&*b.room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::{Payload, Publish, StreamClass};

    fn batch(rooms: &[&str]) -> Vec<Broadcast> {
        rooms
            .iter()
            .map(|r| {
                Publish::new(
                    Arc::from(*r),
                    "trade",
                    Payload::Json(bytes::Bytes::from_static(b"{}")),
                    StreamClass::Lossless,
                )
                .encode(0, None)
            })
            .collect()
    }

    #[test]
    fn wants_batches_with_a_member_room_or_a_refresh() {
        let p = Presence::default();
        assert!(!p.wants(&batch(&["trades:A", "trades:B"])));
        let mut refresh = batch(&["orderbook:A@5"]);
        refresh[0].refresh = Some(1);
        assert!(
            p.wants(&refresh),
            "a view's state is always for its waiting members"
        );
        p.joined(&Arc::from("trades:B"));
        assert!(p.wants(&batch(&["trades:A", "trades:B"])));
        assert!(!p.wants(&batch(&["trades:A"])));
        p.left("trades:B");
        assert!(!p.wants(&batch(&["trades:B"])));
    }
}
