//! The internal (admin) listener: `POST /internal/events`, `GET /internal/orderbook/{symbol}`,
//! `GET /metrics`, `GET /stats`, `GET /health`. Served by hyper on a small tokio runtime, away
//! from the shards.

use crate::ingest::{Ingest, IngestError};
use crate::log_rate::LogRate;
use crate::shard::{Counters, ShardStats};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// Largest ingest body accepted.
pub const MAX_INGEST_BODY: usize = 16 * 1024 * 1024;
/// A request head not complete by then ends its connection.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct InternalState {
    pub ingest: Arc<Ingest>,
    pub token: Option<String>,
    pub stats: Vec<Arc<ShardStats>>,
    pub shared: Arc<crate::shard::Shared>,
    pub metrics: crate::metrics::Metrics,
    /// Cluster mode: ingest appends here instead of applying locally.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

type Body = Full<Bytes>;

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

async fn handle(
    state: Arc<InternalState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (Method::GET, "/stats") => stats(&state),
        (Method::GET, "/metrics") => Response::builder()
            .status(StatusCode::OK)
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(state.metrics.render())))
            .expect("static response parts are valid"),
        (Method::GET, p) if p.starts_with("/internal/orderbook/") => {
            let symbol = &p["/internal/orderbook/".len()..];
            match state.ingest.book_json(symbol) {
                Some(body) => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts are valid"),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"error": "NOT_FOUND", "message": format!("no order book for '{symbol}'")}),
                ),
            }
        }
        (Method::POST, "/internal/events") => ingest(&state, req).await,
        (_, "/internal/events") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "METHOD_NOT_ALLOWED", "message": "use POST"}),
        ),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "NOT_FOUND"})),
    })
}

fn stats(state: &InternalState) -> Response<Body> {
    let shards: Vec<Counters> = state.stats.iter().map(|s| s.load()).collect();
    let mut total = Counters::default();
    for c in &shards {
        total.add(c);
    }
    let outbound: u64 = state
        .stats
        .iter()
        .map(|s| s.gauges.outbound_queue_bytes())
        .sum();
    json_response(
        StatusCode::OK,
        json!({
            "ingest": {"events": state.ingest.events(), "encodes": state.ingest.encodes()},
            "market": state.ingest.market_counters(),
            "total": total,
            "outbound_queue_bytes": outbound,
            "input_buffered_bytes": state.shared.limits.input_buffered(),
            "tcp_connections": state.shared.limits.tcp_total(),
            "shards": shards,
        }),
    )
}

async fn ingest(state: &InternalState, req: Request<Incoming>) -> Response<Body> {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time: how long a refusal takes says nothing of the token.
        let matches = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())));
        if !matches {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "UNAUTHORIZED", "message": "missing or wrong ingest bearer token"}),
            );
        }
    }
    let body = match Limited::new(req.into_body(), MAX_INGEST_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "TOO_LARGE", "message": format!("body over {MAX_INGEST_BODY} bytes")}),
            )
        }
    };
    if state.cluster.is_some() && state.shared.catch_up.is_catching_up() {
        // Book ids are checked against a replica still being rebuilt.
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "UNAVAILABLE", "message": "this instance is catching up with the stream; nothing was accepted, retry"}),
        );
    }
    let result = match &state.cluster {
        None => state.ingest.submit_shared(&body),
        Some(cluster) => match state.ingest.check_body(&body) {
            Ok(events) => match cluster.append(&events).await {
                Ok(()) => Ok(events.len()),
                Err(e) => {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "UNAVAILABLE", "message": format!("{e}; nothing was accepted, retry")}),
                    )
                }
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(n) => json_response(StatusCode::ACCEPTED, json!({"accepted": n})),
        Err(IngestError::BadEvent { index, message }) => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "BAD_EVENT", "index": index, "message": format!("event {index}: {message}")}),
        ),
        Err(IngestError::Parse(e)) => {
            let index = match &e {
                crate::ingest::parse::ParseError::BadJson { index, .. } => *index,
                crate::ingest::parse::ParseError::Empty => None,
            };
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "BAD_JSON", "index": index, "message": e.to_string()}),
            )
        }
    }
}

/// Serves the internal listener until the runtime stops.
pub async fn serve(listener: TcpListener, state: Arc<InternalState>) {
    let mut accept_errors = LogRate::new(1000);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if let Some(skipped) = accept_errors.due(crate::clock::unix_ms()) {
                    tracing::warn!(error = %e, skipped, "internal accept failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "internal connection ended with an error");
            }
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
