//! Socket.IO v5 packets: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, and the
//! reassembly of binary attachments that follow a BINARY_EVENT or BINARY_ACK.
//!
//! Binary attachments stay out of the JSON: the JSON keeps its `{"_placeholder":true,"num":n}`
//! objects and the buffers travel beside it, so an echo re-emits exactly what came in.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use thiserror::Error;

/// Upper bound on attachments one packet may announce; socket.io's own parser has none, but a
/// gateway must not let a peer make it wait for (and buffer) millions of frames.
pub const MAX_ATTACHMENTS: usize = 64;

/// Upper bound on the bytes of all attachments of one packet together: each frame is already
/// bounded by the maximum payload, but 64 of them held at once would be 64 times that.
pub const MAX_ATTACHMENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl Kind {
    fn from_digit(d: u8) -> Option<Kind> {
        Some(match d {
            b'0' => Kind::Connect,
            b'1' => Kind::Disconnect,
            b'2' => Kind::Event,
            b'3' => Kind::Ack,
            b'4' => Kind::ConnectError,
            b'5' => Kind::BinaryEvent,
            b'6' => Kind::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> u8 {
        match self {
            Kind::Connect => b'0',
            Kind::Disconnect => b'1',
            Kind::Event => b'2',
            Kind::Ack => b'3',
            Kind::ConnectError => b'4',
            Kind::BinaryEvent => b'5',
            Kind::BinaryAck => b'6',
        }
    }

    fn is_binary(self) -> bool {
        matches!(self, Kind::BinaryEvent | Kind::BinaryAck)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: Kind,
    pub namespace: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    pub attachments: Vec<Bytes>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("bad attachment count")]
    BadAttachmentCount,
    #[error("ack id out of range")]
    BadAckId,
    #[error("invalid JSON payload: {0}")]
    BadJson(String),
    #[error("payload not allowed for this packet type")]
    BadPayload,
    #[error("binary attachment without a pending binary packet")]
    UnexpectedAttachment,
    #[error("placeholder refers to a missing attachment")]
    BadPlaceholder,
    #[error("attachments of one packet over {MAX_ATTACHMENT_BYTES} bytes")]
    AttachmentsTooLarge,
}

impl Packet {
    pub fn event(namespace: &str, args: Value, id: Option<u64>) -> Packet {
        Packet {
            kind: Kind::Event,
            namespace: namespace.to_owned(),
            id,
            data: Some(args),
            attachments: Vec::new(),
        }
    }

    /// The name of an EVENT / BINARY_EVENT (its first argument).
    pub fn event_name(&self) -> Option<&str> {
        match (&self.kind, &self.data) {
            (Kind::Event | Kind::BinaryEvent, Some(Value::Array(a))) => a.first()?.as_str(),
            _ => None,
        }
    }

    /// Decodes the text part of a packet. Binary kinds then expect `attachments_expected()`
    /// binary messages, fed to a [`BinaryAssembler`].
    pub fn decode(raw: &str) -> Result<(Packet, usize), PacketError> {
        Packet::decode_head(raw)?.decode()
    }

    /// Decodes a packet's type, attachment count, namespace and ack id, leaving its JSON
    /// undecoded: decoding takes many times the JSON's size in memory, and a receiver may
    /// refuse a packet by its size first.
    pub fn decode_head(raw: &str) -> Result<Head<'_>, PacketError> {
        let bytes = raw.as_bytes();
        let kind = Kind::from_digit(*bytes.first().ok_or(PacketError::Empty)?)
            .ok_or(PacketError::UnknownType)?;
        let mut pos = 1;
        let mut attachments = 0usize;
        if kind.is_binary() {
            let start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            if pos == start || pos - start > 3 || bytes.get(pos) != Some(&b'-') {
                return Err(PacketError::BadAttachmentCount);
            }
            attachments = raw[start..pos]
                .parse()
                .map_err(|_| PacketError::BadAttachmentCount)?;
            if attachments > MAX_ATTACHMENTS {
                return Err(PacketError::BadAttachmentCount);
            }
            pos += 1;
        }
        let mut namespace = String::from("/");
        if bytes.get(pos) == Some(&b'/') {
            let end = raw[pos..].find(',').map(|i| pos + i).unwrap_or(bytes.len());
            namespace = raw[pos..end].to_owned();
            pos = (end + 1).min(bytes.len());
        }
        let id_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let id = if pos > id_start {
            Some(
                raw[id_start..pos]
                    .parse::<u64>()
                    .map_err(|_| PacketError::BadAckId)?,
            )
        } else {
            None
        };
        Ok(Head {
            kind,
            attachments,
            namespace,
            id,
            json: &raw[pos..],
        })
    }
}

/// A packet with its JSON not decoded yet (see [`Packet::decode_head`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Head<'a> {
    pub kind: Kind,
    pub attachments: usize,
    pub namespace: String,
    pub id: Option<u64>,
    pub json: &'a str,
}

impl Head<'_> {
    /// Decodes the JSON and checks it fits the packet type.
    pub fn decode(self) -> Result<(Packet, usize), PacketError> {
        let Head {
            kind,
            attachments,
            namespace,
            id,
            json,
        } = self;
        let data = if json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Value>(json)
                    .map_err(|e| PacketError::BadJson(e.to_string()))?,
            )
        };
        let valid = match kind {
            Kind::Connect => matches!(data, None | Some(Value::Object(_))),
            Kind::Disconnect => data.is_none(),
            Kind::Event | Kind::BinaryEvent => matches!(&data,
                Some(Value::Array(a)) if matches!(a.first(), Some(Value::String(_)))),
            Kind::Ack | Kind::BinaryAck => id.is_some() && matches!(data, Some(Value::Array(_))),
            Kind::ConnectError => matches!(data, Some(Value::Object(_) | Value::String(_))),
        };
        if !valid {
            return Err(PacketError::BadPayload);
        }
        Ok((
            Packet {
                kind,
                namespace,
                id,
                data,
                attachments: Vec::new(),
            },
            attachments,
        ))
    }
}

impl Packet {
    /// Appends the text form of the packet (without the Engine.IO type digit).
    pub fn encode(&self, dst: &mut BytesMut) {
        let kind = match (self.kind, self.attachments.is_empty()) {
            (Kind::Event, false) => Kind::BinaryEvent,
            (Kind::Ack, false) => Kind::BinaryAck,
            (k, _) => k,
        };
        dst.put_u8(kind.digit());
        if kind.is_binary() {
            dst.extend_from_slice(
                itoa::Buffer::new()
                    .format(self.attachments.len())
                    .as_bytes(),
            );
            dst.put_u8(b'-');
        }
        if self.namespace != "/" {
            dst.extend_from_slice(self.namespace.as_bytes());
            dst.put_u8(b',');
        }
        if let Some(id) = self.id {
            dst.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        }
        if let Some(data) = &self.data {
            // Writing JSON into a growable buffer cannot fail.
            let _ = serde_json::to_writer(dst.writer(), data);
        }
    }
}

/// Collects the binary messages that complete a binary packet.
#[derive(Debug, Default)]
pub struct BinaryAssembler {
    pending: Option<(Packet, usize)>,
    held: usize,
    /// Attachments still to come of a packet answered without them.
    discarding: usize,
}

impl BinaryAssembler {
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some() || self.discarding > 0
    }

    /// The packet whose header was just decoded is handled without its `count` attachments:
    /// they are dropped as they arrive.
    pub fn discard(&mut self, count: usize) {
        self.discarding = count;
    }

    /// Takes a freshly decoded packet; returns it at once when it needs no attachments.
    pub fn start(
        &mut self,
        packet: Packet,
        expected: usize,
    ) -> Result<Option<Packet>, PacketError> {
        if expected == 0 {
            check_placeholders(&packet, 0)?;
            return Ok(Some(packet));
        }
        self.pending = Some((packet, expected));
        self.held = 0;
        Ok(None)
    }

    pub fn push(&mut self, buf: Bytes) -> Result<Option<Packet>, PacketError> {
        if self.discarding > 0 {
            self.discarding -= 1;
            return Ok(None);
        }
        let (mut packet, expected) = self
            .pending
            .take()
            .ok_or(PacketError::UnexpectedAttachment)?;
        self.held += buf.len();
        if self.held > MAX_ATTACHMENT_BYTES {
            return Err(PacketError::AttachmentsTooLarge);
        }
        packet.attachments.push(buf);
        if packet.attachments.len() < expected {
            self.pending = Some((packet, expected));
            return Ok(None);
        }
        check_placeholders(&packet, expected)?;
        Ok(Some(packet))
    }
}

fn check_placeholders(packet: &Packet, count: usize) -> Result<(), PacketError> {
    fn walk(v: &Value, count: usize, depth: usize) -> bool {
        if depth > 64 {
            return true;
        }
        match v {
            Value::Array(a) => a.iter().all(|x| walk(x, count, depth + 1)),
            Value::Object(o) => {
                if o.get("_placeholder") == Some(&Value::Bool(true)) {
                    return matches!(o.get("num").and_then(Value::as_u64), Some(n) if (n as usize) < count);
                }
                o.values().all(|x| walk(x, count, depth + 1))
            }
            _ => true,
        }
    }
    match &packet.data {
        Some(d) if !walk(d, count, 0) => Err(PacketError::BadPlaceholder),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(p: &Packet) -> String {
        let mut b = BytesMut::new();
        p.encode(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn decodes_spec_examples() {
        let (p, n) = Packet::decode("0").unwrap();
        assert_eq!((p.kind, p.namespace.as_str(), n), (Kind::Connect, "/", 0));
        let (p, _) = Packet::decode("0/admin,{\"token\":\"123\"}").unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.data, Some(json!({"token":"123"})));
        let (p, _) = Packet::decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.namespace.as_str()), (Kind::Disconnect, "/admin"));
        let (p, _) = Packet::decode("1/admin").unwrap();
        assert_eq!(p.namespace, "/admin");
        let (p, _) = Packet::decode("2/admin,12[\"bar\"]").unwrap();
        assert_eq!((p.id, p.event_name()), (Some(12), Some("bar")));
        let (p, _) = Packet::decode("312[\"ok\"]").unwrap();
        assert_eq!((p.kind, p.id), (Kind::Ack, Some(12)));
        let (p, n) = Packet::decode("51-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, n), (Kind::BinaryEvent, 1));
    }

    #[test]
    fn refuses_invalid_packets() {
        for raw in [
            "abc",
            "2{}",
            "2abc[]",
            "2[1]",
            "0[]",
            "1/a,{}",
            "3[]",
            "5-[\"x\"]",
            "599999-[\"x\"]",
            "",
        ] {
            assert!(Packet::decode(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn encodes_like_the_reference_server() {
        let p = Packet::event("/ws", json!(["ticker.update", {"b": 1, "a": 2}]), None);
        assert_eq!(enc(&p), "2/ws,[\"ticker.update\",{\"b\":1,\"a\":2}]");
        let mut ack = Packet::event("/", json!([{"_placeholder": true, "num": 0}]), Some(3));
        ack.kind = Kind::Ack;
        ack.attachments.push(Bytes::from_static(&[1, 2]));
        assert_eq!(enc(&ack), "61-3[{\"_placeholder\":true,\"num\":0}]");
    }

    #[test]
    fn reassembles_attachments() {
        let (p, n) = Packet::decode("52-[\"e\",{\"_placeholder\":true,\"num\":1}]").unwrap();
        let mut asm = BinaryAssembler::default();
        assert_eq!(asm.start(p, n).unwrap(), None);
        assert_eq!(asm.push(Bytes::from_static(b"a")).unwrap(), None);
        let done = asm.push(Bytes::from_static(b"b")).unwrap().unwrap();
        assert_eq!(done.attachments.len(), 2);
        assert!(!asm.is_waiting());
        let (p, n) = Packet::decode("51-[\"e\",{\"_placeholder\":true,\"num\":4}]").unwrap();
        asm.start(p, n).unwrap();
        assert_eq!(asm.push(Bytes::new()), Err(PacketError::BadPlaceholder));
        assert_eq!(
            asm.push(Bytes::new()),
            Err(PacketError::UnexpectedAttachment)
        );
    }

    #[test]
    fn bounds_the_bytes_held_for_one_packet() {
        let (p, n) = Packet::decode("53-[\"e\"]").unwrap();
        let mut asm = BinaryAssembler::default();
        asm.start(p, n).unwrap();
        let half = Bytes::from(vec![0u8; MAX_ATTACHMENT_BYTES / 2]);
        assert_eq!(asm.push(half.clone()).unwrap(), None);
        assert_eq!(asm.push(half.clone()).unwrap(), None);
        assert_eq!(
            asm.push(Bytes::from_static(b"x")),
            Err(PacketError::AttachmentsTooLarge)
        );
        assert!(!asm.is_waiting());
        // The count starts again with the next packet.
        let (p, n) = Packet::decode("51-[\"e\"]").unwrap();
        asm.start(p, n).unwrap();
        assert!(asm.push(half).unwrap().is_some());
    }

    #[test]
    fn drops_the_attachments_of_a_packet_answered_without_them() {
        let mut asm = BinaryAssembler::default();
        asm.discard(2);
        assert!(asm.is_waiting());
        assert_eq!(asm.push(Bytes::from_static(b"a")).unwrap(), None);
        assert_eq!(asm.push(Bytes::from_static(b"b")).unwrap(), None);
        assert!(!asm.is_waiting());
        assert_eq!(
            asm.push(Bytes::new()),
            Err(PacketError::UnexpectedAttachment)
        );
    }
}
