//! Every symbol's latest ticker on this shard, from which a new `ticker:all` subscriber's
//! first message is composed: complete from the first message, whatever the digest's
//! throttle has sent so far.

use crate::codec::WireMessage;
use crate::gateway::envelope;
use crate::market::{Payload, TickerValue};
use bytes::Bytes;
use indexmap::IndexMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct TickerDirectory {
    values: IndexMap<Arc<str>, Bytes>,
    /// The composed message and the room it was composed for, until a value changes.
    composed: Option<(Arc<str>, WireMessage)>,
}

impl TickerDirectory {
    pub fn update(&mut self, values: &[TickerValue]) {
        for v in values {
            self.values.insert(v.symbol.clone(), v.json.clone());
        }
        if !values.is_empty() {
            self.composed = None;
        }
    }

    pub fn merge(&mut self, values: IndexMap<Arc<str>, Bytes>) {
        if !values.is_empty() {
            self.values.extend(values);
            self.composed = None;
        }
    }

    /// `tickers.update` with every known ticker for `room` (`ticker:all` or one of its views),
    /// or `None` before any.
    pub fn snapshot(&mut self, room: &Arc<str>, now_ms: u64) -> Option<WireMessage> {
        if self.values.is_empty() {
            return None;
        }
        if self.composed.as_ref().is_some_and(|(r, _)| r != room) {
            self.composed = None;
        }
        let values = &self.values;
        let (_, m) = self.composed.get_or_insert_with(|| {
            let mut json =
                Vec::with_capacity(values.values().map(|v| v.len() + 1).sum::<usize>() + 2);
            json.push(b'[');
            for (i, v) in values.values().enumerate() {
                if i > 0 {
                    json.push(b',');
                }
                json.extend_from_slice(v);
            }
            json.push(b']');
            let m = envelope::encode_payload(
                "tickers.update",
                room,
                &Payload::Json(json.into()),
                now_ms,
            );
            (room.clone(), m)
        });
        Some(m.clone())
    }
}
