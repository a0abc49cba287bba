//! A shard's room membership table: room name → the local sessions in it. Owned by one
//! thread, so joins, leaves and fan-out take no lock.

use super::ids::SessionId;
use crate::room::{Room, RoomKind};
use crate::shard::presence::Presence;
use indexmap::IndexSet;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct RoomEntry {
    /// Tags this room's frames in outbound queues; never reused.
    pub id: u64,
    pub members: IndexSet<SessionId>,
}

#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<Arc<str>, RoomEntry>,
    /// Where the publishing side learns which rooms have members here.
    presence: Option<Arc<Presence>>,
    /// A room was created or removed since `take_changed`.
    changed: bool,
    next_id: u64,
    subscriptions: usize,
    by_kind: [usize; RoomKind::ALL.len()],
}

fn kind_of(room: &str) -> usize {
    Room::parse(room).kind().index()
}

impl Rooms {
    /// Adds `session` to `room`; true if the room was created.
    pub fn join(&mut self, room: Arc<str>, session: SessionId) -> bool {
        let room_name = room.clone();
        let next_id = &mut self.next_id;
        let mut created = false;
        let entry = self.rooms.entry(room).or_insert_with(|| {
            *next_id += 1;
            created = true;
            RoomEntry {
                id: *next_id,
                members: IndexSet::new(),
            }
        });
        if entry.members.insert(session) {
            self.subscriptions += 1;
            self.by_kind[kind_of(&room_name)] += 1;
        }
        if created {
            self.changed = true;
            if let Some(p) = &self.presence {
                p.joined(&room_name);
            }
        }
        created
    }

    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Reports rooms as they get their first member and lose their last to `presence`.
    pub fn report_to(&mut self, presence: Arc<Presence>) {
        for room in self.rooms.keys() {
            presence.joined(room);
        }
        self.presence = Some(presence);
    }

    /// Takes `session` out of `room`; true if the room was removed (it is empty).
    pub fn leave(&mut self, room: &str, session: SessionId) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        if r.members.swap_remove(&session) {
            self.subscriptions -= 1;
            self.by_kind[kind_of(room)] -= 1;
        }
        if r.members.is_empty() {
            self.rooms.remove(room);
            self.changed = true;
            if let Some(p) = &self.presence {
                p.left(room);
            }
            return true;
        }
        false
    }

    pub fn get(&self, room: &str) -> Option<&RoomEntry> {
        self.rooms.get(room)
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.rooms.keys()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Subscriptions per kind, in `RoomKind::ALL` order.
    pub fn subscriptions_by_kind(&self) -> [usize; RoomKind::ALL.len()] {
        self.by_kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_first_join_and_last_leave() {
        let presence = Arc::new(Presence::default());
        let mut r = Rooms::default();
        let (a, b) = (SessionId::new(1), SessionId::new(2));
        r.join(Arc::from("trades:X"), a);
        r.report_to(presence.clone());
        r.join(Arc::from("trades:Y"), a);
        r.join(Arc::from("trades:Y"), b);
        assert!(presence.wants_room("trades:X") && presence.wants_room("trades:Y"));
        assert!(r.take_changed() && !r.take_changed());
        r.leave("trades:Y", a);
        assert!(presence.wants_room("trades:Y"), "b is still in it");
        r.leave("trades:Y", b);
        assert!(!presence.wants_room("trades:Y") && r.take_changed());
    }

    #[test]
    fn join_leave_and_cleanup() {
        let mut r = Rooms::default();
        r.join(Arc::from("trades:BTCUSDT"), SessionId::new(1));
        r.join(Arc::from("trades:BTCUSDT"), SessionId::new(2));
        r.join(Arc::from("trades:BTCUSDT"), SessionId::new(2));
        assert_eq!(r.get("trades:BTCUSDT").unwrap().members.len(), 2);
        assert_eq!(r.subscription_count(), 2);
        r.leave("trades:BTCUSDT", SessionId::new(1));
        r.leave("trades:BTCUSDT", SessionId::new(2));
        assert!(r.get("trades:BTCUSDT").is_none());
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.subscription_count(), 0);
    }
}
