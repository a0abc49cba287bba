//! Ingest bodies: one JSON object, a JSON array, or NDJSON.
//!
//! Ingest reads a body in place: validated, each event's routing fields taken out and its data
//! left as the text the backend wrote. simd-json's borrowed tape parses the same lines a little
//! faster (66 against 80 µs per 100 events, before reading any field), but only over a mutable
//! copy that it unescapes in place, so the original text of `data` would be gone; into a
//! `serde_json::Value` it is slower than serde_json (`cargo bench --bench ingest` keeps the
//! comparison).

use super::raw;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid JSON{}: {message}", index.map(|i| format!(" in event {i}")).unwrap_or_default())]
    BadJson {
        index: Option<usize>,
        message: String,
    },
    #[error("empty body")]
    Empty,
}

/// Deepest nesting accepted, as serde_json's own default; checked before parsing so that a
/// hostile body cannot exhaust the parser's stack.
pub const MAX_DEPTH: usize = 128;

/// Whether `bytes` nest deeper than `MAX_DEPTH`. Looking for more openers than that is a
/// vectorized search that settles nearly every event (a trade has two); only text with that
/// many of them, in strings or not, is walked with string state.
pub(crate) fn too_deep(bytes: &[u8]) -> bool {
    memchr::memchr2_iter(b'[', b'{', bytes)
        .nth(MAX_DEPTH)
        .is_some()
        && nesting_depth(bytes) > MAX_DEPTH
}

fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn parse_one(bytes: &[u8]) -> Result<Value, String> {
    // serde_json stops at 128 levels itself; checking first keeps the refusal uniform and
    // bounded for any parser swapped in here.
    if too_deep(bytes) {
        return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string())
}

/// The same through simd-json, for the comparison bench.
pub fn parse_one_simd(bytes: &[u8]) -> Result<Value, String> {
    if too_deep(bytes) {
        return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    let mut buf = bytes.to_vec();
    simd_json::serde::from_slice::<Value>(&mut buf).map_err(|e| e.to_string())
}

/// Splits a body into events, in order. NDJSON is parsed line by line, once; a body that
/// is one (possibly pretty-printed) value is parsed whole.
pub fn parse_body(body: &[u8]) -> Result<Vec<Value>, ParseError> {
    split(body, parse_one, |v| match v {
        Value::Array(events) => events,
        v => vec![v],
    })
}

/// A body's events as `parse_body_raw` reads them: each one's text, checked, and the
/// members of all of them in one list.
#[derive(Debug, Default)]
pub struct RawEvents<'a> {
    pub events: Vec<raw::Checked<'a>>,
    pub members: Vec<raw::Member<'a>>,
}

/// As `parse_body`, but each event as the JSON text the body holds, checked and not
/// decoded, with its members: the fields ingest routes on are read from them, and the `data`
/// the gateway does not rewrite goes into frames as it came.
pub fn parse_body_raw(body: &[u8]) -> Result<RawEvents<'_>, ParseError> {
    let members = std::cell::RefCell::new(Vec::new());
    let events = split(
        body,
        |text| raw::check(text, &mut members.borrow_mut()),
        |whole| match raw::elements(whole.text) {
            // Each element again, for its members (the array as a whole has none) and its
            // own depth (not counting the array's).
            Some(elements) => elements
                .into_iter()
                .map(|text| {
                    // Part of a value already checked: cannot fail, and would not be lost.
                    raw::check(text.as_bytes(), &mut members.borrow_mut())
                        .unwrap_or(raw::Checked::not_an_object(text))
                })
                .collect(),
            None => vec![whole],
        },
    )?;
    Ok(RawEvents {
        events,
        members: members.into_inner(),
    })
}

/// A body's events, each read by `one`: a JSON array or a single value is read whole and
/// taken apart by `events`; NDJSON line by line.
fn split<'a, T>(
    body: &'a [u8],
    one: impl Fn(&'a [u8]) -> Result<T, String>,
    events: impl Fn(T) -> Vec<T>,
) -> Result<Vec<T>, ParseError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    let whole = |bytes| match one(bytes) {
        Ok(v) => Ok(events(v)),
        Err(message) => Err(ParseError::BadJson {
            index: None,
            message,
        }),
    };
    if trimmed[0] == b'[' || memchr::memchr(b'\n', trimmed).is_none() {
        return whole(trimmed);
    }
    // Sized up front (up to a bound: blank lines count too), rather than grown by doubling.
    let lines = memchr::memchr_iter(b'\n', trimmed).count() + 1;
    let mut out = Vec::with_capacity(lines.min(1 << 16));
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', trimmed).chain([trimmed.len()]);
    for end in ends {
        let line = trimmed[start..end].trim_ascii();
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        match one(line) {
            Ok(v) => out.push(v),
            // The first line alone is not JSON: the body may be one value over many lines.
            Err(_) if out.is_empty() => return whole(trimmed),
            Err(message) => {
                return Err(ParseError::BadJson {
                    index: Some(out.len()),
                    message,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(parse_body(br#"{"a":1}"#).unwrap(), vec![json!({"a":1})]);
        assert_eq!(parse_body(br#"[{"a":1},{"b":2}]"#).unwrap().len(), 2);
        assert_eq!(parse_body(b"{\"a\":1}\n\n{\"b\":2}\n").unwrap().len(), 2);
        assert_eq!(
            parse_body(b"{\n \"a\": 1\n}").unwrap(),
            vec![json!({"a":1})]
        );
    }

    #[test]
    fn names_the_bad_line() {
        let e = parse_body(b"{\"a\":1}\n{oops}\n").unwrap_err();
        assert!(matches!(e, ParseError::BadJson { index: Some(1), .. }));
        assert!(matches!(
            parse_body(b"nope"),
            Err(ParseError::BadJson { index: None, .. })
        ));
        assert_eq!(parse_body(b"  "), Err(ParseError::Empty));
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        let deep = format!(
            "{{\"data\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            parse_body(deep.as_bytes()),
            Err(ParseError::BadJson { .. })
        ));
        assert_eq!(nesting_depth(br#"{"a":"[[[[\"[["}"#), 1);
    }

    #[test]
    fn raw_events_split_as_parsed_ones() {
        for body in [
            &br#"{"a":1}"#[..],
            br#"[{"a":1},{"b":2}]"#,
            b"{\"a\":1}\n\n{\"b\":2}\n",
            b"{\n \"a\": 1\n}",
            b" [ {\"a\" : [1, 2]} ,\n {\"b\":\"x\"} ] ",
        ] {
            let raw = parse_body_raw(body).unwrap();
            let parsed: Vec<Value> = raw
                .events
                .iter()
                .map(|r| serde_json::from_str(r.text).unwrap())
                .collect();
            assert_eq!(parsed, parse_body(body).unwrap());
        }
        let e = parse_body_raw(b"{\"a\":1}\n{oops}\n").unwrap_err();
        assert!(matches!(e, ParseError::BadJson { index: Some(1), .. }));
        assert!(matches!(parse_body_raw(b"  "), Err(ParseError::Empty)));
    }

    #[test]
    fn keeps_key_order() {
        let v = parse_body(br#"{"z":1,"a":2}"#).unwrap();
        assert_eq!(serde_json::to_string(&v[0]).unwrap(), r#"{"z":1,"a":2}"#);
    }
}
