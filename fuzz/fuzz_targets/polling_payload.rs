//! An HTTP long-polling body from arbitrary bytes: decode_payload never panics, and the
//! packets it yields re-encode into a body that decodes to the same packets.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::engineio::{decode_payload, encode_payload, Packet, RECORD_SEPARATOR};
use maven_gateway::codec::WireMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(packets) = decode_payload(Bytes::copy_from_slice(data), usize::MAX) else {
        return;
    };
    let records = data.iter().filter(|&&b| b == RECORD_SEPARATOR).count() + 1;
    assert_eq!(packets.len(), records, "one packet per record");
    let texts: Vec<Bytes> = packets.iter().map(Packet::to_text).collect();
    for (p, t) in packets.iter().zip(&texts) {
        // What a server sends over polling is the same bytes as its WebSocket frame body.
        assert_eq!(&WireMessage::engine(p).polling(), t);
        assert!(!t.contains(&RECORD_SEPARATOR), "a record never holds the separator");
    }
    let body = encode_payload(texts.iter().map(|b| &b[..]));
    let again = decode_payload(body.freeze(), usize::MAX).expect("re-encoded payload must decode");
    assert_eq!(again, packets);
});
