//! Public channels and their rooms: validation of `subscribe` / `unsubscribe` payloads.

use serde_json::{Map, Value};
use std::fmt;

pub const INTERVALS: [&str; 10] = ["1m", "3m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "1M"];

/// The error codes of the contract, as sent in `error` events and acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidChannel,
    InvalidSymbol,
    InvalidInterval,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Ticker,
    Orderbook,
    Trades,
    Klines,
}

impl Channel {
    pub fn parse(s: &str) -> Option<Channel> {
        Some(match s {
            "ticker" => Channel::Ticker,
            "orderbook" => Channel::Orderbook,
            "trades" => Channel::Trades,
            "klines" => Channel::Klines,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Ticker => "ticker",
            Channel::Orderbook => "orderbook",
            Channel::Trades => "trades",
            Channel::Klines => "klines",
        }
    }
}

/// `[A-Z0-9]{2,20}`.
pub fn valid_symbol(s: &str) -> bool {
    (2..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

pub fn valid_interval(s: &str) -> bool {
    INTERVALS.contains(&s)
}

/// A validated subscription request: the channel and the rooms it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub channel: Channel,
    pub rooms: Vec<String>,
    /// The request's `symbol` / `symbols` / `interval` fields, echoed in the answer.
    pub echo: Map<String, Value>,
}

/// Validates a public `subscribe` / `unsubscribe` payload. `allowed` is the configured symbol
/// list (empty: any well-formed symbol). A `symbols` list is all-or-nothing.
pub fn parse_subscription(
    payload: Option<&Value>,
    allowed: &[String],
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
                format!("unknown channel '{s}'; expected ticker, orderbook, trades or klines"),
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
        let is_all = *s == "all" && channel == Channel::Ticker;
        if !is_all && (!valid_symbol(s) || (!allowed.is_empty() && !allowed.iter().any(|a| a == s)))
        {
            return Err(ApiError::new(
                ErrorCode::InvalidSymbol,
                format!("invalid symbol '{s}'"),
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
    let mut rooms: Vec<String> = symbols
        .iter()
        .map(|s| match interval {
            Some(i) => format!("klines:{s}:{i}"),
            None => format!("{}:{s}", channel.as_str()),
        })
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
        parse_subscription(Some(&v), &[]).unwrap_err().code
    }

    #[test]
    fn builds_rooms() {
        let r = parse_subscription(
            Some(&json!({"channel":"klines","symbols":["BTCUSDT","ETHUSDT"],"interval":"1m"})),
            &[],
        )
        .unwrap();
        assert_eq!(r.rooms, vec!["klines:BTCUSDT:1m", "klines:ETHUSDT:1m"]);
        let r = parse_subscription(Some(&json!({"channel":"ticker","symbol":"all"})), &[]).unwrap();
        assert_eq!(r.rooms, vec!["ticker:all"]);
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
        let allowed = vec!["BTCUSDT".to_string()];
        assert!(parse_subscription(
            Some(&json!({"channel":"trades","symbol":"ETHUSDT"})),
            &allowed
        )
        .is_err());
    }
}
