//! Per-shard figures. The shard counts in plain fields and publishes them here once per loop
//! turn, so no shared atomic is written per delivered message.

use crate::room::RoomKind;
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
    /// Closing connections reset because their peer did not take what it was owed in time.
    pub linger_resets: u64,
    /// TCP connections closed as they were accepted (their address held its cap).
    pub tcp_refused: u64,
    /// Publish batches this shard could not queue (it was behind) and took conflated.
    pub overflowed_batches: u64,
    /// Slow consumers dropped to keep all outbound queues together under their budget.
    pub outbound_budget_drops: u64,
    /// Times a client address's work left it in debt, so its connections paused.
    pub work_pauses: u64,
    /// Connections that never sent a request, closed to make room for a new one at the
    /// gateway's TCP connection cap.
    pub idle_evictions: u64,
    /// Connections closed for not completing a message within the handshake timeout.
    pub input_timeouts: u64,
    /// Times the shard was woken by a message for it (a publish it delivers, or a control
    /// message); batches it had nobody to deliver to wait for a turn it takes anyway.
    pub wakeups: u64,
    /// Messages compressed for permessage-deflate (once each, however many take them).
    pub compressions: u64,
    /// Frames sent to connections that negotiated permessage-deflate, in bytes as they would
    /// have been and as they went (only messages past the compression threshold).
    pub deflate_bytes_before: u64,
    pub deflate_bytes_after: u64,
}

#[derive(Debug, Default)]
pub struct ShardStats {
    pub gauges: ShardGauges,
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
    linger_resets: AtomicU64,
    tcp_refused: AtomicU64,
    overflowed_batches: AtomicU64,
    outbound_budget_drops: AtomicU64,
    work_pauses: AtomicU64,
    idle_evictions: AtomicU64,
    input_timeouts: AtomicU64,
    wakeups: AtomicU64,
    compressions: AtomicU64,
    deflate_bytes_before: AtomicU64,
    deflate_bytes_after: AtomicU64,
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
            protocol_errors,
            linger_resets,
            tcp_refused,
            overflowed_batches,
            outbound_budget_drops,
            work_pauses,
            idle_evictions,
            input_timeouts,
            wakeups,
            compressions,
            deflate_bytes_before,
            deflate_bytes_after
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

/// Upper bounds (seconds) of the fan-out latency buckets: from ingest to the end of the loop
/// turn that wrote the publish to every local member.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A shard-local histogram; published like the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Latency {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub sum_ns: u64,
    pub count: u64,
}

impl Latency {
    pub fn record(&mut self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum_ns += d.as_nanos() as u64;
        self.count += 1;
    }

    pub fn add(&mut self, other: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
    }
}

/// Gauges and the histogram a shard publishes beside its counters.
#[derive(Debug, Default)]
pub struct ShardGauges {
    subscriptions_by_kind: [AtomicU64; RoomKind::ALL.len()],
    outbound_queue_bytes: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
}

impl ShardGauges {
    pub fn store(&self, by_kind: [usize; RoomKind::ALL.len()], outbound: u64, latency: &Latency) {
        for (a, v) in self.subscriptions_by_kind.iter().zip(by_kind) {
            a.store(v as u64, Relaxed);
        }
        self.outbound_queue_bytes.store(outbound, Relaxed);
        for (a, v) in self.latency_buckets.iter().zip(latency.buckets) {
            a.store(v, Relaxed);
        }
        self.latency_sum_ns.store(latency.sum_ns, Relaxed);
        self.latency_count.store(latency.count, Relaxed);
    }

    pub fn subscriptions_by_kind(&self) -> [u64; RoomKind::ALL.len()] {
        std::array::from_fn(|i| self.subscriptions_by_kind[i].load(Relaxed))
    }

    pub fn outbound_queue_bytes(&self) -> u64 {
        self.outbound_queue_bytes.load(Relaxed)
    }

    pub fn latency(&self) -> Latency {
        Latency {
            buckets: std::array::from_fn(|i| self.latency_buckets[i].load(Relaxed)),
            sum_ns: self.latency_sum_ns.load(Relaxed),
            count: self.latency_count.load(Relaxed),
        }
    }
}
