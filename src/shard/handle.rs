//! How the rest of the process talks to shards: channels plus a waker per shard. A publish is
//! one message per shard carrying the whole batch, whatever the number of subscribers. A
//! shard's publish queue is bounded: a shard that falls behind gets an `Overflow` in place of
//! the batches it could not take (latest values conflated, lossless streams handed to
//! connection state recovery), so ingest never waits on it and memory stays bounded.

use crate::codec::WireMessage;
use crate::market::book::BookView;
use crate::market::{Publish, StreamClass};
use crate::recovery::{Offset, RestoreTicket, SessionRecord};
use crate::shard::presence::Presence;
use bytes::BytesMut;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One event for one room, already encoded into its final frame.
pub type Broadcast = Publish<WireMessage>;

/// An emit to `/ws` rooms from outside the market (socket.io's Redis emitter), encoded once
/// for every recipient.
#[derive(Debug, Clone)]
pub struct RoomEmit {
    /// Rooms to deliver to; empty means every `/ws` socket.
    pub rooms: Vec<Arc<str>>,
    /// Sockets in any of these rooms are left out.
    pub except: Vec<Arc<str>>,
    pub message: WireMessage,
    pub event: String,
}

pub enum ShardMsg {
    /// A connection whose request names a session this shard owns.
    Adopt {
        stream: std::net::TcpStream,
        buffered: BytesMut,
    },
    Shutdown,
    /// A socket.io Redis emitter packet for rooms of `/ws`.
    Emit(Arc<RoomEmit>),
    /// The answer to a session lookup that had to go to Redis.
    Restored {
        ticket: RestoreTicket,
        record: Option<SessionRecord>,
    },
    /// Graceful drain: tell every client `server.shutdown`, write what is queued, then close
    /// everything by `deadline`.
    Drain {
        reconnect_after_ms: u64,
        deadline: std::time::Instant,
    },
}

/// A batch of broadcasts, and when ingest handed it over (for the fan-out latency histogram).
pub struct PublishMsg {
    pub batch: Arc<[Broadcast]>,
    pub created: Instant,
}

/// Publish batches a shard may have waiting before it is overloaded.
pub const PUBLISH_QUEUE: usize = 1024;

/// What a shard that fell behind its publishes is owed, instead of every batch: the newest
/// value of each latest-only stream, the newest view of each order book, and the lossless
/// rooms whose events it will not get (their members are disconnected to recover them from
/// the replay log). Bounded by the number of rooms, however long the shard stays behind.
#[derive(Debug, Default, Clone)]
pub struct Overflow {
    /// Newest delivered value per latest-only room.
    /// Keyed by room and, where one room carries several streams, the stream.
    pub latest: HashMap<(Arc<str>, Option<u64>), Broadcast>,
    /// Newest value kept for new subscribers, per room.
    pub retained: HashMap<Arc<str>, WireMessage>,
    /// Newest order book view per book room.
    pub books: HashMap<Arc<str>, Arc<BookView>>,
    /// Rooms whose lossless events were lost.
    pub lossless: HashSet<Arc<str>>,
    /// The newest recovery offset among what was lost.
    pub last_offset: Option<Offset>,
    /// Batches folded in.
    pub batches: u64,
    pub created: Option<Instant>,
    /// Latest ticker per symbol, for `ticker:all` subscribers.
    pub tickers: indexmap::IndexMap<Arc<str>, bytes::Bytes>,
    /// Events of unknown rooms are gone (trimmed from the stream unread): every lossless
    /// room counts as one that lost events.
    pub all_lossless: bool,
    /// What was folded is history the instance read while catching up with the cluster
    /// stream, not batches a shard was too slow to take.
    pub stream_gap: bool,
    /// The newest state sent for each view opened meanwhile (see `market::demand`).
    pub refreshes: HashMap<Arc<str>, Broadcast>,
}

impl Overflow {
    pub fn fold(&mut self, batch: &[Broadcast], created: Instant) {
        self.batches += 1;
        self.created.get_or_insert(created);
        for b in batch {
            if b.refresh.is_some() {
                // What was folded for the view before is older than its state here: a shard
                // takes the state first and then only what came after it.
                self.forget(&b.room);
                self.refreshes.insert(b.room.clone(), b.clone());
                continue;
            }
            self.last_offset = self.last_offset.max(b.offset);
            if let Some(values) = &b.tickers {
                for v in values.iter() {
                    self.tickers.insert(v.symbol.clone(), v.json.clone());
                }
            }
            if b.retain {
                self.retained.insert(b.room.clone(), b.body.clone());
            }
            if let Some(view) = &b.book {
                self.books.insert(b.room.clone(), view.clone());
            }
            if !b.deliver {
                continue;
            }
            match b.class {
                StreamClass::Latest => {
                    self.latest
                        .insert((b.room.clone(), b.latest_key), b.clone());
                }
                StreamClass::Lossless => {
                    self.lossless.insert(b.room.clone());
                }
                StreamClass::BookDelta | StreamClass::BookSnapshot => {}
            }
        }
    }
}

impl Overflow {
    fn forget(&mut self, room: &Arc<str>) {
        self.retained.remove(room);
        self.books.remove(room);
        self.latest.retain(|(r, _), _| r != room);
    }

    /// Adds `newer`, folded after everything in `self`.
    fn merge(&mut self, newer: Overflow) {
        for room in newer.refreshes.keys() {
            self.forget(room);
        }
        self.batches += newer.batches;
        self.created = match (self.created, newer.created) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_offset = self.last_offset.max(newer.last_offset);
        self.latest.extend(newer.latest);
        self.retained.extend(newer.retained);
        self.books.extend(newer.books);
        self.lossless.extend(newer.lossless);
        self.tickers.extend(newer.tickers);
        self.stream_gap |= newer.stream_gap;
        self.refreshes.extend(newer.refreshes);
        self.all_lossless |= newer.all_lossless;
    }
}

/// One shard's inbox: control messages (few, never dropped), publish batches (bounded), and
/// the overflow that takes the batches a full queue cannot.
#[derive(Clone)]
pub struct ShardHandle {
    pub tx: Sender<ShardMsg>,
    pub publish_tx: Sender<PublishMsg>,
    pub overflow: Arc<Mutex<Overflow>>,
    /// Set while the overflow holds something: later batches go there too, so none overtakes
    /// what was folded before it.
    pub overflowing: Arc<AtomicBool>,
    pub waker: Arc<mio::Waker>,
    /// The rooms the shard has members in: a batch with none of them does not wake it.
    pub presence: Arc<Presence>,
}

/// Batches a shard that is not woken for them may have queued before it is woken anyway:
/// what it keeps from every batch (last values, views, its recovery offset) stays this close
/// to current, and the queue never comes near overflowing on an idle shard.
pub const UNWOKEN_BATCHES: usize = 16;

impl ShardHandle {
    pub fn send(&self, msg: ShardMsg) {
        if self.tx.send(msg).is_ok() {
            // A failed wake means the shard is gone; there is nobody left to tell.
            let _ = self.waker.wake();
        }
    }

    /// Queues a batch, or folds it into the overflow when the shard is behind.
    pub fn publish(&self, batch: Arc<[Broadcast]>, created: Instant) {
        if !self.overflowing.load(Ordering::Acquire) {
            match self.publish_tx.try_send(PublishMsg {
                batch: batch.clone(),
                created,
            }) {
                Ok(()) => {
                    // Asked after queueing: see `Presence::wants`.
                    if self.presence.wants(&batch) || self.publish_tx.len() >= UNWOKEN_BATCHES {
                        let _ = self.waker.wake();
                    }
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => return self.fold(&m.batch, m.created),
            }
        }
        self.fold(&batch, created);
    }

    /// Gives the shard an overflow built elsewhere, after every batch queued before it.
    fn hand_over(&self, folded: Overflow) {
        let mut overflow = self.overflow.lock();
        overflow.merge(folded);
        self.overflowing.store(true, Ordering::Release);
        drop(overflow);
        let _ = self.waker.wake();
    }

    fn fold(&self, batch: &[Broadcast], created: Instant) {
        let mut overflow = self.overflow.lock();
        overflow.fold(batch, created);
        self.overflowing.store(true, Ordering::Release);
        drop(overflow);
        let _ = self.waker.wake();
    }

    /// Takes what the overflow holds, once the queue before it is empty.
    pub fn take_overflow(&self) -> Option<Overflow> {
        if !self.overflowing.load(Ordering::Acquire) {
            return None;
        }
        let mut overflow = self.overflow.lock();
        self.overflowing.store(false, Ordering::Release);
        Some(std::mem::take(&mut *overflow))
    }
}

/// Hands published batches to every shard.
#[derive(Clone)]
pub struct Fanout {
    shards: Arc<[ShardHandle]>,
}

impl Fanout {
    pub fn new(shards: Arc<[ShardHandle]>) -> Fanout {
        Fanout { shards }
    }

    pub fn publish(&self, batch: Arc<[Broadcast]>, created: Instant) {
        if batch.is_empty() {
            return;
        }
        for s in self.shards.iter() {
            s.publish(batch.clone(), created);
        }
    }

    /// What ingest folded while catching up with the stream, to every shard.
    pub fn hand_over(&self, folded: Overflow) {
        for s in self.shards.iter() {
            s.hand_over(folded.clone());
        }
    }

    /// A socket.io Redis emitter packet, to every shard.
    pub fn emit(&self, emit: Arc<RoomEmit>) {
        for s in self.shards.iter() {
            s.send(ShardMsg::Emit(emit.clone()));
        }
    }

    pub fn shutdown(&self) {
        for s in self.shards.iter() {
            s.send(ShardMsg::Shutdown);
        }
    }

    pub fn shard(&self, i: usize) -> Option<&ShardHandle> {
        self.shards.get(i)
    }

    pub fn drain(&self, reconnect_after_ms: u64, deadline: std::time::Instant) {
        for s in self.shards.iter() {
            s.send(ShardMsg::Drain {
                reconnect_after_ms,
                deadline,
            });
        }
    }
}
