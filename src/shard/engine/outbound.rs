//! A connection's (or polling session's) outbound queue: frames in order, each tagged with the
//! room it belongs to, so a slow consumer's queued ticker can be replaced by a newer one in
//! place instead of growing the queue.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Slices handed to one `writev`; Linux accepts up to 1024.
pub const MAX_IOV: usize = 64;
/// How far back a replacement looks for the room's queued value.
const MAX_SCAN: usize = 4096;
/// Memory one queued frame holds beside its bytes: its queue slot and the reference to its
/// buffer. Charged with the bytes, so a flood of tiny frames costs what it really holds.
pub const ITEM_COST: usize = 48;

#[derive(Debug)]
struct Item {
    data: Bytes,
    tag: u64,
    replaceable: bool,
}

#[derive(Debug, Default)]
pub struct Outbound {
    items: VecDeque<Item>,
    bytes: usize,
    /// The charge of frames that belong to no stream (answers, control frames): memory held
    /// for this client alone, unlike broadcast frames every subscriber shares.
    own: usize,
    /// The front item is partly written and must go out whole.
    front_partial: bool,
}

impl Outbound {
    /// Bytes queued (what remains to be written).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The memory the queue holds for its owner: its bytes plus `ITEM_COST` per frame. The
    /// outbound limits apply to this.
    pub fn charge(&self) -> usize {
        self.bytes + self.items.len() * ITEM_COST
    }

    /// The part of the charge held for this client alone (frames of no stream).
    pub fn own_charge(&self) -> usize {
        self.own
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues a frame. `tag` names its stream (0: none); `replaceable` lets a newer value of
    /// the same stream take its place later.
    pub fn push(&mut self, data: Bytes, tag: u64, replaceable: bool) {
        self.bytes += data.len();
        if tag == 0 {
            self.own += data.len() + ITEM_COST;
        }
        self.items.push_back(Item {
            data,
            tag,
            replaceable,
        });
    }

    /// Puts `data` in place of the newest queued frame of `tag`, if that frame may be
    /// replaced and has not started going out. Returns whether it did.
    pub fn replace_latest(&mut self, data: Bytes, tag: u64) -> bool {
        let first = usize::from(self.front_partial);
        let len = self.items.len();
        for i in (first.max(len.saturating_sub(MAX_SCAN))..len).rev() {
            let item = &mut self.items[i];
            if item.tag != tag {
                continue;
            }
            if !item.replaceable {
                return false;
            }
            self.bytes = self.bytes - item.data.len() + data.len();
            item.data = data;
            return true;
        }
        false
    }

    /// Drops everything that has not started going out.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.front_partial);
        while self.items.len() > keep {
            if let Some(item) = self.items.pop_back() {
                self.bytes -= item.data.len();
                self.forget(&item);
            }
        }
    }

    /// Takes up to `n` whole frames from the front (long-polling).
    pub fn take_front(&mut self, n: usize) -> Vec<Bytes> {
        let n = n.min(self.items.len());
        let mut out = Vec::with_capacity(n);
        for item in self.items.drain(..n) {
            self.bytes -= item.data.len();
            if item.tag == 0 {
                self.own -= item.data.len() + ITEM_COST;
            }
            out.push(item.data);
        }
        self.front_partial = false;
        out
    }

    fn forget(&mut self, item: &Item) {
        if item.tag == 0 {
            self.own -= item.data.len() + ITEM_COST;
        }
    }

    /// Points `iov` at the queued frames, front first, as many as fit; returns how many.
    pub fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, item) in iov.iter_mut().zip(self.items.iter()) {
            *slot = IoSlice::new(&item.data);
            n += 1;
        }
        n
    }

    /// Drops `written` bytes from the front: what a write took.
    pub fn advance(&mut self, mut written: usize) {
        written = written.min(self.bytes);
        self.bytes -= written;
        while written > 0 {
            let Some(front) = self.items.front_mut() else {
                break;
            };
            if written >= front.data.len() {
                written -= front.data.len();
                if let Some(item) = self.items.pop_front() {
                    self.forget(&item);
                }
                self.front_partial = false;
            } else {
                if front.tag == 0 {
                    self.own -= written;
                }
                front.data.advance(written);
                self.front_partial = true;
                written = 0;
            }
        }
        // Give back a queue that grew during a burst, so idle connections stay small.
        if self.items.is_empty() && self.items.capacity() > 16 {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the queue out, taking at most `cap` bytes per write, as a slow socket would.
    fn drain(q: &mut Outbound, cap: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while !q.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = q.fill_iov(&mut iov);
            let all: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let took = all.len().min(cap);
            got.extend_from_slice(&all[..took]);
            q.advance(took);
        }
        got
    }

    #[test]
    fn replaces_only_the_newest_replaceable_value_of_a_stream() {
        let mut q = Outbound::default();
        q.push(Bytes::from_static(b"t1"), 7, true);
        q.push(Bytes::from_static(b"trade"), 9, false);
        q.push(Bytes::from_static(b"t2"), 7, true);
        assert!(q.replace_latest(Bytes::from_static(b"t3"), 7));
        q.push(Bytes::from_static(b"closed"), 7, false);
        assert!(
            !q.replace_latest(Bytes::from_static(b"t4"), 7),
            "never jumps a pinned value"
        );
        let all: Vec<Bytes> = q.take_front(10);
        assert_eq!(all, vec![&b"t1"[..], b"trade", b"t3", b"closed"]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn partial_writes_keep_frames_whole() {
        let mut q = Outbound::default();
        q.push(Bytes::from_static(b"abcdef"), 1, true);
        q.push(Bytes::from_static(b"gh"), 1, true);
        assert_eq!(drain(&mut q, 3), b"abcdefgh");
        assert_eq!(q.bytes(), 0);
        q.push(Bytes::from_static(b"123456"), 1, true);
        q.advance(2);
        assert!(
            !q.replace_latest(Bytes::from_static(b"x"), 1),
            "the frame going out stays"
        );
        q.push(Bytes::from_static(b"789"), 1, true);
        q.discard_unsent();
        assert_eq!(q.len(), 1, "the partly written frame is kept whole");
        assert_eq!(drain(&mut q, 100), b"3456");
    }

    #[test]
    fn own_charge_counts_frames_of_no_stream() {
        let mut q = Outbound::default();
        q.push(Bytes::from_static(b"ack"), 0, false);
        q.push(Bytes::from_static(b"trade"), 5, false);
        assert_eq!(q.own_charge(), 3 + ITEM_COST);
        assert_eq!(q.charge(), 8 + 2 * ITEM_COST);
        q.advance(2);
        assert_eq!(q.own_charge(), 1 + ITEM_COST);
        q.advance(1);
        assert_eq!(q.own_charge(), 0);
        q.push(Bytes::from_static(b"pong"), 0, false);
        q.discard_unsent();
        assert_eq!(
            q.own_charge(),
            0,
            "the partly written trade stays, the pong goes"
        );
        q.push(Bytes::from_static(b"a"), 0, false);
        q.push(Bytes::from_static(b"b"), 0, false);
        q.take_front(10);
        assert_eq!((q.own_charge(), q.charge()), (0, 0));
    }
}
