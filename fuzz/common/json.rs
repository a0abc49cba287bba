//! Helpers shared by the fuzz targets (included with `#[path]`).
#![allow(dead_code)]

use serde_json::Value;

/// JSON equality that allows floats to differ in the last bits: serde_json's default float
/// parser is not exactly round-trip (its `float_roundtrip` feature is off in the gateway), and
/// that is serde_json's trade-off, not a codec bug.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) if x.is_f64() || y.is_f64() => {
                    p == q || ((p - q).abs() <= f64::EPSILON * 4.0 * p.abs().max(q.abs()))
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && json_eq(va, vb))
        }
        _ => a == b,
    }
}

/// Depth of a JSON value (a scalar is 0, `[]` is 1).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
