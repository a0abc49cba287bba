//! The HTTP side of a shard: request heads and bodies, health endpoints, Engine.IO handshakes,
//! long-polling requests and the WebSocket upgrade.

use super::conn::{HttpState, Role, WsState};
use super::{Shard, Transport};
use crate::codec::engineio;
use crate::codec::websocket::MessageAssembler;
use crate::http::{parse_head, response, Method, Request};
use crate::limits::Refusal;
use crate::session::sid::shard_of;
use crate::transport::{classify, handshake, EngineError, EngineRequest, TransportKind};
use bytes::{Buf, Bytes, BytesMut};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// Packets in one long-polling response. python-engineio refuses a payload of more than 16
/// packets and drops the connection; the rest waits for the next poll, which comes at once.
const MAX_PACKETS_PER_POLL: usize = 16;

enum Endpoint {
    Engine { echo: bool },
    Demo(&'static str, &'static [u8]),
    Health,
    Ready,
    NotFound,
}

impl Shard {
    pub(super) fn process_http(&mut self, c: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(c) else {
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
                        unreachable!("matched above")
                    };
                    conn.requests += 1;
                    self.on_post_body(c, &req, body);
                }
                Role::Http(HttpState::Head) => {
                    if conn.inbuf.is_empty() {
                        return;
                    }
                    let (req, consumed) = match parse_head(&conn.inbuf) {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(e) => {
                            self.counters.protocol_errors += 1;
                            let status = if matches!(e, crate::http::HeadError::TooLarge) {
                                431
                            } else {
                                400
                            };
                            let body = format!("{{\"error\":\"{}\"}}", e);
                            return self
                                .respond_and_close(c, response::json(status, &[], false, &body));
                        }
                    };
                    if let Some(owner) = self.foreign_owner(&req) {
                        return self.hand_off(c, owner);
                    }
                    self.conns[c].inbuf.advance(consumed);
                    self.on_request(c, req);
                }
            }
        }
    }

    /// The shard that owns the session a request names, when it is not this one.
    fn foreign_owner(&self, req: &Request) -> Option<usize> {
        let owner = shard_of(req.query("sid")?)?;
        (owner != self.id && owner < self.peers.len()).then_some(owner)
    }

    fn hand_off(&mut self, c: usize, owner: usize) {
        let mut conn = self.conns.remove(c);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.counters.tcp_connections -= 1;
        let buffered = std::mem::take(&mut conn.inbuf);
        let std_stream = unsafe_into_std(conn.stream);
        self.peers[owner].send(super::ShardMsg::Adopt {
            stream: std_stream,
            buffered,
        });
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

    fn cors_origin(&self, req: &Request) -> Option<String> {
        let origin = req.origin.as_deref()?;
        self.settings
            .cors_origins
            .iter()
            .any(|o| o == "*" || o == origin)
            .then(|| origin.to_owned())
    }

    fn on_request(&mut self, c: usize, req: Request) {
        let keep = req.keep_alive;
        match self.endpoint(&req.path) {
            Endpoint::Health => {
                self.conns[c].requests += 1;
                self.respond(
                    c,
                    response::json(200, &[], keep, "{\"status\":\"ok\"}"),
                    keep,
                )
            }
            Endpoint::Ready => {
                self.conns[c].requests += 1;
                let status = if self.shutting_down || self.drain_deadline.is_some() {
                    "draining"
                } else if !self.shared.ready.load(Ordering::Relaxed) {
                    "starting"
                } else if !self.shared.upstream_ok.load(Ordering::Relaxed) {
                    "upstream_unavailable"
                } else {
                    "ready"
                };
                let code = if status == "ready" { 200 } else { 503 };
                let body = format!("{{\"status\":\"{status}\"}}");
                self.respond(c, response::json(code, &[], keep, &body), keep)
            }
            Endpoint::Demo(ctype, body) => {
                self.conns[c].requests += 1;
                self.respond(c, response::build(200, ctype, &[], keep, body), keep)
            }
            Endpoint::NotFound => {
                self.conns[c].requests += 1;
                self.respond(
                    c,
                    response::json(404, &[], keep, "{\"error\":\"not found\"}"),
                    keep,
                )
            }
            Endpoint::Engine { echo } => self.on_engine_request(c, req, echo),
        }
    }

    fn on_engine_request(&mut self, c: usize, req: Request, echo: bool) {
        let origin = self.cors_origin(&req);
        if req.method() == Method::Options {
            self.conns[c].requests += 1;
            let mut extra = vec![
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                (
                    "Access-Control-Allow-Headers",
                    "Content-Type, Authorization",
                ),
                ("Access-Control-Allow-Credentials", "true"),
            ];
            if let Some(o) = origin.as_deref() {
                extra.push(("Access-Control-Allow-Origin", o));
            }
            let keep = req.keep_alive;
            return self.respond(
                c,
                response::build(204, "text/plain", &extra, keep, b""),
                keep,
            );
        }
        let request = match classify(&req) {
            Ok(r) => r,
            Err(e) => return self.engine_error(c, e, origin.as_deref()),
        };
        match request {
            EngineRequest::Open(TransportKind::Polling) => {
                self.conns[c].requests += 1;
                let (ip, token) = self.client_identity(c, &req);
                let s = match self.open_session(Transport::Polling { get: None }, echo, ip, token) {
                    Ok(s) => s,
                    Err(r) => return self.refuse(c, r, origin.as_deref()),
                };
                let open = self.open_packet(s, true);
                let body = open.to_text();
                let keep = req.keep_alive;
                let r = polling_response(200, &body, origin.as_deref(), keep);
                self.respond(c, r, keep);
            }
            EngineRequest::Open(TransportKind::WebSocket) => {
                let Some(accept) = self.accept_websocket(c, &req, origin.as_deref()) else {
                    return;
                };
                let (ip, token) = self.client_identity(c, &req);
                let s = match self.open_session(Transport::WebSocket(c), echo, ip, token) {
                    Ok(s) => s,
                    // Refused at the handshake: an HTTP answer instead of the upgrade.
                    Err(r) => return self.refuse(c, r, origin.as_deref()),
                };
                let conn = &mut self.conns[c];
                conn.push(accept);
                conn.role = Role::WebSocket(WsState {
                    session: s,
                    probing: false,
                    assembler: MessageAssembler::default(),
                });
                let open = self.open_packet(s, false);
                self.send_engine(s, &open);
                self.mark_dirty(c);
                self.process_ws(c);
            }
            EngineRequest::Existing { sid, transport } => {
                let Some(&s) = self.sids.get(sid.as_str()) else {
                    return self.engine_error(c, EngineError::UnknownSid, origin.as_deref());
                };
                if self.sessions[s].echo != echo {
                    return self.engine_error(c, EngineError::UnknownSid, origin.as_deref());
                }
                match (transport, req.method()) {
                    (TransportKind::WebSocket, _) => {
                        self.on_upgrade_request(c, s, &req, origin.as_deref())
                    }
                    (TransportKind::Polling, Method::Get) => self.on_poll(c, s, &req, origin),
                    (TransportKind::Polling, Method::Post) => {
                        self.on_post_head(c, s, req, origin.as_deref())
                    }
                    _ => self.engine_error(c, EngineError::BadRequest, origin.as_deref()),
                }
            }
        }
    }

    fn accept_websocket(&mut self, c: usize, req: &Request, origin: Option<&str>) -> Option<Bytes> {
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
        self.conns[c].requests += 1;
        self.counters.handshakes += 1;
        let accept = handshake::accept_key(key);
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        Some(Bytes::from(head))
    }

    fn on_upgrade_request(&mut self, c: usize, s: usize, req: &Request, origin: Option<&str>) {
        let session = &self.sessions[s];
        if !matches!(session.transport, Transport::Polling { .. }) || session.probe.is_some() {
            return self.engine_error(c, EngineError::BadRequest, origin);
        }
        let Some(accept) = self.accept_websocket(c, req, origin) else {
            return;
        };
        self.sessions[s].probe = Some(c);
        let conn = &mut self.conns[c];
        conn.push(accept);
        conn.role = Role::WebSocket(WsState {
            session: s,
            probing: true,
            assembler: MessageAssembler::default(),
        });
        self.mark_dirty(c);
        self.process_ws(c);
    }

    fn on_poll(&mut self, c: usize, s: usize, req: &Request, origin: Option<String>) {
        self.conns[c].requests += 1;
        let session = &mut self.sessions[s];
        match session.transport {
            Transport::Polling { get: None } => {
                session.transport = Transport::Polling { get: Some(c) };
                self.conns[c].role = Role::Http(HttpState::PendingGet {
                    session: s,
                    origin: origin.map(String::into_boxed_str),
                });
                let _ = req;
                self.flush_polling(s);
            }
            Transport::Polling { get: Some(_) } => {
                // Two pending GETs: the reference server treats the overlap as fatal.
                self.engine_error(c, EngineError::BadRequest, origin.as_deref());
                self.close_session(s, "overlapping polls", false);
            }
            Transport::WebSocket(_) => {
                self.engine_error(c, EngineError::BadRequest, origin.as_deref())
            }
        }
    }

    fn on_post_head(&mut self, c: usize, s: usize, req: Request, origin: Option<&str>) {
        if !matches!(self.sessions[s].transport, Transport::Polling { .. }) {
            return self.engine_error(c, EngineError::BadRequest, origin);
        }
        let Some(len) = req.content_length.filter(|_| !req.chunked) else {
            return self.engine_error(c, EngineError::BadRequest, origin);
        };
        if len > self.settings.max_payload {
            self.counters.protocol_errors += 1;
            let extra = cors_headers(origin);
            self.respond_and_close(
                c,
                response::build(413, "text/plain", &extra, false, b"Payload Too Large"),
            );
            return self.close_session(s, "payload too large", true);
        }
        self.conns[c].role = Role::Http(HttpState::Body {
            req: Box::new(req),
            need: len,
        });
    }

    fn on_post_body(&mut self, c: usize, req: &Request, body: Bytes) {
        let origin = self.cors_origin(req);
        let Some(&s) = req.query("sid").and_then(|sid| self.sids.get(sid)) else {
            return self.engine_error(c, EngineError::UnknownSid, origin.as_deref());
        };
        let packets = match engineio::decode_payload(body) {
            Ok(p) => p,
            Err(_) => {
                self.counters.protocol_errors += 1;
                self.engine_error(c, EngineError::BadRequest, origin.as_deref());
                return self.close_session(s, "bad polling payload", true);
            }
        };
        let keep = req.keep_alive;
        let extra = cors_headers(origin.as_deref());
        self.respond(
            c,
            response::build(200, "text/html", &extra, keep, b"ok"),
            keep,
        );
        for p in packets {
            if !self.sessions.contains(s) {
                break;
            }
            self.on_engine_packet(s, p, None);
        }
    }

    /// The client's address (from `X-Forwarded-For` behind a trusted proxy) and the token its
    /// handshake carried: the `token` query parameter, else `Authorization: Bearer`.
    fn client_identity(&self, c: usize, req: &Request) -> (IpAddr, Option<Box<str>>) {
        let peer = self.conns[c].ip;
        let ip = if self.settings.trust_proxy {
            req.forwarded_for
                .as_deref()
                .and_then(|f| f.split(',').next())
                .and_then(|f| f.trim().parse().ok())
                .unwrap_or(peer)
        } else {
            peer
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
    fn refuse(&mut self, c: usize, r: Refusal, origin: Option<&str>) {
        let mut extra = cors_headers(origin);
        extra.push(("Retry-After", "1"));
        let body = format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}",
            r.reason(),
            r.message()
        );
        tracing::debug!(shard = self.id, reason = r.reason(), "handshake refused");
        self.respond_and_close(c, response::json(r.status(), &extra, false, &body));
    }

    pub(super) fn engine_error(&mut self, c: usize, e: EngineError, origin: Option<&str>) {
        if let Some(conn) = self.conns.get_mut(c) {
            conn.requests += 1;
        }
        let extra = cors_headers(origin);
        self.respond_and_close(
            c,
            response::engine_error(e.status(), e.code(), e.message(), &extra),
        );
    }

    pub(super) fn respond(&mut self, c: usize, bytes: Bytes, keep_alive: bool) {
        let Some(conn) = self.conns.get_mut(c) else {
            return;
        };
        conn.push(bytes);
        if !keep_alive {
            conn.closing = true;
        }
        self.mark_dirty(c);
        if keep_alive {
            // A kept-alive connection gets the same time for its next request as the first.
            self.arm_idle_timer(c);
        }
    }

    fn respond_and_close(&mut self, c: usize, bytes: Bytes) {
        self.respond(c, bytes, false);
    }

    /// Answers the session's parked GET with everything queued, in one response.
    pub(super) fn flush_polling(&mut self, s: usize) {
        let Some(session) = self.sessions.get_mut(s) else {
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
        self.answer_parked_get(c, &body);
        if self.sessions.get(s).is_some_and(|x| x.queue.is_empty()) {
            self.pay_owed_snapshots(s);
        }
    }
}

fn cors_headers(origin: Option<&str>) -> Vec<(&'static str, &str)> {
    match origin {
        Some(o) => vec![
            ("Access-Control-Allow-Origin", o),
            ("Access-Control-Allow-Credentials", "true"),
        ],
        None => Vec::new(),
    }
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

fn unsafe_into_std(stream: mio::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = stream.into_raw_fd();
    // SAFETY: `fd` was just released by the mio stream, which no longer owns it.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}
