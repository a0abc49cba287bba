//! The market state split by symbol, each part under a lock of its own, so batches of
//! different symbols apply at once on different threads while each symbol's events keep
//! their order.
//!
//! A batch locks the parts it touches in ascending order, so no two batches wait on each
//! other in a cycle, then the `ticker:all` digest (the one state spanning symbols) if it has
//! tickers. Holding them all while it validates and applies keeps a batch atomic: it is
//! checked against the books as they are, and nothing else changes them before it applies.

use crate::market::demand::Change;
use crate::market::digest::TickerDigest;
use crate::market::input::IngestEvent;
use crate::market::{
    attach_book_views, ticker_values, validate_books, view_refresh, BookChain, Market,
    MarketCounters, MarketSettings, Publish, StreamClass,
};
use crate::room::{Room, View};
use parking_lot::{Mutex, MutexGuard};

/// How many parts the symbols are spread over: enough that batches from a few feeders of
/// distinct markets rarely meet, few enough that a batch across every symbol takes its
/// locks in well under a microsecond.
pub const PARTS: usize = 16;

/// The part a symbol's state lives in, the same on every run and instance. Asked a few
/// times per event, so a multiplicative hash of a few cycles over the symbol's bytes (the
/// scheme of rustc's FxHash), its top bits taken.
pub fn part_of(symbol: &str) -> usize {
    const K: u32 = 0x9e37_79b9;
    let h = symbol.bytes().fold(0u32, |h, b| {
        (h.rotate_left(5) ^ u32::from(b)).wrapping_mul(K)
    });
    (h >> (u32::BITS - PARTS.trailing_zeros())) as usize
}

/// The symbol whose part a room's state is in (a symbol's rooms and its views).
fn symbol_of(room: &str) -> Option<&str> {
    match Room::parse(room) {
        Room::Ticker(s)
        | Room::Orderbook(s)
        | Room::Trades(s)
        | Room::BookTicker(s)
        | Room::Klines(s, _) => Some(s),
        Room::View(v) => v.symbol(),
        _ => None,
    }
}

pub struct Partitions {
    parts: Box<[Mutex<Market>]>,
    digest: Mutex<TickerDigest>,
}

/// What a batch or a timer turn must hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    parts: u32,
    digest: bool,
}

const _: () = assert!(PARTS <= u32::BITS as usize && PARTS.is_power_of_two());

impl Needs {
    pub fn events<'a>(events: impl IntoIterator<Item = &'a IngestEvent>) -> Needs {
        let mut needs = Needs::default();
        for ev in events {
            if let Some(symbol) = ev.symbol() {
                needs.parts |= 1 << part_of(symbol);
            }
            needs.digest |= matches!(ev, IngestEvent::Ticker { .. });
        }
        needs
    }

    pub fn changes<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Needs {
        let mut needs = Needs::default();
        for change in changes {
            match Room::parse(change.room()).view() {
                Some(View::TickerAll { .. }) => needs.digest = true,
                Some(view) => {
                    if let Some(symbol) = view.symbol() {
                        needs.parts |= 1 << part_of(symbol);
                    }
                }
                None => {}
            }
        }
        needs
    }

    /// What both need.
    pub fn and(self, other: Needs) -> Needs {
        Needs {
            parts: self.parts | other.parts,
            digest: self.digest || other.digest,
        }
    }

    pub fn part(i: usize) -> Needs {
        Needs {
            parts: 1 << (i % PARTS),
            digest: false,
        }
    }

    pub fn digest() -> Needs {
        Needs {
            parts: 0,
            digest: true,
        }
    }
}

/// The parts (and digest) one batch or timer turn holds, released together on drop.
pub struct Held<'a> {
    parts: [Option<MutexGuard<'a, Market>>; PARTS],
    digest: Option<MutexGuard<'a, TickerDigest>>,
}

impl Partitions {
    pub fn new(settings: MarketSettings) -> Partitions {
        Partitions {
            parts: (0..PARTS)
                .map(|_| Mutex::new(Market::new(settings)))
                .collect(),
            digest: Mutex::new(TickerDigest::new(settings.ticker_throttle_ms)),
        }
    }

    /// Locks what `needs` names, parts in ascending order, then the digest.
    pub fn lock(&self, needs: Needs) -> Held<'_> {
        let parts =
            std::array::from_fn(|i| (needs.parts & (1 << i) != 0).then(|| self.parts[i].lock()));
        Held {
            parts,
            digest: needs.digest.then(|| self.digest.lock()),
        }
    }

    /// Reads the part a symbol lives in.
    pub fn read<R>(&self, symbol: &str, f: impl FnOnce(&Market) -> R) -> R {
        f(&self.parts[part_of(symbol)].lock())
    }

    pub fn counters(&self) -> MarketCounters {
        self.parts.iter().fold(MarketCounters::default(), |sum, m| {
            let c = m.lock().counters;
            MarketCounters {
                throttled: sum.throttled + c.throttled,
                conflated: sum.conflated + c.conflated,
                resyncs: sum.resyncs + c.resyncs,
            }
        })
    }
}

impl Held<'_> {
    fn market(&self, symbol: &str) -> Option<&Market> {
        self.parts[part_of(symbol)].as_deref()
    }

    /// Checks a batch's book ids against the books as they are (see `Market::validate`).
    /// Every part the batch touches must be held.
    pub fn validate(&self, events: &[IngestEvent]) -> Result<(), (usize, String)> {
        validate_books(events, |symbol| self.last_update_id(symbol))
    }

    fn last_update_id(&self, symbol: &str) -> Option<u64> {
        self.market(symbol).and_then(|m| m.last_update_id(symbol))
    }

    /// What of a stream's events fits the books, in order: each book event is checked
    /// against the one kept before it, or the book as it is. The stream has decided the order,
    /// so what does not fit is left out (with why), not the whole read refused.
    pub fn fitting<T>(
        &self,
        events: Vec<(IngestEvent, T)>,
    ) -> (Vec<(IngestEvent, T)>, Vec<String>) {
        let mut chain = BookChain::new(|symbol: &str| self.last_update_id(symbol));
        let mut kept = Vec::with_capacity(events.len());
        let mut left_out = Vec::new();
        for (ev, t) in events {
            match chain.take(&ev) {
                Ok(()) => kept.push((ev, t)),
                Err(e) => left_out.push(e),
            }
        }
        (kept, left_out)
    }

    /// Applies one event of a batch whose parts (and digest, if it has tickers) are held.
    pub fn apply(&mut self, ev: IngestEvent, now: u64, out: &mut Vec<Publish>) {
        let market = ev
            .symbol()
            .and_then(|s| self.parts[part_of(s)].as_deref_mut());
        match (ev, market) {
            (
                IngestEvent::Private { room, event, data }
                | IngestEvent::Manual { room, event, data },
                _,
            ) => out.push(Publish::new(room, &event, data, StreamClass::Lossless)),
            (IngestEvent::Ticker { symbol, data }, Some(market)) => {
                if let Some(digest) = self.digest.as_deref_mut() {
                    digest.offer(&symbol, &data, now, out);
                }
                market.apply(IngestEvent::Ticker { symbol, data }, now, out);
            }
            (ev, Some(market)) => market.apply(ev, now, out),
            // Not reached: a batch holds the parts of all its symbols.
            (_, None) => {}
        }
    }

    /// After a batch: each held part's tickers for the shards, and the view each book room's
    /// last delta leaves clients with (see `Market::attach_views`).
    pub fn finish(&mut self, out: &mut Vec<Publish>) {
        let mut values = Vec::new();
        for market in self.parts.iter_mut().flatten() {
            market.take_fresh_tickers(&mut values);
        }
        out.extend(ticker_values(values));
        self.attach_views(out);
    }

    fn attach_views(&self, out: &mut [Publish]) {
        attach_book_views(out, |room| {
            symbol_of(room)
                .and_then(|s| self.market(s))
                .and_then(|m| m.room_book_view(room))
        });
    }

    /// Starts and drops views (see `demand`); every part the changes name must be held.
    pub fn views_changed(&mut self, changes: Vec<Change>, out: &mut Vec<Publish>) {
        for change in changes {
            let room = change.room().clone();
            match Room::parse(&room).view() {
                Some(View::TickerAll { speed }) => {
                    let Some(digest) = self.digest.as_deref_mut() else {
                        continue;
                    };
                    match change {
                        Change::Refresh { epoch, .. } => {
                            digest.start_view(&room, u64::from(speed));
                            // Its first message is composed by the shards from every
                            // symbol's latest ticker.
                            out.push(view_refresh(room, epoch, None));
                        }
                        Change::Drop { .. } => digest.drop_view(&room),
                    }
                }
                Some(view) => {
                    let market = view
                        .symbol()
                        .and_then(|s| self.parts[part_of(s)].as_deref_mut());
                    if let Some(market) = market {
                        market.views_changed([change], out);
                    }
                }
                None => {}
            }
        }
    }

    /// Runs the held parts' and digest's timers due at `now`; returns the next deadline.
    pub fn poll(&mut self, now: u64, out: &mut Vec<Publish>) -> Option<u64> {
        let mut next = None;
        for market in self.parts.iter_mut().flatten() {
            if market.next_deadline().is_some_and(|at| at <= now) {
                market.poll(now, out);
            }
            next = earliest(next, market.next_deadline());
        }
        if let Some(digest) = self.digest.as_deref_mut() {
            digest.poll(now, out);
            next = earliest(next, digest.next_deadline());
        }
        self.attach_views(out);
        next
    }
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::input::parse_event;
    use foldhash::HashSet;
    use serde_json::json;
    use std::sync::Arc;

    fn book(symbol: &str, first: u64, last: u64) -> IngestEvent {
        let data = if first == 0 {
            json!({"type":"snapshot","bids":[["10","1"]],"asks":[["11","1"]],"lastUpdateId":last})
        } else {
            json!({"type":"delta","bids":[["10","2"]],"asks":[],"firstUpdateId":first,"lastUpdateId":last})
        };
        parse_event(json!({"type":"orderbook.update","symbol":symbol,"data":data})).unwrap()
    }

    /// Two symbols whose states live in different parts.
    fn apart() -> (&'static str, &'static str) {
        let names = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT"];
        let a = names[0];
        let b = names[1..]
            .iter()
            .find(|b| part_of(b) != part_of(a))
            .unwrap();
        (a, b)
    }

    fn apply_batch(p: &Partitions, events: Vec<IngestEvent>, now: u64) -> Vec<Publish> {
        let mut held = p.lock(Needs::events(&events));
        held.validate(&events).unwrap();
        let mut out = Vec::new();
        for ev in events {
            held.apply(ev, now, &mut out);
        }
        held.finish(&mut out);
        out
    }

    #[test]
    fn symbols_spread_over_every_part_the_same_way_each_time() {
        let parts: HashSet<usize> = (0..200).map(|i| part_of(&format!("S{i}USDT"))).collect();
        assert_eq!(parts.len(), PARTS);
        assert_eq!(part_of("BTCUSDT"), part_of(&String::from("BTCUSDT")));
    }

    #[test]
    fn a_batch_across_parts_is_checked_whole_before_any_of_it_applies() {
        let p = Partitions::new(MarketSettings::default());
        let (a, b) = apart();
        apply_batch(&p, vec![book(a, 0, 1), book(b, 0, 1)], 0);
        let batch = vec![book(a, 2, 2), book(b, 5, 5), book(b, 1, 1)];
        let held = p.lock(Needs::events(&batch));
        assert_eq!(
            held.validate(&batch).unwrap_err().0,
            2,
            "stale id in the second part"
        );
        drop(held);
        // Nothing of it applied: the first part's book is where it was.
        assert_eq!(p.read(a, |m| m.last_update_id(a)), Some(1));
        let out = apply_batch(&p, vec![book(a, 2, 2), book(b, 2, 2)], 1);
        let mut views: Vec<_> = out
            .iter()
            .filter(|p| p.class == StreamClass::BookDelta)
            .map(|p| {
                (
                    p.room.to_string(),
                    p.book.as_ref().map(|v| v.last_update_id),
                )
            })
            .collect();
        views.sort();
        assert_eq!(
            views,
            [
                (format!("orderbook:{a}"), Some(2)),
                (format!("orderbook:{b}"), Some(2))
            ],
            "each part's last delta carries its view"
        );
    }

    #[test]
    fn timers_and_views_reach_the_part_of_their_symbol() {
        let p = Partitions::new(MarketSettings::default());
        let (a, b) = apart();
        let ticker = |s: &str, i: u64| {
            parse_event(json!({"type":"ticker.update","symbol":s,"data":{"i":i}})).unwrap()
        };
        apply_batch(&p, vec![ticker(a, 0), ticker(b, 0)], 0);
        // Held by the per-symbol and digest throttles until their windows end.
        let out = apply_batch(&p, vec![ticker(a, 1), ticker(b, 1)], 10);
        assert!(out.iter().all(|p| !p.deliver), "{out:?}");
        let room: Arc<str> = Arc::from(format!("ticker:{b}:0ms"));
        let changes = vec![Change::Refresh {
            room: room.clone(),
            epoch: 3,
        }];
        let mut out = Vec::new();
        p.lock(Needs::changes(&changes))
            .views_changed(changes, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].refresh, &*out[0].room), (Some(3), &*room));
        let mut out = Vec::new();
        let mut next = None;
        for i in 0..PARTS {
            next = earliest(next, p.lock(Needs::part(i)).poll(1000, &mut out));
        }
        next = earliest(next, p.lock(Needs::digest()).poll(1000, &mut out));
        let mut rooms: Vec<_> = out.iter().map(|p| p.room.to_string()).collect();
        rooms.sort();
        assert_eq!(
            rooms,
            [
                format!("ticker:{a}"),
                format!("ticker:{b}"),
                "ticker:all".into()
            ]
        );
        assert_eq!(next, None);
    }
}
