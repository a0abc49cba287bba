//! The top levels of a book that one room's clients follow, and the deltas that keep them
//! current. A delta is worked out from the prices the replica's updates changed (its journal),
//! not by rebuilding the window: the cost follows the levels that changed, whatever the depth.

use super::levels::{Levels, Side};
use super::{checksum, BookView, Delta, Level, Replica, CHECKSUM_LEVELS};
use rust_decimal::Decimal;
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::sync::Arc;

/// Each window is snapshotted, diffed, chained and checksummed on its own.
#[derive(Debug)]
pub struct Window {
    depth: usize,
    sent: Arc<BookView>,
    /// The replica's journal position `sent` reflects.
    seen: u64,
}

impl Window {
    pub fn new(symbol: &Arc<str>, depth: usize) -> Window {
        Window {
            depth: depth.max(1),
            sent: Arc::new(BookView {
                symbol: symbol.clone(),
                bids: Levels::default(),
                asks: Levels::default(),
                last_update_id: 0,
                checksum: checksum(&[], &[]),
            }),
            // Before any journal: the first delta rebuilds from the replica.
            seen: 0,
        }
    }

    /// The view clients were last sent.
    pub fn sent(&self) -> &Arc<BookView> {
        &self.sent
    }

    /// Takes the book's current top as what clients now have, for a snapshot.
    pub fn snapshot(&mut self, book: &Replica) -> Arc<BookView> {
        let bids = Levels::from(book.top(Side::Bid, self.depth));
        let asks = Levels::from(book.top(Side::Ask, self.depth));
        self.sent = Arc::new(BookView {
            symbol: book.symbol.clone(),
            checksum: checksum(&bids, &asks),
            bids,
            asks,
            last_update_id: book.last_update_id.unwrap_or(0),
        });
        self.seen = book.journal.end();
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
        let depth = self.depth;
        let changed = book.journal.since(self.seen);
        let view = Arc::make_mut(&mut self.sent);
        let cuts_before = [checksum_cut(&view.bids), checksum_cut(&view.asks)];
        let (bids, asks) = match changed {
            Some(changed) => {
                let (mut bid_keys, mut ask_keys): (Vec<Decimal>, Vec<Decimal>) =
                    (Vec::new(), Vec::new());
                for (side, key) in changed {
                    match side {
                        Side::Bid => bid_keys.push(*key),
                        Side::Ask => ask_keys.push(*key),
                    }
                }
                (
                    advance(&mut view.bids, Side::Bid, bid_keys, book, depth),
                    advance(&mut view.asks, Side::Ask, ask_keys, book, depth),
                )
            }
            // The journal no longer reaches back to this view (a long conflation window, or
            // a window opened on a book that had updates): the whole window, once.
            None => (
                rebuild(&mut view.bids, Side::Bid, book, depth),
                rebuild(&mut view.asks, Side::Ask, book, depth),
            ),
        };
        // The checksum covers the top levels only; most changes are below them.
        let top_changed = [
            (&bids, Side::Bid, &view.bids),
            (&asks, Side::Ask, &view.asks),
        ]
        .into_iter()
        .zip(cuts_before)
        .any(|((changes, side, levels), before)| {
            let after = checksum_cut(levels);
            changes.iter().any(|l| {
                [before, after]
                    .iter()
                    .any(|cut| cut.is_none_or(|c| side.order(&l.key, &c) != Ordering::Greater))
            })
        });
        if top_changed {
            view.checksum = checksum(&view.bids, &view.asks);
        }
        let delta = Delta {
            first_update_id: view.last_update_id + 1,
            last_update_id: last,
            bids,
            asks,
            checksum: view.checksum,
        };
        view.last_update_id = last;
        self.seen = book.journal.end();
        Some((delta, self.sent.clone()))
    }
}

/// The last price a checksum covers on a side, if the side has that many levels; a change
/// past it on both the old and the new window leaves the checksum as it was.
fn checksum_cut(levels: &Levels) -> Option<Decimal> {
    levels.iter().nth(CHECKSUM_LEVELS - 1).map(|l| l.key)
}

/// Moves one side of the window from what clients have to the replica's top `depth`, given
/// the prices changed since, and returns the levels clients must change, best first. A price
/// the backend now writes differently (`100.0` for `100`) is changed too: clients keep and
/// checksum the text they were sent.
///
/// What clients have is a prefix of the replica as it was, so once the changed prices are
/// taken out and those still in the book and not past the old bottom are put back, it is a
/// prefix of the replica as it is: trimming the bottom or refilling it from just below is all
/// that remains.
fn advance(
    levels: &mut Levels,
    side: Side,
    mut changed: Vec<Decimal>,
    book: &Replica,
    depth: usize,
) -> Vec<Level> {
    if changed.is_empty() {
        return Vec::new();
    }
    changed.sort_unstable_by(|a, b| side.order(a, b));
    changed.dedup();
    let is_changed = |k: &Decimal| changed.binary_search_by(|c| side.order(c, k)).is_ok();
    let bottom = (levels.len() >= depth)
        .then(|| levels.last().map(|l| l.key))
        .flatten();
    // Each changed price with the level clients have for it.
    let mut before: SmallVec<[(Decimal, Option<Level>); 8]> = SmallVec::new();
    for k in &changed {
        let had = levels.search(side, k).ok().and_then(|i| levels.remove(i));
        before.push((*k, had));
    }
    for k in &changed {
        let within = bottom.is_none_or(|b| side.order(k, &b) != Ordering::Greater);
        if let (true, Some(l)) = (within, book.get(side, k)) {
            let (Ok(i) | Err(i)) = levels.search(side, k);
            levels.insert(i, l.clone());
        }
    }
    // Unchanged levels pushed out at the bottom, or pulled in from below it.
    while levels.len() > depth {
        if let Some(l) = levels.pop() {
            if !is_changed(&l.key) {
                before.push((l.key, Some(l)));
            }
        }
    }
    if levels.len() < depth {
        let from = levels.last().map(|l| l.key);
        for l in book.after(side, from).take(depth - levels.len()) {
            if !is_changed(&l.key) {
                before.push((l.key, None));
            }
            levels.push(l.clone());
        }
    }
    let mut out = Vec::with_capacity(before.len());
    for (k, had) in before {
        match (had, levels.get(side, &k)) {
            (Some(h), None) => out.push(h.removed()),
            (None, Some(now)) => out.push(now.clone()),
            (Some(h), Some(now)) if h.price != now.price => {
                out.push(h.removed());
                out.push(now.clone());
            }
            (Some(h), Some(now)) if h.qty != now.qty => out.push(now.clone()),
            _ => {}
        }
    }
    // Stable: a price written anew goes out as the removal of its old text, then the new one.
    out.sort_by(|a, b| side.order(&a.key, &b.key));
    out
}

/// Replaces one side of the window with the replica's top `depth`, returning the difference.
fn rebuild(levels: &mut Levels, side: Side, book: &Replica, depth: usize) -> Vec<Level> {
    let after = book.top(side, depth);
    let mut out = Vec::new();
    let mut before = levels.iter().peekable();
    let mut now = after.iter().peekable();
    while before.peek().is_some() || now.peek().is_some() {
        let o = match (before.peek(), now.peek()) {
            (Some(b), Some(a)) => side.order(&b.key, &a.key),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match o {
            Ordering::Less => out.extend(before.next().map(Level::removed)),
            Ordering::Greater => out.extend(now.next().cloned()),
            Ordering::Equal => {
                if let (Some(b), Some(a)) = (before.next(), now.next()) {
                    if b.price != a.price {
                        out.push(b.removed());
                        out.push(a.clone());
                    } else if b.qty != a.qty {
                        out.push(a.clone());
                    }
                }
            }
        }
    }
    drop(before);
    *levels = Levels::from(after);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{BookUpdate, OrderBook};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::str::FromStr;

    fn level(p: u32, q: u32) -> Level {
        spelled(p, q, false)
    }

    /// A level at price `p` tenths, written with a trailing zero when `long`.
    fn spelled(p: u32, q: u32, long: bool) -> Level {
        let zero = if long { "0" } else { "" };
        let price = format!("{}.{}{zero}", p / 10, p % 10);
        Level {
            key: Decimal::from_str(&price).unwrap(),
            price: price.as_str().into(),
            qty: q.to_string().as_str().into(),
        }
    }

    /// What a client keeps: its window, from the snapshot and every delta applied.
    #[derive(Default)]
    struct Client {
        sides: [BTreeMap<Decimal, Level>; 2],
    }

    impl Client {
        /// As a client that keys levels by their price text would: a removal names the text
        /// it has, and a price never arrives in a second spelling before the first is removed.
        fn apply(&mut self, side: usize, levels: &[Level]) {
            for l in levels {
                if l.qty == "0" {
                    let had = self.sides[side].remove(&l.key);
                    let had = had.expect("removal of a level the client does not have");
                    assert_eq!(had.price, l.price, "removal of another spelling");
                } else {
                    if let Some(had) = self.sides[side].get(&l.key) {
                        assert_eq!(had.price, l.price, "a second spelling of a price it has");
                    }
                    self.sides[side].insert(l.key, l.clone());
                }
            }
        }

        fn side(&self, side: Side) -> Vec<Level> {
            let map = &self.sides[side as usize];
            match side {
                Side::Bid => map.values().rev().cloned().collect(),
                Side::Ask => map.values().cloned().collect(),
            }
        }
    }

    proptest! {
        /// Applied to a client's copy, the incremental deltas leave exactly the replica's top
        /// `depth` on each side, with the checksum of it, whatever the updates and however
        /// many of them one delta covers.
        #[test]
        fn deltas_keep_a_client_equal_to_the_top_of_the_book(
            depth in 1usize..12,
            updates in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        (any::<bool>(), 1u32..40, 0u32..4, proptest::bool::weighted(0.2)),
                        0..6,
                    ),
                    1usize..4,
                ),
                1..60,
            ),
        ) {
            let mut book = OrderBook::new("X", depth);
            let start: Vec<Level> = (1..20).map(|p| level(p * 2, 1)).collect();
            book.apply(BookUpdate::Snapshot {
                bids: start.iter().filter(|l| l.key < Decimal::from(2)).cloned().collect(),
                asks: start.iter().filter(|l| l.key >= Decimal::from(2)).cloned().collect(),
                last_update_id: 1,
            });
            let snap = book.take_snapshot();
            let mut client = Client::default();
            client.apply(0, &snap.bids.iter().cloned().collect::<Vec<_>>());
            client.apply(1, &snap.asks.iter().cloned().collect::<Vec<_>>());
            let mut id = 1;
            for (changes, every) in updates {
                let (mut bids, mut asks) = (Vec::new(), Vec::new());
                for (bid, p, q, long) in changes {
                    // Bids below 2.0, asks from it: a crossed book is the backend's business.
                    // Now and then a price comes written another way.
                    let l = if bid { spelled(p.min(19), q, long) } else { spelled(20 + p, q, long) };
                    if bid { bids.push(l) } else { asks.push(l) }
                }
                id += 1;
                book.apply(BookUpdate::Delta { bids, asks, first_update_id: id, last_update_id: id });
                if id % every as u64 != 0 {
                    continue;
                }
                let (d, view) = book.take_delta().unwrap();
                prop_assert_eq!(d.last_update_id, id);
                client.apply(0, &d.bids);
                client.apply(1, &d.asks);
                let replica = book.replica();
                for (side, mine) in [(Side::Bid, &view.bids), (Side::Ask, &view.asks)] {
                    let top = replica.top(side, depth);
                    prop_assert_eq!(&client.side(side), &top);
                    prop_assert_eq!(&mine.iter().cloned().collect::<Vec<_>>(), &top);
                }
                prop_assert_eq!(d.checksum, checksum(&view.bids, &view.asks));
            }
        }
    }

    #[test]
    fn a_price_written_anew_is_removed_in_its_old_spelling_and_sent_in_its_new_one() {
        let mut book = OrderBook::new("X", 5);
        book.apply(BookUpdate::Snapshot {
            bids: vec![spelled(100, 1, false), spelled(99, 2, false)],
            asks: vec![],
            last_update_id: 1,
        });
        book.take_snapshot();
        book.apply(BookUpdate::Delta {
            bids: vec![spelled(100, 0, false), spelled(100, 1, true)],
            asks: vec![],
            first_update_id: 2,
            last_update_id: 2,
        });
        let (d, view) = book.take_delta().unwrap();
        let got: Vec<_> = d
            .bids
            .iter()
            .map(|l| (l.price.as_str(), l.qty.as_str()))
            .collect();
        assert_eq!(got, [("10.0", "0"), ("10.00", "1")]);
        assert_eq!(d.checksum, checksum(&view.bids, &view.asks));
        assert_eq!(view.bids.iter().next().unwrap().price, "10.00");
    }

    #[test]
    fn a_window_behind_the_journal_rebuilds() {
        let mut book = OrderBook::new("X", 3);
        book.apply(BookUpdate::Snapshot {
            bids: vec![level(10, 1)],
            asks: vec![],
            last_update_id: 1,
        });
        book.take_snapshot();
        // More changed prices than the journal keeps.
        for i in 0..(super::super::JOURNAL_LEN as u64 + 10) {
            book.apply(BookUpdate::Delta {
                bids: vec![level(10, (i % 5 + 1) as u32), level(11 + (i % 3) as u32, 0)],
                asks: vec![],
                first_update_id: i + 2,
                last_update_id: i + 2,
            });
        }
        book.apply(BookUpdate::Delta {
            bids: vec![level(12, 7)],
            asks: vec![],
            first_update_id: super::super::JOURNAL_LEN as u64 + 12,
            last_update_id: super::super::JOURNAL_LEN as u64 + 12,
        });
        let (d, view) = book.take_delta().unwrap();
        assert_eq!(d.first_update_id, 2);
        let got: Vec<_> = d
            .bids
            .iter()
            .map(|l| (l.price.as_str(), l.qty.as_str()))
            .collect();
        let last_qty = ((super::super::JOURNAL_LEN + 9) % 5 + 1).to_string();
        assert_eq!(got, [("1.2", "7"), ("1.0", last_qty.as_str())]);
        assert_eq!(view.bids.len(), 2);
    }
}
