//! A packet encoded once into a complete WebSocket frame, from which the long-polling form is
//! a zero-copy slice. Broadcasts build one of these and every subscriber gets the same bytes.

use super::deflate;
use super::engineio;
use super::socketio;
use super::websocket::{self, OpCode, MAX_SERVER_HEADER};
use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use std::sync::{Arc, OnceLock};

#[derive(Debug)]
pub struct WireMessage {
    frame: Bytes,
    body_at: u8,
    binary: bool,
    /// The same message compressed for permessage-deflate, once some connection needed it,
    /// shared with every clone (a cached snapshot is cloned for each subscriber): a message
    /// is compressed at most once, however many take it. Allocated on the first clone or
    /// compression, so a message neither cloned nor compressed costs nothing more.
    deflated: OnceLock<Arc<OnceLock<Bytes>>>,
}

impl Clone for WireMessage {
    fn clone(&self) -> WireMessage {
        WireMessage {
            frame: self.frame.clone(),
            body_at: self.body_at,
            binary: self.binary,
            deflated: OnceLock::from(self.deflated_cell().clone()),
        }
    }
}

/// Equal when they carry the same frame, compressed yet or not.
impl PartialEq for WireMessage {
    fn eq(&self, other: &WireMessage) -> bool {
        (&self.frame, self.body_at, self.binary) == (&other.frame, other.body_at, other.binary)
    }
}

impl Eq for WireMessage {}

impl WireMessage {
    /// Builds a text Engine.IO packet with `write` (which appends the packet's text form) and
    /// frames it without copying the body a second time.
    pub fn text(write: impl FnOnce(&mut BytesMut)) -> WireMessage {
        // Small to start: a frame's buffer stays alive as long as any queue holds it, so an
        // Engine.IO pong must not hold a broadcast-sized allocation.
        WireMessage::text_sized(54, write)
    }

    /// A text frame whose body is expected to take about `body` bytes, so that writing it
    /// does not grow the buffer step by step.
    pub fn text_sized(body: usize, write: impl FnOnce(&mut BytesMut)) -> WireMessage {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER + body);
        buf.resize(MAX_SERVER_HEADER, 0);
        write(&mut buf);
        let len = buf.len() - MAX_SERVER_HEADER;
        let hlen = websocket::header_len(len);
        let start = MAX_SERVER_HEADER - hlen;
        let mut header = BytesMut::with_capacity(hlen);
        websocket::encode_header(&mut header, OpCode::Text, len);
        buf[start..MAX_SERVER_HEADER].copy_from_slice(&header);
        // Advanced, not sliced: a slice is a second reference, which turns the buffer into a
        // shared one at once (an allocation, and a free on whichever thread drops it last);
        // this way that happens only if the message is ever cloned.
        buf.advance(start);
        WireMessage {
            frame: buf.freeze(),
            body_at: hlen as u8,
            binary: false,
            deflated: OnceLock::new(),
        }
    }

    pub fn engine(packet: &engineio::Packet) -> WireMessage {
        match packet {
            engineio::Packet::Binary(data) => WireMessage::binary(data),
            p => WireMessage::text(|b| p.encode_text(b)),
        }
    }

    pub fn binary(data: &[u8]) -> WireMessage {
        let frame = websocket::encode_frame(OpCode::Binary, data);
        WireMessage {
            body_at: websocket::header_len(data.len()) as u8,
            frame,
            binary: true,
            deflated: OnceLock::new(),
        }
    }

    /// A Socket.IO packet as the Engine.IO messages that carry it: the text part, then one
    /// binary message per attachment.
    pub fn socket(packet: &socketio::Packet) -> SmallVec<[WireMessage; 1]> {
        let mut out = SmallVec::new();
        out.push(WireMessage::text(|b| {
            b.extend_from_slice(b"4");
            packet.encode(b);
        }));
        for a in &packet.attachments {
            out.push(WireMessage::binary(a));
        }
        out
    }

    /// A message again from a frame [`WireMessage::ws_frame`] gave, for a store that keeps
    /// frames in its own buffers; `None` if it is not one of ours.
    pub fn from_ws_frame(frame: Bytes) -> Option<WireMessage> {
        let binary = match frame.first()? & 0x0f {
            0x1 => false,
            0x2 => true,
            _ => return None,
        };
        let body_at = match frame.get(1)? & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        (frame.len() >= body_at as usize).then_some(WireMessage {
            frame,
            body_at,
            binary,
            deflated: OnceLock::new(),
        })
    }

    /// The complete WebSocket frame.
    pub fn ws_frame(&self) -> &Bytes {
        &self.frame
    }

    /// The frame compressed for a connection that negotiated permessage-deflate, made the
    /// first time one needs it and shared from then on; and whether this call made it.
    pub fn deflated_frame(&self) -> (&Bytes, bool) {
        let mut made = false;
        let frame = self.deflated_cell().get_or_init(|| {
            made = true;
            let opcode = if self.binary { 0x2 } else { 0x1 };
            deflate::compressed_frame(opcode, &self.frame[self.body_at as usize..])
        });
        (frame, made)
    }

    fn deflated_cell(&self) -> &Arc<OnceLock<Bytes>> {
        self.deflated.get_or_init(Default::default)
    }

    /// The frame's payload length: what compression would work on.
    pub fn body_len(&self) -> usize {
        self.frame.len() - self.body_at as usize
    }

    /// The Engine.IO packet as a long-polling record.
    pub fn polling(&self) -> Bytes {
        let body = self.frame.slice(self.body_at as usize..);
        if self.binary {
            engineio::Packet::Binary(body).to_text()
        } else {
            body
        }
    }

    pub fn len(&self) -> usize {
        self.frame.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_the_message_it_came_from() {
        for n in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            let body = "x".repeat(n);
            let text = WireMessage::text(|b| b.extend_from_slice(body.as_bytes()));
            let bin = WireMessage::binary(body.as_bytes());
            for m in [text, bin] {
                let copy = Bytes::copy_from_slice(m.ws_frame());
                assert_eq!(WireMessage::from_ws_frame(copy), Some(m));
            }
        }
        assert_eq!(
            WireMessage::from_ws_frame(Bytes::from_static(&[0x88, 0])),
            None
        );
        assert_eq!(
            WireMessage::from_ws_frame(Bytes::from_static(&[0x81, 126, 0])),
            None
        );
    }

    #[test]
    fn polling_form_is_a_slice_of_the_frame() {
        for n in [10usize, 200, 70_000] {
            let body = "x".repeat(n);
            let m = WireMessage::text(|b| {
                b.extend_from_slice(b"4");
                b.extend_from_slice(body.as_bytes());
            });
            assert_eq!(m.polling().len(), n + 1);
            assert_eq!(m.ws_frame().len(), websocket::header_len(n + 1) + n + 1);
            assert_eq!(m.ws_frame()[0], 0x81);
            assert_eq!(
                m.polling().as_ptr(),
                m.ws_frame()[m.ws_frame().len() - n - 1..].as_ptr()
            );
        }
    }

    #[test]
    fn clones_share_one_compression() {
        let m = WireMessage::text(|b| b.extend_from_slice("x".repeat(500).as_bytes()));
        let early = m.clone();
        let (frame, made) = early.deflated_frame();
        assert!(made);
        let late = m.clone();
        for other in [&m, &late] {
            let (again, made) = other.deflated_frame();
            assert!(!made, "compressed once for every clone");
            assert_eq!(again, frame);
        }
    }

    #[test]
    fn binary_polls_as_base64() {
        let m = WireMessage::binary(&[1, 2, 3, 4]);
        assert_eq!(&m.polling()[..], b"bAQIDBA==");
        assert_eq!(&m.ws_frame()[..], &[0x82, 4, 1, 2, 3, 4]);
    }
}
