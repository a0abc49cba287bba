//! A simulated driver for the engine: peers are byte buffers, the clock moves only when told,
//! and a peer's receive window can be shrunk to play a slow reader. Deterministic apart from
//! session ids, so tests and the engine fuzz target can drive whole protocol exchanges with
//! no sockets and no sleeps.

use super::outbound::MAX_IOV;
use super::{Action, ConnId, Engine, Now, Written};
use crate::recovery::Lookup;
use crate::shard::handle::Broadcast;
use crate::shard::{ServerSettings, Shared};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The far end of one simulated connection.
#[derive(Debug, Default)]
pub struct Peer {
    /// Everything the engine wrote to this peer and the test has not taken yet.
    pub received: Vec<u8>,
    /// Bytes the peer will still accept before its window is full; `None`: no limit.
    pub window: Option<usize>,
    /// The engine released the socket (what it received before stays readable).
    pub closed: bool,
    /// Bytes sent that the engine has not read yet (it paused reading), as a socket buffer.
    pub unread: Vec<u8>,
    /// The peer shut its side after `unread`.
    pub eof: bool,
}

pub struct Sim {
    pub engine: Engine,
    pub now: Now,
    pub shared: Arc<Shared>,
    /// Every connection by id; a released one stays, marked closed, until its id is reused.
    pub peers: BTreeMap<ConnId, Peer>,
    pub released: usize,
    pub handed_off: usize,
    /// Records saved for recovery (they also go to the shared store, as the driver does).
    pub records_saved: usize,
    /// Count what peers receive without keeping it (benchmarks).
    pub discard: bool,
    /// Bytes written to all peers so far.
    pub bytes_written: u64,
}

impl Sim {
    /// Shard 0 of `shards`, at an arbitrary but realistic wall time.
    #[allow(
        clippy::disallowed_methods,
        reason = "any instant will do as the start of simulated time"
    )]
    pub fn new(settings: ServerSettings, shared: Arc<Shared>, shards: usize) -> Sim {
        let now = Now {
            mono: Instant::now(),
            unix_ms: 1_700_000_000_000,
        };
        Sim {
            engine: Engine::new(0, shards, Arc::new(settings), shared.clone(), now),
            now,
            shared,
            peers: BTreeMap::new(),
            released: 0,
            handed_off: 0,
            records_saved: 0,
            discard: false,
            bytes_written: 0,
        }
    }

    /// A new connection from `ip`; `None` when its address holds its cap of connections.
    pub fn try_connect(&mut self, ip: IpAddr) -> Option<ConnId> {
        let c = self.engine.handle_accepted(self.now, ip)?;
        self.peers.insert(c, Peer::default());
        self.pump();
        Some(c)
    }

    /// A new connection from `ip`, which must be admitted.
    pub fn connect(&mut self, ip: IpAddr) -> ConnId {
        self.try_connect(ip)
            .expect("the address holds its cap of TCP connections")
    }

    /// The peer sends `data`; the engine reads it as a driver would, in chunks, while it
    /// wants to read.
    pub fn send(&mut self, c: ConnId, data: &[u8]) {
        let Some(p) = self.peers.get_mut(&c).filter(|p| !p.closed && !p.eof) else {
            return;
        };
        p.unread.extend_from_slice(data);
        self.pump();
    }

    /// The peer shuts its sending side (EOF), after what it sent.
    pub fn peer_close(&mut self, c: ConnId) {
        if let Some(p) = self.peers.get_mut(&c).filter(|p| !p.closed) {
            p.eof = true;
            self.pump();
        }
    }

    /// Bytes `c`'s peer sent that the engine has not read.
    pub fn unread(&self, c: ConnId) -> usize {
        self.peers.get(&c).map_or(0, |p| p.unread.len())
    }

    /// Feeds peers' unread input to the engine where it wants it; true if anything was fed.
    fn feed(&mut self) -> bool {
        let mut fed = false;
        let ids: Vec<ConnId> = self.peers.keys().copied().collect();
        for c in ids {
            while let Some(p) = self.peers.get_mut(&c).filter(|p| !p.closed) {
                let allowed = self.engine.read_allowance(c).min(16 * 1024);
                if allowed == 0 {
                    break;
                }
                if p.unread.is_empty() {
                    if p.eof {
                        p.eof = false;
                        self.engine.handle_peer_closed(self.now, c);
                        fed = true;
                    }
                    break;
                }
                let n = p.unread.len().min(allowed);
                let chunk: Vec<u8> = p.unread.drain(..n).collect();
                self.engine.handle_input(self.now, c, &chunk);
                fed = true;
                self.apply_actions();
            }
        }
        fed
    }

    /// The connection breaks (reset).
    pub fn reset(&mut self, c: ConnId) {
        if self.is_open(c) {
            self.engine.handle_transport_error(self.now, c);
            self.pump();
        }
    }

    /// Sets how much more `c`'s peer accepts; a wider window lets queued bytes flow.
    pub fn set_window(&mut self, c: ConnId, window: Option<usize>) {
        if let Some(p) = self.peers.get_mut(&c) {
            p.window = window;
            self.engine.handle_writable(c);
            self.pump();
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.now.mono += by;
        self.now.unix_ms += by.as_millis() as u64;
        self.engine.handle_timeout(self.now);
        self.pump();
    }

    /// Moves the clock to the engine's next deadline, if there is one within `limit`.
    pub fn advance_to_next_deadline(&mut self, limit: Duration) -> bool {
        match self.engine.poll_timeout() {
            Some(at) if at <= self.now.mono + limit => {
                let by = at.saturating_duration_since(self.now.mono);
                self.advance(by);
                true
            }
            _ => false,
        }
    }

    pub fn publish(&mut self, batch: &[Broadcast]) {
        self.engine.handle_publish(self.now, batch, self.now.mono);
        self.pump();
    }

    pub fn drain(&mut self, reconnect_after_ms: u64, within: Duration) {
        self.engine
            .handle_drain(self.now, reconnect_after_ms, self.now.mono + within);
        self.pump();
    }

    pub fn shutdown(&mut self) {
        self.engine.handle_shutdown(self.now);
        self.pump();
    }

    /// What `c`'s peer received since the last call.
    pub fn take(&mut self, c: ConnId) -> Vec<u8> {
        self.peers
            .get_mut(&c)
            .map(|p| std::mem::take(&mut p.received))
            .unwrap_or_default()
    }

    pub fn is_open(&self, c: ConnId) -> bool {
        self.peers.get(&c).is_some_and(|p| !p.closed)
    }

    /// Does what a driver does after a call: the engine's actions, then writes until every
    /// peer has taken all or its window is full.
    pub fn pump(&mut self) {
        loop {
            self.apply_actions();
            let Some(c) = self.engine.poll_transmit() else {
                self.apply_actions();
                if self.feed() {
                    continue;
                }
                #[cfg(test)]
                if let Err(e) = self.engine.check_invariants() {
                    panic!("engine invariant broken: {e}");
                }
                return;
            };
            self.apply_actions();
            let written = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = self.engine.transmit_iov(c, &mut iov);
                let len: usize = iov[..n].iter().map(|s| s.len()).sum();
                match self.peers.get_mut(&c).filter(|p| !p.closed) {
                    None => Written::Failed,
                    Some(p) => {
                        let take = p.window.map_or(len, |w| w.min(len));
                        if take == 0 {
                            Written::Blocked
                        } else {
                            if !self.discard {
                                let mut left = take;
                                for s in &iov[..n] {
                                    let part = left.min(s.len());
                                    p.received.extend_from_slice(&s[..part]);
                                    left -= part;
                                }
                            }
                            if let Some(w) = p.window.as_mut() {
                                *w -= take;
                            }
                            self.bytes_written += take as u64;
                            Written::Wrote(take)
                        }
                    }
                }
            };
            self.engine.handle_written(self.now, c, written);
        }
    }

    fn apply_actions(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            match a {
                Action::Release(c) | Action::Reset(c) => {
                    if let Some(p) = self.peers.get_mut(&c) {
                        p.closed = true;
                    }
                    self.released += 1;
                }
                Action::HandOff { conn, .. } => {
                    if let Some(p) = self.peers.get_mut(&conn) {
                        p.closed = true;
                    }
                    self.handed_off += 1;
                }
                Action::SaveRecord(record) => {
                    self.records_saved += 1;
                    if let Some(rec) = &self.shared.recovery {
                        rec.store
                            .save(record, self.now.unix_ms, rec.settings.window_ms);
                    }
                }
                Action::TakeRecord(ticket) => {
                    let answer = match &self.shared.recovery {
                        Some(rec) => match rec.store.take(ticket.clone(), self.now.unix_ms) {
                            Lookup::Ready(r) => r,
                            Lookup::Pending => continue,
                        },
                        None => None,
                    };
                    self.engine.handle_restored(self.now, ticket, answer);
                }
            }
        }
    }
}

/// What a client sends and reads, for driving a `Sim`.
pub mod client {
    use crate::codec::websocket::encode_masked_frame;
    use bytes::BytesMut;

    /// A GET request head for `target`.
    pub fn get(target: &str, extra_headers: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{extra_headers}\r\n").into_bytes()
    }

    /// A polling POST of `body` to session `sid`.
    pub fn post(sid: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v
    }

    pub fn polling_open() -> Vec<u8> {
        get("/socket.io/?EIO=4&transport=polling", "")
    }

    pub fn poll(sid: &str) -> Vec<u8> {
        get(
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "",
        )
    }

    /// A WebSocket upgrade: a new session without `sid`, an upgrade probe with one.
    pub fn websocket(sid: Option<&str>) -> Vec<u8> {
        websocket_offering(sid, false)
    }

    /// As `websocket`, offering permessage-deflate as browsers do when `deflate`.
    pub fn websocket_offering(sid: Option<&str>, deflate: bool) -> Vec<u8> {
        let offer = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let target = match sid {
            Some(s) => format!("/socket.io/?EIO=4&transport=websocket&sid={s}"),
            None => "/socket.io/?EIO=4&transport=websocket".to_owned(),
        };
        get(
            &target,
            &format!("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}"),
        )
    }

    /// A masked text frame, as a client sends it.
    pub fn text(payload: &str) -> Vec<u8> {
        encode_masked_frame(true, 1, payload.as_bytes(), [1, 2, 3, 4], 0)
    }

    /// A masked text frame compressed for permessage-deflate (RSV1 set).
    pub fn deflated_text(payload: &str) -> Vec<u8> {
        let frame = crate::codec::deflate::compressed_frame(0x1, payload.as_bytes());
        let body = frames(&frame).remove(0).1;
        let mut raw = encode_masked_frame(true, 1, &body, [9, 8, 7, 6], 0);
        raw[0] |= 0x40;
        raw
    }

    /// Splits server bytes into HTTP responses `(status, body)`; what does not parse as one
    /// (WebSocket frames after a 101) is left in `rest`.
    pub fn responses(bytes: &[u8]) -> (Vec<(u16, Vec<u8>)>, Vec<u8>) {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(end) = find(&bytes[at..], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[at..at + end]).into_owned();
            let Some(status) = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|s| s.parse().ok())
            else {
                break;
            };
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            let body_at = at + end + 4;
            if bytes.len() < body_at + len {
                break;
            }
            out.push((status, bytes[body_at..body_at + len].to_vec()));
            at = body_at + len;
            if status == 101 {
                break;
            }
        }
        (out, bytes[at..].to_vec())
    }

    /// Splits server WebSocket bytes into `(opcode, payload)` frames (servers never mask).
    pub fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut b = BytesMut::from(bytes);
        loop {
            if b.len() < 2 {
                return out;
            }
            let op = b[0] & 0x0f;
            let (len, hl) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(l) as usize, 10)
                }
                n if n < 126 => (n as usize, 2),
                _ => return out,
            };
            if b.len() < hl + len {
                return out;
            }
            let frame = b.split_to(hl + len);
            out.push((op, frame[hl..].to_vec()));
        }
    }

    /// The text of each text frame.
    pub fn texts(bytes: &[u8]) -> Vec<String> {
        frames(bytes)
            .into_iter()
            .filter(|(op, _)| *op == 1)
            .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
            .collect()
    }

    /// The `sid` of an Engine.IO open packet (`0{"sid":"...",...}`).
    pub fn open_sid(packet: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(packet.strip_prefix('0')?).ok()?;
        Some(v["sid"].as_str()?.to_owned())
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
}

impl Sim {
    /// A polling session's handshake on a new connection: the connection and the sid.
    pub fn open_polling(&mut self, ip: IpAddr) -> Option<(ConnId, String)> {
        let c = self.try_connect(ip)?;
        self.send(c, &client::polling_open());
        let got = self.take(c);
        let (responses, _) = client::responses(&got);
        let (status, body) = responses.first()?;
        if *status != 200 {
            return None;
        }
        let sid = client::open_sid(std::str::from_utf8(body).ok()?)?;
        Some((c, sid))
    }

    /// A WebSocket session's handshake: the connection (now a WebSocket) and the sid.
    pub fn open_websocket(&mut self, ip: IpAddr) -> Option<(ConnId, String)> {
        self.open_websocket_offering(ip, false)
    }

    /// As `open_websocket`, offering permessage-deflate when `deflate`.
    pub fn open_websocket_offering(
        &mut self,
        ip: IpAddr,
        deflate: bool,
    ) -> Option<(ConnId, String)> {
        let c = self.try_connect(ip)?;
        self.send(c, &client::websocket_offering(None, deflate));
        let got = self.take(c);
        let (responses, rest) = client::responses(&got);
        if responses.first()?.0 != 101 {
            return None;
        }
        let sid = client::open_sid(client::texts(&rest).first()?)?;
        Some((c, sid))
    }

    /// Queues `buffered` as input of a connection another shard handed over.
    pub fn adopt(&mut self, ip: IpAddr, buffered: &[u8]) -> ConnId {
        let c = self
            .engine
            .handle_adopted(self.now, ip, BytesMut::from(buffered));
        self.peers.insert(c, Peer::default());
        self.pump();
        c
    }
}
