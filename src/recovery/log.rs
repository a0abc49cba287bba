//! The replay log: every lossless event of the last recovery window, in offset order, as the
//! frame subscribers got. A reconnecting client is replayed what it missed from here, or gets
//! a new session if the log cannot vouch for the whole gap.

use super::Offset;
use crate::codec::WireMessage;
use std::collections::VecDeque;
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
    /// The log holds every lossless event after this offset; `None` until it knows where its
    /// knowledge starts.
    covered_after: Option<Offset>,
    window_ms: u64,
    max_entries: usize,
}

impl RecoveryLog {
    pub fn new(window_ms: u64, max_entries: usize, covered_after: Option<Offset>) -> RecoveryLog {
        RecoveryLog {
            entries: VecDeque::new(),
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
        self.entries.clear();
        self.covered_after = None;
    }

    pub fn push(&mut self, entry: LogEntry) {
        let now = entry.at_ms;
        if self.entries.back().is_some_and(|e| e.offset > entry.offset) {
            // Out of order would break the binary searches; it cannot come from one stream.
            return;
        }
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
            self.entries.pop_front();
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

    /// The events in `(after, upto]` of the rooms `joined_at` knows, each only if newer than
    /// the moment the client joined its room; `None` when part of the gap is gone.
    pub fn missed(
        &self,
        after: Offset,
        upto: Offset,
        joined_at: impl Fn(&str) -> Option<Offset>,
    ) -> Option<Vec<WireMessage>> {
        if !self.covers(after) {
            return None;
        }
        let start = self.entries.partition_point(|e| e.offset <= after);
        Some(
            self.entries
                .range(start..)
                .take_while(|e| e.offset <= upto)
                .filter(|e| joined_at(&e.room).is_some_and(|j| e.offset > j))
                .map(|e| e.message.clone())
                .collect(),
        )
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
        let rooms = |r: &str| (r == "a").then_some(Offset::ZERO);
        let m = log
            .missed(Offset::new(1, 1), Offset::new(1, 4), rooms)
            .unwrap();
        assert_eq!(seqs(&m), ["3", "4"]);
        // Joined room b at seq 2: only what came after.
        let later = |r: &str| (r == "b").then_some(Offset::new(1, 2));
        let m = log.missed(Offset::ZERO, Offset::new(1, 9), later).unwrap();
        assert_eq!(seqs(&m), ["5"]);
    }

    #[test]
    fn a_gap_older_than_the_log_is_refused() {
        let mut log = RecoveryLog::new(1_000, 3, Some(Offset::ZERO));
        for i in 1..=5 {
            log.push(entry(i, "a", 10));
        }
        // Entries 1 and 2 went over the size cap.
        let all = |_: &str| Some(Offset::ZERO);
        assert!(log
            .missed(Offset::new(1, 1), Offset::new(1, 9), all)
            .is_none());
        assert_eq!(
            seqs(
                &log.missed(Offset::new(1, 2), Offset::new(1, 9), all)
                    .unwrap()
            ),
            ["3", "4", "5"]
        );
        log.evict(5_000);
        assert!(log.is_empty());
        assert!(log
            .missed(Offset::new(1, 4), Offset::new(1, 9), all)
            .is_none());
        assert_eq!(
            log.missed(Offset::new(1, 5), Offset::new(1, 9), all)
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
