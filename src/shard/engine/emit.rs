//! Delivery of socket.io Redis emitter packets: to the union of the named rooms (each socket
//! once, as socket.io does), or to every `/ws` socket, minus the `except` rooms.

use super::ids::SessionId;
use super::Engine;
use crate::shard::handle::RoomEmit;
use std::collections::HashSet;

impl Engine {
    pub(super) fn deliver_emit(&mut self, emit: &RoomEmit) {
        let mut targets: Vec<SessionId> = if emit.rooms.is_empty() {
            self.gateway_sessions()
        } else {
            emit.rooms
                .iter()
                .filter_map(|r| self.rooms.get(r))
                .flat_map(|r| r.members.iter().copied())
                .collect()
        };
        targets.sort_unstable();
        targets.dedup();
        if !emit.except.is_empty() {
            let excluded: HashSet<SessionId> = emit
                .except
                .iter()
                .filter_map(|r| self.rooms.get(r))
                .flat_map(|r| r.members.iter().copied())
                .collect();
            targets.retain(|s| !excluded.contains(s));
        }
        for s in targets {
            self.send_wire(s, &emit.message);
        }
    }
}
