//! Backend order book updates, checked level by level into exact decimals, from a decoded
//! `Value` or straight from the event's JSON text (no tree built); both give the same answers.

use super::{BookUpdate, Level};
use crate::ingest::raw;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::str::FromStr;

/// A JSON value, decoded or as its (already validated) text.
#[derive(Clone, Copy)]
enum Node<'a> {
    Value(&'a Value),
    Raw(&'a str),
}

// One lives on the stack per update parsed, never in a collection.
#[allow(clippy::large_enum_variant)]
enum Object<'a> {
    Value(&'a Map<String, Value>),
    Raw(raw::Members<'a>),
}

impl<'a> Node<'a> {
    fn object(self) -> Option<Object<'a>> {
        match self {
            Node::Value(v) => v.as_object().map(Object::Value),
            Node::Raw(t) => raw::members(t).map(Object::Raw),
        }
    }

    fn array(self) -> Option<Vec<Node<'a>>> {
        match self {
            Node::Value(Value::Array(a)) => Some(a.iter().map(Node::Value).collect()),
            Node::Value(_) => None,
            Node::Raw(t) => raw::elements(t).map(|e| e.into_iter().map(Node::Raw).collect()),
        }
    }

    fn string(self) -> Option<Cow<'a, str>> {
        match self {
            Node::Value(v) => v.as_str().map(Cow::Borrowed),
            Node::Raw(t) => raw::string(t),
        }
    }

    /// A non-negative integer that fits in a u64, as `Value::as_u64` reads one.
    fn u64(self) -> Option<u64> {
        match self {
            Node::Value(v) => v.as_u64(),
            // Valid JSON: digits alone are an integer; a sign, fraction or exponent is not
            // one a decoder reads as unsigned (not even "-0").
            Node::Raw(t) => t
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| t.parse().ok())
                .flatten(),
        }
    }
}

impl<'a> Object<'a> {
    fn get(&self, key: &str) -> Option<Node<'a>> {
        match self {
            Object::Value(m) => m.get(key).map(Node::Value),
            Object::Raw(m) => raw::member(m, key).map(Node::Raw),
        }
    }
}

impl BookUpdate {
    /// Parses the `data` of an `orderbook.update` ingest event.
    pub fn parse(data: &Value) -> Result<BookUpdate, String> {
        parse(Node::Value(data))
    }

    /// Parses the `data` of an `orderbook.update` ingest event from its text, which must be
    /// valid JSON.
    pub fn parse_raw(data: &str) -> Result<BookUpdate, String> {
        parse(Node::Raw(data))
    }
}

fn parse(data: Node<'_>) -> Result<BookUpdate, String> {
    let obj = data.object().ok_or("orderbook 'data' must be an object")?;
    let id = |k: &str| -> Result<u64, String> {
        obj.get(k)
            .and_then(Node::u64)
            .ok_or_else(|| format!("orderbook '{k}' must be a non-negative integer"))
    };
    let bids = parse_levels(obj.get("bids"), "bids")?;
    let asks = parse_levels(obj.get("asks"), "asks")?;
    match obj.get("type").and_then(Node::string).as_deref() {
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

/// A checked decimal string: digits and a point, at most 40 bytes, positive (or zero when
/// allowed). The error names the level only when there is one to report.
fn decimal(s: &str, allow_zero: bool, what: impl FnOnce() -> String) -> Result<Decimal, String> {
    let valid_chars =
        !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let d = valid_chars.then(|| Decimal::from_str(s).ok()).flatten();
    // Past 28 significant digits the decimal is rounded: two prices would share one level,
    // or a tiny positive one would read as zero.
    let places = s.split_once('.').map_or(0, |(_, f)| f.len());
    if d.is_some_and(|d| d.scale() as usize != places) {
        return Err(format!(
            "{} '{s}' has more digits than the gateway keeps exactly (28 significant)",
            what()
        ));
    }
    match d {
        Some(d) if d > Decimal::ZERO || (allow_zero && d.is_zero()) => Ok(d),
        _ => Err(format!(
            "{} '{s}' is not a {} decimal string",
            what(),
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        )),
    }
}

fn parse_levels(v: Option<Node<'_>>, side: &str) -> Result<Vec<Level>, String> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let list = v
        .array()
        .ok_or_else(|| format!("orderbook '{side}' must be an array of [price, quantity]"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, level) in list.into_iter().enumerate() {
        let pair = level.array().and_then(|pq| match pq.as_slice() {
            [p, q] => Some((p.string()?, q.string()?)),
            _ => None,
        });
        let Some((p, q)) = pair else {
            return Err(format!(
                "orderbook {side}[{i}] must be [\"price\", \"quantity\"] strings"
            ));
        };
        let key = decimal(&p, false, || format!("{side}[{i}] price"))?;
        decimal(&q, true, || format!("{side}[{i}] quantity"))?;
        out.push(Level {
            key,
            price: p.as_ref().into(),
            qty: q.as_ref().into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON texts around the shapes an order book update takes, right and wrong.
    fn texts() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("\"1.5\"".to_string()),
            Just("\"0\"".to_string()),
            Just("\"0.000\"".to_string()),
            Just("\"-1\"".to_string()),
            Just("\"1e5\"".to_string()),
            Just("\"\\u0031\"".to_string()),
            Just("7".to_string()),
            Just("-0".to_string()),
            Just("18446744073709551616".to_string()),
            Just("1.0".to_string()),
            Just("null".to_string()),
            Just("\"snapshot\"".to_string()),
            Just("\"delta\"".to_string()),
        ];
        let value = scalar.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("type"),
                            Just("bids"),
                            Just("asks"),
                            Just("firstUpdateId"),
                            Just("lastUpdateId"),
                            Just("x")
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|m| format!(
                    "{{{}}}",
                    m.iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            ]
        });
        value
    }

    proptest! {
        /// The text path and the decoded path accept the same updates and refuse the rest
        /// with the same words.
        #[test]
        fn text_and_value_give_the_same_answer(text in texts()) {
            let v: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(BookUpdate::parse_raw(&text), BookUpdate::parse(&v));
        }
    }

    #[test]
    fn a_price_that_would_be_rounded_is_refused() {
        let delta = |price: &str| {
            let text = format!(
                r#"{{"type":"delta","bids":[["{price}","1"]],"asks":[],"firstUpdateId":3,"lastUpdateId":3}}"#
            );
            BookUpdate::parse_raw(&text)
        };
        for exact in ["1.0000000000000000000000000001", "00.10", "5.", ".5"] {
            assert!(delta(exact).is_ok(), "{exact}");
        }
        for rounded in [
            "1.00000000000000000000000000001",
            "0.00000000000000000000000000001",
            "12345678901234567890123456789.5",
        ] {
            let e = delta(rounded).unwrap_err();
            assert!(
                e.contains("more digits than the gateway keeps"),
                "{rounded}: {e}"
            );
        }
    }

    #[test]
    fn a_well_formed_delta_reads_the_same_both_ways() {
        let text = r#"{"type":"delta","bids":[["100.5","2"],["99","0"]],"asks":[],"firstUpdateId":3,"lastUpdateId":4}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let update = BookUpdate::parse_raw(text).unwrap();
        assert_eq!(Ok(update.clone()), BookUpdate::parse(&v));
        assert_eq!(update.last_update_id(), 4);
    }
}
