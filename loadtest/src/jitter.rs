//! The jitter scenario: subscribers whose TCP connections are destroyed every 10–20 s (no
//! close handshake, as a network drop does), stay away ~2 s, and come back with socket.io's
//! connection state recovery (`pid` and the last `offset` in the CONNECT). Reports what a
//! client of a real mobile network sees: delivery, duplicates, order, how many comebacks
//! recovered, how long after being back the missed events arrived, and end-to-end delay.
//!
//! The clients run in this process (one task each), speaking Engine.IO v4 / Socket.IO v5
//! over WebSocket; the publisher is the usual hook. Any server with recovery on can be
//! measured (the gateway, or the Node `socket.io` comparison server).

use crate::cli::JitterArgs;
use crate::harness::Harness;
use crate::hist;
use crate::proto::{self, EioPacket, Envelope, Marker, SioType};
use crate::publish::{symbol, Publisher, TradeSource};
use crate::report::{JitterReport, PublishSummary, RunReport};
use crate::worker::now_us;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// What one client saw over the run.
#[derive(Default)]
struct ClientLog {
    stream: u32,
    /// Sequence numbers of its stream, in arrival order.
    seqs: Vec<u64>,
    comebacks: u64,
    recovered: u64,
    /// Told it fell behind (an `error` event) or closed by the server.
    told: u64,
    /// Events published while it was away: arrival − when it was back (µs).
    replay_us: Vec<u64>,
    /// Those same events: arrival − publish (µs).
    missed_e2e_us: Vec<u64>,
    /// Every event: arrival − publish (µs).
    e2e_us: Vec<u64>,
    first_error: Option<String>,
}

struct Cfg {
    target: SocketAddr,
    path: String,
    nsp: String,
    drop_min_ms: u64,
    drop_max_ms: u64,
    offline_ms: u64,
}

/// A connected session, until the client drops it or the server closes it.
enum Ended {
    Dropped,
    ServerClosed,
    Stop,
}

pub async fn run(a: JitterArgs) -> Result<(RunReport, Harness), String> {
    if !a.common.worker_at.is_empty() {
        return Err(
            "jitter runs its clients in the coordinator itself; --worker-at is not supported here"
                .into(),
        );
    }
    if a.clients == 0 || a.clients > 20_000 || a.duration <= 0.0 || a.duration > 600.0 {
        return Err("--clients must be 1..20000 and --duration 0..600 s".into());
    }
    if a.drop_min_ms == 0 || a.drop_max_ms < a.drop_min_ms {
        return Err("--drop-min-ms must be positive and at most --drop-max-ms".into());
    }
    let budget = Duration::from_secs_f64(a.duration + a.common.drain_secs + 120.0);
    let mut h = Harness::new(a.common.clone(), "jitter", budget).await?;
    let hook = h.require_hook()?;
    let cfg = Arc::new(Cfg {
        target: h.target,
        path: a.common.path.clone(),
        nsp: a.common.namespace.clone(),
        drop_min_ms: a.drop_min_ms,
        drop_max_ms: a.drop_max_ms,
        offline_ms: a.offline_ms,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let stream = (i % a.rooms as u64) as u32;
        tasks.push(tokio::spawn(client(
            i,
            stream,
            symbol(stream as usize),
            cfg.clone(),
            stop.clone(),
            ready_tx.clone(),
        )));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(ready_tx);
    let mut subscribed = 0u64;
    let mut first_error = None;
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => subscribed += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        if subscribed + u64::from(first_error.is_some()) >= a.clients {
            break;
        }
    }
    if subscribed == 0 {
        return Err(format!(
            "no client subscribed: {}",
            first_error.unwrap_or_default()
        ));
    }
    let publisher = Publisher::start(
        hook.clone(),
        a.rate,
        Box::new(TradeSource::new(a.rooms, a.payload_bytes)),
    );
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let stats = publisher.stop().await;
    let pub_secs = started.elapsed().as_secs_f64();
    // Clients away at the end come back and are replayed what they missed.
    tokio::time::sleep(
        Duration::from_millis(a.offline_ms)
            + Duration::from_secs_f64(a.common.drain_secs)
            + Duration::from_secs(2),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks {
        if let Ok(log) = t.await {
            logs.push(log);
        }
    }
    let last = stats.seqs.lock().unwrap().clone();
    let mut expected = 0u64;
    let mut missing = 0u64;
    let mut dups = 0u64;
    let mut out_of_order_clients = 0u64;
    let mut clients_with_loss = 0u64;
    let mut untold_loss = 0u64;
    let (mut comebacks, mut recovered, mut told) = (0u64, 0u64, 0u64);
    let mut replay = Histogram::<u64>::new(3).unwrap();
    let mut missed_e2e = Histogram::<u64>::new(3).unwrap();
    let mut e2e = Histogram::<u64>::new(3).unwrap();
    for log in &logs {
        let want = last.get(&log.stream).map_or(0, |l| l + 1);
        expected += want;
        let mut seen = vec![false; want as usize];
        let mut in_order = true;
        let mut prev: Option<u64> = None;
        for &s in &log.seqs {
            match seen.get_mut(s as usize) {
                Some(true) => dups += 1,
                Some(slot) => *slot = true,
                None => {}
            }
            if prev.is_some_and(|p| s <= p) {
                in_order = false;
            }
            prev = Some(s);
        }
        let lost = seen.iter().filter(|x| !**x).count() as u64;
        missing += lost;
        if lost > 0 {
            clients_with_loss += 1;
            if log.told == 0 {
                untold_loss += 1;
            }
        }
        if !in_order {
            out_of_order_clients += 1;
        }
        comebacks += log.comebacks;
        recovered += log.recovered;
        told += log.told;
        for &v in &log.replay_us {
            let _ = replay.record(v.max(1));
        }
        for &v in &log.missed_e2e_us {
            let _ = missed_e2e.record(v.max(1));
        }
        for &v in &log.e2e_us {
            let _ = e2e.record(v.max(1));
        }
        if first_error.is_none() {
            first_error.clone_from(&log.first_error);
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let delivered_pct = if expected == 0 {
        0.0
    } else {
        (expected - missing) as f64 / expected as f64 * 100.0
    };
    let notes = vec![
        format!(
            "jitter: {} clients, each connection destroyed every {}–{} s and away {} ms; {} publishes/s over {} rooms for {:.0} s",
            logs.len(), a.drop_min_ms / 1000, a.drop_max_ms / 1000, a.offline_ms, a.rate, a.rooms, a.duration
        ),
        format!(
            "jitter: delivered {delivered_pct:.4} % ({} of {} expected, {missing} missing, {dups} duplicates), {out_of_order_clients} clients saw events out of order",
            expected - missing, expected
        ),
        format!(
            "jitter: {comebacks} comebacks, {recovered} recovered ({:.2} %), {told} told they fell behind; {clients_with_loss} clients lost events ({untold_loss} untold)",
            if comebacks == 0 { 100.0 } else { recovered as f64 / comebacks as f64 * 100.0 }
        ),
        format!(
            "jitter: events missed while away arrived {:.1} / {:.1} / {:.1} ms (p50 / p99 / max) after the client was back, {:.0} / {:.0} ms (p50 / p99) after publish; all events p50 / p99 {:.1} / {:.1} ms",
            ms(&replay, 0.5), ms(&replay, 0.99), replay.max() as f64 / 1000.0,
            ms(&missed_e2e, 0.5), ms(&missed_e2e, 0.99),
            ms(&e2e, 0.5), ms(&e2e, 0.99)
        ),
    ];
    let req = stats.req_hist.lock().unwrap().clone();
    let sent = stats.sent.load(Ordering::Relaxed);
    let publish = PublishSummary {
        hook: hook.describe(),
        sent,
        target_rate_per_s: a.rate,
        achieved_rate_per_s: sent as f64 / pub_secs.max(1e-3),
        errors: stats.errors.load(Ordering::Relaxed),
        first_error: stats.first_error.lock().unwrap().clone(),
        request_latency: req.as_ref().map(hist::summary).unwrap_or_default(),
    };
    h.shutdown().await;
    let mut r = RunReport {
        tool: "loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: "jitter".into(),
        started_unix: now_us() / 1_000_000 - h.start.elapsed().as_secs(),
        wall_s: h.start.elapsed().as_secs_f64(),
        server: h.server_info.clone(),
        config: serde_json::to_value(&a).unwrap_or_default(),
        publish: Some(publish),
        notes,
        ..Default::default()
    };
    r.jitter = Some(JitterReport {
        clients: logs.len() as u64,
        expected,
        delivered: expected - missing,
        missing,
        duplicates: dups,
        out_of_order_clients,
        comebacks,
        recovered,
        told,
        clients_with_loss,
        clients_with_untold_loss: untold_loss,
        replay_after_back_ms: hist::summary(&replay),
        missed_after_publish_ms: hist::summary(&missed_e2e),
        all_after_publish_ms: hist::summary(&e2e),
    });
    r.connections.requested = a.clients;
    r.connections.transport = "websocket".into();
    r.connections.connected = subscribed;
    r.connections.first_error = first_error;
    if missing > 0 || dups > 0 || out_of_order_clients > 0 {
        r.warnings.push(format!(
            "jitter: {missing} events missing, {dups} duplicates, {out_of_order_clients} clients out of order"
        ));
    }
    Ok((r, h))
}

async fn client(
    index: u64,
    stream: u32,
    sym: String,
    cfg: Arc<Cfg>,
    stop: Arc<AtomicBool>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
) -> ClientLog {
    let mut log = ClientLog {
        stream,
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut pid: Option<String> = None;
    let mut offset: Option<String> = None;
    let mut ready = Some(ready);
    // When the client last went away (µs), and so which events it missed.
    let mut away_since: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let session = session(&cfg, &sym, &mut pid, &mut offset, &mut log, away_since).await;
        let (mut ws, back_at) = match session {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return log;
                }
                log.first_error.get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        let drop_in = rng.random_range(cfg.drop_min_ms..=cfg.drop_max_ms);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(drop_in);
        let ended = loop {
            if stop.load(Ordering::Relaxed) {
                break Ended::Stop;
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(deadline) => break Ended::Dropped,
                _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Ended::ServerClosed,
                Some(Ok(_)) => continue,
            };
            match proto::parse_eio(&text) {
                Some(EioPacket::Ping(p))
                    if ws.send(Message::text(format!("3{p}"))).await.is_err() =>
                {
                    break Ended::ServerClosed;
                }
                Some(EioPacket::Message(m)) => {
                    on_message(m, &mut log, &mut offset, away_since, back_at)
                }
                Some(EioPacket::Close) => break Ended::ServerClosed,
                _ => {}
            }
        };
        match ended {
            Ended::Stop => return log,
            Ended::Dropped => {
                // Destroyed, not closed: no close frame, no Engine.IO close.
                drop(ws);
                away_since = Some(now_us());
                tokio::time::sleep(Duration::from_millis(cfg.offline_ms)).await;
            }
            Ended::ServerClosed => {
                log.told += 1;
                away_since = Some(now_us());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    log
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a session: handshake, CONNECT with the recovery claim if there is one, and a
/// subscription unless the session was recovered. Returns when it is back (µs).
async fn session(
    cfg: &Cfg,
    sym: &str,
    pid: &mut Option<String>,
    offset: &mut Option<String>,
    log: &mut ClientLog,
    away_since: Option<u64>,
) -> Result<(Ws, u64), String> {
    let url = format!("ws://{}{}?EIO=4&transport=websocket", cfg.target, cfg.path);
    let tcp = tokio::net::TcpStream::connect(cfg.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let claim = pid.as_ref().map(|p| {
        serde_json::json!({"pid": p, "offset": offset.clone().unwrap_or_default()}).to_string()
    });
    let mut connected = false;
    let mut subscribed = false;
    let mut back_at = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(until, ws.next())
            .await
            .map_err(|_| "no CONNECT answer or subscription ack in 10 s".to_string())?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => return Err("closed during the handshake".into()),
        };
        match proto::parse_eio(&text) {
            Some(EioPacket::Open(_)) => {
                // Back: the transport is up again (replayed events may precede the CONNECT
                // answer on some servers).
                back_at = now_us();
                let connect = proto::connect_packet(&cfg.nsp, claim.as_deref());
                ws.send(Message::text(connect))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(EioPacket::Ping(p)) => {
                let _ = ws.send(Message::text(format!("3{p}"))).await;
            }
            Some(EioPacket::Message(m)) => {
                let Some(p) = proto::parse_sio(m) else {
                    continue;
                };
                match p.ty {
                    SioType::Connect if !connected => {
                        connected = true;
                        let answer: serde_json::Value =
                            serde_json::from_str(p.json).unwrap_or_default();
                        let new_pid = answer["pid"].as_str().map(str::to_owned);
                        let recovered = pid.is_some() && new_pid == *pid;
                        if away_since.is_some() {
                            log.comebacks += 1;
                            log.recovered += u64::from(recovered);
                        }
                        *pid = new_pid;
                        if recovered {
                            return Ok((ws, back_at));
                        }
                        *offset = None;
                        let body =
                            serde_json::json!({"channel": "trades", "symbol": sym}).to_string();
                        let sub = proto::event_packet(&cfg.nsp, Some(1), "subscribe", Some(&body));
                        ws.send(Message::text(sub))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    SioType::ConnectError => return Err(format!("connect_error {}", p.json)),
                    SioType::Ack if p.ack == Some(1) => {
                        if !p.json.contains("\"ok\":true") {
                            return Err(format!("subscribe refused: {}", p.json));
                        }
                        subscribed = true;
                    }
                    SioType::Event => on_message(m, log, offset, away_since, back_at),
                    _ => {}
                }
                if subscribed {
                    return Ok((ws, back_at));
                }
            }
            _ => {}
        }
    }
}

/// A Socket.IO packet on an open session: a trade is recorded (and its offset kept for the
/// next recovery claim); an `error` event means the server told the client something.
fn on_message(
    m: &str,
    log: &mut ClientLog,
    offset: &mut Option<String>,
    away_since: Option<u64>,
    back_at: u64,
) {
    let Some(p) = proto::parse_sio(m) else {
        return;
    };
    if p.ty != SioType::Event {
        return;
    }
    let Ok((name, env, off)) =
        serde_json::from_str::<(String, Option<&RawValue>, Option<String>)>(p.json)
    else {
        return;
    };
    if name == "error" {
        log.told += 1;
        return;
    }
    if name != "trade" {
        return;
    }
    if off.is_some() {
        *offset = off;
    }
    let Some(env) = env else {
        return;
    };
    let Ok(env) = serde_json::from_str::<Envelope>(env.get()) else {
        return;
    };
    let Some(Ok(m)) = env.data.map(|d| serde_json::from_str::<Marker>(d.get())) else {
        return;
    };
    let (Some(seq), Some(ts)) = (m.lt_seq, m.lt_ts) else {
        return;
    };
    let now = now_us();
    log.seqs.push(seq);
    log.e2e_us.push(now.saturating_sub(ts));
    if let Some(away) = away_since {
        if ts >= away && ts <= back_at {
            log.replay_us.push(now.saturating_sub(back_at));
            log.missed_e2e_us.push(now.saturating_sub(ts));
        }
    }
}
