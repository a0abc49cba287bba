//! Public channels and their rooms: validation of `subscribe` / `unsubscribe` payloads.

use crate::notice::{ApiError, ErrorCode};
use crate::room::{valid_interval, valid_symbol, Room, Symbols, View, DEPTHS, INTERVALS, SPEEDS};
use serde_json::{Map, Value};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Ticker,
    Orderbook,
    Trades,
    Klines,
    BookTicker,
}

impl Channel {
    pub fn parse(s: &str) -> Option<Channel> {
        Some(match s {
            "ticker" => Channel::Ticker,
            "orderbook" => Channel::Orderbook,
            "trades" => Channel::Trades,
            "klines" => Channel::Klines,
            "bookTicker" => Channel::BookTicker,
            _ => return None,
        })
    }

    /// The room of this channel for a (validated) symbol, interval for klines, and the depth
    /// and speed asked for: the default room when they are the defaults, else a view.
    pub fn room<'a>(
        self,
        symbol: &'a str,
        interval: Option<&'a str>,
        ask: Ask,
        defaults: &ViewDefaults,
    ) -> Room<'a> {
        let speed = |default: u64| ask.speed.filter(|s| u64::from(*s) != default);
        let interval = interval.unwrap_or_default();
        match self {
            Channel::Ticker => match (symbol, speed(defaults.throttle_ms)) {
                ("all", None) => Room::TickerAll,
                ("all", Some(speed)) => Room::View(View::TickerAll { speed }),
                (_, None) => Room::Ticker(symbol),
                (_, Some(speed)) => Room::View(View::Ticker { symbol, speed }),
            },
            Channel::Orderbook => {
                let depth = ask.depth.unwrap_or(defaults.book_depth);
                let speed = ask.speed.unwrap_or(defaults.book_speed_ms);
                if depth == defaults.book_depth && speed == defaults.book_speed_ms {
                    Room::Orderbook(symbol)
                } else {
                    Room::View(View::Book {
                        symbol,
                        depth,
                        speed,
                    })
                }
            }
            Channel::Trades => Room::Trades(symbol),
            Channel::Klines => match speed(defaults.throttle_ms) {
                None => Room::Klines(symbol, interval),
                Some(speed) => Room::View(View::Klines {
                    symbol,
                    interval,
                    speed,
                }),
            },
            Channel::BookTicker if symbol == "all" => Room::BookTickerAll,
            Channel::BookTicker => Room::BookTicker(symbol),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Ticker => "ticker",
            Channel::Orderbook => "orderbook",
            Channel::Trades => "trades",
            Channel::Klines => "klines",
            Channel::BookTicker => "bookTicker",
        }
    }
}

/// What a subscription gets when it asks for no depth or speed: the gateway's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewDefaults {
    /// `--orderbook-depth`, also the deepest a subscription may ask for.
    pub book_depth: u16,
    /// `--orderbook-conflation-ms`.
    pub book_speed_ms: u32,
    /// `--ticker-throttle-ms`, for tickers and klines.
    pub throttle_ms: u64,
}

impl Default for ViewDefaults {
    fn default() -> Self {
        ViewDefaults {
            book_depth: 100,
            book_speed_ms: 0,
            throttle_ms: 1000,
        }
    }
}

/// The depth and speed a subscription asked for, checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub depth: Option<u16>,
    pub speed: Option<u32>,
}

/// A validated subscription request: the channel and the rooms it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub channel: Channel,
    pub rooms: Vec<Arc<str>>,
    /// The request's `symbol` / `symbols` / `interval` fields, echoed in the answer.
    pub echo: Map<String, Value>,
}

/// Validates a public `subscribe` / `unsubscribe` payload. `allowed` are the symbols that may
/// be subscribed to (`None`: any well-formed one, for leaving rooms). A `symbols` list is
/// all-or-nothing.
pub fn parse_subscription(
    payload: Option<&Value>,
    allowed: Option<&Symbols>,
    defaults: &ViewDefaults,
) -> Result<SubscriptionRequest, ApiError> {
    let obj =
        match payload {
            Some(Value::Object(o)) => o,
            _ => return Err(ApiError::new(
                ErrorCode::BadRequest,
                "payload must be an object like {\"channel\":\"ticker\",\"symbol\":\"BTCUSDT\"}",
            )),
        };
    let channel = match obj.get("channel") {
        Some(Value::String(s)) => Channel::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidChannel,
                format!("unknown channel '{s}'; expected ticker, orderbook, trades, klines or bookTicker"),
            )
        })?,
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidChannel,
                "missing 'channel'",
            ))
        }
    };
    let mut echo = Map::new();
    let symbols: Vec<&str> = match (obj.get("symbol"), obj.get("symbols")) {
        (Some(Value::String(s)), None) => {
            echo.insert("symbol".into(), Value::String(s.clone()));
            vec![s.as_str()]
        }
        (None, Some(Value::Array(list))) => {
            if list.is_empty() || list.len() > 1024 {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "'symbols' must hold 1 to 1024 symbols",
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for v in list {
                match v {
                    Value::String(s) => out.push(s.as_str()),
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            "'symbols' must be an array of strings",
                        ))
                    }
                }
            }
            echo.insert("symbols".into(), Value::Array(list.clone()));
            out
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give either 'symbol' or 'symbols', not both",
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "'symbols' must be an array of strings",
            ))
        }
        (Some(_), None) => {
            return Err(ApiError::new(
                ErrorCode::InvalidSymbol,
                "'symbol' must be a string",
            ))
        }
        (None, None) => return Err(ApiError::new(ErrorCode::InvalidSymbol, "missing 'symbol'")),
    };
    for s in &symbols {
        if *s == "all" && matches!(channel, Channel::Ticker | Channel::BookTicker) {
            continue;
        }
        if !valid_symbol(s) {
            return Err(ApiError::new(
                ErrorCode::InvalidSymbol,
                format!("invalid symbol '{s}'"),
            ));
        }
        if allowed.is_some_and(|a| !a.allows(s)) {
            return Err(ApiError::new(
                ErrorCode::InvalidSymbol,
                format!("unknown symbol '{s}': the exchange does not list it"),
            ));
        }
    }
    let interval = if channel == Channel::Klines {
        match obj.get("interval") {
            Some(Value::String(i)) if valid_interval(i) => {
                echo.insert("interval".into(), Value::String(i.clone()));
                Some(i.as_str())
            }
            Some(Value::String(i)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidInterval,
                    format!(
                        "invalid interval '{i}'; expected one of {}",
                        INTERVALS.join(" ")
                    ),
                ))
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidInterval,
                    "klines need an 'interval'",
                ))
            }
        }
    } else {
        None
    };
    let ask = parse_ask(obj, channel, defaults, &mut echo)?;
    // A symbol named twice is one room, wherever the repeats are.
    let rooms: Vec<Arc<str>> = symbols
        .iter()
        .map(|s| channel.room(s, interval, ask, defaults).name())
        .collect::<indexmap::IndexSet<_>>()
        .into_iter()
        .collect();
    Ok(SubscriptionRequest {
        channel,
        rooms,
        echo,
    })
}

/// `depth` (order books: one of [`DEPTHS`], at most the configured depth) and `speed` (order
/// books, tickers, klines: one of [`SPEEDS`]), when given.
fn parse_ask(
    obj: &Map<String, Value>,
    channel: Channel,
    defaults: &ViewDefaults,
    echo: &mut Map<String, Value>,
) -> Result<Ask, ApiError> {
    let mut ask = Ask::default();
    if let Some(v) = obj.get("depth") {
        let depths: Vec<String> = DEPTHS
            .iter()
            .filter(|d| **d <= defaults.book_depth)
            .map(u16::to_string)
            .collect();
        if channel != Channel::Orderbook {
            return Err(ApiError::new(
                ErrorCode::InvalidDepth,
                format!("'depth' is for order books, not {}", channel.as_str()),
            ));
        }
        match v.as_u64().and_then(|d| u16::try_from(d).ok()) {
            Some(d) if DEPTHS.contains(&d) && d <= defaults.book_depth => ask.depth = Some(d),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidDepth,
                    format!("invalid depth {v}; expected one of {}", depths.join(", ")),
                ))
            }
        }
        echo.insert("depth".into(), v.clone());
    }
    if let Some(v) = obj.get("speed") {
        if matches!(channel, Channel::Trades | Channel::BookTicker) {
            return Err(ApiError::new(
                ErrorCode::InvalidSpeed,
                format!(
                    "'speed' is for order books, tickers and klines; {} are never held back",
                    channel.as_str()
                ),
            ));
        }
        match v.as_u64().and_then(|s| u32::try_from(s).ok()) {
            Some(s) if SPEEDS.contains(&s) => ask.speed = Some(s),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidSpeed,
                    format!("invalid speed {v}; expected 0 (every update), 100 or 1000 (ms)"),
                ))
            }
        }
        echo.insert("speed".into(), v.clone());
    }
    Ok(ask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(v: Value) -> ErrorCode {
        parse(v).unwrap_err().code
    }

    fn parse(v: Value) -> Result<SubscriptionRequest, ApiError> {
        parse_subscription(Some(&v), None, &ViewDefaults::default())
    }

    #[test]
    fn depth_and_speed_name_views_and_defaults_name_the_default_room() {
        let rooms = |v: Value| -> Vec<String> {
            parse(v)
                .unwrap()
                .rooms
                .iter()
                .map(|r| r.to_string())
                .collect()
        };
        assert_eq!(
            rooms(json!({"channel":"orderbook","symbol":"BTCUSDT","depth":5,"speed":100})),
            ["orderbook:BTCUSDT:5:100ms"]
        );
        assert_eq!(
            rooms(json!({"channel":"orderbook","symbol":"BTCUSDT","depth":100,"speed":0})),
            ["orderbook:BTCUSDT"]
        );
        assert_eq!(
            rooms(json!({"channel":"orderbook","symbol":"BTCUSDT","speed":1000})),
            ["orderbook:BTCUSDT:100:1000ms"]
        );
        assert_eq!(
            rooms(json!({"channel":"ticker","symbols":["BTCUSDT","all"],"speed":100})),
            ["ticker:BTCUSDT:100ms", "ticker:all:100ms"]
        );
        assert_eq!(
            rooms(json!({"channel":"ticker","symbol":"BTCUSDT","speed":1000})),
            ["ticker:BTCUSDT"]
        );
        assert_eq!(
            rooms(json!({"channel":"klines","symbol":"BTCUSDT","interval":"1m","speed":0})),
            ["klines:BTCUSDT:1m:0ms"]
        );
        for r in [
            "orderbook:BTCUSDT:5:100ms",
            "ticker:all:100ms",
            "klines:BTCUSDT:1m:0ms",
        ] {
            assert!(Room::parse(r).view().is_some(), "{r}");
        }
        let shallow = ViewDefaults {
            book_depth: 20,
            ..ViewDefaults::default()
        };
        let over = json!({"channel":"orderbook","symbol":"BTCUSDT","depth":50});
        assert_eq!(
            parse_subscription(Some(&over), None, &shallow)
                .unwrap_err()
                .code,
            ErrorCode::InvalidDepth
        );
        for bad in [
            json!({"channel":"orderbook","symbol":"BTCUSDT","depth":7}),
            json!({"channel":"orderbook","symbol":"BTCUSDT","depth":"5"}),
            json!({"channel":"orderbook","symbol":"BTCUSDT","depth":5.0}),
            json!({"channel":"ticker","symbol":"BTCUSDT","depth":5}),
        ] {
            assert_eq!(code(bad.clone()), ErrorCode::InvalidDepth, "{bad}");
        }
        for bad in [
            json!({"channel":"orderbook","symbol":"BTCUSDT","speed":50}),
            json!({"channel":"ticker","symbol":"BTCUSDT","speed":-1}),
            json!({"channel":"ticker","symbol":"BTCUSDT","speed":null}),
            json!({"channel":"trades","symbol":"BTCUSDT","speed":0}),
            json!({"channel":"bookTicker","symbol":"BTCUSDT","speed":100}),
        ] {
            assert_eq!(code(bad.clone()), ErrorCode::InvalidSpeed, "{bad}");
        }
    }

    #[test]
    fn builds_rooms() {
        let r = parse(json!({"channel":"klines","symbols":["BTCUSDT","ETHUSDT"],"interval":"1m"}))
            .unwrap();
        assert_eq!(
            r.rooms,
            vec![
                Arc::from("klines:BTCUSDT:1m"),
                Arc::from("klines:ETHUSDT:1m")
            ]
        );
        let r = parse(json!({"channel":"ticker","symbol":"all"})).unwrap();
        assert_eq!(r.rooms, vec![Arc::from("ticker:all")]);
        let r = parse(json!({"channel":"trades","symbols":["AB","CD","AB","CD","AB"]})).unwrap();
        assert_eq!(
            r.rooms,
            vec![Arc::from("trades:AB"), Arc::from("trades:CD")]
        );
        let r = parse(json!({"channel":"ticker","symbol":"all"})).unwrap();
        assert_eq!(r.rooms, vec![Arc::from("ticker:all")]);
    }

    #[test]
    fn error_codes() {
        assert_eq!(code(json!("x")), ErrorCode::BadRequest);
        assert_eq!(
            code(json!({"channel":"news","symbol":"BTCUSDT"})),
            ErrorCode::InvalidChannel
        );
        assert_eq!(code(json!({"symbol":"BTCUSDT"})), ErrorCode::InvalidChannel);
        assert_eq!(
            code(json!({"channel":"trades","symbol":"btc"})),
            ErrorCode::InvalidSymbol
        );
        assert_eq!(
            code(json!({"channel":"trades","symbol":"all"})),
            ErrorCode::InvalidSymbol
        );
        assert_eq!(code(json!({"channel":"trades"})), ErrorCode::InvalidSymbol);
        assert_eq!(
            code(json!({"channel":"trades","symbols":["BTCUSDT","x"]})),
            ErrorCode::InvalidSymbol
        );
        assert_eq!(
            code(json!({"channel":"trades","symbols":[]})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"channel":"klines","symbol":"BTCUSDT"})),
            ErrorCode::InvalidInterval
        );
        assert_eq!(
            code(json!({"channel":"klines","symbol":"BTCUSDT","interval":"2m"})),
            ErrorCode::InvalidInterval
        );
        let allowed = Symbols::new(&["BTCUSDT".to_string()], false);
        assert!(parse_subscription(
            Some(&json!({"channel":"trades","symbol":"ETHUSDT"})),
            Some(&allowed),
            &ViewDefaults::default()
        )
        .is_err());
    }
}
