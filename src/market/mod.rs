//! Market-data semantics between ingest and fan-out (contract §4): per-symbol ticker and
//! kline throttling with leading and trailing edges, order book replicas with snapshots,
//! deltas and resyncs, optional delta conflation, and (in `digest`, apart from the rest since
//! it spans symbols) the `ticker:all` digest.
//!
//! Pure: events and the time (ms) go in, publishes come out; `poll` runs due timers, kept in
//! one heap for all the symbols a `Market` holds. A `Market` may hold any set of symbols:
//! ingest splits them among several, each under its own lock.

pub mod book;
pub mod demand;
pub mod digest;
pub mod input;
pub mod throttle;
mod views;
pub use views::refresh as view_refresh;

use crate::codec::WireMessage;
use crate::gateway::envelope;
pub use crate::gateway::envelope::Payload;
use crate::recovery::Offset;
use crate::room::Room;
use book::{BookChange, BookJson, BookView, Delta, OrderBook, Replica, Window};
use compact_str::CompactString;
use indexmap::IndexMap;
use input::IngestEvent;
use std::cmp::Reverse;
// Keyed by the backend's symbols and rooms, looked up several times per event: foldhash, a few
// cycles where SipHash takes tens of nanoseconds.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BinaryHeap;
use std::sync::Arc;
use throttle::{Offer, Throttle};

/// How a stream may be treated for a client that cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamClass {
    /// Never dropped, conflated or reordered (trades, private events, closed candles).
    Lossless,
    /// Only the latest value matters (tickers, open candles).
    Latest,
    /// An order book delta: droppable, after which the client is owed a snapshot.
    BookDelta,
    /// A self-contained order book snapshot.
    BookSnapshot,
}

/// One emit to one room: what the market produces (`Publish<Event>`), and, once encoded into
/// its frame, what every shard delivers (`Publish<WireMessage>`, the shards' `Broadcast`).
#[derive(Debug, Clone, PartialEq)]
pub struct Publish<B = Event> {
    pub room: Arc<str>,
    pub body: B,
    pub class: StreamClass,
    /// Send to the room's members now.
    pub deliver: bool,
    /// Keep as the room's last value, sent to each new subscriber.
    pub retain: bool,
    /// For order book rooms: the view clients now have, the source of subscribe snapshots.
    pub book: Option<Arc<BookView>>,
    /// Its recovery offset (delivered lossless events, with recovery on), given when the batch is numbered.
    pub offset: Option<Offset>,
    /// Set on events an instance delivers late, after it fell behind the cluster stream: when
    /// the stream took the event (unix ms). A socket that subscribed after that is not sent it.
    pub appended_ms: Option<u64>,
    /// For `ticker:all`: tickers whose latest value changed, from which a shard composes the
    /// complete list a new subscriber gets.
    pub tickers: Option<Arc<[TickerValue]>>,
    /// For a latest-only room carrying several streams (`bookTicker:all`: one per symbol):
    /// which one this is, so a newer value replaces only the same stream's.
    pub latest_key: Option<u64>,
    /// Set on a view's state sent to the shards that opened it (see `demand`): the epoch it
    /// answers. Never delivered as such; a shard gives it to the members waiting for it.
    pub refresh: Option<u64>,
}

impl Publish<Event> {
    /// An event for a room's members, delivered now and kept nowhere.
    pub fn new(room: Arc<str>, name: &str, data: Payload, class: StreamClass) -> Publish {
        Publish {
            room,
            body: Event {
                name: event_name(name),
                data,
            },
            class,
            deliver: true,
            retain: false,
            book: None,
            offset: None,
            appended_ms: None,
            tickers: None,
            latest_key: None,
            refresh: None,
        }
    }
}

/// An event's name, shared for the names the market itself sends: they go with nearly every
/// publish, and a name made per publish is an allocation per event, freed by another thread.
fn event_name(name: &str) -> Arc<str> {
    const SENT: [&str; 7] = [
        "trade",
        "ticker.update",
        "tickers.update",
        "kline.update",
        "orderbook.update",
        "bookTicker.update",
        "refresh",
    ];
    static SHARED: std::sync::LazyLock<[Arc<str>; 7]> =
        std::sync::LazyLock::new(|| SENT.map(Arc::from));
    match SENT.iter().position(|n| *n == name) {
        Some(i) => SHARED[i].clone(),
        None => Arc::from(name),
    }
}

/// One symbol's latest ticker, as the JSON its `data` is sent as.
#[derive(Debug, Clone, PartialEq)]
pub struct TickerValue {
    pub symbol: Arc<str>,
    pub json: bytes::Bytes,
}

/// An event before encoding: its name and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: Arc<str>,
    pub data: Payload,
}

impl Publish<Event> {
    /// Encodes the envelope once, with its number in its lossless stream (`seq`) and its
    /// recovery offset (`offset`, set by then) as the last argument, where it has them.
    pub fn encode(self, now_ms: u64, seq: Option<u64>) -> Publish<WireMessage> {
        let message = envelope::encode_numbered(
            &self.body.name,
            &self.room,
            &self.body.data,
            now_ms,
            self.offset,
            seq,
        );
        Publish {
            room: self.room,
            body: message,
            class: self.class,
            deliver: self.deliver,
            retain: self.retain,
            book: self.book,
            offset: self.offset,
            appended_ms: self.appended_ms,
            tickers: self.tickers,
            latest_key: self.latest_key,
            refresh: self.refresh,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MarketSettings {
    pub ticker_throttle_ms: u64,
    pub orderbook_depth: usize,
    pub orderbook_conflation_ms: u64,
}

impl Default for MarketSettings {
    fn default() -> Self {
        MarketSettings {
            ticker_throttle_ms: 1000,
            orderbook_depth: 100,
            orderbook_conflation_ms: 0,
        }
    }
}

/// Counts of what the market layer held back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MarketCounters {
    pub throttled: u64,
    pub conflated: u64,
    pub resyncs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Ticker(Arc<str>),
    Kline(Arc<str>, &'static str),
    Book(Arc<str>),
    /// A view's throttle or conflation window, by its room.
    View(Arc<str>),
}

/// A symbol and a candle interval.
type KlineKey = (Arc<str>, &'static str);

/// One stream of candles (a symbol and interval, at one throttle window).
struct KlineState {
    throttle: Throttle<Payload>,
    open_time: Option<u64>,
}

impl KlineState {
    fn new(window_ms: u64) -> KlineState {
        KlineState {
            throttle: Throttle::new(window_ms),
            open_time: None,
        }
    }

    /// Takes a candle update: what goes out now, and when to arm the throttle's timer (none
    /// armed yet). A closed candle and the held value of a previous candle always go out, so
    /// candles stay in order and none is lost.
    #[allow(clippy::too_many_arguments)]
    fn offer(
        &mut self,
        room: &Arc<str>,
        open_time: Option<u64>,
        closed: bool,
        data: Payload,
        now: u64,
        out: &mut Vec<Publish>,
        counters: &mut MarketCounters,
    ) -> Option<u64> {
        if open_time.is_some() && self.open_time.is_some() && open_time != self.open_time {
            if let Some(prev) = self.throttle.take_pending() {
                out.push(kline_publish(room.clone(), prev, false));
                self.throttle.mark_emitted(now);
            }
        }
        if open_time.is_some() {
            self.open_time = open_time;
        }
        if closed {
            // The closed value supersedes anything held for the same candle.
            if self.throttle.take_pending().is_some() {
                counters.throttled += 1;
            }
            self.throttle.mark_emitted(now);
            out.push(kline_publish(room.clone(), data, true));
            return None;
        }
        match self.throttle.offer(data, now) {
            Offer::Emit(v) => {
                out.push(kline_publish(room.clone(), v, false));
                None
            }
            Offer::Held(at) => {
                counters.throttled += 1;
                at
            }
        }
    }
}

/// One window of a book and how often it goes out.
struct BookFeed<'a> {
    room: &'a Arc<str>,
    window: &'a mut Window,
    speed_ms: u64,
    /// Changes are waiting for the conflation window to end.
    conflating: &'a mut bool,
}

impl BookFeed<'_> {
    /// Takes a change of the replica: a snapshot at once after a reset or gap, a delta at once
    /// at speed 0, else a delta when the conflation window ends (returns when, if a timer must
    /// be armed).
    fn on_change(
        self,
        change: &BookChange,
        replica: &Replica,
        now: u64,
        out: &mut Vec<Publish>,
        counters: &mut MarketCounters,
    ) -> Option<u64> {
        match change {
            BookChange::Resync => {
                *self.conflating = false;
                let view = self.window.snapshot(replica);
                out.push(book_snapshot(self.room.clone(), view, "resync"));
                None
            }
            BookChange::Continuous if self.speed_ms == 0 => {
                if let Some(d) = self.window.delta(replica) {
                    out.push(book_delta(self.room.clone(), d));
                }
                None
            }
            BookChange::Continuous => {
                counters.conflated += 1;
                if *self.conflating {
                    return None;
                }
                *self.conflating = true;
                Some(now + self.speed_ms)
            }
        }
    }

    /// The conflation window ended: the delta of everything since the last one.
    fn on_timer(self, replica: &Replica, out: &mut Vec<Publish>) {
        if std::mem::take(self.conflating) {
            if let Some(d) = self.window.delta(replica) {
                out.push(book_delta(self.room.clone(), d));
            }
        }
    }
}

struct BookState {
    book: OrderBook,
    room: Arc<str>,
    /// `bookTicker:{symbol}`.
    ticker_room: Arc<str>,
    conflating: bool,
    /// The best bid and ask last sent on `bookTicker`: (price, quantity) of each side.
    top: [Option<(CompactString, CompactString)>; 2],
}

impl BookState {
    /// The default room's window as a feed, and the replica it is a window of.
    fn feed(&mut self, speed_ms: u64) -> (BookFeed<'_>, &Replica) {
        let (window, replica) = self.book.parts();
        let feed = BookFeed {
            room: &self.room,
            window,
            speed_ms,
            conflating: &mut self.conflating,
        };
        (feed, replica)
    }
}

pub struct Market {
    settings: MarketSettings,
    /// Each symbol's ticker room and throttle.
    tickers: HashMap<Arc<str>, (Arc<str>, Throttle<Payload>)>,
    /// Each symbol's trades room, named once.
    trade_rooms: HashMap<Arc<str>, Arc<str>>,
    /// Tickers ingested since `take_ticker_values` last ran.
    fresh_tickers: IndexMap<Arc<str>, Payload>,
    /// Each symbol and interval's candles, with their room.
    klines: HashMap<KlineKey, (Arc<str>, KlineState)>,
    books: HashMap<Arc<str>, BookState>,
    timers: BinaryHeap<Reverse<(u64, TimerKey)>>,
    pub counters: MarketCounters,
    /// Streams at a subscription's own depth or speed, while subscribed to.
    views: views::Views,
    /// Each symbol's latest ticker as JSON, and each symbol and interval's latest candle:
    /// what a view that starts sends first.
    ticker_json: HashMap<Arc<str>, bytes::Bytes>,
    kline_latest: HashMap<(Arc<str>, &'static str), Payload>,
}

impl Market {
    pub fn new(settings: MarketSettings) -> Market {
        Market {
            settings,
            tickers: HashMap::new(),
            trade_rooms: HashMap::new(),
            fresh_tickers: IndexMap::new(),
            klines: HashMap::new(),
            books: HashMap::new(),
            timers: BinaryHeap::new(),
            counters: MarketCounters::default(),
            views: views::Views::default(),
            ticker_json: HashMap::new(),
            kline_latest: HashMap::new(),
        }
    }

    pub fn settings(&self) -> MarketSettings {
        self.settings
    }

    /// Checks what depends on state (order book update ids) for a whole batch, in order,
    /// without changing anything: `(index, reason)` of the first refusal.
    pub fn validate(&self, events: &[IngestEvent]) -> Result<(), (usize, String)> {
        validate_books(events, |symbol| self.last_update_id(symbol))
    }

    /// The update id a symbol's book is at, if it has one.
    pub fn last_update_id(&self, symbol: &str) -> Option<u64> {
        self.books.get(symbol).and_then(|b| b.book.last_update_id())
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn schedule(&mut self, at: u64, key: TimerKey) {
        self.timers.push(Reverse((at, key)));
    }

    pub fn apply(&mut self, ev: IngestEvent, now: u64, out: &mut Vec<Publish>) {
        match ev {
            IngestEvent::Ticker { symbol, data } => self.ticker(symbol, data, now, out),
            IngestEvent::Kline {
                symbol,
                interval,
                open_time,
                closed,
                data,
            } => self.kline(symbol, interval, open_time, closed, data, now, out),
            IngestEvent::Book { symbol, update } => {
                let depth = self.settings.orderbook_depth;
                let state = self
                    .books
                    .entry(symbol.clone())
                    .or_insert_with(|| BookState {
                        book: OrderBook::new(&symbol, depth),
                        room: Room::Orderbook(&symbol).name(),
                        ticker_room: Room::BookTicker(&symbol).name(),
                        conflating: false,
                        top: [None, None],
                    });
                let change = state.book.apply(update);
                let (bid, ask) = state.book.best();
                let top = [bid, ask].map(|l| l.map(|l| (l.price.clone(), l.qty.clone())));
                if top != state.top {
                    state.top = top;
                    let last_update_id = state.book.last_update_id().unwrap_or(0);
                    book_tickers(&symbol, &state.ticker_room, &state.top, last_update_id, out);
                }
                if change == BookChange::Resync {
                    self.counters.resyncs += 1;
                }
                let (feed, replica) = state.feed(self.settings.orderbook_conflation_ms);
                if let Some(at) = feed.on_change(&change, replica, now, out, &mut self.counters) {
                    self.timers
                        .push(Reverse((at, TimerKey::Book(symbol.clone()))));
                }
                if !self.views.is_empty() {
                    self.views.on_book(
                        &symbol,
                        &change,
                        replica,
                        now,
                        out,
                        &mut self.counters,
                        &mut self.timers,
                    );
                }
            }
            IngestEvent::Trade { symbol, data } => {
                let room = match self.trade_rooms.get(&symbol) {
                    Some(room) => room.clone(),
                    None => {
                        let room = Room::Trades(&symbol).name();
                        self.trade_rooms.insert(symbol, room.clone());
                        room
                    }
                };
                out.push(Publish::new(room, "trade", data, StreamClass::Lossless))
            }
            IngestEvent::Private { room, event, data }
            | IngestEvent::Manual { room, event, data } => {
                out.push(Publish::new(room, &event, data, StreamClass::Lossless))
            }
        }
    }

    /// A symbol's ticker; `ticker:all` is the digest's (see `digest`).
    fn ticker(&mut self, symbol: Arc<str>, data: Payload, now: u64, out: &mut Vec<Publish>) {
        self.fresh_tickers.insert(symbol.clone(), data.clone());
        let window = self.settings.ticker_throttle_ms;
        let (room, t) = self
            .tickers
            .entry(symbol.clone())
            .or_insert_with(|| (Room::Ticker(&symbol).name(), Throttle::new(window)));
        if !self.views.is_empty() {
            self.views
                .on_ticker(&symbol, &data, now, out, &mut self.timers);
        }
        match t.offer(data, now) {
            Offer::Emit(v) => out.push(ticker_publish(room.clone(), v)),
            Offer::Held(at) => {
                self.counters.throttled += 1;
                if let Some(at) = at {
                    self.schedule(at, TimerKey::Ticker(symbol));
                }
            }
        }
    }

    /// After a batch: the tickers it changed, for shards to keep every symbol's latest value
    /// (a new `ticker:all` subscriber gets them all). Per batch and per changed symbol only,
    /// however many symbols there are.
    pub fn take_ticker_values(&mut self, out: &mut Vec<Publish>) {
        let mut values = Vec::new();
        self.take_fresh_tickers(&mut values);
        out.extend(ticker_values(values));
    }

    /// The tickers changed since the last call, for [`ticker_values`] (a batch over several
    /// markets gathers them all into one publish).
    pub fn take_fresh_tickers(&mut self, into: &mut Vec<TickerValue>) {
        for (symbol, v) in self.fresh_tickers.drain(..) {
            let json: bytes::Bytes = match v {
                Payload::Json(j) => j,
                v => v.to_json().into_owned().into(),
            };
            self.ticker_json.insert(symbol.clone(), json.clone());
            into.push(TickerValue { symbol, json });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn kline(
        &mut self,
        symbol: Arc<str>,
        interval: &'static str,
        open_time: Option<u64>,
        closed: bool,
        data: Payload,
        now: u64,
        out: &mut Vec<Publish>,
    ) {
        let window = self.settings.ticker_throttle_ms;
        self.kline_latest
            .insert((symbol.clone(), interval), data.clone());
        if !self.views.is_empty() {
            self.views.on_kline(
                &symbol,
                interval,
                (open_time, closed, &data),
                now,
                out,
                &mut self.counters,
                &mut self.timers,
            );
        }
        let (room, state) = self
            .klines
            .entry((symbol.clone(), interval))
            .or_insert_with(|| {
                (
                    Room::Klines(&symbol, interval).name(),
                    KlineState::new(window),
                )
            });
        if let Some(at) = state.offer(room, open_time, closed, data, now, out, &mut self.counters) {
            self.schedule(at, TimerKey::Kline(symbol, interval));
        }
    }

    /// Runs every timer due at `now`.
    pub fn poll(&mut self, now: u64, out: &mut Vec<Publish>) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                return;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                return;
            };
            match key {
                TimerKey::Ticker(symbol) => {
                    if let Some((room, t)) = self.tickers.get_mut(&symbol) {
                        if let Some(v) = t.on_timer(now) {
                            out.push(ticker_publish(room.clone(), v));
                        }
                    }
                }
                TimerKey::Kline(symbol, interval) => {
                    if let Some((room, k)) = self.klines.get_mut(&(symbol, interval)) {
                        if let Some(v) = k.throttle.on_timer(now) {
                            out.push(kline_publish(room.clone(), v, false));
                        }
                    }
                }
                TimerKey::Book(symbol) => {
                    if let Some(state) = self.books.get_mut(&symbol) {
                        let (feed, replica) = state.feed(self.settings.orderbook_conflation_ms);
                        feed.on_timer(replica, out);
                    }
                }
                TimerKey::View(room) => self.view_timer(&room, now, out),
            }
        }
    }

    /// Gives the last book delta of each room in `out` the view it leaves clients with, the
    /// source of the room's subscribe snapshots. Call once a batch is complete.
    pub fn attach_views(&self, out: &mut [Publish]) {
        attach_book_views(out, |room| self.room_book_view(room));
    }

    /// The window clients of an order book room (the default one or a view) have now.
    pub fn room_book_view(&self, room: &str) -> Option<Arc<BookView>> {
        self.views
            .book_view(room)
            .or_else(|| match Room::parse(room) {
                Room::Orderbook(symbol) => self.book_view(symbol),
                _ => None,
            })
    }

    /// The gateway's current book for a symbol, as clients see it (top N, best first).
    pub fn book_view(&self, symbol: &str) -> Option<Arc<BookView>> {
        self.books.get(symbol).map(|b| b.book.sent_view().clone())
    }
}

/// The publish that gives the shards each changed symbol's latest ticker; none if none
/// changed.
pub fn ticker_values(values: Vec<TickerValue>) -> Option<Publish> {
    (!values.is_empty()).then(|| Publish {
        deliver: false,
        tickers: Some(values.into()),
        ..Publish::new(
            Room::TickerAll.name(),
            "tickers.update",
            Payload::Json(bytes::Bytes::from_static(b"[]")),
            StreamClass::Latest,
        )
    })
}

/// Gives the last book delta of each room in `out` the view it leaves clients with
/// (`view_of` the room): see [`Market::attach_views`].
pub fn attach_book_views(out: &mut [Publish], view_of: impl Fn(&str) -> Option<Arc<BookView>>) {
    // By room text: one batch may touch tens of thousands of books.
    let mut done: HashSet<Arc<str>> = HashSet::new();
    for p in out.iter_mut().rev() {
        if p.class != StreamClass::BookDelta || p.book.is_some() || done.contains(&p.room) {
            continue;
        }
        p.book = view_of(&p.room);
        done.insert(p.room.clone());
    }
}

/// Order book update ids followed through events in order: each book event must follow the
/// last one taken for its symbol, else where the book is (`last_update_id`).
pub struct BookChain<F> {
    last: HashMap<Arc<str>, u64>,
    last_update_id: F,
}

impl<F: Fn(&str) -> Option<u64>> BookChain<F> {
    pub fn new(last_update_id: F) -> BookChain<F> {
        BookChain {
            last: HashMap::new(),
            last_update_id,
        }
    }

    /// Whether `ev` fits (anything but a book event does); a book event that fits becomes
    /// its symbol's last.
    pub fn take(&mut self, ev: &IngestEvent) -> Result<(), String> {
        if let IngestEvent::Book { symbol, update } = ev {
            let prev = match self.last.get(symbol) {
                Some(p) => Some(*p),
                None => (self.last_update_id)(symbol),
            };
            OrderBook::check(prev, update)?;
            self.last.insert(symbol.clone(), update.last_update_id());
        }
        Ok(())
    }
}

/// Checks order book update ids through a batch, in order, against where each book is
/// (`last_update_id`): `(index, reason)` of the first refusal.
pub fn validate_books(
    events: &[IngestEvent],
    last_update_id: impl Fn(&str) -> Option<u64>,
) -> Result<(), (usize, String)> {
    let mut chain = BookChain::new(last_update_id);
    for (i, ev) in events.iter().enumerate() {
        chain.take(ev).map_err(|m| (i, m))?;
    }
    Ok(())
}

fn ticker_publish(room: Arc<str>, data: Payload) -> Publish {
    Publish {
        retain: true,
        ..Publish::new(room, "ticker.update", data, StreamClass::Latest)
    }
}

/// `tickers.update` with the tickers changed since the last one.
fn tickers_digest(room: Arc<str>, changed: &mut IndexMap<Arc<str>, Payload>) -> Publish {
    let data = Payload::array(changed.values());
    changed.clear();
    Publish::new(room, "tickers.update", data, StreamClass::Latest)
}

fn kline_publish(room: Arc<str>, data: Payload, closed: bool) -> Publish {
    let class = if closed {
        StreamClass::Lossless
    } else {
        StreamClass::Latest
    };
    Publish {
        retain: true,
        ..Publish::new(room, "kline.update", data, class)
    }
}

/// `bookTicker.update` for a new best bid or ask, to the symbol's room (kept as its last
/// value) and to `bookTicker:all`. Unthrottled; under backpressure only the newest is kept.
fn book_tickers(
    symbol: &str,
    room: &Arc<str>,
    top: &[Option<(CompactString, CompactString)>; 2],
    last_update_id: u64,
    out: &mut Vec<Publish>,
) {
    let mut writer = BookJson::new(0).raw("{\"symbol\":").string(symbol);
    for (i, (price, qty)) in [(0, ("bidPrice", "bidQty")), (1, ("askPrice", "askQty"))] {
        for (name, text) in [
            (price, top[i].as_ref().map(|t| &t.0)),
            (qty, top[i].as_ref().map(|t| &t.1)),
        ] {
            writer = writer.raw(",\"").raw(name).raw("\":");
            writer = match text {
                Some(t) => writer.decimal(t),
                None => writer.raw("null"),
            };
        }
    }
    let json = writer
        .raw(",\"lastUpdateId\":")
        .number(last_update_id)
        .raw("}")
        .finish();
    let json = bytes::Bytes::from(json);
    let symbol_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        symbol.hash(&mut h);
        h.finish()
    };
    for (room, retain, latest_key) in [
        (room.clone(), true, None),
        (Room::BookTickerAll.name(), false, Some(symbol_key)),
    ] {
        out.push(Publish {
            retain,
            latest_key,
            ..Publish::new(
                room,
                "bookTicker.update",
                Payload::Json(json.clone()),
                StreamClass::Latest,
            )
        });
    }
}

fn book_snapshot(room: Arc<str>, view: Arc<BookView>, reason: &str) -> Publish {
    Publish {
        book: Some(view.clone()),
        ..Publish::new(
            room,
            "orderbook.update",
            Payload::Json(view.snapshot_json(reason).into()),
            StreamClass::BookSnapshot,
        )
    }
}

/// A delta without its view: [`Market::attach_views`] gives the view to the last delta of
/// each room in a batch only, since a shard takes a batch whole and no subscriber can come
/// between two of its publishes. A view held by one publish per delta would make every delta
/// copy the chunks it changes.
fn book_delta(room: Arc<str>, (delta, view): (Delta, Arc<BookView>)) -> Publish {
    Publish::new(
        room,
        "orderbook.update",
        Payload::Json(delta.json(&view.symbol).into()),
        StreamClass::BookDelta,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::input::parse_event;
    use serde_json::json;
    use serde_json::Value;

    fn ev(v: Value) -> IngestEvent {
        parse_event(v).unwrap()
    }

    fn json_of(p: &Payload) -> Value {
        serde_json::from_slice(&p.to_json()).unwrap()
    }

    /// Feeds `events` to `m`, and its tickers to a `ticker:all` digest, running timers as
    /// they fall due up to `until`.
    fn drive(m: &mut Market, events: Vec<(u64, Value)>, until: u64) -> Vec<(u64, Publish)> {
        let mut digest = digest::TickerDigest::new(m.settings().ticker_throttle_ms);
        let mut out = Vec::new();
        let mut log = Vec::new();
        let next = |m: &Market, d: &digest::TickerDigest| {
            m.next_deadline().into_iter().chain(d.next_deadline()).min()
        };
        let mut run_until =
            |m: &mut Market, d: &mut digest::TickerDigest, t: u64, log: &mut Vec<_>| {
                while let Some(at) = next(m, d).filter(|at| *at <= t) {
                    m.poll(at, &mut out);
                    d.poll(at, &mut out);
                    m.attach_views(&mut out);
                    log.extend(out.drain(..).map(|p| (at, p)));
                }
            };
        for (t, e) in events {
            run_until(m, &mut digest, t, &mut log);
            let mut out = Vec::new();
            let e = ev(e);
            let ticker = match &e {
                IngestEvent::Ticker { symbol, data } => Some((symbol.clone(), data.clone())),
                _ => None,
            };
            m.apply(e, t, &mut out);
            if let Some((symbol, data)) = ticker {
                digest.offer(&symbol, &data, t, &mut out);
            }
            m.take_ticker_values(&mut out);
            m.attach_views(&mut out);
            log.extend(out.drain(..).map(|p| (t, p)));
        }
        run_until(m, &mut digest, until, &mut log);
        log
    }

    #[test]
    fn fifty_tickers_in_200ms_give_leading_and_trailing_latest() {
        let mut m = Market::new(MarketSettings::default());
        let events = (0..50u64)
            .map(|i| {
                (
                    i * 4,
                    json!({"type":"ticker.update","symbol":"BTCUSDT","data":{"seq": i}}),
                )
            })
            .collect();
        let log = drive(&mut m, events, 5000);
        let sym: Vec<_> = log
            .iter()
            .filter(|(_, p)| &*p.room == "ticker:BTCUSDT")
            .collect();
        assert_eq!(sym.len(), 2);
        assert_eq!(json_of(&sym[0].1.body.data), json!({"seq": 0}));
        assert_eq!(
            (sym[1].0, json_of(&sym[1].1.body.data)),
            (1000, json!({"seq": 49}))
        );
        let all: Vec<_> = log
            .iter()
            .filter(|(_, p)| Room::parse(&p.room) == Room::TickerAll && p.deliver)
            .collect();
        assert_eq!(all.len(), 2);
        assert_eq!(json_of(&all[1].1.body.data), json!([{"seq": 49}]));
    }

    #[test]
    fn all_tickers_carries_every_symbol_changed_in_the_window() {
        let mut m = Market::new(MarketSettings::default());
        let log = drive(
            &mut m,
            vec![
                (
                    0,
                    json!({"type":"ticker.update","symbol":"AAA","data":{"s":"A1"}}),
                ),
                (
                    10,
                    json!({"type":"ticker.update","symbol":"BBB","data":{"s":"B1"}}),
                ),
                (
                    20,
                    json!({"type":"ticker.update","symbol":"CCC","data":{"s":"C1"}}),
                ),
                (
                    30,
                    json!({"type":"ticker.update","symbol":"BBB","data":{"s":"B2"}}),
                ),
            ],
            5000,
        );
        let all: Vec<_> = log
            .iter()
            .filter(|(_, p)| Room::parse(&p.room) == Room::TickerAll && p.deliver)
            .map(|(_, p)| json_of(&p.body.data))
            .collect();
        assert_eq!(
            all,
            vec![json!([{"s":"A1"}]), json!([{"s":"B2"},{"s":"C1"}])]
        );
        // What a shard composes a new subscriber's first message from: every symbol, at its
        // latest value, including those the digest still holds.
        let mut latest = IndexMap::new();
        for (_, p) in &log {
            for v in p.tickers.iter().flat_map(|t| t.iter()) {
                latest.insert(
                    v.symbol.to_string(),
                    String::from_utf8(v.json.to_vec()).unwrap(),
                );
            }
        }
        let want = [
            ("AAA", r#"{"s":"A1"}"#),
            ("BBB", r#"{"s":"B2"}"#),
            ("CCC", r#"{"s":"C1"}"#),
        ];
        assert_eq!(
            latest.into_iter().collect::<Vec<_>>(),
            want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
        );
        assert!(!log
            .iter()
            .any(|(_, p)| p.retain && Room::parse(&p.room) == Room::TickerAll));
    }

    #[test]
    fn closed_candle_is_always_delivered_before_the_next() {
        let mut m = Market::new(MarketSettings::default());
        let k = |t: u64, open: u64, closed: bool| {
            (
                t,
                json!({"type":"kline.update","symbol":"BTCUSDT","interval":"1m","data":{"openTime":open,"c":t,"closed":closed}}),
            )
        };
        let log = drive(
            &mut m,
            vec![
                k(0, 0, false),
                k(100, 0, false),
                k(200, 0, true),
                k(300, 60, false),
                k(400, 60, false),
            ],
            5000,
        );
        let seen: Vec<(u64, bool)> = log
            .iter()
            .map(|(_, p)| match &p.body.data {
                Payload::Value(v) => (v["c"].as_u64().unwrap(), v["closed"].as_bool().unwrap()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(seen, vec![(0, false), (200, true), (400, false)]);
        assert_eq!(log[1].1.class, StreamClass::Lossless);
    }

    #[test]
    fn only_the_last_delta_of_a_room_in_a_batch_carries_the_view() {
        let mut m = Market::new(MarketSettings::default());
        let mut out = Vec::new();
        m.apply(ev(json!({"type":"orderbook.update","symbol":"X1","data":{"type":"snapshot","bids":[["10","1"]],"asks":[["11","1"]],"lastUpdateId":1}})), 0, &mut out);
        for id in 2..5u64 {
            for sym in ["X1", "X2"] {
                let data = if sym == "X2" && id == 2 {
                    json!({"type":"snapshot","bids":[["5","1"]],"asks":[],"lastUpdateId":2})
                } else {
                    json!({"type":"delta","bids":[[format!("9.{id}"),"1"]],"firstUpdateId":id,"lastUpdateId":id})
                };
                m.apply(
                    ev(json!({"type":"orderbook.update","symbol":sym,"data":data})),
                    0,
                    &mut out,
                );
            }
        }
        m.attach_views(&mut out);
        let books: Vec<(&str, StreamClass, Option<u64>)> = out
            .iter()
            .filter(|p| Room::parse(&p.room).kind() == crate::room::RoomKind::Orderbook)
            .map(|p| (&*p.room, p.class, p.book.as_ref().map(|b| b.last_update_id)))
            .collect();
        use StreamClass::{BookDelta as D, BookSnapshot as S};
        assert_eq!(
            books,
            [
                ("orderbook:X1", S, Some(1)),
                ("orderbook:X1", D, None),
                ("orderbook:X2", S, Some(2)),
                ("orderbook:X1", D, None),
                ("orderbook:X2", D, None),
                ("orderbook:X1", D, Some(4)),
                ("orderbook:X2", D, Some(4)),
            ]
        );
        // The view attached is the window after the room's last delta.
        let last = out
            .iter()
            .rev()
            .find(|p| &*p.room == "orderbook:X1")
            .unwrap();
        assert_eq!(last.book.as_ref().unwrap().bids.len(), 4);
    }

    #[test]
    fn book_resyncs_on_gap_and_conflates() {
        let mut m = Market::new(MarketSettings {
            orderbook_conflation_ms: 100,
            ..Default::default()
        });
        let snap = json!({"type":"orderbook.update","symbol":"BTCUSDT","data":{"type":"snapshot","bids":[["10","1"]],"asks":[["11","1"]],"lastUpdateId":1}});
        let d = |f: u64, l: u64, p: &str| json!({"type":"orderbook.update","symbol":"BTCUSDT","data":{"type":"delta","bids":[[p,"2"]],"asks":[],"firstUpdateId":f,"lastUpdateId":l}});
        let log = drive(
            &mut m,
            vec![
                (0, snap),
                (10, d(2, 2, "9")),
                (20, d(3, 3, "8")),
                (500, d(7, 7, "7")),
            ],
            5000,
        );
        // Only the first update moves the best bid or ask (bookTicker, to two rooms).
        let tops: Vec<&str> = log
            .iter()
            .filter(|(_, p)| Room::parse(&p.room).kind() == crate::room::RoomKind::BookTicker)
            .map(|(_, p)| &*p.room)
            .collect();
        assert_eq!(tops, ["bookTicker:BTCUSDT", "bookTicker:all"]);
        let log: Vec<_> = log
            .into_iter()
            .filter(|(_, p)| Room::parse(&p.room).kind() == crate::room::RoomKind::Orderbook)
            .collect();
        let kinds: Vec<StreamClass> = log.iter().map(|(_, p)| p.class).collect();
        assert_eq!(
            kinds,
            vec![
                StreamClass::BookSnapshot,
                StreamClass::BookDelta,
                StreamClass::BookSnapshot
            ]
        );
        let Payload::Json(j) = &log[1].1.body.data else {
            panic!()
        };
        let v: Value = serde_json::from_slice(j).unwrap();
        assert_eq!(
            (v["firstUpdateId"].as_u64(), v["lastUpdateId"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(log[1].0, 110);
        let Payload::Json(j) = &log[2].1.body.data else {
            panic!()
        };
        let v: Value = serde_json::from_slice(j).unwrap();
        assert_eq!(
            (v["reason"].as_str(), v["lastUpdateId"].as_u64()),
            (Some("resync"), Some(7))
        );
    }

    #[test]
    fn validation_follows_ids_through_a_batch() {
        let m = Market::new(MarketSettings::default());
        let d = |f: u64, l: u64| {
            ev(
                json!({"type":"orderbook.update","symbol":"X1","data":{"type":"delta","bids":[],"asks":[],"firstUpdateId":f,"lastUpdateId":l}}),
            )
        };
        assert!(m.validate(&[d(1, 2), d(3, 4)]).is_ok());
        assert_eq!(m.validate(&[d(1, 2), d(2, 4)]).unwrap_err().0, 1);
    }
}
