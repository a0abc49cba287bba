//! Per-shard figures. The shard counts in plain fields and publishes them here once per loop
//! turn, so no shared atomic is written per delivered message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub websocket_connections: u64,
    pub polling_sessions: u64,
    pub tcp_connections: u64,
    pub subscriptions: u64,
    pub rooms: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub write_calls: u64,
    pub broadcasts_received: u64,
    pub slow_consumer_disconnects: u64,
    pub slow_consumer_drops: u64,
    pub handshakes: u64,
    pub handshakes_refused: u64,
    pub auth_failures: u64,
    pub protocol_errors: u64,
}

#[derive(Debug, Default)]
pub struct ShardStats {
    websocket_connections: AtomicU64,
    polling_sessions: AtomicU64,
    tcp_connections: AtomicU64,
    subscriptions: AtomicU64,
    rooms: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    write_calls: AtomicU64,
    broadcasts_received: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    slow_consumer_drops: AtomicU64,
    handshakes: AtomicU64,
    handshakes_refused: AtomicU64,
    auth_failures: AtomicU64,
    protocol_errors: AtomicU64,
}

macro_rules! fields {
    ($m:ident) => {
        $m!(
            websocket_connections,
            polling_sessions,
            tcp_connections,
            subscriptions,
            rooms,
            messages_out,
            bytes_out,
            write_calls,
            broadcasts_received,
            slow_consumer_disconnects,
            slow_consumer_drops,
            handshakes,
            handshakes_refused,
            auth_failures,
            protocol_errors
        )
    };
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        macro_rules! add { ($($f:ident),*) => { $( self.$f += other.$f; )* } }
        fields!(add);
    }
}

impl ShardStats {
    pub fn store(&self, c: &Counters) {
        macro_rules! store { ($($f:ident),*) => { $( self.$f.store(c.$f, Relaxed); )* } }
        fields!(store);
    }

    pub fn load(&self) -> Counters {
        macro_rules! load { ($($f:ident),*) => { Counters { $( $f: self.$f.load(Relaxed), )* } } }
        fields!(load)
    }
}
