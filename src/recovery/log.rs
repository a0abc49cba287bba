//! The replay log: every lossless event of the last recovery window, in offset order, as the
//! frame subscribers got. A reconnecting client is replayed what it missed from here, or gets
//! a new session if the log cannot vouch for the whole gap.
//!
//! It holds hundreds of thousands of events, so an event costs its frame and a few dozen bytes:
//! frames are copied into shared blocks (no allocation, rounding or reference count of their
//! own), rooms are numbered, and times are kept once per millisecond, not once per event.

use super::Offset;
use crate::codec::WireMessage;
use crate::shard::engine::outbound::ITEM_COST;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Frames are copied into blocks of this size.
const BLOCK: usize = 64 * 1024;
/// A frame this large keeps the buffer it came in: copying it saves no more than its header.
const OWN_BUFFER_FROM: usize = BLOCK / 4;

#[derive(Debug, Clone)]
pub struct LogEntry {
    pub offset: Offset,
    pub room: Arc<str>,
    pub message: WireMessage,
    /// When it was logged (unix ms), for the window.
    pub at_ms: u64,
}

/// An entry as held: where its frame is in [`Frames`] and which numbered room it went to (32
/// bytes; how to read the frame is read back from its header).
#[derive(Debug)]
struct Held {
    offset: Offset,
    at: u64,
    len: u32,
    room: u32,
}

const _: () = assert!(std::mem::size_of::<Held>() == 32);

#[derive(Debug)]
pub struct RecoveryLog {
    entries: VecDeque<Held>,
    /// The position (counted since the log was made) of `entries[0]`.
    base: u64,
    /// From which position on entries were logged at which time (ms), oldest first; the first
    /// mark is at or before `base`.
    marks: VecDeque<(u64, u64)>,
    frames: Frames,
    rooms: Rooms,
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
            marks: VecDeque::new(),
            frames: Frames::default(),
            rooms: Rooms::default(),
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
        self.marks.clear();
        self.frames.clear();
        self.rooms = Rooms::default();
        self.covered_after = None;
    }

    pub fn push(&mut self, entry: LogEntry) {
        self.push_frame(
            entry.offset,
            &entry.room,
            entry.message.ws_frame(),
            entry.at_ms,
        );
    }

    /// As `push`, from the parts of an entry: the log keeps the frame in its own buffers, so
    /// nothing needs to be made to hand it one.
    pub fn push_frame(&mut self, offset: Offset, room: &Arc<str>, frame: &Bytes, now: u64) {
        if self.entries.back().is_some_and(|e| e.offset > offset) {
            // Out of order would break the binary searches; it cannot come from one stream.
            return;
        }
        let Ok(len) = u32::try_from(frame.len()) else {
            return;
        };
        let position = self.base + self.entries.len() as u64;
        if self.marks.back().is_none_or(|(_, at)| now > *at) {
            push_growing(&mut self.marks, (position, now));
        }
        let room = self.rooms.add(room, position);
        let at = self.frames.append(frame);
        push_growing(
            &mut self.entries,
            Held {
                offset,
                at,
                len,
                room,
            },
        );
        self.evict(now);
    }

    /// Drops what is older than the window or beyond the size cap.
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(front) = self.entries.front() {
            while self.marks.get(1).is_some_and(|(p, _)| *p <= self.base) {
                self.marks.pop_front();
            }
            let logged_at = self.marks.front().map_or(now_ms, |(_, at)| *at);
            let too_old = now_ms.saturating_sub(logged_at) > self.window_ms;
            if !too_old && self.entries.len() <= self.max_entries {
                break;
            }
            self.covered_after = Some(front.offset);
            self.rooms.remove_first(front.room);
            self.entries.pop_front();
            self.base += 1;
        }
        match self.entries.front() {
            Some(front) => self.frames.release_before(front.at),
            None => {
                self.marks.clear();
                self.frames.clear();
                // Every room left with its last entry; their numbers go with them.
                self.rooms = Rooms::default();
            }
        }
        shrink_idle(&mut self.entries);
        shrink_idle(&mut self.marks);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the log holds for its entries: frames, their blocks and its indexes.
    pub fn held_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Held>()
            + self.marks.capacity() * std::mem::size_of::<(u64, u64)>()
            + self.frames.held_bytes()
            + self.rooms.held_bytes()
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
        let mut found: Vec<&Held> = Vec::new();
        let mut bytes = 0usize;
        for (room, joined) in rooms {
            let Some(positions) = self.rooms.positions(room) else {
                continue;
            };
            let from = after.max(*joined);
            let held = |p: &u64| {
                p.checked_sub(self.base)
                    .and_then(|i| self.entries.get(i as usize))
            };
            let start = positions.partition_point(|p| held(p).is_none_or(|e| e.offset <= from));
            for p in positions.range(start..) {
                let Some(e) = held(p) else {
                    return Err(Unreplayable::NotCovered);
                };
                if e.offset > upto {
                    break;
                }
                // As an outbound queue charges it: the frame and its bookkeeping.
                bytes += e.len as usize + ITEM_COST;
                if bytes > max_bytes {
                    return Err(Unreplayable::TooLarge);
                }
                found.push(e);
            }
        }
        found.sort_unstable_by_key(|e| e.offset);
        // A frame the log cannot find would make the replay partial: no replay instead.
        found
            .into_iter()
            .map(|e| WireMessage::from_ws_frame(self.frames.get(e.at, e.len as usize)?))
            .collect::<Option<Vec<_>>>()
            .ok_or(Unreplayable::NotCovered)
    }
}

/// Grows a queue by a quarter at a time rather than doubling it, so a log of hundreds of
/// thousands of entries holds at most a quarter more than it uses.
fn push_growing<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == q.capacity() {
        q.reserve_exact((q.len() / 4).max(4));
    }
    q.push_back(item);
}

/// Gives back most of a queue that a burst grew and the window has since emptied.
fn shrink_idle<T>(q: &mut VecDeque<T>) {
    if q.capacity() > 1024 && q.len() < q.capacity() / 4 {
        q.shrink_to(q.len() + q.len() / 4);
    }
}

/// The log's frames, end to end in a space of positions: small ones copied into blocks, large
/// ones in their own buffers. Blocks are let go from the front as entries leave.
#[derive(Debug, Default)]
struct Frames {
    /// Sealed blocks and large frames, each with the position it starts at.
    sealed: VecDeque<(u64, Bytes)>,
    /// The block being filled: the positions just before `end`.
    open: BytesMut,
    end: u64,
}

impl Frames {
    /// Copies `frame` in (or keeps it, if large) and gives its position.
    fn append(&mut self, frame: &Bytes) -> u64 {
        let at = self.end;
        if frame.len() >= OWN_BUFFER_FROM {
            self.seal();
            self.sealed.push_back((at, frame.clone()));
        } else {
            if self.open.capacity() - self.open.len() < frame.len() {
                self.seal();
                self.open = BytesMut::with_capacity(BLOCK);
            }
            self.open.extend_from_slice(frame);
        }
        self.end += frame.len() as u64;
        at
    }

    /// Where the open block starts.
    fn open_at(&self) -> u64 {
        self.end - self.open.len() as u64
    }

    /// Ends the open block where it is filled up to; what is left of its buffer stays open.
    fn seal(&mut self) {
        if !self.open.is_empty() {
            let start = self.open_at();
            self.sealed.push_back((start, self.open.split().freeze()));
        }
    }

    fn get(&self, at: u64, len: usize) -> Option<Bytes> {
        let open_at = self.open_at();
        if at >= open_at {
            let from = usize::try_from(at - open_at).ok()?;
            return self
                .open
                .get(from..from.checked_add(len)?)
                .map(Bytes::copy_from_slice);
        }
        let i = self
            .sealed
            .partition_point(|(start, _)| *start <= at)
            .checked_sub(1)?;
        let (start, block) = self.sealed.get(i)?;
        let from = usize::try_from(at - start).ok()?;
        let to = from.checked_add(len)?;
        (to <= block.len()).then(|| block.slice(from..to))
    }

    /// Lets go of every block that ends before `at`.
    fn release_before(&mut self, at: u64) {
        while let Some((start, block)) = self.sealed.front() {
            if start + block.len() as u64 > at {
                break;
            }
            self.sealed.pop_front();
        }
        shrink_idle(&mut self.sealed);
    }

    fn clear(&mut self) {
        self.sealed = VecDeque::new();
        self.open.clear();
    }

    fn held_bytes(&self) -> usize {
        self.sealed.iter().map(|(_, b)| b.len()).sum::<usize>()
            + self.sealed.capacity() * std::mem::size_of::<(u64, Bytes)>()
            + self.open.capacity()
    }
}

/// Rooms by number, each with the positions of its entries, oldest first: a replay reads only
/// the rooms it is owed, however many others the log holds.
#[derive(Debug, Default)]
struct Rooms {
    numbers: HashMap<Arc<str>, u32>,
    slots: Vec<Option<RoomEntries>>,
    free: Vec<u32>,
}

#[derive(Debug)]
struct RoomEntries {
    name: Arc<str>,
    positions: VecDeque<u64>,
}

impl Rooms {
    fn add(&mut self, room: &Arc<str>, position: u64) -> u32 {
        let number = match self.numbers.get(room) {
            Some(n) => *n,
            None => {
                let slot = Some(RoomEntries {
                    name: room.clone(),
                    positions: VecDeque::new(),
                });
                let n = match self.free.pop() {
                    Some(n) => {
                        self.slots[n as usize] = slot;
                        n
                    }
                    None => {
                        self.slots.push(slot);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.numbers.insert(room.clone(), n);
                n
            }
        };
        if let Some(Some(r)) = self.slots.get_mut(number as usize) {
            push_growing(&mut r.positions, position);
        }
        number
    }

    /// The room's oldest entry left the log.
    fn remove_first(&mut self, number: u32) {
        let Some(slot) = self.slots.get_mut(number as usize) else {
            return;
        };
        let emptied = slot.as_mut().is_some_and(|r| {
            r.positions.pop_front();
            shrink_idle(&mut r.positions);
            r.positions.is_empty()
        });
        if emptied {
            if let Some(r) = slot.take() {
                self.numbers.remove(&r.name);
            }
            self.free.push(number);
        }
    }

    fn positions(&self, room: &str) -> Option<&VecDeque<u64>> {
        let n = *self.numbers.get(room)?;
        self.slots.get(n as usize)?.as_ref().map(|r| &r.positions)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    fn held_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|r| r.positions.capacity() * 8 + r.name.len())
            .sum::<usize>()
            + self.slots.capacity() * std::mem::size_of::<Option<RoomEntries>>()
            + self.numbers.capacity() * (std::mem::size_of::<(Arc<str>, u32)>() + 1)
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
        assert!(log.rooms.is_empty(), "the index empties with the log");
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

    fn message(len: usize, tag: u64) -> WireMessage {
        let text = format!("4{tag:0>width$}", width = len.saturating_sub(1));
        WireMessage::text(|b| b.extend_from_slice(text.as_bytes()))
    }

    #[test]
    fn replays_give_back_every_frame_byte_for_byte_from_blocks_and_large_buffers() {
        let mut log = RecoveryLog::new(60_000, 2_500, Some(Offset::ZERO));
        let mut sent = Vec::new();
        for i in 1..=4_000u64 {
            // Mostly small frames, now and then one too large to copy into a block.
            let len = if i % 397 == 0 {
                30_000
            } else {
                20 + (i as usize * 37) % 1_900
            };
            let m = message(len, i);
            let room = if i % 3 == 0 { "b" } else { "a" };
            log.push(LogEntry {
                offset: Offset::new(1, i),
                room: Arc::from(room),
                message: m.clone(),
                at_ms: 10,
            });
            sent.push((i, room, m));
        }
        // The cap let the first 1,500 go.
        let rooms = [
            (Arc::from("a"), Offset::ZERO),
            (Arc::from("b"), Offset::ZERO),
        ];
        let got = log
            .missed(
                Offset::new(1, 1_500),
                Offset::new(1, 4_000),
                &rooms,
                usize::MAX,
            )
            .unwrap();
        let want: Vec<&WireMessage> = sent[1_500..].iter().map(|(_, _, m)| m).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w);
            assert_eq!(g.polling(), w.polling());
        }
        let only_b = [(Arc::from("b"), Offset::new(1, 3_000))];
        let got = log
            .missed(
                Offset::new(1, 1_500),
                Offset::new(1, 3_600),
                &only_b,
                usize::MAX,
            )
            .unwrap();
        let want: Vec<&WireMessage> = sent
            .iter()
            .filter(|(i, r, _)| *r == "b" && *i > 3_000 && *i <= 3_600)
            .map(|(_, _, m)| m)
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn an_event_costs_its_frame_and_at_most_64_bytes_more() {
        let mut log = RecoveryLog::new(600_000, 1_000_000, Some(Offset::ZERO));
        let (n, frame) = (300_000u64, 230);
        for i in 1..=n {
            log.push(LogEntry {
                offset: Offset::new(1, i),
                room: Arc::from(format!("trades:S{}", i % 200)),
                message: message(frame, i),
                at_ms: 1_000 + i / 50,
            });
        }
        let per_event = log.held_bytes() as f64 / n as f64;
        let frame_len = message(frame, 1).len() as f64;
        assert!(
            per_event <= frame_len + 64.0,
            "{per_event:.0} bytes per event for {frame_len} byte frames"
        );
        // Time passes: the window empties the log and lets its memory go.
        log.window_ms = 1_000;
        log.evict(1_000 + n / 50 + 5_000);
        assert!(log.is_empty());
        assert!(log.held_bytes() <= BLOCK + 4096, "{}", log.held_bytes());
    }

    #[test]
    fn the_window_is_kept_by_the_time_each_entry_was_logged() {
        let mut log = RecoveryLog::new(1_000, 100, Some(Offset::ZERO));
        for (i, at) in [(1, 0), (2, 0), (3, 500), (4, 500), (5, 1_200)] {
            log.push(entry(i, "a", at));
        }
        // At 1,200 ms only the entries from 0 ms are older than the window.
        assert_eq!(log.len(), 3);
        assert!(log.covers(Offset::new(1, 2)) && !log.covers(Offset::new(1, 1)));
        log.evict(1_501);
        assert_eq!(log.len(), 1);
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
