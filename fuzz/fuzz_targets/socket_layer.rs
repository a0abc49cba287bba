//! Arbitrary sequences of Engine.IO messages into one session's SocketLayer, for both
//! applications, with and without JWT authentication. It must never panic, every packet it
//! sends must decode as what it meant, the rooms it joins and leaves must match the rooms it
//! reports, and every user it admits is released exactly once.
//!
//! Input: one settings byte, then steps separated by 0xFF (which UTF-8 never holds), so seeds
//! and crashes read as the packets they are. A step is, by its first byte:
//!   a digit        a text message (a Socket.IO packet), e.g. `0/ws,`
//!   `T`<text>      a text message of any text
//!   `B`<bytes>     a binary message (an attachment)
//!   `K`            the driver's timer: clock to the next deadline (if before 2100), on_tick
//!   `+`<digits>    the clock moves forward by that many ms
//!   `J`<claims>    CONNECT /ws with `{"token": <HS256 JWT of these claim bytes>}`
//!   `A`<claims>    `auth` event on /ws (ack 9) with a JWT of these claim bytes
//!   `H`<claims>    the handshake token for later steps is a JWT of these claim bytes
//!   `h`            no handshake token
//!   `N`            the per-user connection cap flips between admitting and refusing
//! Settings byte bits: 1 symbol allow-list, 2 max two subscriptions, 4 JWT auth (secret
//! `fuzz-secret`, leeway 5 s, user claim `sub`), 8 one event per second (burst 2), 16
//! connection state recovery (a CONNECT `{"pid":"r…"}` finds a session, any other pid none).
#![no_main]

#[path = "../common/json.rs"]
mod json;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use jsonwebtoken::{crypto::sign, Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use maven_gateway::auth::{Authenticator, KeySource};
use maven_gateway::codec::socketio::{Kind, Packet};
use maven_gateway::gateway::GatewaySettings;
use maven_gateway::recovery::{Offset, Restored};
use maven_gateway::room::Symbols;
use maven_gateway::session::sockets::{App, Ctx, Output, SocketLayer};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const SECRET: &str = "fuzz-secret";
/// The clock starts at a realistic wall time (ms): 2023-11-14.
const START_MS: u64 = 1_700_000_000_000;
/// `K` does not jump the clock past 2100-01-01.
const LAST_MS: u64 = 4_102_444_800_000;

/// An HS256 JWT whose payload is exactly `claims` (any bytes), signed with SECRET.
fn jwt(claims: &[u8]) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"HS256"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims);
    let message = format!("{head}.{body}");
    let sig = sign(message.as_bytes(), &EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256)
        .expect("HS256 signing cannot fail");
    format!("{message}.{sig}")
}

fn encode(p: &Packet) -> String {
    let mut b = BytesMut::new();
    p.encode(&mut b);
    String::from_utf8(b.to_vec()).expect("encoder writes UTF-8")
}

/// Every packet the layer sends must decode (as a client would) to what it meant.
fn check_sent(p: &Packet) {
    let text = encode(p);
    match Packet::decode(&text) {
        Ok((mut back, n)) => {
            assert_eq!(n, p.attachments.len(), "{text}");
            back.attachments = p.attachments.clone();
            let kind = match (p.kind, p.attachments.is_empty()) {
                (Kind::Event, false) => Kind::BinaryEvent,
                (Kind::Ack, false) => Kind::BinaryAck,
                (k, _) => k,
            };
            assert_eq!(back.kind, kind, "{text}");
            assert_eq!(back.namespace, p.namespace, "{text}");
            assert_eq!(back.id, p.id, "{text}");
            match (&back.data, &p.data) {
                (Some(a), Some(b)) => assert!(json::json_eq(a, b), "{text}"),
                (None, None) => {}
                _ => panic!("data lost: {text}"),
            }
        }
        // The layer echoes client JSON inside its own envelope, which can push a payload
        // that was just under serde_json's recursion limit over it.
        Err(_) if p.data.as_ref().is_some_and(|d| json::depth(d) > 120) => {}
        Err(e) => panic!("sent packet {text:?} does not decode: {e}"),
    }
}

struct Session {
    layer: SocketLayer,
    rooms: HashSet<Arc<str>>,
    /// Users admitted by the driver's cap and not yet released.
    admitted: HashMap<Arc<str>, usize>,
    now_ms: u64,
    handshake_token: Option<String>,
    admit: bool,
}

impl Session {
    fn new() -> Session {
        Session {
            layer: SocketLayer::default(),
            rooms: HashSet::new(),
            admitted: HashMap::new(),
            now_ms: START_MS,
            handshake_token: None,
            admit: true,
        }
    }

    /// Calls the layer with this session's time and handshake token, and a per-user cap
    /// that admits as `self.admit` says; counts the users it admitted.
    fn with_ctx(&mut self, f: impl FnOnce(&mut SocketLayer, &mut Ctx<'_>)) {
        let mut asked: Vec<Arc<str>> = Vec::new();
        {
            let admit = self.admit;
            let mut admit_user = |user: &Arc<str>| {
                asked.push(user.clone());
                admit
            };
            let mut ctx = Ctx {
                now_ms: self.now_ms,
                handshake_token: self.handshake_token.as_deref(),
                admit_user: &mut admit_user,
                admit_rooms: &mut |_| Ok(()),
            };
            f(&mut self.layer, &mut ctx);
        }
        if self.admit {
            for user in asked {
                *self.admitted.entry(user).or_default() += 1;
            }
        }
    }

    fn step(&mut self, app: &App, step: &[u8]) {
        let Some((&tag, rest)) = step.split_first() else {
            return;
        };
        enum Call {
            Text(String),
            Binary(Bytes),
            Tick,
        }
        let call = match tag {
            b'0'..=b'9' => Call::Text(String::from_utf8_lossy(step).into_owned()),
            b'T' => Call::Text(String::from_utf8_lossy(rest).into_owned()),
            b'B' => Call::Binary(Bytes::copy_from_slice(rest)),
            b'K' => {
                if let Some(d) = self.layer.next_deadline(app) {
                    if d <= LAST_MS {
                        self.now_ms = self.now_ms.max(d);
                    }
                }
                Call::Tick
            }
            b'+' => {
                let ms = std::str::from_utf8(rest).ok().and_then(|s| s.parse::<u64>().ok());
                self.now_ms = (self.now_ms + ms.unwrap_or(1000).min(LAST_MS)).min(LAST_MS);
                return;
            }
            b'J' => Call::Text(format!("0/ws,{{\"token\":\"{}\"}}", jwt(rest))),
            b'A' => Call::Text(format!("2/ws,9[\"auth\",{{\"token\":\"{}\"}}]", jwt(rest))),
            b'H' => {
                self.handshake_token = Some(jwt(rest));
                return;
            }
            b'h' => {
                self.handshake_token = None;
                return;
            }
            b'N' => {
                self.admit = !self.admit;
                return;
            }
            _ => return,
        };

        let mut out = Vec::new();
        self.with_ctx(|layer, ctx| match call {
            Call::Text(t) => layer.on_text(app, &t, ctx, &mut out),
            Call::Binary(b) => layer.on_binary(app, b, ctx, &mut out),
            Call::Tick => layer.on_tick(app, ctx.now_ms, &mut out),
        });
        let mut i = 0;
        while i < out.len() {
            let o = out[i].clone();
            i += 1;
            match &o {
                Output::Send(p) => check_sent(p),
                Output::Join(r) => assert!(self.rooms.insert(r.clone()), "joined {r} twice"),
                Output::Leave(r) => assert!(self.rooms.remove(r), "left {r} without joining"),
                Output::Resync(r) => assert!(self.rooms.contains(r), "resynced {r} unjoined"),
                Output::ReleaseUser(user) => {
                    let n = self.admitted.get_mut(user).filter(|n| **n > 0);
                    *n.unwrap_or_else(|| panic!("released {user} more often than admitted")) -= 1;
                }
                Output::AuthFailed(_) | Output::Close(_) => {}
                // The driver's lookup: a pid starting with `r` finds a session with one room.
                Output::Restore { pid, offset } => {
                    let restored = pid.starts_with('r').then(|| Restored {
                        sid: "restored-socket-id".into(),
                        pid: pid.to_string(),
                        rooms: vec![(Arc::from("trades:BTCUSDT"), Offset::ZERO)],
                        replay: Vec::new(),
                        skip_until: *offset,
                    });
                    let mut more = Vec::new();
                    self.with_ctx(|layer, ctx| {
                        layer.finish_connect(app, ctx, restored.as_ref(), &mut more)
                    });
                    out.extend(more);
                }
            }
        }
        let reported: HashSet<Arc<str>> = self.layer.rooms().cloned().collect();
        assert_eq!(reported, self.rooms, "rooms reported differ from joins and leaves");
        assert_eq!(self.layer.is_connected(), !self.layer.sockets.is_empty());
        let mut users: HashMap<Arc<str>, usize> = HashMap::new();
        for user in self.layer.users() {
            *users.entry(user.clone()).or_default() += 1;
        }
        self.admitted.retain(|_, n| *n > 0);
        assert_eq!(users, self.admitted, "admitted users differ from the sockets' users");
        if matches!(app, App::Conformance) {
            assert!(self.rooms.is_empty());
        }
    }
}

fn run(app: &App, steps: &[&[u8]]) {
    let mut s = Session::new();
    for step in steps {
        s.step(app, step);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setting, rest)) = data.split_first() else {
        return;
    };
    let steps: Vec<&[u8]> = rest.split(|&b| b == 0xFF).take(256).collect();
    let mut settings = GatewaySettings {
        symbols: Arc::new(if setting & 1 != 0 {
            Symbols::new(&["BTCUSDT".into(), "ETHUSDT".into()], false)
        } else {
            Symbols::any()
        }),
        max_subscriptions: if setting & 2 != 0 { 2 } else { 1024 },
        ..GatewaySettings::default()
    };
    if setting & 4 != 0 {
        settings.auth = Some(Arc::new(
            Authenticator::new(KeySource::Secret(SECRET.into()), None, None, 5, "sub")
                .expect("HS256 authenticator"),
        ));
    }
    if setting & 8 != 0 {
        settings.message_rate = 1.0;
        settings.message_burst = 2.0;
    }
    settings.recovery = setting & 16 != 0;
    run(&App::Gateway(Arc::new(settings)), &steps);
    run(&App::Conformance, &steps);
    if setting != 0 {
        run(&App::Gateway(Arc::new(GatewaySettings::default())), &steps);
    }
});
