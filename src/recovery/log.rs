//! The replay log: every lossless event of the last recovery window, in offset order, as the
//! frame subscribers got. A reconnecting client is replayed what it missed from here, or gets
//! a new session if the log cannot vouch for the whole gap.

use super::Offset;
use crate::codec::WireMessage;
use crate::shard::engine::outbound::ITEM_COST;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LogEntry {
    pub offset: Offset,
    pub room: Arc<str>,
    pub message: WireMessage,
    /// When it was logged (unix ms), for the window.
    pub at_ms: u64,
}

#[derive(Debug)]
pub struct RecoveryLog {
    entries: VecDeque<LogEntry>,
    /// The position (counted since the log was made) of `entries[0]`.
    base: u64,
    /// Each room's entries, by position, oldest first: a replay reads only the rooms it is
    /// owed, however many others the log holds.
    by_room: HashMap<Arc<str>, VecDeque<u64>>,
    /// The log holds every lossless event after this offset; `None` until it knows where its
    /// knowledge starts.
    covered_after: Option<Offset>,
    window_ms: u64,
    max_entries: usize,
}

/// Why a gap cannot be replayed from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreplayable {
    /// Part of the gap is no longer (or not yet) in the log.
    NotCovered,
    /// The missed events come to more than the replay may hold.
    TooLarge,
}

impl RecoveryLog {
    pub fn new(window_ms: u64, max_entries: usize, covered_after: Option<Offset>) -> RecoveryLog {
        RecoveryLog {
            entries: VecDeque::new(),
            base: 0,
            by_room: HashMap::new(),
            covered_after,
            window_ms,
            max_entries: max_entries.max(1),
        }
    }

    /// The first stream entry read after a start or a reset: everything from it on will be seen.
    pub fn cover_from(&mut self, first: Offset) {
        if self.covered_after.is_none() {
            self.covered_after = Some(first.pred());
        }
    }

    /// The stream started over: offsets from before no longer mean anything.
    pub fn reset(&mut self) {
        self.base += self.entries.len() as u64;
        self.entries.clear();
        self.by_room.clear();
        self.covered_after = None;
    }

    pub fn push(&mut self, entry: LogEntry) {
        let now = entry.at_ms;
        if self.entries.back().is_some_and(|e| e.offset > entry.offset) {
            // Out of order would break the binary searches; it cannot come from one stream.
            return;
        }
        let position = self.base + self.entries.len() as u64;
        self.by_room
            .entry(entry.room.clone())
            .or_default()
            .push_back(position);
        self.entries.push_back(entry);
        self.evict(now);
    }

    /// Drops what is older than the window or beyond the size cap.
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(front) = self.entries.front() {
            let too_old = now_ms.saturating_sub(front.at_ms) > self.window_ms;
            if !too_old && self.entries.len() <= self.max_entries {
                break;
            }
            self.covered_after = Some(front.offset);
            let Some(gone) = self.entries.pop_front() else {
                break;
            };
            if let Some(positions) = self.by_room.get_mut(&gone.room) {
                positions.pop_front();
                if positions.is_empty() {
                    self.by_room.remove(&gone.room);
                }
            }
            self.base += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every lossless event after `after` is still here.
    pub fn covers(&self, after: Offset) -> bool {
        self.covered_after.is_some_and(|c| after >= c)
    }

    /// The events in `(after, upto]` of `rooms`, each only if newer than the offset its room
    /// was joined at, in offset order. The work is bounded by what is returned: only the
    /// named rooms' entries are read, and the search stops once their frames, counted as an
    /// outbound queue counts them, come to more than `max_bytes`.
    pub fn missed(
        &self,
        after: Offset,
        upto: Offset,
        rooms: &[(Arc<str>, Offset)],
        max_bytes: usize,
    ) -> Result<Vec<WireMessage>, Unreplayable> {
        if !self.covers(after) {
            return Err(Unreplayable::NotCovered);
        }
        let mut found: Vec<(Offset, &WireMessage)> = Vec::new();
        let mut bytes = 0usize;
        for (room, joined) in rooms {
            let Some(positions) = self.by_room.get(room) else {
                continue;
            };
            let from = after.max(*joined);
            let entry = |p: &u64| &self.entries[(p - self.base) as usize];
            let start = positions.partition_point(|p| entry(p).offset <= from);
            for p in positions.range(start..) {
                let e = entry(p);
                if e.offset > upto {
                    break;
                }
                // As an outbound queue charges it: the frame and its bookkeeping.
                bytes += e.message.len() + ITEM_COST;
                if bytes > max_bytes {
                    return Err(Unreplayable::TooLarge);
                }
                found.push((e.offset, &e.message));
            }
        }
        found.sort_unstable_by_key(|(offset, _)| *offset);
        Ok(found.into_iter().map(|(_, m)| m.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, room: &str, at_ms: u64) -> LogEntry {
        LogEntry {
            offset: Offset::new(1, seq),
            room: Arc::from(room),
            message: WireMessage::text(|b| b.extend_from_slice(format!("4{seq}").as_bytes())),
            at_ms,
        }
    }

    fn seqs(msgs: &[WireMessage]) -> Vec<String> {
        msgs.iter()
            .map(|m| String::from_utf8(m.polling()[1..].to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn replays_the_gap_of_joined_rooms_only() {
        let mut log = RecoveryLog::new(60_000, 100, Some(Offset::ZERO));
        for (i, room) in ["a", "b", "a", "a", "b", "a"].iter().enumerate() {
            log.push(entry(i as u64 + 1, room, 10));
        }
        let rooms = [(Arc::from("a"), Offset::ZERO)];
        let m = log
            .missed(Offset::new(1, 1), Offset::new(1, 4), &rooms, usize::MAX)
            .unwrap();
        assert_eq!(seqs(&m), ["3", "4"]);
        // Joined room b at seq 2: only what came after.
        let later = [(Arc::from("b"), Offset::new(1, 2))];
        let m = log
            .missed(Offset::ZERO, Offset::new(1, 9), &later, usize::MAX)
            .unwrap();
        assert_eq!(seqs(&m), ["5"]);
        // Both rooms: merged in offset order.
        let both = [rooms[0].clone(), (Arc::from("b"), Offset::ZERO)];
        let m = log
            .missed(Offset::ZERO, Offset::new(1, 9), &both, usize::MAX)
            .unwrap();
        assert_eq!(seqs(&m), ["1", "2", "3", "4", "5", "6"]);
        assert_eq!(
            log.missed(Offset::ZERO, Offset::new(1, 9), &both, 10),
            Err(Unreplayable::TooLarge)
        );
    }

    #[test]
    fn a_gap_older_than_the_log_is_refused() {
        let mut log = RecoveryLog::new(1_000, 3, Some(Offset::ZERO));
        for i in 1..=5 {
            log.push(entry(i, "a", 10));
        }
        // Entries 1 and 2 went over the size cap.
        let all = [(Arc::from("a"), Offset::ZERO)];
        assert_eq!(
            log.missed(Offset::new(1, 1), Offset::new(1, 9), &all, usize::MAX),
            Err(Unreplayable::NotCovered)
        );
        assert_eq!(
            seqs(
                &log.missed(Offset::new(1, 2), Offset::new(1, 9), &all, usize::MAX)
                    .unwrap()
            ),
            ["3", "4", "5"]
        );
        log.evict(5_000);
        assert!(log.is_empty());
        assert!(log.by_room.is_empty(), "the index empties with the log");
        assert!(log
            .missed(Offset::new(1, 4), Offset::new(1, 9), &all, usize::MAX)
            .is_err());
        assert_eq!(
            log.missed(Offset::new(1, 5), Offset::new(1, 9), &all, usize::MAX)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn coverage_starts_at_the_first_entry_seen() {
        let mut log = RecoveryLog::new(1_000, 10, None);
        assert!(!log.covers(Offset::new(9, 9)));
        log.cover_from(Offset::new(7, 0));
        assert!(log.covers(Offset::new(6, u64::MAX)));
        assert!(!log.covers(Offset::new(6, 5)));
        log.reset();
        assert!(!log.covers(Offset::new(9, 9)));
    }
}
