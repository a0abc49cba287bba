//! Views on this shard (rooms at a subscription's own depth or speed, see `market::demand`):
//! a view's state is kept only while the shard has members in it, and is usable only once the
//! market's refresh for the epoch the shard opened it in has come. Until then nothing of the
//! view is delivered here, so a new member's first message is always the state the view's
//! next updates chain to.

use super::ids::SessionId;
use super::Engine;
use crate::codec::WireMessage;
use crate::gateway::envelope;
use crate::market::Payload;
use crate::room::{Room, View};
use crate::shard::handle::Broadcast;
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub(super) struct OpenView {
    /// The epoch whose refresh this shard waits for, or has had.
    epoch: u64,
    /// The refresh came: the kept state is the view's, and its updates are delivered.
    ready: bool,
}

impl Engine {
    /// The room just got its first member here.
    pub(super) fn open_view(&mut self, room: &Arc<str>) {
        let Some(view) = Room::parse(room).view() else {
            return;
        };
        let epoch = self.shared.demand.open(room);
        self.last_values.remove(room);
        self.books.remove(room);
        // `ticker:all` views start from the tickers every shard keeps anyway.
        let ready = matches!(view, View::TickerAll { .. });
        self.views.insert(room.clone(), OpenView { epoch, ready });
    }

    /// The room's last member here left.
    pub(super) fn close_view(&mut self, room: &str) {
        if let Some((room, _)) = self.views.remove_entry(room) {
            self.last_values.remove(&room);
            self.books.remove(&room);
            self.shared.demand.close(&room);
        }
    }

    /// Whether what the market sends for `room` is kept and delivered here: always for the
    /// default rooms; for a view, once it is open here and refreshed.
    pub(super) fn follows(&self, room: &str) -> bool {
        match self.views.get(room) {
            Some(v) => v.ready,
            None => Room::parse(room).view().is_none(),
        }
    }

    /// A view's state from the market: taken if it answers the epoch this shard opened the
    /// view in, and sent to every member, who were all waiting for it.
    pub(super) fn refreshed(&mut self, b: &Broadcast) {
        let Some(v) = self.views.get_mut(&b.room) else {
            return;
        };
        if v.ready || Some(v.epoch) != b.refresh {
            return;
        }
        v.ready = true;
        if b.retain {
            self.last_values.insert(b.room.clone(), b.body.clone());
        }
        if let Some(view) = &b.book {
            // The refresh is the subscribe snapshot itself.
            self.books
                .insert(b.room.clone(), (view.clone(), Some(b.body.clone())));
        }
        let Some(first) = self.first_message(&b.room) else {
            return;
        };
        let members: Vec<SessionId> = self
            .rooms
            .get(&b.room)
            .map(|r| r.members.iter().copied().collect())
            .unwrap_or_default();
        for s in members {
            self.send_wire(s, &first);
        }
    }

    /// What a new member of `room` is sent first: the room's latest value, every ticker, or
    /// the book snapshot its deltas chain to. Nothing for a view not refreshed yet: its
    /// members get the refresh.
    pub(super) fn first_message(&mut self, room: &Arc<str>) -> Option<WireMessage> {
        let parsed = Room::parse(room);
        let waiting = parsed.view().is_some()
            && !matches!(parsed, Room::View(View::TickerAll { .. }))
            && !self.views.get(&**room).is_some_and(|v| v.ready);
        if waiting {
            return None;
        }
        if let Some(last) = self.last_values.get(room) {
            return Some(last.clone());
        }
        if matches!(parsed, Room::TickerAll | Room::View(View::TickerAll { .. })) {
            return self.ticker_all.snapshot(room, self.now.unix_ms);
        }
        let (view, cached) = self.books.get_mut(room)?;
        let now_ms = self.now.unix_ms;
        let m = cached.get_or_insert_with(|| {
            let data = Payload::Json(view.snapshot_json("subscribe").into());
            envelope::encode_payload("orderbook.update", room, &data, now_ms)
        });
        Some(m.clone())
    }
}
