//! Client WebSocket frames from arbitrary bytes: decode frames in a loop, as the shard does
//! on its read buffer, and reassemble them into messages under small limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::websocket::{
    decode_client_frame, FrameError, Message, MessageAssembler, OpCode,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first two bytes pick small limits so TooLarge paths are reachable.
    let max_payload = 1 + data[0] as usize * 4;
    let max_message = 1 + data[1] as usize * 8;
    let input = &data[2..];

    // The low bit of the first also says whether permessage-deflate was negotiated, so
    // compressed messages (RSV1) are inflated under the message limit.
    let mut asm = MessageAssembler::with_deflate(data[0] & 1 == 1);
    let mut rest = input;
    loop {
        match decode_client_frame(rest, max_payload) {
            Ok(None) => {
                // More bytes needed (nothing consumed).
                break;
            }
            Ok(Some((frame, consumed))) => {
                assert!(consumed <= rest.len(), "consumed {consumed} of {}", rest.len());
                assert!(consumed >= 6, "a masked frame is at least 6 bytes");
                assert!(frame.payload.len() <= max_payload);
                assert!(consumed - frame.payload.len() >= 6);
                // Any strict prefix of a valid frame asks for more bytes instead.
                for cut in [0, 1, 2, consumed / 2, consumed - 1] {
                    assert_eq!(decode_client_frame(&rest[..cut], max_payload), Ok(None), "prefix {cut}");
                }
                if frame.opcode.is_control() {
                    assert!(frame.fin && frame.payload.len() <= 125);
                }
                // The frame's own bytes decode to the same frame.
                let again = decode_client_frame(&rest[..consumed], max_payload)
                    .expect("same bytes, same answer")
                    .expect("complete frame");
                assert_eq!(again.1, consumed);
                assert_eq!(again.0, frame);
                let op = frame.opcode;
                match asm.push(frame, max_message) {
                    Ok(Some(msg)) => match msg {
                        Message::Text(t) => {
                            assert!(t.len() <= max_message.max(max_payload));
                            assert!(std::str::from_utf8(&t).is_ok());
                        }
                        Message::Binary(b) => assert!(b.len() <= max_message.max(max_payload)),
                        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
                        Message::Close(_) => {}
                    },
                    Ok(None) => assert!(!op.is_control() && !asm.is_idle()),
                    Err(e) => {
                        let code = e.close_code();
                        assert!(matches!(code, 1002 | 1007 | 1009));
                        if matches!(e, FrameError::InvalidUtf8) {
                            assert!(op == OpCode::Text || op == OpCode::Continuation || op == OpCode::Close);
                        }
                        break;
                    }
                }
                rest = &rest[consumed..];
            }
            Err(e) => {
                let _ = e.close_code();
                let _ = e.to_string();
                break;
            }
        }
    }
});
