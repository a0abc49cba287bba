//! A minimal socketioxide server with the same `/ws` API as maven-gateway, for loadtest
//! comparisons: `subscribe {channel, symbol|symbols, interval?}` joins `trades:S`,
//! `ticker:S`, `orderbook:S`, `klines:S:I`; `POST /internal/events` on the ingest port (the
//! gateway's ingest format: one object, an array, or NDJSON) emits
//! `{channel, data, timestamp}` envelopes to rooms. No throttling, no order book replica,
//! no last value on subscribe: plain broadcast, as a baseline.
//!
//! PORT (default 3001) and INGEST_PORT (default 9101) pick the ports; both bind 127.0.0.1.

use axum::serve::ListenerExt;
use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Json, Router};
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const INTERVALS: [&str; 10] = ["1m", "3m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "1M"];

fn valid_symbol(s: &str) -> bool {
    (2..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Rooms for a subscribe payload, and the reply (without `ok`).
fn rooms_for(p: &Value) -> Result<(Vec<String>, Value), (&'static str, String)> {
    let channel = p
        .get("channel")
        .and_then(Value::as_str)
        .ok_or(("INVALID_CHANNEL", "missing channel".to_string()))?;
    let (symbols, list) = match (p.get("symbols"), p.get("symbol")) {
        (Some(Value::Array(a)), _) if !a.is_empty() => {
            let v: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(String::from)).collect();
            (
                v.ok_or(("BAD_REQUEST", "symbols must be strings".to_string()))?,
                true,
            )
        }
        (_, Some(Value::String(s))) => (vec![s.clone()], false),
        _ => return Err(("INVALID_SYMBOL", "missing symbol".into())),
    };
    for s in &symbols {
        if !(valid_symbol(s) || (s == "all" && channel == "ticker")) {
            return Err(("INVALID_SYMBOL", format!("invalid symbol {s}")));
        }
    }
    let interval = p.get("interval").and_then(Value::as_str);
    let rooms: Vec<String> = match channel {
        "ticker" => symbols.iter().map(|s| format!("ticker:{s}")).collect(),
        "orderbook" => symbols.iter().map(|s| format!("orderbook:{s}")).collect(),
        "trades" => symbols.iter().map(|s| format!("trades:{s}")).collect(),
        "klines" => {
            let i = interval
                .filter(|i| INTERVALS.contains(i))
                .ok_or(("INVALID_INTERVAL", "invalid interval".to_string()))?;
            symbols.iter().map(|s| format!("klines:{s}:{i}")).collect()
        }
        _ => return Err(("INVALID_CHANNEL", format!("unknown channel {channel}"))),
    };
    let mut reply = json!({ "channel": channel, "rooms": rooms });
    if list {
        reply["symbols"] = json!(symbols);
    } else {
        reply["symbol"] = json!(symbols[0]);
    }
    if let Some(i) = interval {
        reply["interval"] = json!(i);
    }
    Ok((rooms, reply))
}

/// Answer with the ack when asked, and with the event (`subscribed` / `error`) as well: a
/// socketioxide handler cannot tell whether the client asked for an ack.
fn answer(
    s: &SocketRef,
    ack: AckSender,
    event: &str,
    p: &Value,
    r: Result<(Vec<String>, Value), (&'static str, String)>,
    join: bool,
) {
    match r {
        Ok((rooms, reply)) => {
            if join {
                s.join(rooms);
            } else {
                s.leave(rooms);
            }
            let mut a = reply.clone();
            a["ok"] = json!(true);
            let _ = ack.send(&a);
            let _ = s.emit(event, &reply);
        }
        Err((code, message)) => {
            let _ =
                ack.send(&json!({ "ok": false, "error": { "code": code, "message": message } }));
            let _ = s.emit(
                "error",
                &json!({ "code": code, "message": message, "request": p }),
            );
        }
    }
}

/// Registers the event handlers. Run as a namespace middleware: socketioxide 0.18 sends the
/// CONNECT answer before it runs the (async) connect handler, so handlers registered there
/// miss a client that emits right after connecting (as loadtest and browsers do).
async fn register(s: SocketRef) -> Result<(), std::convert::Infallible> {
    s.on(
        "subscribe",
        async |s: SocketRef, Data(p): Data<Value>, ack: AckSender| {
            let r = rooms_for(&p);
            answer(&s, ack, "subscribed", &p, r, true);
        },
    );
    s.on(
        "unsubscribe",
        async |s: SocketRef, Data(p): Data<Value>, ack: AckSender| {
            let r = rooms_for(&p);
            answer(&s, ack, "unsubscribed", &p, r, false);
        },
    );
    s.on(
        "subscribe.private",
        async |s: SocketRef, Data(p): Data<Value>, ack: AckSender| {
            let r = Err(("UNAUTHORIZED", "authentication required".to_string()));
            answer(&s, ack, "subscribed", &p, r, true);
        },
    );
    s.on("ping", async |s: SocketRef, ack: AckSender| {
        let _ = ack.send(&json!({ "ok": true, "timestamp": now_ms() }));
        let _ = s.emit("pong", &json!({ "timestamp": now_ms() }));
    });
    Ok(())
}

fn on_connect(s: SocketRef) {
    let _ = s.emit(
        "connected",
        &json!({ "socketId": s.id.to_string(), "userId": null, "authenticated": false, "serverTime": now_ms() }),
    );
}

/// (room, event, data) for one ingest event, as the gateway routes it.
fn route(e: &Value) -> Result<Vec<(String, String, Value)>, String> {
    let data = e.get("data").cloned().ok_or("missing data")?;
    if let (Some(room), Some(event)) = (
        e.get("room").and_then(Value::as_str),
        e.get("event").and_then(Value::as_str),
    ) {
        return Ok(vec![(room.into(), event.into(), data)]);
    }
    let ty = e
        .get("type")
        .and_then(Value::as_str)
        .ok_or("missing type")?;
    let sym = || {
        e.get("symbol")
            .and_then(Value::as_str)
            .filter(|s| valid_symbol(s))
            .ok_or("invalid symbol".to_string())
    };
    Ok(match ty {
        "trade" => vec![(format!("trades:{}", sym()?), "trade".into(), data)],
        "ticker.update" => {
            let s = sym()?;
            vec![
                (format!("ticker:{s}"), "ticker.update".into(), data.clone()),
                ("ticker:all".into(), "tickers.update".into(), json!([data])),
            ]
        }
        "orderbook.update" => {
            let s = sym()?;
            let mut d = data;
            if d.is_object() && d.get("symbol").is_none() {
                d["symbol"] = json!(s);
            }
            vec![(format!("orderbook:{s}"), "orderbook.update".into(), d)]
        }
        "kline.update" => {
            let i = e
                .get("interval")
                .and_then(Value::as_str)
                .filter(|i| INTERVALS.contains(i))
                .ok_or("invalid interval")?;
            vec![(
                format!("klines:{}:{i}", sym()?),
                "kline.update".into(),
                data,
            )]
        }
        t => {
            let user = e
                .get("userId")
                .and_then(Value::as_str)
                .ok_or("missing userId")?;
            let suffix = if t.starts_with("order.") {
                "orders"
            } else if t == "trade.executed" {
                "trades"
            } else if t.starts_with("balance.") {
                "balances"
            } else if t.starts_with("deposit.") {
                "deposits"
            } else {
                return Err(format!("unknown type {t}"));
            };
            vec![(format!("user:{user}:{suffix}"), t.into(), data)]
        }
    })
}

fn parse_body(b: &[u8]) -> Result<Vec<Value>, String> {
    match serde_json::from_slice::<Value>(b) {
        Ok(Value::Array(a)) => Ok(a),
        Ok(v @ Value::Object(_)) => Ok(vec![v]),
        Ok(_) => Err("body must be an object, an array or NDJSON".into()),
        Err(_) => b
            .split(|&c| c == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| serde_json::from_slice(l).map_err(|e| e.to_string()))
            .collect(),
    }
}

async fn ingest(State(io): State<SocketIo>, body: Bytes) -> (StatusCode, Json<Value>) {
    let events = match parse_body(&body) {
        Ok(v) => v,
        Err(m) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "BAD_JSON", "message": m })),
            )
        }
    };
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match route(e) {
            Ok(r) => out.extend(r),
            Err(m) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "BAD_EVENT", "index": i, "message": m })),
                );
            }
        }
    }
    let ns = io.of("/ws").expect("namespace /ws");
    let ts = now_ms();
    for (room, event, data) in out {
        let _ = ns
            .clone()
            .to(room.clone())
            .emit(
                &event,
                &json!({ "channel": room, "data": data, "timestamp": ts }),
            )
            .await;
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": events.len() })),
    )
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let ingest_port: u16 = std::env::var("INGEST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9101);
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(25_000))
        .ping_timeout(Duration::from_millis(20_000))
        .max_payload(1_000_000)
        // Per-socket packet buffer: large enough that broadcasts are not dropped under load.
        .max_buffer_size(65_536)
        .build_layer();
    io.ns("/ws", (async |s: SocketRef| on_connect(s)).with(register));
    io.ns("/", async |_s: SocketRef| {});
    let app = Router::new().layer(layer);
    let internal = Router::new()
        .route("/internal/events", post(ingest))
        .with_state(io);
    let l1 = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind PORT");
    let l2 = tokio::net::TcpListener::bind(("127.0.0.1", ingest_port))
        .await
        .expect("bind INGEST_PORT");
    eprintln!(
        "compare-socketioxide: socket.io on 127.0.0.1:{port}, ingest on 127.0.0.1:{ingest_port}"
    );
    // TCP_NODELAY as any latency-minded server sets it (else Nagle + delayed ACKs add 40 ms
    // to back-to-back small writes such as the handshake).
    let l1 = l1.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let l2 = l2.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let a = tokio::spawn(async move { axum::serve(l1, app).await });
    let b = tokio::spawn(async move { axum::serve(l2, internal).await });
    tokio::select! {
        _ = a => {}
        _ = b => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
