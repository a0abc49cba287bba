//! Everything the gateway tells a client when it refuses, warns or ends something, built in
//! one place from typed reasons: API errors (as an `error` event or a failed ack), CONNECT
//! refusals, server notices on `/ws`, and HTTP error answers. Wording and shape live here and
//! nowhere else, so a code seen on the wire can be found from its reason.

use crate::codec::socketio::{Kind, Packet};
use crate::codec::WireMessage;
use crate::http::{response, HeadError};
use crate::limits::Refusal;
use crate::transport::EngineError;
use crate::GATEWAY_NAMESPACE;
use bytes::Bytes;
use serde_json::{json, Value};
use std::fmt;
use std::sync::Arc;

/// The error codes of the contract, as sent in `error` events and acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidChannel,
    InvalidSymbol,
    InvalidInterval,
    InvalidDepth,
    InvalidSpeed,
    BadRequest,
    Unauthorized,
    RateLimited,
    SubscriptionLimit,
    TokenExpired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidChannel => "INVALID_CHANNEL",
            Self::InvalidSymbol => "INVALID_SYMBOL",
            Self::InvalidInterval => "INVALID_INTERVAL",
            Self::InvalidDepth => "INVALID_DEPTH",
            Self::InvalidSpeed => "INVALID_SPEED",
            Self::BadRequest => "BAD_REQUEST",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::RateLimited => "RATE_LIMITED",
            Self::SubscriptionLimit => "SUBSCRIPTION_LIMIT",
            Self::TokenExpired => "TOKEN_EXPIRED",
        }
    }
}

/// A refused request: its code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// An API request refused: the failed ack when the client asked for one, else an `error`
/// event naming the request.
pub fn api_error(ns: &str, ack: Option<u64>, error: &ApiError, request: Value) -> Packet {
    match ack {
        Some(id) => api_ack(ns, id, api_error_ack_args(error)),
        None => Packet::event(ns, api_error_event_args(error, request), None),
    }
}

/// `[{"ok": false, "error": {code, message}}]`: the arguments of a failed ack.
pub fn api_error_ack_args(error: &ApiError) -> Value {
    json!([{"ok": false, "error": {"code": error.code.as_str(), "message": error.message}}])
}

/// `["error", {code, message, request}]`: the arguments of an `error` event.
pub fn api_error_event_args(error: &ApiError, request: Value) -> Value {
    let request = echo(request);
    json!(["error", {"code": error.code.as_str(), "message": error.message, "request": request}])
}

/// The refused request as echoed back: whole when small; else its scalar fields only (the
/// channel, symbol, interval), marked truncated, so a refusal never costs as much to send
/// as the request did to receive.
fn echo(request: Value) -> Value {
    const MAX_ECHO: usize = 1024;
    if serde_json::to_vec(&request).map_or(0, |v| v.len()) <= MAX_ECHO {
        return request;
    }
    match request {
        Value::Object(m) => {
            let mut kept: serde_json::Map<String, Value> = m
                .into_iter()
                .filter(|(k, v)| {
                    k.len() <= 64 && matches!(v, Value::String(s) if s.len() <= 64)
                        || matches!(v, Value::Number(_) | Value::Bool(_) | Value::Null)
                })
                .take(8)
                .collect();
            kept.insert("truncated".into(), Value::Bool(true));
            Value::Object(kept)
        }
        _ => json!({"truncated": true}),
    }
}

fn api_ack(ns: &str, id: u64, args: Value) -> Packet {
    Packet {
        kind: Kind::Ack,
        namespace: ns.to_owned(),
        id: Some(id),
        data: Some(args),
        attachments: Vec::new(),
    }
}

/// Client events over the per-connection rate.
pub fn rate_limited(rate_per_sec: f64) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!("at most {rate_per_sec} events per second"),
    )
}

/// A subscription to rooms the gateway does not hold, past its room cap.
pub fn room_limit() -> ApiError {
    ApiError::new(
        ErrorCode::SubscriptionLimit,
        "the gateway is at its limit of rooms; retry later",
    )
}

/// A subscription to depth/speed views past the address's or the gateway's view cap.
pub fn view_limit(per_ip: usize) -> ApiError {
    ApiError::new(
        ErrorCode::SubscriptionLimit,
        format!(
            "at most {per_ip} depth/speed subscriptions per address, within the gateway's limit of views; subscribe at the default depth and speed, or retry later"
        ),
    )
}

/// A recovered socket's subscriptions that its caps no longer admit (`error` with the rooms
/// in `request`): the client resubscribes when it can.
pub fn not_restored(ns: &str, rooms: &[Arc<str>], why: &ApiError) -> Packet {
    let error = ApiError::new(
        why.code,
        format!(
            "{} subscription(s) not restored after the reconnection: {}",
            rooms.len(),
            why.message
        ),
    );
    let rooms: Vec<&str> = rooms.iter().map(|r| &**r).collect();
    api_error(ns, None, &error, serde_json::json!({ "rooms": rooms }))
}

/// Why a namespace CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    InvalidNamespace,
    InvalidToken,
    /// The user holds its cap of connections.
    ConnectionLimit,
    /// CONNECTs over the connection's event rate.
    RateLimited,
}

/// The CONNECT_ERROR packet for a refused namespace connection.
pub fn connect_error(ns: &str, refusal: ConnectRefusal) -> Packet {
    let data = match refusal {
        ConnectRefusal::InvalidNamespace => json!({"message": "Invalid namespace"}),
        ConnectRefusal::InvalidToken => json!({
            "message": "Unauthorized: Invalid token",
            "data": {"code": "INVALID_TOKEN"},
        }),
        ConnectRefusal::ConnectionLimit => json!({
            "message": "Too many connections for this user",
            "data": {"code": "CONNECTION_LIMIT"},
        }),
        ConnectRefusal::RateLimited => json!({
            "message": "Too many requests; slow down",
            "data": {"code": "RATE_LIMITED"},
        }),
    };
    Packet {
        kind: Kind::ConnectError,
        namespace: ns.to_owned(),
        id: None,
        data: Some(data),
        attachments: Vec::new(),
    }
}

/// `error` TOKEN_EXPIRING: the arguments of the event sent before a token expires.
pub fn token_expiring(expires_at_ms: u64) -> Value {
    json!(["error", {
        "code": "TOKEN_EXPIRING",
        "message": "the token expires soon; send 'auth' with a fresh token",
        "expiresAt": expires_at_ms,
    }])
}

/// `error` TOKEN_EXPIRED: the arguments of the event sent when a token expired unrefreshed.
pub fn token_expired() -> Value {
    json!(["error", {
        "code": "TOKEN_EXPIRED",
        "message": "the token expired; private subscriptions ended, public ones stay",
    }])
}

/// `error` SLOW_CONSUMER on `/ws`, the last thing a dropped slow consumer is sent.
pub fn slow_consumer() -> WireMessage {
    gateway_event(&json!(["error", {
        "code": "SLOW_CONSUMER",
        "message": "outbound buffer over its limit; reconnect and resubscribe",
    }]))
}

/// `error` OVERLOADED on `/ws`: the gateway fell behind and could not deliver a lossless
/// stream this client follows; it closes the session, and the client's reconnection recovers
/// what it missed.
pub fn overloaded() -> WireMessage {
    gateway_event(&json!(["error", {
        "code": "OVERLOADED",
        "message": "the gateway fell behind; reconnect to recover what was missed",
    }]))
}

/// `error` STREAM_GAP on `/ws`: this instance lost the cluster stream for a while and a
/// lossless stream this client follows went on without it; the session closes, and the
/// client's reconnection recovers what it missed (in order, marked as recovered).
pub fn stream_gap() -> WireMessage {
    gateway_event(&json!(["error", {
        "code": "STREAM_GAP",
        "message": "this gateway instance fell behind the event stream; reconnect: connection state recovery replays what was missed while the replay log holds it",
    }]))
}

/// `server.shutdown` `{reconnectAfterMs}` on `/ws`, sent to every client when draining.
pub fn server_shutdown(reconnect_after_ms: u64) -> WireMessage {
    gateway_event(&json!(["server.shutdown", {"reconnectAfterMs": reconnect_after_ms}]))
}

fn gateway_event(args: &Value) -> WireMessage {
    WireMessage::text(|b| {
        b.extend_from_slice(b"42");
        b.extend_from_slice(GATEWAY_NAMESPACE.as_bytes());
        b.extend_from_slice(b",");
        // Serializing a JSON value into a growable buffer cannot fail.
        let _ = serde_json::to_writer(bytes::BufMut::writer(b), args);
    })
}

/// Why an HTTP request on the public listener was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRefusal {
    /// The request head does not parse, or is too large.
    Head(HeadError),
    /// An Engine.IO request the protocol refuses.
    Engine(EngineError),
    /// A handshake over a connection cap.
    Capped(Refusal),
    /// A polling body over the payload limit.
    PayloadTooLarge,
    NotFound,
}

impl HttpRefusal {
    pub fn status(&self) -> u16 {
        match self {
            HttpRefusal::Head(HeadError::TooLarge) => 431,
            HttpRefusal::Head(HeadError::TransferEncoding) => 501,
            HttpRefusal::Head(_) => 400,
            HttpRefusal::Engine(e) => e.status(),
            HttpRefusal::Capped(r) => r.status(),
            HttpRefusal::PayloadTooLarge => 413,
            HttpRefusal::NotFound => 404,
        }
    }
}

/// The whole HTTP answer to a refused request. `origin` is the CORS origin to allow, if any.
pub fn http_refusal(refusal: &HttpRefusal, origin: Option<&str>, keep_alive: bool) -> Bytes {
    let status = refusal.status();
    let mut extra = cors_headers(origin);
    match refusal {
        HttpRefusal::Head(e) => {
            let body = json!({"error": e.to_string()}).to_string();
            response::json(status, &extra, keep_alive, &body)
        }
        HttpRefusal::Engine(e) => {
            let body = json!({"code": e.code(), "message": e.message()}).to_string();
            response::json(status, &extra, keep_alive, &body)
        }
        HttpRefusal::Capped(r) => {
            extra.push(("Retry-After", "1"));
            let body = json!({"error": r.reason(), "message": r.message()}).to_string();
            response::json(status, &extra, keep_alive, &body)
        }
        HttpRefusal::PayloadTooLarge => response::build(
            status,
            "text/plain",
            &extra,
            keep_alive,
            b"Payload Too Large",
        ),
        HttpRefusal::NotFound => {
            response::json(status, &extra, keep_alive, "{\"error\":\"not found\"}")
        }
    }
}

/// The CORS headers that let `origin` read a response: with credentials for a listed origin,
/// without for the wildcard.
pub fn cors_headers(origin: Option<&str>) -> Vec<(&'static str, &str)> {
    match origin {
        Some("*") => vec![("Access-Control-Allow-Origin", "*")],
        Some(o) => vec![
            ("Access-Control-Allow-Origin", o),
            ("Access-Control-Allow-Credentials", "true"),
        ],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &WireMessage) -> String {
        String::from_utf8(m.polling().to_vec()).unwrap()
    }

    #[test]
    fn server_notices_on_the_gateway_namespace() {
        assert_eq!(
            text(&slow_consumer()),
            "42/ws,[\"error\",{\"code\":\"SLOW_CONSUMER\",\"message\":\"outbound buffer over its limit; reconnect and resubscribe\"}]"
        );
        assert_eq!(
            text(&server_shutdown(1500)),
            "42/ws,[\"server.shutdown\",{\"reconnectAfterMs\":1500}]"
        );
    }

    #[test]
    fn refusals_carry_their_status_and_reason() {
        let r = http_refusal(&HttpRefusal::Capped(Refusal::HandshakeRate), None, false);
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 429 "), "{s}");
        assert!(s.contains("Retry-After: 1\r\n"));
        assert!(s.ends_with("{\"error\":\"HANDSHAKE_RATE\",\"message\":\"too many handshakes from this address; slow down\"}"));
        let r = http_refusal(
            &HttpRefusal::Engine(EngineError::UnknownSid),
            Some("http://a"),
            false,
        );
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 "));
        assert!(s.contains("Access-Control-Allow-Origin: http://a\r\n"));
        assert!(s.ends_with("{\"code\":1,\"message\":\"Session ID unknown\"}"));
    }

    #[test]
    fn connect_refusals() {
        let p = connect_error("/ws", ConnectRefusal::InvalidToken);
        let mut b = bytes::BytesMut::new();
        p.encode(&mut b);
        assert_eq!(
            &b[..],
            b"4/ws,{\"message\":\"Unauthorized: Invalid token\",\"data\":{\"code\":\"INVALID_TOKEN\"}}"
        );
    }
}
