//! The application the official Engine.IO v4 and Socket.IO v5 protocol test suites expect
//! (served by `examples/conformance.rs`): namespaces `/` and `/custom`, the client's auth
//! payload echoed as `auth` on connect, `message` answered with `message-back` and
//! `message-with-ack` acknowledged with its own arguments, binary attachments included. It
//! shares the Socket.IO layer with the gateway, which is what the suites test.

use crate::codec::socketio::{Kind, Packet};
use bytes::Bytes;
use serde_json::{json, Value};

/// Namespaces a client may connect.
pub fn accepts(ns: &str) -> bool {
    ns == "/" || ns == "/custom"
}

/// What a connected socket is sent right after the CONNECT answer: its auth payload back.
pub fn on_connect(ns: &str, auth: Option<Value>) -> Packet {
    Packet::event(ns, json!(["auth", auth.unwrap_or_else(|| json!({}))]), None)
}

/// The answer to an event (arguments `args`, event name first), if it has one.
pub fn on_event(
    ns: &str,
    mut args: Vec<Value>,
    ack_id: Option<u64>,
    attachments: Vec<Bytes>,
) -> Option<Packet> {
    match args.first().and_then(Value::as_str)? {
        "message" => {
            args[0] = Value::String("message-back".into());
            Some(Packet {
                kind: Kind::Event,
                namespace: ns.to_owned(),
                id: None,
                data: Some(Value::Array(args)),
                attachments,
            })
        }
        "message-with-ack" => {
            args.remove(0);
            Some(Packet {
                kind: Kind::Ack,
                namespace: ns.to_owned(),
                id: Some(ack_id?),
                data: Some(Value::Array(args)),
                attachments,
            })
        }
        _ => None,
    }
}
