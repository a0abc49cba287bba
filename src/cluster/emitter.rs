//! Packets from socket.io's Redis emitter (`@socket.io/redis-emitter`): a backend that emits
//! to rooms of `/ws` through Redis pub/sub keeps working when this gateway replaces a
//! socket.io server. Each instance subscribes and delivers to its own connections.
//!
//! The emitter publishes on `<key>#<nsp>#` (or `<key>#<nsp>#<room>#` for one room) the
//! msgpack array `[uid, packet, opts]` with `packet = {type: 2, data: [event, ...args], nsp}`
//! and `opts = {rooms, except, flags}`.

use crate::codec::WireMessage;
use crate::shard::RoomEmit;
use crate::GATEWAY_NAMESPACE;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Socket.IO's EVENT packet type.
const EVENT: u8 = 2;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EmitterError {
    #[error("not an emitter packet: {0}")]
    Malformed(String),
    #[error("packet type {0} is not an event")]
    NotAnEvent(u8),
    #[error("packet for namespace '{0}'")]
    OtherNamespace(String),
    #[error("event without a name")]
    NoEventName,
}

#[derive(Deserialize)]
struct RawPacket {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    nsp: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawOpts {
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
}

/// Decodes one pub/sub message. Binary arguments are refused (msgpack bin has no JSON form),
/// as are packets for other namespaces and anything that is not an event.
pub fn decode(payload: &[u8]) -> Result<RoomEmit, EmitterError> {
    let (_uid, packet, opts): (Value, RawPacket, Option<RawOpts>) =
        rmp_serde::from_slice(payload).map_err(|e| EmitterError::Malformed(e.to_string()))?;
    if packet.kind != EVENT {
        return Err(EmitterError::NotAnEvent(packet.kind));
    }
    let nsp = packet.nsp.unwrap_or_else(|| "/".into());
    if nsp != GATEWAY_NAMESPACE {
        return Err(EmitterError::OtherNamespace(nsp));
    }
    let event = match packet.data.first() {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(EmitterError::NoEventName),
    };
    let opts = opts.unwrap_or_default();
    let message = WireMessage::text(|b| {
        b.extend_from_slice(b"42");
        b.extend_from_slice(GATEWAY_NAMESPACE.as_bytes());
        b.extend_from_slice(b",");
        // Serializing JSON values into a growable buffer cannot fail.
        let _ = serde_json::to_writer(bytes::BufMut::writer(b), &packet.data);
    });
    Ok(RoomEmit {
        rooms: opts.rooms.into_iter().map(Arc::from).collect(),
        except: opts.except.into_iter().map(Arc::from).collect(),
        message,
        event,
    })
}

/// Counts of emitter packets, for metrics.
#[derive(Debug, Default)]
pub struct EmitterCounters {
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
}

/// Subscribes to `<key>#/ws#*` and hands each emit to `deliver`, reconnecting after outages
/// (pub/sub keeps nothing: emits published while disconnected are gone, as with socket.io's
/// own adapter).
pub async fn follow(
    client: redis::Client,
    key: String,
    deliver: impl Fn(RoomEmit),
    counters: Arc<EmitterCounters>,
    stop: Arc<AtomicBool>,
) {
    let pattern = format!("{key}#{GATEWAY_NAMESPACE}#*");
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "emitter subscription: redis unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = pubsub.psubscribe(&pattern).await {
            tracing::warn!(error = %e, "cannot subscribe to emitter packets");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(pattern, "following socket.io emitter packets");
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            match decode(msg.get_payload_bytes()) {
                Ok(emit) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    deliver(emit);
                }
                Err(e) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(channel = msg.get_channel_name(), error = %e, "ignoring an emitter packet");
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct P<'a> {
        #[serde(rename = "type")]
        kind: u8,
        data: Value,
        nsp: &'a str,
    }

    fn pack(kind: u8, data: Value, nsp: &str, opts: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&("emitter", P { kind, data, nsp }, opts)).unwrap()
    }

    #[test]
    fn decodes_an_emit_to_rooms() {
        let bytes = pack(
            2,
            serde_json::json!(["order.update", {"id": 1}, "x"]),
            "/ws",
            serde_json::json!({"rooms": ["user:u-1:orders"], "except": [], "flags": {}}),
        );
        let e = decode(&bytes).unwrap();
        assert_eq!(e.event, "order.update");
        assert_eq!(&*e.rooms[0], "user:u-1:orders");
        assert_eq!(
            &e.message.polling()[..],
            &b"42/ws,[\"order.update\",{\"id\":1},\"x\"]"[..]
        );
    }

    #[test]
    fn refuses_what_it_cannot_deliver() {
        let opts = serde_json::json!({"rooms": [], "except": [], "flags": {}});
        let e = |data, nsp, kind| decode(&pack(kind, data, nsp, opts.clone())).unwrap_err();
        assert_eq!(
            e(serde_json::json!(["x"]), "/", 2),
            EmitterError::OtherNamespace("/".into())
        );
        assert_eq!(
            e(serde_json::json!(["x"]), "/ws", 4),
            EmitterError::NotAnEvent(4)
        );
        assert_eq!(
            e(serde_json::json!([1]), "/ws", 2),
            EmitterError::NoEventName
        );
        assert!(matches!(
            decode(b"\x93\xa1x"),
            Err(EmitterError::Malformed(_))
        ));
        assert!(matches!(decode(&[]), Err(EmitterError::Malformed(_))));
    }
}
