//! Engine.IO sessions: open, packets in, packets out, heartbeats, upgrade, close.

use super::conn::{HttpState, Role};
use super::ids::{ConnId, SessionId};
use super::outbound::Outbound;
use super::session::{Session, Transport};
use super::timers::Timer;
use super::Engine;
use crate::codec::engineio::Packet;
use crate::codec::websocket;
use crate::codec::WireMessage;
use crate::gateway::envelope;
use crate::limits::Refusal;
use crate::market::Payload;
use crate::recovery::Offset;
use crate::session::heartbeat::{Heartbeat, HeartbeatAction};
use crate::session::sid::new_sid;
use crate::session::sockets::{App, Ctx, Output, SocketLayer};
use crate::session::{CloseReason, Violation};
use bytes::Bytes;
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::Arc;

impl Engine {
    /// Opens a session for a handshake, unless a connection cap refuses it.
    pub(super) fn open_session(
        &mut self,
        transport: Transport,
        echo: bool,
        ip: IpAddr,
        handshake_token: Option<Box<str>>,
    ) -> Result<SessionId, Refusal> {
        if self.drain_deadline.is_some() || self.stopped {
            self.counters.handshakes_refused += 1;
            return Err(Refusal::Draining);
        }
        if self.shared.catch_up.is_catching_up() {
            // What it would be sent now is history, or a state still being rebuilt.
            self.counters.handshakes_refused += 1;
            return Err(Refusal::CatchingUp);
        }
        self.shared
            .limits
            .admit(ip, self.now.unix_ms)
            .inspect_err(|_| self.counters.handshakes_refused += 1)?;
        let generation = self.generation();
        let mut sid = new_sid(self.id);
        while self.sids.contains_key(sid.as_str()) {
            sid = new_sid(self.id);
        }
        let is_ws = matches!(transport, Transport::WebSocket(_));
        let heartbeat = Heartbeat::new(self.now.mono, self.settings.ping_interval);
        let s = SessionId::new(self.sessions.insert(Session {
            sid: sid.clone().into_boxed_str(),
            generation,
            transport,
            probe: None,
            post: None,
            queue: Outbound::default(),
            owed: SmallVec::new(),
            dirty: false,
            heartbeat,
            echo,
            sockets: SocketLayer::default(),
            ip,
            handshake_token,
            socket_timer: None,
            joined: Default::default(),
            skip_until: None,
            late_joins: Vec::new(),
            closing: None,
        }));
        self.sids.insert(sid.into_boxed_str(), s);
        if is_ws {
            self.counters.websocket_connections += 1;
        } else {
            self.counters.polling_sessions += 1;
        }
        self.timers
            .schedule(heartbeat.deadline(), Timer::Heartbeat(s, generation));
        if !echo {
            self.timers.schedule(
                self.now.mono + self.settings.connect_timeout,
                Timer::ConnectTimeout(s, generation),
            );
        }
        tracing::debug!(shard = self.id, session = ?s, websocket = is_ws, "session opened");
        Ok(s)
    }

    /// The Engine.IO open packet: exactly the keys the reference server sends.
    pub(super) fn open_packet(&self, s: SessionId, polling: bool) -> Option<Packet> {
        let st = &self.settings;
        let session = self.live_session(s)?;
        let body = format!(
            "{{\"sid\":\"{}\",\"upgrades\":{},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            session.sid,
            if polling { "[\"websocket\"]" } else { "[]" },
            st.ping_interval.as_millis(),
            st.ping_timeout.as_millis(),
            st.max_payload
        );
        Some(Packet::Open(Bytes::from(body)))
    }

    pub(super) fn send_engine(&mut self, s: SessionId, packet: &Packet) {
        self.send_wire(s, &WireMessage::engine(packet));
    }

    /// Queues one Engine.IO message on the session's current transport.
    pub(super) fn send_wire(&mut self, s: SessionId, msg: &WireMessage) {
        self.send_wire_as(s, msg, true);
    }

    /// As `send_wire`; `compress`: compressed for a WebSocket that negotiated
    /// permessage-deflate when long enough (`false` for bulk sends such as replays, where
    /// compressing message by message would hold the shard for all its other clients).
    pub(super) fn send_wire_as(&mut self, s: SessionId, msg: &WireMessage, compress: bool) {
        let hard = self.settings.outbound_hard_limit;
        let Some(session) = super::session::live_mut(&mut self.sessions, s) else {
            return;
        };
        match session.transport {
            Transport::WebSocket(c) => {
                self.counters.messages_out += 1;
                let frame = self.frame_for(compress && self.deflates(c), msg);
                if let Some(conn) = self.live_conn_mut(c) {
                    conn.push(frame);
                    self.queued(c);
                }
            }
            Transport::Polling { .. } => {
                self.counters.messages_out += 1;
                session.queue.push(msg.polling(), 0, false);
                if session.queue.charge() > hard {
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
    fn send_on_conn(&mut self, c: ConnId, packet: &Packet) {
        let frame = WireMessage::engine(packet).ws_frame().clone();
        if let Some(conn) = self.live_conn_mut(c) {
            conn.push(frame);
            self.queued(c);
        }
    }

    /// Handles one Engine.IO packet. `via` is the WebSocket it came on, and whether that
    /// socket is probing an upgrade.
    pub(super) fn on_engine_packet(
        &mut self,
        s: SessionId,
        packet: Packet,
        via: Option<(ConnId, bool)>,
    ) {
        let (now, interval) = (self.now.mono, self.settings.ping_interval);
        self.count_work(|w| w.messages += 1);
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        match packet {
            Packet::Pong(_) => session.heartbeat.on_pong(now, interval),
            Packet::Ping(data) => match via {
                Some((c, true)) if &data[..] == b"probe" => {
                    self.send_on_conn(c, &Packet::Pong(data));
                    // Release the client's pending poll so it can pause polling.
                    self.send_engine(s, &Packet::Noop);
                }
                // In protocol v4 only the server pings, and answering would let a client make
                // the server queue echoes of anything it sends: the session ends, as with the
                // reference server.
                _ => self.close_session(s, Violation::PingFromClient.into()),
            },
            Packet::Upgrade => match via {
                Some((c, true)) => self.finish_upgrade(s, c),
                _ => self.close_session(s, Violation::UnexpectedUpgrade.into()),
            },
            Packet::Message(text) => {
                if session.echo {
                    return self.send_engine(s, &Packet::Message(text));
                }
                let text = String::from_utf8_lossy(&text);
                self.feed_sockets(s, |layer, app, ctx, out| {
                    layer.on_text(app, &text, ctx, out)
                });
            }
            Packet::Binary(data) => {
                if session.echo {
                    return self.send_engine(s, &Packet::Binary(data));
                }
                self.feed_sockets(s, |layer, app, ctx, out| {
                    layer.on_binary(app, data, ctx, out)
                });
            }
            Packet::Close => {
                // The reference server releases a parked poll with a noop on a client close.
                if let Transport::Polling { get: Some(g) } = session.transport {
                    session.transport = Transport::Polling { get: None };
                    self.answer_parked_get(g, b"6");
                }
                self.close_session(s, CloseReason::ClientClosed)
            }
            Packet::Noop => {}
            Packet::Open(_) => self.close_session(s, Violation::OpenFromClient.into()),
        }
    }

    /// Runs one input through the session's Socket.IO layer, lending it the time, the
    /// handshake token and the per-user cap, then applies what it asks for.
    pub(super) fn feed_sockets(
        &mut self,
        s: SessionId,
        input: impl FnOnce(&mut SocketLayer, &App, &mut Ctx<'_>, &mut Vec<Output>),
    ) {
        let mut out = Vec::new();
        let app = self.settings.app.clone();
        let limits = &self.shared.limits;
        let mut admit = |u: &Arc<str>| limits.admit_user(u);
        let rooms = &self.rooms;
        let demand = &self.shared.demand;
        let Some(session) = self
            .sessions
            .get_mut(s.key())
            .filter(|x| x.closing.is_none())
        else {
            return;
        };
        let ip = session.ip;
        let mut admit_rooms = |new: &[Arc<str>]| {
            let missing = new.iter().filter(|r| rooms.get(r).is_none()).count();
            if !limits.rooms_available(missing) {
                return Err(crate::notice::room_limit());
            }
            let views: Vec<&Arc<str>> = new
                .iter()
                .filter(|r| crate::room::Room::parse(r).view().is_some())
                .collect();
            let opening = views.iter().filter(|r| !demand.is_open(r)).count();
            if !limits.views_available(ip, views.len(), opening, demand.open_count()) {
                return Err(crate::notice::view_limit(limits.max_views_per_ip()));
            }
            Ok(())
        };
        let mut ctx = Ctx {
            now_ms: self.now.unix_ms,
            handshake_token: session.handshake_token.as_deref(),
            admit_user: &mut admit,
            admit_rooms: &mut admit_rooms,
        };
        input(&mut session.sockets, &app, &mut ctx, &mut out);
        self.apply_outputs(s, out);
    }

    pub(super) fn apply_outputs(&mut self, s: SessionId, outputs: Vec<Output>) {
        let mut joined = Vec::new();
        let tracks_rooms = self.shared.recovery.is_some();
        let mut rooms_changed = false;
        for o in outputs {
            if self.live_session(s).is_none() {
                // Closed by an earlier output. What the layer already let go of must still be
                // let go of here: `reap` only releases what the layer holds at the end.
                match o {
                    Output::Leave(room) => {
                        let ip = self.sessions.get(s.key()).map(|x| x.ip);
                        self.leave_room(&room, s, ip);
                    }
                    Output::ReleaseUser(user) => self.shared.limits.release_user(&user),
                    _ => {}
                }
                continue;
            }
            match o {
                Output::Send(p) => {
                    for m in WireMessage::socket(&p) {
                        self.count_work(|w| w.output_bytes += m.ws_frame().len());
                        self.send_wire(s, &m);
                    }
                }
                Output::Join(room) => {
                    self.count_work(|w| w.rooms += 1);
                    if let Some(m) = self.first_message(&room) {
                        joined.push(m);
                    }
                    let mut at = self.last_offset.unwrap_or(Offset::ZERO);
                    let behind = self.shared.catch_up.is_behind();
                    let now_ms = self.now.unix_ms;
                    if behind {
                        // Owed from its subscription on, not from the stale position.
                        at = at.max(Offset::new(now_ms, 0));
                    }
                    if let Some(session) = self.live_session_mut(s) {
                        if tracks_rooms {
                            session.joined.entry(room.clone()).or_insert(at);
                            rooms_changed = true;
                        }
                        if behind {
                            session.late_joins.retain(|(r, _)| *r != room);
                            session.late_joins.push((room.clone(), now_ms));
                        }
                    }
                    let ip = self.live_session(s).map(|x| x.ip);
                    if let Some(ip) = ip {
                        if self.join_room(room, s, ip) {
                            // Opening a view makes the market build and send its state.
                            self.count_work(|w| w.rooms += crate::limits::cost::ROOMS_PER_EVENT);
                        }
                    }
                }
                Output::Leave(room) => {
                    self.count_work(|w| w.rooms += 1);
                    if let Some(session) = self.live_session_mut(s) {
                        if tracks_rooms {
                            session.joined.swap_remove(&room);
                            rooms_changed = true;
                        }
                        if !session.owed.is_empty() {
                            session.owed.retain(|r| *r != room);
                        }
                        if !session.late_joins.is_empty() {
                            session.late_joins.retain(|(r, _)| *r != room);
                        }
                    }
                    let ip = self.sessions.get(s.key()).map(|x| x.ip);
                    self.leave_room(&room, s, ip);
                }
                Output::Resync(room) => {
                    if let Some((view, _)) = self.books.get(&room) {
                        let data = Payload::Json(view.snapshot_json("request").into());
                        let m = envelope::encode_payload(
                            "orderbook.update",
                            &room,
                            &data,
                            self.now.unix_ms,
                        );
                        self.count_work(|w| w.output_bytes += m.ws_frame().len());
                        if let Some(session) = self.live_session_mut(s) {
                            // The snapshot is what a slow consumer was owed for this book.
                            session.owed.retain(|r| *r != room);
                        }
                        self.send_wire(s, &m);
                    }
                }
                Output::Restore { pid, offset } => {
                    // Completes later (possibly within this turn) through `finish_restore`.
                    self.start_restore(s, pid, offset);
                    rooms_changed = true;
                }
                Output::ReleaseUser(user) => self.shared.limits.release_user(&user),
                Output::AuthFailed(reason) => {
                    self.counters.auth_failures += 1;
                    *self.shared.auth_failures.lock().entry(reason).or_insert(0) += 1;
                    tracing::debug!(shard = self.id, reason, "token refused");
                }
                Output::Close(violation) => self.close_session(s, violation.into()),
            }
        }
        if self.live_session(s).is_none() {
            return;
        }
        if rooms_changed {
            self.persist(s, false);
        }
        self.arm_socket_timer(s);
        // A new subscriber gets the room's latest value right after its answer.
        for m in joined {
            self.count_work(|w| w.output_bytes += m.ws_frame().len());
            self.send_wire(s, &m);
        }
    }

    fn finish_upgrade(&mut self, s: SessionId, c: ConnId) {
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        let old_get = match session.transport {
            Transport::Polling { get } => get,
            Transport::WebSocket(_) => None,
        };
        session.transport = Transport::WebSocket(c);
        session.probe = None;
        let queued: Vec<Bytes> = session.queue.take_front(usize::MAX);
        self.counters.polling_sessions = self.counters.polling_sessions.saturating_sub(1);
        self.counters.websocket_connections += 1;
        // Anything still queued for polling goes out on the WebSocket, in order; the noop
        // was only for the poll.
        let deflate = self.deflates(c);
        let frames: Vec<Bytes> = queued
            .into_iter()
            .filter(|t| &t[..] != b"6")
            .map(|text| {
                let m = WireMessage::text(|b| b.extend_from_slice(&text));
                self.frame_for(deflate, &m)
            })
            .collect();
        if let Some(conn) = self.live_conn_mut(c) {
            if let Role::WebSocket(ws) = &mut conn.role {
                ws.probing = false;
            }
            for frame in frames {
                conn.push(frame);
            }
        }
        self.queued(c);
        if let Some(g) = old_get {
            self.answer_parked_get(g, b"6");
        }
    }

    /// Answers the GET parked on connection `g` with `body`; the connection goes back to
    /// reading request heads.
    pub(super) fn answer_parked_get(&mut self, g: ConnId, body: &[u8]) {
        let Some(conn) = self.live_conn_mut(g) else {
            return;
        };
        let (origin, keep) = match std::mem::replace(&mut conn.role, Role::Http(HttpState::Head)) {
            Role::Http(HttpState::PendingGet {
                origin, keep_alive, ..
            }) => (origin, keep_alive),
            other => {
                conn.role = other;
                return;
            }
        };
        let r = super::http::polling_response(200, body, origin.as_deref(), keep);
        self.respond(g, r, keep);
    }

    /// Past the hard limit: the backlog cannot be delivered, so it is discarded, the client is
    /// told why (`error` SLOW_CONSUMER) as far as its socket takes it, and the session ends.
    pub(super) fn drop_slow_consumer(&mut self, s: SessionId) {
        let Some(session) = super::session::live_mut(&mut self.sessions, s) else {
            return;
        };
        self.counters.slow_consumer_disconnects += 1;
        tracing::debug!(shard = self.id, sid = %session.sid, "slow consumer disconnected");
        let notice = crate::notice::slow_consumer();
        match session.transport {
            Transport::WebSocket(c) => {
                if let Some(conn) = self.live_conn_mut(c) {
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
        self.close_session(s, CloseReason::SlowConsumer);
    }

    /// Keeps one timer armed for the socket layer's next deadline (token notices, expiries).
    fn arm_socket_timer(&mut self, s: SessionId) {
        let (now, app) = (self.now, &self.settings.app);
        let Some(session) = self
            .sessions
            .get_mut(s.key())
            .filter(|x| x.closing.is_none())
        else {
            return;
        };
        let next = session.sockets.next_deadline(app);
        if next.is_some() && next != session.socket_timer {
            session.socket_timer = next;
            let at_ms = next.unwrap_or(0);
            // Far-future tokens: wake within a day and re-arm, rather than overflow an Instant.
            let delay =
                std::time::Duration::from_millis(at_ms.saturating_sub(now.unix_ms).min(86_400_000));
            let generation = session.generation;
            self.timers
                .schedule(now.mono + delay, Timer::Socket(s, generation));
        }
    }

    pub(super) fn on_socket_timer(&mut self, s: SessionId) {
        let (app, now_ms) = (self.settings.app.clone(), self.now.unix_ms);
        let mut out = Vec::new();
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        session.socket_timer = None;
        session.sockets.on_tick(&app, now_ms, &mut out);
        self.apply_outputs(s, out);
    }

    pub(super) fn on_heartbeat_timer(&mut self, s: SessionId) {
        let (now, timeout) = (self.now.mono, self.settings.ping_timeout);
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        match session.heartbeat.poll(now, timeout) {
            HeartbeatAction::SendPing => self.send_engine(s, &Packet::Ping(Bytes::new())),
            HeartbeatAction::TimedOut => return self.close_session(s, CloseReason::PingTimeout),
            HeartbeatAction::Wait => {}
        }
        // The ping may have ended the session (a slow consumer): then there is nothing to arm.
        let Some(session) = self.live_session(s) else {
            return;
        };
        let (at, generation) = (session.heartbeat.deadline(), session.generation);
        self.timers.schedule(at, Timer::Heartbeat(s, generation));
    }

    /// Ends a session: records it for recovery when the client is expected back, gives back
    /// its cap slots, tells the client when the reason says so, and lets go of its
    /// connections. It leaves its rooms when the current call ends (`reap`).
    pub(super) fn close_session(&mut self, s: SessionId, reason: CloseReason) {
        if self.live_session(s).is_none() {
            return;
        }
        if reason.recoverable() {
            self.persist(s, true);
        }
        if reason.is_violation() {
            self.counters.protocol_errors += 1;
        }
        let shard = self.id;
        let Some(session) = super::session::live_mut(&mut self.sessions, s) else {
            return;
        };
        session.closing = Some(reason);
        tracing::debug!(shard, sid = %session.sid, %reason, "session closed");
        // Cap slots are given back at once: a new handshake later in the same input (a
        // close, then a new session, in one write) must find them free.
        self.shared.limits.release(session.ip);
        for user in session.sockets.users() {
            self.shared.limits.release_user(user);
        }
        let (probe, transport) = (session.probe.take(), session.transport);
        self.closed_sessions.push(s);
        if let Some(p) = probe {
            self.close_conn(p);
        }
        match transport {
            Transport::WebSocket(c) => {
                if let Some(conn) = self.live_conn_mut(c) {
                    conn.role = Role::Http(HttpState::Head);
                    if reason.notifies() {
                        conn.push(WireMessage::engine(&Packet::Close).ws_frame().clone());
                        conn.push(websocket::encode_close(reason.ws_close_code(), ""));
                    }
                    self.set_closing(c);
                }
            }
            Transport::Polling { get } => {
                if let Some(g) = get {
                    self.answer_parked_get(g, b"1");
                }
            }
        }
    }

    /// Lets go of a TCP connection, and of the session that depended on it.
    pub(super) fn close_conn(&mut self, c: ConnId) {
        let Some(conn) = self.live_conn_mut(c) else {
            return;
        };
        conn.fate = Some(super::conn::Fate::Released);
        let role = std::mem::replace(&mut conn.role, Role::Http(HttpState::Head));
        self.closed_conns.push(c);
        match role {
            Role::WebSocket(ws) => {
                let Some(session) = self.live_session_mut(ws.session) else {
                    return;
                };
                if ws.probing && session.probe == Some(c) {
                    session.probe = None;
                } else if session.transport == Transport::WebSocket(c) {
                    self.close_session(ws.session, CloseReason::TransportClosed);
                }
            }
            Role::Http(HttpState::PendingGet { session, .. }) => {
                let Some(sess) = self.live_session_mut(session) else {
                    return;
                };
                if sess.transport == (Transport::Polling { get: Some(c) }) {
                    sess.transport = Transport::Polling { get: None };
                    // The reference server ends a session whose poll is cut short.
                    self.close_session(session, CloseReason::PollCutShort);
                }
            }
            Role::Http(_) => {}
        }
    }
}
