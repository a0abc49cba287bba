//! Hand-offs in the order batches were applied, without holding the market's locks while
//! they are encoded.
//!
//! A batch takes a ticket while it still holds the lock that ordered its application; it
//! then encodes on its own thread, in parallel with later batches, and waits only for the
//! tickets before its own to be handed off. So the shards and the replay log see batches in
//! application order (what per-symbol order and exact recovery need), while the market's
//! locks cover only applying and numbering.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Turns {
    issued: AtomicU64,
    /// The ticket whose turn it is.
    next: Mutex<u64>,
    turned: Condvar,
}

/// A place in the hand-off order. Taken under the ordering lock; a ticket that is never run
/// would stop every later one, so running consumes it and dropping it unrun passes the turn.
#[must_use = "a ticket not run holds up every later hand-off until dropped"]
pub struct Ticket<'a> {
    turns: &'a Turns,
    number: u64,
    done: bool,
}

impl Turns {
    /// Call under the lock that orders the batches.
    pub fn ticket(&self) -> Ticket<'_> {
        Ticket {
            turns: self,
            number: self.issued.fetch_add(1, Relaxed),
            done: false,
        }
    }

    fn wait_for(&self, number: u64) -> parking_lot::MutexGuard<'_, u64> {
        let mut next = self.next.lock();
        while *next != number {
            self.turned.wait(&mut next);
        }
        next
    }

    fn pass(&self, mut next: parking_lot::MutexGuard<'_, u64>) {
        *next += 1;
        drop(next);
        self.turned.notify_all();
    }
}

impl Ticket<'_> {
    /// Runs `f` once every earlier ticket has run (or been dropped), before any later one.
    pub fn run<R>(mut self, f: impl FnOnce() -> R) -> R {
        let next = self.turns.wait_for(self.number);
        // The turn passes even if `f` unwinds, so one failure cannot stop all ingest.
        struct Pass<'a, 'b>(&'a Turns, Option<parking_lot::MutexGuard<'b, u64>>);
        impl Drop for Pass<'_, '_> {
            fn drop(&mut self) {
                if let Some(next) = self.1.take() {
                    self.0.pass(next);
                }
            }
        }
        let _pass = Pass(self.turns, Some(next));
        self.done = true;
        f()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            let next = self.turns.wait_for(self.number);
            self.turns.pass(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn tickets_run_in_the_order_taken_whatever_order_they_finish_in() {
        let turns = Arc::new(Turns::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let lock = Mutex::new(());
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (turns, order, lock) = (&turns, &order, &lock);
                s.spawn(move || {
                    let (number, ticket) = {
                        let _ordered = lock.lock();
                        let t = turns.ticket();
                        (t.number, t)
                    };
                    // Later tickets finish their own work first.
                    std::thread::sleep(std::time::Duration::from_millis(20 - 2 * i));
                    ticket.run(|| order.lock().push(number));
                });
            }
        });
        assert_eq!(*order.lock(), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_dropped_ticket_passes_its_turn() {
        let turns = Turns::default();
        let first = turns.ticket();
        let second = turns.ticket();
        drop(first);
        assert_eq!(second.run(|| 7), 7);
        assert_eq!(*turns.next.lock(), 2);
    }
}
