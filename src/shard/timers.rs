//! Deadlines of one shard in a binary heap. Entries are never removed early: each names the
//! generation of its target, and a stale one is skipped when it fires, which keeps re-arming a
//! heartbeat O(log n) with no search.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    Heartbeat,
    ConnectTimeout,
    HandshakeTimeout,
    /// Token expiry notices and expiries of a session's sockets.
    Socket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub kind: TimerKind,
    pub index: usize,
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, t))| t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mk = |i| Timer {
            kind: TimerKind::Heartbeat,
            index: i,
            generation: 0,
        };
        t.schedule(t0 + Duration::from_millis(20), mk(2));
        t.schedule(t0 + Duration::from_millis(10), mk(1));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_millis(30)), Some(mk(1)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(30)), Some(mk(2)));
        assert_eq!(t.next_deadline(), None);
    }
}
