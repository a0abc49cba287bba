//! Socket.IO packets from arbitrary text, then a binary reassembly: the input is split on
//! 0xFF (never part of UTF-8); the first piece is the text packet, each later piece one binary
//! attachment fed to a BinaryAssembler.
#![no_main]

#[path = "../common/json.rs"]
mod json;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::socketio::{BinaryAssembler, Kind, Packet, PacketError, MAX_ATTACHMENTS};

fn encode(p: &Packet) -> String {
    let mut b = BytesMut::new();
    p.encode(&mut b);
    String::from_utf8(b.to_vec()).expect("encoder writes UTF-8")
}

fn same(a: &Packet, b: &Packet) -> bool {
    a.kind == b.kind
        && a.namespace == b.namespace
        && a.id == b.id
        && a.attachments == b.attachments
        && match (&a.data, &b.data) {
            (Some(x), Some(y)) => json::json_eq(x, y),
            (None, None) => true,
            _ => false,
        }
}

fuzz_target!(|data: &[u8]| {
    let mut pieces = data.split(|&b| b == 0xFF);
    let head = pieces.next().unwrap_or_default();
    let text = String::from_utf8_lossy(head);

    let Ok((packet, expected)) = Packet::decode(&text) else {
        return;
    };
    assert!(expected <= MAX_ATTACHMENTS);
    assert!(packet.attachments.is_empty());
    assert!(packet.namespace.starts_with('/'));
    assert!(!packet.namespace.contains(','));
    let binary = matches!(packet.kind, Kind::BinaryEvent | Kind::BinaryAck);
    assert!(binary || expected == 0);

    // The text form re-encodes to a packet that decodes the same.
    if !binary {
        let again = encode(&packet);
        let (p2, n2) = Packet::decode(&again)
            .unwrap_or_else(|e| panic!("re-encoded {again:?} does not decode: {e}"));
        assert_eq!(n2, 0);
        assert!(same(&p2, &packet), "{packet:?} -> {again:?} -> {p2:?}");
    }

    // Then the attachments.
    let mut asm = BinaryAssembler::default();
    let mut done = match asm.start(packet.clone(), expected) {
        Ok(Some(p)) => {
            assert_eq!(expected, 0);
            Some(p)
        }
        Ok(None) => {
            assert!(expected > 0 && asm.is_waiting());
            None
        }
        Err(e) => {
            assert_eq!(e, PacketError::BadPlaceholder);
            assert!(!asm.is_waiting());
            return;
        }
    };
    let mut pushed = 0usize;
    for piece in pieces {
        let r = asm.push(Bytes::copy_from_slice(piece));
        if done.is_some() {
            assert_eq!(r, Err(PacketError::UnexpectedAttachment));
            continue;
        }
        pushed += 1;
        match r {
            Ok(None) => assert!(pushed < expected && asm.is_waiting()),
            Ok(Some(p)) => {
                assert_eq!(pushed, expected);
                assert_eq!(p.attachments.len(), expected);
                assert!(!asm.is_waiting());
                done = Some(p);
            }
            Err(e) => {
                assert_eq!(pushed, expected);
                assert_eq!(e, PacketError::BadPlaceholder);
                assert!(!asm.is_waiting());
                return;
            }
        }
    }
    // A complete binary packet re-encodes with its attachment count and decodes the same.
    if let Some(p) = done {
        if binary {
            let again = encode(&p);
            let (mut p2, n2) = Packet::decode(&again)
                .unwrap_or_else(|e| panic!("re-encoded {again:?} does not decode: {e}"));
            assert_eq!(n2, p.attachments.len());
            p2.attachments = p.attachments.clone();
            assert!(same(&p2, &p), "{p:?} -> {again:?} -> {p2:?}");
        }
    }
});
