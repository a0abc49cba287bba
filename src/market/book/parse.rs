//! Backend order book updates, checked level by level into exact decimals.

use super::{BookUpdate, Level};
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;

impl BookUpdate {
    /// Parses the `data` of an `orderbook.update` ingest event.
    pub fn parse(data: &Value) -> Result<BookUpdate, String> {
        let obj = data
            .as_object()
            .ok_or("orderbook 'data' must be an object")?;
        let id = |k: &str| -> Result<u64, String> {
            obj.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("orderbook '{k}' must be a non-negative integer"))
        };
        let bids = parse_levels(obj.get("bids"), "bids")?;
        let asks = parse_levels(obj.get("asks"), "asks")?;
        match obj.get("type").and_then(Value::as_str) {
            Some("snapshot") => {
                for (side, levels) in [("bids", &bids), ("asks", &asks)] {
                    if levels.iter().any(|l| l.qty_is_zero()) {
                        return Err(format!("snapshot '{side}' must not hold zero quantities"));
                    }
                }
                Ok(BookUpdate::Snapshot {
                    bids,
                    asks,
                    last_update_id: id("lastUpdateId")?,
                })
            }
            Some("delta") => {
                let first = id("firstUpdateId")?;
                let last = id("lastUpdateId")?;
                if last < first {
                    return Err(format!(
                        "lastUpdateId {last} is before firstUpdateId {first}"
                    ));
                }
                Ok(BookUpdate::Delta {
                    bids,
                    asks,
                    first_update_id: first,
                    last_update_id: last,
                })
            }
            _ => Err("orderbook 'type' must be \"snapshot\" or \"delta\"".into()),
        }
    }
}

fn decimal(s: &str, what: &str, allow_zero: bool) -> Result<Decimal, String> {
    let valid_chars =
        !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let d = valid_chars.then(|| Decimal::from_str(s).ok()).flatten();
    match d {
        Some(d) if d > Decimal::ZERO || (allow_zero && d.is_zero()) => Ok(d),
        _ => Err(format!(
            "{what} '{s}' is not a {} decimal string",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        )),
    }
}

fn parse_levels(v: Option<&Value>, side: &str) -> Result<Vec<Level>, String> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(format!(
                "orderbook '{side}' must be an array of [price, quantity]"
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, level) in list.iter().enumerate() {
        let (p, q) = match level.as_array().map(Vec::as_slice) {
            Some([Value::String(p), Value::String(q)]) => (p, q),
            _ => {
                return Err(format!(
                    "orderbook {side}[{i}] must be [\"price\", \"quantity\"] strings"
                ))
            }
        };
        let key = decimal(p, &format!("{side}[{i}] price"), false)?;
        decimal(q, &format!("{side}[{i}] quantity"), true)?;
        out.push(Level {
            key,
            price: p.as_str().into(),
            qty: q.as_str().into(),
        });
    }
    Ok(out)
}
