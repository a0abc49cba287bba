//! The sharded reactor. Each shard is one thread with its own `mio::Poll`, its own listener
//! socket (`SO_REUSEPORT`), and exclusive ownership of its connections, sessions and room
//! table. Shards share nothing on the per-message path: publishes arrive as one channel
//! message per batch, and a request for a session owned elsewhere moves its socket to the
//! owner.
//!
//! A shard is two halves: the `engine`, which makes every protocol decision with no I/O and
//! no clock (bytes and time in, bytes to write and actions out), and the `driver`, the thin
//! mio loop that owns the sockets, reads the clock and carries out what the engine asks.

mod driver;
pub mod engine;
mod handle;
pub mod presence;
mod stats;

pub use handle::{Broadcast, Fanout, Overflow, RoomEmit, ShardHandle, ShardMsg};
pub use stats::{Counters, Latency, ShardStats, LATENCY_BUCKETS};

use crate::limits::{LimitSettings, Limits};
use crate::recovery::Recovery;
use crate::session::sockets::App;
use driver::{Driver, LISTENER, WAKER};
use engine::Engine;
use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// permessage-deflate for WebSocket clients that offer it: messages with at least this
    /// many payload bytes go out compressed. `None`: never negotiated.
    pub deflate_threshold: Option<usize>,
    /// Origins allowed for cross-origin polling; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` of these proxies (none: never).
    pub trust_proxy: Option<crate::http::forwarded::ProxyTrust>,
    /// Serve the demo trading view at `/`.
    pub demo_page: bool,
    /// Outbound bytes queued for one connection past which the slow-consumer policy applies.
    pub outbound_soft_limit: usize,
    /// Outbound bytes queued for one connection past which it is disconnected.
    pub outbound_hard_limit: usize,
    /// How long a closing connection may take to accept what it is owed before it is reset.
    pub close_linger: Duration,
    /// Outbound bytes all connections together may have queued (each shard holds its share).
    pub outbound_total_limit: usize,
    /// Work one client address may cause, in events per second (each shard has its share).
    pub work_rate_per_ip: f64,
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
    /// Where the instance stands against the cluster stream (always following standalone).
    pub catch_up: Arc<crate::ingest::catch_up::CatchUp>,
    /// Which views (rooms at a subscription's own depth or speed) shards have open.
    pub demand: Arc<crate::market::demand::Demand>,
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
            catch_up: Arc::new(crate::ingest::catch_up::CatchUp::following()),
            demand: Arc::default(),
        }
    }
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

/// Fails if another process listens on `addr`. The shards bind it with `SO_REUSEPORT`, which
/// would otherwise let a second gateway of the same user silently share the port (and its
/// clients) with the first.
fn refuse_shared_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let domain = socket2::Domain::for_address(addr);
    let probe = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    // Address reuse lets the probe bind over connections in TIME_WAIT, not over a listener.
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} (is another gateway listening on {addr}?)"),
        )
    })
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
        refuse_shared_port(addr)?;
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
            let (publish_tx, publish_rx) = crossbeam_channel::bounded(handle::PUBLISH_QUEUE);
            handles.push(ShardHandle {
                tx,
                publish_tx,
                overflow: Default::default(),
                overflowing: Default::default(),
                waker,
                presence: Default::default(),
            });
            receivers.push((rx, publish_rx));
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
            let mut engine = Engine::new(id, n, settings.clone(), shared.clone(), driver::now());
            engine.report_presence(handles[id].presence.clone());
            let mut driver = Driver::new(
                poll,
                TcpListener::from_std(listener),
                rx,
                handles.clone(),
                engine,
                shared.clone(),
                st,
            );
            driver
                .poll
                .registry()
                .register(&mut driver.listener, LISTENER, Interest::READABLE)?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{id}"))
                    .spawn(move || driver.run())?,
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
    #[allow(
        clippy::disallowed_methods,
        reason = "the wiring turns the drain timeout into the shards' deadline"
    )]
    pub fn drain(self, reconnect_after_ms: u64, timeout: Duration) {
        self.fanout()
            .drain(reconnect_after_ms, Instant::now() + timeout);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
