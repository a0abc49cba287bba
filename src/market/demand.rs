//! Which views (rooms at a subscription's own depth or speed) have subscribers anywhere in
//! the gateway. A view costs the market a window or a throttle per update of its symbol, so
//! it is computed only while some shard has it open.
//!
//! A shard opens a view when its first local member joins and closes it when its last one
//! leaves. Each opening asks the market for a refresh: the view's current state (a book
//! window's last sent view, a ticker's latest value), which is what the shard gives its new
//! members, since it kept nothing while it had none. A view that goes from no subscriber to
//! one starts a new epoch; a refresh carries the epoch it answers, so a shard never takes a
//! refresh that left the market before the view was dropped and computed afresh (its window
//! would not chain to the deltas that follow).

use crate::limits::bucket::TokenBucket;
use indexmap::IndexMap;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// View changes the market takes per turn of its lock.
pub const CHANGES_PER_TURN: usize = 64;

/// Refreshes (a view's state built and encoded) the market makes per second, all clients
/// together, and the burst allowed: however many addresses open views, computing them stays
/// a bounded share of one core; past it, the views' own subscribers wait.
pub const REFRESHES_PER_SEC: f64 = 5_000.0;

#[derive(Debug)]
pub struct Demand {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Default for Demand {
    fn default() -> Self {
        Demand {
            inner: Mutex::new(Inner {
                open: HashMap::new(),
                next_epoch: 0,
                pending: IndexMap::new(),
                refreshes: TokenBucket::new(REFRESHES_PER_SEC, REFRESHES_PER_SEC, 0),
            }),
            changed: Condvar::new(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Open views: how many shards have each open, and its epoch.
    open: HashMap<Arc<str>, (u32, u64)>,
    next_epoch: u64,
    /// Views opened or closed since the market last looked, oldest first.
    pending: IndexMap<Arc<str>, ()>,
    refreshes: TokenBucket,
}

impl Inner {
    /// Whether the market could take a change now.
    fn ready(&self, now_ms: u64) -> bool {
        self.pending.first().is_some_and(|(room, _)| {
            !self.open.contains_key(room) || self.refreshes.has_token(now_ms)
        })
    }
}

/// What the market does with a view that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It has subscribers: compute it (from now, if it was not computed) and send its state
    /// to the shards, as the answer to `epoch`.
    Refresh { room: Arc<str>, epoch: u64 },
    /// Nobody follows it any more: drop its state.
    Drop { room: Arc<str> },
}

impl Change {
    /// The view it is about.
    pub fn room(&self) -> &Arc<str> {
        match self {
            Change::Refresh { room, .. } | Change::Drop { room } => room,
        }
    }
}

impl Demand {
    /// A shard has its first member of `room`; returns the epoch whose refresh it waits for.
    pub fn open(&self, room: &Arc<str>) -> u64 {
        let mut inner = self.inner.lock();
        let next = inner.next_epoch + 1;
        let entry = inner.open.entry(room.clone()).or_insert((0, 0));
        if entry.0 == 0 {
            entry.1 = next;
        }
        entry.0 += 1;
        let epoch = entry.1;
        inner.next_epoch = inner.next_epoch.max(epoch);
        inner.pending.insert(room.clone(), ());
        drop(inner);
        self.changed.notify_one();
        epoch
    }

    /// A shard's last member of `room` left.
    pub fn close(&self, room: &Arc<str>) {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.open.get_mut(room) else {
            return;
        };
        entry.0 = entry.0.saturating_sub(1);
        if entry.0 == 0 {
            inner.open.remove(room);
            inner.pending.insert(room.clone(), ());
            drop(inner);
            // So the market stops computing it without waiting for the next batch or timer.
            self.changed.notify_one();
        }
    }

    /// The oldest changes since the last call, as things stand at `now_ms` (a view opened
    /// and closed in between is simply dropped): at most `CHANGES_PER_TURN`, and refreshes
    /// within `REFRESHES_PER_SEC`. Bounded because the market builds views' states under its
    /// lock: clients opening views by the thousand wait for their own snapshots, while
    /// everyone else's updates go on.
    pub fn take_changes(&self, now_ms: u64) -> Vec<Change> {
        let inner = &mut *self.inner.lock();
        let mut out = Vec::new();
        for room in inner.pending.keys().take(CHANGES_PER_TURN) {
            out.push(match inner.open.get(room) {
                Some(&(_, epoch)) if inner.refreshes.take(now_ms) => Change::Refresh {
                    room: room.clone(),
                    epoch,
                },
                Some(_) => break,
                None => Change::Drop { room: room.clone() },
            });
        }
        inner.pending.drain(..out.len());
        out
    }

    /// Waits until the market can take a change, or `timeout`.
    pub fn wait(&self, timeout: Duration, now_ms: u64) {
        let mut inner = self.inner.lock();
        if !inner.ready(now_ms) {
            self.changed.wait_for(&mut inner, timeout);
        }
    }

    pub fn is_open(&self, room: &str) -> bool {
        self.inner.lock().open.contains_key(room)
    }

    /// Views open now.
    pub fn open_count(&self) -> usize {
        self.inner.lock().open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_start_when_a_view_gains_its_first_subscriber() {
        let d = Demand::default();
        let room: Arc<str> = Arc::from("orderbook:X1:5:100ms");
        let first = d.open(&room);
        assert_eq!(d.open(&room), first, "a second shard joins the same epoch");
        assert_eq!(
            d.take_changes(0),
            vec![Change::Refresh {
                room: room.clone(),
                epoch: first
            }]
        );
        d.close(&room);
        assert!(d.take_changes(0).is_empty(), "still open on one shard");
        d.close(&room);
        d.close(&room);
        assert_eq!(d.take_changes(0), vec![Change::Drop { room: room.clone() }]);
        let again = d.open(&room);
        assert!(again > first);
        d.close(&room);
        assert_eq!(
            d.take_changes(0),
            vec![Change::Drop { room }],
            "opened and closed in between: dropped"
        );
        assert_eq!(d.open_count(), 0);
    }

    #[test]
    fn changes_come_a_bounded_number_per_turn_oldest_first() {
        let d = Demand::default();
        let rooms: Vec<Arc<str>> = (0..CHANGES_PER_TURN + 10)
            .map(|i| Arc::from(format!("ticker:S{i}:0ms")))
            .collect();
        for r in &rooms {
            d.open(r);
        }
        let first = d.take_changes(0);
        assert_eq!(first.len(), CHANGES_PER_TURN);
        assert_eq!(
            first[0],
            Change::Refresh {
                room: rooms[0].clone(),
                epoch: 1
            }
        );
        assert_eq!(d.take_changes(0).len(), 10);
        assert!(d.take_changes(0).is_empty());
    }

    #[test]
    fn refreshes_are_made_at_a_bounded_rate_drops_at_once() {
        let d = Demand::default();
        let burst = REFRESHES_PER_SEC as usize;
        for i in 0..burst + 3 {
            d.open(&Arc::from(format!("ticker:S{i}:0ms")));
        }
        let mut taken = 0;
        while let n @ 1.. = d.take_changes(0).len() {
            taken += n;
        }
        assert_eq!(
            taken, burst,
            "the burst, then nothing until the bucket refills"
        );
        d.close(&Arc::from(format!("ticker:S{}:0ms", burst + 2)));
        assert_eq!(
            d.take_changes(0).len(),
            0,
            "a drop waits behind the older opening"
        );
        assert_eq!(
            d.take_changes(1).len(),
            3,
            "two refreshes and the drop once the bucket refills"
        );
    }
}
