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

use indexmap::IndexMap;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// View changes the market takes per turn of its lock.
pub const CHANGES_PER_TURN: usize = 64;

#[derive(Debug, Default)]
pub struct Demand {
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// Open views: how many shards have each open, and its epoch.
    open: HashMap<Arc<str>, (u32, u64)>,
    next_epoch: u64,
    /// Views opened or closed since the market last looked, oldest first.
    pending: IndexMap<Arc<str>, ()>,
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
        }
    }

    /// The oldest changes since the last call, at most `CHANGES_PER_TURN`, as things stand
    /// now (a view opened and closed in between is simply dropped). Bounded because the
    /// market starts views under its lock: clients opening views by the thousand wait for
    /// their own snapshots, while everyone else's updates go on between turns.
    pub fn take_changes(&self) -> Vec<Change> {
        let mut inner = self.inner.lock();
        if inner.pending.is_empty() {
            return Vec::new();
        }
        let n = inner.pending.len().min(CHANGES_PER_TURN);
        let taken: Vec<Arc<str>> = inner.pending.drain(..n).map(|(room, ())| room).collect();
        taken
            .into_iter()
            .map(|room| match inner.open.get(&room) {
                Some(&(_, epoch)) => Change::Refresh { room, epoch },
                None => Change::Drop { room },
            })
            .collect()
    }

    /// Waits until a view changes, or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut inner = self.inner.lock();
        if inner.pending.is_empty() {
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
            d.take_changes(),
            vec![Change::Refresh {
                room: room.clone(),
                epoch: first
            }]
        );
        d.close(&room);
        assert!(d.take_changes().is_empty(), "still open on one shard");
        d.close(&room);
        d.close(&room);
        assert_eq!(d.take_changes(), vec![Change::Drop { room: room.clone() }]);
        let again = d.open(&room);
        assert!(again > first);
        d.close(&room);
        assert_eq!(
            d.take_changes(),
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
        let first = d.take_changes();
        assert_eq!(first.len(), CHANGES_PER_TURN);
        assert_eq!(
            first[0],
            Change::Refresh {
                room: rooms[0].clone(),
                epoch: 1
            }
        );
        assert_eq!(d.take_changes().len(), 10);
        assert!(d.take_changes().is_empty());
    }
}
