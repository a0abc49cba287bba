//! One TCP connection's protocol state: its role, its pending input and its outbound queue.
//! The socket itself belongs to the driver.

use super::ids::{ConnId, SessionId};
use super::outbound::Outbound;
use crate::codec::websocket::MessageAssembler;
use crate::http::Request;
use crate::limits::InputAccount;
use bytes::{Bytes, BytesMut};
use slab::Slab;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug)]
pub(super) enum HttpState {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Head read; waiting for `need` body bytes.
    Body { req: Box<Request>, need: usize },
    /// A long-polling GET parked until the session has packets.
    PendingGet {
        session: SessionId,
        origin: Option<Box<str>>,
        keep_alive: bool,
    },
}

#[derive(Debug)]
pub(super) struct WsState {
    pub session: SessionId,
    /// True while this WebSocket is probing an upgrade of a polling session.
    pub probing: bool,
    pub assembler: MessageAssembler,
}

#[derive(Debug)]
pub(super) enum Role {
    Http(HttpState),
    WebSocket(WsState),
}

/// What becomes of a connection the engine has let go of, once the current call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// Its socket is closed.
    Released,
    /// Its socket moves to the shard that owns the session its request names.
    HandedOff { shard: usize },
}

#[derive(Debug)]
pub(super) struct Conn {
    pub generation: u64,
    /// The peer's address (the proxy's, behind one).
    pub ip: IpAddr,
    /// The client its input and work are charged to: the peer, or behind a trusted proxy the
    /// address its latest request named (none before one did).
    pub client: Option<IpAddr>,
    /// The input budget of `client`.
    pub input: InputAccount,
    pub role: Role,
    /// Bytes read and not yet consumed. Empty (no allocation) while the peer is idle.
    pub inbuf: BytesMut,
    pub out: Outbound,
    /// Queued for a flush.
    pub dirty: bool,
    /// Close once the outbound queue is written.
    pub closing: bool,
    /// Set when the engine lets go of the connection; it is removed as the call ends.
    pub fate: Option<Fate>,
    /// Released because its peer would not take what it was owed: reset, not closed.
    pub reset: bool,
    /// Counted against its address's TCP connection cap (peers that are not trusted proxies).
    pub tcp_counted: bool,
    /// Input held (messages still arriving), as charged to the input budgets.
    pub input_charged: usize,
    /// Holding input, it must complete its message by then.
    pub input_deadline: Option<Instant>,
    pub requests: u32,
    /// `requests` when the idle deadline was last set: a connection still at that count and
    /// between requests at the deadline is closed (slow first requests, idle keep-alive).
    pub idle_requests: u32,
    pub idle_deadline: Option<Instant>,
}

impl Conn {
    pub fn new(
        generation: u64,
        ip: IpAddr,
        (client, input): (Option<IpAddr>, InputAccount),
        inbuf: BytesMut,
    ) -> Conn {
        Conn {
            generation,
            ip,
            client,
            input,
            role: Role::Http(HttpState::Head),
            inbuf,
            out: Outbound::default(),
            dirty: false,
            closing: false,
            fate: None,
            reset: false,
            tcp_counted: false,
            input_charged: 0,
            input_deadline: None,
            requests: 0,
            idle_requests: 0,
            idle_deadline: None,
        }
    }

    /// Queues bytes that belong to no stream (handshakes, answers, control frames).
    pub fn push(&mut self, bytes: Bytes) {
        self.out.push(bytes, 0, false);
    }

    /// Memory held of messages still arriving.
    pub fn held_input(&self) -> usize {
        let fragments = match &self.role {
            Role::WebSocket(ws) => ws.assembler.held(),
            Role::Http(_) => 0,
        };
        self.inbuf.capacity() + fragments
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.role, Role::WebSocket(_))
    }

    /// Whether this is a WebSocket that negotiated permessage-deflate.
    pub fn deflates(&self) -> bool {
        matches!(&self.role, Role::WebSocket(ws) if ws.assembler.deflate())
    }
}

/// The connection `c` of `conns`, unless the engine has let go of it. A free function so that
/// a caller may hold it beside borrows of the engine's other fields.
pub(super) fn live_mut(conns: &mut Slab<Conn>, c: ConnId) -> Option<&mut Conn> {
    conns.get_mut(c.key()).filter(|x| x.fate.is_none())
}
