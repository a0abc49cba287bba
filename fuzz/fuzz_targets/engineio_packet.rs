//! One Engine.IO text packet (a WebSocket text message or a polling record) from arbitrary
//! bytes: decode_text never panics, and what decodes re-encodes to an equivalent packet.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::engineio::Packet;
use maven_gateway::codec::WireMessage;

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    let Ok(packet) = Packet::decode_text(raw.clone()) else {
        return;
    };
    assert!(std::str::from_utf8(data).is_ok(), "decoded a non UTF-8 packet");
    assert!(!matches!(packet, Packet::Binary(_)), "text form never yields binary");
    let text = packet.to_text();
    match &packet {
        // Packets with data keep it byte for byte.
        Packet::Open(_) | Packet::Ping(_) | Packet::Pong(_) | Packet::Message(_) => {
            assert_eq!(&text[..], data)
        }
        // The others drop whatever followed the type digit.
        _ => assert_eq!(&text[..], &data[..1]),
    }
    assert_eq!(Packet::decode_text(text.clone()).as_ref(), Ok(&packet));
    // The framed form's polling slice is the same text.
    let wire = WireMessage::engine(&packet);
    assert_eq!(wire.polling(), text);
    assert_eq!(wire.ws_frame()[0], 0x81);
});
