//! The client → server API of namespace `/ws` (contract §3), as a pure function from one
//! event to the effects it has: emits, acks and room changes. The shard applies them.

use super::channels::{parse_subscription, ViewDefaults};
use crate::auth::{Authenticator, Identity};
use crate::notice;
use crate::notice::{ApiError, ErrorCode};
use crate::room::{PrivateChannel, Room, Symbols};
use indexmap::IndexSet;
use serde_json::{json, Map, Value};
use smallvec::SmallVec;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Symbols clients may subscribe to.
    pub symbols: Arc<Symbols>,
    pub max_subscriptions: usize,
    /// JWT verification; without it every connection is anonymous.
    pub auth: Option<Arc<Authenticator>>,
    /// How long before a token's expiry the client is told (`TOKEN_EXPIRING`), in ms.
    pub token_notice_ms: u64,
    /// Client events per second per connection (token bucket), and the burst allowed.
    pub message_rate: f64,
    pub message_burst: f64,
    /// Offer connection state recovery on `/ws` (a `pid` in the CONNECT answer).
    pub recovery: bool,
    /// The depth and speed of a subscription that names none.
    pub views: ViewDefaults,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            symbols: Arc::new(Symbols::any()),
            max_subscriptions: 1024,
            auth: None,
            token_notice_ms: 60_000,
            message_rate: 50.0,
            recovery: false,
            message_burst: 100.0,
            views: ViewDefaults::default(),
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
    /// Send a fresh snapshot of this order book room (`reason: "request"`).
    Resync(Arc<str>),
}

pub type Effects = SmallVec<[Effect; 4]>;

/// Whether the rooms a subscription adds may be joined (the gateway's room and view caps),
/// or why not.
pub type AdmitRooms<'a> = dyn FnMut(&[Arc<str>]) -> Result<(), ApiError> + 'a;

/// A `/ws` socket's own state: the rooms it is in and who it is.
#[derive(Debug, Default)]
pub struct GatewaySocket {
    pub rooms: IndexSet<Arc<str>>,
    pub identity: Option<Identity>,
    /// `TOKEN_EXPIRING` was sent for the current token.
    pub notice_sent: bool,
    /// The token expired unrefreshed: private channels are closed until `auth`.
    pub expired: bool,
    /// `resync` requests: each one costs a whole snapshot to send.
    pub resyncs: Option<crate::limits::bucket::TokenBucket>,
}

/// Order book snapshots a connection may ask for per second, and the burst allowed.
pub const RESYNC_RATE: f64 = 1.0;
pub const RESYNC_BURST: f64 = 3.0;

impl GatewaySocket {
    pub fn new(identity: Option<Identity>) -> GatewaySocket {
        GatewaySocket {
            identity,
            ..GatewaySocket::default()
        }
    }

    /// When this socket next needs `on_tick`: the expiry notice, then the expiry itself.
    pub fn next_deadline(&self, settings: &GatewaySettings) -> Option<u64> {
        let id = self.identity.as_ref().filter(|_| !self.expired)?;
        let exp = id.expires_at.saturating_mul(1000);
        Some(if self.notice_sent {
            exp
        } else {
            exp.saturating_sub(settings.token_notice_ms)
        })
    }

    /// Token lifetime events due at `now_ms`.
    pub fn on_tick(&mut self, settings: &GatewaySettings, now_ms: u64) -> Effects {
        let mut fx = Effects::new();
        let Some(id) = self.identity.as_ref().filter(|_| !self.expired) else {
            return fx;
        };
        let exp = id.expires_at.saturating_mul(1000);
        if !self.notice_sent
            && now_ms >= exp.saturating_sub(settings.token_notice_ms)
            && now_ms < exp
        {
            self.notice_sent = true;
            fx.push(Effect::Emit(notice::token_expiring(exp)));
        }
        if now_ms >= exp {
            self.expired = true;
            self.notice_sent = true;
            let private: Vec<Arc<str>> = self
                .rooms
                .iter()
                .filter(|r| Room::parse(r).is_private())
                .cloned()
                .collect();
            for room in private {
                self.rooms.swap_remove(&room);
                fx.push(Effect::Leave(room));
            }
            fx.push(Effect::Emit(notice::token_expired()));
        }
        fx
    }
}

pub fn connected(socket_id: &str, identity: Option<&Identity>, now_ms: u64) -> Value {
    json!(["connected", {
        "socketId": socket_id,
        "userId": identity.map(|i| Value::String(i.user_id.to_string())).unwrap_or(Value::Null),
        "authenticated": identity.is_some(),
        "serverTime": now_ms,
    }])
}

/// Handles one event sent on `/ws`. `args` excludes the event name.
/// `admit_rooms` says whether the rooms a subscription adds may be joined (the gateway's
/// room and view caps), or why not.
pub fn on_event(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    name: &str,
    args: &[Value],
    ack: Option<u64>,
    now_ms: u64,
    admit_rooms: &mut AdmitRooms<'_>,
) -> Effects {
    let payload = args.first();
    let mut fx = Effects::new();
    let result = match name {
        "subscribe" => subscribe(settings, socket, payload, admit_rooms, &mut fx),
        "unsubscribe" => unsubscribe(settings, socket, payload, &mut fx),
        "subscribe.private" => subscribe_private(settings, socket, payload, admit_rooms, &mut fx),
        "unsubscribe.private" => unsubscribe_private(socket, payload, &mut fx),
        "ping" => Ok(("pong", obj([("timestamp", json!(now_ms))]))),
        "resync" => resync(settings, socket, payload, now_ms, &mut fx),
        "auth" => refresh(settings, socket, payload, now_ms),
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
        (Err(e), Some(id)) => fx.push(Effect::Ack(id, notice::api_error_ack_args(&e))),
        (Err(e), None) => fx.push(Effect::Emit(notice::api_error_event_args(
            &e,
            payload.cloned().unwrap_or(Value::Null),
        ))),
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
    admit_rooms: &mut AdmitRooms<'_>,
    fx: &mut Effects,
) -> Answer {
    let req = parse_subscription(payload, Some(&settings.symbols), &settings.views)?;
    let new: Vec<Arc<str>> = req
        .rooms
        .iter()
        .filter(|r| !socket.rooms.contains(&***r))
        .cloned()
        .collect();
    if socket.rooms.len() + new.len() > settings.max_subscriptions {
        return Err(ApiError::new(
            ErrorCode::SubscriptionLimit,
            format!(
                "at most {} subscriptions per connection",
                settings.max_subscriptions
            ),
        ));
    }
    admit_rooms(&new)?;
    for room in &req.rooms {
        if !socket.rooms.contains(&**room) {
            socket.rooms.insert(room.clone());
            fx.push(Effect::Join(room.clone()));
        }
    }
    Ok(("subscribed", answer(req)))
}

/// `resync {channel: "orderbook", symbol}`: a fresh snapshot of a book the socket follows,
/// chained to the deltas after it, at most `RESYNC_RATE` per second.
fn resync(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    payload: Option<&Value>,
    now_ms: u64,
    fx: &mut Effects,
) -> Answer {
    let req = parse_subscription(payload, None, &settings.views)?;
    let room = match req.rooms.as_slice() {
        [room] => room.clone(),
        _ => return Err(ApiError::new(
            ErrorCode::BadRequest,
            "resync one order book at a time: {\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\"}",
        )),
    };
    if !matches!(
        Room::parse(&room),
        Room::Orderbook(_) | Room::View(crate::room::View::Book { .. })
    ) {
        return Err(ApiError::new(
            ErrorCode::InvalidChannel,
            "only order books resync: {\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\"}",
        ));
    }
    if !socket.rooms.contains(&*room) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("not subscribed to {room}"),
        ));
    }
    let bucket = socket.resyncs.get_or_insert_with(|| {
        crate::limits::bucket::TokenBucket::new(RESYNC_RATE, RESYNC_BURST, now_ms)
    });
    if !bucket.take(now_ms) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("at most {RESYNC_RATE} resync per second (burst {RESYNC_BURST})"),
        ));
    }
    fx.push(Effect::Resync(room));
    Ok(("resynced", answer(req)))
}

fn unsubscribe(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    payload: Option<&Value>,
    fx: &mut Effects,
) -> Answer {
    let req = parse_subscription(payload, None, &settings.views)?;
    for room in &req.rooms {
        if let Some(room) = socket.rooms.swap_take(&**room) {
            fx.push(Effect::Leave(room));
        }
    }
    Ok(("unsubscribed", answer(req)))
}

/// The room a private channel maps to for this socket's user: derived from the token, never
/// from client input.
fn private_room(
    socket: &GatewaySocket,
    payload: Option<&Value>,
) -> Result<(&'static str, Arc<str>), ApiError> {
    let channel = payload
        .and_then(|p| p.get("channel"))
        .and_then(Value::as_str);
    let channel = match channel {
        Some(name) => PrivateChannel::parse_channel(name).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidChannel, format!("unknown private channel '{name}'; expected user.orders, user.trades, user.balances or user.deposits"))
        })?,
        None => return Err(ApiError::new(ErrorCode::InvalidChannel, "missing 'channel'")),
    };
    let Some(id) = &socket.identity else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "private channels need a connection authenticated with a token",
        ));
    };
    if socket.expired {
        return Err(ApiError::new(
            ErrorCode::TokenExpired,
            "the token expired; send 'auth' with a fresh token",
        ));
    }
    Ok((
        channel.channel_name(),
        Room::User(&id.user_id, channel).name(),
    ))
}

fn subscribe_private(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    payload: Option<&Value>,
    admit_rooms: &mut AdmitRooms<'_>,
    fx: &mut Effects,
) -> Answer {
    let (channel, room) = private_room(socket, payload)?;
    if !socket.rooms.contains(&room) {
        if socket.rooms.len() >= settings.max_subscriptions {
            return Err(ApiError::new(
                ErrorCode::SubscriptionLimit,
                format!(
                    "at most {} subscriptions per connection",
                    settings.max_subscriptions
                ),
            ));
        }
        admit_rooms(std::slice::from_ref(&room))?;
        socket.rooms.insert(room.clone());
        fx.push(Effect::Join(room.clone()));
    }
    Ok((
        "subscribed",
        obj([("channel", json!(channel)), ("rooms", json!([&*room]))]),
    ))
}

fn unsubscribe_private(
    socket: &mut GatewaySocket,
    payload: Option<&Value>,
    fx: &mut Effects,
) -> Answer {
    let (channel, room) = private_room(socket, payload)?;
    if let Some(room) = socket.rooms.swap_take(&room) {
        fx.push(Effect::Leave(room));
    }
    Ok((
        "unsubscribed",
        obj([("channel", json!(channel)), ("rooms", json!([&*room]))]),
    ))
}

/// In-band token refresh: same user only.
fn refresh(
    settings: &GatewaySettings,
    socket: &mut GatewaySocket,
    payload: Option<&Value>,
    now_ms: u64,
) -> Answer {
    let Some(auth) = &settings.auth else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "authentication is not configured on this gateway",
        ));
    };
    let Some(current) = &socket.identity else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "connect with a token to use private channels",
        ));
    };
    let Some(token) = payload.and_then(|p| p.get("token")).and_then(Value::as_str) else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "payload must be {\"token\": \"...\"}",
        ));
    };
    let fresh = auth
        .verify(token, now_ms / 1000)
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "Invalid token"))?;
    if fresh.user_id != current.user_id {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the token is for another user",
        ));
    }
    let expires_at = fresh.expires_at.saturating_mul(1000);
    socket.identity = Some(fresh);
    socket.notice_sent = false;
    socket.expired = false;
    Ok(("authenticated", obj([("expiresAt", json!(expires_at))])))
}

fn answer(req: super::channels::SubscriptionRequest) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("channel".into(), Value::String(req.channel.as_str().into()));
    m.insert(
        "rooms".into(),
        Value::Array(req.rooms.iter().map(|r| Value::from(&**r)).collect()),
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
        let fx = on_event(&s, &mut sock, "subscribe", &p, None, 1, &mut |_| Ok(()));
        assert_eq!(fx[0], Effect::Join(Arc::from("trades:BTCUSDT")));
        assert_eq!(
            fx[1],
            Effect::Emit(
                json!(["subscribed", {"channel":"trades","rooms":["trades:BTCUSDT"],"symbol":"BTCUSDT"}])
            )
        );
        let fx = on_event(&s, &mut sock, "subscribe", &p, Some(7), 1, &mut |_| Ok(()));
        assert_eq!(fx.len(), 1, "already joined: only the ack");
        assert_eq!(
            fx[0],
            Effect::Ack(
                7,
                json!([{"ok":true,"channel":"trades","rooms":["trades:BTCUSDT"],"symbol":"BTCUSDT"}])
            )
        );
        let fx = on_event(&s, &mut sock, "unsubscribe", &p, None, 1, &mut |_| Ok(()));
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
            &mut |_| Ok(()),
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
            &mut |_| Ok(()),
        );
        assert!(
            matches!(&fx[0], Effect::Emit(v) if v[1]["code"] == "UNAUTHORIZED" && v[1]["request"]["channel"] == "user.orders")
        );
        let fx = on_event(&s, &mut sock, "ping", &[], Some(3), 9, &mut |_| Ok(()));
        assert_eq!(fx[0], Effect::Ack(3, json!([{"ok":true,"timestamp":9}])));
    }
}
