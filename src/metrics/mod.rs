//! `GET /metrics`: the Prometheus text exposition, through `prometheus-client`. Everything is
//! read at scrape time from the figures shards publish once per loop turn, so counting adds no
//! shared write per delivered message.

mod process;

use crate::cluster::emitter::EmitterCounters;
use crate::ingest::Ingest;
use crate::room::RoomKind;
use crate::shard::{Counters, Latency, ShardStats, Shared, LATENCY_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

struct GatewayCollector {
    stats: Vec<Arc<ShardStats>>,
    shared: Arc<Shared>,
    ingest: Arc<Ingest>,
    emitter: Arc<EmitterCounters>,
}

impl std::fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCollector")
            .field("shards", &self.stats.len())
            .finish()
    }
}

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, M)>,
) -> Result<(), Error> {
    let Some(first) = series.first() else {
        return Ok(());
    };
    let mut f = enc.encode_descriptor(name, help, None, first.1.metric_type())?;
    for (labels, metric) in &series {
        if labels.is_empty() {
            metric.encode(f)?;
            return Ok(());
        }
        metric.encode(f.encode_family(labels)?)?;
    }
    Ok(())
}

fn per_shard<M: EncodeMetric>(
    counters: &[Counters],
    f: impl Fn(&Counters) -> M,
) -> Vec<(Labels, M)> {
    counters
        .iter()
        .enumerate()
        .map(|(i, c)| (vec![("shard", i.to_string())], f(c)))
        .collect()
}

impl Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        let counters: Vec<Counters> = self.stats.iter().map(|s| s.load()).collect();
        let mut connections = Vec::new();
        for (i, c) in counters.iter().enumerate() {
            connections.push((
                vec![("shard", i.to_string()), ("transport", "websocket".into())],
                ConstGauge::new(c.websocket_connections as i64),
            ));
            connections.push((
                vec![("shard", i.to_string()), ("transport", "polling".into())],
                ConstGauge::new(c.polling_sessions as i64),
            ));
        }
        family(
            &mut enc,
            "gateway_connections",
            "Open sessions by shard and transport",
            connections,
        )?;
        family(
            &mut enc,
            "gateway_tcp_connections",
            "Open TCP connections by shard",
            per_shard(&counters, |c| ConstGauge::new(c.tcp_connections as i64)),
        )?;
        family(
            &mut enc,
            "gateway_handshakes",
            "Sessions opened by shard",
            per_shard(&counters, |c| ConstCounter::new(c.handshakes)),
        )?;
        family(
            &mut enc,
            "gateway_shard_wakeups",
            "Times a shard was woken for a message: a publish with members of its rooms, a control message, or a queue of batches it had been left to take at its next turn",
            per_shard(&counters, |c| ConstCounter::new(c.wakeups)),
        )?;
        let refused = self
            .shared
            .limits
            .refusals()
            .into_iter()
            .map(|(r, n)| {
                (
                    vec![("reason", r.reason().to_owned())],
                    ConstCounter::new(n),
                )
            })
            .collect();
        family(
            &mut enc,
            "gateway_handshakes_refused",
            "Handshakes and connects refused by a cap, by reason",
            refused,
        )?;
        let auth: Vec<_> = self
            .shared
            .auth_failures
            .lock()
            .iter()
            .map(|(r, n)| (vec![("reason", (*r).to_owned())], ConstCounter::new(*n)))
            .collect();
        family(
            &mut enc,
            "gateway_auth_failures",
            "Refused tokens by reason",
            auth,
        )?;

        let mut by_kind = [0u64; 6];
        let mut outbound = 0u64;
        let mut latency = Latency::default();
        for s in &self.stats {
            for (a, v) in by_kind.iter_mut().zip(s.gauges.subscriptions_by_kind()) {
                *a += v;
            }
            outbound += s.gauges.outbound_queue_bytes();
            latency.add(&s.gauges.latency());
        }
        let subs = RoomKind::ALL
            .iter()
            .zip(by_kind)
            .map(|(k, v)| {
                (
                    vec![("channel", k.as_str().to_owned())],
                    ConstGauge::new(v as i64),
                )
            })
            .collect();
        family(
            &mut enc,
            "gateway_subscriptions",
            "Room memberships by channel type",
            subs,
        )?;
        family(
            &mut enc,
            "gateway_messages_out",
            "Messages queued to clients by shard",
            per_shard(&counters, |c| ConstCounter::new(c.messages_out)),
        )?;
        family(
            &mut enc,
            "gateway_bytes_out",
            "Bytes written to clients by shard",
            per_shard(&counters, |c| ConstCounter::new(c.bytes_out)),
        )?;
        family(
            &mut enc,
            "gateway_compressions",
            "Messages compressed for permessage-deflate: once each, however many connections take them",
            per_shard(&counters, |c| ConstCounter::new(c.compressions)),
        )?;
        let before: u64 = counters.iter().map(|c| c.deflate_bytes_before).sum();
        let after: u64 = counters.iter().map(|c| c.deflate_bytes_after).sum();
        family(
            &mut enc,
            "gateway_deflate_bytes",
            "Frames sent compressed to connections that negotiated permessage-deflate, in bytes as they would have been (before) and as they went (after)",
            vec![
                (vec![("stage", "before".to_owned())], ConstCounter::new(before)),
                (vec![("stage", "after".to_owned())], ConstCounter::new(after)),
            ],
        )?;
        family(
            &mut enc,
            "gateway_write_calls",
            "writev calls by shard",
            per_shard(&counters, |c| ConstCounter::new(c.write_calls)),
        )?;
        family(
            &mut enc,
            "gateway_slow_consumer_drops",
            "Throttled or book updates dropped for slow clients, by shard",
            per_shard(&counters, |c| ConstCounter::new(c.slow_consumer_drops)),
        )?;
        family(
            &mut enc,
            "gateway_slow_consumer_disconnects",
            "Clients disconnected past the outbound hard limit, by shard",
            per_shard(&counters, |c| {
                ConstCounter::new(c.slow_consumer_disconnects)
            }),
        )?;
        family(
            &mut enc,
            "gateway_protocol_errors",
            "Connections closed for protocol errors, by shard",
            per_shard(&counters, |c| ConstCounter::new(c.protocol_errors)),
        )?;
        let mut total = Counters::default();
        for c in &counters {
            total.add(c);
        }
        let limit_actions = [
            ("tcp_refused", total.tcp_refused),
            ("idle_evicted", total.idle_evictions),
            ("input_timeout", total.input_timeouts),
            ("work_paused", total.work_pauses),
            ("linger_reset", total.linger_resets),
            ("outbound_budget_drop", total.outbound_budget_drops),
            ("publish_overflow", total.overflowed_batches),
        ]
        .into_iter()
        .map(|(k, n)| (vec![("action", k.to_owned())], ConstCounter::new(n)))
        .collect();
        family(
            &mut enc,
            "gateway_client_limit_actions",
            "What the per-client bounds did: connections refused, evicted, timed out or reset, addresses paused for their work, slow consumers dropped for the total budget, publish batches that overflowed a shard",
            limit_actions,
        )?;
        family(
            &mut enc,
            "gateway_input_buffered_bytes",
            "Bytes of client messages still arriving, held by all connections",
            vec![(
                Labels::new(),
                ConstGauge::new(self.shared.limits.input_buffered() as i64),
            )],
        )?;
        family(
            &mut enc,
            "gateway_outbound_queue_bytes",
            "Bytes queued for clients, all shards",
            vec![(Labels::new(), ConstGauge::new(outbound as i64))],
        )?;

        let events = self
            .ingest
            .events_by_type()
            .into_iter()
            .map(|(t, n)| (vec![("type", t)], ConstCounter::new(n)))
            .collect();
        family(
            &mut enc,
            "gateway_events_ingested",
            "Events accepted by ingest, by type",
            events,
        )?;
        let m = self.ingest.market_counters();
        family(
            &mut enc,
            "gateway_throttled_updates",
            "Ticker and kline updates held back by throttling",
            vec![(Labels::new(), ConstCounter::new(m.throttled))],
        )?;
        family(
            &mut enc,
            "gateway_conflated_updates",
            "Order book deltas merged by conflation",
            vec![(Labels::new(), ConstCounter::new(m.conflated))],
        )?;
        family(
            &mut enc,
            "gateway_orderbook_resyncs",
            "Order book snapshots sent for a reset or a gap",
            vec![(Labels::new(), ConstCounter::new(m.resyncs))],
        )?;
        family(
            &mut enc,
            "gateway_broadcasts_encoded",
            "Envelopes encoded (one per publish, whatever the subscribers)",
            vec![(Labels::new(), ConstCounter::new(self.ingest.encodes()))],
        )?;
        family(
            &mut enc,
            "gateway_views_open",
            "Rooms at a subscription's own depth or speed, computed while subscribed to",
            vec![(
                Labels::new(),
                ConstGauge::new(self.shared.demand.open_count() as i64),
            )],
        )?;

        if let Some(r) = &self.shared.recovery {
            let c = &r.counters;
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
            family(
                &mut enc,
                "gateway_recovery_attempts",
                "Reconnections presenting a recovery session, by outcome (refused: unknown, expired, another user's, or older than the replay log)",
                vec![
                    (vec![("outcome", "recovered".into())], ConstCounter::new(load(&c.recovered))),
                    (vec![("outcome", "refused".into())], ConstCounter::new(load(&c.refused))),
                ],
            )?;
            family(
                &mut enc,
                "gateway_recovery_replayed_events",
                "Missed lossless events sent to recovered sockets",
                vec![(Labels::new(), ConstCounter::new(load(&c.replayed_events)))],
            )?;
            let log = r.log();
            family(
                &mut enc,
                "gateway_recovery_log_events",
                "Lossless events held for recovery replays",
                vec![(Labels::new(), ConstGauge::new(log.len() as i64))],
            )?;
            family(
                &mut enc,
                "gateway_recovery_log_bytes",
                "Memory the recovery log holds: frames, their blocks and its indexes",
                vec![(Labels::new(), ConstGauge::new(log.held_bytes() as i64))],
            )?;
        }
        let em = &self.emitter;
        family(
            &mut enc,
            "gateway_emitter_packets",
            "socket.io Redis emitter packets, by outcome",
            vec![
                (
                    vec![("outcome", "delivered".into())],
                    ConstCounter::new(em.delivered.load(Relaxed)),
                ),
                (
                    vec![("outcome", "refused".into())],
                    ConstCounter::new(em.refused.load(Relaxed)),
                ),
            ],
        )?;

        let mut f = enc.encode_descriptor(
            "gateway_fanout_latency_seconds",
            "From ingest to the end of the loop turn that wrote a publish to every local member, per shard",
            None,
            MetricType::Histogram,
        )?;
        // Per-bucket counts; the encoder makes them cumulative.
        let within: u64 = latency.buckets.iter().sum();
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .zip(latency.buckets)
            .chain(std::iter::once((f64::MAX, latency.count - within)))
            .collect();
        f.encode_histogram::<Labels>(latency.sum_ns as f64 / 1e9, latency.count, &buckets, None)?;

        process::encode(&mut enc)
    }
}

/// The registry served at `/metrics`.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(
        stats: Vec<Arc<ShardStats>>,
        shared: Arc<Shared>,
        ingest: Arc<Ingest>,
        emitter: Arc<EmitterCounters>,
    ) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(GatewayCollector {
            stats,
            shared,
            ingest,
            emitter,
        }));
        Metrics { registry }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
