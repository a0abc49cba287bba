//! One TCP connection owned by a shard: its role, its pending input and its outbound queue.

use super::outbound::{Flush, Outbound};
use crate::codec::websocket::MessageAssembler;
use crate::http::Request;
use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use std::net::IpAddr;

#[derive(Debug)]
pub enum HttpState {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Head read; waiting for `need` body bytes.
    Body { req: Box<Request>, need: usize },
    /// A long-polling GET parked until the session has packets.
    PendingGet {
        session: usize,
        origin: Option<Box<str>>,
    },
}

#[derive(Debug)]
pub struct WsState {
    pub session: usize,
    /// True while this WebSocket is probing an upgrade of a polling session.
    pub probing: bool,
    pub assembler: MessageAssembler,
}

#[derive(Debug)]
pub enum Role {
    Http(HttpState),
    WebSocket(WsState),
}

#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub generation: u64,
    /// The peer's address (the proxy's, behind one).
    pub ip: IpAddr,
    pub role: Role,
    /// Bytes read and not yet consumed. Empty (no allocation) while the peer is idle.
    pub inbuf: BytesMut,
    pub out: Outbound,
    /// Queued for a flush at the end of this loop turn.
    pub dirty: bool,
    /// Close once the outbound queue is written.
    pub closing: bool,
    pub requests: u32,
    /// `requests` when the idle deadline was last set: a connection still at that count and
    /// between requests at the deadline is closed (slow first requests, idle keep-alive).
    pub idle_requests: u32,
    pub idle_deadline: Option<std::time::Instant>,
}

impl Conn {
    pub fn new(stream: TcpStream, generation: u64, ip: IpAddr) -> Conn {
        Conn {
            stream,
            generation,
            ip,
            role: Role::Http(HttpState::Head),
            inbuf: BytesMut::new(),
            out: Outbound::default(),
            dirty: false,
            closing: false,
            requests: 0,
            idle_requests: 0,
            idle_deadline: None,
        }
    }

    /// Queues bytes that belong to no stream (handshakes, answers, control frames).
    pub fn push(&mut self, bytes: Bytes) {
        self.out.push(bytes, 0, false);
    }

    pub fn flush(&mut self) -> (Flush, u32) {
        self.out.write_to(&mut self.stream)
    }
}
