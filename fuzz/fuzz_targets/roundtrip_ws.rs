//! WebSocket round trip: an arbitrary payload, opcode and mask, framed as a masked client
//! frame (with any valid length encoding), decodes to the same payload and opcode; the
//! decoder's limit is exact; an unmasked server frame of the same payload is refused.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::websocket::{
    decode_client_frame, encode_frame, encode_masked_frame, header_len, FrameError, Message,
    MessageAssembler, OpCode,
};

const OPS: [(OpCode, u8); 6] = [
    (OpCode::Continuation, 0x0),
    (OpCode::Text, 0x1),
    (OpCode::Binary, 0x2),
    (OpCode::Close, 0x8),
    (OpCode::Ping, 0x9),
    (OpCode::Pong, 0xA),
];

#[derive(Debug)]
struct Input {
    fin: bool,
    op: usize,
    mask: [u8; 4],
    payload: Vec<u8>,
    /// 0: shortest length form; 1: 16-bit; 2: 64-bit (where the length fits).
    form: u8,
    trailing: Vec<u8>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let fin = u.arbitrary()?;
        let op = u.choose_index(OPS.len())?;
        let mask = u.arbitrary()?;
        let form = u.int_in_range(0..=2)?;
        // Sometimes stretch a short pattern past 65535 bytes to reach the 64-bit length.
        let stretch: Option<u32> = if u.ratio(1, 16)? {
            Some(u.int_in_range(120..=70_000)?)
        } else {
            None
        };
        let trailing_len = u.int_in_range(0..=8usize)?;
        let trailing = u.bytes(trailing_len.min(u.len()))?.to_vec();
        let mut payload: Vec<u8> = u.arbitrary()?;
        if let Some(n) = stretch {
            if !payload.is_empty() {
                payload = payload.iter().copied().cycle().take(n as usize).collect();
            }
        }
        Ok(Input { fin, op, mask, payload, form, trailing })
    }
}

fuzz_target!(|input: Input| {
    let (opcode, op) = OPS[input.op];
    let payload = &input.payload;
    let raw = encode_masked_frame(input.fin, op, payload, input.mask, input.form);
    let mut buf = raw.clone();
    buf.extend_from_slice(&input.trailing);
    let max = payload.len();
    let decoded = decode_client_frame(&buf, max);
    if opcode.is_control() && (payload.len() > 125 || !input.fin) {
        assert_eq!(decoded, Err(FrameError::BadControlFrame));
        return;
    }
    let (f, consumed) = decoded
        .unwrap_or_else(|e| panic!("valid frame refused: {e}"))
        .expect("complete frame");
    assert_eq!(consumed, raw.len());
    assert_eq!(f.opcode, opcode);
    assert_eq!(f.fin, input.fin);
    assert_eq!(&f.payload[..], &payload[..]);
    // One byte under the limit is refused before anything is read.
    if max > 0 {
        assert!(matches!(
            decode_client_frame(&buf, max - 1),
            Err(FrameError::TooLarge { .. })
        ));
    }
    // Truncated by one byte, it asks for more.
    assert_eq!(decode_client_frame(&raw[..raw.len() - 1], max), Ok(None));

    // A final data frame makes one message of the same bytes.
    let mut asm = MessageAssembler::default();
    let msg = asm.push(f, max);
    match (opcode, input.fin) {
        (OpCode::Text, true) => match std::str::from_utf8(payload) {
            Ok(_) => assert_eq!(msg, Ok(Some(Message::Text(Bytes::copy_from_slice(payload))))),
            Err(_) => assert_eq!(msg, Err(FrameError::InvalidUtf8)),
        },
        (OpCode::Binary, true) => {
            assert_eq!(msg, Ok(Some(Message::Binary(Bytes::copy_from_slice(payload)))))
        }
        (OpCode::Ping, _) => assert_eq!(msg, Ok(Some(Message::Ping(Bytes::copy_from_slice(payload))))),
        (OpCode::Pong, _) => assert_eq!(msg, Ok(Some(Message::Pong(Bytes::copy_from_slice(payload))))),
        (OpCode::Continuation, _) => assert_eq!(msg, Err(FrameError::UnexpectedContinuation)),
        (OpCode::Text | OpCode::Binary, false) => assert_eq!(msg, Ok(None)),
        (OpCode::Close, _) => {}
    }

    // The server's own frame of the payload: right header, and refused as a client frame.
    let server = encode_frame(opcode, payload);
    assert_eq!(server.len(), header_len(payload.len()) + payload.len());
    assert_eq!(server[0], 0x80 | op);
    assert_eq!(&server[header_len(payload.len())..], &payload[..]);
    assert_eq!(decode_client_frame(&server, usize::MAX), Err(FrameError::Unmasked));
});
