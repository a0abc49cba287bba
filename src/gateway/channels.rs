//! Public channels and their rooms: validation of `subscribe` / `unsubscribe` payloads.

use crate::notice::{ApiError, ErrorCode};
use crate::room::{valid_interval, valid_symbol, Room, Symbols, INTERVALS};
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

    /// The room of this channel for a (validated) symbol, and interval for klines.
    pub fn room<'a>(self, symbol: &'a str, interval: Option<&'a str>) -> Room<'a> {
        match (self, interval) {
            (Channel::Ticker, _) if symbol == "all" => Room::TickerAll,
            (Channel::Ticker, _) => Room::Ticker(symbol),
            (Channel::Orderbook, _) => Room::Orderbook(symbol),
            (Channel::Trades, _) => Room::Trades(symbol),
            (Channel::Klines, i) => Room::Klines(symbol, i.unwrap_or_default()),
            (Channel::BookTicker, _) if symbol == "all" => Room::BookTickerAll,
            (Channel::BookTicker, _) => Room::BookTicker(symbol),
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
    let mut rooms: Vec<Arc<str>> = symbols
        .iter()
        .map(|s| channel.room(s, interval).name())
        .collect();
    rooms.dedup();
    Ok(SubscriptionRequest {
        channel,
        rooms,
        echo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(v: Value) -> ErrorCode {
        parse_subscription(Some(&v), None).unwrap_err().code
    }

    #[test]
    fn builds_rooms() {
        let r = parse_subscription(
            Some(&json!({"channel":"klines","symbols":["BTCUSDT","ETHUSDT"],"interval":"1m"})),
            None,
        )
        .unwrap();
        assert_eq!(
            r.rooms,
            vec![
                Arc::from("klines:BTCUSDT:1m"),
                Arc::from("klines:ETHUSDT:1m")
            ]
        );
        let r =
            parse_subscription(Some(&json!({"channel":"ticker","symbol":"all"})), None).unwrap();
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
            Some(&allowed)
        )
        .is_err());
    }
}
