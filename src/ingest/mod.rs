//! Events from the exchange backend into the gateway: parsing, validation, routing to rooms,
//! encoding once per publish, and hand-off to the shards.

pub mod demo;
pub mod parse;
pub mod route;
pub mod server;

use crate::gateway::envelope;
use crate::shard::{unix_ms, Broadcast, Fanout};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IngestError {
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    #[error("event {index}: {message}")]
    BadEvent { index: usize, message: String },
}

/// The in-process bus of standalone mode.
pub struct Ingest {
    fanout: Fanout,
    /// Envelopes encoded: one per routed emit, whatever the number of subscribers.
    encodes: AtomicU64,
    events: AtomicU64,
}

impl Ingest {
    pub fn new(fanout: Fanout) -> Arc<Ingest> {
        Arc::new(Ingest {
            fanout,
            encodes: AtomicU64::new(0),
            events: AtomicU64::new(0),
        })
    }

    pub fn encodes(&self) -> u64 {
        self.encodes.load(Relaxed)
    }

    pub fn events(&self) -> u64 {
        self.events.load(Relaxed)
    }

    /// Parses, validates and publishes a request body; all or nothing.
    pub fn submit_body(&self, body: &[u8]) -> Result<usize, IngestError> {
        let events = parse::parse_body(body)?;
        self.submit(&events)
    }

    /// Validates every event first, then publishes the batch; returns how many were accepted.
    pub fn submit(&self, events: &[Value]) -> Result<usize, IngestError> {
        let mut routes = Vec::with_capacity(events.len() * 2);
        for (index, ev) in events.iter().enumerate() {
            let r = route::route(ev).map_err(|message| IngestError::BadEvent { index, message })?;
            routes.extend(r);
        }
        let ts = unix_ms();
        let batch: Vec<Broadcast> = routes
            .into_iter()
            .map(|r| Broadcast {
                retain: r.retained(),
                message: envelope::encode(&r.event, &r.room, &r.data, ts),
                room: Arc::from(r.room),
            })
            .collect();
        self.encodes.fetch_add(batch.len() as u64, Relaxed);
        self.events.fetch_add(events.len() as u64, Relaxed);
        self.fanout.publish(batch);
        Ok(events.len())
    }
}
