//! Engine.IO v4 packets: the text form (`<type digit><data>`), raw binary messages, and the
//! long-polling payload that joins packets with the record separator `\x1e`.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Separates packets inside one HTTP long-polling body.
pub const RECORD_SEPARATOR: u8 = 0x1e;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Open(Bytes),
    Close,
    Ping(Bytes),
    Pong(Bytes),
    /// A text message; the bytes are valid UTF-8.
    Message(Bytes),
    Binary(Bytes),
    Upgrade,
    Noop,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(u8),
    #[error("packet is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid base64 in a binary packet")]
    InvalidBase64,
    #[error("more than {max} packets in one payload")]
    TooManyPackets { max: usize },
}

impl Packet {
    /// Decodes a text packet, as carried by a WebSocket text frame or one polling record.
    pub fn decode_text(raw: Bytes) -> Result<Packet, PacketError> {
        std::str::from_utf8(&raw).map_err(|_| PacketError::InvalidUtf8)?;
        let first = *raw.first().ok_or(PacketError::Empty)?;
        let data = raw.slice(1..);
        Ok(match first {
            b'0' => Packet::Open(data),
            b'1' => Packet::Close,
            b'2' => Packet::Ping(data),
            b'3' => Packet::Pong(data),
            b'4' => Packet::Message(data),
            b'5' => Packet::Upgrade,
            b'6' => Packet::Noop,
            other => return Err(PacketError::UnknownType(other)),
        })
    }

    /// Appends the text form (binary packets as `b<base64>`, as polling carries them).
    pub fn encode_text(&self, dst: &mut BytesMut) {
        let (digit, data): (u8, &[u8]) = match self {
            Packet::Open(d) => (b'0', d),
            Packet::Close => (b'1', b""),
            Packet::Ping(d) => (b'2', d),
            Packet::Pong(d) => (b'3', d),
            Packet::Message(d) => (b'4', d),
            Packet::Upgrade => (b'5', b""),
            Packet::Noop => (b'6', b""),
            Packet::Binary(d) => {
                dst.put_u8(b'b');
                let start = dst.len();
                let encoded_len = base64::encoded_len(d.len(), true).unwrap_or(0);
                dst.resize(start + encoded_len, 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(d, &mut dst[start..])
                    .unwrap_or(0);
                dst.truncate(start + written);
                return;
            }
        };
        dst.reserve(1 + data.len());
        dst.put_u8(digit);
        dst.extend_from_slice(data);
    }

    pub fn to_text(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode_text(&mut b);
        b.freeze()
    }
}

/// Decodes a long-polling request body into its packets, at most `max_packets` of them.
pub fn decode_payload(body: Bytes, max_packets: usize) -> Result<Vec<Packet>, PacketError> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        if out.len() == max_packets {
            return Err(PacketError::TooManyPackets { max: max_packets });
        }
        let end = rest
            .iter()
            .position(|&b| b == RECORD_SEPARATOR)
            .unwrap_or(rest.len());
        let record = rest.slice(..end);
        if record.first() == Some(&b'b') {
            let bin = base64::engine::general_purpose::STANDARD
                .decode(&record[1..])
                .map_err(|_| PacketError::InvalidBase64)?;
            out.push(Packet::Binary(Bytes::from(bin)));
        } else {
            out.push(Packet::decode_text(record)?);
        }
        if end == rest.len() {
            return Ok(out);
        }
        rest = rest.slice(end + 1..);
    }
}

/// Joins already-encoded text packets into one polling response body.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a [u8]>) -> BytesMut {
    let mut body = BytesMut::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            body.put_u8(RECORD_SEPARATOR);
        }
        body.extend_from_slice(p);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_type() {
        let cases: [(&[u8], Packet); 7] = [
            (b"0{}", Packet::Open(Bytes::from_static(b"{}"))),
            (b"1", Packet::Close),
            (b"2probe", Packet::Ping(Bytes::from_static(b"probe"))),
            (b"3", Packet::Pong(Bytes::new())),
            (b"4hello", Packet::Message(Bytes::from_static(b"hello"))),
            (b"5", Packet::Upgrade),
            (b"6", Packet::Noop),
        ];
        for (raw, want) in cases {
            let got = Packet::decode_text(Bytes::copy_from_slice(raw)).unwrap();
            assert_eq!(got, want);
            assert_eq!(&got.to_text()[..], raw);
        }
        assert_eq!(
            Packet::decode_text(Bytes::from_static(b"9")),
            Err(PacketError::UnknownType(b'9'))
        );
        assert_eq!(Packet::decode_text(Bytes::new()), Err(PacketError::Empty));
    }

    #[test]
    fn payload_round_trip_with_binary() {
        let body = Bytes::from_static(b"4hello\x1ebAQIDBA==\x1e2");
        let packets = decode_payload(body.clone(), 16).unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::Message(Bytes::from_static(b"hello")),
                Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
                Packet::Ping(Bytes::new()),
            ]
        );
        let texts: Vec<Bytes> = packets.iter().map(Packet::to_text).collect();
        let joined = encode_payload(texts.iter().map(|b| &b[..]));
        assert_eq!(&joined[..], &body[..]);
    }

    #[test]
    fn payload_errors() {
        assert_eq!(
            decode_payload(Bytes::from_static(b"b!!"), 16),
            Err(PacketError::InvalidBase64)
        );
        assert_eq!(
            decode_payload(Bytes::from_static(b"4a\x1e"), 16),
            Err(PacketError::Empty)
        );
        assert_eq!(
            decode_payload(Bytes::from_static(b"6\x1e6\x1e6"), 2),
            Err(PacketError::TooManyPackets { max: 2 })
        );
        assert_eq!(
            decode_payload(Bytes::from_static(b"6\x1e6"), 2)
                .unwrap()
                .len(),
            2
        );
    }
}
