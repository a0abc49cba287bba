//! RFC 6455 framing, server side: decodes masked client frames, encodes unmasked server frames.
//!
//! The decoder works on a byte slice and reports how much it consumed, so the caller decides
//! where bytes live. It never allocates more than the configured message limit.

use super::deflate::{self, InflateError};
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Longest possible server frame header (2 + 8 bytes; servers never mask).
pub const MAX_SERVER_HEADER: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Why a peer's frames were refused; each maps to the close code sent back.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("client frame is not masked")]
    Unmasked,
    #[error("control frame longer than 125 bytes or fragmented")]
    BadControlFrame,
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: u64, max: usize },
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid close frame payload")]
    BadClosePayload,
    #[error(transparent)]
    Inflate(#[from] super::deflate::InflateError),
}

impl FrameError {
    /// The close status code RFC 6455 §7.4.1 assigns to this failure.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } | Self::Inflate(InflateError::TooLarge { .. }) => 1009,
            Self::InvalidUtf8 | Self::Inflate(InflateError::Corrupt) => 1007,
            _ => 1002,
        }
    }
}

/// One decoded frame whose payload is already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: under permessage-deflate, the first frame of a compressed message. Whether it
    /// may be set is the assembler's to say, since only it knows what was negotiated.
    pub compressed: bool,
    pub opcode: OpCode,
    pub payload: Bytes,
}

/// Parses one masked client frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (nothing is consumed), otherwise the frame and
/// the number of bytes it occupied. `max_payload` bounds a single frame before any allocation.
pub fn decode_client_frame(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x30 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let len7 = (b1 & 0x7F) as u64;
    let (len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n, 2),
    };
    if opcode.is_control() && (len > 125 || !fin) {
        return Err(FrameError::BadControlFrame);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge {
            size: len,
            max: max_payload,
        });
    }
    let len = len as usize;
    if buf.len() < pos + 4 + len {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    let mut payload = BytesMut::with_capacity(len);
    payload.extend_from_slice(&buf[pos..pos + len]);
    apply_mask(&mut payload, mask);
    Ok(Some((
        Frame {
            fin,
            compressed: b0 & 0x40 != 0,
            opcode,
            payload: payload.freeze(),
        },
        pos + len,
    )))
}

/// XORs `data` with the 4-byte mask, a word at a time where possible.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Writes the header of an unmasked server frame for a payload of `len` bytes.
pub fn encode_header(dst: &mut BytesMut, opcode: OpCode, len: usize) {
    dst.put_u8(0x80 | opcode.as_u8());
    put_length(dst, len);
}

/// The payload length field of an unmasked frame, in its shortest form.
pub fn put_length(dst: &mut BytesMut, len: usize) {
    if len < 126 {
        dst.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        dst.put_u8(126);
        dst.put_u16(len as u16);
    } else {
        dst.put_u8(127);
        dst.put_u64(len as u64);
    }
}

/// Length of the header `encode_header` writes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// A masked frame as a client sends it (the server never does; for test clients and fuzzing).
/// `form` picks the length encoding: 0 the shortest, 1 at least the 16-bit form, 2 or more the
/// 64-bit form, since a decoder must accept lengths encoded longer than needed.
pub fn encode_masked_frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4], form: u8) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | op];
    let len = payload.len();
    if len < 126 && form == 0 {
        v.push(0x80 | len as u8);
    } else if len <= 0xFFFF && form <= 1 {
        v.push(0x80 | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// A complete unmasked server frame.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    encode_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A close frame carrying `code` and a reason (truncated to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut reason = reason.as_bytes();
    if reason.len() > 123 {
        reason = &reason[..123];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    encode_frame(OpCode::Close, &payload)
}

/// A whole data message reassembled from one or more frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<u16>),
}

/// Joins fragmented frames into messages and validates what RFC 6455 asks of each, and
/// inflates compressed ones where permessage-deflate was negotiated.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    /// The message in progress: its type, whether it is compressed, what came so far.
    partial: Option<(OpCode, bool, BytesMut)>,
    deflate: bool,
    /// Bytes inflated since `take_inflated`.
    inflated: usize,
}

impl MessageAssembler {
    /// An assembler for a connection that negotiated permessage-deflate: a data message's
    /// first frame may carry RSV1, and such a message is inflated (up to the message limit)
    /// before it is checked.
    pub fn with_deflate(deflate: bool) -> MessageAssembler {
        MessageAssembler {
            deflate,
            ..MessageAssembler::default()
        }
    }

    /// Whether the connection negotiated permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// What compressed messages inflated to since the last call: work the peer caused beyond
    /// the bytes it sent.
    pub fn take_inflated(&mut self) -> usize {
        std::mem::take(&mut self.inflated)
    }

    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Bytes held for a fragmented message still arriving.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |(_, _, b)| b.capacity())
    }

    /// Feeds one frame; returns a message when one is complete.
    pub fn push(
        &mut self,
        frame: Frame,
        max_message: usize,
    ) -> Result<Option<Message>, FrameError> {
        let starts_message = matches!(frame.opcode, OpCode::Text | OpCode::Binary);
        if frame.compressed && !(self.deflate && starts_message) {
            return Err(FrameError::ReservedBits);
        }
        match frame.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(frame.payload))),
            OpCode::Pong => Ok(Some(Message::Pong(frame.payload))),
            OpCode::Close => parse_close(&frame.payload).map(|c| Some(Message::Close(c))),
            OpCode::Continuation => {
                let (op, compressed, mut buf) = self
                    .partial
                    .take()
                    .ok_or(FrameError::UnexpectedContinuation)?;
                let size = buf.len() + frame.payload.len();
                if size > max_message {
                    return Err(FrameError::TooLarge {
                        size: size as u64,
                        max: max_message,
                    });
                }
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    return self.finish(op, compressed, buf.freeze(), max_message);
                }
                self.partial = Some((op, compressed, buf));
                Ok(None)
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(FrameError::ExpectedContinuation);
                }
                if frame.fin {
                    return self.finish(frame.opcode, frame.compressed, frame.payload, max_message);
                }
                let mut buf = BytesMut::with_capacity(frame.payload.len());
                buf.extend_from_slice(&frame.payload);
                self.partial = Some((frame.opcode, frame.compressed, buf));
                Ok(None)
            }
        }
    }

    fn finish(
        &mut self,
        op: OpCode,
        compressed: bool,
        payload: Bytes,
        max_message: usize,
    ) -> Result<Option<Message>, FrameError> {
        let payload = if compressed {
            let inflated = deflate::inflate(&payload, max_message).inspect_err(|e| {
                // A bomb was inflated up to the limit before it was refused: work all the same.
                if matches!(e, InflateError::TooLarge { .. }) {
                    self.inflated += max_message;
                }
            })?;
            self.inflated += inflated.len();
            inflated
        } else {
            payload
        };
        finish(op, payload).map(Some)
    }
}

fn finish(op: OpCode, payload: Bytes) -> Result<Message, FrameError> {
    if op == OpCode::Text {
        std::str::from_utf8(&payload).map_err(|_| FrameError::InvalidUtf8)?;
        Ok(Message::Text(payload))
    } else {
        Ok(Message::Binary(payload))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::BadClosePayload),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::BadClosePayload);
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn masked(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        encode_masked_frame(fin, op, payload, mask, 0)
    }

    #[test]
    fn decodes_masked_text() {
        let raw = masked(true, 1, b"hello world, this is long", [1, 2, 3, 4]);
        let (f, n) = decode_client_frame(&raw, 1000).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(&f.payload[..], b"hello world, this is long");
        assert_eq!(f.opcode, OpCode::Text);
    }

    #[test]
    fn partial_input_needs_more() {
        let raw = masked(true, 2, &[7u8; 300], [9, 8, 7, 6]);
        for cut in 0..raw.len() {
            assert_eq!(decode_client_frame(&raw[..cut], 1000).unwrap(), None);
        }
    }

    #[test]
    fn refuses_protocol_violations() {
        assert_eq!(
            decode_client_frame(&[0x81, 0x00], 10),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            decode_client_frame(&[0xA1, 0x80, 0, 0, 0, 0], 10),
            Err(FrameError::ReservedBits)
        );
        // RSV1 is the assembler's to judge: only permessage-deflate gives it a meaning.
        let (rsv1, _) = decode_client_frame(&[0xC1, 0x80, 0, 0, 0, 0], 10)
            .unwrap()
            .unwrap();
        assert!(rsv1.compressed);
        assert_eq!(
            MessageAssembler::default().push(rsv1, 10),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            decode_client_frame(&[0x83, 0x80, 0, 0, 0, 0], 10),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            decode_client_frame(&[0x09, 0x80, 0, 0, 0, 0], 10),
            Err(FrameError::BadControlFrame)
        );
        let huge = [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            decode_client_frame(&huge, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn reassembles_fragments_and_checks_utf8() {
        let mut asm = MessageAssembler::default();
        let parts = [(false, 1u8, "héll".as_bytes()), (true, 0u8, "o".as_bytes())];
        let mut out = None;
        for (fin, op, p) in parts {
            let raw = masked(fin, op, p, [5, 6, 7, 8]);
            let (f, _) = decode_client_frame(&raw, 100).unwrap().unwrap();
            out = asm.push(f, 100).unwrap();
        }
        assert_eq!(
            out,
            Some(Message::Text(Bytes::from_static("héllo".as_bytes())))
        );
        let raw = masked(true, 1, &[0xff, 0xfe], [1, 1, 1, 1]);
        let (f, _) = decode_client_frame(&raw, 100).unwrap().unwrap();
        assert_eq!(asm.push(f, 100), Err(FrameError::InvalidUtf8));
    }

    /// The payload of an unmasked frame.
    fn server_payload(frame: &[u8]) -> &[u8] {
        match frame[1] & 0x7f {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn inflates_compressed_messages_where_negotiated() {
        let text = "{\"channel\":\"ticker\"}".repeat(50);
        let frame = deflate::compressed_frame(0x1, text.as_bytes());
        let body = server_payload(&frame);
        // As a client sends it: RSV1 on the first of two frames only.
        let (a, b) = body.split_at(body.len() / 2);
        let mut first = masked(false, 1, a, [1, 2, 3, 4]);
        first[0] |= 0x40;
        let second = masked(true, 0, b, [4, 3, 2, 1]);
        let mut asm = MessageAssembler::with_deflate(true);
        let (f, _) = decode_client_frame(&first, 1 << 16).unwrap().unwrap();
        assert_eq!(asm.push(f, 1 << 16), Ok(None));
        let (f, _) = decode_client_frame(&second, 1 << 16).unwrap().unwrap();
        assert_eq!(
            asm.push(f, 1 << 16),
            Ok(Some(Message::Text(Bytes::from(text.clone()))))
        );
        assert_eq!(asm.take_inflated(), text.len());

        // RSV1 on a continuation or a control frame means nothing, negotiated or not.
        for (fin, op) in [(true, 0u8), (true, 9u8)] {
            let mut raw = masked(fin, op, b"", [0; 4]);
            raw[0] |= 0x40;
            let (f, _) = decode_client_frame(&raw, 100).unwrap().unwrap();
            let mut asm = MessageAssembler::with_deflate(true);
            assert_eq!(asm.push(f, 100), Err(FrameError::ReservedBits));
        }

        // A bomb: a few KB that would inflate to 10 MB, against a 1 MB limit.
        let bomb = deflate::compressed_frame(0x1, &vec![b'a'; 10 << 20]);
        let body = server_payload(&bomb);
        let mut raw = masked(true, 1, body, [7; 4]);
        raw[0] |= 0x40;
        let (f, _) = decode_client_frame(&raw, 1 << 20).unwrap().unwrap();
        let e = MessageAssembler::with_deflate(true)
            .push(f, 1 << 20)
            .unwrap_err();
        assert_eq!(e.close_code(), 1009, "{e}");
    }

    #[test]
    fn header_lengths_match_encoding() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let f = encode_frame(OpCode::Binary, &vec![0; len]);
            assert_eq!(f.len(), header_len(len) + len);
        }
    }

    #[test]
    fn close_codes() {
        assert_eq!(parse_close(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(parse_close(&[0x03, 0xEC]), Err(FrameError::BadClosePayload));
        assert_eq!(parse_close(&[1]), Err(FrameError::BadClosePayload));
    }
}
