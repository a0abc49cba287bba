//! Socket.IO round trip: an arbitrary packet (kind, namespace, ack id, JSON data built from a
//! small arbitrary JSON tree, binary attachments) encodes to text that decodes to the same
//! packet, and its attachments reassemble it exactly when its placeholders are valid.
#![no_main]

#[path = "../common/arb_json.rs"]
mod arb_json;

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::socketio::{BinaryAssembler, Kind, Packet, PacketError, MAX_ATTACHMENTS};
use serde_json::{Map, Value};

#[derive(Debug)]
struct Input(Packet);

fn namespace(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => "/".into(),
        1 => "/ws".into(),
        // Anything after the slash but the comma that ends it.
        _ => format!("/{}", u.arbitrary::<String>()?.replace(',', "")),
    })
}

fn args(u: &mut Unstructured, with_name: bool) -> Result<Value> {
    let mut a = Vec::new();
    if with_name {
        a.push(Value::String(arb_json::string(u)?));
    }
    for _ in 0..u.int_in_range(0..=4usize)? {
        a.push(arb_json::value(u, 1)?);
    }
    Ok(Value::Array(a))
}

fn object(u: &mut Unstructured) -> Result<Value> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=4usize)? {
        m.insert(arb_json::string(u)?, arb_json::value(u, 1)?);
    }
    Ok(Value::Object(m))
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let kind = *u.choose(&[
            Kind::Connect,
            Kind::Disconnect,
            Kind::Event,
            Kind::Ack,
            Kind::ConnectError,
            Kind::BinaryEvent,
            Kind::BinaryAck,
        ])?;
        let namespace = namespace(u)?;
        let id: Option<u64> = u.arbitrary()?;
        let (id, data) = match kind {
            Kind::Connect => (id, if u.arbitrary()? { Some(object(u)?) } else { None }),
            Kind::Disconnect => (id, None),
            Kind::Event | Kind::BinaryEvent => (id, Some(args(u, true)?)),
            Kind::Ack | Kind::BinaryAck => (Some(id.unwrap_or(0)), Some(args(u, false)?)),
            Kind::ConnectError => (
                id,
                Some(if u.arbitrary()? { object(u)? } else { Value::String(arb_json::string(u)?) }),
            ),
        };
        let mut attachments = Vec::new();
        if matches!(kind, Kind::Event | Kind::Ack | Kind::BinaryEvent | Kind::BinaryAck) {
            for _ in 0..u.int_in_range(0..=MAX_ATTACHMENTS + 1)?.min(u.len()) {
                attachments.push(Bytes::from(u.arbitrary::<Vec<u8>>()?));
            }
        }
        Ok(Input(Packet { kind, namespace, id, data, attachments }))
    }
}

fn placeholders_ok(v: &Value, count: usize) -> bool {
    match v {
        Value::Array(a) => a.iter().all(|x| placeholders_ok(x, count)),
        Value::Object(o) => {
            if o.get("_placeholder") == Some(&Value::Bool(true)) {
                return o.get("num").and_then(Value::as_u64).is_some_and(|n| (n as usize) < count);
            }
            o.values().all(|x| placeholders_ok(x, count))
        }
        _ => true,
    }
}

fuzz_target!(|input: Input| {
    let p = input.0;
    let mut buf = BytesMut::new();
    p.encode(&mut buf);
    let text = std::str::from_utf8(&buf).expect("encoder writes UTF-8");
    let wire_kind = match (p.kind, p.attachments.is_empty()) {
        (Kind::Event, false) => Kind::BinaryEvent,
        (Kind::Ack, false) => Kind::BinaryAck,
        (k, _) => k,
    };
    let decoded = Packet::decode(text);
    if p.attachments.len() > MAX_ATTACHMENTS {
        assert_eq!(decoded.map(|_| ()), Err(PacketError::BadAttachmentCount), "{text}");
        return;
    }
    let (back, n) = decoded.unwrap_or_else(|e| panic!("{p:?} encoded as {text:?}: {e}"));
    assert_eq!(n, p.attachments.len(), "{text}");
    assert_eq!(back.kind, wire_kind, "{text}");
    assert_eq!(back.namespace, p.namespace, "{text}");
    assert_eq!(back.id, p.id, "{text}");
    assert_eq!(back.data, p.data, "{text}");
    assert!(back.attachments.is_empty());

    // Reassembly gives back the packet, attachments included, iff its placeholders are valid.
    let valid = p.data.as_ref().map_or(true, |d| placeholders_ok(d, n));
    let mut asm = BinaryAssembler::default();
    let mut result = asm.start(back, n);
    for a in &p.attachments {
        assert_eq!(result, Ok(None));
        result = asm.push(a.clone());
    }
    assert!(!asm.is_waiting());
    match result {
        Ok(Some(got)) => {
            assert!(valid, "accepted bad placeholders: {text}");
            assert_eq!(got.kind, wire_kind);
            assert_eq!(got.attachments, p.attachments);
            assert_eq!(got.data, p.data);
        }
        Err(PacketError::BadPlaceholder) => assert!(!valid, "refused good placeholders: {text}"),
        other => panic!("unexpected reassembly result {other:?} for {text}"),
    }
});
