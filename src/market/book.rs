//! An order book replica per symbol, kept from the backend's snapshots and deltas with exact
//! decimal prices, and the top-N view clients see: snapshots, and deltas computed as the
//! difference between the view clients last received and the current one, so a level that
//! leaves the window is sent as a removal and one that enters it as an addition.

use rust_decimal::Decimal;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::Value;
use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

/// One price level as the backend wrote it; `key` orders and compares prices exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub key: Decimal,
    pub price: Arc<str>,
    pub qty: Arc<str>,
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(2))?;
        seq.serialize_element(&*self.price)?;
        seq.serialize_element(&*self.qty)?;
        seq.end()
    }
}

/// The top of a book as clients see it, best levels first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookView {
    pub symbol: Arc<str>,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
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
pub fn checksum(bids: &[Level], asks: &[Level]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    // Prices and quantities are checked decimal strings of at most 40 bytes.
    let mut digits = [0u8; 48];
    let mut feed = |s: &str| {
        let mut n = 0;
        for &c in s.as_bytes() {
            if c != b'.' && (n > 0 || c != b'0') && n < digits.len() {
                digits[n] = c;
                n += 1;
            }
        }
        h.update(&digits[..n]);
    };
    for l in asks
        .iter()
        .take(CHECKSUM_LEVELS)
        .chain(bids.iter().take(CHECKSUM_LEVELS))
    {
        feed(&l.price);
        feed(&l.qty);
    }
    h.finalize()
}

#[derive(Serialize)]
struct SnapshotJson<'a> {
    symbol: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    reason: &'a str,
    bids: &'a [Level],
    asks: &'a [Level],
    #[serde(rename = "lastUpdateId")]
    last_update_id: u64,
    checksum: u32,
}

#[derive(Serialize)]
struct DeltaJson<'a> {
    symbol: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "firstUpdateId")]
    first_update_id: u64,
    #[serde(rename = "lastUpdateId")]
    last_update_id: u64,
    bids: &'a [Level],
    asks: &'a [Level],
    checksum: u32,
}

impl BookView {
    /// `{symbol, type:"snapshot", reason, bids, asks, lastUpdateId}` as JSON.
    pub fn snapshot_json(&self, reason: &str) -> Vec<u8> {
        serde_json::to_vec(&SnapshotJson {
            symbol: &self.symbol,
            kind: "snapshot",
            reason,
            bids: &self.bids,
            asks: &self.asks,
            last_update_id: self.last_update_id,
            checksum: self.checksum,
        })
        .unwrap_or_default()
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
    pub fn json(&self, symbol: &str) -> Vec<u8> {
        serde_json::to_vec(&DeltaJson {
            symbol,
            kind: "delta",
            first_update_id: self.first_update_id,
            last_update_id: self.last_update_id,
            bids: &self.bids,
            asks: &self.asks,
            checksum: self.checksum,
        })
        .unwrap_or_default()
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

    /// Parses the `data` of an `orderbook.update` ingest event.
    pub fn parse(data: &Value) -> Result<BookUpdate, String> {
        let obj = data
            .as_object()
            .ok_or("orderbook 'data' must be an object")?;
        let id = |k: &str| -> Result<u64, String> {
            obj.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("orderbook '{k}' must be a non-negative integer"))
        };
        let bids = parse_levels(obj.get("bids"), "bids")?;
        let asks = parse_levels(obj.get("asks"), "asks")?;
        match obj.get("type").and_then(Value::as_str) {
            Some("snapshot") => {
                for (side, levels) in [("bids", &bids), ("asks", &asks)] {
                    if levels.iter().any(|l| l.qty_is_zero()) {
                        return Err(format!("snapshot '{side}' must not hold zero quantities"));
                    }
                }
                Ok(BookUpdate::Snapshot {
                    bids,
                    asks,
                    last_update_id: id("lastUpdateId")?,
                })
            }
            Some("delta") => {
                let first = id("firstUpdateId")?;
                let last = id("lastUpdateId")?;
                if last < first {
                    return Err(format!(
                        "lastUpdateId {last} is before firstUpdateId {first}"
                    ));
                }
                Ok(BookUpdate::Delta {
                    bids,
                    asks,
                    first_update_id: first,
                    last_update_id: last,
                })
            }
            _ => Err("orderbook 'type' must be \"snapshot\" or \"delta\"".into()),
        }
    }
}

impl Level {
    fn qty_is_zero(&self) -> bool {
        Decimal::from_str(&self.qty)
            .map(|d| d.is_zero())
            .unwrap_or(false)
    }
}

fn decimal(s: &str, what: &str, allow_zero: bool) -> Result<Decimal, String> {
    let valid_chars =
        !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let d = valid_chars.then(|| Decimal::from_str(s).ok()).flatten();
    match d {
        Some(d) if d > Decimal::ZERO || (allow_zero && d.is_zero()) => Ok(d),
        _ => Err(format!(
            "{what} '{s}' is not a {} decimal string",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        )),
    }
}

fn parse_levels(v: Option<&Value>, side: &str) -> Result<Vec<Level>, String> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(format!(
                "orderbook '{side}' must be an array of [price, quantity]"
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, level) in list.iter().enumerate() {
        let (p, q) = match level.as_array().map(Vec::as_slice) {
            Some([Value::String(p), Value::String(q)]) => (p, q),
            _ => {
                return Err(format!(
                    "orderbook {side}[{i}] must be [\"price\", \"quantity\"] strings"
                ))
            }
        };
        let key = decimal(p, &format!("{side}[{i}] price"), false)?;
        decimal(q, &format!("{side}[{i}] quantity"), true)?;
        out.push(Level {
            key,
            price: Arc::from(p.as_str()),
            qty: Arc::from(q.as_str()),
        });
    }
    Ok(out)
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
    bids: BTreeMap<Reverse<Decimal>, Level>,
    asks: BTreeMap<Decimal, Level>,
    last_update_id: Option<u64>,
}

/// The top levels of a book one room's clients follow, and the view they were last sent:
/// each window is snapshotted, diffed, chained and checksummed on its own.
#[derive(Debug)]
pub struct Window {
    depth: usize,
    sent: Arc<BookView>,
}

impl Window {
    pub fn new(symbol: &Arc<str>, depth: usize) -> Window {
        Window {
            depth: depth.max(1),
            sent: Arc::new(BookView {
                symbol: symbol.clone(),
                bids: Vec::new(),
                asks: Vec::new(),
                last_update_id: 0,
                checksum: checksum(&[], &[]),
            }),
        }
    }

    /// The view clients were last sent.
    pub fn sent(&self) -> &Arc<BookView> {
        &self.sent
    }

    fn current(&self, book: &Replica) -> BookView {
        let bids: Vec<Level> = book.bids.values().take(self.depth).cloned().collect();
        let asks: Vec<Level> = book.asks.values().take(self.depth).cloned().collect();
        BookView {
            symbol: book.symbol.clone(),
            checksum: checksum(&bids, &asks),
            bids,
            asks,
            last_update_id: book.last_update_id.unwrap_or(0),
        }
    }

    /// Takes the book's current top as what clients now have, for a snapshot.
    pub fn snapshot(&mut self, book: &Replica) -> Arc<BookView> {
        self.sent = Arc::new(self.current(book));
        self.sent.clone()
    }

    /// The delta from the view clients have to the book's current top, covering every update
    /// id since; `None` only when no update came since. A delta that leaves the window as it
    /// was still goes out, with empty sides: a client learns every update id as it happens,
    /// so it can tell it is current (and compare with a REST snapshot).
    pub fn delta(&mut self, book: &Replica) -> Option<(Delta, Arc<BookView>)> {
        let last = book.last_update_id?;
        if last <= self.sent.last_update_id {
            return None;
        }
        let view = self.current(book);
        let delta = Delta {
            first_update_id: self.sent.last_update_id + 1,
            last_update_id: last,
            bids: diff(&self.sent.bids, &view.bids, |a, b| b.cmp(a)),
            asks: diff(&self.sent.asks, &view.asks, |a, b| a.cmp(b)),
            checksum: view.checksum,
        };
        self.sent = Arc::new(view);
        Some((delta, self.sent.clone()))
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
            self.replica.bids.values().next(),
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
                self.replica.bids = bids.into_iter().map(|l| (Reverse(l.key), l)).collect();
                self.replica.asks = asks.into_iter().map(|l| (l.key, l)).collect();
                self.replica.last_update_id = Some(last_update_id);
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
                // A level keeps the price text it was first sent with: the same price
                // written another way ("100" then "100.0") changes nothing a client keeps,
                // so the checksum stays the one its replica computes.
                for l in bids {
                    if l.qty_is_zero() {
                        self.replica.bids.remove(&Reverse(l.key));
                    } else {
                        self.replica
                            .bids
                            .entry(Reverse(l.key))
                            .and_modify(|kept| kept.qty = l.qty.clone())
                            .or_insert(l);
                    }
                }
                for l in asks {
                    if l.qty_is_zero() {
                        self.replica.asks.remove(&l.key);
                    } else {
                        self.replica
                            .asks
                            .entry(l.key)
                            .and_modify(|kept| kept.qty = l.qty.clone())
                            .or_insert(l);
                    }
                }
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

/// Levels that differ between two sorted views; a level only in `before` comes out with
/// quantity "0". `order` is the side's best-first ordering.
fn diff(
    before: &[Level],
    after: &[Level],
    order: impl Fn(&Decimal, &Decimal) -> Ordering,
) -> Vec<Level> {
    let zero: Arc<str> = Arc::from("0");
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < before.len() || j < after.len() {
        let o = match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) => order(&b.key, &a.key),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match o {
            Ordering::Less => {
                let b = &before[i];
                out.push(Level {
                    key: b.key,
                    price: b.price.clone(),
                    qty: zero.clone(),
                });
                i += 1;
            }
            Ordering::Greater => {
                out.push(after[j].clone());
                j += 1;
            }
            Ordering::Equal => {
                if before[i].qty != after[j].qty {
                    out.push(after[j].clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upd(v: Value) -> BookUpdate {
        BookUpdate::parse(&v).unwrap()
    }

    #[test]
    fn checksum_is_krakens_crc32_of_the_top_levels() {
        let level = |p: &str, q: &str| Level {
            key: Decimal::from_str(p).unwrap(),
            price: Arc::from(p),
            qty: Arc::from(q),
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
            price: Arc::from("100"),
            qty: Arc::from("2"),
        }];
        assert_eq!(d.checksum, checksum(&mine, &view.asks));
    }

    fn pairs(levels: &[Level]) -> Vec<(String, String)> {
        levels
            .iter()
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
