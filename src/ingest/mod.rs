//! Events from the exchange backend into the gateway: parsing, validation, market-data
//! semantics, encoding once per publish, and hand-off to the shards.

pub mod catch_up;
pub mod demo;
pub mod parse;
pub mod partitions;
pub mod raw;
pub mod turns;

use crate::clock::unix_ms;
use crate::market::demand::Demand;
use crate::market::{MarketCounters, MarketSettings, Publish, StreamClass};
use crate::recovery::{Offset, Recovery};
use crate::room::Symbols;
use crate::shard::{Broadcast, Fanout, Overflow};
use parking_lot::Mutex;
use partitions::{Held, Needs, Partitions, PARTS};
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

/// The in-process bus of standalone mode. The market state is split by symbol into parts
/// with a lock each, taken per ingested batch and per timer tick, never per delivered
/// message; encoding and hand-off to the shards happen outside them.
pub struct Ingest {
    fanout: Fanout,
    market: Partitions,
    /// Events accepted by type (once per batch).
    by_type: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Envelopes encoded: one per publish, whatever the number of subscribers.
    encodes: AtomicU64,
    events: AtomicU64,
    /// Offsets and the replay log, when connection state recovery is on.
    recovery: Option<Arc<Recovery>>,
    /// Symbols clients may subscribe to: each symbol ingested is added.
    symbols: Arc<Symbols>,
    /// The last `seq` of each lossless stream. Its lock is where batches are put in one
    /// order: `seq`s, recovery offsets and hand-off tickets are all given under it.
    seqs: Mutex<foldhash::HashMap<Arc<str>, u64>>,
    /// While catching up with the cluster stream, what would have been published, folded per
    /// room (newest values, book views, lossless rooms touched); the shards get it at the end.
    history: Mutex<Option<Overflow>>,
    /// Which views the shards have open.
    demand: Arc<Demand>,
    /// Batches reach the log and the shards in the order they were applied.
    turns: turns::Turns,
}

/// A batch applied and numbered, waiting to be encoded and handed off at its turn.
struct Numbered<'a> {
    /// Each publish, with its recovery offset set, and its `seq`.
    publishes: Vec<Publish>,
    seqs: Vec<Option<u64>>,
    now: u64,
    created: std::time::Instant,
    ticket: turns::Ticket<'a>,
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
            market: Partitions::new(settings),
            by_type: Mutex::new(Default::default()),
            encodes: AtomicU64::new(0),
            events: AtomicU64::new(0),
            history: Mutex::new(None),
            seqs: Mutex::new(Default::default()),
            turns: turns::Turns::default(),
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
        let view = self.market.read(symbol, |m| m.book_view(symbol))?;
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
        self.market.counters()
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
        raw: &parse::RawEvents<'_>,
        body: Option<&bytes::Bytes>,
    ) -> Result<Vec<crate::market::input::IngestEvent>, IngestError> {
        typed(&raw.events, |ev| {
            crate::market::input::parse_checked_event_in(ev.fields(&raw.members)?, body)
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
        let json = raw.events.iter().map(|r| r.text.to_owned()).collect();
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
            .lock(Needs::events(&typed))
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
            let mut members = Vec::new();
            let parsed = raw::check(&text, &mut members).and_then(|ev| {
                crate::market::input::parse_checked_event_in(ev.fields(&members)?, Some(&text))
            });
            match parsed {
                Ok(t) => typed.push((t, Some(mark))),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(error = %e, "skipping an invalid event from the stream");
                }
            }
        }
        let (good, left_out) = self
            .market
            .lock(Needs::events(typed.iter().map(|(ev, _)| ev)))
            .fitting(typed);
        for e in &left_out {
            tracing::warn!(error = %e, "skipping an out-of-order event from the stream");
        }
        skipped += left_out.len();
        // Cannot be refused: only this task applies stream events, and what it applies was
        // just fitted to the books.
        if let Err(e) = self.apply_checked(good, arrival) {
            tracing::error!(error = %e, "a read of the stream was not applied");
        }
        skipped
    }

    /// From now until `end_history`, what ingest produces rebuilds state (books, last values,
    /// the replay log) but is not delivered: it is history to every socket connected now.
    pub fn begin_history(&self) {
        self.in_turn(|| self.fold_from_now());
    }

    fn fold_from_now(&self) {
        let mut history = self.history.lock();
        if history.is_none() {
            *history = Some(Overflow {
                stream_gap: true,
                ..Overflow::default()
            });
        }
    }

    /// Runs `f` between the batches applied before this call and those applied after, as the
    /// shards and the replay log see them.
    fn in_turn<R>(&self, f: impl FnOnce() -> R) -> R {
        let ticket = {
            let _numbering = self.seqs.lock();
            self.turns.ticket()
        };
        ticket.run(f)
    }

    /// Stream entries up to `gone` were trimmed before this instance read them: the replay
    /// log cannot vouch for anything before (a recovery across the hole is a new session),
    /// and every follower of a lossless room is told and closed when the catch-up ends.
    pub fn stream_hole(&self, gone: Offset) {
        self.in_turn(|| {
            if let Some(r) = &self.recovery {
                let mut log = r.log();
                log.reset();
                log.cover_from(Offset::new(gone.ms, gone.seq.saturating_add(1)));
            }
            self.fold_from_now();
            if let Some(history) = self.history.lock().as_mut() {
                history.all_lossless = true;
            }
        });
    }

    /// Hands what was folded since `begin_history` to the shards: they take the newest values
    /// and book views, and the members of lossless rooms that missed events are sent to
    /// recover them from the replay log. Nothing is delivered twice or as live.
    pub fn end_history(&self) {
        // In turn: every batch applied before this is history, every one after is live.
        self.in_turn(|| {
            if let Some(mut history) = self.history.lock().take() {
                // History has no fan-out latency to report.
                history.created = None;
                self.fanout.hand_over(history);
            }
        });
    }

    /// Cluster mode: the stream is read from `first` on (at start, or after it restarted).
    pub fn stream_read_from(&self, first: Offset, restarted: bool) {
        self.in_turn(|| {
            if let Some(r) = &self.recovery {
                let mut log = r.log();
                if restarted {
                    log.reset();
                }
                log.cover_from(first);
            }
        });
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
        let (events, ids): (Vec<_>, Vec<_>) = typed.into_iter().unzip();
        let changes = self.demand.take_changes(now);
        let needs = Needs::events(&events).and(Needs::changes(&changes));
        self.turn(
            needs,
            now,
            arrival,
            n * 2,
            |held, out, marks| -> Result<(), IngestError> {
                // Views opened since the last turn start before this batch, so the state a new
                // member gets first is the one the batch's updates chain to; views closed stop
                // costing before it. They stand even if the batch is refused.
                held.views_changed(changes, out);
                marks.resize(out.len(), None);
                held.validate(&events)
                    .map_err(|(index, message)| IngestError::BadEvent { index, message })?;
                self.apply_held(held, events, ids, now, out, marks);
                Ok(())
            },
        )?;
        self.events.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Applies a validated batch to the parts it holds.
    fn apply_held(
        &self,
        held: &mut Held<'_>,
        events: Vec<crate::market::input::IngestEvent>,
        ids: Vec<Option<StreamMark>>,
        now: u64,
        out: &mut Vec<Publish>,
        marks: &mut Vec<Option<StreamMark>>,
    ) {
        let mut by_type = self.by_type.lock();
        for ev in &events {
            match by_type.get_mut(ev.kind()) {
                Some(n) => *n += 1,
                None => {
                    by_type.insert(ev.kind().to_owned(), 1);
                }
            }
        }
        drop(by_type);
        self.symbols
            .saw_all(events.iter().filter_map(|ev| ev.symbol()));
        for (ev, id) in events.into_iter().zip(ids) {
            held.apply(ev, now, out);
            marks.resize(out.len(), id);
        }
        // Numbered by the caller while the parts are still held, so a symbol's batches keep
        // their order.
        held.finish(out);
    }

    /// While the batch's parts are held, in the order batches are applied: gives each
    /// publish what depends on that order (its `seq`, its recovery offset) and the batch its
    /// place in the hand-off order. Encoding waits until the parts are released.
    ///
    /// With recovery on, each delivered lossless event gets an offset: its stream id, else
    /// the next local one.
    #[allow(
        clippy::disallowed_methods,
        reason = "when a batch is made, for the fan-out latency histogram"
    )]
    fn number(
        &self,
        mut out: Vec<Publish>,
        stream_marks: Vec<Option<StreamMark>>,
        now: u64,
        arrival: Arrival,
    ) -> Option<Numbered<'_>> {
        if out.is_empty() {
            return None;
        }
        let created = std::time::Instant::now();
        let recovery = self.recovery.as_deref();
        let local =
            recovery.is_some_and(|r| matches!(r.store, crate::recovery::SessionStore::Memory(_)));
        let mut last_seqs = self.seqs.lock();
        let ticket = self.turns.ticket();
        let mut seqs = Vec::with_capacity(out.len());
        let marks = stream_marks.into_iter().chain(std::iter::repeat(None));
        for (p, mark) in out.iter_mut().zip(marks) {
            let id = mark.map(|m| m.id);
            if arrival == Arrival::Late {
                p.appended_ms = id.map(|o| o.ms);
            }
            let numbered = p.class == StreamClass::Lossless
                && p.deliver
                && crate::room::Room::parse(&p.room).kind() != crate::room::RoomKind::Klines;
            seqs.push(numbered.then_some(()).and_then(|()| match mark {
                // From the stream: the number its append gave it, so every instance agrees;
                // an entry a backend added itself has none (an instance's own count would
                // clash with the stream's numbers).
                Some(m) => m.seq,
                None => Some(match last_seqs.get_mut(&p.room) {
                    Some(last) => {
                        *last += 1;
                        *last
                    }
                    None => {
                        last_seqs.insert(p.room.clone(), 1);
                        1
                    }
                }),
            }));
            p.offset = match (recovery, p.class, p.deliver) {
                (Some(r), StreamClass::Lossless, true) => {
                    if local {
                        Some(r.next_local_offset())
                    } else {
                        id
                    }
                }
                _ => None,
            };
        }
        drop(last_seqs);
        Some(Numbered {
            publishes: out,
            seqs,
            now,
            created,
            ticket,
        })
    }

    /// Encodes a numbered batch on this thread, then, at its turn, puts its lossless events
    /// into the replay log and hands it to the shards (or to the history being folded). The
    /// log has every event before any shard can deliver it.
    fn hand_off(&self, numbered: Numbered<'_>) {
        let Numbered {
            publishes,
            seqs,
            now,
            created,
            ticket,
        } = numbered;
        // Written once, into the memory the shards share.
        let batch: Arc<[Broadcast]> = publishes
            .into_iter()
            .zip(seqs)
            .map(|(p, seq)| p.encode(now, seq))
            .collect();
        ticket.run(|| {
            if let Some(r) = &self.recovery {
                let mut logged = batch.iter().filter_map(|b| Some((b.offset?, b))).peekable();
                if logged.peek().is_some() {
                    let mut log = r.log();
                    for (offset, b) in logged {
                        log.push_frame(offset, &b.room, b.body.ws_frame(), now);
                    }
                }
            }
            self.encodes.fetch_add(batch.len() as u64, Relaxed);
            if let Some(history) = self.history.lock().as_mut() {
                history.fold(&batch, created);
                return;
            }
            self.fanout.publish(batch, created);
        });
    }

    /// Runs throttle and conflation timers, and starts and drops views as the shards open and
    /// close them, until `stop`; one thread for all symbols.
    pub fn run_timers(&self, stop: &AtomicBool) {
        while !stop.load(Relaxed) {
            let now = unix_ms();
            let changes = self.demand.take_changes(now);
            if !changes.is_empty() {
                self.turn(
                    Needs::changes(&changes),
                    now,
                    Arrival::Live,
                    0,
                    |held, out, _| held.views_changed(changes, out),
                );
            }
            let poll = |needs| {
                self.turn(needs, now, Arrival::Live, 0, |held, out, _| {
                    held.poll(now, out)
                })
            };
            let next = (0..PARTS)
                .map(Needs::part)
                .chain([Needs::digest()])
                .filter_map(poll)
                .min();
            let wait = next.map_or(20, |d| d.saturating_sub(now).clamp(1, 20));
            self.demand.wait(Duration::from_millis(wait), unix_ms());
        }
    }

    /// One turn over what `needs` names (a batch, or timers and view changes): what `f`
    /// publishes, with the stream mark of each where it has one, is numbered while the parts
    /// are held and handed off after.
    fn turn<R>(
        &self,
        needs: Needs,
        now: u64,
        arrival: Arrival,
        capacity: usize,
        f: impl FnOnce(&mut Held<'_>, &mut Vec<Publish>, &mut Vec<Option<StreamMark>>) -> R,
    ) -> R {
        let mut out = Vec::with_capacity(capacity);
        let mut marks = Vec::with_capacity(capacity);
        let (r, numbered) = {
            let mut held = self.market.lock(needs);
            let r = f(&mut held, &mut out, &mut marks);
            (r, self.number(out, marks, now, arrival))
        };
        if let Some(numbered) = numbered {
            self.hand_off(numbered);
        }
        r
    }
}
