//! One TCP connection owned by a shard: its role, its pending input and its outbound queue.

use crate::codec::websocket::MessageAssembler;
use crate::http::Request;
use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Slices handed to one `writev`; Linux accepts up to 1024.
const MAX_IOV: usize = 64;

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
    pub role: Role,
    /// Bytes read and not yet consumed. Empty (no allocation) while the peer is idle.
    pub inbuf: BytesMut,
    pub out: VecDeque<Bytes>,
    pub out_bytes: usize,
    /// Queued for a flush at the end of this loop turn.
    pub dirty: bool,
    /// Close once the outbound queue is written.
    pub closing: bool,
    pub requests: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    Done,
    Blocked,
    Closed,
}

impl Conn {
    pub fn new(stream: TcpStream, generation: u64) -> Conn {
        Conn {
            stream,
            generation,
            role: Role::Http(HttpState::Head),
            inbuf: BytesMut::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            dirty: false,
            closing: false,
            requests: 0,
        }
    }

    pub fn push(&mut self, bytes: Bytes) {
        self.out_bytes += bytes.len();
        self.out.push_back(bytes);
    }

    /// Writes as much of the queue as the socket takes, many frames per syscall.
    /// Returns the number of `writev` calls made beside the outcome.
    pub fn flush(&mut self) -> (Flush, u32) {
        let mut calls = 0;
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let n = self.out.len().min(MAX_IOV);
            for (slot, b) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(b);
            }
            calls += 1;
            match self.stream.write_vectored(&slices[..n]) {
                Ok(0) => return (Flush::Closed, calls),
                Ok(mut written) => {
                    self.out_bytes -= written;
                    while written > 0 {
                        let front = self
                            .out
                            .front_mut()
                            .expect("written bytes came from the queue");
                        if written >= front.len() {
                            written -= front.len();
                            self.out.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Flush::Blocked, calls),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return (Flush::Closed, calls),
            }
        }
        // Give back a queue that grew during a burst, so idle connections stay small.
        if self.out.capacity() > 16 {
            self.out = VecDeque::new();
        }
        (Flush::Done, calls)
    }
}
