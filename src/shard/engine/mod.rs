//! The shard engine: every protocol decision a shard makes, with no I/O and no clock.
//!
//! It owns the shard's connections (their protocol state, input buffers and outbound
//! queues), its Engine.IO sessions, its room table, its timers and the last values new
//! subscribers get. A driver (`super::driver`) owns the sockets and reads the clock, and feeds
//! it through `handle_*` calls, each given the time:
//!
//! - connections: `handle_accepted`, `handle_adopted`, `handle_input`, `handle_peer_closed`,
//!   `handle_transport_error`, `handle_writable`, `handle_written`;
//! - the shard's inbox: `handle_publish`, `handle_emit`, `handle_restored`, `handle_drain`,
//!   `handle_shutdown`;
//! - time: `handle_timeout`.
//!
//! It takes the results back with `poll_transmit` (the next connection with bytes to write)
//! and `transmit_iov` (those bytes), `poll_action` (release a socket, hand one to another
//! shard, save or look up a recovery record) and `poll_timeout` (when to call again).
//!
//! Nothing is removed while a call runs. Closing marks a session or a connection with its
//! fate, and `reap` removes what was marked as the call returns, so an id a call started with
//! stays valid to its end whatever was closed on the way. Code that runs after something may
//! have closed asks through `live_session` / `live_conn`, which skip what is closing.

mod compress;
mod conn;
mod eio;
mod emit;
mod http;
mod ids;
mod input;
pub mod outbound;
mod publish;
mod recovery;
mod rooms;
mod session;
#[doc(hidden)]
pub mod sim;
mod ticker_all;
mod timers;
mod views;
mod ws;

#[cfg(test)]
mod tests;

pub use ids::{ConnId, SessionId};

use super::handle::Broadcast;
use super::stats::Counters;
use super::{ServerSettings, Shared};
use crate::codec::WireMessage;
use crate::market::book::BookView;
use crate::recovery::{Offset, RestoreTicket, SessionRecord};
use crate::session::CloseReason;
use bytes::BytesMut;
use conn::{Conn, Fate, HttpState, Role};
use rooms::Rooms;
use session::Session;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use timers::{Timer, Timers};

/// The time of a call, as the driver read it: a monotonic instant for deadlines, and the wall
/// clock (unix ms) for what clients see (timestamps, token expiries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

/// How a write of `transmit_iov`'s bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The socket took this many bytes.
    Wrote(usize),
    /// The socket took nothing now; `handle_writable` follows when it can take more.
    Blocked,
    /// The socket is broken.
    Failed,
}

/// Something only the driver can do.
#[derive(Debug)]
pub enum Action {
    /// Close this connection's socket: everything owed to it was written, or it broke.
    Release(ConnId),
    /// Drop this connection's socket at once, discarding what it still holds (a reset): its
    /// peer did not take what was owed to it within the linger time.
    Reset(ConnId),
    /// Move this connection's socket to the shard that owns the session its request names,
    /// with the input read from it but not processed.
    HandOff {
        conn: ConnId,
        shard: usize,
        buffered: BytesMut,
    },
    /// Keep this record for a socket that may come back.
    SaveRecord(SessionRecord),
    /// Look up (and spend) the record a reconnecting socket presented; the answer comes back
    /// through `handle_restored`.
    TakeRecord(RestoreTicket),
}

pub struct Engine {
    id: usize,
    shard_count: usize,
    settings: Arc<ServerSettings>,
    shared: Arc<Shared>,
    counters: Counters,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    sids: HashMap<Box<str>, SessionId>,
    rooms: Rooms,
    /// The latest message of each room that keeps one (tickers, klines), for new subscribers.
    last_values: HashMap<Arc<str>, WireMessage>,
    /// Every symbol's latest ticker, for new `ticker:all` subscribers.
    ticker_all: ticker_all::TickerDirectory,
    /// Each order book room's current view, and its subscribe snapshot once encoded.
    books: HashMap<Arc<str>, (Arc<BookView>, Option<WireMessage>)>,
    /// Views this shard has members in.
    views: HashMap<Arc<str>, views::OpenView>,
    timers: Timers,
    /// Connections to write to, in the order they became due (so none is always last).
    dirty_conns: VecDeque<ConnId>,
    dirty_sessions: Vec<SessionId>,
    closed_sessions: Vec<SessionId>,
    closed_conns: Vec<ConnId>,
    actions: VecDeque<Action>,
    next_generation: u64,
    /// The time of the current call.
    now: Now,
    /// Oldest publish handed over and not yet reported written.
    pending_publish: Option<Instant>,
    /// Set once shutting down: every session is closed and no new one is opened.
    stopped: bool,
    /// Set while draining: the instant by which everything is closed.
    drain_deadline: Option<Instant>,
    /// The newest recovery offset this shard has delivered.
    last_offset: Option<Offset>,
    /// When live recovery records were last rewritten.
    last_refresh: Instant,
    /// When the outbound queues were last added up against the budget.
    last_budget_check: Instant,
    /// Each client address's work budget on this shard.
    work: input::AddressWork,
    /// The work of the read being handled, while one is.
    work_done: Option<crate::limits::cost::Work>,
    /// Connections in the order they were accepted, to find the longest idle one that has
    /// sent no request when the gateway is at its TCP cap (stale entries are skipped).
    arrivals: VecDeque<(ConnId, u64)>,
}

impl Engine {
    pub fn new(
        id: usize,
        shard_count: usize,
        settings: Arc<ServerSettings>,
        shared: Arc<Shared>,
        now: Now,
    ) -> Engine {
        Engine {
            id,
            shard_count,
            last_offset: shared.recovery.as_ref().and_then(|r| r.origin()),
            shared,
            counters: Counters::default(),
            conns: Slab::new(),
            sessions: Slab::new(),
            sids: HashMap::new(),
            rooms: Rooms::default(),
            last_values: HashMap::new(),
            ticker_all: ticker_all::TickerDirectory::default(),
            books: HashMap::new(),
            views: HashMap::new(),
            timers: Timers::default(),
            dirty_conns: VecDeque::new(),
            dirty_sessions: Vec::new(),
            closed_sessions: Vec::new(),
            closed_conns: Vec::new(),
            actions: VecDeque::new(),
            next_generation: 1,
            now,
            pending_publish: None,
            stopped: false,
            drain_deadline: None,
            last_refresh: now.mono,
            last_budget_check: now.mono,
            work: input::AddressWork::new(settings.work_rate_per_ip / shard_count.max(1) as f64),
            work_done: None,
            arrivals: VecDeque::new(),
            settings,
        }
    }

    /// Tells `presence` which rooms have members here, from now on (see `shard::presence`).
    pub fn report_presence(&mut self, presence: Arc<crate::shard::presence::Presence>) {
        self.rooms.report_to(presence);
    }

    /// Whether a room got its first member or lost its last since the last call.
    pub fn take_presence_changed(&mut self) -> bool {
        self.rooms.take_changed()
    }

    /// The shard this engine is.
    pub fn id(&self) -> usize {
        self.id
    }

    // ---- inputs: connections ----

    /// A new TCP connection from `peer`. Returns the id its socket is known by from now on,
    /// or `None` when it is over a TCP connection cap (close the socket). At the gateway's
    /// cap, the connection idle longest without a request is closed to make room.
    pub fn handle_accepted(&mut self, now: Now, peer: IpAddr) -> Option<ConnId> {
        self.now = now;
        let per_ip = (!self.is_trusted_proxy(peer)).then_some(peer);
        let limits = &self.shared.limits;
        let mut admitted = limits.admit_tcp(per_ip, now.unix_ms, false);
        let mut evict = None;
        if admitted == Err(crate::limits::Refusal::TcpConnections) {
            evict = self.longest_idle();
            if evict.is_some() {
                admitted = self.shared.limits.admit_tcp(per_ip, now.unix_ms, true);
            }
        }
        if let Err(r) = admitted {
            if let Some(idle) = evict {
                self.arrivals.push_front(idle);
            }
            self.shared.limits.refused_tcp(r);
            self.counters.tcp_refused += 1;
            return None;
        }
        // The new connection takes its slot before the idle one gives its own back, so the
        // driver never sees an id released and reused in one call.
        let c = self.handle_adopted(now, peer, BytesMut::new());
        if let Some(conn) = self.conns.get(c.key()) {
            self.arrivals.push_back((c, conn.generation));
        }
        if let Some((idle, _)) = evict {
            self.counters.idle_evictions += 1;
            self.close_conn(idle);
            self.reap();
        }
        if self.arrivals.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.arrivals
                .retain(|(c, g)| conns.get(c.key()).is_some_and(|x| x.generation == *g));
        }
        Some(c)
    }

    /// A connection another shard handed over (already counted against the caps), with the
    /// input it had read.
    pub fn handle_adopted(&mut self, now: Now, peer: IpAddr, buffered: BytesMut) -> ConnId {
        self.now = now;
        let generation = self.generation();
        let mut conn = Conn::new(generation, peer, self.account_of(peer), buffered);
        conn.tcp_counted = !self.is_trusted_proxy(peer);
        let c = ConnId::new(self.conns.insert(conn));
        self.counters.tcp_connections += 1;
        self.arm_request_timer(c);
        if self.conns[c.key()].inbuf.is_empty() {
            return c;
        }
        self.process_input(c);
        self.reap();
        c
    }

    /// The connection accepted longest ago that has not completed a request head, if any: at
    /// the gateway's TCP cap, connections that only hold a descriptor (or trickle a head, as
    /// a real client never does) give way to new ones.
    fn longest_idle(&mut self) -> Option<(ConnId, u64)> {
        while let Some((c, g)) = self.arrivals.pop_front() {
            let idle = self.live_conn(c).is_some_and(|conn| {
                conn.generation == g
                    && conn.requests == 0
                    && !conn.closing
                    && conn.out.is_empty()
                    && matches!(conn.role, Role::Http(HttpState::Head))
            });
            if idle {
                return Some((c, g));
            }
        }
        None
    }

    /// Whether `c` is a connection the engine still holds (its socket is the driver's).
    pub fn holds(&self, c: ConnId) -> bool {
        self.live_conn(c).is_some()
    }

    /// Whether the driver should read from `c` now (see `read_allowance`).
    pub fn wants_read(&self, c: ConnId) -> bool {
        self.read_allowance(c) > 0
    }

    /// Bytes read from `c`.
    pub fn handle_input(&mut self, now: Now, c: ConnId, data: &[u8]) {
        self.now = now;
        let limit = self.settings.max_payload + 64 * 1024;
        if let Some(conn) = self.live_conn_mut(c) {
            if conn.inbuf.len() + data.len() > limit {
                // More unconsumed input than any legal message: stop reading it.
                self.counters.protocol_errors += 1;
                self.close_conn(c);
            } else {
                conn.inbuf.extend_from_slice(data);
                self.begin_work(data.len());
                self.process_input(c);
                // Charged to the address the input came from, even if the request named
                // another one behind a proxy on the way.
                let client = self.conns.get(c.key()).and_then(|x| x.client);
                self.end_work(client);
            }
        }
        self.reap();
    }

    /// The peer will send nothing more: answer what it asked, then close.
    pub fn handle_peer_closed(&mut self, now: Now, c: ConnId) {
        self.now = now;
        self.set_closing(c);
        self.reap();
    }

    /// The socket failed (reset, read error): it is gone, and so is what depended on it.
    pub fn handle_transport_error(&mut self, now: Now, c: ConnId) {
        self.now = now;
        self.close_conn(c);
        self.reap();
    }

    /// `c` can take more bytes.
    pub fn handle_writable(&mut self, c: ConnId) {
        self.mark_dirty(c);
    }

    // ---- outputs: transmit ----

    /// The next connection with bytes to write; parked long-polls with something to send are
    /// answered first. Write `transmit_iov`'s bytes, then report with `handle_written`.
    pub fn poll_transmit(&mut self) -> Option<ConnId> {
        while let Some(s) = self.dirty_sessions.pop() {
            self.flush_polling(s);
        }
        let mut found = None;
        while let Some(c) = self.dirty_conns.pop_front() {
            let Some(conn) = self.live_conn_mut(c) else {
                continue;
            };
            conn.dirty = false;
            if conn.out.is_empty() {
                self.after_flush(c);
                continue;
            }
            found = Some(c);
            break;
        }
        self.reap();
        found
    }

    /// Points `iov` at the bytes queued for `c`; returns how many slices it filled.
    pub fn transmit_iov<'a>(&'a self, c: ConnId, iov: &mut [IoSlice<'a>]) -> usize {
        self.conns
            .get(c.key())
            .map_or(0, |conn| conn.out.fill_iov(iov))
    }

    /// How the write of `transmit_iov`'s bytes went.
    pub fn handle_written(&mut self, now: Now, c: ConnId, written: Written) {
        self.now = now;
        self.counters.write_calls += 1;
        match written {
            Written::Wrote(0) | Written::Failed => self.close_conn(c),
            Written::Blocked => {}
            Written::Wrote(n) => {
                if let Some(conn) = conn::live_mut(&mut self.conns, c) {
                    let before = conn.out.bytes();
                    conn.out.advance(n);
                    self.counters.bytes_out += (before - conn.out.bytes()) as u64;
                    if conn.out.is_empty() {
                        self.after_flush(c);
                    } else {
                        self.mark_dirty(c);
                    }
                }
            }
        }
        self.reap();
    }

    /// `c`'s queue is written: close it if it was closing; else a WebSocket session owed
    /// order book snapshots gets them now, and an HTTP connection's next pipelined request is
    /// taken up.
    fn after_flush(&mut self, c: ConnId) {
        let Some(conn) = self.live_conn(c) else {
            return;
        };
        if conn.closing {
            return self.close_conn(c);
        }
        match &conn.role {
            Role::WebSocket(ws) if !ws.probing => {
                let s = ws.session;
                self.pay_owed_snapshots(s);
            }
            Role::Http(HttpState::Head) if !conn.inbuf.is_empty() => self.process_input(c),
            _ => {}
        }
    }

    // ---- outputs: actions, time ----

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` is next due.
    /// How long a closing connection may take to accept what it is owed.
    pub fn close_linger(&self) -> std::time::Duration {
        self.settings.close_linger
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let drain = self
            .drain_deadline
            .map(|d| d.min(self.now.mono + DRAIN_CHECK));
        match (self.timers.next_deadline(), drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs what is due at `now`: heartbeats, timeouts, token expiries, record refreshes and
    /// the drain's progress.
    pub fn handle_timeout(&mut self, now: Now) {
        self.now = now;
        self.fire_timers();
        self.work.sweep(now.unix_ms);
        self.enforce_outbound_budget();
        self.refresh_records();
        if self.drain_deadline.is_some() {
            self.drain_step();
        }
        self.reap();
    }

    /// The time the oldest publish handed over since the last call was created, once it has
    /// been queued to every local member (for the fan-out latency histogram).
    pub fn take_publish_started(&mut self) -> Option<Instant> {
        self.pending_publish.take()
    }

    /// True once every session is closed for good (shutdown, or the end of a drain).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether new connections are taken (they are while draining, so `/ready` can answer).
    pub fn accepts_connections(&self) -> bool {
        !self.stopped
    }

    pub fn counters(&mut self) -> &Counters {
        self.counters.subscriptions = self.rooms.subscription_count() as u64;
        self.counters.rooms = self.rooms.room_count() as u64;
        &self.counters
    }

    pub fn subscriptions_by_kind(&self) -> [usize; crate::room::RoomKind::ALL.len()] {
        self.rooms.subscriptions_by_kind()
    }

    /// Bytes queued for every connection and polling session (a walk over all of them).
    pub fn outbound_bytes(&self) -> u64 {
        (self.conns.iter().map(|(_, c)| c.out.bytes()).sum::<usize>()
            + self
                .sessions
                .iter()
                .map(|(_, s)| s.queue.bytes())
                .sum::<usize>()) as u64
    }

    // ---- the shard's inbox ----

    /// A published batch, already encoded.
    /// A published batch, already encoded. Returns how many deliveries it queued (the
    /// driver budgets a loop turn's publishing by them).
    pub fn handle_publish(&mut self, now: Now, batch: &[Broadcast], created: Instant) -> u64 {
        self.now = now;
        let before = self.counters.messages_out;
        self.publish(batch);
        self.reap();
        let delivered = self.counters.messages_out - before;
        // Only what reached a member has a fan-out latency: a batch with nobody to deliver
        // to may have waited in the queue for a turn it did not need (see `shard::presence`).
        if delivered > 0 {
            self.pending_publish = Some(self.pending_publish.map_or(created, |t| t.min(created)));
        }
        delivered
    }

    /// What the shard's publish queue could not take while the shard was behind: newest
    /// values are delivered, order books resynced, and the members of lossless rooms that
    /// lost events are sent to recover them (their sessions end as recoverable, told why).
    pub fn handle_overflow(&mut self, now: Now, overflow: super::handle::Overflow) {
        self.now = now;
        self.counters.overflowed_batches += overflow.batches;
        if let Some(created) = overflow.created {
            self.pending_publish = Some(self.pending_publish.map_or(created, |t| t.min(created)));
        }
        self.last_offset = self.last_offset.max(overflow.last_offset);
        // Views' states first: what was folded after them is newer.
        let refreshes: Vec<Broadcast> = overflow.refreshes.into_values().collect();
        self.publish(&refreshes);
        for (room, m) in overflow.retained {
            if self.follows(&room) {
                self.last_values.insert(room, m);
            }
        }
        self.ticker_all.merge(overflow.tickers);
        let mut owed = Vec::new();
        for (room, view) in overflow.books {
            if !self.follows(&room) {
                continue;
            }
            if let Some(r) = self.rooms.get(&room) {
                for &s in &r.members {
                    if let Some(session) = session::live_mut(&mut self.sessions, s) {
                        if !session.owed.contains(&room) {
                            session.owed.push(room.clone());
                        }
                        owed.push(s);
                    }
                }
            }
            self.books.insert(room, (view, None));
        }
        let latest: Vec<Broadcast> = overflow.latest.into_values().collect();
        self.publish(&latest);
        let (notice, reason) = if overflow.stream_gap {
            (crate::notice::stream_gap(), CloseReason::StreamGap)
        } else {
            (crate::notice::overloaded(), CloseReason::Overloaded)
        };
        let mut lossless = overflow.lossless;
        if overflow.all_lossless {
            use crate::room::{Room, RoomKind};
            lossless.extend(
                self.rooms
                    .names()
                    .filter(|r| {
                        !matches!(
                            Room::parse(r).kind(),
                            RoomKind::Ticker | RoomKind::Orderbook | RoomKind::BookTicker
                        )
                    })
                    .cloned(),
            );
        }
        for room in lossless {
            let members: Vec<SessionId> = self
                .rooms
                .get(&room)
                .map(|r| r.members.iter().copied().collect())
                .unwrap_or_default();
            for s in members {
                self.send_wire(s, &notice);
                self.close_session(s, reason);
            }
        }
        // Who is not waiting on a write gets its snapshot now; the rest once written.
        for s in owed {
            let idle = match self.live_session(s).map(|x| x.transport) {
                Some(session::Transport::WebSocket(c)) => {
                    self.live_conn(c).is_some_and(|conn| conn.out.is_empty())
                }
                Some(session::Transport::Polling { .. }) => true,
                None => false,
            };
            if idle {
                self.pay_owed_snapshots(s);
            }
        }
        self.reap();
    }

    /// A socket.io Redis emitter packet.
    pub fn handle_emit(&mut self, now: Now, emit: &super::handle::RoomEmit) {
        self.now = now;
        self.deliver_emit(emit);
        self.reap();
    }

    /// The answer to an `Action::TakeRecord`.
    pub fn handle_restored(
        &mut self,
        now: Now,
        ticket: RestoreTicket,
        record: Option<SessionRecord>,
    ) {
        self.now = now;
        self.on_restored(ticket, record);
        self.reap();
    }

    /// Graceful drain: every `/ws` client is told `server.shutdown`; new sessions are
    /// refused; once every queue is written, or at `deadline`, everything is closed.
    pub fn handle_drain(&mut self, now: Now, reconnect_after_ms: u64, deadline: Instant) {
        self.now = now;
        self.start_drain(reconnect_after_ms, deadline);
        self.reap();
    }

    /// Closes every session (with an Engine.IO close) and stops.
    pub fn handle_shutdown(&mut self, now: Now) {
        self.now = now;
        self.shutdown();
        self.reap();
    }

    // ---- internals shared by the submodules ----

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// The session, unless it is gone or closing.
    fn live_session(&self, s: SessionId) -> Option<&Session> {
        self.sessions.get(s.key()).filter(|x| x.closing.is_none())
    }

    fn live_session_mut(&mut self, s: SessionId) -> Option<&mut Session> {
        session::live_mut(&mut self.sessions, s)
    }

    /// The connection, unless the engine has let go of it.
    fn live_conn(&self, c: ConnId) -> Option<&Conn> {
        self.conns.get(c.key()).filter(|x| x.fate.is_none())
    }

    fn live_conn_mut(&mut self, c: ConnId) -> Option<&mut Conn> {
        conn::live_mut(&mut self.conns, c)
    }

    fn mark_dirty(&mut self, c: ConnId) {
        if let Some(conn) = self.live_conn_mut(c) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty_conns.push_back(c);
            }
        }
    }

    /// Bytes were queued on `c`: schedules the write and applies the hard limit to a
    /// WebSocket. Past it, the client of the session riding on it is dropped as a slow
    /// consumer (a probe is closed). Plain HTTP needs no check: one request is answered at a
    /// time, so a connection holds at most one response.
    fn queued(&mut self, c: ConnId) {
        let hard = self.settings.outbound_hard_limit;
        let Some(conn) = self.live_conn(c) else {
            return;
        };
        let Role::WebSocket(ws) = &conn.role else {
            return self.mark_dirty(c);
        };
        if conn.out.charge() <= hard {
            return self.mark_dirty(c);
        }
        let s = ws.session;
        let rides = !ws.probing
            && self
                .live_session(s)
                .is_some_and(|x| x.transport == session::Transport::WebSocket(c));
        if rides {
            self.drop_slow_consumer(s)
        } else {
            self.close_conn(c)
        }
    }

    /// `c` closes once what it is owed is written; a peer that does not take it within the
    /// linger time is reset.
    fn set_closing(&mut self, c: ConnId) {
        let at = self.now.mono + self.settings.close_linger;
        let Some(conn) = self.live_conn_mut(c) else {
            return;
        };
        if !conn.closing {
            conn.closing = true;
            let generation = conn.generation;
            self.timers.schedule(at, Timer::Linger(c, generation));
        }
        self.mark_dirty(c);
    }

    fn process_input(&mut self, c: ConnId) {
        match self.live_conn(c) {
            Some(conn) if conn.is_websocket() => self.process_ws(c),
            Some(_) => self.process_http(c),
            None => return,
        }
        if let Some(conn) = self.live_conn_mut(c) {
            if conn.inbuf.is_empty() && conn.inbuf.capacity() > 0 {
                conn.inbuf = BytesMut::new();
            }
        }
        self.settle_input(c);
    }

    /// Whether `peer` is a proxy whose `X-Forwarded-For` is believed (its connections are
    /// not counted against its own address).
    fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.settings
            .trust_proxy
            .as_ref()
            .is_some_and(|t| t.proxies.iter().any(|net| net.contains(&peer)))
    }

    /// Gives connection `c` until the handshake timeout to complete its next request head.
    fn arm_request_timer(&mut self, c: ConnId) {
        let at = self.now.mono + self.settings.handshake_timeout;
        let Some(conn) = self.live_conn_mut(c) else {
            return;
        };
        conn.idle_requests = conn.requests;
        conn.idle_deadline = Some(at);
        let generation = conn.generation;
        self.timers
            .schedule(at, Timer::RequestTimeout(c, generation));
    }

    fn fire_timers(&mut self) {
        while let Some(t) = self.timers.pop_due(self.now.mono) {
            match t {
                Timer::Heartbeat(s, g) if self.is_session(s, g) => self.on_heartbeat_timer(s),
                Timer::Socket(s, g) if self.is_session(s, g) => self.on_socket_timer(s),
                Timer::ConnectTimeout(s, g) if self.is_session(s, g) => {
                    let unconnected = self
                        .live_session(s)
                        .is_some_and(|x| !x.echo && !x.sockets.is_connected());
                    if unconnected {
                        self.close_session(s, CloseReason::ConnectTimeout);
                    }
                }
                Timer::RequestTimeout(c, g) => {
                    let now = self.now.mono;
                    let idle = self.live_conn(c).is_some_and(|conn| {
                        conn.generation == g
                            && conn.requests == conn.idle_requests
                            && conn.idle_deadline.is_some_and(|d| now >= d)
                            && matches!(
                                conn.role,
                                Role::Http(HttpState::Head | HttpState::Body { .. })
                            )
                    });
                    if idle {
                        self.close_conn(c);
                    }
                }
                Timer::InputDeadline(c, g) => {
                    let now = self.now.mono;
                    let late = self.live_conn(c).is_some_and(|conn| {
                        conn.generation == g && conn.input_deadline.is_some_and(|d| now >= d)
                    });
                    if late {
                        self.counters.input_timeouts += 1;
                        self.close_conn(c);
                    }
                }
                Timer::Linger(c, g) => {
                    let stuck = self
                        .live_conn(c)
                        .is_some_and(|conn| conn.generation == g && conn.closing);
                    if stuck {
                        self.counters.linger_resets += 1;
                        self.close_conn(c);
                        if let Some(conn) = self.conns.get_mut(c.key()) {
                            conn.reset = true;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether `s` is a live session of generation `g` (a timer armed for it still applies).
    fn is_session(&self, s: SessionId, g: u64) -> bool {
        self.live_session(s).is_some_and(|x| x.generation == g)
    }

    /// Removes what this call closed: sessions leave their rooms (their cap slots were given
    /// back as they closed); connections' sockets are released or handed off by the driver.
    fn reap(&mut self) {
        while let Some(s) = self.closed_sessions.pop() {
            let Some(session) = self.sessions.try_remove(s.key()) else {
                continue;
            };
            self.sids.remove(&session.sid);
            for room in session.sockets.rooms() {
                self.leave_room(room, s, Some(session.ip));
            }
            match session.transport {
                session::Transport::WebSocket(_) => {
                    self.counters.websocket_connections =
                        self.counters.websocket_connections.saturating_sub(1);
                }
                session::Transport::Polling { .. } => {
                    self.counters.polling_sessions =
                        self.counters.polling_sessions.saturating_sub(1);
                }
            }
        }
        while let Some(c) = self.closed_conns.pop() {
            let Some(conn) = self.conns.try_remove(c.key()) else {
                continue;
            };
            self.counters.tcp_connections = self.counters.tcp_connections.saturating_sub(1);
            let limits = &self.shared.limits;
            limits.recharge_input(&conn.input, conn.input_charged, 0);
            let handed_off = matches!(conn.fate, Some(Fate::HandedOff { .. }));
            if !handed_off {
                limits.release_tcp(conn.tcp_counted.then_some(conn.ip));
            }
            self.actions.push_back(match conn.fate {
                Some(Fate::HandedOff { shard }) => Action::HandOff {
                    conn: c,
                    shard,
                    buffered: conn.inbuf,
                },
                _ if conn.reset => Action::Reset(c),
                _ => Action::Release(c),
            });
        }
    }

    /// Tells every `/ws` client to go. Connections are still accepted, so load balancers see
    /// `/ready` answer 503, but new sessions are refused.
    fn start_drain(&mut self, reconnect_after_ms: u64, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        let notice = crate::notice::server_shutdown(reconnect_after_ms);
        for s in self.gateway_sessions() {
            self.send_wire(s, &notice);
        }
    }

    /// While draining: close everything once every queue is written, or at the deadline.
    fn drain_step(&mut self) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        let drained = self.conns.iter().all(|(_, c)| c.out.is_empty())
            && self.sessions.iter().all(|(_, s)| s.queue.is_empty());
        if drained || self.now.mono >= deadline {
            self.shutdown();
        }
    }

    fn shutdown(&mut self) {
        self.stopped = true;
        let keys: Vec<SessionId> = self
            .sessions
            .iter()
            .map(|(k, _)| SessionId::new(k))
            .collect();
        for s in keys {
            self.close_session(s, CloseReason::ServerShutdown);
        }
    }

    /// Adds `s` to `room`; true if that opened a view on this shard (the market computes
    /// its state for it).
    fn join_room(&mut self, room: Arc<str>, s: SessionId, ip: IpAddr) -> bool {
        let is_view = crate::room::Room::parse(&room).view().is_some();
        if is_view {
            let now_ms = self.now.unix_ms;
            self.shared.limits.view_subscription(ip, true, now_ms);
        }
        if !self.rooms.join(room.clone(), s) {
            return false;
        }
        self.shared.limits.room_changed(true);
        if is_view {
            self.open_view(&room);
        }
        is_view
    }

    fn leave_room(&mut self, room: &str, s: SessionId, ip: Option<IpAddr>) {
        if let Some(ip) = ip.filter(|_| crate::room::Room::parse(room).view().is_some()) {
            let now_ms = self.now.unix_ms;
            self.shared.limits.view_subscription(ip, false, now_ms);
        }
        if self.rooms.leave(room, s) {
            self.shared.limits.room_changed(false);
            self.close_view(room);
        }
    }

    /// Keeps what all of the shard's outbound queues hold under its share of
    /// `--max-outbound-total`: past it, the sessions with the longest backlogs are dropped as
    /// slow consumers until the total is back under nine tenths of it. Each queue stays under
    /// the per-connection hard limit anyway; this bounds them together (checked every
    /// `BUDGET_CHECK`, since it walks every queue).
    fn enforce_outbound_budget(&mut self) {
        if self.now.mono.duration_since(self.last_budget_check) < BUDGET_CHECK {
            return;
        }
        self.last_budget_check = self.now.mono;
        let budget = self.settings.outbound_total_limit / self.shard_count.max(1);
        let mut held: Vec<(usize, SessionId)> = Vec::new();
        let mut total = 0usize;
        for (k, s) in self.sessions.iter().filter(|(_, s)| s.closing.is_none()) {
            let charge = match s.transport {
                session::Transport::WebSocket(c) => {
                    self.conns.get(c.key()).map_or(0, |x| x.out.charge())
                }
                session::Transport::Polling { .. } => s.queue.charge(),
            };
            total += charge;
            if charge > 0 {
                held.push((charge, SessionId::new(k)));
            }
        }
        if total <= budget {
            return;
        }
        held.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let target = budget / 10 * 9;
        for (charge, s) in held {
            if total <= target {
                break;
            }
            total -= charge;
            self.counters.outbound_budget_drops += 1;
            self.drop_slow_consumer(s);
        }
    }

    /// Sessions with a socket on the gateway namespace `/ws`.
    fn gateway_sessions(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.closing.is_none())
            .filter(|(_, s)| {
                s.sockets
                    .sockets
                    .iter()
                    .any(|n| &*n.namespace == crate::GATEWAY_NAMESPACE)
            })
            .map(|(k, _)| SessionId::new(k))
            .collect()
    }
}

/// While draining, how often the engine checks whether every queue is written.
const DRAIN_CHECK: std::time::Duration = std::time::Duration::from_millis(50);
/// How often all outbound queues are added up against the shard's budget.
const BUDGET_CHECK: std::time::Duration = std::time::Duration::from_millis(50);
/// Pipelined input an HTTP connection may hold while its previous response is pending.
const PIPELINED_INPUT: usize = 16 * 1024;
/// Answers and control frames queued for one client (memory only it holds) past which its
/// connection is not read until it takes them: what a client that asks and never reads can
/// make the gateway hold.
const OWN_OUTBOUND: usize = 64 * 1024;

#[cfg(any(test, fuzzing))]
impl Engine {
    /// Sessions and connections the engine holds (for invariant checks).
    pub fn census(&self) -> Census {
        Census {
            sessions: self.sessions.len(),
            conns: self.conns.len(),
            rooms: self.rooms.room_count(),
            subscriptions: self.rooms.subscription_count(),
            timers: self.timers.len(),
        }
    }

    /// Checks what must hold between calls: nothing closed is left behind, room membership
    /// and the sessions' own room lists agree, every connection's role names a session that
    /// uses it, and queues are within their limits.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.closed_sessions.is_empty() || !self.closed_conns.is_empty() {
            return Err("something closed was not reaped".into());
        }
        for (k, s) in self.sessions.iter() {
            let id = SessionId::new(k);
            if s.closing.is_some() {
                return Err(format!("{id:?} is closing after the call"));
            }
            if self.sids.get(&s.sid) != Some(&id) {
                return Err(format!("{id:?} is not found by its sid"));
            }
            for room in s.sockets.rooms() {
                if !self
                    .rooms
                    .get(room)
                    .is_some_and(|r| r.members.contains(&id))
                {
                    return Err(format!("{id:?} is in {room} but not among its members"));
                }
            }
            if s.queue.charge() > self.settings.outbound_hard_limit {
                return Err(format!("{id:?} holds {} queued", s.queue.charge()));
            }
        }
        if self.sids.len() != self.sessions.len() {
            return Err("a sid names no session".into());
        }
        let listed: usize = self
            .sessions
            .iter()
            .map(|(_, s)| s.sockets.rooms().count())
            .sum();
        if listed != self.rooms.subscription_count() {
            return Err(format!(
                "{} room memberships, but sessions list {listed}",
                self.rooms.subscription_count()
            ));
        }
        let (hard, input_cap) = (
            self.settings.outbound_hard_limit,
            self.settings.max_payload + 64 * 1024,
        );
        let mut tcp: HashMap<IpAddr, usize> = HashMap::new();
        for (k, c) in self.conns.iter() {
            if c.fate.is_some() {
                return Err(format!("connection {k} was let go of but not reaped"));
            }
            if c.tcp_counted {
                *tcp.entry(c.ip).or_default() += 1;
            }
            if c.inbuf.len() > input_cap {
                return Err(format!(
                    "connection {k} holds {} bytes of input",
                    c.inbuf.len()
                ));
            }
            if c.input_charged != c.held_input() {
                return Err(format!("connection {k}'s input charge is stale"));
            }
            let carries = matches!(&c.role, Role::WebSocket(ws) if !ws.probing);
            if carries && !c.closing && c.out.charge() > hard {
                return Err(format!("connection {k} holds {} queued", c.out.charge()));
            }
            let user = match &c.role {
                Role::WebSocket(ws) => Some(ws.session),
                Role::Http(HttpState::PendingGet { session, .. }) => Some(*session),
                Role::Http(_) => None,
            };
            if let Some(s) = user {
                if self.sessions.get(s.key()).is_none() {
                    return Err(format!("connection {k} serves a session that is gone"));
                }
            }
        }
        for (ip, n) in tcp {
            if self.shared.limits.tcp_connections(ip) != n {
                return Err(format!(
                    "{ip} holds {n} connections, the cap counts otherwise"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(any(test, fuzzing))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub sessions: usize,
    pub conns: usize,
    pub rooms: usize,
    pub subscriptions: usize,
    pub timers: usize,
}
