//! Events the market takes in, as a backend sends them (contract §5), validated into typed
//! events. Everything an event is routed on is checked here, before anything of its batch is
//! published.

use crate::market::book::BookUpdate;
use crate::room::{valid_interval, valid_symbol, INTERVALS};
use crate::room::{PrivateChannel, Room};
use serde_json::{Map, Value};
use std::sync::Arc;

/// A validated ingest event.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestEvent {
    Ticker {
        symbol: Arc<str>,
        data: Value,
    },
    Trade {
        symbol: Arc<str>,
        data: Value,
    },
    Kline {
        symbol: Arc<str>,
        interval: &'static str,
        open_time: Option<u64>,
        closed: bool,
        data: Value,
    },
    Book {
        symbol: Arc<str>,
        update: BookUpdate,
    },
    /// `order.*`, `trade.executed`, `balance.*`, `deposit.*` for one user.
    Private {
        room: Arc<str>,
        event: String,
        data: Value,
    },
    /// `{room, event, data}`.
    Manual {
        room: Arc<str>,
        event: String,
        data: Value,
    },
}

impl IngestEvent {
    /// The symbol the event is about, if it is market data.
    pub fn symbol(&self) -> Option<&str> {
        match self {
            IngestEvent::Ticker { symbol, .. }
            | IngestEvent::Trade { symbol, .. }
            | IngestEvent::Kline { symbol, .. }
            | IngestEvent::Book { symbol, .. } => Some(symbol),
            IngestEvent::Private { .. } | IngestEvent::Manual { .. } => None,
        }
    }

    /// The lossless stream the event belongs to, whose messages are numbered (`seq`): a
    /// trades room, a private room, a manual broadcast's room (klines mix numbered and
    /// latest-only values, so they are not).
    pub fn sequenced_room(&self) -> Option<Arc<str>> {
        match self {
            IngestEvent::Trade { symbol, .. } => Some(crate::room::Room::Trades(symbol).name()),
            IngestEvent::Private { room, .. } | IngestEvent::Manual { room, .. } => {
                let kind = crate::room::Room::parse(room).kind();
                (kind != crate::room::RoomKind::Klines).then(|| room.clone())
            }
            _ => None,
        }
    }

    /// The event's type as ingested (`broadcast` for manual broadcasts), for metrics.
    pub fn kind(&self) -> &str {
        match self {
            IngestEvent::Ticker { .. } => "ticker.update",
            IngestEvent::Trade { .. } => "trade",
            IngestEvent::Kline { .. } => "kline.update",
            IngestEvent::Book { .. } => "orderbook.update",
            IngestEvent::Private { event, .. } => event,
            IngestEvent::Manual { .. } => "broadcast",
        }
    }
}

/// Event names socket.io reserves; a client library would treat them as its own.
const RESERVED: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

fn str_field<'a>(ev: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match ev.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("'{key}' must be a string")),
        None => Err(format!("missing '{key}'")),
    }
}

fn symbol(ev: &Map<String, Value>) -> Result<Arc<str>, String> {
    let s = str_field(ev, "symbol")?;
    if valid_symbol(s) {
        Ok(Arc::from(s))
    } else {
        Err(format!("invalid symbol '{s}' (expected [A-Z0-9]{{2,20}})"))
    }
}

/// Validates one event, taking its data without copying.
pub fn parse_event(ev: Value) -> Result<IngestEvent, String> {
    let Value::Object(mut obj) = ev else {
        return Err("event must be a JSON object".into());
    };
    let data = obj.remove("data").ok_or("missing 'data'")?;
    if obj.contains_key("room") || obj.contains_key("event") {
        let room = str_field(&obj, "room")?;
        let event = str_field(&obj, "event")?;
        if room.is_empty() || room.len() > 256 {
            return Err("'room' must be 1 to 256 characters".into());
        }
        if event.is_empty() || event.len() > 128 || RESERVED.contains(&event) {
            return Err(format!("'{event}' cannot be used as an event name"));
        }
        return Ok(IngestEvent::Manual {
            room: Arc::from(room),
            event: event.into(),
            data,
        });
    }
    let kind = str_field(&obj, "type")?;
    Ok(match kind {
        "ticker.update" => {
            if !data.is_object() {
                return Err("ticker 'data' must be an object".into());
            }
            IngestEvent::Ticker {
                symbol: symbol(&obj)?,
                data,
            }
        }
        "orderbook.update" => IngestEvent::Book {
            symbol: symbol(&obj)?,
            update: BookUpdate::parse(&data)?,
        },
        "trade" => IngestEvent::Trade {
            symbol: symbol(&obj)?,
            data,
        },
        "kline.update" => {
            let symbol = symbol(&obj)?;
            let i = str_field(&obj, "interval")?;
            let Some(interval) = INTERVALS
                .iter()
                .copied()
                .find(|x| *x == i)
                .filter(|x| valid_interval(x))
            else {
                return Err(format!(
                    "invalid interval '{i}' (expected one of {})",
                    INTERVALS.join(" ")
                ));
            };
            let d = data.as_object().ok_or("kline 'data' must be an object")?;
            let closed = match d.get("closed") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err("kline 'closed' must be true or false".into()),
            };
            let open_time = match d.get("openTime") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or("kline 'openTime' must be a non-negative integer")?,
                ),
            };
            IngestEvent::Kline {
                symbol,
                interval,
                open_time,
                closed,
                data,
            }
        }
        other => {
            let Some(channel) = PrivateChannel::for_event(other) else {
                return Err(format!("unknown event type '{other}'"));
            };
            let user = str_field(&obj, "userId")
                .map_err(|_| format!("private event '{other}' needs a string 'userId'"))?;
            if user.is_empty() || user.len() > 128 || user.contains(':') {
                return Err("'userId' must be 1 to 128 characters without ':'".into());
            }
            IngestEvent::Private {
                room: Room::User(user, channel).name(),
                event: other.into(),
                data,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_each_event() {
        assert!(matches!(
            parse_event(json!({"type":"ticker.update","symbol":"BTCUSDT","data":{"p":"1"}})),
            Ok(IngestEvent::Ticker { .. })
        ));
        let k = parse_event(json!({"type":"kline.update","symbol":"ETHUSDT","interval":"1M","data":{"openTime":5,"closed":true}})).unwrap();
        assert!(matches!(
            k,
            IngestEvent::Kline {
                interval: "1M",
                open_time: Some(5),
                closed: true,
                ..
            }
        ));
        let p = parse_event(json!({"type":"order.filled","userId":"u-1","data":{}})).unwrap();
        assert!(matches!(p, IngestEvent::Private { ref room, .. } if &**room == "user:u-1:orders"));
        let p = parse_event(json!({"type":"trade.executed","userId":"u-1","data":{}})).unwrap();
        assert!(matches!(p, IngestEvent::Private { ref room, .. } if &**room == "user:u-1:trades"));
        let m = parse_event(json!({"room":"ticker:BTCUSDT","event":"notice","data":1})).unwrap();
        assert!(matches!(m, IngestEvent::Manual { ref event, .. } if event == "notice"));
    }

    #[test]
    fn refuses_bad_events() {
        for bad in [
            json!([]),
            json!({"type":"ticker.update","symbol":"btc","data":{}}),
            json!({"type":"ticker.update","symbol":"BTCUSDT"}),
            json!({"type":"ticker.update","symbol":"BTCUSDT","data":5}),
            json!({"type":"kline.update","symbol":"BTCUSDT","interval":"2m","data":{}}),
            json!({"type":"kline.update","symbol":"BTCUSDT","interval":"1m","data":{"closed":"yes"}}),
            json!({"type":"orderbook.update","symbol":"BTCUSDT","data":{"type":"delta","bids":[["1","x"]],"firstUpdateId":1,"lastUpdateId":1}}),
            json!({"type":"order.filled","data":{}}),
            json!({"type":"trade.weird","userId":"u","data":{}}),
            json!({"type":"nope","symbol":"BTCUSDT","data":{}}),
            json!({"room":"x","event":"disconnect","data":{}}),
            json!({"room":"","event":"x","data":{}}),
            json!({"room":"x","data":{}}),
        ] {
            assert!(parse_event(bad.clone()).is_err(), "{bad}");
        }
    }
}
