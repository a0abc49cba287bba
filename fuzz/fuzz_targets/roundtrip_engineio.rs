//! Engine.IO round trip: an arbitrary packet's text form decodes to the same packet (binary
//! packets through the polling form, `b<base64>`), and a batch of packets joined into one
//! polling body decodes to the same batch.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::engineio::{decode_payload, encode_payload, Packet, RECORD_SEPARATOR};
use maven_gateway::codec::websocket::header_len;
use maven_gateway::codec::WireMessage;

#[derive(Arbitrary, Debug)]
enum P {
    Open(String),
    Close,
    Ping(String),
    Pong(String),
    Message(String),
    Binary(Vec<u8>),
    Upgrade,
    Noop,
}

impl P {
    fn packet(self) -> Packet {
        let b = |s: String| Bytes::from(s.into_bytes());
        match self {
            P::Open(s) => Packet::Open(b(s)),
            P::Close => Packet::Close,
            P::Ping(s) => Packet::Ping(b(s)),
            P::Pong(s) => Packet::Pong(b(s)),
            P::Message(s) => Packet::Message(b(s)),
            P::Binary(v) => Packet::Binary(Bytes::from(v)),
            P::Upgrade => Packet::Upgrade,
            P::Noop => Packet::Noop,
        }
    }
}

fuzz_target!(|input: Vec<P>| {
    let packets: Vec<Packet> = input.into_iter().map(P::packet).collect();
    let mut texts = Vec::new();
    for p in &packets {
        let text = p.to_text();
        match p {
            Packet::Binary(data) => {
                assert_eq!(text[0], b'b');
                let back = decode_payload(text.clone(), usize::MAX).expect("binary polling record decodes");
                assert_eq!(back, vec![p.clone()]);
                let wire = WireMessage::engine(p);
                assert_eq!(wire.polling(), text);
                assert_eq!(wire.ws_frame().len(), header_len(data.len()) + data.len());
                assert_eq!(&wire.ws_frame()[header_len(data.len())..], &data[..]);
            }
            _ => {
                let back = Packet::decode_text(text.clone()).expect("text packet decodes");
                assert_eq!(&back, p);
                let wire = WireMessage::engine(p);
                assert_eq!(wire.polling(), text);
                assert_eq!(wire.ws_frame()[0], 0x81);
            }
        }
        texts.push(text);
    }
    // Polling cannot carry a record separator inside a packet (JSON never holds a raw 0x1E).
    if !packets.is_empty() && texts.iter().all(|t| !t.contains(&RECORD_SEPARATOR)) {
        let body = encode_payload(texts.iter().map(|t| &t[..]));
        let back = decode_payload(body.freeze(), usize::MAX).expect("polling body decodes");
        assert_eq!(back, packets);
    }
});
