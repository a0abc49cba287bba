//! How the rest of the process talks to shards: a channel plus a waker per shard. A publish is
//! one message per shard carrying the whole batch, whatever the number of subscribers.

use crate::codec::WireMessage;
use crate::market::book::BookView;
use crate::market::StreamClass;
use crate::recovery::{Offset, RestoreTicket, SessionRecord};
use bytes::BytesMut;
use crossbeam_channel::Sender;
use std::sync::Arc;

/// One event for one room, already encoded into its final frame.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub room: Arc<str>,
    pub message: WireMessage,
    pub class: StreamClass,
    /// Send to the room's members.
    pub deliver: bool,
    /// Keep as the room's last value, sent to each new subscriber.
    pub retain: bool,
    /// For order book rooms: the view subscribe snapshots are made from.
    pub book: Option<Arc<BookView>>,
    /// When ingest handed it over, for the fan-out latency histogram.
    pub created: std::time::Instant,
    /// Its recovery offset (lossless events, with recovery on).
    pub offset: Option<Offset>,
}

pub enum ShardMsg {
    Publish(Arc<[Broadcast]>),
    /// A connection whose request names a session this shard owns.
    Adopt {
        stream: std::net::TcpStream,
        buffered: BytesMut,
    },
    Shutdown,
    /// A socket.io Redis emitter packet for rooms of `/ws`.
    Emit(Arc<crate::cluster::emitter::Emit>),
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

    pub fn publish(&self, batch: Vec<Broadcast>) {
        if batch.is_empty() {
            return;
        }
        let batch: Arc<[Broadcast]> = batch.into();
        for s in self.shards.iter() {
            s.send(ShardMsg::Publish(batch.clone()));
        }
    }

    /// A socket.io Redis emitter packet, to every shard.
    pub fn emit(&self, emit: Arc<crate::cluster::emitter::Emit>) {
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
