//! The HTTP side of a shard: request heads and bodies, health endpoints, Engine.IO handshakes,
//! long-polling requests and the WebSocket upgrade.

use super::conn::{Fate, HttpState, Role, WsState};
use super::ids::{ConnId, SessionId};
use super::session::Transport;
use super::Engine;
use crate::codec::engineio;
use crate::codec::websocket::MessageAssembler;
use crate::http::{parse_head, response, Method, Request};
use crate::limits::Refusal;
use crate::notice::{cors_headers, http_refusal, HttpRefusal};
use crate::session::sid::shard_of;
use crate::session::{CloseReason, Violation};
use crate::transport::{classify, handshake, EngineError, EngineRequest, TransportKind};
use bytes::{Buf, Bytes, BytesMut};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// Packets in one long-polling response. python-engineio refuses a payload of more than 16
/// packets and drops the connection; the rest waits for the next poll, which comes at once.
const MAX_PACKETS_PER_POLL: usize = 16;
/// Packets one polling POST may carry; more is refused (400) and ends the session. Far above
/// what a client's buffered emits come to, since events past the rate limit are refused.
pub const MAX_PACKETS_PER_PAYLOAD: usize = 1000;

enum Endpoint {
    Engine { echo: bool },
    Demo(&'static str, &'static [u8]),
    Health,
    Ready,
    NotFound,
}

impl Engine {
    pub(super) fn process_http(&mut self, c: ConnId) {
        let (me, shards) = (self.id, self.shard_count);
        loop {
            let Some(conn) = self.live_conn_mut(c) else {
                return;
            };
            if conn.closing {
                conn.inbuf.clear();
                return;
            }
            match &conn.role {
                Role::WebSocket(_) => return self.process_ws(c),
                Role::Http(HttpState::PendingGet { .. }) => return,
                Role::Http(HttpState::Body { need, .. }) => {
                    if conn.inbuf.len() < *need {
                        return;
                    }
                    let need = *need;
                    let body = conn.inbuf.split_to(need).freeze();
                    let Role::Http(HttpState::Body { req, .. }) =
                        std::mem::replace(&mut conn.role, Role::Http(HttpState::Head))
                    else {
                        return;
                    };
                    conn.requests += 1;
                    self.on_post_body(c, &req, body);
                }
                Role::Http(HttpState::Head) => {
                    // One request at a time: the next is read once this one's answer is
                    // written, so a client that pipelines and never reads holds one response.
                    if conn.inbuf.is_empty() || !conn.out.is_empty() {
                        return;
                    }
                    let (req, consumed) = match parse_head(&conn.inbuf) {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(e) => {
                            self.counters.protocol_errors += 1;
                            return self.refuse(c, HttpRefusal::Head(e), None);
                        }
                    };
                    if let Some(owner) = foreign_owner(&req, me, shards) {
                        return self.hand_off(c, owner);
                    }
                    conn.inbuf.advance(consumed);
                    self.on_request(c, req);
                }
            }
        }
    }

    /// Gives the connection, with the input it holds, to the shard that owns its session.
    fn hand_off(&mut self, c: ConnId, owner: usize) {
        if let Some(conn) = self.live_conn_mut(c) {
            conn.fate = Some(Fate::HandedOff { shard: owner });
            self.closed_conns.push(c);
        }
    }

    fn endpoint(&self, path: &str) -> Endpoint {
        let trimmed = |p: &str| p.trim_end_matches('/').to_owned();
        let p = trimmed(path);
        if p == trimmed(&self.settings.engine_path) {
            Endpoint::Engine { echo: false }
        } else if self.settings.echo_path.as_deref().map(trimmed) == Some(p.clone()) {
            Endpoint::Engine { echo: true }
        } else if let Some((ctype, body)) = self
            .settings
            .demo_page
            .then(|| crate::demo_page::asset(path))
            .flatten()
        {
            Endpoint::Demo(ctype, body)
        } else if p == "/health" {
            Endpoint::Health
        } else if p == "/ready" {
            Endpoint::Ready
        } else {
            Endpoint::NotFound
        }
    }

    /// The `Access-Control-Allow-Origin` a request's origin gets: itself when listed (with
    /// credentials), `*` when any origin is allowed (never with credentials: a wildcard
    /// must not let every site make credentialed requests), else none.
    fn cors_origin(&self, req: &Request) -> Option<String> {
        let origin = req.origin.as_deref()?;
        let listed = &self.settings.cors_origins;
        if listed.iter().any(|o| o == origin) {
            Some(origin.to_owned())
        } else if listed.iter().any(|o| o == "*") {
            Some("*".to_owned())
        } else {
            None
        }
    }

    fn count_request(&mut self, c: ConnId) {
        if let Some(conn) = self.live_conn_mut(c) {
            conn.requests += 1;
        }
    }

    fn on_request(&mut self, c: ConnId, req: Request) {
        let keep = req.keep_alive;
        self.count_work(|w| w.messages += 1);
        let proxied = self
            .live_conn(c)
            .is_some_and(|x| self.is_trusted_proxy(x.ip));
        if proxied {
            let (client, _) = self.client_identity(c, &req);
            self.attribute(c, client);
        }
        match self.endpoint(&req.path) {
            Endpoint::Health => {
                self.count_request(c);
                let r = response::json(200, &[], keep, "{\"status\":\"ok\"}");
                self.respond(c, r, keep)
            }
            Endpoint::Ready => {
                self.count_request(c);
                let status = if self.stopped || self.drain_deadline.is_some() {
                    "draining"
                } else if !self.shared.ready.load(Ordering::Relaxed) {
                    "starting"
                } else if !self.shared.upstream_ok.load(Ordering::Relaxed) {
                    "upstream_unavailable"
                } else if self.shared.catch_up.is_catching_up() {
                    "catching_up"
                } else {
                    "ready"
                };
                let code = if status == "ready" { 200 } else { 503 };
                let body = if status == "catching_up" {
                    let p = self.shared.catch_up.progress();
                    format!(
                        "{{\"status\":\"{status}\",\"events\":{},\"behind_ms\":{}}}",
                        p.events, p.behind_ms
                    )
                } else {
                    format!("{{\"status\":\"{status}\"}}")
                };
                self.respond(c, response::json(code, &[], keep, &body), keep)
            }
            Endpoint::Demo(ctype, body) => {
                self.count_request(c);
                self.respond(c, response::build(200, ctype, &[], keep, body), keep)
            }
            Endpoint::NotFound => {
                self.count_request(c);
                self.respond(c, http_refusal(&HttpRefusal::NotFound, None, keep), keep)
            }
            Endpoint::Engine { echo } => self.on_engine_request(c, req, echo),
        }
    }

    fn on_engine_request(&mut self, c: ConnId, req: Request, echo: bool) {
        let origin = self.cors_origin(&req);
        if req.method() == Method::Options {
            self.count_request(c);
            let mut extra = vec![
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                (
                    "Access-Control-Allow-Headers",
                    "Content-Type, Authorization",
                ),
            ];
            extra.extend(cors_headers(origin.as_deref()));
            let keep = req.keep_alive;
            let r = response::build(204, "text/plain", &extra, keep, b"");
            return self.respond(c, r, keep);
        }
        let request = match classify(&req) {
            Ok(r) => r,
            Err(e) => return self.engine_error(c, e, origin.as_deref()),
        };
        match request {
            EngineRequest::Open(TransportKind::Polling) => {
                self.count_request(c);
                let (ip, token) = self.client_identity(c, &req);
                let s = match self.open_session(Transport::Polling { get: None }, echo, ip, token) {
                    Ok(s) => s,
                    Err(r) => return self.refuse_handshake(c, r, origin.as_deref()),
                };
                let Some(open) = self.open_packet(s, true) else {
                    return;
                };
                let keep = req.keep_alive;
                let r = polling_response(200, &open.to_text(), origin.as_deref(), keep);
                self.respond(c, r, keep);
            }
            EngineRequest::Open(TransportKind::WebSocket) => {
                let Some((accept, deflate)) = self.accept_websocket(c, &req, origin.as_deref())
                else {
                    return;
                };
                let (ip, token) = self.client_identity(c, &req);
                let s = match self.open_session(Transport::WebSocket(c), echo, ip, token) {
                    Ok(s) => s,
                    // Refused at the handshake: an HTTP answer instead of the upgrade.
                    Err(r) => return self.refuse_handshake(c, r, origin.as_deref()),
                };
                let Some(conn) = self.live_conn_mut(c) else {
                    return;
                };
                conn.push(accept);
                conn.role = Role::WebSocket(WsState {
                    session: s,
                    probing: false,
                    assembler: MessageAssembler::with_deflate(deflate),
                });
                if let Some(open) = self.open_packet(s, false) {
                    self.send_engine(s, &open);
                }
                self.queued(c);
                self.process_ws(c);
            }
            EngineRequest::Existing { sid, transport } => {
                let known = self.sids.get(sid.as_str()).copied();
                let Some(s) =
                    known.filter(|s| self.live_session(*s).is_some_and(|x| x.echo == echo))
                else {
                    return self.engine_error(c, EngineError::UnknownSid, origin.as_deref());
                };
                match (transport, req.method()) {
                    (TransportKind::WebSocket, _) => {
                        self.on_upgrade_request(c, s, &req, origin.as_deref())
                    }
                    (TransportKind::Polling, Method::Get) => {
                        self.on_poll(c, s, origin, req.keep_alive)
                    }
                    (TransportKind::Polling, Method::Post) => {
                        self.on_post_head(c, s, req, origin.as_deref())
                    }
                    _ => self.engine_error(c, EngineError::BadRequest, origin.as_deref()),
                }
            }
        }
    }

    /// The 101 answer to a valid WebSocket request, and whether it took permessage-deflate.
    fn accept_websocket(
        &mut self,
        c: ConnId,
        req: &Request,
        origin: Option<&str>,
    ) -> Option<(Bytes, bool)> {
        let key_ok = |k: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .is_ok_and(|d| d.len() == 16)
        };
        let key = match (&req.ws_key, req.ws_version.as_deref()) {
            (Some(k), Some("13")) if key_ok(k) => k,
            _ => {
                self.engine_error(c, EngineError::BadRequest, origin);
                return None;
            }
        };
        self.count_request(c);
        self.counters.handshakes += 1;
        let accept = handshake::accept_key(key);
        let answer = req
            .ws_deflate
            .filter(|_| self.settings.deflate_threshold.is_some());
        let deflate = answer.is_some();
        let extension = answer
            .map(|a| format!("Sec-WebSocket-Extensions: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extension}\r\n"
        );
        Some((Bytes::from(head), deflate))
    }

    fn on_upgrade_request(&mut self, c: ConnId, s: SessionId, req: &Request, origin: Option<&str>) {
        let upgradable = self
            .live_session(s)
            .is_some_and(|x| matches!(x.transport, Transport::Polling { .. }) && x.probe.is_none());
        let Some((accept, deflate)) = self.accept_websocket(c, req, origin) else {
            return;
        };
        if !upgradable {
            // Already upgraded, or another probe under way: as the reference server does, the
            // WebSocket is accepted and closed at once (a `ws` client reports an unexpected
            // HTTP status as an error, a close as a close).
            if let Some(conn) = self.live_conn_mut(c) {
                conn.push(accept);
                conn.push(crate::codec::websocket::encode_frame(
                    crate::codec::websocket::OpCode::Close,
                    b"",
                ));
            }
            return self.set_closing(c);
        }
        if let Some(session) = self.live_session_mut(s) {
            session.probe = Some(c);
        }
        let Some(conn) = self.live_conn_mut(c) else {
            return;
        };
        conn.push(accept);
        conn.role = Role::WebSocket(WsState {
            session: s,
            probing: true,
            assembler: MessageAssembler::with_deflate(deflate),
        });
        self.queued(c);
        self.process_ws(c);
    }

    fn on_poll(&mut self, c: ConnId, s: SessionId, origin: Option<String>, keep_alive: bool) {
        self.count_request(c);
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        match session.transport {
            Transport::Polling { get: None } => {
                session.transport = Transport::Polling { get: Some(c) };
                if let Some(conn) = self.live_conn_mut(c) {
                    conn.role = Role::Http(HttpState::PendingGet {
                        session: s,
                        origin: origin.map(String::into_boxed_str),
                        keep_alive,
                    });
                }
                self.flush_polling(s);
            }
            Transport::Polling { get: Some(_) } => {
                // Two pending GETs: the reference server treats the overlap as fatal.
                self.engine_error(c, EngineError::BadRequest, origin.as_deref());
                self.close_session(s, CloseReason::OverlappingPolls);
            }
            Transport::WebSocket(_) => {
                self.engine_error(c, EngineError::BadRequest, origin.as_deref())
            }
        }
    }

    fn on_post_head(&mut self, c: ConnId, s: SessionId, req: Request, origin: Option<&str>) {
        let Some(session) = self.live_session(s) else {
            return self.engine_error(c, EngineError::UnknownSid, origin);
        };
        if !matches!(session.transport, Transport::Polling { .. }) {
            return self.engine_error(c, EngineError::BadRequest, origin);
        }
        let overlapping = session
            .post
            .is_some_and(|p| p != c && self.live_conn(p).is_some());
        if overlapping {
            // One body per session at a time, as the reference server: the overlap is fatal.
            self.engine_error(c, EngineError::BadRequest, origin);
            return self.close_session(s, CloseReason::OverlappingPosts);
        }
        let Some(len) = req.content_length.filter(|_| !req.chunked) else {
            return self.engine_error(c, EngineError::BadRequest, origin);
        };
        if len > self.settings.max_payload {
            self.refuse(c, HttpRefusal::PayloadTooLarge, origin);
            return self.close_session(s, CloseReason::PayloadTooLarge);
        }
        if let Some(session) = self.live_session_mut(s) {
            session.post = Some(c);
        }
        if let Some(conn) = self.live_conn_mut(c) {
            conn.role = Role::Http(HttpState::Body {
                req: Box::new(req),
                need: len,
            });
        }
    }

    fn on_post_body(&mut self, c: ConnId, req: &Request, body: Bytes) {
        let origin = self.cors_origin(req);
        let known = req.query("sid").and_then(|sid| self.sids.get(sid)).copied();
        let Some(s) = known.filter(|s| self.live_session(*s).is_some()) else {
            return self.engine_error(c, EngineError::UnknownSid, origin.as_deref());
        };
        if let Some(session) = self.live_session_mut(s) {
            if session.post == Some(c) {
                session.post = None;
            }
        }
        let packets = match engineio::decode_payload(body, MAX_PACKETS_PER_PAYLOAD) {
            Ok(p) => p,
            Err(_) => {
                self.engine_error(c, EngineError::BadRequest, origin.as_deref());
                return self.close_session(s, Violation::BadPollingPayload.into());
            }
        };
        let keep = req.keep_alive;
        let extra = cors_headers(origin.as_deref());
        let r = response::build(200, "text/html", &extra, keep, b"ok");
        self.respond(c, r, keep);
        for p in packets {
            if self.live_session(s).is_none() {
                break;
            }
            self.on_engine_packet(s, p, None);
        }
    }

    /// The client's address (from `X-Forwarded-For` behind a trusted proxy) and the token its
    /// handshake carried: the `token` query parameter, else `Authorization: Bearer`.
    fn client_identity(&self, c: ConnId, req: &Request) -> (IpAddr, Option<Box<str>>) {
        let peer = self
            .live_conn(c)
            .map_or(IpAddr::from([0, 0, 0, 0]), |conn| conn.ip);
        let ip = match &self.settings.trust_proxy {
            Some(trust) => trust.client(peer, req.forwarded_for.as_deref()),
            None => peer,
        };
        let token = req
            .query("token")
            .or_else(|| {
                req.authorization
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
            })
            .map(|t| t.trim().into());
        (ip, token)
    }

    /// Answers a handshake over a connection cap: 429 or 503 with the reason.
    fn refuse_handshake(&mut self, c: ConnId, r: Refusal, origin: Option<&str>) {
        tracing::debug!(shard = self.id, reason = r.reason(), "handshake refused");
        self.refuse(c, HttpRefusal::Capped(r), origin);
    }

    pub(super) fn engine_error(&mut self, c: ConnId, e: EngineError, origin: Option<&str>) {
        self.count_request(c);
        self.refuse(c, HttpRefusal::Engine(e), origin);
    }

    /// Answers with a refusal and closes the connection once it is written.
    fn refuse(&mut self, c: ConnId, refusal: HttpRefusal, origin: Option<&str>) {
        let r = http_refusal(&refusal, origin, false);
        self.respond(c, r, false);
    }

    pub(super) fn respond(&mut self, c: ConnId, bytes: Bytes, keep_alive: bool) {
        let Some(conn) = self.live_conn_mut(c) else {
            return;
        };
        conn.push(bytes);
        self.queued(c);
        if keep_alive {
            // A kept-alive connection gets the same time for its next request as the first.
            self.arm_request_timer(c);
        } else {
            self.set_closing(c);
        }
    }

    /// Answers the session's parked GET with what is queued (up to a poll's worth).
    pub(super) fn flush_polling(&mut self, s: SessionId) {
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        session.dirty = false;
        let Transport::Polling { get: Some(c) } = session.transport else {
            return;
        };
        if session.queue.is_empty() {
            return;
        }
        let packets = session.queue.take_front(MAX_PACKETS_PER_POLL);
        let body = engineio::encode_payload(packets.iter().map(|b| &b[..]));
        session.transport = Transport::Polling { get: None };
        let drained = session.queue.is_empty();
        self.answer_parked_get(c, &body);
        if drained {
            self.pay_owed_snapshots(s);
        }
    }
}

/// The shard that owns the session a request names, when it is not shard `me` of `shards`.
fn foreign_owner(req: &Request, me: usize, shards: usize) -> Option<usize> {
    let owner = shard_of(req.query("sid")?)?;
    (owner != me && owner < shards).then_some(owner)
}

pub(super) fn polling_response(
    status: u16,
    body: &[u8],
    origin: Option<&str>,
    keep: bool,
) -> Bytes {
    let extra = cors_headers(origin);
    let mut out = BytesMut::with_capacity(200 + body.len());
    response::head(
        &mut out,
        status,
        "text/plain; charset=UTF-8",
        &extra,
        keep,
        body.len(),
    );
    out.extend_from_slice(body);
    out.freeze()
}
