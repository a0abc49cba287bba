//! Views: a symbol's order book at another depth or speed than the default room's, its
//! ticker or candles at another throttle window (`ticker:all` at another window is the
//! digest's). Each is a room with a state of its own (a book window chained and checksummed
//! on its own, a throttle), computed only while `demand` says some shard has it open.

use super::book::{BookView, Replica, Window};
use super::demand::Change;
use super::throttle::{Offer, Throttle};
use super::{
    book_snapshot, kline_publish, ticker_publish, BookChange, BookFeed, KlineState, Market,
    MarketCounters, Payload, Publish, StreamClass, TimerKey,
};
use crate::room::{Room, View, INTERVALS};
use foldhash::HashMap;
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

type Timers = BinaryHeap<Reverse<(u64, TimerKey)>>;

enum ViewState {
    Book {
        window: Window,
        speed_ms: u64,
        conflating: bool,
    },
    Ticker(Throttle<Payload>),
    Klines {
        interval: &'static str,
        state: KlineState,
    },
}

#[derive(Default)]
pub(super) struct Views {
    states: HashMap<Arc<str>, ViewState>,
    /// The views each symbol's events feed, by room.
    by_symbol: HashMap<Arc<str>, SmallVec<[Arc<str>; 2]>>,
}

fn arm(timers: &mut Timers, at: Option<u64>, room: &Arc<str>) {
    if let Some(at) = at {
        timers.push(Reverse((at, TimerKey::View(room.clone()))));
    }
}

impl Views {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The window clients of a book view room have now.
    pub fn book_view(&self, room: &str) -> Option<Arc<BookView>> {
        match self.states.get(room)? {
            ViewState::Book { window, .. } => Some(window.sent().clone()),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn on_book(
        &mut self,
        symbol: &str,
        change: &BookChange,
        replica: &Replica,
        now: u64,
        out: &mut Vec<Publish>,
        counters: &mut MarketCounters,
        timers: &mut Timers,
    ) {
        for room in self.by_symbol.get(symbol).into_iter().flatten() {
            if let Some(ViewState::Book {
                window,
                speed_ms,
                conflating,
            }) = self.states.get_mut(room)
            {
                let feed = BookFeed {
                    room,
                    window,
                    speed_ms: *speed_ms,
                    conflating,
                };
                arm(
                    timers,
                    feed.on_change(change, replica, now, out, counters),
                    room,
                );
            }
        }
    }

    pub fn on_ticker(
        &mut self,
        symbol: &Arc<str>,
        data: &Payload,
        now: u64,
        out: &mut Vec<Publish>,
        timers: &mut Timers,
    ) {
        for room in self.by_symbol.get(&**symbol).into_iter().flatten() {
            let at = match self.states.get_mut(room) {
                Some(ViewState::Ticker(throttle)) => match throttle.offer(data.clone(), now) {
                    Offer::Emit(v) => {
                        out.push(ticker_publish(room.clone(), v));
                        None
                    }
                    Offer::Held(at) => at,
                },
                _ => None,
            };
            arm(timers, at, room);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn on_kline(
        &mut self,
        symbol: &str,
        interval: &str,
        (open_time, closed, data): (Option<u64>, bool, &Payload),
        now: u64,
        out: &mut Vec<Publish>,
        counters: &mut MarketCounters,
        timers: &mut Timers,
    ) {
        for room in self.by_symbol.get(symbol).into_iter().flatten() {
            if let Some(ViewState::Klines { interval: i, state }) = self.states.get_mut(room) {
                if *i == interval {
                    let at = state.offer(room, open_time, closed, data.clone(), now, out, counters);
                    arm(timers, at, room);
                }
            }
        }
    }

    fn insert(&mut self, room: Arc<str>, symbol: &str, state: ViewState) {
        self.by_symbol
            .entry(Arc::from(symbol))
            .or_default()
            .push(room.clone());
        self.states.insert(room, state);
    }

    fn remove(&mut self, room: &Arc<str>) {
        if self.states.remove(room).is_none() {
            return;
        }
        if let Some(symbol) = Room::parse(room).view().and_then(|v| v.symbol()) {
            if let Some(rooms) = self.by_symbol.get_mut(symbol) {
                rooms.retain(|r| r != room);
                if rooms.is_empty() {
                    self.by_symbol.remove(symbol);
                }
            }
        }
    }
}

/// The answer to a view's opening (`epoch`): its state, or, for a view whose first message
/// the shards compose themselves or that has nothing yet, a marker delivered to nobody.
pub fn refresh(room: Arc<str>, epoch: u64, state: Option<Publish>) -> Publish {
    let state = state.unwrap_or_else(|| Publish {
        deliver: false,
        ..Publish::new(
            room,
            "refresh",
            Payload::Json(bytes::Bytes::from_static(b"null")),
            StreamClass::Latest,
        )
    });
    Publish {
        refresh: Some(epoch),
        ..state
    }
}

impl Market {
    /// Starts computing the views that gained subscribers, drops those that lost their last,
    /// and answers each opening with the view's state (see `demand`).
    pub fn views_changed(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        out: &mut Vec<Publish>,
    ) {
        for change in changes {
            match change {
                Change::Drop { room } => self.views.remove(&room),
                Change::Refresh { room, epoch } => {
                    let Some(view) = Room::parse(&room).view() else {
                        continue;
                    };
                    if !self.views.states.contains_key(&room) {
                        self.start_view(room.clone(), view);
                    }
                    let state = self.view_state(&room, view);
                    out.push(refresh(room, epoch, state));
                }
            }
        }
    }

    fn start_view(&mut self, room: Arc<str>, view: View<'_>) {
        let speed_ms = u64::from(view.speed());
        let Some(symbol) = view.symbol() else {
            return;
        };
        let state = match view {
            View::Book { symbol, depth, .. } => {
                let mut window = Window::new(&Arc::from(symbol), usize::from(depth));
                if let Some(b) = self.books.get(symbol) {
                    window.snapshot(b.book.replica());
                }
                ViewState::Book {
                    window,
                    speed_ms,
                    conflating: false,
                }
            }
            View::Ticker { .. } => ViewState::Ticker(Throttle::new(speed_ms)),
            View::TickerAll { .. } => return,
            View::Klines { interval, .. } => {
                let Some(interval) = INTERVALS.iter().copied().find(|i| *i == interval) else {
                    return;
                };
                ViewState::Klines {
                    interval,
                    state: KlineState::new(speed_ms),
                }
            }
        };
        self.views.insert(room, symbol, state);
    }

    /// What a new member of a view is sent first: the book window its deltas chain to, the
    /// latest ticker or candle. Kept by the shards, not delivered as such.
    fn view_state(&self, room: &Arc<str>, view: View<'_>) -> Option<Publish> {
        let state = match (view, self.views.states.get(room)?) {
            (View::Book { symbol, .. }, ViewState::Book { window, .. }) => {
                self.books.get(symbol)?.book.last_update_id()?;
                book_snapshot(room.clone(), window.sent().clone(), "subscribe")
            }
            (View::Ticker { symbol, .. }, _) => {
                let json = self.ticker_json.get(symbol)?;
                Publish {
                    retain: true,
                    ..ticker_publish(
                        room.clone(),
                        Payload::Json(bytes::Bytes::copy_from_slice(json)),
                    )
                }
            }
            (View::Klines { symbol, .. }, ViewState::Klines { interval, .. }) => {
                let latest = self.kline_latest.get(&(Arc::from(symbol), *interval))?;
                kline_publish(room.clone(), latest.clone(), false)
            }
            _ => return None,
        };
        Some(Publish {
            deliver: false,
            ..state
        })
    }

    pub(super) fn view_timer(&mut self, room: &Arc<str>, now: u64, out: &mut Vec<Publish>) {
        let Some(state) = self.views.states.get_mut(room) else {
            return;
        };
        match state {
            ViewState::Book {
                window, conflating, ..
            } => {
                let symbol = Room::parse(room).view().and_then(|v| v.symbol());
                if let Some(b) = symbol.and_then(|s| self.books.get(s)) {
                    let feed = BookFeed {
                        room,
                        window,
                        speed_ms: 0,
                        conflating,
                    };
                    feed.on_timer(b.book.replica(), out);
                }
            }
            ViewState::Ticker(throttle) => {
                if let Some(v) = throttle.on_timer(now) {
                    out.push(ticker_publish(room.clone(), v));
                }
            }
            ViewState::Klines { state, .. } => {
                if let Some(v) = state.throttle.on_timer(now) {
                    out.push(kline_publish(room.clone(), v, false));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::input::parse_event;
    use super::*;
    use crate::market::MarketSettings;
    use serde_json::{json, Value};

    fn apply(m: &mut Market, v: Value, now: u64) -> Vec<Publish> {
        let mut out = Vec::new();
        m.apply(parse_event(v).unwrap(), now, &mut out);
        m.take_ticker_values(&mut out);
        out
    }

    fn json_of(p: &Publish) -> Value {
        match &p.body.data {
            Payload::Json(j) => serde_json::from_slice(j).unwrap(),
            Payload::Value(v) => v.clone(),
        }
    }

    fn in_room<'a>(out: &'a [Publish], room: &str) -> Vec<&'a Publish> {
        out.iter().filter(|p| &*p.room == room).collect()
    }

    fn refresh(m: &mut Market, room: &str, epoch: u64) -> Vec<Publish> {
        let mut out = Vec::new();
        let room: Arc<str> = Arc::from(room);
        m.views_changed(vec![Change::Refresh { room, epoch }], &mut out);
        out
    }

    #[test]
    fn a_book_view_has_its_own_window_chain_and_speed() {
        let mut m = Market::new(MarketSettings::default());
        let room = "orderbook:X1:2:100ms";
        let r = refresh(&mut m, room, 7);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].refresh, r[0].deliver, r[0].book.is_some()),
            (Some(7), false, false)
        );

        let snap = json!({"type":"orderbook.update","symbol":"X1","data":{"type":"snapshot",
            "bids":[["10","1"],["9","1"],["8","1"]],"asks":[["11","1"]],"lastUpdateId":1}});
        let out = apply(&mut m, snap, 0);
        let v = in_room(&out, room);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].class, StreamClass::BookSnapshot);
        assert_eq!(json_of(v[0])["bids"], json!([["10", "1"], ["9", "1"]]));

        // A change below the view's window, then one inside it, within 100 ms: one delta,
        // sent when the window ends, chained to the snapshot.
        let d = |f: u64, p: &str| {
            json!({"type":"orderbook.update","symbol":"X1","data":{"type":"delta",
            "bids":[[p,"5"]],"asks":[],"firstUpdateId":f,"lastUpdateId":f}})
        };
        assert!(in_room(&apply(&mut m, d(2, "8"), 10), room).is_empty());
        assert!(in_room(&apply(&mut m, d(3, "9"), 20), room).is_empty());
        assert_eq!(m.next_deadline(), Some(110));
        let mut out = Vec::new();
        m.poll(110, &mut out);
        m.attach_views(&mut out);
        let v = in_room(&out, room);
        assert_eq!(v.len(), 1);
        let delta = json_of(v[0]);
        assert_eq!(
            (
                delta["firstUpdateId"].as_u64(),
                delta["lastUpdateId"].as_u64()
            ),
            (Some(2), Some(3))
        );
        assert_eq!(delta["bids"], json!([["9", "5"]]));
        let view = v[0].book.as_ref().unwrap();
        assert_eq!(delta["checksum"].as_u64(), Some(u64::from(view.checksum)));
        assert_eq!(view.bids.len(), 2);

        // A second shard opening it later gets the last sent window, not a new one.
        let r = refresh(&mut m, room, 7);
        assert_eq!(r[0].book.as_ref().unwrap().last_update_id, 3);
        assert_eq!(json_of(&r[0])["reason"], "subscribe");

        // Dropped: nothing more for it.
        let mut out = Vec::new();
        m.views_changed(
            vec![Change::Drop {
                room: Arc::from(room),
            }],
            &mut out,
        );
        assert!(out.is_empty());
        assert!(in_room(&apply(&mut m, d(4, "10"), 500), room).is_empty());
        assert!(m.views.is_empty());
    }

    #[test]
    fn ticker_and_kline_views_throttle_on_their_own() {
        let mut m = Market::new(MarketSettings::default());
        let t = |i: u64| json!({"type":"ticker.update","symbol":"X1","data":{"i":i}});
        apply(&mut m, t(0), 0);
        let r = refresh(&mut m, "ticker:X1:0ms", 1);
        assert_eq!((r[0].retain, json_of(&r[0])), (true, json!({"i": 0})));
        let mut every = 0;
        for i in 1..=10 {
            let out = apply(&mut m, t(i), i * 10);
            every += in_room(&out, "ticker:X1:0ms").len();
            assert!(
                in_room(&out, "ticker:X1").is_empty(),
                "default stays at 1 s"
            );
        }
        assert_eq!(every, 10);

        let k = |open: u64, c: u64| {
            json!({"type":"kline.update","symbol":"X1","interval":"1m",
            "data":{"openTime":open,"c":c,"closed":false}})
        };
        apply(&mut m, k(0, 1), 0);
        let r = refresh(&mut m, "klines:X1:1m:100ms", 3);
        assert_eq!(json_of(&r[0])["c"], 1);
        let out = apply(&mut m, k(0, 2), 1);
        assert_eq!(in_room(&out, "klines:X1:1m:100ms").len(), 1, "leading edge");
        let out = apply(&mut m, k(0, 3), 2);
        assert!(in_room(&out, "klines:X1:1m:100ms").is_empty());
        let mut out = Vec::new();
        m.poll(101, &mut out);
        let v = in_room(&out, "klines:X1:1m:100ms");
        assert_eq!(json_of(v[0])["c"], 3, "trailing edge");
    }
}
