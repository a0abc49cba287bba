//! Events from the exchange backend into the gateway: parsing, validation, market-data
//! semantics, encoding once per publish, and hand-off to the shards.

pub mod catch_up;
pub mod demo;
pub mod parse;
pub mod raw;

use crate::clock::unix_ms;
use crate::market::demand::Demand;
use crate::market::{Market, MarketCounters, MarketSettings, Publish, StreamClass};
use crate::recovery::{LogEntry, Offset, Recovery};
use crate::room::Symbols;
use crate::shard::{Broadcast, Fanout, Overflow};
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IngestError {
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    #[error("event {index}: {message}")]
    BadEvent { index: usize, message: String },
}

/// The in-process bus of standalone mode. The market state is behind one lock taken per
/// ingested batch and per timer tick, never per delivered message.
pub struct Ingest {
    fanout: Fanout,
    market: Mutex<Market>,
    /// Events accepted by type (under the market lock, once per event).
    by_type: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Envelopes encoded: one per publish, whatever the number of subscribers.
    encodes: AtomicU64,
    events: AtomicU64,
    /// Offsets and the replay log, when connection state recovery is on.
    recovery: Option<Arc<Recovery>>,
    /// Symbols clients may subscribe to: each symbol ingested is added.
    symbols: Arc<Symbols>,
    /// The last `seq` of each lossless stream (taken under the market lock).
    seqs: Mutex<std::collections::HashMap<Arc<str>, u64>>,
    /// While catching up with the cluster stream, what would have been published, folded per
    /// room (newest values, book views, lossless rooms touched); the shards get it at the end.
    history: Mutex<Option<Overflow>>,
    /// Which views the shards have open.
    demand: Arc<Demand>,
}

/// A batch's events validated, or the first refusal with its index.
fn typed<T>(
    events: impl IntoIterator<Item = T>,
    parse: impl Fn(T) -> Result<crate::market::input::IngestEvent, String>,
) -> Result<Vec<crate::market::input::IngestEvent>, IngestError> {
    let events = events.into_iter();
    // Sized up front: collecting into a `Result` would grow the vector by doubling.
    let mut out = Vec::with_capacity(events.size_hint().0);
    for (index, ev) in events.enumerate() {
        out.push(parse(ev).map_err(|message| IngestError::BadEvent { index, message })?);
    }
    Ok(out)
}

/// Where an event read from the cluster stream stands: its entry id (the recovery offset of
/// what it produces) and, for a lossless stream, its number there as the appending instance
/// gave it (so every instance sends the same `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    pub id: Offset,
    pub seq: Option<u64>,
}

/// A checked event as it goes into the cluster stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub json: String,
    /// The lossless stream whose next number the stream gives it.
    pub numbered_in: Option<Arc<str>>,
}

/// How events read from the cluster stream reach subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// As the stream takes them.
    Live,
    /// After the instance fell behind: delivered to sockets subscribed before the stream took
    /// each event, and to nobody who subscribed since.
    Late,
}

impl Ingest {
    pub fn new(
        fanout: Fanout,
        settings: MarketSettings,
        recovery: Option<Arc<Recovery>>,
        symbols: Arc<Symbols>,
        demand: Arc<Demand>,
    ) -> Arc<Ingest> {
        Arc::new(Ingest {
            fanout,
            demand,
            recovery,
            symbols,
            market: Mutex::new(Market::new(settings)),
            by_type: Mutex::new(Default::default()),
            encodes: AtomicU64::new(0),
            events: AtomicU64::new(0),
            history: Mutex::new(None),
            seqs: Mutex::new(Default::default()),
        })
    }

    pub fn encodes(&self) -> u64 {
        self.encodes.load(Relaxed)
    }

    pub fn events(&self) -> u64 {
        self.events.load(Relaxed)
    }

    /// The order book clients of a symbol are in step with (top N, best first), as JSON.
    pub fn book_json(&self, symbol: &str) -> Option<Vec<u8>> {
        let view = self.market.lock().book_view(symbol)?;
        Some(view.snapshot_json("query"))
    }

    pub fn events_by_type(&self) -> Vec<(String, u64)> {
        self.by_type
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn market_counters(&self) -> MarketCounters {
        self.market.lock().counters
    }

    /// Parses, validates and publishes a request body; all or nothing. Each event's data
    /// goes into frames as the backend wrote it, never decoded into a tree and written again.
    pub fn submit_body(&self, body: &[u8]) -> Result<usize, IngestError> {
        self.submit_shared(&bytes::Bytes::copy_from_slice(body))
    }

    /// As `submit_body`, for a body already in shared memory: the data of events encoded
    /// within the batch is read from it in place.
    pub fn submit_shared(&self, body: &bytes::Bytes) -> Result<usize, IngestError> {
        let raw = parse::parse_body_raw(body)?;
        let typed = Self::parse_all_raw(&raw, Some(body))?;
        self.apply_checked(
            typed.into_iter().map(|e| (e, None)).collect(),
            Arrival::Live,
        )
    }

    /// `events`, parts of `body` when given (their data is then taken from it in place).
    fn parse_all_raw(
        events: &[&str],
        body: Option<&bytes::Bytes>,
    ) -> Result<Vec<crate::market::input::IngestEvent>, IngestError> {
        typed(events.iter().copied(), |ev| {
            crate::market::input::parse_raw_event_in(ev, body)
        })
    }

    /// Validates every event first, then applies and publishes the batch; returns how many
    /// were accepted.
    pub fn submit(&self, events: Vec<Value>) -> Result<usize, IngestError> {
        let typed = Self::parse_all(events)?;
        self.apply_checked(
            typed.into_iter().map(|e| (e, None)).collect(),
            Arrival::Live,
        )
    }

    fn parse_all(
        events: Vec<Value>,
    ) -> Result<Vec<crate::market::input::IngestEvent>, IngestError> {
        typed(events, crate::market::input::parse_event)
    }

    /// Checks a batch without applying it (cluster mode appends it to the stream instead):
    /// every event's own fields, and order book ids against the local replica. Returns each
    /// event's JSON as the stream carries it (as the backend wrote it), with the lossless
    /// stream it is numbered in.
    pub fn check_body(&self, body: &[u8]) -> Result<Vec<Appended>, IngestError> {
        let raw = parse::parse_body_raw(body)?;
        let typed = Self::parse_all_raw(&raw, None)?;
        let json = raw.iter().map(|r| (*r).to_owned()).collect();
        self.checked(json, typed)
    }

    /// As `check_body`, for events already parsed.
    pub fn check(&self, events: Vec<Value>) -> Result<Vec<Appended>, IngestError> {
        let json: Vec<String> = events.iter().map(Value::to_string).collect();
        let typed = Self::parse_all(events)?;
        self.checked(json, typed)
    }

    fn checked(
        &self,
        json: Vec<String>,
        typed: Vec<crate::market::input::IngestEvent>,
    ) -> Result<Vec<Appended>, IngestError> {
        self.market
            .lock()
            .validate(&typed)
            .map_err(|(index, message)| IngestError::BadEvent { index, message })?;
        Ok(json
            .into_iter()
            .zip(&typed)
            .map(|(json, ev)| Appended {
                json,
                numbered_in: ev.sequenced_room(),
            })
            .collect())
    }

    /// Applies events read back from the cluster stream, in stream order. The stream is the
    /// authority on order, so an event that no longer fits (say, book ids another instance
    /// validated against an older replica) is skipped and counted, never fatal.
    /// Each event is its JSON text, read as ingest reads a body's (its data passed through).
    pub fn apply_stream(&self, events: Vec<(StreamMark, String)>, arrival: Arrival) -> usize {
        let mut skipped = 0;
        let mut typed = Vec::with_capacity(events.len());
        for (mark, text) in events {
            let text = bytes::Bytes::from(text);
            let parsed = parse::parse_event_text(&text)
                .and_then(|ev| crate::market::input::parse_raw_event_in(ev, Some(&text)));
            match parsed {
                Ok(t) => typed.push((t, Some(mark))),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(error = %e, "skipping an invalid event from the stream");
                }
            }
        }
        let mut good = Vec::with_capacity(typed.len());
        {
            let market = self.market.lock();
            for (ev, id) in typed {
                match market.validate(std::slice::from_ref(&ev)) {
                    Ok(()) => good.push((ev, id)),
                    Err((_, e)) => {
                        skipped += 1;
                        tracing::warn!(error = %e, "skipping an out-of-order event from the stream");
                    }
                }
            }
        }
        let _ = self.apply_checked(good, arrival);
        skipped
    }

    /// From now until `end_history`, what ingest produces rebuilds state (books, last values,
    /// the replay log) but is not delivered: it is history to every socket connected now.
    pub fn begin_history(&self) {
        let mut history = self.history.lock();
        if history.is_none() {
            *history = Some(Overflow {
                stream_gap: true,
                ..Overflow::default()
            });
        }
    }

    /// Stream entries up to `gone` were trimmed before this instance read them: the replay
    /// log cannot vouch for anything before (a recovery across the hole is a new session),
    /// and every follower of a lossless room is told and closed when the catch-up ends.
    pub fn stream_hole(&self, gone: Offset) {
        if let Some(r) = &self.recovery {
            let mut log = r.log();
            log.reset();
            log.cover_from(Offset::new(gone.ms, gone.seq.saturating_add(1)));
        }
        self.begin_history();
        if let Some(history) = self.history.lock().as_mut() {
            history.all_lossless = true;
        }
    }

    /// Hands what was folded since `begin_history` to the shards: they take the newest values
    /// and book views, and the members of lossless rooms that missed events are sent to
    /// recover them from the replay log. Nothing is delivered twice or as live.
    pub fn end_history(&self) {
        // Under the market lock, so no publish slips between the fold and the hand-over.
        let _market = self.market.lock();
        if let Some(mut history) = self.history.lock().take() {
            // History has no fan-out latency to report.
            history.created = None;
            self.fanout.hand_over(history);
        }
    }

    /// Cluster mode: the stream is read from `first` on (at start, or after it restarted).
    pub fn stream_read_from(&self, first: Offset, restarted: bool) {
        if let Some(r) = &self.recovery {
            let mut log = r.log();
            if restarted {
                log.reset();
            }
            log.cover_from(first);
        }
    }

    /// Applies validated events; each may carry its stream id, which becomes the offset of
    /// the lossless event it produces.
    fn apply_checked(
        &self,
        typed: Vec<(crate::market::input::IngestEvent, Option<StreamMark>)>,
        arrival: Arrival,
    ) -> Result<usize, IngestError> {
        let n = typed.len();
        let now = unix_ms();
        let mut out = Vec::with_capacity(n * 2);
        let mut offsets = Vec::with_capacity(n * 2);
        {
            let mut market = self.market.lock();
            let (events, ids): (Vec<_>, Vec<_>) = typed.into_iter().unzip();
            market
                .validate(&events)
                .map_err(|(index, message)| IngestError::BadEvent { index, message })?;
            // Views opened since the last turn start before this batch, so the state a new
            // member gets first is the one the batch's updates chain to.
            market.views_changed(self.demand.take_changes(now), &mut out);
            offsets.resize(out.len(), None);
            let mut by_type = self.by_type.lock();
            self.symbols
                .saw_all(events.iter().filter_map(|ev| ev.symbol()));
            for (ev, id) in events.into_iter().zip(ids) {
                match by_type.get_mut(ev.kind()) {
                    Some(n) => *n += 1,
                    None => {
                        by_type.insert(ev.kind().to_owned(), 1);
                    }
                }
                market.apply(ev, now, &mut out);
                offsets.resize(out.len(), id);
            }
            market.take_ticker_values(&mut out);
            market.attach_views(&mut out);
            drop(by_type);
            // Publish inside the lock so batches reach the shards in the order they were
            // applied; encoding is per publish, not per subscriber.
            self.publish(out, offsets, now, arrival);
        }
        self.events.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Encodes and hands a batch to the shards. With recovery on, each delivered lossless
    /// event gets an offset (its stream id, else the next local one) and goes into the replay
    /// log before any shard can deliver it.
    #[allow(
        clippy::disallowed_methods,
        reason = "when a batch is handed over, for the fan-out latency histogram"
    )]
    fn publish(
        &self,
        out: Vec<Publish>,
        stream_ids: Vec<Option<StreamMark>>,
        now: u64,
        arrival: Arrival,
    ) {
        if out.is_empty() {
            return;
        }
        let created = std::time::Instant::now();
        let recovery = self.recovery.as_deref();
        let local =
            recovery.is_some_and(|r| matches!(r.store, crate::recovery::SessionStore::Memory(_)));
        let mut logged = Vec::new();
        // Once per batch: every lossless event of it is numbered here.
        let mut seqs = self.seqs.lock();
        let batch: Vec<Broadcast> = out
            .into_iter()
            .zip(stream_ids.into_iter().chain(std::iter::repeat(None)))
            .map(|(mut p, mark)| {
                let id = mark.map(|m| m.id);
                if arrival == Arrival::Late {
                    p.appended_ms = id.map(|o| o.ms);
                }
                let seq = (p.class == StreamClass::Lossless
                    && p.deliver
                    && crate::room::Room::parse(&p.room).kind() != crate::room::RoomKind::Klines)
                    .then_some(())
                    .and_then(|()| match mark {
                        // From the stream: the number its append gave it, so every instance
                        // agrees; an entry a backend added itself has none (an instance's
                        // own count would clash with the stream's numbers).
                        Some(m) => m.seq,
                        None => {
                            let last = seqs.entry(p.room.clone()).or_insert(0);
                            *last += 1;
                            Some(*last)
                        }
                    });
                let offset = match (recovery, p.class, p.deliver) {
                    (Some(r), StreamClass::Lossless, true) => {
                        if local {
                            Some(r.next_local_offset())
                        } else {
                            id
                        }
                    }
                    _ => None,
                };
                let b = p.encode(now, offset, seq);
                if let Some(offset) = offset {
                    logged.push(LogEntry {
                        offset,
                        room: b.room.clone(),
                        message: b.body.clone(),
                        at_ms: now,
                    });
                }
                b
            })
            .collect();
        drop(seqs);
        if let (Some(r), false) = (recovery, logged.is_empty()) {
            let mut log = r.log();
            for e in logged {
                log.push(e);
            }
        }
        self.encodes.fetch_add(batch.len() as u64, Relaxed);
        if let Some(history) = self.history.lock().as_mut() {
            history.fold(&batch, created);
            return;
        }
        self.fanout.publish(batch, created);
    }

    /// Runs throttle and conflation timers, and starts and drops views as the shards open and
    /// close them, until `stop`; one thread for all symbols.
    pub fn run_timers(&self, stop: &AtomicBool) {
        while !stop.load(Relaxed) {
            let now = unix_ms();
            let wait = {
                let mut market = self.market.lock();
                let mut out = Vec::new();
                market.views_changed(self.demand.take_changes(now), &mut out);
                market.poll(now, &mut out);
                market.attach_views(&mut out);
                self.publish(out, Vec::new(), now, Arrival::Live);
                market
                    .next_deadline()
                    .map_or(20, |d| d.saturating_sub(now).clamp(1, 20))
            };
            self.demand.wait(Duration::from_millis(wait), unix_ms());
        }
    }
}
