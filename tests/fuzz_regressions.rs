//! Inputs found by fuzzing (`scripts/fuzz.sh`, targets in `fuzz/`), each replayed through the
//! public API: first the ones that crashed a target, then edge inputs the fuzzers generated
//! that must keep being refused cleanly (no panic, no unbounded allocation or recursion).

use bytes::Bytes;
use jsonwebtoken::{encode, EncodingKey, Header};
use maven_gateway::auth::{Authenticator, KeySource};
use maven_gateway::codec::engineio::{self, decode_payload};
use maven_gateway::codec::socketio::{BinaryAssembler, Kind, Packet, PacketError, MAX_ATTACHMENTS};
use maven_gateway::codec::websocket::{
    decode_client_frame, encode_masked_frame, FrameError, Message, MessageAssembler,
};
use maven_gateway::gateway::GatewaySettings;
use maven_gateway::http::{parse_head, HeadError};
use maven_gateway::ingest::parse::parse_body;
use maven_gateway::session::sockets::{App, Ctx, Output, SocketLayer};
use serde_json::{json, Value};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Crashes.

const SECRET: &str = "fuzz-secret";
/// The fuzz target's clock: 2023-11-14 (ms).
const NOW_MS: u64 = 1_700_000_000_000;

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn auth_app() -> App {
    let auth = Authenticator::new(KeySource::Secret(SECRET.into()), None, None, 5, "sub").unwrap();
    App::Gateway(Arc::new(GatewaySettings {
        auth: Some(Arc::new(auth)),
        ..GatewaySettings::default()
    }))
}

fn text(layer: &mut SocketLayer, app: &App, msg: &str, now_ms: u64) -> Vec<Output> {
    let mut admit = |_: &Arc<str>| true;
    let mut ctx = Ctx {
        now_ms,
        handshake_token: None,
        admit_user: &mut admit,
        admit_rooms: &mut |_| Ok(()),
    };
    let mut out = Vec::new();
    layer.on_text(app, msg, &mut ctx, &mut out);
    out
}

fn connect_with(layer: &mut SocketLayer, app: &App, claims: Value) -> Vec<Output> {
    let msg = format!("0/ws,{{\"token\":\"{}\"}}", token(claims));
    text(layer, app, &msg, NOW_MS)
}

fn acks(out: &[Output], id: u64) -> Vec<&Value> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p) if p.kind == Kind::Ack && p.id == Some(id) => p.data.as_ref(),
            _ => None,
        })
        .collect()
}

/// Crash 1, `socket_layer` (minimized), "attempt to multiply with overflow" at
/// `gateway/api.rs` `refresh`: `fresh.expires_at * 1000` for a validly signed token whose `exp`
/// (seconds) is above `u64::MAX / 1000`. Fuzz input (settings byte 0x04, steps split on 0xFF):
/// `\x04J{"sub":"u-1","exp":1700000600}\xff\xffA{"sub":"u-1","exp":70000991700009999}\xff/ws,`
#[test]
fn auth_refresh_with_exp_beyond_u64_ms_does_not_overflow() {
    let app = auth_app();
    let mut layer = SocketLayer::default();
    connect_with(
        &mut layer,
        &app,
        json!({"sub": "u-1", "exp": 1_700_000_600u64}),
    );
    assert!(layer.is_connected());
    let fresh = token(json!({"sub": "u-1", "exp": 70_000_991_700_009_999u64}));
    let msg = format!("2/ws,9[\"auth\",{{\"token\":\"{fresh}\"}}]");
    let out = text(&mut layer, &app, &msg, NOW_MS);
    // Accepted (with an expiry that does not wrap) or refused: answered either way.
    assert_eq!(acks(&out, 9).len(), 1, "{out:?}");
    let mut tick = Vec::new();
    layer.on_tick(&app, NOW_MS + 1000, &mut tick);
    let _ = layer.next_deadline(&app);
}

/// Crash 1, same bug on the CONNECT path: `next_deadline` / `on_tick` compute
/// `expires_at * 1000` ("attempt to multiply with overflow" at `gateway/api.rs`
/// `GatewaySocket::next_deadline`). Fuzz input: `\x04J{"sub":"u-1","exp":18446744073709552}\xffK`.
#[test]
fn connect_with_exp_beyond_u64_ms_then_timer_does_not_overflow() {
    let app = auth_app();
    let mut layer = SocketLayer::default();
    connect_with(
        &mut layer,
        &app,
        json!({"sub": "u-1", "exp": 18_446_744_073_709_552u64}),
    );
    if let Some(deadline) = layer.next_deadline(&app) {
        // A deadline that wrapped would lie in the past and expire the token at once.
        assert!(deadline > NOW_MS, "deadline {deadline} wrapped");
    }
    let mut out = Vec::new();
    layer.on_tick(&app, NOW_MS + 1000, &mut out);
    assert!(
        !out.iter().any(
            |o| matches!(o, Output::Send(p) if format!("{:?}", p.data).contains("TOKEN_EXPIRED"))
        ),
        "a far-future token expired at once: {out:?}"
    );
}

/// Crash 1, same family in `auth::Authenticator::verify`: `now > exp + self.leeway` overflows
/// ("attempt to add with overflow" at `auth/mod.rs`) for `exp` near `u64::MAX`.
/// Fuzz input: `\x04J{"sub":"u-1","exp":18446744073709551615}`.
#[test]
fn verify_with_exp_u64_max_does_not_overflow() {
    let auth = Authenticator::new(KeySource::Secret(SECRET.into()), None, None, 5, "sub").unwrap();
    let t = token(json!({"sub": "u-1", "exp": u64::MAX}));
    // Accepted (it expires at the end of time) or refused as invalid; never "expired", which
    // is what a wrapped `exp + leeway` says.
    match auth.verify(&t, NOW_MS / 1000) {
        Ok(id) => assert_eq!(id.expires_at, u64::MAX),
        Err(e) => assert_ne!(e, maven_gateway::auth::TokenError::Expired),
    }
}

/// Crash 2, `roundtrip_socketio`: a JSON object whose first key is serde_json's private
/// `$serde_json::private::RawValue` token is not decoded as the object it is. The gateway enables
/// serde_json's `raw_value` feature (unused in `src/`), so `Value`'s deserializer parses that
/// key's string value as JSON text: `"x"` makes a valid packet fail with "expected value at
/// line 1 column 1", and `"[1]"` silently turns the object into `[1]`. Minimized packet text:
/// `2["m",{"$serde_json::private::RawValue":"x"}]`.
#[test]
fn raw_value_token_key_is_an_ordinary_key() {
    let raw = r#"2["m",{"$serde_json::private::RawValue":"x"}]"#;
    let (p, n) = Packet::decode(raw).expect("a valid EVENT packet");
    assert_eq!(n, 0);
    let mut obj = serde_json::Map::new();
    obj.insert("$serde_json::private::RawValue".into(), json!("x"));
    assert_eq!(p.data, Some(json!(["m", Value::Object(obj.clone())])));

    let raw = r#"2["m",{"$serde_json::private::RawValue":"[1]"}]"#;
    let (p, _) = Packet::decode(raw).expect("a valid EVENT packet");
    obj.insert("$serde_json::private::RawValue".into(), json!("[1]"));
    assert_eq!(p.data, Some(json!(["m", Value::Object(obj)])));

    // The same parser reads ingest bodies.
    let events =
        parse_body(br#"{"room":"r","event":"e","data":{"$serde_json::private::RawValue":"x"}}"#)
            .expect("a valid ingest body");
    assert_eq!(events.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Edge inputs that must stay refused cleanly.

fn masked(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    encode_masked_frame(fin, op, payload, mask, 0)
}

#[test]
fn ws_truncated_frames_ask_for_more() {
    let frame = masked(true, 1, &[b'4'; 300], [0x37, 0xfa, 0x21, 0x3d]);
    for cut in 0..frame.len() {
        assert_eq!(
            decode_client_frame(&frame[..cut], 1000),
            Ok(None),
            "cut {cut}"
        );
    }
    // A 64-bit length announcing 2^63 bytes, with no payload: refused before any allocation.
    let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    assert!(matches!(
        decode_client_frame(&huge, 1 << 20),
        Err(FrameError::TooLarge { size, .. }) if size == 1 << 63
    ));
    let max = [0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert!(matches!(
        decode_client_frame(&max, usize::MAX - 16),
        Err(FrameError::TooLarge { .. }) | Ok(None)
    ));
}

#[test]
fn ws_protocol_violations_are_refused() {
    // Ping with a 16-bit length (126 bytes) and a fragmented ping.
    assert_eq!(
        decode_client_frame(&masked(true, 9, &[0; 126], [1; 4]), 1000),
        Err(FrameError::BadControlFrame)
    );
    assert_eq!(
        decode_client_frame(&masked(false, 9, b"", [1; 4]), 1000),
        Err(FrameError::BadControlFrame)
    );
    let mut asm = MessageAssembler::default();
    let (f, _) = decode_client_frame(&masked(true, 0, b"x", [1; 4]), 10)
        .unwrap()
        .unwrap();
    assert_eq!(asm.push(f, 10), Err(FrameError::UnexpectedContinuation));
    // Close code 1005 may not be sent; a 1-byte close payload is malformed.
    for payload in [&[0x03, 0xED][..], &[0x03]] {
        let (f, _) = decode_client_frame(&masked(true, 8, payload, [9; 4]), 125)
            .unwrap()
            .unwrap();
        assert_eq!(asm.push(f, 10), Err(FrameError::BadClosePayload));
    }
    // A message that outgrows the limit through continuations.
    let mut asm = MessageAssembler::default();
    let (f, _) = decode_client_frame(&masked(false, 2, &[0; 8], [2; 4]), 8)
        .unwrap()
        .unwrap();
    assert_eq!(asm.push(f, 10), Ok(None));
    let (f, _) = decode_client_frame(&masked(true, 0, &[0; 8], [2; 4]), 8)
        .unwrap()
        .unwrap();
    assert!(matches!(
        asm.push(f, 10),
        Err(FrameError::TooLarge { size: 16, max: 10 })
    ));
    // UTF-8 split across fragments is fine; broken UTF-8 in the whole message is not.
    let mut asm = MessageAssembler::default();
    let (f, _) = decode_client_frame(&masked(false, 1, &[0xC3], [3; 4]), 8)
        .unwrap()
        .unwrap();
    assert_eq!(asm.push(f, 10), Ok(None));
    let (f, _) = decode_client_frame(&masked(true, 0, &[0xA9], [3; 4]), 8)
        .unwrap()
        .unwrap();
    assert_eq!(
        asm.push(f, 10),
        Ok(Some(Message::Text(Bytes::from_static("é".as_bytes()))))
    );
    let (f, _) = decode_client_frame(&masked(true, 1, &[0xC3, 0x28], [3; 4]), 8)
        .unwrap()
        .unwrap();
    assert_eq!(asm.push(f, 10), Err(FrameError::InvalidUtf8));
}

#[test]
fn socketio_absurd_attachment_counts_are_refused() {
    for raw in [
        r#"5999-["x"]"#,
        r#"565-["x"]"#,
        r#"51000-["x"]"#,
        r#"518446744073709551616-["x"]"#,
        r#"6-1["x"]"#,
        r#"51["x"]"#,
    ] {
        assert_eq!(
            Packet::decode(raw).map(|_| ()),
            Err(PacketError::BadAttachmentCount),
            "{raw}"
        );
    }
    let (_, n) = Packet::decode(&format!(r#"5{MAX_ATTACHMENTS}-["x"]"#)).unwrap();
    assert_eq!(n, MAX_ATTACHMENTS);
    // A placeholder that points past the attachments, or at u64::MAX.
    for num in ["1", "18446744073709551615", "-1", "\"0\""] {
        let raw = format!(r#"51-["x",{{"_placeholder":true,"num":{num}}}]"#);
        let (p, n) = Packet::decode(&raw).unwrap();
        let mut asm = BinaryAssembler::default();
        assert_eq!(asm.start(p, n), Ok(None));
        assert_eq!(
            asm.push(Bytes::from_static(b"a")),
            Err(PacketError::BadPlaceholder),
            "{raw}"
        );
    }
    let mut asm = BinaryAssembler::default();
    assert_eq!(
        asm.push(Bytes::new()),
        Err(PacketError::UnexpectedAttachment)
    );
}

#[test]
fn socketio_bad_ack_ids_and_deep_json_are_refused() {
    assert_eq!(
        Packet::decode(r#"399999999999999999999["x"]"#).map(|_| ()),
        Err(PacketError::BadAckId)
    );
    let (p, _) = Packet::decode(r#"318446744073709551615[]"#).unwrap();
    assert_eq!(p.id, Some(u64::MAX));
    // 100 000 levels of nesting: refused by the parser's recursion limit, not the stack.
    let deep = format!("2[\"x\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        Packet::decode(&deep),
        Err(PacketError::BadJson(_))
    ));
    let deep = format!("2[\"x\",{}", "{\"a\":".repeat(100_000));
    assert!(matches!(
        Packet::decode(&deep),
        Err(PacketError::BadJson(_))
    ));
}

#[test]
fn polling_bodies_with_broken_records_are_refused() {
    use engineio::PacketError as E;
    for (body, err) in [
        (&b"4a\x1e"[..], E::Empty),
        (b"\x1e4a", E::Empty),
        (b"b!!", E::InvalidBase64),
        (b"bAQ=", E::InvalidBase64),
        (b"4\xff", E::InvalidUtf8),
        (b"7", E::UnknownType(b'7')),
    ] {
        assert_eq!(
            decode_payload(Bytes::copy_from_slice(body), usize::MAX),
            Err(err),
            "{body:?}"
        );
    }
    assert_eq!(
        decode_payload(Bytes::from_static(b"b"), usize::MAX),
        Ok(vec![engineio::Packet::Binary(Bytes::new())])
    );
}

#[test]
fn http_heads_over_the_limits_are_refused() {
    let long = format!(
        "GET /{} HTTP/1.1\r\n",
        "a".repeat(maven_gateway::http::request::MAX_HEAD)
    );
    assert_eq!(
        parse_head(long.as_bytes()).unwrap_err(),
        HeadError::TooLarge
    );
    let many: String = (0..49).map(|i| format!("X-{i}: y\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(parse_head(raw.as_bytes()).unwrap_err(), HeadError::TooLarge);
    assert_eq!(
        parse_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
            .unwrap_err(),
        HeadError::BadContentLength
    );
    assert_eq!(
        parse_head(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n")
            .unwrap_err(),
        HeadError::BadContentLength
    );
}

#[test]
fn ingest_deep_or_broken_bodies_are_refused() {
    let deep = "[".repeat(129) + &"]".repeat(129);
    assert!(parse_body(deep.as_bytes()).is_err());
    let deep_ndjson = format!(
        "{{\"a\":1}}\n{}{}\n",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    assert!(parse_body(deep_ndjson.as_bytes()).is_err());
    // Unbalanced closers do not hide an opener count past the limit.
    let sneaky = format!("{}{}", "]".repeat(1000), "[".repeat(200));
    assert!(parse_body(sneaky.as_bytes()).is_err());
}

#[test]
fn socket_layer_refuses_protocol_abuse_cleanly() {
    for app in [
        App::Gateway(Arc::new(GatewaySettings::default())),
        App::Conformance,
    ] {
        let mut layer = SocketLayer::default();
        let out = text(&mut layer, &app, "0/ws,", 0);
        assert!(!out.is_empty());
        // A text packet while attachments are pending (the gateway has answered the binary
        // packet already, and drops its attachments as they come; the conformance server
        // waits for them).
        let out = text(
            &mut layer,
            &app,
            r#"52-["message",{"_placeholder":true,"num":1}]"#,
            0,
        );
        match app {
            App::Gateway(_) => assert!(!out.is_empty()),
            App::Conformance => assert!(out.is_empty()),
        }
        let out = text(&mut layer, &app, "2[\"x\"]", 0);
        assert!(matches!(out[..], [Output::Close(_)]), "{out:?}");
        // More attachments than the limit.
        let mut layer = SocketLayer::default();
        let out = text(&mut layer, &app, r#"565-["message"]"#, 0);
        assert!(matches!(out[..], [Output::Close(_)]), "{out:?}");
        // A binary message with nothing pending.
        let mut admit = |_: &Arc<str>| true;
        let mut ctx = Ctx {
            now_ms: 0,
            handshake_token: None,
            admit_user: &mut admit,
            admit_rooms: &mut |_| Ok(()),
        };
        let mut out = Vec::new();
        layer.on_binary(&app, Bytes::from_static(b"\x00"), &mut ctx, &mut out);
        assert!(matches!(out[..], [Output::Close(_)]), "{out:?}");
    }
}
