//! Events the market takes in, as a backend sends them (contract §5), validated into typed
//! events. Everything an event is routed on is checked here, before anything of its batch is
//! published.

use crate::gateway::envelope::Payload;
use crate::ingest::raw;
use crate::market::book::BookUpdate;
use crate::room::{valid_interval, valid_symbol, INTERVALS};
use crate::room::{PrivateChannel, Room};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// A validated ingest event.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestEvent {
    Ticker {
        symbol: Arc<str>,
        data: Payload,
    },
    Trade {
        symbol: Arc<str>,
        data: Payload,
    },
    Kline {
        symbol: Arc<str>,
        interval: &'static str,
        open_time: Option<u64>,
        closed: bool,
        data: Payload,
    },
    Book {
        symbol: Arc<str>,
        update: BookUpdate,
    },
    /// `order.*`, `trade.executed`, `balance.*`, `deposit.*` for one user.
    Private {
        room: Arc<str>,
        event: String,
        data: Payload,
    },
    /// `{room, event, data}`.
    Manual {
        room: Arc<str>,
        event: String,
        data: Payload,
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

/// An event's top-level fields, as decoded JSON or as read from its raw text.
enum Top<'a> {
    Value(Map<String, Value>),
    /// The top-level members of an event's text, undecoded (see `ingest::raw`).
    Raw(&'a [raw::Member<'a>]),
}

/// An event's `data`, as decoded JSON or as its text.
enum Data<'a> {
    Value(Value),
    Raw(&'a str),
}

impl Top<'_> {
    fn has(&self, key: &str) -> bool {
        match self {
            Top::Value(m) => m.contains_key(key),
            Top::Raw(r) => raw::member(r, key).is_some(),
        }
    }

    fn str_field(&self, key: &str) -> Result<Cow<'_, str>, String> {
        match self {
            Top::Value(m) => match m.get(key) {
                Some(Value::String(s)) => Ok(Cow::Borrowed(s)),
                Some(_) => Err(format!("'{key}' must be a string")),
                None => Err(format!("missing '{key}'")),
            },
            Top::Raw(r) => match raw::member(r, key) {
                Some(text) => raw::string(text).ok_or_else(|| format!("'{key}' must be a string")),
                None => Err(format!("missing '{key}'")),
            },
        }
    }

    fn symbol(&self) -> Result<Arc<str>, String> {
        let s = self.str_field("symbol")?;
        if valid_symbol(&s) {
            Ok(Arc::from(&*s))
        } else {
            Err(format!("invalid symbol '{s}' (expected [A-Z0-9]{{2,20}})"))
        }
    }
}

impl Data<'_> {
    fn is_object(&self) -> bool {
        match self {
            Data::Value(v) => v.is_object(),
            Data::Raw(r) => r.starts_with('{'),
        }
    }

    /// A candle's `closed` and `openTime`.
    fn kline(&self) -> Result<(bool, Option<u64>), String> {
        const CLOSED: &str = "kline 'closed' must be true or false";
        const OPEN: &str = "kline 'openTime' must be a non-negative integer";
        if !self.is_object() {
            return Err("kline 'data' must be an object".into());
        }
        match self {
            Data::Value(v) => {
                let closed = match v.get("closed") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(CLOSED.into()),
                };
                let open_time = match v.get("openTime") {
                    None => None,
                    Some(t) => Some(t.as_u64().ok_or(OPEN)?),
                };
                Ok((closed, open_time))
            }
            Data::Raw(r) => {
                let m = raw::members(r).unwrap_or_default();
                let closed = match raw::member(&m, "closed") {
                    None => false,
                    Some("true") => true,
                    Some("false") => false,
                    Some(_) => return Err(CLOSED.into()),
                };
                let open_time = match raw::member(&m, "openTime") {
                    None => None,
                    Some(t) => Some(t.parse::<u64>().map_err(|_| OPEN)?),
                };
                Ok((closed, open_time))
            }
        }
    }

    fn book(&self) -> Result<BookUpdate, String> {
        match self {
            Data::Value(v) => BookUpdate::parse(v),
            Data::Raw(r) => BookUpdate::parse_raw(r),
        }
    }

    /// The data as it goes into frames: raw text passes through as it came, copied out of
    /// the body, since the market keeps it past this batch (a ticker's or candle's latest).
    fn into_payload(self) -> Payload {
        match self {
            Data::Value(v) => Payload::Value(v),
            Data::Raw(r) => Payload::Json(bytes::Bytes::copy_from_slice(r.as_bytes())),
        }
    }

    /// As `into_payload`, for data encoded into its frame within this batch and kept nowhere
    /// (trades, private events, broadcasts): a view of the body itself when there is one.
    fn into_passing_payload(self, body: Option<&bytes::Bytes>) -> Payload {
        match (&self, body) {
            (Data::Raw(r), Some(body)) => match slice_of(body, r.as_bytes()) {
                Some(shared) => Payload::Json(shared),
                None => self.into_payload(),
            },
            _ => self.into_payload(),
        }
    }
}

/// `part` as a view of `body`, when it lies within it.
fn slice_of(body: &bytes::Bytes, part: &[u8]) -> Option<bytes::Bytes> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= body.len()).then(|| body.slice(start..end))
}

/// Validates one event, taking its data without copying.
pub fn parse_event(ev: Value) -> Result<IngestEvent, String> {
    let Value::Object(mut obj) = ev else {
        return Err("event must be a JSON object".into());
    };
    let data = obj.remove("data").ok_or("missing 'data'")?;
    validate(&Top::Value(obj), Data::Value(data), None)
}

/// Validates one event from its JSON text, decoding only what it is routed on: the data of
/// trades, tickers, candles, private events and broadcasts goes into frames as it came.
pub fn parse_raw_event(ev: &str) -> Result<IngestEvent, String> {
    let mut members = Vec::new();
    let checked = crate::ingest::raw::check(ev.as_bytes(), &mut members)?;
    parse_checked_event_in(checked.fields(&members)?, None)
}

/// As `parse_raw_event`, for an event already checked as JSON, from its top-level members,
/// that is a part of `body`: data encoded within the batch is taken as a view of the body
/// instead of a copy.
pub fn parse_checked_event_in(
    fields: &[raw::Member<'_>],
    body: Option<&bytes::Bytes>,
) -> Result<IngestEvent, String> {
    let data = raw::member(fields, "data").ok_or("missing 'data'")?;
    validate(&Top::Raw(fields), Data::Raw(data), body)
}

fn validate(
    top: &Top<'_>,
    data: Data<'_>,
    body: Option<&bytes::Bytes>,
) -> Result<IngestEvent, String> {
    if top.has("room") || top.has("event") {
        let room = top.str_field("room")?;
        let event = top.str_field("event")?;
        if room.is_empty() || room.len() > 256 {
            return Err("'room' must be 1 to 256 characters".into());
        }
        if event.is_empty() || event.len() > 128 || RESERVED.contains(&&*event) {
            return Err(format!("'{event}' cannot be used as an event name"));
        }
        return Ok(IngestEvent::Manual {
            room: Arc::from(&*room),
            event: event.into_owned(),
            data: data.into_passing_payload(body),
        });
    }
    let kind = top.str_field("type")?;
    Ok(match &*kind {
        "ticker.update" => {
            if !data.is_object() {
                return Err("ticker 'data' must be an object".into());
            }
            IngestEvent::Ticker {
                symbol: top.symbol()?,
                data: data.into_payload(),
            }
        }
        "orderbook.update" => IngestEvent::Book {
            symbol: top.symbol()?,
            update: data.book()?,
        },
        "trade" => IngestEvent::Trade {
            symbol: top.symbol()?,
            data: data.into_passing_payload(body),
        },
        "kline.update" => {
            let symbol = top.symbol()?;
            let i = top.str_field("interval")?;
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
            let (closed, open_time) = data.kline()?;
            IngestEvent::Kline {
                symbol,
                interval,
                open_time,
                closed,
                data: data.into_payload(),
            }
        }
        other => {
            let Some(channel) = PrivateChannel::for_event(other) else {
                return Err(format!("unknown event type '{other}'"));
            };
            let user = top
                .str_field("userId")
                .map_err(|_| format!("private event '{other}' needs a string 'userId'"))?;
            if user.is_empty() || user.len() > 128 || user.contains(':') {
                return Err("'userId' must be 1 to 128 characters without ':'".into());
            }
            IngestEvent::Private {
                room: Room::User(&user, channel).name(),
                event: other.into(),
                data: data.into_passing_payload(body),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_events_nest_at_most_max_depth() {
        let event = |levels: usize| {
            format!(
                r#"{{"type":"trade","symbol":"BTCUSDT","data":{}"x"{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        let max = crate::ingest::parse::MAX_DEPTH;
        // The event's own object is one level.
        assert!(parse_raw_event(&event(max - 1)).is_ok());
        let e = parse_raw_event(&event(max)).unwrap_err();
        assert!(e.contains("nesting deeper"), "{e}");
        // Brackets inside strings are text, not nesting.
        let quoted = format!(
            r#"{{"type":"trade","symbol":"BTCUSDT","data":"{}"}}"#,
            "[".repeat(1000)
        );
        assert!(parse_raw_event(&quoted).is_ok());
    }

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
    fn raw_events_read_as_decoded_ones_and_keep_their_data_text() {
        let texts = [
            r#"{"type":"ticker.update","symbol":"BTCUSDT","data":{"p":"1.50","v":1e3}}"#,
            r#"{"type":"trade","symbol":"BTCUSDT","data":{"price":"45000.10","q":"0.00100"}}"#,
            r#"{"type":"kline.update","symbol":"ETHUSDT","interval":"1M","data":{"openTime":5,"closed":true}}"#,
            r#"{"type":"order.filled","userId":"u-1","data":{"id":"o\u00e9"}}"#,
            r#"{"room":"news","event":"notice","data":[1,2]}"#,
            r#"{"type":"orderbook.update","symbol":"BTCUSDT","data":{"type":"snapshot","bids":[["1","2"]],"asks":[],"lastUpdateId":3}}"#,
        ];
        for t in texts {
            let (a, b) = (
                parse_raw_event(t).unwrap(),
                parse_event(serde_json::from_str(t).unwrap()).unwrap(),
            );
            assert_eq!(a.kind(), b.kind(), "{t}");
            assert_eq!(a.symbol(), b.symbol(), "{t}");
            assert_eq!(a.sequenced_room(), b.sequenced_room(), "{t}");
        }
        // Data passes through as written: decimal strings, exponents and escapes included.
        let IngestEvent::Ticker { data, .. } = parse_raw_event(texts[0]).unwrap() else {
            panic!()
        };
        assert_eq!(
            data,
            Payload::Json(bytes::Bytes::from_static(br#"{"p":"1.50","v":1e3}"#))
        );
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
            let text = bad.to_string();
            assert_eq!(
                parse_raw_event(&text).unwrap_err(),
                parse_event(bad.clone()).unwrap_err(),
                "the same answer for {bad}"
            );
        }
        for bad in [
            r#"{"type":"kline.update","symbol":"BTCUSDT","interval":"1m","data":{"openTime":1.5}}"#,
            r#"{"type":"kline.update","symbol":"BTCUSDT","interval":"1m","data":{"closed":null}}"#,
            r#"{"type":"ticker.update","symbol":"BTCUSDT","data":[]}"#,
            r#"{"type":"trade","symbol":5,"data":{}}"#,
        ] {
            assert!(parse_raw_event(bad).is_err(), "{bad}");
        }
    }
}
