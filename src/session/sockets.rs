//! The Socket.IO layer of one Engine.IO session: namespace connections and authentication,
//! binary reassembly, the per-connection event rate, and dispatch of events to the
//! application. Pure: messages and the time in, outputs out.

use crate::auth::Identity;
use crate::codec::socketio::{BinaryAssembler, Head, Kind, Packet, PacketError};
use crate::conformance;
use crate::gateway::api::{self, Effect};
use crate::gateway::{GatewaySettings, GatewaySocket};
use crate::limits::bucket::TokenBucket;
use crate::limits::cost;
use crate::notice::{self, ApiError, ConnectRefusal, ErrorCode};
use crate::recovery::{Offset, Restored};
use crate::session::sid::new_socket_id;
use crate::session::Violation;
use crate::GATEWAY_NAMESPACE;
use serde_json::{json, Value};
use smallvec::SmallVec;
use std::sync::Arc;

/// Which application serves the namespaces.
#[derive(Debug, Clone)]
pub enum App {
    /// The exchange gateway: `/ws` carries the API, `/` accepts connections.
    Gateway(Arc<GatewaySettings>),
    /// The behaviour the official Socket.IO protocol test suite expects.
    Conformance,
}

impl App {
    fn accepts(&self, ns: &str) -> bool {
        match self {
            App::Gateway(_) => ns == "/" || ns == GATEWAY_NAMESPACE,
            App::Conformance => conformance::accepts(ns),
        }
    }
}

/// What the layer asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(Packet),
    Join(Arc<str>),
    Leave(Arc<str>),
    /// Send a fresh snapshot of this order book room, `reason: "request"`.
    Resync(Arc<str>),
    /// A socket of this user ended: its per-user connection count goes down.
    ReleaseUser(Arc<str>),
    /// A token was refused (the reason, for metrics and logs).
    AuthFailed(&'static str),
    /// The peer broke the protocol or the limits: close the session.
    Close(Violation),
    /// A `/ws` CONNECT presented a recovery session: look it up, then call
    /// `SocketLayer::finish_connect` with what may be restored.
    Restore {
        pid: Box<str>,
        offset: Option<Offset>,
    },
}

/// What the driver lends the layer for one call: the time, the token the handshake carried
/// (query, then `Authorization` header), and the per-user connection cap.
pub struct Ctx<'a> {
    pub now_ms: u64,
    pub handshake_token: Option<&'a str>,
    pub admit_user: &'a mut dyn FnMut(&Arc<str>) -> bool,
    /// Whether rooms the gateway does not hold yet may be created (its room cap).
    pub admit_rooms: &'a mut crate::gateway::api::AdmitRooms<'a>,
}

/// Refused client events in a 10 s window past which a connection is closed as abusive, as a
/// multiple of the per-second rate.
const ABUSE_WINDOW_MS: u64 = 10_000;
const ABUSE_FACTOR: f64 = 10.0;
/// Longest namespace name taken; a longer one ends the session (the gateway serves `/` and
/// `/ws`, so no real client comes near it).
const MAX_NAMESPACE: usize = 128;
/// Largest JSON a gateway packet may carry. The API's largest request (a subscribe naming a
/// thousand symbols) is a few tens of KiB, and decoding takes many times the size in memory.
const MAX_API_JSON: usize = 64 * 1024;
/// Refused CONNECTs (bad namespace, token or cap) one session may send before it is closed.
const MAX_REFUSED_CONNECTS: u32 = 10;
/// Input a session may send while a CONNECT waits for its recovery lookup (the official
/// client sends nothing before the answer).
const MAX_HELD_BYTES: usize = 16 * 1024;

/// Whether a client packet fits the connection's event rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    /// Refused: answer `RATE_LIMITED`.
    No,
    /// Refused once too often: the session is being closed.
    Closed,
}

#[derive(Debug)]
pub struct NsSocket {
    pub namespace: Box<str>,
    pub id: Box<str>,
    /// The private session id offered for connection state recovery.
    pub pid: Option<Box<str>>,
    pub gateway: Option<GatewaySocket>,
}

/// A CONNECT waiting for its recovery lookup.
#[derive(Debug)]
struct PendingConnect {
    namespace: Box<str>,
    identity: Option<Identity>,
    /// Messages that arrived while the CONNECT waited (a client need not wait for the
    /// answer), kept as they came, not decoded (a decoded packet can take many times its
    /// size): handled, in order, once the socket exists.
    held: Vec<HeldInput>,
    /// Bytes of `held`: bounded by `MAX_HELD_BYTES`.
    held_bytes: usize,
}

#[derive(Debug)]
enum HeldInput {
    Text(Box<str>),
    Binary(bytes::Bytes),
}

#[derive(Debug, Default)]
pub struct SocketLayer {
    pub sockets: SmallVec<[NsSocket; 1]>,
    binary: BinaryAssembler,
    bucket: Option<TokenBucket>,
    /// Size of the packet being handled, text and attachments (its cost grows with it).
    input_bytes: usize,
    refused_since: u64,
    refused: u32,
    connect_refusals: u32,
    /// Boxed: rare, and every session would otherwise carry its size.
    pending: Option<Box<PendingConnect>>,
}

impl SocketLayer {
    pub fn is_connected(&self) -> bool {
        !self.sockets.is_empty()
    }

    /// Every room any of this session's sockets is in.
    pub fn rooms(&self) -> impl Iterator<Item = &Arc<str>> {
        self.sockets
            .iter()
            .filter_map(|s| s.gateway.as_ref())
            .flat_map(|g| g.rooms.iter())
    }

    /// Users of this session's authenticated sockets (to release their counts at the end).
    pub fn users(&self) -> impl Iterator<Item = &Arc<str>> {
        self.sockets
            .iter()
            .filter_map(|s| s.gateway.as_ref()?.identity.as_ref())
            .chain(self.pending.iter().filter_map(|p| p.identity.as_ref()))
            .map(|i| &i.user_id)
    }

    /// The user a pending recovery authenticated as, if one is pending.
    pub fn pending_user(&self) -> Option<Option<&str>> {
        self.pending
            .as_ref()
            .map(|p| p.identity.as_ref().map(|i| &*i.user_id))
    }

    /// Completes a CONNECT that waited for `Output::Restore`: the restored socket when
    /// `restored` is given, a new one otherwise.
    pub fn finish_connect(
        &mut self,
        app: &App,
        ctx: &mut Ctx<'_>,
        restored: Option<&Restored>,
        out: &mut Vec<Output>,
    ) {
        if let Some(p) = self.pending.take() {
            self.open(
                app,
                p.namespace.into(),
                p.identity,
                None,
                restored,
                ctx,
                out,
            );
            for input in p.held {
                match input {
                    HeldInput::Text(t) => self.on_text(app, &t, ctx, out),
                    HeldInput::Binary(b) => self.on_binary(app, b, ctx, out),
                }
            }
        }
    }

    /// Keeps a message that arrived while a CONNECT waits; false when there is no such
    /// wait. Past the bound the session closes, since none of it can be handled yet.
    fn hold(&mut self, input: HeldInput, out: &mut Vec<Output>) -> bool {
        let Some(p) = self.pending.as_mut() else {
            return false;
        };
        p.held_bytes += match &input {
            HeldInput::Text(t) => t.len(),
            HeldInput::Binary(b) => b.len(),
        };
        if p.held_bytes > MAX_HELD_BYTES {
            out.push(Output::Close(Violation::EventFlood));
        } else {
            p.held.push(input);
        }
        true
    }

    /// When `on_tick` is next needed (token notices and expiries).
    pub fn next_deadline(&self, app: &App) -> Option<u64> {
        let App::Gateway(settings) = app else {
            return None;
        };
        self.sockets
            .iter()
            .filter_map(|s| s.gateway.as_ref()?.next_deadline(settings))
            .min()
    }

    pub fn on_tick(&mut self, app: &App, now_ms: u64, out: &mut Vec<Output>) {
        let App::Gateway(settings) = app else { return };
        for s in self.sockets.iter_mut() {
            let ns = s.namespace.to_string();
            let Some(g) = s.gateway.as_mut() else {
                continue;
            };
            for fx in g.on_tick(settings, now_ms) {
                out.push(effect_output(&ns, fx));
            }
        }
    }

    pub fn on_text(&mut self, app: &App, text: &str, ctx: &mut Ctx<'_>, out: &mut Vec<Output>) {
        if self.pending.is_some() && self.hold(HeldInput::Text(text.into()), out) {
            return;
        }
        if self.binary.is_waiting() {
            out.push(Output::Close(Violation::TextDuringAttachments));
            return;
        }
        let head = match Packet::decode_head(text) {
            Ok(h) => h,
            Err(_) => return out.push(Output::Close(Violation::ParseError)),
        };
        self.input_bytes = text.len();
        if matches!(app, App::Gateway(_)) && head.json.len() > MAX_API_JSON {
            return self.refuse_oversized(app, head, ctx, out);
        }
        if let Some(i) = self.out_of_tokens(app, &head, ctx.now_ms) {
            // Refused whatever it says: not worth decoding. (Were a token back by the time
            // it is charged, a dataless event would still be refused.)
            return self.answer_unread(app, i, head, "send the event again", ctx.now_ms, out);
        }
        let (packet, attachments) = match head.decode() {
            Ok(p) => p,
            Err(_) => return out.push(Output::Close(Violation::ParseError)),
        };
        // The gateway API takes no binary data: the packet is answered now and its
        // attachments are dropped as they come, so nothing waits for them.
        let started = match app {
            App::Gateway(_) if attachments > 0 => {
                self.binary.discard(attachments);
                Ok(Some(packet))
            }
            _ => self.binary.start(packet, attachments),
        };
        match started {
            Ok(Some(p)) => self.on_packet(app, p, ctx, out),
            Ok(None) => {}
            Err(_) => out.push(Output::Close(Violation::ParseError)),
        }
    }

    pub fn on_binary(
        &mut self,
        app: &App,
        data: bytes::Bytes,
        ctx: &mut Ctx<'_>,
        out: &mut Vec<Output>,
    ) {
        if self.pending.is_some() && self.hold(HeldInput::Binary(data.clone()), out) {
            return;
        }
        self.input_bytes += data.len();
        match self.binary.push(data) {
            Ok(Some(p)) => self.on_packet(app, p, ctx, out),
            Ok(None) => {}
            Err(PacketError::AttachmentsTooLarge) => {
                out.push(Output::Close(Violation::AttachmentsTooLarge))
            }
            Err(_) => out.push(Output::Close(Violation::ParseError)),
        }
    }

    /// The socket a gateway event in `head` is for, when its connection has no token for it
    /// (it will be refused `RATE_LIMITED` whatever its content).
    fn out_of_tokens(&self, app: &App, head: &Head<'_>, now_ms: u64) -> Option<usize> {
        let spent = matches!(app, App::Gateway(_))
            && matches!(head.kind, Kind::Event | Kind::BinaryEvent)
            && self.bucket.as_ref().is_some_and(|b| !b.has_token(now_ms));
        if !spent {
            return None;
        }
        self.sockets
            .iter()
            .position(|s| *s.namespace == *head.namespace)
    }

    /// A gateway packet whose JSON is over `MAX_API_JSON`, refused without decoding it: an
    /// event is answered `BAD_REQUEST` (charged like any event of its size), anything else
    /// ends the session.
    fn refuse_oversized(
        &mut self,
        app: &App,
        head: Head<'_>,
        ctx: &mut Ctx<'_>,
        out: &mut Vec<Output>,
    ) {
        let index = self
            .sockets
            .iter()
            .position(|s| *s.namespace == *head.namespace);
        let (Kind::Event | Kind::BinaryEvent, Some(i)) = (head.kind, index) else {
            if head.attachments > 0 {
                self.binary.discard(head.attachments);
            }
            return out.push(Output::Close(Violation::PacketTooLarge));
        };
        let why = format!(
            "an event of {} bytes; the gateway takes at most {MAX_API_JSON}",
            head.json.len()
        );
        self.answer_unread(app, i, head, &why, ctx.now_ms, out);
    }

    /// An event of socket `i` answered without decoding its JSON (its attachments dropped as
    /// they come): charged and rate-limited like any event, and refused `BAD_REQUEST` with
    /// `why` when the rate lets it through.
    fn answer_unread(
        &mut self,
        app: &App,
        i: usize,
        head: Head<'_>,
        why: &str,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if head.attachments > 0 {
            self.binary.discard(head.attachments);
        }
        let packet = Packet {
            kind: head.kind,
            namespace: head.namespace,
            id: head.id,
            data: None,
            attachments: Vec::new(),
        };
        if self.admit_event(app, i, &packet, now_ms, out) {
            let error = ApiError::new(ErrorCode::BadRequest, why);
            out.push(Output::Send(notice::api_error(
                &packet.namespace,
                packet.id,
                &error,
                Value::Null,
            )));
        }
    }

    fn on_packet(&mut self, app: &App, packet: Packet, ctx: &mut Ctx<'_>, out: &mut Vec<Output>) {
        if packet.namespace.len() > MAX_NAMESPACE {
            // Never echoed back: a refusal would carry the name.
            return out.push(Output::Close(Violation::NamespaceTooLong));
        }
        let index = self
            .sockets
            .iter()
            .position(|s| *s.namespace == *packet.namespace);
        match (packet.kind, index) {
            (Kind::Connect, None) => match self.take_token(app, ctx.now_ms, out) {
                Admit::Yes => self.connect(app, packet, ctx, out),
                Admit::No => {
                    self.refuse_connect(&packet.namespace, ConnectRefusal::RateLimited, out)
                }
                Admit::Closed => {}
            },
            (Kind::Connect, Some(_)) => out.push(Output::Close(Violation::SecondConnect)),
            (Kind::Disconnect, Some(i)) => {
                // Charged like an event; a refused one still leaves, which only frees state.
                if self.take_token(app, ctx.now_ms, out) == Admit::Closed {
                    return;
                }
                let s = self.sockets.remove(i);
                if let Some(g) = s.gateway {
                    out.extend(g.rooms.into_iter().map(Output::Leave));
                    if let Some(id) = g.identity {
                        out.push(Output::ReleaseUser(id.user_id));
                    }
                }
            }
            (Kind::Event | Kind::BinaryEvent, Some(i)) => {
                if self.admit_event(app, i, &packet, ctx.now_ms, out) {
                    let before = out.len();
                    self.event(app, i, packet, ctx, out);
                    let rooms = out[before..]
                        .iter()
                        .filter(|o| matches!(o, Output::Join(_) | Output::Leave(_)))
                        .count();
                    if let Some(bucket) = self.bucket.as_mut() {
                        bucket.charge(cost::event_surcharge(0, rooms), ctx.now_ms);
                    }
                }
            }
            // Acks answer server emits with an ack; the gateway never asks for one.
            (Kind::Ack | Kind::BinaryAck, Some(_)) => {}
            _ => out.push(Output::Close(Violation::NamespaceNotConnected)),
        }
    }

    /// Takes a token of the connection's event rate for a client packet (events, CONNECTs
    /// and DISCONNECTs alike, on the gateway). A connection refused again and again is closed.
    fn take_token(&mut self, app: &App, now_ms: u64, out: &mut Vec<Output>) -> Admit {
        let App::Gateway(settings) = app else {
            return Admit::Yes;
        };
        let bucket = self.bucket.get_or_insert_with(|| {
            TokenBucket::new(settings.message_rate, settings.message_burst, now_ms)
        });
        if bucket.take(now_ms) {
            bucket.charge(cost::event_surcharge(self.input_bytes, 0), now_ms);
            return Admit::Yes;
        }
        if now_ms.saturating_sub(self.refused_since) > ABUSE_WINDOW_MS {
            self.refused_since = now_ms;
            self.refused = 0;
        }
        self.refused += 1;
        if f64::from(self.refused) > settings.message_rate * ABUSE_FACTOR {
            out.push(Output::Close(Violation::EventFlood));
            return Admit::Closed;
        }
        Admit::No
    }

    /// Answers a refused CONNECT; a session that keeps being refused is closed.
    fn refuse_connect(&mut self, ns: &str, refusal: ConnectRefusal, out: &mut Vec<Output>) {
        out.push(Output::Send(notice::connect_error(ns, refusal)));
        self.connect_refusals += 1;
        if self.connect_refusals > MAX_REFUSED_CONNECTS {
            out.push(Output::Close(Violation::ConnectFlood));
        }
    }

    /// Rate-limits client events: a refused one is answered `RATE_LIMITED`, and a connection
    /// that keeps flooding is closed.
    fn admit_event(
        &mut self,
        app: &App,
        i: usize,
        packet: &Packet,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> bool {
        let App::Gateway(settings) = app else {
            return true;
        };
        match self.take_token(app, now_ms, out) {
            Admit::Yes => return true,
            Admit::Closed => return false,
            Admit::No => {}
        }
        let ns = self.sockets[i].namespace.to_string();
        let request = packet.event_name().map_or(Value::Null, |n| json!(n));
        let error = notice::rate_limited(settings.message_rate);
        out.push(Output::Send(notice::api_error(
            &ns, packet.id, &error, request,
        )));
        false
    }

    fn connect(&mut self, app: &App, packet: Packet, ctx: &mut Ctx<'_>, out: &mut Vec<Output>) {
        let ns = packet.namespace;
        if !app.accepts(&ns) {
            return self.refuse_connect(&ns, ConnectRefusal::InvalidNamespace, out);
        }
        let mut identity: Option<Identity> = None;
        if let App::Gateway(settings) = app {
            let token = match packet.data.as_ref().and_then(|d| d.get("token")) {
                Some(Value::String(t)) => Some(t.as_str()),
                // A token that is not a string is present, and invalid.
                Some(_) => Some(""),
                None => ctx.handshake_token,
            };
            if let (Some(auth), Some(token)) = (&settings.auth, token) {
                match auth.verify(token, ctx.now_ms / 1000) {
                    Ok(id) => {
                        if !(ctx.admit_user)(&id.user_id) {
                            return self.refuse_connect(&ns, ConnectRefusal::ConnectionLimit, out);
                        }
                        identity = Some(id);
                    }
                    Err(e) => {
                        out.push(Output::AuthFailed(e.reason()));
                        return self.refuse_connect(&ns, ConnectRefusal::InvalidToken, out);
                    }
                }
            }
        }
        if let App::Gateway(settings) = app {
            if settings.recovery && ns == GATEWAY_NAMESPACE {
                if let Some((pid, offset)) = recovery_claim(packet.data.as_ref()) {
                    self.pending = Some(Box::new(PendingConnect {
                        namespace: ns.into_boxed_str(),
                        identity,
                        held: Vec::new(),
                        held_bytes: 0,
                    }));
                    out.push(Output::Restore { pid, offset });
                    return;
                }
            }
        }
        self.open(app, ns, identity, packet.data, None, ctx, out);
    }

    /// Answers a CONNECT and creates the socket (new, or as `restored`).
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        app: &App,
        ns: String,
        identity: Option<Identity>,
        auth: Option<Value>,
        restored: Option<&Restored>,
        ctx: &mut Ctx<'_>,
        out: &mut Vec<Output>,
    ) {
        let now_ms = ctx.now_ms;
        let offers_recovery =
            matches!(app, App::Gateway(s) if s.recovery) && ns == GATEWAY_NAMESPACE;
        let (id, pid) = match restored {
            Some(r) => (r.sid.clone(), Some(r.pid.clone())),
            None => (new_socket_id(), offers_recovery.then(new_socket_id)),
        };
        let mut answer = json!({ "sid": id });
        if let Some(pid) = &pid {
            answer["pid"] = json!(pid);
        }
        out.push(Output::Send(Packet {
            kind: Kind::Connect,
            namespace: ns.clone(),
            id: None,
            data: Some(answer),
            attachments: Vec::new(),
        }));
        let gateway = match app {
            App::Gateway(_) => {
                if ns == GATEWAY_NAMESPACE {
                    let hello = api::connected(&id, identity.as_ref(), now_ms);
                    out.push(Output::Send(Packet::event(&ns, hello, None)));
                }
                // Both namespaces keep the identity so its per-user count is released.
                let mut g = GatewaySocket::new(identity);
                // Default channels first: the views, capped apart, are what may not fit.
                let mut rooms: Vec<Arc<str>> = restored
                    .map_or(&[][..], |r| &r.rooms[..])
                    .iter()
                    .map(|(room, _)| room.clone())
                    .collect();
                rooms.sort_by_key(|r| crate::room::Room::parse(r).view().is_some());
                // The rooms are admitted again: the caps stand between sessions, not only
                // within one. What no longer fits is not restored, and the client is told.
                let (kept, refusal) = admit_prefix(&rooms, ctx.admit_rooms);
                for room in &rooms[..kept] {
                    g.rooms.insert(room.clone());
                    out.push(Output::Join(room.clone()));
                }
                if let Some(e) = refusal {
                    let lost = &rooms[kept..];
                    out.push(Output::Send(notice::not_restored(&ns, lost, &e)));
                }
                Some(g)
            }
            App::Conformance => {
                out.push(Output::Send(conformance::on_connect(&ns, auth)));
                None
            }
        };
        self.sockets.push(NsSocket {
            namespace: ns.into_boxed_str(),
            id: id.into_boxed_str(),
            pid: pid.map(String::into_boxed_str),
            gateway,
        });
    }

    fn event(
        &mut self,
        app: &App,
        index: usize,
        packet: Packet,
        ctx: &mut Ctx<'_>,
        out: &mut Vec<Output>,
    ) {
        let socket = &mut self.sockets[index];
        let ns = socket.namespace.to_string();
        let Some(Value::Array(args)) = packet.data else {
            return;
        };
        match app {
            App::Gateway(settings) => {
                let name = match args.first() {
                    Some(Value::String(s)) => s.clone(),
                    _ => return,
                };
                let refusal = if packet.kind == Kind::BinaryEvent {
                    Some("binary payloads are not supported by the gateway API")
                } else if ns != GATEWAY_NAMESPACE {
                    Some("the gateway API is on namespace /ws")
                } else {
                    None
                };
                if let Some(message) = refusal {
                    let error = ApiError::new(ErrorCode::BadRequest, message);
                    out.push(Output::Send(notice::api_error(
                        &ns,
                        packet.id,
                        &error,
                        Value::Null,
                    )));
                    return;
                }
                let Some(gw) = socket.gateway.as_mut() else {
                    return;
                };
                let fxs = api::on_event(
                    settings,
                    gw,
                    &name,
                    &args[1..],
                    packet.id,
                    ctx.now_ms,
                    ctx.admit_rooms,
                );
                for fx in fxs {
                    out.push(effect_output(&ns, fx));
                }
            }
            App::Conformance => {
                let answer = conformance::on_event(&ns, args, packet.id, packet.attachments);
                out.extend(answer.map(Output::Send));
            }
        }
    }
}

/// The `pid` and `offset` a reconnecting socket.io client sends in its CONNECT payload. A
/// malformed claim is no claim: the client gets a new session.
fn recovery_claim(auth: Option<&Value>) -> Option<(Box<str>, Option<Offset>)> {
    let auth = auth?;
    let pid = auth
        .get("pid")?
        .as_str()
        .filter(|p| !p.is_empty() && p.len() <= 64)?;
    let offset = match auth.get("offset") {
        None | Some(Value::Null) => None,
        Some(Value::String(o)) => Some(Offset::parse(o)?),
        Some(_) => return None,
    };
    Some((pid.into(), offset))
}

fn effect_output(ns: &str, fx: Effect) -> Output {
    match fx {
        Effect::Emit(v) => Output::Send(Packet::event(ns, v, None)),
        Effect::Ack(id, v) => ack(ns, id, v, Vec::new()),
        Effect::Join(r) => Output::Join(r),
        Effect::Leave(r) => Output::Leave(r),
        Effect::Resync(r) => Output::Resync(r),
    }
}

fn ack(ns: &str, id: u64, args: Value, attachments: Vec<bytes::Bytes>) -> Output {
    Output::Send(Packet {
        kind: Kind::Ack,
        namespace: ns.to_owned(),
        id: Some(id),
        data: Some(args),
        attachments,
    })
}

/// How many of `rooms`, in order, the caps admit (the longest admitted prefix: admitting
/// more never turns a refusal into an admission), and why the rest were refused.
fn admit_prefix(
    rooms: &[Arc<str>],
    admit: &mut crate::gateway::api::AdmitRooms<'_>,
) -> (usize, Option<crate::notice::ApiError>) {
    let refusal = match admit(rooms) {
        Ok(()) => return (rooms.len(), None),
        Err(e) => e,
    };
    let (mut ok, mut refused) = (0, rooms.len());
    while refused - ok > 1 {
        let mid = (ok + refused) / 2;
        if admit(&rooms[..mid]).is_ok() {
            ok = mid;
        } else {
            refused = mid;
        }
    }
    (ok, Some(refusal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_call(layer: &mut SocketLayer, app: &App, text: &str, now: u64, out: &mut Vec<Output>) {
        let mut admit = |_: &Arc<str>| true;
        let mut ctx = Ctx {
            now_ms: now,
            handshake_token: None,
            admit_user: &mut admit,
            admit_rooms: &mut |_| Ok(()),
        };
        layer.on_text(app, text, &mut ctx, out);
    }

    fn text(p: &Packet) -> String {
        let mut b = bytes::BytesMut::new();
        p.encode(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn gateway_connect_then_subscribe() {
        let app = App::Gateway(Arc::new(GatewaySettings::default()));
        let mut layer = SocketLayer::default();
        let mut out = Vec::new();
        ctx_call(&mut layer, &app, "0/ws,", 5, &mut out);
        assert_eq!(out.len(), 2);
        let Output::Send(p) = &out[1] else { panic!() };
        assert!(text(p).starts_with("2/ws,[\"connected\",{\"socketId\":"));
        out.clear();
        ctx_call(
            &mut layer,
            &app,
            "2/ws,1[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]",
            5,
            &mut out,
        );
        assert_eq!(out[0], Output::Join(Arc::from("trades:BTCUSDT")));
        let Output::Send(p) = &out[1] else { panic!() };
        assert_eq!(text(p), "3/ws,1[{\"ok\":true,\"channel\":\"trades\",\"rooms\":[\"trades:BTCUSDT\"],\"symbol\":\"BTCUSDT\"}]");
        assert_eq!(layer.rooms().count(), 1);
        out.clear();
        ctx_call(&mut layer, &app, "1/ws,", 5, &mut out);
        assert_eq!(out, vec![Output::Leave(Arc::from("trades:BTCUSDT"))]);
    }

    #[test]
    fn invalid_namespace_and_packets() {
        let app = App::Gateway(Arc::new(GatewaySettings::default()));
        let mut layer = SocketLayer::default();
        let mut out = Vec::new();
        ctx_call(&mut layer, &app, "0/admin,", 0, &mut out);
        let Output::Send(p) = &out[0] else { panic!() };
        assert_eq!(text(p), "4/admin,{\"message\":\"Invalid namespace\"}");
        for bad in ["abc", "2{}", "2abc[]", "2/ws,[\"x\"]"] {
            out.clear();
            ctx_call(&mut layer, &app, bad, 0, &mut out);
            assert!(matches!(out[0], Output::Close(_)), "{bad}");
        }
    }

    #[test]
    fn conformance_echoes_binary_acks() {
        let app = App::Conformance;
        let mut layer = SocketLayer::default();
        let mut out = Vec::new();
        ctx_call(&mut layer, &app, "0{\"token\":\"t\"}", 0, &mut out);
        let Output::Send(p) = &out[1] else { panic!() };
        assert_eq!(text(p), "2[\"auth\",{\"token\":\"t\"}]");
        out.clear();
        ctx_call(
            &mut layer,
            &app,
            "51-4[\"message-with-ack\",{\"_placeholder\":true,\"num\":0}]",
            0,
            &mut out,
        );
        assert!(out.is_empty());
        let mut admit = |_: &Arc<str>| true;
        let mut ctx = Ctx {
            now_ms: 0,
            handshake_token: None,
            admit_user: &mut admit,
            admit_rooms: &mut |_| Ok(()),
        };
        layer.on_binary(
            &app,
            bytes::Bytes::from_static(&[1, 2, 3]),
            &mut ctx,
            &mut out,
        );
        let Output::Send(p) = &out[0] else { panic!() };
        assert_eq!(text(p), "61-4[{\"_placeholder\":true,\"num\":0}]");
        assert_eq!(&p.attachments[0][..], &[1, 2, 3]);
    }
}
