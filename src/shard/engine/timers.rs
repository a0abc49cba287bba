//! Deadlines of one shard in a binary heap. Entries are never removed early: each names the
//! generation of its target, and a stale one is skipped when it fires, which keeps re-arming a
//! heartbeat O(log n) with no search.

use super::ids::{ConnId, SessionId};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline is for, and which generation of its target it was armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The session's next ping, or the end of its wait for a pong.
    Heartbeat(SessionId, u64),
    /// A session that has joined no namespace by now is closed.
    ConnectTimeout(SessionId, u64),
    /// Token expiry notices and expiries of a session's sockets.
    Socket(SessionId, u64),
    /// A connection that has not completed its next request head by now is closed.
    RequestTimeout(ConnId, u64),
    /// A closing connection whose peer has not taken what is owed to it by now is reset.
    Linger(ConnId, u64),
    /// A connection holding a message still arriving must have it by now.
    InputDeadline(ConnId, u64),
    /// An address's work debt is paid: its connections may be read again.
    WorkPaid,
}

#[derive(Debug, Default)]
pub(super) struct Timers {
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

    #[cfg(any(test, fuzzing))]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "any instant will do as the start"
)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mk = |i| Timer::Heartbeat(SessionId::new(i), 0);
        t.schedule(t0 + Duration::from_millis(20), mk(2));
        t.schedule(t0 + Duration::from_millis(10), mk(1));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_millis(30)), Some(mk(1)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(30)), Some(mk(2)));
        assert_eq!(t.next_deadline(), None);
    }
}
