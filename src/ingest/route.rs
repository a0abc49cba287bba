//! Validation of ingested events and their mapping to rooms and client event names
//! (contract §5). Everything a route depends on is checked before anything is published.

use crate::gateway::channels::{valid_interval, valid_symbol, INTERVALS};
use serde_json::Value;
use smallvec::{smallvec, SmallVec};

/// One client emit an event turns into.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub room: String,
    pub event: String,
    pub data: Value,
}

impl Route {
    /// Rooms whose latest value a new subscriber receives at once.
    pub fn retained(&self) -> bool {
        matches!(
            self.event.as_str(),
            "ticker.update" | "tickers.update" | "kline.update"
        )
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

fn str_field<'a>(ev: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match ev.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("'{key}' must be a string")),
        None => Err(format!("missing '{key}'")),
    }
}

fn symbol(ev: &serde_json::Map<String, Value>) -> Result<&str, String> {
    let s = str_field(ev, "symbol")?;
    if valid_symbol(s) {
        Ok(s)
    } else {
        Err(format!("invalid symbol '{s}' (expected [A-Z0-9]{{2,20}})"))
    }
}

fn private_room(kind: &str) -> Option<&'static str> {
    let (prefix, name) = kind.split_once('.')?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    match (prefix, name) {
        ("order", _) => Some("orders"),
        ("trade", "executed") => Some("trades"),
        ("balance", _) => Some("balances"),
        ("deposit", _) => Some("deposits"),
        _ => None,
    }
}

/// The emits one ingested event produces, or why it is refused.
pub fn route(ev: &Value) -> Result<SmallVec<[Route; 2]>, String> {
    let Value::Object(obj) = ev else {
        return Err("event must be a JSON object".into());
    };
    let data = obj.get("data").cloned().ok_or("missing 'data'")?;
    if obj.contains_key("room") || obj.contains_key("event") {
        let room = str_field(obj, "room")?;
        let event = str_field(obj, "event")?;
        if room.is_empty() || room.len() > 256 {
            return Err("'room' must be 1 to 256 characters".into());
        }
        if event.is_empty() || event.len() > 128 || RESERVED.contains(&event) {
            return Err(format!("'{event}' cannot be used as an event name"));
        }
        return Ok(smallvec![Route {
            room: room.into(),
            event: event.into(),
            data
        }]);
    }
    let kind = str_field(obj, "type")?;
    Ok(match kind {
        "ticker.update" => {
            let s = symbol(obj)?;
            smallvec![
                Route {
                    room: format!("ticker:{s}"),
                    event: kind.into(),
                    data: data.clone()
                },
                Route {
                    room: "ticker:all".into(),
                    event: "tickers.update".into(),
                    data: Value::Array(vec![data])
                },
            ]
        }
        "orderbook.update" => {
            let s = symbol(obj)?;
            if !data.is_object() {
                return Err("orderbook 'data' must be an object".into());
            }
            smallvec![Route {
                room: format!("orderbook:{s}"),
                event: kind.into(),
                data
            }]
        }
        "trade" => {
            let s = symbol(obj)?;
            smallvec![Route {
                room: format!("trades:{s}"),
                event: kind.into(),
                data
            }]
        }
        "kline.update" => {
            let s = symbol(obj)?;
            let i = str_field(obj, "interval")?;
            if !valid_interval(i) {
                return Err(format!(
                    "invalid interval '{i}' (expected one of {})",
                    INTERVALS.join(" ")
                ));
            }
            smallvec![Route {
                room: format!("klines:{s}:{i}"),
                event: kind.into(),
                data
            }]
        }
        other => {
            let Some(suffix) = private_room(other) else {
                return Err(format!("unknown event type '{other}'"));
            };
            let user = str_field(obj, "userId")
                .map_err(|_| format!("private event '{other}' needs a string 'userId'"))?;
            if user.is_empty() || user.len() > 128 || user.contains(':') {
                return Err("'userId' must be 1 to 128 characters without ':'".into());
            }
            smallvec![Route {
                room: format!("user:{user}:{suffix}"),
                event: other.into(),
                data
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_each_type() {
        let r =
            route(&json!({"type":"ticker.update","symbol":"BTCUSDT","data":{"p":"1"}})).unwrap();
        assert_eq!(r[0].room, "ticker:BTCUSDT");
        assert_eq!(
            (r[1].room.as_str(), r[1].event.as_str()),
            ("ticker:all", "tickers.update")
        );
        assert_eq!(r[1].data, json!([{"p":"1"}]));
        let r = route(&json!({"type":"kline.update","symbol":"ETHUSDT","interval":"1M","data":{}}))
            .unwrap();
        assert_eq!(r[0].room, "klines:ETHUSDT:1M");
        let r = route(&json!({"type":"order.filled","userId":"u-1","data":{}})).unwrap();
        assert_eq!(r[0].room, "user:u-1:orders");
        let r = route(&json!({"type":"trade.executed","userId":"u-1","data":{}})).unwrap();
        assert_eq!(r[0].room, "user:u-1:trades");
        let r = route(&json!({"room":"ticker:BTCUSDT","event":"notice","data":1})).unwrap();
        assert_eq!(
            (r[0].room.as_str(), r[0].event.as_str()),
            ("ticker:BTCUSDT", "notice")
        );
    }

    #[test]
    fn refuses_bad_events() {
        for bad in [
            json!([]),
            json!({"type":"ticker.update","symbol":"btc","data":{}}),
            json!({"type":"ticker.update","symbol":"BTCUSDT"}),
            json!({"type":"kline.update","symbol":"BTCUSDT","interval":"2m","data":{}}),
            json!({"type":"order.filled","data":{}}),
            json!({"type":"trade.weird","userId":"u","data":{}}),
            json!({"type":"nope","symbol":"BTCUSDT","data":{}}),
            json!({"room":"x","event":"disconnect","data":{}}),
            json!({"room":"","event":"x","data":{}}),
            json!({"room":"x","data":{}}),
        ] {
            assert!(route(&bad).is_err(), "{bad}");
        }
    }
}
