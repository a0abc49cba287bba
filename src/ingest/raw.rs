//! JSON text taken apart without being decoded: the members of an object and the elements
//! of an array, as slices of the text. Ingest reads the few fields it routes on from them and
//! passes each event's `data` into frames as the backend wrote it.
//!
//! An event is checked and its top-level members found in one pass of jiter, which validates
//! every value it skips and says where it ended. Text already checked (an event's `data`)
//! is taken apart again by a plain scanner, which does not validate.
//!
//! serde_json's own `RawValue` would give the same slices, but its `raw_value` feature changes
//! how every `Value` in the process is decoded (an object keyed
//! `$serde_json::private::RawValue` is read as the JSON text of its value), and clients'
//! packets are decoded into `Value`s. serde_json's own check (`IgnoredAny`) followed by the
//! scanner took 300 ns for a trade event, jiter 160.

use jiter::{Jiter, JiterError, Peek};
use serde::de::IgnoredAny;
use smallvec::SmallVec;
use std::borrow::Cow;

/// One value's text, checked to be valid JSON. Small, so a batch of millions of tiny values
/// costs no more to hold than its text's slices: an object's members are kept apart, in a
/// list for the whole body (see [`Checked::fields`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked<'a> {
    pub text: &'a str,
    shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// An object, its members at these positions of the body's list.
    Object(u32, u32),
    /// Valid, but nesting deeper than `MAX_DEPTH`.
    TooDeep,
    /// Any other value.
    Other,
}

/// A member's key text (between its quotes, still escaped) and its value's text.
pub type Member<'a> = (&'a str, &'a str);

impl<'a> Checked<'a> {
    /// A value that is not to be read as an event.
    pub fn not_an_object(text: &'a str) -> Checked<'a> {
        Checked {
            text,
            shape: Shape::Other,
        }
    }

    /// The object's members, from the list `check` put them in; why not, for anything else.
    pub fn fields<'m>(&self, members: &'m [Member<'a>]) -> Result<&'m [Member<'a>], String> {
        match self.shape {
            Shape::Object(from, to) => members
                .get(from as usize..to as usize)
                .ok_or_else(|| "event must be a JSON object".to_owned()),
            Shape::TooDeep => Err(format!(
                "nesting deeper than {} levels",
                crate::ingest::parse::MAX_DEPTH
            )),
            Shape::Other => Err("event must be a JSON object".into()),
        }
    }
}

/// Checks that `text` is one valid JSON value (nothing after it but whitespace), appending
/// an object's members to `into` in the same pass.
///
/// jiter walks it, validating every value it passes over and saying where each ended. What
/// nests too deep for a walk, or what jiter refuses, is left to serde_json, which has always
/// decided: jiter also refuses some valid JSON (lone surrogate escapes, integers of more than
/// 4,300 digits), and the refusal's message is then serde_json's as before.
pub fn check<'a>(text: &'a [u8], into: &mut Vec<Member<'a>>) -> Result<Checked<'a>, String> {
    let text = std::str::from_utf8(text)
        .map_err(|e| e.to_string())?
        .trim_ascii();
    let deep = crate::ingest::parse::too_deep(text.as_bytes());
    if !deep {
        let mark = into.len();
        match walk(text, into) {
            Ok(shape) => return Ok(Checked { text, shape }),
            Err(_) => into.truncate(mark),
        }
    }
    serde_json::from_slice::<IgnoredAny>(text.as_bytes()).map_err(|e| e.to_string())?;
    let shape = match members(text) {
        _ if deep => Shape::TooDeep,
        Some(fields) => {
            let from = into.len();
            into.extend(fields);
            Shape::Object(from as u32, into.len() as u32)
        }
        None => Shape::Other,
    };
    Ok(Checked { text, shape })
}

fn walk<'a>(text: &'a str, members: &mut Vec<Member<'a>>) -> Result<Shape, JiterError> {
    let mut j = Jiter::new(text.as_bytes());
    let shape = match j.peek()? {
        Peek::Object => {
            let from = members.len();
            object_members(&mut j, text, members)?;
            Shape::Object(from as u32, members.len() as u32)
        }
        peek => {
            j.known_skip(peek)?;
            Shape::Other
        }
    };
    j.finish()?;
    Ok(shape)
}

/// The members of the object `j` is at, each value checked as it is passed over.
fn object_members<'a>(
    j: &mut Jiter<'a>,
    text: &'a str,
    out: &mut Vec<Member<'a>>,
) -> Result<(), JiterError> {
    let mut before = j.current_index();
    let mut more = j.next_object_bytes()?.is_some();
    while more {
        // From where the walker was to where it is now: `{` or `,`, the quoted key, and the
        // colon, with whitespace between; the key's text is between the first and the last
        // quote of it.
        let span = &text[before..j.current_index()];
        let (open, close) = (
            memchr::memchr(b'"', span.as_bytes()),
            memchr::memrchr(b'"', span.as_bytes()),
        );
        let key = match (open, close) {
            (Some(o), Some(c)) if c > o => &span[o + 1..c],
            _ => "",
        };
        let peek = j.peek()?;
        let start = j.current_index();
        j.known_skip(peek)?;
        out.push((key, &text[start..j.current_index()]));
        before = j.current_index();
        more = j.next_key_bytes()?.is_some();
    }
    Ok(())
}

/// The bytes of a string or container starting at `i` (a `"`, `[` or `{`), or of a scalar:
/// the index just past its end.
fn value_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let scalar = !matches!(b.get(i), Some(b'"' | b'[' | b'{'));
    while i < b.len() {
        let c = b[i];
        if in_str {
            if !escaped && c != b'"' && c != b'\\' {
                // Straight to the next quote or backslash: a string's body is most of an
                // event's text.
                match memchr::memchr2(b'"', b'\\', &b[i..]) {
                    Some(n) => i += n,
                    None => return b.len(),
                }
                continue;
            }
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_str = false;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
        } else if scalar {
            if matches!(c, b',' | b']' | b'}') || c.is_ascii_whitespace() {
                return i;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    i
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// An object's members as (key, value) texts; most objects fit inline.
pub type Members<'a> = SmallVec<[Member<'a>; 8]>;

/// The members of a valid JSON object's text, in order: each key's text between its quotes
/// (still escaped) and its value's text. `None` when `text` is not an object.
pub fn members(text: &str) -> Option<Members<'_>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = SmallVec::new();
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'"') => {}
            _ => return Some(out),
        }
        let key_end = value_end(b, i);
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(b, key_end) + 1; // the ':'
        i = skip_ws(b, i);
        let end = value_end(b, i);
        out.push((key, &text[i..end]));
        i = skip_ws(b, end);
        if b.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

/// The elements of a valid JSON array's text, in order. `None` when `text` is not an array.
pub fn elements(text: &str) -> Option<Vec<&str>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    i += 1;
    loop {
        i = skip_ws(b, i);
        if matches!(b.get(i), None | Some(b']')) {
            return Some(out);
        }
        let end = value_end(b, i);
        out.push(&text[i..end]);
        i = skip_ws(b, end);
        if b.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

/// The value of `key` in an object's members (the last one, as a decoder keeps).
pub fn member<'a>(members: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    members
        .iter()
        .rev()
        .find(|(k, _)| key_is(k, key))
        .map(|(_, v)| *v)
}

fn key_is(raw: &str, key: &str) -> bool {
    // An escape only ever lengthens a key's text, so a key no longer than `key` is compared
    // as it is, and only a longer one with a backslash is decoded.
    if raw.len() <= key.len() {
        raw == key
    } else if raw.as_bytes().contains(&b'\\') {
        serde_json::from_str::<String>(&format!("\"{raw}\"")).is_ok_and(|k| k == key)
    } else {
        false
    }
}

/// A JSON string's text decoded; `None` when the text is not a string.
pub fn string(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What a decoder reads, rebuilt from the slices: the same value.
    fn rebuilt(text: &str) -> Value {
        if let Some(m) = members(text) {
            let mut obj = serde_json::Map::new();
            for (k, v) in m {
                let key: String = serde_json::from_str(&format!("\"{k}\"")).unwrap();
                obj.insert(key, rebuilt(v));
            }
            Value::Object(obj)
        } else if let Some(e) = elements(text) {
            Value::Array(e.into_iter().map(rebuilt).collect())
        } else {
            serde_json::from_str(text).unwrap()
        }
    }

    #[test]
    fn slices_read_as_the_decoder_reads_the_whole() {
        for text in [
            r#"{"type":"trade","symbol":"BTCUSDT","data":{"price":"45000.10","q":1e3,"t":[1,{"a":"]}"}]}}"#,
            r#" { "a" : "x\"}\\" , "b":[ ], "c":{ } ,"d":null,"e":-1.5E+2,"f":true } "#,
            r#"[{"a":1}, [2, "3,]"], "s", 4 , null]"#,
            r#"{"k\u0065y":"v","key":"w"}"#,
            "[]",
            "{}",
            r#"{"nested":{"deep":[[[{"x":"y"}]]]},"z":0}"#,
        ] {
            let mut list = Vec::new();
            let checked = check(text.as_bytes(), &mut list).unwrap();
            let text = checked.text;
            assert_eq!(
                checked.fields(&list).ok().map(|f| f.to_vec()),
                members(text).map(|m| m.to_vec()),
                "{text}"
            );
            assert_eq!(
                rebuilt(text),
                serde_json::from_str::<Value>(text).unwrap(),
                "{text}"
            );
        }
        let m = members(r#"{"k\u0065y":"v","key":"w"}"#).unwrap();
        assert_eq!(
            member(&m, "key"),
            Some(r#""w""#),
            "the last one, as a decoder keeps"
        );
        assert_eq!(string(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(string("5"), None);
        assert!(check(b"{\"a\":1} x", &mut Vec::new()).is_err());
        // Valid JSON jiter refuses goes by serde_json, as it always did.
        let mut list = Vec::new();
        let c = check(br#"{"data":"\ud800","n":1}"#, &mut list).unwrap();
        assert_eq!(c.fields(&list).unwrap().len(), 2);
        assert!(members("[1]").is_none() && elements("{}").is_none());
    }
}
