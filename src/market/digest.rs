//! `ticker:all`: the tickers changed within a throttle window, sent as one list when it
//! ends, in the default room and in each `ticker:all` view at its own window.
//!
//! The only market state that spans symbols, so it stands apart from the per-symbol state:
//! the symbols can be applied under locks of their own, and only batches with tickers (and
//! the timers) touch this.

use super::throttle::{Offer, Throttle};
use super::{tickers_digest, Payload, Publish};
use crate::room::Room;
use indexmap::IndexMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// One room's list in the making.
struct Fold {
    throttle: Throttle<()>,
    changed: IndexMap<Arc<str>, Payload>,
}

impl Fold {
    fn new(window_ms: u64) -> Fold {
        Fold {
            throttle: Throttle::new(window_ms),
            changed: IndexMap::new(),
        }
    }

    fn emit(&mut self, room: &Arc<str>, out: &mut Vec<Publish>) {
        if !self.changed.is_empty() {
            out.push(tickers_digest(room.clone(), &mut self.changed));
        }
    }
}

pub struct TickerDigest {
    /// The default room first, then the views, by room.
    rooms: IndexMap<Arc<str>, Fold>,
    timers: BinaryHeap<Reverse<(u64, Arc<str>)>>,
}

impl TickerDigest {
    pub fn new(window_ms: u64) -> TickerDigest {
        let mut rooms = IndexMap::new();
        rooms.insert(Room::TickerAll.name(), Fold::new(window_ms));
        TickerDigest {
            rooms,
            timers: BinaryHeap::new(),
        }
    }

    /// A symbol's new ticker.
    pub fn offer(&mut self, symbol: &Arc<str>, data: &Payload, now: u64, out: &mut Vec<Publish>) {
        for (room, fold) in self.rooms.iter_mut() {
            fold.changed.insert(symbol.clone(), data.clone());
            match fold.throttle.offer((), now) {
                Offer::Emit(()) => fold.emit(room, out),
                Offer::Held(Some(at)) => self.timers.push(Reverse((at, room.clone()))),
                Offer::Held(None) => {}
            }
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Sends the lists whose windows ended by `now`.
    pub fn poll(&mut self, now: u64, out: &mut Vec<Publish>) {
        while self.next_deadline().is_some_and(|at| at <= now) {
            let Some(Reverse((_, room))) = self.timers.pop() else {
                return;
            };
            if let Some(fold) = self.rooms.get_mut(&room) {
                if fold.throttle.on_timer(now).is_some() {
                    fold.emit(&room, out);
                }
            }
        }
    }

    /// Starts folding for a `ticker:all` view at its own window (from now: what its members
    /// get first is composed by the shards from every symbol's latest value).
    pub fn start_view(&mut self, room: &Arc<str>, window_ms: u64) {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.clone(), Fold::new(window_ms));
        }
    }

    pub fn drop_view(&mut self, room: &Arc<str>) {
        // The default room is not a view and stays.
        if **room != *Room::TickerAll.name() {
            self.rooms.shift_remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticker(n: u64) -> Payload {
        Payload::Json(bytes::Bytes::from(format!("{{\"n\":{n}}}")))
    }

    fn lists(out: &[Publish]) -> Vec<(String, String)> {
        out.iter()
            .map(|p| {
                (
                    p.room.to_string(),
                    String::from_utf8(p.body.data.to_json().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn each_room_folds_at_its_own_window() {
        let mut d = TickerDigest::new(1000);
        let view: Arc<str> = Arc::from("ticker:all:3000ms");
        d.start_view(&view, 3000);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("AAA"), Arc::from("BBB"));
        let mut out = Vec::new();
        d.offer(&a, &ticker(1), 0, &mut out);
        assert_eq!(
            lists(&out),
            [
                ("ticker:all".into(), "[{\"n\":1}]".into()),
                ("ticker:all:3000ms".into(), "[{\"n\":1}]".into())
            ]
        );
        out.clear();
        d.offer(&b, &ticker(2), 10, &mut out);
        d.offer(&a, &ticker(3), 20, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.next_deadline(), Some(1000));
        d.poll(1000, &mut out);
        assert_eq!(
            lists(&out),
            [("ticker:all".into(), "[{\"n\":2},{\"n\":3}]".into())]
        );
        out.clear();
        d.drop_view(&view);
        d.poll(3000, &mut out);
        assert!(out.is_empty(), "a dropped view sends nothing");
        d.drop_view(&Room::TickerAll.name());
        d.offer(&a, &ticker(4), 3000, &mut out);
        assert_eq!(out.len(), 1, "the default room is never dropped");
    }
}
