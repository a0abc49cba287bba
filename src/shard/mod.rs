//! The sharded reactor. Each shard is one thread with its own `mio::Poll`, its own listener
//! socket (`SO_REUSEPORT`), and exclusive ownership of its connections, sessions and room
//! table. Shards share nothing on the per-message path: publishes arrive as one channel
//! message per batch, and a request for a session owned elsewhere moves its socket to the
//! owner.

mod conn;
mod emit;
mod engine;
mod handle;
mod http;
pub mod outbound;
mod recovery;
mod rooms;
mod stats;
mod timers;
mod ws;

pub use handle::{Broadcast, Fanout, ShardHandle, ShardMsg};
pub use rooms::ROOM_KINDS;
pub use stats::{Counters, Latency, ShardStats, LATENCY_BUCKETS};

use crate::codec::WireMessage;
use crate::limits::{LimitSettings, Limits};
use crate::market::book::BookView;
use crate::market::StreamClass;
use crate::recovery::{Offset, Recovery};
use crate::session::heartbeat::Heartbeat;
use crate::sockets::{App, SocketLayer};
use bytes::{Bytes, BytesMut};
use conn::Conn;
use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use outbound::{Flush, Outbound};
use rooms::Rooms;
use slab::Slab;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timers::{Timer, TimerKind, Timers};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const READ_CHUNK: usize = 16 * 1024;
const GAUGE_REFRESH: Duration = Duration::from_millis(500);

/// Settings every shard reads; fixed at start-up.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Engine.IO path of the Socket.IO endpoint, with a trailing slash.
    pub engine_path: String,
    /// An extra path serving a bare Engine.IO echo endpoint (protocol conformance only).
    pub echo_path: Option<String>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_payload: usize,
    /// Origins allowed for cross-origin polling; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` (behind a trusted proxy only).
    pub trust_proxy: bool,
    /// Serve the demo trading view at `/`.
    pub demo_page: bool,
    /// Outbound bytes queued for one connection past which the slow-consumer policy applies.
    pub outbound_soft_limit: usize,
    /// Outbound bytes queued for one connection past which it is disconnected.
    pub outbound_hard_limit: usize,
    pub app: App,
}

/// Process-wide state shards share: readiness, and the connection caps (touched per
/// handshake and close, never per message).
#[derive(Debug)]
pub struct Shared {
    pub ready: AtomicBool,
    pub limits: Limits,
    /// Refused tokens by reason (`auth::TokenError::reason`).
    pub auth_failures: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Set when draining: shards refuse new sessions.
    pub draining: AtomicBool,
    /// False while the cluster stream is unreachable (always true standalone).
    pub upstream_ok: Arc<AtomicBool>,
    /// Connection state recovery, when on.
    pub recovery: Option<Arc<Recovery>>,
    /// Socket.io Redis emitter packets seen (cluster mode).
    pub emitter: Arc<crate::cluster::emitter::EmitterCounters>,
}

impl Shared {
    pub fn new(limits: LimitSettings) -> Shared {
        Shared {
            ready: AtomicBool::new(false),
            limits: Limits::new(limits),
            auth_failures: Default::default(),
            draining: AtomicBool::new(false),
            upstream_ok: Arc::new(AtomicBool::new(true)),
            recovery: None,
            emitter: Default::default(),
        }
    }
}

#[derive(Debug)]
enum Transport {
    Polling { get: Option<usize> },
    WebSocket(usize),
}

#[derive(Debug)]
struct Session {
    sid: Box<str>,
    generation: u64,
    transport: Transport,
    probe: Option<usize>,
    /// Packets waiting for a poll (polling transport only).
    queue: Outbound,
    /// Order book rooms whose deltas this client missed: it gets a snapshot once caught up.
    owed: SmallVec<[Arc<str>; 1]>,
    dirty: bool,
    heartbeat: Heartbeat,
    /// A bare Engine.IO session that echoes messages (conformance endpoint).
    echo: bool,
    sockets: SocketLayer,
    /// The client's address, as counted by the connection caps.
    ip: IpAddr,
    /// The token the handshake carried (`token` query, else `Authorization: Bearer`).
    handshake_token: Option<Box<str>>,
    /// The socket-layer deadline a timer is armed for.
    socket_timer: Option<u64>,
    /// With recovery on: each room and the offset this shard had delivered when it was joined.
    joined: Vec<(Arc<str>, Offset)>,
    /// A recovered client already has lossless events up to here (see `recovery::Restored`).
    skip_until: Option<Offset>,
}

pub struct Shard {
    id: usize,
    poll: Poll,
    listener: TcpListener,
    rx: Receiver<ShardMsg>,
    peers: Arc<[ShardHandle]>,
    settings: Arc<ServerSettings>,
    shared: Arc<Shared>,
    stats: Arc<ShardStats>,
    counters: Counters,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    sids: HashMap<Box<str>, usize>,
    rooms: Rooms,
    /// The latest message of each room that keeps one (tickers, klines), for new subscribers.
    last_values: HashMap<Arc<str>, WireMessage>,
    /// Each order book room's current view, and its subscribe snapshot once encoded.
    books: HashMap<Arc<str>, (Arc<BookView>, Option<WireMessage>)>,
    timers: Timers,
    dirty_conns: Vec<usize>,
    dirty_sessions: Vec<usize>,
    next_generation: u64,
    now: Instant,
    latency: Latency,
    /// Oldest publish handed over in this loop turn, not yet written.
    turn_publish: Option<Instant>,
    last_gauges: Instant,
    outbound_bytes: u64,
    scratch: Box<[u8]>,
    shutting_down: bool,
    /// Set while draining: the instant by which everything is closed.
    drain_deadline: Option<Instant>,
    /// The newest recovery offset this shard has delivered.
    last_offset: Option<Offset>,
    /// When live recovery records were last rewritten.
    last_refresh: Instant,
}

/// Binds `addr` with `SO_REUSEPORT` so every shard can own a listener on the same port.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A running set of shards.
pub struct Reactor {
    pub handles: Arc<[ShardHandle]>,
    pub stats: Vec<Arc<ShardStats>>,
    pub local_addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Reactor {
    /// Starts `n` shards listening on `addr` (port 0 picks one port for all of them).
    pub fn start(
        n: usize,
        addr: SocketAddr,
        settings: Arc<ServerSettings>,
        shared: Arc<Shared>,
    ) -> io::Result<Reactor> {
        let n = n.clamp(1, 256);
        let first = bind_reuseport(addr)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(bind_reuseport(local_addr)?);
        }
        let mut polls = Vec::new();
        let mut handles = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            handles.push(ShardHandle { tx, waker });
            receivers.push(rx);
            polls.push(poll);
        }
        let handles: Arc<[ShardHandle]> = handles.into();
        let mut stats = Vec::new();
        let mut threads = Vec::new();
        for (id, ((poll, rx), listener)) in
            polls.into_iter().zip(receivers).zip(listeners).enumerate()
        {
            let st = Arc::new(ShardStats::default());
            stats.push(st.clone());
            let mut shard = Shard {
                id,
                listener: TcpListener::from_std(listener),
                poll,
                rx,
                peers: handles.clone(),
                settings: settings.clone(),
                shared: shared.clone(),
                stats: st,
                counters: Counters::default(),
                conns: Slab::new(),
                sessions: Slab::new(),
                sids: HashMap::new(),
                rooms: Rooms::default(),
                last_values: HashMap::new(),
                books: HashMap::new(),
                timers: Timers::default(),
                dirty_conns: Vec::new(),
                dirty_sessions: Vec::new(),
                next_generation: 1,
                now: Instant::now(),
                latency: Latency::default(),
                turn_publish: None,
                last_gauges: Instant::now(),
                outbound_bytes: 0,
                scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
                shutting_down: false,
                drain_deadline: None,
                last_offset: shared.recovery.as_ref().and_then(|r| r.origin()),
                last_refresh: Instant::now(),
            };
            shard
                .poll
                .registry()
                .register(&mut shard.listener, LISTENER, Interest::READABLE)?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{id}"))
                    .spawn(move || shard.run())?,
            );
        }
        Ok(Reactor {
            handles,
            stats,
            local_addr,
            threads,
        })
    }

    pub fn fanout(&self) -> Fanout {
        Fanout::new(self.handles.clone())
    }

    pub fn counters(&self) -> Vec<Counters> {
        self.stats.iter().map(|s| s.load()).collect()
    }

    /// Closes every session and waits for the shard threads to end.
    pub fn shutdown(self) {
        self.fanout().shutdown();
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Drains every shard (see `ShardMsg::Drain`) and waits for them to end.
    pub fn drain(self, reconnect_after_ms: u64, timeout: Duration) {
        self.fanout()
            .drain(reconnect_after_ms, Instant::now() + timeout);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shard {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self
                .timers
                .next_deadline()
                .or(self
                    .drain_deadline
                    .map(|d| d.min(Instant::now() + Duration::from_millis(50))))
                .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_micros(500))
                // Wake at least this often so published gauges stay fresh on an idle shard.
                .map_or(GAUGE_REFRESH, |t| t.min(GAUGE_REFRESH));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.id, error = %e, "poll failed; shard stops");
                    return;
                }
            }
            self.now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.drain_messages(),
                    Token(i) => {
                        if ev.is_writable() {
                            self.mark_dirty(i);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(i, ev.is_read_closed() || ev.is_error());
                        }
                    }
                }
            }
            self.fire_timers();
            self.flush();
            if let Some(created) = self.turn_publish.take() {
                self.latency.record(created.elapsed());
            }
            self.publish_stats();
            self.refresh_records();
            if self.drain_deadline.is_some() {
                self.drain_step();
            }
            if self.shutting_down {
                return;
            }
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.shutting_down {
                        continue;
                    }
                    self.add_conn(stream, BytesMut::new());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: keep serving the connections we have.
                    tracing::warn!(shard = self.id, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, mut stream: TcpStream, buffered: BytesMut) {
        let _ = stream.set_nodelay(true);
        let generation = self.generation();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        let ip = stream
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut conn = Conn::new(stream, generation, ip);
        conn.inbuf = buffered;
        entry.insert(conn);
        self.counters.tcp_connections += 1;
        self.arm_idle_timer(key);
        if !self.conns[key].inbuf.is_empty() {
            self.process_input(key);
        }
    }

    /// Gives connection `c` until the handshake timeout to complete its next request head.
    fn arm_idle_timer(&mut self, c: usize) {
        let Some(conn) = self.conns.get_mut(c) else {
            return;
        };
        let at = self.now + self.settings.handshake_timeout;
        conn.idle_requests = conn.requests;
        conn.idle_deadline = Some(at);
        let generation = conn.generation;
        self.timers.schedule(
            at,
            Timer {
                kind: TimerKind::HandshakeTimeout,
                index: c,
                generation,
            },
        );
    }

    fn drain_messages(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(ShardMsg::Publish(batch)) => self.publish(&batch),
                Ok(ShardMsg::Adopt { stream, buffered }) => {
                    self.add_conn(TcpStream::from_std(stream), buffered);
                }
                Ok(ShardMsg::Shutdown) => self.shutdown(),
                Ok(ShardMsg::Restored { ticket, record }) => self.on_restored(ticket, record),
                Ok(ShardMsg::Emit(emit)) => self.deliver_emit(&emit),
                Ok(ShardMsg::Drain {
                    reconnect_after_ms,
                    deadline,
                }) => self.start_drain(reconnect_after_ms, deadline),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Writes each broadcast to every local member of its room. The frame is copied once into
    /// this shard's memory so the per-subscriber reference counting stays on this core.
    fn publish(&mut self, batch: &[Broadcast]) {
        let mut over_limit = Vec::new();
        let (soft, hard) = (
            self.settings.outbound_soft_limit,
            self.settings.outbound_hard_limit,
        );
        if let Some(first) = batch.first() {
            self.turn_publish = Some(
                self.turn_publish
                    .map_or(first.created, |t| t.min(first.created)),
            );
        }
        for b in batch {
            self.counters.broadcasts_received += 1;
            if b.retain {
                self.last_values.insert(b.room.clone(), b.message.clone());
            }
            if let Some(view) = &b.book {
                self.books.insert(b.room.clone(), (view.clone(), None));
            }
            if b.offset.is_some() {
                self.last_offset = b.offset.max(self.last_offset);
            }
            if !b.deliver {
                continue;
            }
            let Some(room) = self.rooms.get(&b.room) else {
                continue;
            };
            let tag = room.id;
            let frame = Bytes::copy_from_slice(b.message.ws_frame());
            let mut polling: Option<Bytes> = None;
            for &s in &room.members {
                let Some(session) = self.sessions.get_mut(s) else {
                    continue;
                };
                if let (Some(skip), Some(offset)) = (session.skip_until, b.offset) {
                    if offset <= skip {
                        continue;
                    }
                }
                let (queue, data) = match session.transport {
                    Transport::WebSocket(c) => {
                        let Some(conn) = self.conns.get_mut(c) else {
                            continue;
                        };
                        if !conn.dirty {
                            conn.dirty = true;
                            self.dirty_conns.push(c);
                        }
                        (&mut conn.out, frame.clone())
                    }
                    Transport::Polling { .. } => {
                        if !session.dirty {
                            session.dirty = true;
                            self.dirty_sessions.push(s);
                        }
                        let p = polling.get_or_insert_with(|| b.message.polling()).clone();
                        (&mut session.queue, p)
                    }
                };
                let over_soft = queue.bytes() > soft;
                let sent = match b.class {
                    StreamClass::Lossless => {
                        queue.push(data, tag, false);
                        true
                    }
                    StreamClass::Latest => {
                        if over_soft && queue.replace_latest(data.clone(), tag) {
                            false
                        } else {
                            queue.push(data, tag, true);
                            true
                        }
                    }
                    StreamClass::BookDelta => {
                        if session.owed.contains(&b.room) {
                            false
                        } else if over_soft {
                            session.owed.push(b.room.clone());
                            false
                        } else {
                            queue.push(data, tag, false);
                            true
                        }
                    }
                    StreamClass::BookSnapshot => {
                        session.owed.retain(|r| *r != b.room);
                        queue.push(data, tag, false);
                        true
                    }
                };
                if sent {
                    self.counters.messages_out += 1;
                } else {
                    self.counters.slow_consumer_drops += 1;
                }
                if queue.bytes() > hard {
                    over_limit.push(s);
                }
            }
        }
        over_limit.sort_unstable();
        over_limit.dedup();
        for s in over_limit {
            self.drop_slow_consumer(s);
        }
    }

    /// Sends the order book snapshots a session is owed, once its queue has drained.
    fn pay_owed_snapshots(&mut self, s: usize) {
        let Some(session) = self.sessions.get_mut(s) else {
            return;
        };
        if session.owed.is_empty() {
            return;
        }
        let owed = std::mem::take(&mut session.owed);
        let now = unix_ms();
        for room in owed {
            if let Some((view, _)) = self.books.get(&room) {
                let data = crate::market::Payload::Json(view.snapshot_json("resync"));
                let m =
                    crate::gateway::envelope::encode_payload("orderbook.update", &room, &data, now);
                self.send_wire(s, &m);
            }
        }
    }

    fn mark_dirty(&mut self, c: usize) {
        if let Some(conn) = self.conns.get_mut(c) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty_conns.push(c);
            }
        }
    }

    /// Reads what the socket holds. A short read normally means it is drained, which saves
    /// a syscall per message; when the peer has also half-closed, read on to see the EOF,
    /// since edge-triggered readiness will not report it again.
    fn on_readable(&mut self, c: usize, peer_closed: bool) {
        let mut eof = false;
        loop {
            let Some(conn) = self.conns.get_mut(c) else {
                return;
            };
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    if conn.inbuf.len() > self.settings.max_payload + 64 * 1024 {
                        // More unconsumed input than any legal message: stop reading it.
                        self.counters.protocol_errors += 1;
                        return self.close_conn(c);
                    }
                    if n < self.scratch.len() && !peer_closed {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close_conn(c),
            }
        }
        self.process_input(c);
        if eof {
            // The peer sends nothing more: answer what it asked, then close.
            if let Some(conn) = self.conns.get_mut(c) {
                conn.closing = true;
                self.mark_dirty(c);
            }
        }
    }

    fn process_input(&mut self, c: usize) {
        let is_ws = matches!(
            self.conns.get(c).map(|c| &c.role),
            Some(conn::Role::WebSocket(_))
        );
        if is_ws {
            self.process_ws(c);
        } else {
            self.process_http(c);
        }
        if let Some(conn) = self.conns.get_mut(c) {
            if conn.inbuf.is_empty() && conn.inbuf.capacity() > 0 {
                conn.inbuf = BytesMut::new();
            }
        }
    }

    fn fire_timers(&mut self) {
        while let Some(t) = self.timers.pop_due(self.now) {
            match t.kind {
                TimerKind::Heartbeat | TimerKind::ConnectTimeout | TimerKind::Socket => {
                    match self.sessions.get(t.index) {
                        Some(s) if s.generation == t.generation => {}
                        _ => continue,
                    }
                    if t.kind == TimerKind::Heartbeat {
                        self.on_heartbeat_timer(t.index);
                    } else if t.kind == TimerKind::Socket {
                        self.on_socket_timer(t.index);
                    } else {
                        let s = &self.sessions[t.index];
                        if !s.echo && !s.sockets.is_connected() {
                            self.close_session(t.index, "connect timeout", true);
                        }
                    }
                }
                TimerKind::HandshakeTimeout => {
                    let Some(conn) = self.conns.get(t.index) else {
                        continue;
                    };
                    if conn.generation == t.generation
                        && conn.requests == conn.idle_requests
                        && conn.idle_deadline.is_some_and(|d| self.now >= d)
                        && matches!(
                            conn.role,
                            conn::Role::Http(conn::HttpState::Head | conn::HttpState::Body { .. })
                        )
                    {
                        self.close_conn(t.index);
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        while let Some(s) = self.dirty_sessions.pop() {
            self.flush_polling(s);
        }
        // A second round writes what the first queued (owed snapshots) without waiting for
        // another event.
        for _ in 0..2 {
            let dirty = std::mem::take(&mut self.dirty_conns);
            if dirty.is_empty() {
                return;
            }
            for c in dirty {
                self.flush_conn(c);
            }
        }
    }

    fn flush_conn(&mut self, c: usize) {
        let Some(conn) = self.conns.get_mut(c) else {
            return;
        };
        conn.dirty = false;
        let before = conn.out.bytes();
        let (result, calls) = conn.flush();
        self.counters.write_calls += calls as u64;
        self.counters.bytes_out += (before - conn.out.bytes()) as u64;
        match result {
            Flush::Closed => self.close_conn(c),
            Flush::Done if conn.closing => self.close_conn(c),
            Flush::Done => {
                if let conn::Role::WebSocket(ws) = &conn.role {
                    let s = ws.session;
                    self.pay_owed_snapshots(s);
                }
            }
            Flush::Blocked => {}
        }
    }

    fn publish_stats(&mut self) {
        self.counters.subscriptions = self.rooms.subscription_count() as u64;
        self.counters.rooms = self.rooms.room_count() as u64;
        self.stats.store(&self.counters);
        // The outbound total needs a walk over every connection: twice a second at most.
        if self.now.duration_since(self.last_gauges) >= GAUGE_REFRESH {
            self.last_gauges = self.now;
            self.outbound_bytes = (self.conns.iter().map(|(_, c)| c.out.bytes()).sum::<usize>()
                + self
                    .sessions
                    .iter()
                    .map(|(_, s)| s.queue.bytes())
                    .sum::<usize>()) as u64;
        }
        self.stats.gauges.store(
            self.rooms.subscriptions_by_kind(),
            self.outbound_bytes,
            &self.latency,
        );
    }

    /// Sessions with a socket on the gateway namespace `/ws`.
    fn gateway_sessions(&self) -> Vec<usize> {
        self.sessions
            .iter()
            .filter(|(_, s)| {
                s.sockets
                    .sockets
                    .iter()
                    .any(|n| &*n.namespace == crate::gateway::envelope::GATEWAY_NAMESPACE)
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Tells every client to go (`server.shutdown` on `/ws`). Connections are still accepted,
    /// so load balancers see `/ready` answer 503, but new sessions are refused.
    fn start_drain(&mut self, reconnect_after_ms: u64, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        let notice = WireMessage::text(|b| {
            b.extend_from_slice(b"42/ws,[\"server.shutdown\",{\"reconnectAfterMs\":");
            b.extend_from_slice(itoa::Buffer::new().format(reconnect_after_ms).as_bytes());
            b.extend_from_slice(b"}]");
        });
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
        if drained || Instant::now() >= deadline {
            self.shutdown();
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        let _ = self.poll.registry().deregister(&mut self.listener);
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for s in keys {
            self.close_session(s, "server shutting down", true);
        }
        self.flush();
    }
}
