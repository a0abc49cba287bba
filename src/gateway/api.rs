//! The client → server API of namespace `/ws` (contract §3), as a pure function from one
//! event to the effects it has: emits, acks and room changes. The shard applies them.

use super::channels::{parse_subscription, ApiError, ErrorCode};
use indexmap::IndexSet;
use serde_json::{json, Map, Value};
use smallvec::SmallVec;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Symbols clients may subscribe to; empty means any well-formed symbol.
    pub symbols: Vec<String>,
    pub max_subscriptions: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            symbols: Vec::new(),
            max_subscriptions: 1024,
        }
    }
}

/// What one client event asks the shard to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Emit an event: the arguments array, event name first.
    Emit(Value),
    Ack(u64, Value),
    Join(Arc<str>),
    Leave(Arc<str>),
}

pub type Effects = SmallVec<[Effect; 4]>;

/// A `/ws` socket's own state: the rooms it is in.
#[derive(Debug, Default)]
pub struct GatewaySocket {
    pub rooms: IndexSet<Arc<str>>,
}

pub fn connected(socket_id: &str, now_ms: u64) -> Value {
    json!(["connected", {
        "socketId": socket_id,
        "userId": Value::Null,
        "authenticated": false,
        "serverTime": now_ms,
    }])
}

/// Handles one event sent on `/ws`. `args` excludes the event name.
pub fn on_event(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    name: &str,
    args: &[Value],
    ack: Option<u64>,
    now_ms: u64,
) -> Effects {
    let payload = args.first();
    let mut fx = Effects::new();
    let result = match name {
        "subscribe" => subscribe(settings, socket, payload, &mut fx),
        "unsubscribe" => unsubscribe(socket, payload, &mut fx),
        "subscribe.private" | "unsubscribe.private" => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "private channels need an authenticated connection",
        )),
        "ping" => Ok(("pong", obj([("timestamp", json!(now_ms))]))),
        "auth" => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "authentication is not configured on this gateway",
        )),
        other => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("unknown event '{other}'"),
        )),
    };
    match (result, ack) {
        (Ok((_, body)), Some(id)) => {
            let mut m = Map::new();
            m.insert("ok".into(), Value::Bool(true));
            m.extend(body);
            fx.push(Effect::Ack(id, Value::Array(vec![Value::Object(m)])));
        }
        (Ok((event, body)), None) => fx.push(Effect::Emit(json!([event, Value::Object(body)]))),
        (Err(e), Some(id)) => fx.push(Effect::Ack(
            id,
            json!([{"ok": false, "error": {"code": e.code.as_str(), "message": e.message}}]),
        )),
        (Err(e), None) => fx.push(Effect::Emit(json!(["error", {
            "code": e.code.as_str(),
            "message": e.message,
            "request": payload.cloned().unwrap_or(Value::Null),
        }]))),
    }
    fx
}

fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

type Answer = Result<(&'static str, Map<String, Value>), ApiError>;

fn subscribe(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    payload: Option<&Value>,
    fx: &mut Effects,
) -> Answer {
    let req = parse_subscription(payload, &settings.symbols)?;
    let new = req
        .rooms
        .iter()
        .filter(|r| !socket.rooms.contains(r.as_str()))
        .count();
    if socket.rooms.len() + new > settings.max_subscriptions {
        return Err(ApiError::new(
            ErrorCode::SubscriptionLimit,
            format!(
                "at most {} subscriptions per connection",
                settings.max_subscriptions
            ),
        ));
    }
    for room in &req.rooms {
        if !socket.rooms.contains(room.as_str()) {
            let room: Arc<str> = Arc::from(room.as_str());
            socket.rooms.insert(room.clone());
            fx.push(Effect::Join(room));
        }
    }
    Ok(("subscribed", answer(req)))
}

fn unsubscribe(socket: &mut GatewaySocket, payload: Option<&Value>, fx: &mut Effects) -> Answer {
    let req = parse_subscription(payload, &[])?;
    for room in &req.rooms {
        if let Some(room) = socket.rooms.swap_take(room.as_str()) {
            fx.push(Effect::Leave(room));
        }
    }
    Ok(("unsubscribed", answer(req)))
}

fn answer(req: super::channels::SubscriptionRequest) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("channel".into(), Value::String(req.channel.as_str().into()));
    m.insert(
        "rooms".into(),
        Value::Array(req.rooms.into_iter().map(Value::String).collect()),
    );
    m.extend(req.echo);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_joins_once_and_answers() {
        let s = GatewaySettings::default();
        let mut sock = GatewaySocket::default();
        let p = [json!({"channel":"trades","symbol":"BTCUSDT"})];
        let fx = on_event(&s, &mut sock, "subscribe", &p, None, 1);
        assert_eq!(fx[0], Effect::Join(Arc::from("trades:BTCUSDT")));
        assert_eq!(
            fx[1],
            Effect::Emit(
                json!(["subscribed", {"channel":"trades","rooms":["trades:BTCUSDT"],"symbol":"BTCUSDT"}])
            )
        );
        let fx = on_event(&s, &mut sock, "subscribe", &p, Some(7), 1);
        assert_eq!(fx.len(), 1, "already joined: only the ack");
        assert_eq!(
            fx[0],
            Effect::Ack(
                7,
                json!([{"ok":true,"channel":"trades","rooms":["trades:BTCUSDT"],"symbol":"BTCUSDT"}])
            )
        );
        let fx = on_event(&s, &mut sock, "unsubscribe", &p, None, 1);
        assert_eq!(fx[0], Effect::Leave(Arc::from("trades:BTCUSDT")));
        assert!(sock.rooms.is_empty());
    }

    #[test]
    fn errors_and_limits() {
        let s = GatewaySettings {
            max_subscriptions: 1,
            ..Default::default()
        };
        let mut sock = GatewaySocket::default();
        let fx = on_event(
            &s,
            &mut sock,
            "subscribe",
            &[json!({"channel":"trades","symbols":["AAA","BBB"]})],
            Some(1),
            1,
        );
        assert_eq!(
            fx[0],
            Effect::Ack(
                1,
                json!([{"ok":false,"error":{"code":"SUBSCRIPTION_LIMIT","message":"at most 1 subscriptions per connection"}}])
            )
        );
        let fx = on_event(
            &s,
            &mut sock,
            "subscribe.private",
            &[json!({"channel":"user.orders"})],
            None,
            1,
        );
        assert!(
            matches!(&fx[0], Effect::Emit(v) if v[1]["code"] == "UNAUTHORIZED" && v[1]["request"]["channel"] == "user.orders")
        );
        let fx = on_event(&s, &mut sock, "ping", &[], Some(3), 9);
        assert_eq!(fx[0], Effect::Ack(3, json!([{"ok":true,"timestamp":9}])));
    }
}
