//! How the rest of the process talks to shards: a channel plus a waker per shard. A publish is
//! one message per shard carrying the whole batch, whatever the number of subscribers.

use crate::codec::WireMessage;
use crate::market::Publish;
use crate::recovery::{RestoreTicket, SessionRecord};
use bytes::BytesMut;
use crossbeam_channel::Sender;
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
    /// A batch of broadcasts, and when ingest handed it over (for the fan-out latency
    /// histogram).
    Publish {
        batch: Arc<[Broadcast]>,
        created: Instant,
    },
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

#[derive(Clone)]
pub struct ShardHandle {
    pub tx: Sender<ShardMsg>,
    pub waker: Arc<mio::Waker>,
}

impl ShardHandle {
    pub fn send(&self, msg: ShardMsg) {
        if self.tx.send(msg).is_ok() {
            // A failed wake means the shard is gone; there is nobody left to tell.
            let _ = self.waker.wake();
        }
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

    pub fn publish(&self, batch: Vec<Broadcast>, created: Instant) {
        if batch.is_empty() {
            return;
        }
        let batch: Arc<[Broadcast]> = batch.into();
        for s in self.shards.iter() {
            s.send(ShardMsg::Publish {
                batch: batch.clone(),
                created,
            });
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
