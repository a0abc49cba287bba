//! The scenarios: fanout, connect, capacity, mixed, overload.

use crate::cli::*;
use crate::harness::{Harness, OpenResult, WindowResult};
use crate::hist;
use crate::plan::*;
use crate::publish::*;
use crate::report::*;
use crate::sys::{self, ProcSample};
use crate::worker::now_us;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn workers_for(common: &Common, clients: u64) -> usize {
    common
        .workers
        .unwrap_or_else(|| ((clients as usize).div_ceil(15_000)).max(2))
        .clamp(1, 64)
}

/// A step's figures measured over window `w`: its deliveries, latency and the resources the
/// server and the clients used (the caller sets what the step was and its verdict).
pub(crate) fn measured_step(h: &Harness, w: &WindowResult, latency: hist::Summary) -> Step {
    let deliveries = w.deliveries();
    Step {
        clients: h.connected(),
        measured_s: w.secs,
        deliveries_per_s: deliveries as f64 / w.secs,
        latency,
        server_cpu_pct: w.server_cpu_us.map(|c| c as f64 / (w.secs * 1e6) * 100.0),
        server_cpu_us_per_delivery: w
            .server_cpu_us
            .filter(|_| deliveries > 0)
            .map(|c| c as f64 / deliveries as f64),
        server_rss_mb: mb(h.server_sample()),
        client_cpu_pct: w.client_cpu_us as f64 / (w.secs * 1e6) * 100.0,
        machine_cpu_pct: w.machine_busy_pct,
        ..Step::default()
    }
}

pub(crate) fn mb(s: Option<ProcSample>) -> Option<f64> {
    s.map(|s| s.rss_bytes as f64 / 1048576.0)
}

pub(crate) fn trades_sub(symbols: &[String], per_client: usize) -> SubTemplate {
    SubTemplate {
        event: "subscribe".into(),
        channel: "trades".into(),
        symbols: symbols.to_vec(),
        per_client,
        interval: None,
        stream_base: Some(0),
        per_user_stream: false,
    }
}

fn msgs_out(h: &Harness) -> Option<u64> {
    h.gateway_stats
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|v| v["total"]["messages_out"].as_u64())
}

/// Everything the common report needs from a run.
pub(crate) struct Parts {
    pub requested: u64,
    pub transport: String,
    pub open: OpenResult,
    pub window: Option<WindowResult>,
    pub finals: FinalReport,
    pub publish: Option<PublishSummary>,
    pub base: Option<ProcSample>,
    pub connected: Option<ProcSample>,
    pub end: Option<ProcSample>,
    pub msgs_out: Option<u64>,
    pub latency_kinds: Vec<usize>,
    /// Seconds of publishing, for rates (the window also holds the drain).
    pub rate_secs: Option<f64>,
}

pub(crate) fn build(h: &Harness, scenario: &str, config: serde_json::Value, p: Parts) -> RunReport {
    let mut r = RunReport {
        tool: "loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: scenario.into(),
        started_unix: now_us() / 1_000_000 - h.start.elapsed().as_secs(),
        wall_s: h.start.elapsed().as_secs_f64(),
        server: h.server_info.clone(),
        config,
        ..Default::default()
    };
    let f = &p.finals;
    r.connections = Connections {
        requested: p.requested,
        transport: p.transport.clone(),
        connected: p.open.ok,
        failed: h.failed(),
        first_error: p.open.first_error.clone(),
        dropped: h.dropped(),
        drop_reasons: f.drop_reasons.clone(),
        alive_at_end: f.alive,
        ramp_s: p.open.secs,
        connect_rate_per_s: p.open.ok as f64 / p.open.secs.max(1e-3),
        handshake: hist::summary(h.handshake()),
    };
    r.publish = p.publish.clone();
    let cr = &mut r.client_resources;
    cr.workers = h.worker_count();
    // Workers on other machines choose their own addresses.
    cr.source_addrs = if h.common.worker_at.is_empty() {
        h.common.source_addrs
    } else {
        0
    };
    cr.cpus = sys::ncpus();
    cr.lag_max_ms = h.cum_lag_ms();
    if let Some(w) = &p.window {
        cr.cpu_pct_avg = w.client_cpu_us as f64 / (w.secs * 1e6) * 100.0;
        cr.worker_cpu_pct = w.worker_cpu_pct.clone();
        cr.machine_cpu_pct_avg = w.machine_busy_pct;
        let all = w.all_latency(&p.latency_kinds);
        let (gaps, dups, book_gaps, resyncs, replays, bytes) = h.cum_counters();
        let _ = gaps;
        let mut by_kind = BTreeMap::new();
        for (k, name) in KINDS.iter().enumerate() {
            if w.received[k] > 0 || f.expected_by_kind.contains_key(*name) {
                by_kind.insert(
                    name.to_string(),
                    KindStats {
                        received: w.received[k],
                        latency: hist::summary(&w.lat[k]),
                        expected: f.expected_by_kind.get(*name).copied(),
                        missing: f.missing_by_kind.get(*name).copied(),
                    },
                );
            }
        }
        let mut pct = Vec::new();
        if !all.is_empty() {
            for p in [
                0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999,
            ] {
                pct.push((p, all.value_at_quantile(p / 100.0) as f64 / 1000.0));
            }
            pct.push((100.0 - 1e-4, all.max() as f64 / 1000.0));
        }
        r.delivery = Some(Delivery {
            received: w.deliveries(),
            per_s: w.deliveries() as f64 / p.rate_secs.unwrap_or(w.secs).max(1e-3),
            expected: f.expected,
            missing: f.missing,
            loss_ratio: if f.expected > 0 {
                f.missing as f64 / f.expected as f64
            } else {
                0.0
            },
            duplicates: dups,
            clients_with_loss: f.clients_with_loss,
            latency: hist::summary(&all),
            by_kind,
            book_gaps,
            book_resyncs: resyncs,
            replays,
            bytes,
            errors: h.cum_errors(),
            percentiles: pct,
        });
        let s = &mut r.server_resources;
        if let Some(cpu) = w.server_cpu_us {
            s.cpu_pct_avg = Some(cpu as f64 / (w.secs * 1e6) * 100.0); // over the whole window
            if w.deliveries() > 0 {
                s.cpu_us_per_delivery = Some(cpu as f64 / w.deliveries() as f64);
            }
        }
    }
    let s = &mut r.server_resources;
    s.rss_base_mb = mb(p.base);
    s.rss_connected_mb = mb(p.connected);
    s.rss_end_mb = mb(p.end);
    s.rss_peak_mb = (h.peak_rss > 0).then(|| h.peak_rss as f64 / 1048576.0);
    s.threads = p.end.map(|e| e.threads);
    if let (Some(b), Some(c)) = (p.base, p.connected) {
        if p.open.ok > 0 {
            s.rss_per_connection_kib =
                Some((c.rss_bytes as f64 - b.rss_bytes as f64) / p.open.ok as f64 / 1024.0);
        }
    }
    s.server_messages_out = p.msgs_out;
    r.gateway_stats = h.gateway_stats.lock().unwrap().clone();
    r.warnings = h.warnings.clone();
    r.notes = h.notes.clone();
    if p.base.is_none() && p.connected.is_none() && p.end.is_none() {
        r.notes.push(
            "the server's CPU and memory were not measured: give --server-pid, or a server whose --metrics-url answers"
                .into(),
        );
    }
    if r.publish.as_ref().is_some_and(|p| p.errors > 0) {
        r.notes
            .push("events of failed publish requests count as missing in the loss figures".into());
    }
    bottleneck_warnings(&mut r, h, p.window.as_ref());
    r.timeline = h.timeline.clone();
    r
}

fn bottleneck_warnings(r: &mut RunReport, _h: &Harness, w: Option<&WindowResult>) {
    let Some(w) = w else { return };
    let cpus = sys::ncpus();
    for (i, p) in w.worker_cpu_pct.iter().enumerate() {
        if *p > 85.0 {
            r.warnings.push(format!(
                "client worker {i} used {p:.0}% of a core (one thread each): the client may be the bottleneck; add --workers (the machine has {cpus} cores)"
            ));
        }
    }
    if let Some(m) = w.machine_busy_pct {
        if m > 90.0 {
            let srv = r.server_resources.cpu_pct_avg.unwrap_or(0.0);
            let cli = r.client_resources.cpu_pct_avg;
            let other = (m * cpus as f64 - srv - cli).max(0.0);
            let who = if other > srv.max(cli) {
                "other processes on the machine took most of it, so these figures are not a clean measurement; rerun on a quiet machine"
            } else if cli > srv {
                "the client used more CPU than the server: the client is likely the bottleneck, and latency includes CPU contention"
            } else {
                "the server and the client compete for the cores: latency includes CPU contention"
            };
            r.warnings.push(format!(
                "the machine's {cpus} cores were {m:.0}% busy (server {srv:.0}%, client {cli:.0}%, other processes {other:.0}%, in % of one core): {who}"
            ));
        }
    }
    if r.client_resources.lag_max_ms > 50.0 {
        r.warnings.push(format!(
            "a client event loop stalled for up to {:.0} ms: latency figures include the client's own delay",
            r.client_resources.lag_max_ms
        ));
    }
    if let Some(p) = &r.publish {
        if p.target_rate_per_s > 0.0 && p.achieved_rate_per_s < 0.95 * p.target_rate_per_s - 1.0 {
            r.warnings.push(format!(
                "publishing reached {:.0}/s of the {:.0}/s asked (publish hook too slow, or CPU saturated)",
                p.achieved_rate_per_s, p.target_rate_per_s
            ));
        }
        if p.errors > 0 {
            r.warnings.push(format!(
                "{} publish requests failed: {}",
                p.errors,
                p.first_error.clone().unwrap_or_default()
            ));
        }
    }
    if r.connections.failed > 0 {
        let e = r.connections.first_error.clone().unwrap_or_default();
        let hint = if e.contains("429") || e.contains("503") {
            " (the server refuses handshakes past a per-address or total limit: raise its limits — maven-gateway: --max-connections-per-ip, --handshake-rate-per-ip, --max-connections — or spread clients over more --source-addrs)"
        } else if e.contains("Address not available") || e.contains("Cannot assign") {
            " (out of local ports: use more --source-addrs)"
        } else if e.contains("Too many open files") {
            " (descriptor limit: use more --workers)"
        } else {
            ""
        };
        r.warnings.push(format!(
            "{} clients failed to connect: {e}{hint}",
            r.connections.failed
        ));
    }
    if r.connections.dropped > 0 {
        r.warnings.push(format!(
            "{} clients were disconnected: {:?}",
            r.connections.dropped, r.connections.drop_reasons
        ));
    }
}

pub(crate) fn publish_summary(
    hook: &Hook,
    stats: &PubStats,
    target: f64,
    secs: f64,
) -> PublishSummary {
    use std::sync::atomic::Ordering::Relaxed;
    let sent = stats.sent.load(Relaxed);
    PublishSummary {
        hook: hook.describe(),
        sent,
        target_rate_per_s: target,
        achieved_rate_per_s: sent as f64 / secs.max(1e-3),
        errors: stats.errors.load(Relaxed),
        first_error: stats.first_error.lock().unwrap().clone(),
        request_latency: stats
            .req_hist
            .lock()
            .unwrap()
            .as_ref()
            .map(hist::summary)
            .unwrap_or_default(),
    }
}

fn fail_if_none_connected(open: &OpenResult) -> Result<(), String> {
    if open.ok == 0 {
        return Err(format!(
            "no client could connect: {}",
            open.first_error
                .clone()
                .unwrap_or_else(|| "unknown error".into())
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Clients subscribed to trades rooms, ramped up and settled: where `fanout` and `overload`
/// start publishing.
struct TradeSubscribers {
    h: Harness,
    hook: Hook,
    base: Option<ProcSample>,
    open: OpenResult,
    connected: Option<ProcSample>,
}

impl TradeSubscribers {
    /// `clients` over `rooms` trades rooms (client i joins room i % rooms), ramped at
    /// `ramp_rate`, for a scenario that publishes at `rate` for `duration` seconds and needs
    /// `margin` more seconds besides the ramp and the drain.
    async fn open(
        common: &Common,
        scenario: &str,
        (clients, rooms, ramp_rate): (u64, usize, f64),
        transport: Transport,
        (rate, duration, margin): (f64, f64, f64),
    ) -> Result<TradeSubscribers, String> {
        check_bounds(clients, rate, duration)?;
        if rooms == 0 || rooms > 10_000 {
            return Err("--rooms must be 1..10000".into());
        }
        let budget = Duration::from_secs_f64(
            clients as f64 / ramp_rate.max(1.0) + duration + common.drain_secs + margin,
        );
        let mut h = Harness::new(common.clone(), scenario, budget).await?;
        let hook = h.require_hook()?;
        h.start_workers(workers_for(common, clients)).await?;
        let base = h.server_sample();
        let symbols: Vec<String> = (0..rooms).map(symbol).collect();
        let plan = Plan {
            transport,
            subs: vec![trades_sub(&symbols, 1)],
            auth: None,
            ack: !common.no_ack,
            strict: false,
        };
        h.phase = "ramp".into();
        let open = h.open(&plan, clients, ramp_rate).await?;
        fail_if_none_connected(&open)?;
        h.phase = "hold".into();
        h.run_for(Duration::from_millis(1500)).await;
        let connected = h.server_sample();
        Ok(TradeSubscribers {
            h,
            hook,
            base,
            open,
            connected,
        })
    }
}

pub async fn fanout(a: FanoutArgs) -> Result<(RunReport, Harness), String> {
    let TradeSubscribers {
        mut h,
        hook,
        base,
        open,
        connected,
    } = TradeSubscribers::open(
        &a.common,
        "fanout",
        (a.clients, a.rooms, a.ramp_rate),
        a.transport,
        (a.rate, a.duration, 30.0),
    )
    .await?;
    h.phase = "publish".into();
    let m0 = msgs_out(&h);
    h.begin_window("measure");
    let publisher = Publisher::start(
        hook.clone(),
        a.rate,
        Box::new(TradeSource::new(a.rooms, a.payload_bytes)),
    );
    h.publishers.push(publisher.stats.clone());
    let t = Instant::now();
    h.run_for(Duration::from_secs_f64(a.duration)).await;
    let stats = publisher.stop().await;
    let pub_secs = t.elapsed().as_secs_f64();
    h.phase = "drain".into();
    h.run_for(Duration::from_secs_f64(a.common.drain_secs))
        .await;
    let window = h.end_window("measure");
    let last = stats.seqs.lock().unwrap().clone();
    let finals = h
        .finals(
            last,
            stats.started_us.load(std::sync::atomic::Ordering::Relaxed),
        )
        .await;
    let end = h.server_sample();
    let m1 = msgs_out(&h);
    h.shutdown().await;
    let publish = publish_summary(&hook, &stats, a.rate, pub_secs);
    let parts = Parts {
        requested: a.clients,
        transport: format!("{:?}", a.transport).to_lowercase(),
        open,
        window,
        finals,
        publish: Some(publish),
        base,
        connected,
        end,
        msgs_out: m0.zip(m1).map(|(a, b)| b.saturating_sub(a)),
        latency_kinds: (0..KIND_COUNT).collect(),
        rate_secs: Some(pub_secs),
    };
    let r = build(&h, "fanout", serde_json::to_value(&a).unwrap(), parts);
    Ok((r, h))
}

/// What the overload probe saw: how long `/health` and a new session's handshake took while
/// the server was flooded, and how many did not answer.
#[derive(Default)]
struct ProbeSeen {
    health_ms: Vec<f64>,
    handshake_ms: Vec<f64>,
    failures: u64,
}

async fn probe(target: std::net::SocketAddr, every: Duration, stop: Arc<AtomicBool>) -> ProbeSeen {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let mut seen = ProbeSeen::default();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match client.get(format!("http://{target}/health")).send().await {
            Ok(r) if r.status().is_success() => {
                seen.health_ms.push(t.elapsed().as_secs_f64() * 1e3)
            }
            _ => seen.failures += 1,
        }
        let t = Instant::now();
        let open = client
            .get(format!(
                "http://{target}/socket.io/?EIO=4&transport=polling"
            ))
            .send()
            .await;
        match open {
            Ok(r) if r.status().is_success() => {
                seen.handshake_ms.push(t.elapsed().as_secs_f64() * 1e3);
                // Close the session again: `0{"sid":"..."}`.
                let body = r.text().await.unwrap_or_default();
                if let Some(sid) = body.split('"').nth(3) {
                    let _ = client
                        .post(format!(
                            "http://{target}/socket.io/?EIO=4&transport=polling&sid={sid}"
                        ))
                        .body("1")
                        .send()
                        .await;
                }
            }
            _ => seen.failures += 1,
        }
        tokio::time::sleep(every).await;
    }
    seen
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

pub async fn overload(a: OverloadArgs) -> Result<(RunReport, Harness), String> {
    let TradeSubscribers {
        mut h,
        hook,
        base,
        open,
        connected,
    } = TradeSubscribers::open(
        &a.common,
        "overload",
        (a.clients, a.rooms, a.ramp_rate),
        Transport::Websocket,
        (a.rate, a.duration, 60.0),
    )
    .await?;
    h.phase = "overload".into();
    let m0 = msgs_out(&h);
    h.begin_window("measure");
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(
        h.target,
        Duration::from_millis(a.probe_ms.max(10)),
        stop.clone(),
    ));
    let publisher = Publisher::start(
        hook.clone(),
        a.rate,
        Box::new(TradeSource::new(a.rooms, a.payload_bytes)),
    );
    h.publishers.push(publisher.stats.clone());
    let t = Instant::now();
    h.run_for(Duration::from_secs_f64(a.duration)).await;
    let stats = publisher.stop().await;
    let pub_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let seen = prober.await.unwrap_or_default();
    // Until what the server still holds is written (its clients caught up or told), within a
    // minute; a server without the gauge gets the usual drain time.
    h.phase = "drain".into();
    let until = Instant::now() + Duration::from_secs(60);
    h.run_for(Duration::from_secs_f64(a.common.drain_secs))
        .await;
    while Instant::now() < until {
        let queued = h
            .gateway_stats
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|v| v["outbound_queue_bytes"].as_u64());
        if queued.is_none_or(|q| q == 0) {
            break;
        }
        h.run_for(Duration::from_secs(1)).await;
    }
    let window = h.end_window("measure");
    let last = stats.seqs.lock().unwrap().clone();
    let finals = h
        .finals(
            last,
            stats.started_us.load(std::sync::atomic::Ordering::Relaxed),
        )
        .await;
    let end = h.server_sample();
    let m1 = msgs_out(&h);
    h.shutdown().await;
    let publish = publish_summary(&hook, &stats, a.rate, pub_secs);
    let untold = finals.clients_with_untold_loss;
    let told = finals.clients_with_loss - untold;
    let notes = vec![
        format!(
            "overload: /health answered {} times, worst {:.1} ms; new sessions opened {} times, worst {:.1} ms; {} probes failed",
            seen.health_ms.len(),
            worst(&seen.health_ms),
            seen.handshake_ms.len(),
            worst(&seen.handshake_ms),
            seen.failures
        ),
        format!(
            "overload: {} clients caught up, {} fell behind and were told (SLOW_CONSUMER, OVERLOADED or a close), {} lost messages untold",
            finals.clients.saturating_sub(finals.clients_with_loss),
            told,
            untold
        ),
    ];
    let parts = Parts {
        requested: a.clients,
        transport: "websocket".into(),
        open,
        window,
        finals,
        publish: Some(publish),
        base,
        connected,
        end,
        msgs_out: m0.zip(m1).map(|(a, b)| b.saturating_sub(a)),
        latency_kinds: (0..KIND_COUNT).collect(),
        rate_secs: Some(pub_secs),
    };
    let mut r = build(&h, "overload", serde_json::to_value(&a).unwrap(), parts);
    r.notes.extend(notes);
    if untold > 0 || seen.failures > 0 {
        r.warnings.push(format!(
            "overload: {untold} clients lost messages untold and {} probes failed",
            seen.failures
        ));
    }
    Ok((r, h))
}

/// Probe broadcasts to every `connect` client.
struct ProbeSource;

impl Source for ProbeSource {
    fn make(&mut self, ts: u64, seqs: &mut Seqs) -> Event {
        let stream = PROBE_STREAM_BASE;
        let seq = seqs.take(stream);
        // A manual broadcast (`{room, event, data}`) of event `probe` to the room every
        // client joined.
        Event {
            kind: EventKind::Manual,
            symbol: "LTPROBE".into(),
            room: "trades:LTPROBE".into(),
            event: "probe".into(),
            data: format!(r#"{{"lt_ts":{ts},"lt_seq":{seq},"lt_s":{stream}}}"#),
        }
    }
}

pub async fn connect(a: ConnectArgs) -> Result<(RunReport, Harness), String> {
    check_bounds(a.clients, a.probe_rate, a.hold)?;
    let budget = Duration::from_secs_f64(
        a.clients as f64 / a.ramp_rate.max(1.0) + a.hold + a.common.drain_secs + 30.0,
    );
    let mut h = Harness::new(a.common.clone(), "connect", budget).await?;
    let probe = a.probe_rate > 0.0 && h.hook.is_some();
    if !probe {
        h.notes.push("no probe broadcasts (no publish hook or --probe-rate 0): alive means still connected at the end".into());
    }
    h.start_workers(workers_for(&a.common, a.clients)).await?;
    let base = h.server_sample();
    let subs = if probe {
        vec![SubTemplate {
            event: "subscribe".into(),
            channel: "trades".into(),
            symbols: vec!["LTPROBE".into()],
            per_client: 1,
            interval: None,
            stream_base: Some(PROBE_STREAM_BASE),
            per_user_stream: false,
        }]
    } else {
        vec![]
    };
    let plan = Plan {
        transport: a.transport,
        subs,
        auth: None,
        ack: !a.common.no_ack,
        strict: false,
    };
    h.phase = "ramp".into();
    h.begin_window("measure");
    let open = h.open(&plan, a.clients, a.ramp_rate).await?;
    fail_if_none_connected(&open)?;
    h.phase = "hold".into();
    h.run_for(Duration::from_millis(1000)).await;
    let connected = h.server_sample();
    let mut publish = None;
    let mut last = BTreeMap::new();
    let mut started = 0;
    if probe {
        let hook = h.hook.clone().unwrap();
        let publisher = Publisher::start(hook.clone(), a.probe_rate, Box::new(ProbeSource));
        h.publishers.push(publisher.stats.clone());
        let t = Instant::now();
        h.run_for(Duration::from_secs_f64(a.hold.max(1.0 / a.probe_rate)))
            .await;
        let stats = publisher.stop().await;
        publish = Some(publish_summary(
            &hook,
            &stats,
            a.probe_rate,
            t.elapsed().as_secs_f64(),
        ));
        last = stats.seqs.lock().unwrap().clone();
        started = stats.started_us.load(std::sync::atomic::Ordering::Relaxed);
        h.phase = "drain".into();
        h.run_for(Duration::from_secs_f64(a.common.drain_secs))
            .await;
    } else {
        h.run_for(Duration::from_secs_f64(a.hold)).await;
    }
    let window = h.end_window("measure");
    let finals = h.finals(last, started).await;
    let end = h.server_sample();
    h.shutdown().await;
    let parts = Parts {
        requested: a.clients,
        transport: format!("{:?}", a.transport).to_lowercase(),
        open,
        window,
        finals,
        publish,
        base,
        connected,
        end,
        msgs_out: None,
        latency_kinds: (0..KIND_COUNT).collect(),
        rate_secs: None,
    };
    let mut r = build(&h, "connect", serde_json::to_value(&a).unwrap(), parts);
    if r.connections.alive_at_end < r.connections.requested {
        r.warnings.push(format!(
            "{} of {} clients were not alive at the end",
            r.connections.requested - r.connections.alive_at_end,
            r.connections.requested
        ));
    }
    Ok((r, h))
}

// ---------------------------------------------------------------------------------------------

/// The planning figures, before any load: a projection from nonsense is worse than none.
fn check_plan(a: &CapacityArgs) -> Result<(), String> {
    let positive = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(format!("{name} must be a positive number, not {v}"))
        }
    };
    if let Some(r) = a.plan_rate {
        positive("--plan-rate", r)?;
    }
    if a.plan_clients == Some(0) {
        return Err("--plan-clients must be at least 1".into());
    }
    if a.plan_rooms == Some(0) {
        return Err("--plan-rooms must be at least 1".into());
    }
    if let Some(c) = a.instance_cores {
        positive("--instance-cores", c)?;
    }
    positive("--instance-memory-mib", a.instance_memory_mib)?;
    positive("--headroom", a.headroom)?;
    if a.headroom > 1.0 {
        return Err(format!(
            "--headroom is a share of the instance, at most 1, not {}",
            a.headroom
        ));
    }
    Ok(())
}

pub async fn capacity(a: CapacityArgs) -> Result<(RunReport, Harness), String> {
    if a.plan_clients.is_some() {
        check_plan(&a)?;
    }
    let max_clients = match a.vary {
        Vary::Clients => a.max as u64,
        Vary::Rate => a.clients,
    };
    check_bounds(
        max_clients,
        if a.vary == Vary::Rate { a.max } else { a.rate },
        a.max_secs,
    )?;
    if a.step <= 0.0 || a.start <= 0.0 {
        return Err("--start and --step must be positive".into());
    }
    let mut h = Harness::new(
        a.common.clone(),
        "capacity",
        Duration::from_secs_f64(a.max_secs + 20.0),
    )
    .await?;
    let hook = h.require_hook()?;
    h.start_workers(workers_for(&a.common, max_clients)).await?;
    let t_start = Instant::now();
    let base = h.server_sample();
    let symbols: Vec<String> = (0..a.rooms.max(1)).map(symbol).collect();
    let plan = Plan {
        transport: a.transport,
        subs: vec![trades_sub(&symbols, 1)],
        auth: None,
        ack: !a.common.no_ack,
        strict: false,
    };
    let mut cap = Capacity {
        vary: format!("{:?}", a.vary).to_lowercase(),
        slo_p99_ms: a.slo_p99_ms,
        slo_loss: a.slo_loss,
        ..Default::default()
    };
    let mut clients = 0u64;
    let mut total_open = OpenResult {
        ok: 0,
        failed: 0,
        first_error: None,
        secs: 0.0,
    };
    let mut publisher: Option<Publisher> = None;
    let mut connected_sample = None;
    let mut pub_t0 = None;
    let mut load = a.start;
    let mut step = 0;
    let mut dropped_before = 0;
    loop {
        step += 1;
        let (want_clients, rate) = match a.vary {
            Vary::Clients => (load.round() as u64, a.rate),
            Vary::Rate => (a.clients, load),
        };
        // Time check: ramp + warm-up + measure must fit.
        let ramp = want_clients.saturating_sub(clients) as f64 / a.ramp_rate.max(1.0);
        if t_start.elapsed().as_secs_f64()
            + ramp
            + a.warmup_secs
            + a.step_secs
            + a.common.drain_secs
            + 3.0
            > a.max_secs
        {
            h.notes.push(format!(
                "stopped before step {step} (load {load}): --max-secs {} would be exceeded",
                a.max_secs
            ));
            break;
        }
        h.phase = format!("step{step}");
        if want_clients > clients {
            let o = h.open(&plan, want_clients - clients, a.ramp_rate).await?;
            total_open.ok += o.ok;
            total_open.failed += o.failed;
            total_open.secs += o.secs;
            if total_open.first_error.is_none() {
                total_open.first_error = o.first_error;
            }
            clients = want_clients;
            if total_open.ok == 0 {
                return Err(format!(
                    "no client could connect: {}",
                    total_open.first_error.unwrap_or_default()
                ));
            }
        }
        match &publisher {
            None => {
                h.begin_window("all");
                let p = Publisher::start(
                    hook.clone(),
                    rate,
                    Box::new(TradeSource::new(a.rooms.max(1), a.payload_bytes)),
                );
                h.publishers.push(p.stats.clone());
                publisher = Some(p);
                pub_t0 = Some(Instant::now());
            }
            Some(p) => p.set_rate(rate),
        }
        h.run_for(Duration::from_secs_f64(a.warmup_secs)).await;
        let name = format!("step{step}");
        h.begin_window(&name);
        h.run_for(Duration::from_secs_f64(a.step_secs)).await;
        let w = h.end_window(&name).unwrap();
        let lat = w.all_latency(&(0..KIND_COUNT).collect::<Vec<_>>());
        let s = hist::summary(&lat);
        let deliveries = w.deliveries();
        let dropped = h.dropped();
        let new_drops = dropped - dropped_before;
        dropped_before = dropped;
        let loss = if deliveries + w.gaps > 0 {
            w.gaps as f64 / (deliveries + w.gaps) as f64
        } else {
            0.0
        };
        let failed_conn = h.failed();
        let mut reasons = Vec::new();
        if s.count == 0 {
            reasons.push("no deliveries".to_string());
        }
        if s.p99_ms > a.slo_p99_ms {
            reasons.push(format!(
                "p99 {} ms > {}",
                hist::fmt_ms(s.p99_ms),
                a.slo_p99_ms
            ));
        }
        if loss > a.slo_loss {
            reasons.push(format!(
                "loss {:.4}% > {}%",
                loss * 100.0,
                a.slo_loss * 100.0
            ));
        }
        if new_drops as f64 > a.slo_loss * clients as f64 {
            reasons.push(format!("{new_drops} clients dropped"));
        }
        if failed_conn as f64 > a.slo_loss * clients as f64 {
            reasons.push(format!("{failed_conn} clients failed to connect"));
        }
        let held = reasons.is_empty();
        let st = Step {
            step,
            load,
            rate,
            expected_per_s: h.connected() as f64 * rate / a.rooms.max(1) as f64,
            loss_ratio: loss,
            dropped: new_drops,
            held,
            verdict: if held {
                "held".into()
            } else {
                format!("BROKE: {}", reasons.join(", "))
            },
            ..measured_step(&h, &w, s)
        };
        if !a.common.quiet {
            eprintln!("\nstep {step}: load {load} → {}", st.verdict);
        }
        if let Some(m) = w.machine_busy_pct {
            if m > 90.0 && !held {
                h.notes.push(format!(
                    "step {step} ran with the machine {m:.0}% busy (client {:.0}% of a core): the break may be the client's, not the server's",
                    st.client_cpu_pct
                ));
            }
        }
        connected_sample = h.server_sample();
        cap.steps.push(st);
        if held {
            cap.max_load_held = Some(load);
        } else {
            cap.broke_at = Some(load);
            break;
        }
        if step >= a.max_steps || load + a.step > a.max + 1e-9 {
            break;
        }
        load += a.step;
    }
    let unit = if a.vary == Vary::Clients {
        "clients"
    } else {
        "publishes/s"
    };
    let fixed = if a.vary == Vary::Clients {
        format!("{} publishes/s over {} rooms", a.rate, a.rooms)
    } else {
        format!("{} clients over {} rooms", a.clients, a.rooms)
    };
    cap.conclusion = match (cap.max_load_held, cap.broke_at) {
        (Some(m), Some(b)) => format!("largest load that held the SLO: {m} {unit} ({fixed}); broke at {b}"),
        (Some(m), None) => format!("held the SLO up to {m} {unit} ({fixed}), the largest load tried; raise --max to find the limit"),
        (None, Some(b)) => format!("the SLO broke at the first step ({b} {unit}); lower --start"),
        (None, None) => "no step completed".into(),
    };
    if let Some(clients) = a.plan_clients {
        let held = crate::projection::unit_costs(&cap.steps, mb(base));
        if held.is_none() {
            h.notes
                .push("no projection for --plan-clients: no step held the SLO".into());
        }
        cap.projection = held.map(|held| {
            crate::projection::project(
                held,
                crate::projection::Target {
                    clients,
                    publishes_per_s: a.plan_rate.unwrap_or(a.rate),
                    rooms: a.plan_rooms.unwrap_or(a.rooms),
                    cores: a.instance_cores.unwrap_or(sys::ncpus() as f64),
                    memory_mib: a.instance_memory_mib,
                    headroom: a.headroom,
                },
            )
        });
    }
    let mut publish = None;
    let mut last = BTreeMap::new();
    let mut started = 0;
    if let Some(p) = publisher {
        let stats = p.stop().await;
        publish = Some(publish_summary(
            &hook,
            &stats,
            a.rate,
            pub_t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0),
        ));
        last = stats.seqs.lock().unwrap().clone();
        started = stats.started_us.load(std::sync::atomic::Ordering::Relaxed);
    }
    h.phase = "drain".into();
    h.run_for(Duration::from_secs_f64(a.common.drain_secs))
        .await;
    let window = h.end_window("all");
    let finals = h.finals(last, started).await;
    let end = h.server_sample();
    h.shutdown().await;
    // The report's overall figures cover the last step that held (or the last step run).
    let parts = Parts {
        requested: clients,
        transport: format!("{:?}", a.transport).to_lowercase(),
        open: OpenResult {
            ok: h.connected(),
            ..total_open
        },
        window,
        finals,
        publish,
        base,
        connected: connected_sample,
        end,
        msgs_out: None,
        latency_kinds: (0..KIND_COUNT).collect(),
        rate_secs: None,
    };
    let mut r = build(&h, "capacity", serde_json::to_value(&a).unwrap(), parts);
    if let Some(p) = &mut r.publish {
        if a.vary == Vary::Rate {
            p.target_rate_per_s = 0.0; // varied
        }
    }
    r.capacity = Some(cap);
    Ok((r, h))
}

// ---------------------------------------------------------------------------------------------
// mixed

pub(crate) struct BookSource {
    symbols: Vec<String>,
    last: Vec<u64>,
    next: usize,
    rng: rand::rngs::SmallRng,
}

fn book_levels(side: i32) -> Vec<(String, String)> {
    (0..20)
        .map(|i| {
            let cents = if side > 0 { 10_000 - i } else { 10_001 + i };
            (
                format!("{}.{:02}", cents / 100, cents % 100),
                "1.000".to_string(),
            )
        })
        .collect()
}

fn levels_json(v: &[(String, String)]) -> String {
    let items: Vec<String> = v.iter().map(|(p, q)| format!(r#"["{p}","{q}"]"#)).collect();
    format!("[{}]", items.join(","))
}

impl BookSource {
    pub(crate) fn new(symbols: Vec<String>) -> Self {
        use rand::SeedableRng;
        let n = symbols.len();
        BookSource {
            symbols,
            last: vec![0; n],
            next: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(7),
        }
    }
    pub(crate) fn snapshots(&mut self, ts: u64) -> Vec<Event> {
        let bids = levels_json(&book_levels(1));
        let asks = levels_json(&book_levels(-1));
        (0..self.symbols.len())
            .map(|i| {
                self.last[i] = ts;
                let s = &self.symbols[i];
                Event {
                    kind: EventKind::Book,
                    symbol: s.clone(),
                    room: format!("orderbook:{s}"),
                    event: "orderbook.update".into(),
                    data: format!(
                        r#"{{"type":"snapshot","bids":{bids},"asks":{asks},"lastUpdateId":{ts}}}"#
                    ),
                }
            })
            .collect()
    }
}

impl Source for BookSource {
    fn make(&mut self, ts: u64, _seqs: &mut Seqs) -> Event {
        use rand::Rng;
        let i = self.next % self.symbols.len();
        self.next += 1;
        let first = self.last[i] + 1;
        let last = ts.max(first);
        self.last[i] = last;
        let lvl = self.rng.random_range(0..10);
        let qty = format!(
            "{}.{:03}",
            self.rng.random_range(0..5),
            self.rng.random_range(1..1000)
        );
        let side = book_levels(if self.rng.random_bool(0.5) { 1 } else { -1 });
        let change = format!(r#"[["{}","{qty}"]]"#, side[lvl].0);
        let (bids, asks) = if side[0].0.starts_with("100.00") {
            (change, "[]".into())
        } else {
            ("[]".into(), change)
        };
        let s = &self.symbols[i];
        Event {
            kind: EventKind::Book,
            symbol: s.clone(),
            room: format!("orderbook:{s}"),
            event: "orderbook.update".into(),
            data: format!(
                r#"{{"type":"delta","bids":{bids},"asks":{asks},"firstUpdateId":{first},"lastUpdateId":{last}}}"#
            ),
        }
    }
}

pub(crate) struct TickerSource {
    pub symbols: Vec<String>,
    pub next: usize,
}

impl Source for TickerSource {
    fn make(&mut self, ts: u64, _: &mut Seqs) -> Event {
        let i = self.next % self.symbols.len();
        self.next += 1;
        let s = &self.symbols[i];
        Event {
            kind: EventKind::Ticker,
            symbol: s.clone(),
            room: format!("ticker:{s}"),
            event: "ticker.update".into(),
            data: format!(
                r#"{{"symbol":"{s}","lastPrice":"100.{:02}","volume":"1000","lt_ts":{ts}}}"#,
                self.next % 100
            ),
        }
    }
}

struct KlineSource {
    symbols: Vec<String>,
    interval: String,
    next: usize,
}

impl Source for KlineSource {
    fn make(&mut self, ts: u64, _: &mut Seqs) -> Event {
        let i = self.next % self.symbols.len();
        self.next += 1;
        let s = &self.symbols[i];
        let open_time = ts / 60_000_000 * 60_000;
        Event {
            kind: EventKind::Kline {
                interval: self.interval.clone(),
            },
            symbol: s.clone(),
            room: format!("klines:{s}:{}", self.interval),
            event: "kline.update".into(),
            data: format!(
                r#"{{"symbol":"{s}","interval":"{}","openTime":{open_time},"open":"100","high":"101","low":"99","close":"100.5","volume":"10","closed":false,"lt_ts":{ts}}}"#,
                self.interval
            ),
        }
    }
}

pub(crate) struct PrivateSource {
    pub first_user: u64,
    pub users: u64,
    pub next: u64,
}

impl Source for PrivateSource {
    fn make(&mut self, ts: u64, seqs: &mut Seqs) -> Event {
        let u = self.first_user + self.next % self.users.max(1);
        self.next += 1;
        let stream = PRIVATE_STREAM_BASE + u as u32;
        let seq = seqs.take(stream);
        let user = format!("lt-user-{u}");
        Event {
            kind: EventKind::Private {
                ty: "order.updated".into(),
                user: user.clone(),
            },
            symbol: String::new(),
            room: format!("user:{user}:orders"),
            event: "order.updated".into(),
            data: format!(
                r#"{{"orderId":"o-{u}-{seq}","status":"NEW","symbol":"LT0000","lt_ts":{ts},"lt_seq":{seq},"lt_s":{stream}}}"#
            ),
        }
    }
}

pub async fn mixed(a: MixedArgs) -> Result<(RunReport, Harness), String> {
    let total = a.bots + a.browsers + a.private_users;
    let rates = a.trade_rate + a.book_rate + a.ticker_rate + a.kline_rate + a.private_rate;
    check_bounds(total, rates, a.duration)?;
    if a.symbols == 0 || a.symbols > 10_000 {
        return Err("--symbols must be 1..10000".into());
    }
    let budget = Duration::from_secs_f64(
        total as f64 / a.ramp_rate.max(1.0) + a.duration + a.common.drain_secs + 40.0,
    );
    // A spawned gateway gets the users' JWT secret (private channels need it).
    let mut env = Vec::new();
    if a.common.server_bin.is_some() && !a.common.server_args.iter().any(|x| x.starts_with("--jwt"))
    {
        env.push(("GATEWAY_JWT_SECRET".to_string(), a.jwt_secret.clone()));
    }
    let mut h = Harness::with_env(a.common.clone(), "mixed", budget, &env).await?;
    // Per-second latency: the unthrottled kinds (trades, book deltas, private events, best
    // bid and ask).
    h.timeline_kinds = vec![0, 1, 5, crate::plan::BOOK_TICKER];
    let hook = h.require_hook()?;
    h.start_workers(workers_for(&a.common, total)).await?;
    let base = h.server_sample();
    let symbols: Vec<String> = (0..a.symbols).map(symbol).collect();
    // Seed: book snapshots, one ticker and one candle per symbol.
    let mut books = BookSource::new(symbols.clone());
    let ts = now_us();
    let mut seed = books.snapshots(ts);
    let mut seqs = Seqs::default();
    let mut tk = TickerSource {
        symbols: symbols.clone(),
        next: 0,
    };
    let mut kl = KlineSource {
        symbols: symbols.clone(),
        interval: a.kline_interval.clone(),
        next: 0,
    };
    for _ in 0..symbols.len() {
        seed.push(tk.make(ts, &mut seqs));
        seed.push(kl.make(ts, &mut seqs));
    }
    publish_once(&hook, seed)
        .await
        .map_err(|e| format!("seeding books/tickers/klines: {e}"))?;

    let ack = !a.common.no_ack;
    let bots = Plan {
        transport: Transport::Websocket,
        subs: vec![
            SubTemplate {
                event: "subscribe".into(),
                channel: "orderbook".into(),
                symbols: symbols.clone(),
                per_client: a.bot_symbols.min(symbols.len()),
                interval: None,
                stream_base: None,
                per_user_stream: false,
            },
            trades_sub(&symbols, a.bot_symbols.min(symbols.len())),
            SubTemplate {
                event: "subscribe".into(),
                channel: "bookTicker".into(),
                symbols: symbols.clone(),
                per_client: a.bot_symbols.min(symbols.len()),
                interval: None,
                stream_base: None,
                per_user_stream: false,
            },
        ],
        auth: None,
        ack,
        strict: false,
    };
    let browsers = Plan {
        transport: Transport::Upgrade,
        subs: vec![
            SubTemplate {
                event: "subscribe".into(),
                channel: "ticker".into(),
                symbols: vec!["all".into()],
                per_client: 1,
                interval: None,
                stream_base: None,
                per_user_stream: false,
            },
            SubTemplate {
                event: "subscribe".into(),
                channel: "klines".into(),
                symbols: symbols.clone(),
                per_client: 1,
                interval: Some(a.kline_interval.clone()),
                stream_base: None,
                per_user_stream: false,
            },
        ],
        auth: None,
        ack,
        strict: false,
    };
    let private = Plan {
        transport: Transport::Websocket,
        subs: vec![SubTemplate {
            event: "subscribe.private".into(),
            channel: a.private_channel.clone(),
            symbols: vec![],
            per_client: 1,
            interval: None,
            stream_base: Some(PRIVATE_STREAM_BASE),
            per_user_stream: true,
        }],
        auth: Some(AuthRule {
            jwt_secret: a.jwt_secret.clone(),
            user_prefix: "lt-user-".into(),
        }),
        ack,
        strict: true,
    };
    h.phase = "ramp".into();
    let t_ramp = Instant::now();
    let mut open = OpenResult {
        ok: 0,
        failed: 0,
        first_error: None,
        secs: 0.0,
    };
    let add = |o: OpenResult, open: &mut OpenResult| {
        open.ok += o.ok;
        open.failed += o.failed;
        if open.first_error.is_none() {
            open.first_error = o.first_error;
        }
    };
    let o = h.open(&bots, a.bots, a.ramp_rate).await?;
    add(o, &mut open);
    let o = h.open(&browsers, a.browsers, a.ramp_rate).await?;
    add(o, &mut open);
    // Private channels: probe with one user; the rest only if the server accepts it.
    let mut private_users = None;
    if a.private_users > 0 {
        let first_user = h.next_client;
        let o = h.open(&private, 1, a.ramp_rate).await?;
        if o.ok == 1 {
            let o2 = h.open(&private, a.private_users - 1, a.ramp_rate).await?;
            add(o, &mut open);
            add(o2, &mut open);
            private_users = Some((first_user, a.private_users));
        } else {
            h.ignored_failures += 1;
            h.notes.push(format!(
                "private channels skipped: the server refused an authenticated `subscribe.private` ({}); the {} authenticated users were not run. They run once the server accepts JWTs in the CONNECT auth payload {{\"token\": ...}} (HS256, secret --jwt-secret, sub = lt-user-N)",
                o.first_error.unwrap_or_default(),
                a.private_users
            ));
        }
    }
    open.secs = t_ramp.elapsed().as_secs_f64();
    fail_if_none_connected(&open)?;
    h.phase = "hold".into();
    h.run_for(Duration::from_millis(1500)).await;
    let connected = h.server_sample();
    h.phase = "publish".into();
    let m0 = msgs_out(&h);
    h.begin_window("measure");
    let mut pubs: Vec<(Publisher, f64)> = Vec::new();
    let mut start = |src: Box<dyn Source>, rate: f64, h: &mut Harness| {
        if rate > 0.0 {
            let p = Publisher::start(hook.clone(), rate, src);
            h.publishers.push(p.stats.clone());
            pubs.push((p, rate));
        }
    };
    start(
        Box::new(TradeSource::new(a.symbols, 0)),
        a.trade_rate,
        &mut h,
    );
    start(Box::new(books), a.book_rate, &mut h);
    start(Box::new(tk), a.ticker_rate, &mut h);
    start(Box::new(kl), a.kline_rate, &mut h);
    if let Some((first_user, users)) = private_users {
        start(
            Box::new(PrivateSource {
                first_user,
                users,
                next: 0,
            }),
            a.private_rate,
            &mut h,
        );
    }
    let t = Instant::now();
    h.run_for(Duration::from_secs_f64(a.duration)).await;
    let mut last = BTreeMap::new();
    let mut started = u64::MAX;
    let mut sum = PublishSummary {
        hook: hook.describe(),
        ..Default::default()
    };
    let secs = t.elapsed().as_secs_f64();
    let mut req = hist::new_hist();
    for (p, rate) in pubs {
        let st = p.stop().await;
        let s = publish_summary(&hook, &st, rate, secs);
        sum.sent += s.sent;
        sum.target_rate_per_s += rate;
        sum.errors += s.errors;
        if sum.first_error.is_none() {
            sum.first_error = s.first_error;
        }
        if let Some(hh) = st.req_hist.lock().unwrap().as_ref() {
            hist::merge(&mut req, hh);
        }
        last.extend(st.seqs.lock().unwrap().clone());
        started = started.min(st.started_us.load(std::sync::atomic::Ordering::Relaxed));
    }
    sum.achieved_rate_per_s = sum.sent as f64 / secs;
    sum.request_latency = hist::summary(&req);
    h.phase = "drain".into();
    h.run_for(Duration::from_secs_f64(a.common.drain_secs))
        .await;
    let window = h.end_window("measure");
    let finals = h.finals(last, started).await;
    let end = h.server_sample();
    let m1 = msgs_out(&h);
    h.shutdown().await;
    h.notes.push("ticker, tickers (ticker:all) and kline latency includes the server's throttle window (the gateway's --ticker-throttle-ms, default 1000 ms); trades, order book deltas and private events are not throttled".into());
    let requested = total
        - if private_users.is_none() {
            a.private_users
        } else {
            0
        };
    let parts = Parts {
        requested,
        transport: "mixed".into(),
        open,
        window,
        finals,
        publish: Some(sum),
        base,
        connected,
        end,
        msgs_out: m0.zip(m1).map(|(a, b)| b.saturating_sub(a)),
        // The overall figure: the unthrottled streams.
        latency_kinds: vec![0, 1, 5, crate::plan::BOOK_TICKER],
        rate_secs: Some(secs),
    };
    let r = build(&h, "mixed", serde_json::to_value(&a).unwrap(), parts);
    Ok((r, h))
}
