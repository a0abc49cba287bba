//! The data-event envelope `{channel, data, timestamp}`, encoded once per publish straight into
//! a complete frame.

use crate::codec::WireMessage;
use crate::recovery::Offset;
use bytes::BufMut;
use serde_json::Value;

pub use crate::GATEWAY_NAMESPACE;

/// The data of a publish: a JSON value, or JSON already written.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Value(Value),
    /// Shared, so a value kept for later (a ticker's latest) is a reference, not a copy.
    Json(bytes::Bytes),
}

impl Payload {
    /// The data as JSON text.
    pub fn to_json(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            // Serializing a JSON value into a vector cannot fail.
            Payload::Value(v) => serde_json::to_vec(v).unwrap_or_default().into(),
            Payload::Json(j) => j.as_ref().into(),
        }
    }

    /// A JSON array of `items`, written once.
    pub fn array<'a>(items: impl IntoIterator<Item = &'a Payload>) -> Payload {
        let mut out = vec![b'['];
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&item.to_json());
        }
        out.push(b']');
        Payload::Json(out.into())
    }
}

/// The envelope for a publish's payload.
pub fn encode_payload(event: &str, room: &str, data: &Payload, timestamp_ms: u64) -> WireMessage {
    encode_payload_at(event, room, data, timestamp_ms, None)
}

/// The envelope, followed by the event's recovery offset as a last argument when it has one
/// (where socket.io clients look for it).
pub fn encode_payload_at(
    event: &str,
    room: &str,
    data: &Payload,
    timestamp_ms: u64,
    offset: Option<Offset>,
) -> WireMessage {
    encode_numbered(event, room, data, timestamp_ms, offset, None)
}

/// The envelope with the message's number in its lossless stream (`seq`) when it has one,
/// and its recovery offset.
pub fn encode_numbered(
    event: &str,
    room: &str,
    data: &Payload,
    timestamp_ms: u64,
    offset: Option<Offset>,
    seq: Option<u64>,
) -> WireMessage {
    let marks = Marks { offset, seq };
    match data {
        Payload::Value(v) => encode_with(event, room, timestamp_ms, marks, 256, |b| {
            // Serializing into a growable buffer cannot fail.
            let _ = serde_json::to_writer(b.writer(), v);
        }),
        Payload::Json(j) => encode_with(event, room, timestamp_ms, marks, j.len(), |b| {
            b.extend_from_slice(j)
        }),
    }
}

/// What a lossless message carries beside its data.
#[derive(Default, Clone, Copy)]
struct Marks {
    offset: Option<Offset>,
    seq: Option<u64>,
}

/// `42/ws,["<event>",{"channel":"<room>","data":<data>,"timestamp":<ts>}]` as one frame.
pub fn encode(event: &str, room: &str, data: &Value, timestamp_ms: u64) -> WireMessage {
    encode_with(event, room, timestamp_ms, Marks::default(), 256, |b| {
        // Serializing into a growable buffer cannot fail.
        let _ = serde_json::to_writer(b.writer(), data);
    })
}

fn encode_with(
    event: &str,
    room: &str,
    timestamp_ms: u64,
    marks: Marks,
    data_len: usize,
    data: impl FnOnce(&mut bytes::BytesMut),
) -> WireMessage {
    // Names, marks and punctuation: escapes aside, at most this beside the data.
    let around = event.len() + room.len() + 120;
    WireMessage::text_sized(around + data_len, |b| {
        b.extend_from_slice(b"42");
        b.extend_from_slice(GATEWAY_NAMESPACE.as_bytes());
        b.extend_from_slice(b",[");
        let mut w = b.writer();
        // Serializing into a growable buffer cannot fail.
        let _ = serde_json::to_writer(&mut w, event);
        w.get_mut().extend_from_slice(b",{\"channel\":");
        let _ = serde_json::to_writer(&mut w, room);
        w.get_mut().extend_from_slice(b",\"data\":");
        data(w.get_mut());
        w.get_mut().extend_from_slice(b",\"timestamp\":");
        w.get_mut()
            .extend_from_slice(itoa::Buffer::new().format(timestamp_ms).as_bytes());
        if let Some(seq) = marks.seq {
            w.get_mut().extend_from_slice(b",\"seq\":");
            w.get_mut()
                .extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        }
        w.get_mut().extend_from_slice(b"}");
        if let Some(o) = marks.offset {
            let b = w.get_mut();
            b.extend_from_slice(b",\"");
            b.extend_from_slice(itoa::Buffer::new().format(o.ms).as_bytes());
            b.extend_from_slice(b"-");
            b.extend_from_slice(itoa::Buffer::new().format(o.seq).as_bytes());
            b.extend_from_slice(b"\"");
        }
        w.get_mut().extend_from_slice(b"]");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::socketio::Packet;
    use serde_json::json;

    #[test]
    fn envelope_decodes_as_an_event() {
        let m = encode("trade", "trades:BTCUSDT", &json!({"price":"1.5","q":2}), 42);
        let polling = m.polling();
        let text = std::str::from_utf8(&polling[1..]).unwrap();
        let (p, _) = Packet::decode(text).unwrap();
        assert_eq!(p.namespace, "/ws");
        assert_eq!(
            p.data.unwrap(),
            json!(["trade", {"channel":"trades:BTCUSDT","data":{"price":"1.5","q":2},"timestamp":42}])
        );
    }

    #[test]
    fn offset_is_the_last_argument() {
        let data = Payload::Json(bytes::Bytes::from_static(b"[1]"));
        let m = encode_payload_at("trade", "t", &data, 7, Some(Offset::new(17, 3)));
        let text = std::str::from_utf8(&m.polling()[1..]).unwrap().to_owned();
        let (p, _) = Packet::decode(&text).unwrap();
        assert_eq!(
            p.data.unwrap(),
            json!(["trade", {"channel":"t","data":[1],"timestamp":7}, "17-3"])
        );
    }
}
