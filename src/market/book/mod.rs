//! An order book replica per symbol, kept from the backend's snapshots and deltas with exact
//! decimal prices, and the top-N windows clients see: snapshots, and deltas between the view
//! clients last received and the current one, so a level that leaves the window is sent as a
//! removal and one that enters it as an addition.

mod json;
pub mod levels;
mod parse;
mod window;

use compact_str::CompactString;
pub(crate) use json::BookJson;
pub use levels::{Levels, Side};
use rust_decimal::Decimal;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
pub use window::Window;

/// One price level as the backend wrote it; `key` orders and compares prices exactly. The
/// texts are short enough to live inline, so copying a level never touches a shared counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub key: Decimal,
    pub price: CompactString,
    pub qty: CompactString,
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(2))?;
        seq.serialize_element(&*self.price)?;
        seq.serialize_element(&*self.qty)?;
        seq.end()
    }
}

impl Level {
    /// The level as a removal: its price, quantity "0".
    pub fn removed(&self) -> Level {
        Level {
            key: self.key,
            price: self.price.clone(),
            qty: CompactString::const_new("0"),
        }
    }

    /// Quantities are checked decimal strings, so zero is all zeros and points.
    fn qty_is_zero(&self) -> bool {
        self.qty.bytes().all(|b| b == b'0' || b == b'.')
    }
}

/// The top of a book as clients see it, best levels first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookView {
    pub symbol: Arc<str>,
    pub bids: Levels,
    pub asks: Levels,
    pub last_update_id: u64,
    /// `checksum(&bids, &asks)`, computed once per view.
    pub checksum: u32,
}

/// Levels of each side a checksum covers (fewer when the window is shallower).
pub const CHECKSUM_LEVELS: usize = 10;

/// The CRC32 of the top levels of a window, as Kraken's WebSocket v2 book checksum defines
/// it: asks best (lowest) first, then bids best (highest) first; for each level its price then
/// its quantity, exactly as sent with the decimal point and then leading zeros removed, all
/// concatenated. A client that applies the deltas to its replica and gets another CRC knows
/// the replica is wrong.
pub fn checksum<'a>(
    bids: impl IntoIterator<Item = &'a Level>,
    asks: impl IntoIterator<Item = &'a Level>,
) -> u32 {
    // Prices and quantities are checked decimal strings of at most 40 bytes: the digits of
    // all twenty levels fit here, and one CRC update over them is several times faster than
    // forty short ones.
    let mut digits = [0u8; 2 * CHECKSUM_LEVELS * 2 * 40];
    let mut n = 0;
    let mut feed = |s: &str| {
        let s = s.as_bytes();
        let lead = s.iter().take_while(|&&c| c == b'0' || c == b'.').count();
        // One byte at a time: these are a few digits each, too short for a search to pay.
        for &c in &s[lead..] {
            if c != b'.' {
                if let Some(slot) = digits.get_mut(n) {
                    *slot = c;
                    n += 1;
                }
            }
        }
    };
    for l in asks
        .into_iter()
        .take(CHECKSUM_LEVELS)
        .chain(bids.into_iter().take(CHECKSUM_LEVELS))
    {
        feed(&l.price);
        feed(&l.qty);
    }
    crc32fast::hash(&digits[..n])
}

impl BookView {
    /// `{symbol, type:"snapshot", reason, bids, asks, lastUpdateId, checksum}` as JSON.
    pub fn snapshot_json(&self, reason: &str) -> Vec<u8> {
        BookJson::new(self.bids.len() + self.asks.len())
            .raw("{\"symbol\":")
            .string(&self.symbol)
            .raw(",\"type\":\"snapshot\",\"reason\":")
            .string(reason)
            .raw(",\"bids\":")
            .levels(&self.bids)
            .raw(",\"asks\":")
            .levels(&self.asks)
            .raw(",\"lastUpdateId\":")
            .number(self.last_update_id)
            .raw(",\"checksum\":")
            .number(self.checksum)
            .raw("}")
            .finish()
    }
}

/// A client-facing change between two views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub first_update_id: u64,
    pub last_update_id: u64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    /// The checksum of the view after this delta.
    pub checksum: u32,
}

impl Delta {
    /// `{symbol, type:"delta", firstUpdateId, lastUpdateId, bids, asks, checksum}` as JSON.
    pub fn json(&self, symbol: &str) -> Vec<u8> {
        BookJson::new(self.bids.len() + self.asks.len())
            .raw("{\"symbol\":")
            .string(symbol)
            .raw(",\"type\":\"delta\",\"firstUpdateId\":")
            .number(self.first_update_id)
            .raw(",\"lastUpdateId\":")
            .number(self.last_update_id)
            .raw(",\"bids\":")
            .levels(&self.bids)
            .raw(",\"asks\":")
            .levels(&self.asks)
            .raw(",\"checksum\":")
            .number(self.checksum)
            .raw("}")
            .finish()
    }
}

/// A validated backend update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookUpdate {
    Snapshot {
        bids: Vec<Level>,
        asks: Vec<Level>,
        last_update_id: u64,
    },
    Delta {
        bids: Vec<Level>,
        asks: Vec<Level>,
        first_update_id: u64,
        last_update_id: u64,
    },
}

impl BookUpdate {
    pub fn last_update_id(&self) -> u64 {
        match self {
            BookUpdate::Snapshot { last_update_id, .. }
            | BookUpdate::Delta { last_update_id, .. } => *last_update_id,
        }
    }
}

/// What applying an update means for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookChange {
    /// Continuity holds: send this delta (possibly empty of levels, then nothing is sent).
    Continuous,
    /// A reset or a gap: clients need a fresh snapshot.
    Resync,
}

/// A symbol's replica and the default room's window of it.
#[derive(Debug)]
pub struct OrderBook {
    replica: Replica,
    window: Window,
}

/// Every level of a book, as the backend's snapshots and deltas left it.
#[derive(Debug)]
pub struct Replica {
    symbol: Arc<str>,
    /// Ascending on both sides: the best bid is the last, the best ask the first.
    bids: BTreeMap<Decimal, Level>,
    asks: BTreeMap<Decimal, Level>,
    last_update_id: Option<u64>,
    journal: Journal,
}

/// Prices recent deltas changed, for windows to catch up from. A window further behind than
/// the journal reaches (or one across a snapshot) rebuilds instead.
#[derive(Debug)]
struct Journal {
    changed: VecDeque<(Side, Decimal)>,
    /// The position of the first entry; positions only grow.
    start: u64,
}

/// Entries a journal keeps: a delta stream without conflation reads each update's prices
/// at once; a conflation window that sees more falls back to one rebuild.
const JOURNAL_LEN: usize = 512;

impl Journal {
    fn end(&self) -> u64 {
        self.start + self.changed.len() as u64
    }

    /// What changed since position `seen`, if the journal still reaches back to it.
    fn since(&self, seen: u64) -> Option<impl Iterator<Item = &(Side, Decimal)>> {
        let skip = seen.checked_sub(self.start)?;
        (seen <= self.end()).then(|| self.changed.iter().skip(skip as usize))
    }

    fn record(&mut self, side: Side, key: Decimal) {
        if self.changed.len() == JOURNAL_LEN {
            self.changed.pop_front();
            self.start += 1;
        }
        self.changed.push_back((side, key));
    }

    /// Every window is now behind the journal.
    fn reset(&mut self) {
        self.start = self.end() + 1;
        self.changed.clear();
    }
}

impl Replica {
    fn side(&self, side: Side) -> &BTreeMap<Decimal, Level> {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    pub fn get(&self, side: Side, key: &Decimal) -> Option<&Level> {
        self.side(side).get(key)
    }

    /// The levels after `key` (from the best when `None`), best first.
    pub fn after(&self, side: Side, key: Option<Decimal>) -> Box<dyn Iterator<Item = &Level> + '_> {
        match (side, key) {
            (Side::Bid, None) => Box::new(self.bids.values().rev()),
            (Side::Bid, Some(k)) => Box::new(self.bids.range(..k).rev().map(|(_, l)| l)),
            (Side::Ask, None) => Box::new(self.asks.values()),
            (Side::Ask, Some(k)) => Box::new(
                self.asks
                    .range((Bound::Excluded(k), Bound::Unbounded))
                    .map(|(_, l)| l),
            ),
        }
    }

    /// The best `n` levels of a side.
    pub fn top(&self, side: Side, n: usize) -> Vec<Level> {
        self.after(side, None).take(n).cloned().collect()
    }

    fn apply_levels(&mut self, side: Side, levels: Vec<Level>) {
        let map = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        // A level keeps the price text it was first sent with: the same price written
        // another way ("100" then "100.0") changes nothing a client keeps, so the checksum
        // stays the one its replica computes.
        for l in levels {
            let key = l.key;
            if l.qty_is_zero() {
                map.remove(&key);
            } else {
                map.entry(key)
                    .and_modify(|kept| kept.qty = l.qty.clone())
                    .or_insert(l);
            }
            self.journal.record(side, key);
        }
    }
}

impl OrderBook {
    pub fn new(symbol: &str, depth: usize) -> OrderBook {
        let symbol: Arc<str> = Arc::from(symbol);
        OrderBook {
            window: Window::new(&symbol, depth),
            replica: Replica {
                symbol,
                bids: BTreeMap::new(),
                asks: BTreeMap::new(),
                last_update_id: None,
                // Starts past 0, the position of a window that has seen nothing.
                journal: Journal {
                    changed: VecDeque::new(),
                    start: 1,
                },
            },
        }
    }

    /// The whole book, for windows other than the default room's.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The default room's window, and the replica it is a window of.
    pub fn parts(&mut self) -> (&mut Window, &Replica) {
        (&mut self.window, &self.replica)
    }

    pub fn last_update_id(&self) -> Option<u64> {
        self.replica.last_update_id
    }

    /// The best bid and the best ask of the whole replica.
    pub fn best(&self) -> (Option<&Level>, Option<&Level>) {
        (
            self.replica.bids.values().next_back(),
            self.replica.asks.values().next(),
        )
    }

    /// The view the default room's clients were last sent.
    pub fn sent_view(&self) -> &Arc<BookView> {
        self.window.sent()
    }

    /// Refuses an update whose ids go backwards from `last` (the book's, or the one a batch
    /// validated before it).
    pub fn check(last: Option<u64>, update: &BookUpdate) -> Result<(), String> {
        if let (
            Some(last),
            BookUpdate::Delta {
                first_update_id, ..
            },
        ) = (last, update)
        {
            if *first_update_id <= last {
                return Err(format!("update ids go backwards: firstUpdateId {first_update_id} after lastUpdateId {last}"));
            }
        }
        Ok(())
    }

    pub fn apply(&mut self, update: BookUpdate) -> BookChange {
        match update {
            BookUpdate::Snapshot {
                bids,
                asks,
                last_update_id,
            } => {
                self.replica.bids = bids.into_iter().map(|l| (l.key, l)).collect();
                self.replica.asks = asks.into_iter().map(|l| (l.key, l)).collect();
                self.replica.last_update_id = Some(last_update_id);
                self.replica.journal.reset();
                BookChange::Resync
            }
            BookUpdate::Delta {
                bids,
                asks,
                first_update_id,
                last_update_id,
            } => {
                let continuous = self
                    .replica
                    .last_update_id
                    .is_some_and(|l| first_update_id == l + 1);
                self.replica.apply_levels(Side::Bid, bids);
                self.replica.apply_levels(Side::Ask, asks);
                self.replica.last_update_id = Some(last_update_id);
                if continuous {
                    BookChange::Continuous
                } else {
                    BookChange::Resync
                }
            }
        }
    }

    /// Takes the current top as what the default room's clients now have, for a snapshot.
    pub fn take_snapshot(&mut self) -> Arc<BookView> {
        self.window.snapshot(&self.replica)
    }

    /// The default room's next delta (see [`Window::delta`]).
    pub fn take_delta(&mut self) -> Option<(Delta, Arc<BookView>)> {
        self.window.delta(&self.replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::str::FromStr;

    fn upd(v: Value) -> BookUpdate {
        BookUpdate::parse(&v).unwrap()
    }

    #[test]
    fn checksum_is_krakens_crc32_of_the_top_levels() {
        let level = |p: &str, q: &str| Level {
            key: Decimal::from_str(p).unwrap(),
            price: p.into(),
            qty: q.into(),
        };
        let asks = [
            level("0.05005", "0.00000500"),
            level("0.05010", "0.00000500"),
        ];
        let bids = [level("0.05000", "0.00000500"), level("0.04990", "1.5")];
        // zlib.crc32(b"500550050105005000500499015"): asks low to high, then bids high to
        // low, each price and quantity without its point and leading zeros.
        assert_eq!(checksum(&bids, &asks), 2_523_346_704);
        let deep: Vec<Level> = (0..15)
            .map(|i| level(&format!("{}.5", 100 - i), "1"))
            .collect();
        assert_eq!(
            checksum(&deep, &[]),
            checksum(&deep[..10], &[]),
            "top 10 only"
        );
    }

    #[test]
    fn a_level_keeps_the_price_text_it_was_first_sent_with() {
        let mut b = OrderBook::new("X", 5);
        b.apply(upd(
            json!({"type":"snapshot","bids":[["100","1"]],"asks":[["101","1"]],"lastUpdateId":1}),
        ));
        b.take_snapshot();
        b.apply(upd(
            json!({"type":"delta","bids":[["100.0","2"]],"firstUpdateId":2,"lastUpdateId":2}),
        ));
        let (d, view) = b.take_delta().unwrap();
        assert_eq!(pairs(&d.bids), vec![("100".into(), "2".into())]);
        // The client's replica: its level "100" now has quantity "2".
        let mine = [Level {
            key: Decimal::from_str("100").unwrap(),
            price: "100".into(),
            qty: "2".into(),
        }];
        assert_eq!(d.checksum, checksum(&mine, &view.asks));
    }

    fn pairs<'a>(levels: impl IntoIterator<Item = &'a Level>) -> Vec<(String, String)> {
        levels
            .into_iter()
            .map(|l| (l.price.to_string(), l.qty.to_string()))
            .collect()
    }

    #[test]
    fn snapshot_then_deltas_keep_the_top_window() {
        let mut b = OrderBook::new("BTCUSDT", 2);
        b.apply(upd(json!({"type":"snapshot","bids":[["100","1"],["99","2"],["98","3"]],"asks":[["101","1"]],"lastUpdateId":10})));
        let v = b.take_snapshot();
        assert_eq!(
            pairs(&v.bids),
            vec![("100".into(), "1".into()), ("99".into(), "2".into())]
        );
        // Removing 100 brings 98 into the top-2 window.
        let ch = b.apply(upd(json!({"type":"delta","bids":[["100","0"]],"asks":[],"firstUpdateId":11,"lastUpdateId":11})));
        assert_eq!(ch, BookChange::Continuous);
        let (d, _) = b.take_delta().unwrap();
        assert_eq!((d.first_update_id, d.last_update_id), (11, 11));
        assert_eq!(
            pairs(&d.bids),
            vec![("100".into(), "0".into()), ("98".into(), "3".into())]
        );
        // A better bid pushes 98 out of the window: sent as a removal.
        b.apply(upd(
            json!({"type":"delta","bids":[["99.5","4"]],"firstUpdateId":12,"lastUpdateId":13}),
        ));
        let (d, v) = b.take_delta().unwrap();
        assert_eq!(
            pairs(&d.bids),
            vec![("99.5".into(), "4".into()), ("98".into(), "0".into())]
        );
        assert_eq!(v.last_update_id, 13);
        // A change outside the window, and an empty delta, still carry their ids, in a delta
        // with empty sides; the chain stays unbroken.
        b.apply(upd(
            json!({"type":"delta","bids":[["50","1"]],"firstUpdateId":14,"lastUpdateId":14}),
        ));
        let (d, v) = b.take_delta().unwrap();
        assert_eq!((d.first_update_id, d.last_update_id), (14, 14));
        assert!(d.bids.is_empty() && d.asks.is_empty());
        assert_eq!(v.last_update_id, 14);
        b.apply(upd(
            json!({"type":"delta","firstUpdateId":15,"lastUpdateId":16}),
        ));
        let (d, _) = b.take_delta().unwrap();
        assert_eq!((d.first_update_id, d.last_update_id), (15, 16));
        assert!(d.bids.is_empty() && d.asks.is_empty());
        b.apply(upd(
            json!({"type":"delta","asks":[["101","2"]],"firstUpdateId":17,"lastUpdateId":17}),
        ));
        let (d, _) = b.take_delta().unwrap();
        assert_eq!((d.first_update_id, d.last_update_id), (17, 17));
        assert_eq!(pairs(&d.asks), vec![("101".into(), "2".into())]);
        assert_eq!(b.take_delta(), None, "nothing new since");
    }

    #[test]
    fn gaps_and_backwards_ids() {
        let mut b = OrderBook::new("X", 5);
        b.apply(upd(
            json!({"type":"snapshot","bids":[["1","1"]],"asks":[],"lastUpdateId":5}),
        ));
        let gap =
            upd(json!({"type":"delta","bids":[["2","1"]],"firstUpdateId":9,"lastUpdateId":9}));
        assert!(OrderBook::check(b.last_update_id(), &gap).is_ok());
        assert_eq!(b.apply(gap), BookChange::Resync);
        let back = upd(json!({"type":"delta","bids":[],"firstUpdateId":9,"lastUpdateId":10}));
        assert!(OrderBook::check(b.last_update_id(), &back).is_err());
    }

    #[test]
    fn refuses_bad_levels() {
        for bad in [
            json!({"type":"delta","bids":[[1,2]],"firstUpdateId":1,"lastUpdateId":1}),
            json!({"type":"delta","bids":[["1","abc"]],"firstUpdateId":1,"lastUpdateId":1}),
            json!({"type":"delta","bids":[["-1","1"]],"firstUpdateId":1,"lastUpdateId":1}),
            json!({"type":"delta","bids":[["0","1"]],"firstUpdateId":1,"lastUpdateId":1}),
            json!({"type":"delta","bids":[["1e5","1"]],"firstUpdateId":1,"lastUpdateId":1}),
            json!({"type":"delta","bids":[["1","1","x"]],"firstUpdateId":1,"lastUpdateId":1}),
            json!({"type":"delta","bids":[],"firstUpdateId":5,"lastUpdateId":4}),
            json!({"type":"snapshot","bids":[["1","0"]],"lastUpdateId":4}),
            json!({"type":"snapshot","bids":[]}),
            json!({"type":"other"}),
        ] {
            assert!(BookUpdate::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_prices_written_differently_are_one_level() {
        let mut b = OrderBook::new("X", 5);
        b.apply(upd(
            json!({"type":"snapshot","bids":[["100.0","1"]],"asks":[],"lastUpdateId":1}),
        ));
        b.take_snapshot();
        b.apply(upd(
            json!({"type":"delta","bids":[["100.00","0"]],"firstUpdateId":2,"lastUpdateId":2}),
        ));
        let (d, v) = b.take_delta().unwrap();
        assert!(v.bids.is_empty());
        assert_eq!(pairs(&d.bids), vec![("100.0".into(), "0".into())]);
    }
}
