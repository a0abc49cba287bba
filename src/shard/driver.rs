//! The I/O side of a shard: one thread with its own `mio::Poll`, its listener socket
//! (`SO_REUSEPORT`), the sockets of its connections and its inbox. It is the only place a
//! shard reads the clock. It moves bytes between the sockets and the engine and carries out
//! what the engine asks; every protocol decision is the engine's.
//!
//! One loop turn: wait for readiness (or the engine's next deadline), feed what arrived to the
//! engine (new connections, input, inbox messages), let it run its timers, then write what
//! it queued, one `writev` per connection where the socket takes it all.
#![allow(
    clippy::disallowed_methods,
    reason = "the driver is where a shard reads the clock"
)]

use super::engine::outbound::MAX_IOV;
use super::engine::{Action, ConnId, Engine, Now, Written};
use super::handle::{PublishMsg, ShardHandle, ShardMsg};
use super::stats::{Counters, Latency, ShardStats};
use super::Shared;
use crate::clock::unix_ms;
use crate::log_rate::LogRate;
use bytes::BytesMut;
use crossbeam_channel::Receiver;
use indexmap::IndexSet;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX - 2);
const READ_CHUNK: usize = 16 * 1024;
/// Work one loop turn does before it writes and comes back for more: so publishes, new
/// connections and one busy client cannot starve everyone else's writes and timers.
const PUBLISH_BUDGET: usize = 64;
/// Deliveries a turn queues before it writes them (a batch is never split).
const DELIVERY_BUDGET: u64 = 32 * 1024;
const ACCEPT_BUDGET: usize = 256;
/// Chunks read from one connection per turn.
const READ_BUDGET: usize = 4;
/// Chunks read from all connections together per turn. Whatever many clients send, each turn
/// also publishes, writes and runs timers, and a connection that became readable waits at
/// most for one round of the others' chunks, not for all their input.
const TURN_READ_BUDGET: usize = 48;
/// The longest a shard sleeps: published gauges stay fresh on an idle shard.
const GAUGE_REFRESH: Duration = Duration::from_millis(500);
/// How often sockets released with data still unsent in the kernel are looked at.
const LINGER_CHECK: Duration = Duration::from_millis(100);

pub(super) struct Driver {
    pub id: usize,
    pub poll: Poll,
    pub listener: TcpListener,
    pub rx: Receiver<ShardMsg>,
    pub publish_rx: Receiver<PublishMsg>,
    /// This shard's own handle, for the overflow its publishers fill.
    pub handle: ShardHandle,
    pub peers: Arc<[ShardHandle]>,
    pub shared: Arc<Shared>,
    pub stats: Arc<ShardStats>,
    pub engine: Engine,
    /// Times the waker fired (see `Counters::wakeups`).
    wakeups: u64,
    /// Sockets the engine let go of whose peer has not yet taken all the kernel holds for
    /// it, with when they are reset if it still has not: a plain close would leave the kernel
    /// holding it (up to the socket's send buffer, megabytes) for minutes.
    lingering: Vec<(TcpStream, Instant)>,
    /// When `lingering` is looked at next (not every turn: a busy shard turns thousands of
    /// times a second, and each look is a system call per socket).
    next_linger_check: Instant,
    /// Those reset (counted with the engine's linger resets).
    untaken_resets: u64,
    /// Each connection's socket, at the index of its `ConnId`.
    pub sockets: Vec<Option<TcpStream>>,
    /// Connections whose reading the engine paused, to read again once it wants to (with
    /// edge-triggered readiness, input that arrived meanwhile is not reported again).
    pub paused: IndexSet<ConnId>,
    pub scratch: Box<[u8]>,
    /// Accept failures are logged at most once a second (a descriptor shortage repeats them).
    pub accept_errors: LogRate,
    pub latency: Latency,
    pub last_gauges: Instant,
    pub outbound_bytes: u64,
    /// Work left over from a turn's budget: the next poll does not wait.
    pub backlog: Backlog,
}

/// What a loop turn left for the next one.
#[derive(Debug, Default)]
pub struct Backlog {
    publishes: bool,
    accepts: bool,
    /// Connections with input still to read, oldest first.
    reads: IndexSet<ConnId>,
    /// Chunks the current turn may still read.
    reads_left: usize,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        !self.publishes && !self.accepts && self.reads.is_empty()
    }
}

/// Reads both clocks once, for one engine call or a batch of them.
pub(super) fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix_ms: unix_ms(),
    }
}

impl Driver {
    pub fn new(
        poll: Poll,
        listener: TcpListener,
        (rx, publish_rx): (Receiver<ShardMsg>, Receiver<PublishMsg>),
        peers: Arc<[ShardHandle]>,
        engine: Engine,
        shared: Arc<Shared>,
        stats: Arc<ShardStats>,
    ) -> Driver {
        Driver {
            id: engine.id(),
            handle: peers[engine.id()].clone(),
            poll,
            listener,
            rx,
            publish_rx,
            peers,
            shared,
            stats,
            engine,
            wakeups: 0,
            lingering: Vec::new(),
            next_linger_check: Instant::now(),
            untaken_resets: 0,
            sockets: Vec::new(),
            paused: IndexSet::new(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            accept_errors: LogRate::new(1000),
            latency: Latency::default(),
            last_gauges: Instant::now(),
            outbound_bytes: 0,
            backlog: Backlog::default(),
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.backlog.is_empty() {
                let cap = if self.lingering.is_empty() {
                    GAUGE_REFRESH
                } else {
                    LINGER_CHECK
                };
                self.engine
                    .poll_timeout()
                    .map(|d| {
                        d.saturating_duration_since(Instant::now()) + Duration::from_micros(500)
                    })
                    .map_or(cap, |t| t.min(cap))
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.id, error = %e, "poll failed; shard stops");
                    return;
                }
            }
            let now = now();
            self.backlog.reads_left = TURN_READ_BUDGET;
            // Batches queued without waking this shard come first, so what its clients ask
            // this turn is answered from state no older than them (see `shard::presence`).
            if !self.publish_rx.is_empty() {
                self.backlog.publishes = true;
            }
            self.take_backlog(now);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    WAKER => {
                        self.wakeups += 1;
                        self.drain_inbox(now);
                    }
                    Token(i) => {
                        let c = ConnId::from_token(i);
                        if ev.is_writable() {
                            self.engine.handle_writable(c);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(now, c, ev.is_read_closed() || ev.is_error());
                        }
                    }
                }
            }
            self.engine.handle_timeout(now);
            self.apply_actions(now);
            self.reap_lingering(now.mono);
            self.transmit(now);
            if self.resume_paused(now) {
                self.transmit(now);
            }
            // A room that got its first member this turn may have a batch queued for it by a
            // publisher that had not seen the member yet and did not wake us: take it now.
            if self.engine.take_presence_changed() && !self.publish_rx.is_empty() {
                self.backlog.publishes = true;
            }
            if let Some(created) = self.engine.take_publish_started() {
                self.latency.record(created.elapsed());
            }
            self.publish_stats(now.mono);
            if self.engine.is_stopped() {
                let _ = self.poll.registry().deregister(&mut self.listener);
                return;
            }
        }
    }

    /// Continues what the last turn's budget cut short.
    fn take_backlog(&mut self, now: Now) {
        if std::mem::take(&mut self.backlog.publishes) {
            self.drain_inbox(now);
        }
        if std::mem::take(&mut self.backlog.accepts) {
            self.accept(now);
        }
        for c in std::mem::take(&mut self.backlog.reads) {
            self.read(now, c, true);
        }
    }

    fn accept(&mut self, now: Now) {
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.engine.accepts_connections() {
                        self.adopt(now, stream, None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: keep serving the connections we have.
                    if let Some(skipped) = self.accept_errors.due(now.unix_ms) {
                        tracing::warn!(shard = self.id, error = %e, skipped, "accept failed");
                    }
                    return;
                }
            }
        }
        self.backlog.accepts = true;
    }

    /// Gives the engine a new connection (accepted here, or handed over with the input
    /// another shard read from it).
    fn adopt(&mut self, now: Now, mut stream: TcpStream, buffered: Option<BytesMut>) {
        let _ = stream.set_nodelay(true);
        let ip = stream
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let c = match buffered {
            Some(buffered) => self.engine.handle_adopted(now, ip, buffered),
            None => match self.engine.handle_accepted(now, ip) {
                Some(c) => c,
                // Its address holds its cap of TCP connections: closed as it came.
                None => return,
            },
        };
        let registered = self.poll.registry().register(
            &mut stream,
            Token(c.token()),
            Interest::READABLE | Interest::WRITABLE,
        );
        let slot = c.token();
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        self.sockets[slot] = Some(stream);
        if registered.is_err() {
            self.engine.handle_transport_error(now, c);
        }
        self.apply_actions(now);
    }

    /// Reads what the socket holds. A short read normally means it is drained, which saves
    /// a syscall per message; when the peer has also half-closed, read on to see the EOF,
    /// since edge-triggered readiness will not report it again.
    fn read(&mut self, now: Now, c: ConnId, peer_closed: bool) {
        for _ in 0..READ_BUDGET {
            if self.backlog.reads_left == 0 {
                break;
            }
            self.backlog.reads_left -= 1;
            // Never more than the input budgets have room for.
            let allowed = self.engine.read_allowance(c).min(self.scratch.len());
            if allowed == 0 {
                if self.engine.holds(c) {
                    self.paused.insert(c);
                }
                return;
            }
            let Some(sock) = self.sockets.get_mut(c.token()).and_then(Option::as_mut) else {
                return;
            };
            match sock.read(&mut self.scratch[..allowed]) {
                Ok(0) => {
                    self.engine.handle_peer_closed(now, c);
                    return self.apply_actions(now);
                }
                Ok(n) => {
                    self.engine.handle_input(now, c, &self.scratch[..n]);
                    self.apply_actions(now);
                    if n < allowed && !peer_closed {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.engine.handle_transport_error(now, c);
                    return self.apply_actions(now);
                }
            }
        }
        // More may wait: the next turn reads on, after everyone else had theirs.
        self.backlog.reads.insert(c);
    }

    /// Reads the paused connections the engine wants to read again; true if any was read.
    fn resume_paused(&mut self, now: Now) -> bool {
        let mut resumed = false;
        let mut i = 0;
        while i < self.paused.len() {
            let c = self.paused[i];
            if !self.engine.holds(c) {
                self.paused.swap_remove_index(i);
            } else if self.engine.wants_read(c) {
                self.paused.swap_remove_index(i);
                // Read to the end: an EOF seen while paused is not reported again.
                self.read(now, c, true);
                resumed = true;
            } else {
                i += 1;
            }
        }
        resumed
    }

    /// Writes what the engine queued, connection by connection, until every socket has taken
    /// all or would block.
    fn transmit(&mut self, now: Now) {
        while let Some(c) = self.engine.poll_transmit() {
            self.apply_actions(now);
            let result = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = self.engine.transmit_iov(c, &mut iov);
                match self.sockets.get_mut(c.token()).and_then(Option::as_mut) {
                    Some(sock) => loop {
                        match sock.write_vectored(&iov[..n]) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            r => break r,
                        }
                    },
                    None => Err(io::ErrorKind::NotConnected.into()),
                }
            };
            let written = match result {
                Ok(n) => Written::Wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Written::Blocked,
                Err(_) => Written::Failed,
            };
            self.engine.handle_written(now, c, written);
            self.apply_actions(now);
        }
        self.apply_actions(now);
    }

    /// Publish batches up to the turn's budget, then, once the queue is empty, whatever
    /// overflowed it; then control messages all. Publishes first: batches are queued without
    /// waking a shard that has no member in their rooms (see `shard::presence`), and a request
    /// handed over from another shard or a recovery answer must be served from state no
    /// older than what was published before it.
    fn drain_inbox(&mut self, now: Now) {
        self.drain_publishes(now);
        self.drain_control(now);
    }

    fn drain_publishes(&mut self, now: Now) {
        let mut deliveries = 0;
        for _ in 0..PUBLISH_BUDGET {
            if deliveries >= DELIVERY_BUDGET {
                break;
            }
            let Ok(m) = self.publish_rx.try_recv() else {
                if let Some(overflow) = self.handle.take_overflow() {
                    if overflow.stream_gap {
                        // Logged by the stream follower, which knows why.
                        tracing::debug!(shard = self.id, "stream catch-up handed over");
                    } else {
                        tracing::warn!(
                            shard = self.id,
                            batches = overflow.batches,
                            lossless_rooms = overflow.lossless.len(),
                            "the shard fell behind its publishes: latest values conflated, lossless rooms' members sent to recover"
                        );
                    }
                    self.engine.handle_overflow(now, overflow);
                    self.apply_actions(now);
                }
                return;
            };
            deliveries += self.engine.handle_publish(now, &m.batch, m.created);
            self.apply_actions(now);
        }
        self.backlog.publishes = true;
    }

    fn drain_control(&mut self, now: Now) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ShardMsg::Adopt { stream, buffered } => {
                    self.adopt(now, TcpStream::from_std(stream), Some(buffered))
                }
                ShardMsg::Shutdown => self.engine.handle_shutdown(now),
                ShardMsg::Restored { ticket, record } => {
                    self.engine.handle_restored(now, ticket, record)
                }
                ShardMsg::Emit(emit) => self.engine.handle_emit(now, &emit),
                ShardMsg::Drain {
                    reconnect_after_ms,
                    deadline,
                } => self.engine.handle_drain(now, reconnect_after_ms, deadline),
            }
            self.apply_actions(now);
        }
    }

    /// Carries out what the engine asked for. Called after every engine call, so a released
    /// connection's id is never reused by the engine before its socket is gone.
    fn apply_actions(&mut self, now: Now) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Release(c) => {
                    if let Some(mut sock) = self.sockets.get_mut(c.token()).and_then(Option::take) {
                        let _ = self.poll.registry().deregister(&mut sock);
                        if unsent_in_kernel(&sock) > 0 {
                            // The peer gets the rest and the end of the stream if it reads.
                            let _ = sock.shutdown(std::net::Shutdown::Write);
                            let until = now.mono + self.engine.close_linger();
                            self.lingering.push((sock, until));
                        }
                    }
                }
                Action::Reset(c) => {
                    if let Some(mut sock) = self.sockets.get_mut(c.token()).and_then(Option::take) {
                        let _ = self.poll.registry().deregister(&mut sock);
                        // A zero linger turns the close into a reset: the kernel drops what
                        // the peer would not take instead of holding on to it.
                        let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                    }
                }
                Action::HandOff {
                    conn,
                    shard,
                    buffered,
                } => {
                    let Some(mut sock) = self.sockets.get_mut(conn.token()).and_then(Option::take)
                    else {
                        continue;
                    };
                    let _ = self.poll.registry().deregister(&mut sock);
                    if let Some(peer) = self.peers.get(shard) {
                        peer.send(ShardMsg::Adopt {
                            stream: into_std(sock),
                            buffered,
                        });
                    }
                }
                Action::SaveRecord(record) => {
                    if let Some(rec) = &self.shared.recovery {
                        rec.store.save(record, now.unix_ms, rec.settings.window_ms);
                    }
                }
                Action::TakeRecord(ticket) => {
                    let Some(rec) = self.shared.recovery.clone() else {
                        self.engine.handle_restored(now, ticket, None);
                        continue;
                    };
                    if let crate::recovery::Lookup::Ready(record) =
                        rec.store.take(ticket.clone(), now.unix_ms)
                    {
                        self.engine.handle_restored(now, ticket, record);
                    }
                }
            }
        }
    }

    /// Closes released sockets whose peer took everything; resets those past their time.
    fn reap_lingering(&mut self, now: Instant) {
        if self.lingering.is_empty() || now < self.next_linger_check {
            return;
        }
        self.next_linger_check = now + LINGER_CHECK;
        let mut resets = 0;
        self.lingering.retain(|(sock, until)| {
            if unsent_in_kernel(sock) == 0 {
                return false;
            }
            if now < *until {
                return true;
            }
            // A zero linger turns the close into a reset: the kernel drops what the peer
            // would not take instead of holding on to it.
            let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
            resets += 1;
            false
        });
        self.untaken_resets += resets;
    }

    fn publish_stats(&mut self, now: Instant) {
        let engine = self.engine.counters();
        let counters = Counters {
            wakeups: self.wakeups,
            linger_resets: engine.linger_resets + self.untaken_resets,
            ..*engine
        };
        self.stats.store(&counters);
        // The outbound total needs a walk over every connection: twice a second at most.
        if now.duration_since(self.last_gauges) >= GAUGE_REFRESH {
            self.last_gauges = now;
            self.outbound_bytes = self.engine.outbound_bytes();
        }
        self.stats.gauges.store(
            self.engine.subscriptions_by_kind(),
            self.outbound_bytes,
            &self.latency,
        );
    }
}

/// Bytes written to `sock` that its peer has not acknowledged yet (`SIOCOUTQ`).
fn unsent_in_kernel(sock: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for a TCP socket) writes one int through the pointer, which
    // points to a live one; the descriptor is this socket's own.
    let ok = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) } == 0;
    if ok {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

fn into_std(stream: TcpStream) -> std::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = stream.into_raw_fd();
    // SAFETY: `fd` was just released by the mio stream, which no longer owns it.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}
