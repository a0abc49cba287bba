//! Engine.IO sessions on a shard: open, packets in, packets out, heartbeats, upgrade, close.

use super::conn::{HttpState, Role};
use super::outbound::Outbound;
use super::timers::{Timer, TimerKind};
use super::{unix_ms, Session, Shard, Transport};
use crate::codec::engineio::Packet;
use crate::codec::websocket;
use crate::codec::WireMessage;
use crate::gateway::envelope;
use crate::limits::Refusal;
use crate::market::Payload;
use crate::recovery::Offset;
use crate::session::heartbeat::{Heartbeat, HeartbeatAction};
use crate::session::sid::new_sid;
use crate::sockets::{App, Ctx, Output, SocketLayer};
use bytes::Bytes;
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::Arc;

impl Shard {
    /// Opens a session for a handshake, unless a connection cap refuses it.
    pub(super) fn open_session(
        &mut self,
        transport: Transport,
        echo: bool,
        ip: IpAddr,
        handshake_token: Option<Box<str>>,
    ) -> Result<usize, Refusal> {
        if self.drain_deadline.is_some() {
            self.counters.handshakes_refused += 1;
            return Err(Refusal::Draining);
        }
        self.shared
            .limits
            .admit(ip, unix_ms())
            .inspect_err(|_| self.counters.handshakes_refused += 1)?;
        let generation = self.generation();
        let mut sid = new_sid(self.id);
        while self.sids.contains_key(sid.as_str()) {
            sid = new_sid(self.id);
        }
        let is_ws = matches!(transport, Transport::WebSocket(_));
        let s = self.sessions.insert(Session {
            sid: sid.clone().into_boxed_str(),
            generation,
            transport,
            probe: None,
            queue: Outbound::default(),
            owed: SmallVec::new(),
            dirty: false,
            heartbeat: Heartbeat::new(self.now, self.settings.ping_interval),
            echo,
            sockets: SocketLayer::default(),
            ip,
            handshake_token,
            socket_timer: None,
            joined: Vec::new(),
            skip_until: None,
        });
        self.sids.insert(sid.into_boxed_str(), s);
        if is_ws {
            self.counters.websocket_connections += 1;
        } else {
            self.counters.polling_sessions += 1;
        }
        let hb = self.sessions[s].heartbeat.deadline();
        self.timers.schedule(
            hb,
            Timer {
                kind: TimerKind::Heartbeat,
                index: s,
                generation,
            },
        );
        if !echo {
            self.timers.schedule(
                self.now + self.settings.connect_timeout,
                Timer {
                    kind: TimerKind::ConnectTimeout,
                    index: s,
                    generation,
                },
            );
        }
        tracing::debug!(shard = self.id, sid = %self.sessions[s].sid, websocket = is_ws, "session opened");
        Ok(s)
    }

    /// The Engine.IO open packet: exactly the keys the reference server sends.
    pub(super) fn open_packet(&self, s: usize, polling: bool) -> Packet {
        let st = &self.settings;
        let body = format!(
            "{{\"sid\":\"{}\",\"upgrades\":{},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            self.sessions[s].sid,
            if polling { "[\"websocket\"]" } else { "[]" },
            st.ping_interval.as_millis(),
            st.ping_timeout.as_millis(),
            st.max_payload
        );
        Packet::Open(Bytes::from(body))
    }

    pub(super) fn send_engine(&mut self, s: usize, packet: &Packet) {
        self.send_wire(s, &WireMessage::engine(packet));
    }

    /// Queues one Engine.IO message on the session's current transport.
    pub(super) fn send_wire(&mut self, s: usize, msg: &WireMessage) {
        let Some(session) = self.sessions.get_mut(s) else {
            return;
        };
        self.counters.messages_out += 1;
        match session.transport {
            Transport::WebSocket(c) => {
                if let Some(conn) = self.conns.get_mut(c) {
                    conn.push(msg.ws_frame().clone());
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty_conns.push(c);
                    }
                }
            }
            Transport::Polling { .. } => {
                session.queue.push(msg.polling(), 0, false);
                if session.queue.bytes() > self.settings.outbound_hard_limit {
                    return self.drop_slow_consumer(s);
                }
                if !session.dirty {
                    session.dirty = true;
                    self.dirty_sessions.push(s);
                }
            }
        }
    }

    /// Sends a frame on one specific WebSocket connection (probe replies), not the session's
    /// current transport.
    fn send_on_conn(&mut self, c: usize, packet: &Packet) {
        let frame = WireMessage::engine(packet).ws_frame().clone();
        if let Some(conn) = self.conns.get_mut(c) {
            conn.push(frame);
            self.mark_dirty(c);
        }
    }

    /// Handles one Engine.IO packet. `via` is the WebSocket it came on, if any.
    pub(super) fn on_engine_packet(
        &mut self,
        s: usize,
        packet: Packet,
        via: Option<(usize, bool)>,
    ) {
        match packet {
            Packet::Pong(_) => {
                let interval = self.settings.ping_interval;
                self.sessions[s].heartbeat.on_pong(self.now, interval);
            }
            Packet::Ping(data) => match via {
                Some((c, true)) if &data[..] == b"probe" => {
                    self.send_on_conn(c, &Packet::Pong(data));
                    // Release the client's pending poll so it can pause polling.
                    self.send_engine(s, &Packet::Noop);
                }
                _ => self.send_engine(s, &Packet::Pong(data)),
            },
            Packet::Upgrade => match via {
                Some((c, true)) => self.finish_upgrade(s, c),
                _ => self.protocol_error(s, "unexpected upgrade packet"),
            },
            Packet::Message(text) => {
                if self.sessions[s].echo {
                    return self.send_engine(s, &Packet::Message(text));
                }
                let text = String::from_utf8_lossy(&text);
                self.feed_sockets(s, |layer, app, ctx, out| {
                    layer.on_text(app, &text, ctx, out)
                });
            }
            Packet::Binary(data) => {
                if self.sessions[s].echo {
                    return self.send_engine(s, &Packet::Binary(data));
                }
                self.feed_sockets(s, |layer, app, ctx, out| {
                    layer.on_binary(app, data, ctx, out)
                });
            }
            Packet::Close => {
                // The reference server releases a parked poll with a noop on a client close.
                if let Some(Transport::Polling { get: Some(g) }) =
                    self.sessions.get(s).map(|x| &x.transport)
                {
                    let g = *g;
                    self.sessions[s].transport = Transport::Polling { get: None };
                    self.answer_parked_get(g, b"6");
                }
                self.close_session(s, "client closed", false)
            }
            Packet::Noop => {}
            Packet::Open(_) => self.protocol_error(s, "open packet from a client"),
        }
    }

    /// Runs one input through the session's Socket.IO layer, lending it the time, the
    /// handshake token and the per-user cap, then applies what it asks for.
    fn feed_sockets(
        &mut self,
        s: usize,
        input: impl FnOnce(&mut SocketLayer, &App, &mut Ctx<'_>, &mut Vec<Output>),
    ) {
        let mut out = Vec::new();
        let app = self.settings.app.clone();
        let limits = &self.shared.limits;
        let mut admit = |u: &Arc<str>| limits.admit_user(u);
        let session = &mut self.sessions[s];
        let mut ctx = Ctx {
            now_ms: unix_ms(),
            handshake_token: session.handshake_token.as_deref(),
            admit_user: &mut admit,
        };
        input(&mut session.sockets, &app, &mut ctx, &mut out);
        self.apply_outputs(s, out);
    }

    fn protocol_error(&mut self, s: usize, reason: &'static str) {
        self.counters.protocol_errors += 1;
        self.close_session(s, reason, true);
    }

    pub(super) fn apply_outputs(&mut self, s: usize, outputs: Vec<Output>) {
        let mut joined = Vec::new();
        let tracks_rooms = self.shared.recovery.is_some();
        let mut rooms_changed = false;
        for o in outputs {
            if !self.sessions.contains(s) {
                return;
            }
            match o {
                Output::Send(p) => {
                    for m in WireMessage::socket(&p) {
                        self.send_wire(s, &m);
                    }
                }
                Output::Join(room) => {
                    if let Some(last) = self.last_values.get(&room) {
                        joined.push(last.clone());
                    } else if let Some((view, cached)) = self.books.get_mut(&room) {
                        let m = cached.get_or_insert_with(|| {
                            let data = Payload::Json(view.snapshot_json("subscribe"));
                            envelope::encode_payload("orderbook.update", &room, &data, unix_ms())
                        });
                        joined.push(m.clone());
                    }
                    if tracks_rooms {
                        let at = self.last_offset.unwrap_or(Offset::ZERO);
                        let session = &mut self.sessions[s];
                        if !session.joined.iter().any(|(r, _)| *r == room) {
                            session.joined.push((room.clone(), at));
                        }
                        rooms_changed = true;
                    }
                    self.rooms.join(room, s);
                }
                Output::Leave(room) => {
                    if tracks_rooms {
                        self.sessions[s].joined.retain(|(r, _)| *r != room);
                        rooms_changed = true;
                    }
                    self.sessions[s].owed.retain(|r| *r != room);
                    self.rooms.leave(&room, s);
                }
                Output::Restore { pid, offset } => {
                    // Completes later (possibly at once) through `finish_restore`.
                    self.start_restore(s, pid, offset);
                    rooms_changed = true;
                }
                Output::ReleaseUser(user) => self.shared.limits.release_user(&user),
                Output::AuthFailed(reason) => {
                    self.counters.auth_failures += 1;
                    *self.shared.auth_failures.lock().entry(reason).or_insert(0) += 1;
                    tracing::debug!(shard = self.id, reason, "token refused");
                }
                Output::Close(reason) => self.protocol_error(s, reason),
            }
        }
        if !self.sessions.contains(s) {
            return;
        }
        if rooms_changed {
            self.persist(s, false);
        }
        self.arm_socket_timer(s);
        // A new subscriber gets the room's latest value right after its answer.
        for m in joined {
            self.send_wire(s, &m);
        }
    }

    fn finish_upgrade(&mut self, s: usize, c: usize) {
        let session = &mut self.sessions[s];
        let old_get = match session.transport {
            Transport::Polling { get } => get,
            Transport::WebSocket(_) => None,
        };
        session.transport = Transport::WebSocket(c);
        session.probe = None;
        let queued: Vec<Bytes> = session.queue.take_front(usize::MAX);
        self.counters.polling_sessions = self.counters.polling_sessions.saturating_sub(1);
        self.counters.websocket_connections += 1;
        if let Some(super::conn::Role::WebSocket(ws)) = self.conns.get_mut(c).map(|c| &mut c.role) {
            ws.probing = false;
        }
        // Anything still queued for polling goes out on the WebSocket, in order; the noop was
        // only for the poll.
        for text in queued.into_iter().filter(|t| &t[..] != b"6") {
            let m = WireMessage::text(|b| b.extend_from_slice(&text));
            if let Some(conn) = self.conns.get_mut(c) {
                conn.push(m.ws_frame().clone());
            }
        }
        self.mark_dirty(c);
        if let Some(g) = old_get {
            self.answer_parked_get(g, b"6");
        }
    }

    /// Answers the GET parked on connection `g` with `body`; the connection goes back to
    /// reading request heads.
    pub(super) fn answer_parked_get(&mut self, g: usize, body: &[u8]) {
        let Some(conn) = self.conns.get_mut(g) else {
            return;
        };
        let origin = match std::mem::replace(&mut conn.role, Role::Http(HttpState::Head)) {
            Role::Http(HttpState::PendingGet { origin, .. }) => origin,
            other => {
                conn.role = other;
                return;
            }
        };
        let r = super::http::polling_response(200, body, origin.as_deref(), true);
        self.respond(g, r, true);
    }

    /// Past the hard limit: the backlog cannot be delivered, so it is discarded, the client is
    /// told why (`error` SLOW_CONSUMER) as far as its socket takes it, and the session ends.
    pub(super) fn drop_slow_consumer(&mut self, s: usize) {
        self.counters.slow_consumer_disconnects += 1;
        let Some(session) = self.sessions.get_mut(s) else {
            return;
        };
        tracing::debug!(shard = self.id, sid = %session.sid, "slow consumer disconnected");
        let notice = WireMessage::text(|b| {
            b.extend_from_slice(b"42/ws,[\"error\",{\"code\":\"SLOW_CONSUMER\",\"message\":\"outbound buffer over its limit; reconnect and resubscribe\"}]");
        });
        match session.transport {
            Transport::WebSocket(c) => {
                if let Some(conn) = self.conns.get_mut(c) {
                    conn.out.discard_unsent();
                    conn.push(notice.ws_frame().clone());
                }
            }
            Transport::Polling { .. } => {
                session.queue.discard_unsent();
                session.queue.push(notice.polling(), 0, false);
                self.flush_polling(s);
            }
        }
        self.close_session(s, "slow consumer", true);
    }

    /// Keeps one timer armed for the socket layer's next deadline (token notices, expiries).
    fn arm_socket_timer(&mut self, s: usize) {
        let app = &self.settings.app;
        let Some(session) = self.sessions.get_mut(s) else {
            return;
        };
        let next = session.sockets.next_deadline(app);
        if next.is_some() && next != session.socket_timer {
            session.socket_timer = next;
            let at_ms = next.unwrap_or(0);
            // Far-future tokens: wake within a day and re-arm, rather than overflow an Instant.
            let delay =
                std::time::Duration::from_millis(at_ms.saturating_sub(unix_ms()).min(86_400_000));
            let generation = session.generation;
            self.timers.schedule(
                self.now + delay,
                Timer {
                    kind: TimerKind::Socket,
                    index: s,
                    generation,
                },
            );
        }
    }

    pub(super) fn on_socket_timer(&mut self, s: usize) {
        let app = self.settings.app.clone();
        let mut out = Vec::new();
        let session = &mut self.sessions[s];
        session.socket_timer = None;
        session.sockets.on_tick(&app, unix_ms(), &mut out);
        self.apply_outputs(s, out);
    }

    pub(super) fn on_heartbeat_timer(&mut self, s: usize) {
        let timeout = self.settings.ping_timeout;
        let generation = self.sessions[s].generation;
        match self.sessions[s].heartbeat.poll(self.now, timeout) {
            HeartbeatAction::SendPing => self.send_engine(s, &Packet::Ping(Bytes::new())),
            HeartbeatAction::TimedOut => return self.close_session(s, "ping timeout", false),
            HeartbeatAction::Wait => {}
        }
        let at = self.sessions[s].heartbeat.deadline();
        self.timers.schedule(
            at,
            Timer {
                kind: TimerKind::Heartbeat,
                index: s,
                generation,
            },
        );
    }

    /// Ends a session: leaves its rooms, tells the client when `notify`, releases its
    /// connections and forgets its id.
    pub(super) fn close_session(&mut self, s: usize, reason: &str, notify: bool) {
        if !self.sessions.contains(s) {
            return;
        }
        if super::recovery::recoverable(reason) {
            self.persist(s, true);
        }
        let Some(session) = self.sessions.try_remove(s) else {
            return;
        };
        tracing::debug!(shard = self.id, sid = %session.sid, reason, "session closed");
        self.sids.remove(&session.sid);
        self.shared.limits.release(session.ip);
        for user in session.sockets.users() {
            self.shared.limits.release_user(user);
        }
        for room in session.sockets.rooms() {
            self.rooms.leave(room, s);
        }
        if let Some(p) = session.probe {
            self.close_conn(p);
        }
        match session.transport {
            Transport::WebSocket(c) => {
                self.counters.websocket_connections =
                    self.counters.websocket_connections.saturating_sub(1);
                if let Some(conn) = self.conns.get_mut(c) {
                    conn.role = Role::Http(HttpState::Head);
                    if notify {
                        conn.push(WireMessage::engine(&Packet::Close).ws_frame().clone());
                        conn.push(websocket::encode_close(1000, ""));
                    }
                    conn.closing = true;
                    self.mark_dirty(c);
                }
            }
            Transport::Polling { get } => {
                self.counters.polling_sessions = self.counters.polling_sessions.saturating_sub(1);
                if let Some(g) = get {
                    self.answer_parked_get(g, b"1");
                }
            }
        }
    }

    /// Drops a TCP connection, and the session that depended on it.
    pub(super) fn close_conn(&mut self, c: usize) {
        let Some(mut conn) = self.conns.try_remove(c) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.counters.tcp_connections = self.counters.tcp_connections.saturating_sub(1);
        match conn.role {
            Role::WebSocket(ws) => {
                let Some(session) = self.sessions.get_mut(ws.session) else {
                    return;
                };
                if ws.probing && session.probe == Some(c) {
                    session.probe = None;
                } else if matches!(session.transport, Transport::WebSocket(t) if t == c) {
                    self.close_session(ws.session, "transport closed", false);
                }
            }
            Role::Http(HttpState::PendingGet { session, .. }) => {
                if let Some(sess) = self.sessions.get_mut(session) {
                    if matches!(sess.transport, Transport::Polling { get: Some(g) } if g == c) {
                        sess.transport = Transport::Polling { get: None };
                        // The reference server ends a session whose poll is cut short.
                        self.close_session(session, "poll connection closed prematurely", false);
                    }
                }
            }
            Role::Http(_) => {}
        }
    }
}
