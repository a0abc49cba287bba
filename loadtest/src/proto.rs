//! Engine.IO v4 / Socket.IO v5 client framing (text packets only), written here on purpose:
//! the harness must not share code or assumptions with the server under test.
//!
//! Engine.IO packet = one type digit + payload: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. A Socket.IO packet rides in an Engine.IO message:
//! type digit (`0` CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR), then
//! `/nsp,` unless the namespace is `/`, then an optional ack id, then JSON.
//! Long-polling bodies join packets with the record separator 0x1e.

use serde::Deserialize;
use serde_json::value::RawValue;

pub const RECORD_SEP: char = '\u{1e}';

#[derive(Debug, Clone, PartialEq)]
pub enum EioPacket<'a> {
    Open(&'a str),
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

pub fn parse_eio(s: &str) -> Option<EioPacket<'_>> {
    let (t, rest) = s.split_at_checked(1)?;
    Some(match t {
        "0" => EioPacket::Open(rest),
        "1" => EioPacket::Close,
        "2" => EioPacket::Ping(rest),
        "3" => EioPacket::Pong(rest),
        "4" => EioPacket::Message(rest),
        "5" => EioPacket::Upgrade,
        "6" => EioPacket::Noop,
        _ => return None,
    })
}

#[derive(Debug, Deserialize)]
pub struct OpenInfo {
    pub sid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket<'a> {
    pub ty: SioType,
    pub nsp: &'a str,
    pub ack: Option<u64>,
    pub json: &'a str,
}

/// Parses the Socket.IO packet inside an Engine.IO message payload.
pub fn parse_sio(s: &str) -> Option<SioPacket<'_>> {
    let b = s.as_bytes();
    let ty = match *b.first()? {
        b'0' => SioType::Connect,
        b'1' => SioType::Disconnect,
        b'2' => SioType::Event,
        b'3' => SioType::Ack,
        b'4' => SioType::ConnectError,
        b'5' => SioType::BinaryEvent,
        b'6' => SioType::BinaryAck,
        _ => return None,
    };
    let mut i = 1;
    if matches!(ty, SioType::BinaryEvent | SioType::BinaryAck) {
        // attachment count then '-'
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if b.get(i) != Some(&b'-') {
            return None;
        }
        i += 1;
    }
    let mut nsp = "/";
    if b.get(i) == Some(&b'/') {
        let start = i;
        while i < b.len() && b[i] != b',' {
            i += 1;
        }
        nsp = &s[start..i];
        if i < b.len() {
            i += 1; // ','
        }
    }
    let ack_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let ack = if i > ack_start {
        s[ack_start..i].parse().ok()
    } else {
        None
    };
    Some(SioPacket {
        ty,
        nsp,
        ack,
        json: &s[i..],
    })
}

/// `4` + Socket.IO CONNECT for `nsp`, with an optional auth JSON object.
pub fn connect_packet(nsp: &str, auth: Option<&str>) -> String {
    let mut s = String::from("40");
    if nsp != "/" {
        s.push_str(nsp);
        s.push(',');
    }
    if let Some(a) = auth {
        s.push_str(a);
    }
    s
}

/// `4` + Socket.IO EVENT `[name, payload]` with an optional ack id.
pub fn event_packet(nsp: &str, ack: Option<u64>, name: &str, payload: Option<&str>) -> String {
    let mut s = String::from("42");
    if nsp != "/" {
        s.push_str(nsp);
        s.push(',');
    }
    if let Some(id) = ack {
        s.push_str(&id.to_string());
    }
    s.push('[');
    s.push_str(&serde_json::to_string(name).unwrap());
    if let Some(p) = payload {
        s.push(',');
        s.push_str(p);
    }
    s.push(']');
    s
}

/// Split a long-polling body into Engine.IO packets.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(RECORD_SEP).filter(|p| !p.is_empty())
}

/// The parts of an event the harness reads. Everything else in the payload is skipped,
/// including the recovery offset the gateway appends to lossless events.
#[derive(Debug, Deserialize)]
pub struct EventArgs<'a>(
    #[serde(borrow)] pub std::borrow::Cow<'a, str>,
    #[serde(borrow, default)] pub Option<&'a RawValue>,
    // Only there so a third argument parses.
    #[allow(dead_code)]
    #[serde(default)]
    pub Option<serde::de::IgnoredAny>,
);

#[derive(Debug, Deserialize, Default)]
pub struct Envelope<'a> {
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// Markers the publisher embeds in each event's data (`lt_ts` publish time in µs since the
/// epoch, `lt_seq` per-stream sequence number, `lt_s` stream id), plus the order book fields
/// used when a server rewrites book data (the publisher then puts its timestamp in
/// `lastUpdateId`).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Marker<'a> {
    #[serde(default, rename = "lt_ts")]
    pub lt_ts: Option<u64>,
    #[serde(default, rename = "lt_seq")]
    pub lt_seq: Option<u64>,
    #[serde(default, rename = "lt_s")]
    pub lt_s: Option<u32>,
    #[serde(borrow, default, rename = "type")]
    pub ty: Option<&'a str>,
    #[serde(borrow, default)]
    pub symbol: Option<&'a str>,
    #[serde(default)]
    pub first_update_id: Option<u64>,
    #[serde(default)]
    pub last_update_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packets() {
        assert_eq!(parse_eio("2"), Some(EioPacket::Ping("")));
        assert_eq!(parse_eio("3probe"), Some(EioPacket::Pong("probe")));
        let p = parse_sio("2/ws,[\"a\",1]").unwrap();
        assert_eq!(
            (p.ty, p.nsp, p.ack, p.json),
            (SioType::Event, "/ws", None, "[\"a\",1]")
        );
        let p = parse_sio("3/ws,12[{\"ok\":true}]").unwrap();
        assert_eq!((p.ty, p.nsp, p.ack), (SioType::Ack, "/ws", Some(12)));
        let p = parse_sio("0{\"sid\":\"x\"}").unwrap();
        assert_eq!(
            (p.ty, p.nsp, p.json),
            (SioType::Connect, "/", "{\"sid\":\"x\"}")
        );
        let p = parse_sio("0/ws,").unwrap();
        assert_eq!((p.nsp, p.json), ("/ws", ""));
        assert_eq!(
            event_packet("/ws", Some(3), "subscribe", Some("{}")),
            "42/ws,3[\"subscribe\",{}]"
        );
        assert_eq!(connect_packet("/ws", None), "40/ws,");
        assert_eq!(
            connect_packet("/", Some("{\"token\":\"t\"}")),
            "40{\"token\":\"t\"}"
        );
        let v: Vec<_> = split_payload("40/ws,{}\u{1e}2").collect();
        assert_eq!(v, ["40/ws,{}", "2"]);
    }

    #[test]
    fn reads_markers() {
        let s = r#"["trade",{"channel":"trades:A","data":{"price":"1","lt_ts":5,"lt_seq":7,"lt_s":2,"x":[1,{"y":2}]},"timestamp":1}]"#;
        let EventArgs(name, env, _) = serde_json::from_str(s).unwrap();
        assert_eq!(name, "trade");
        let with_offset = r#"["trade",{"data":{"lt_seq":1}},"1764000000000-3"]"#;
        let EventArgs(_, e, _) = serde_json::from_str(with_offset).unwrap();
        assert!(e.is_some());
        let env: Envelope = serde_json::from_str(env.unwrap().get()).unwrap();
        let m: Marker = serde_json::from_str(env.data.unwrap().get()).unwrap();
        assert_eq!((m.lt_ts, m.lt_seq, m.lt_s), (Some(5), Some(7), Some(2)));
    }
}
