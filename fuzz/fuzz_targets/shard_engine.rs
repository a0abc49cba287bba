//! Arbitrary sequences of operations against one shard engine, through the simulated driver:
//! connections opening, requests and frames (well-formed and not), peers closing or breaking,
//! readers that stop reading, publishes, drains and time passing. After every operation the
//! engine's invariants must hold (nothing closed left behind, rooms and sessions agree, queues
//! within their limits, input charged as held, cap slots counted once per session and TCP
//! slots once per connection), and at the end, once every connection is gone and the timeouts
//! have passed, every cap slot, room, user count and input charge is given back.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use maven_gateway::codec::websocket::encode_masked_frame;
use maven_gateway::gateway::envelope;
use maven_gateway::gateway::GatewaySettings;
use maven_gateway::http::forwarded::ProxyTrust;
use maven_gateway::limits::LimitSettings;
use maven_gateway::market::{Payload, StreamClass};
use maven_gateway::recovery::{LogEntry, Recovery, RecoverySettings};
use maven_gateway::session::sockets::App;
use maven_gateway::shard::engine::sim::{client, Sim};
use maven_gateway::shard::engine::ConnId;
use maven_gateway::shard::{Broadcast, ServerSettings, Shared};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Socket.IO and Engine.IO messages worth sending, so runs reach deep states quickly.
const MESSAGES: &[&str] = &[
    "40/ws,",
    "40",
    "40/ws,{\"pid\":\"pppppppppppppppppppp\"}",
    "42/ws,[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]",
    "42/ws,1[\"subscribe\",{\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\"}]",
    "42/ws,[\"subscribe\",{\"channel\":\"ticker\",\"symbol\":\"all\"}]",
    "42/ws,[\"unsubscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]",
    "42/ws,2[\"ping\"]",
    "41/ws,",
    "2",
    "3",
    "2probe",
    "5",
    "6",
    "1",
    "0",
    "451-/ws,[\"x\",{\"_placeholder\":true,\"num\":0}]",
    "4{",
];

const ROOMS: &[&str] = &["trades:BTCUSDT", "orderbook:BTCUSDT", "ticker:all", "trades:ETHUSDT"];

#[derive(Debug, Arbitrary)]
enum Op {
    OpenPolling { ip: u8 },
    OpenWebSocket { ip: u8, deflate: bool },
    Connect { ip: u8 },
    Poll { session: u8, conn: Option<u8> },
    Post { session: u8, messages: Vec<u8> },
    /// An Engine.IO ping with `len` bytes of data, which the server echoes in its pong.
    PostPing { session: u8, len: u16 },
    Upgrade { session: u8 },
    WsMessage { conn: u8, message: u8 },
    /// A message compressed for permessage-deflate, `repeat` times over in one message.
    WsDeflated { conn: u8, message: u8, repeat: u16 },
    WsRaw { conn: u8, opcode: u8, fin: bool, payload: Vec<u8> },
    Raw { conn: u8, bytes: Vec<u8> },
    PeerClose { conn: u8 },
    Reset { conn: u8 },
    Window { conn: u8, window: Option<u16> },
    Advance { ms: u16 },
    AdvanceToDeadline,
    /// `late`: delivered after the instance fell behind, the stream having taken it that many
    /// tens of ms ago.
    Publish { room: u8, class: u8, size: u16, retain: bool, late: Option<u16> },
    /// The instance loses the cluster stream (`true`) or has caught up again.
    Behind { on: bool },
    Drain { within_ms: u16 },
    Shutdown,
}

struct World {
    sim: Sim,
    conns: Vec<ConnId>,
    sids: Vec<String>,
    recovery: bool,
}

impl World {
    fn conn(&self, i: u8) -> Option<ConnId> {
        (!self.conns.is_empty()).then(|| self.conns[i as usize % self.conns.len()])
    }

    fn sid(&self, i: u8) -> Option<String> {
        (!self.sids.is_empty()).then(|| self.sids[i as usize % self.sids.len()].clone())
    }

    fn apply(&mut self, op: Op) {
        let ip = |n: u8| IpAddr::from([10, 0, 0, n % 4]);
        match op {
            Op::OpenPolling { ip: n } => {
                if let Some((c, sid)) = self.sim.open_polling(ip(n)) {
                    self.conns.push(c);
                    self.sids.push(sid);
                }
            }
            Op::OpenWebSocket { ip: n, deflate } => {
                if let Some((c, sid)) = self.sim.open_websocket_offering(ip(n), deflate) {
                    self.conns.push(c);
                    self.sids.push(sid);
                }
            }
            Op::Connect { ip: n } => {
                if let Some(c) = self.sim.try_connect(ip(n)) {
                    self.conns.push(c);
                }
            }
            Op::Poll { session, conn } => {
                let Some(sid) = self.sid(session) else { return };
                let c = match conn.and_then(|i| self.conn(i)) {
                    Some(c) => c,
                    None => {
                        let Some(c) = self.sim.try_connect(ip(0)) else { return };
                        self.conns.push(c);
                        c
                    }
                };
                self.sim.send(c, &client::poll(&sid));
            }
            Op::Post { session, messages } => {
                let Some(sid) = self.sid(session) else { return };
                let body: Vec<&str> = messages
                    .iter()
                    .take(40)
                    .map(|m| MESSAGES[*m as usize % MESSAGES.len()])
                    .collect();
                let Some(c) = self.sim.try_connect(ip(1)) else { return };
                self.conns.push(c);
                self.sim.send(c, &client::post(&sid, body.join("\u{1e}").as_bytes()));
            }
            Op::PostPing { session, len } => {
                let Some(sid) = self.sid(session) else { return };
                let Some(c) = self.sim.try_connect(ip(1)) else { return };
                self.conns.push(c);
                let ping = format!("2{}", "x".repeat(usize::from(len)));
                self.sim.send(c, &client::post(&sid, ping.as_bytes()));
            }
            Op::Upgrade { session } => {
                let Some(sid) = self.sid(session) else { return };
                let Some(c) = self.sim.try_connect(ip(2)) else { return };
                self.conns.push(c);
                self.sim.send(c, &client::websocket(Some(&sid)));
                self.sim.send(c, &client::text("2probe"));
                self.sim.send(c, &client::text("5"));
            }
            Op::WsMessage { conn, message } => {
                let Some(c) = self.conn(conn) else { return };
                let text = MESSAGES[message as usize % MESSAGES.len()];
                self.sim.send(c, &client::text(text));
            }
            Op::WsDeflated { conn, message, repeat } => {
                let Some(c) = self.conn(conn) else { return };
                let text = MESSAGES[message as usize % MESSAGES.len()].repeat(1 + usize::from(repeat));
                self.sim.send(c, &client::deflated_text(&text));
            }
            Op::WsRaw {
                conn,
                opcode,
                fin,
                payload,
            } => {
                let Some(c) = self.conn(conn) else { return };
                let mut frame = encode_masked_frame(fin, opcode & 0x0f, &payload, [9, 8, 7, 6], 0);
                // RSV1 too: what it means depends on what the connection negotiated.
                frame[0] |= opcode & 0x40;
                self.sim.send(c, &frame);
            }
            Op::Raw { conn, bytes } => {
                let Some(c) = self.conn(conn) else { return };
                self.sim.send(c, &bytes);
            }
            Op::PeerClose { conn } => {
                if let Some(c) = self.conn(conn) {
                    self.sim.peer_close(c);
                }
            }
            Op::Reset { conn } => {
                if let Some(c) = self.conn(conn) {
                    self.sim.reset(c);
                }
            }
            Op::Window { conn, window } => {
                if let Some(c) = self.conn(conn) {
                    self.sim.set_window(c, window.map(usize::from));
                }
            }
            Op::Advance { ms } => self.sim.advance(Duration::from_millis(u64::from(ms) * 4)),
            Op::AdvanceToDeadline => {
                self.sim.advance_to_next_deadline(Duration::from_secs(3600));
            }
            Op::Behind { on } => {
                if on {
                    self.sim.shared.catch_up.fell_behind();
                } else {
                    self.sim.shared.catch_up.caught_up();
                }
            }
            Op::Publish {
                room,
                class,
                size,
                retain,
                late,
            } => {
                let room: Arc<str> = Arc::from(ROOMS[room as usize % ROOMS.len()]);
                let class = match class % 4 {
                    0 => StreamClass::Lossless,
                    1 => StreamClass::Latest,
                    2 => StreamClass::BookDelta,
                    _ => StreamClass::BookSnapshot,
                };
                let data = Payload::Json(format!("\"{}\"", "x".repeat(size as usize)).into());
                let offset = match (&self.sim.shared.recovery, class) {
                    (Some(r), StreamClass::Lossless) if self.recovery => Some(r.next_local_offset()),
                    _ => None,
                };
                let message = envelope::encode_payload_at("trade", &room, &data, 1, offset);
                if let (Some(r), Some(offset)) = (&self.sim.shared.recovery, offset) {
                    r.log().push(LogEntry {
                        offset,
                        room: room.clone(),
                        message: message.clone(),
                        at_ms: self.sim.now.unix_ms,
                    });
                }
                let b = Broadcast {
                    room,
                    body: message,
                    class,
                    deliver: true,
                    retain: retain && class == StreamClass::Latest,
                    book: None,
                    offset,
                    appended_ms: late.map(|l| self.sim.now.unix_ms.saturating_sub(u64::from(l) * 10)),
                    tickers: None,
                    latest_key: None,
                    refresh: None,
                };
                self.sim.publish(&[b]);
            }
            Op::Drain { within_ms } => {
                self.sim.drain(1000, Duration::from_millis(u64::from(within_ms)))
            }
            Op::Shutdown => self.sim.shutdown(),
        }
    }

    fn check(&self) {
        if let Err(e) = self.sim.engine.check_invariants() {
            panic!("engine invariant broken: {e}");
        }
        let census = self.sim.engine.census();
        assert_eq!(
            self.sim.shared.limits.connections(),
            census.sessions,
            "one cap slot per live session"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(flags) = u8::arbitrary(&mut u) else { return };
    let recovery = flags & 1 != 0;
    // Small limits chosen by the input make "exactly at the limit" states easy to reach.
    let Ok(limit) = u16::arbitrary(&mut u) else { return };
    let (soft, hard) = if flags & 2 != 0 {
        (usize::from(limit) / 2, usize::from(limit))
    } else {
        (1 << 20, 8 << 20)
    };
    let settings = ServerSettings {
        engine_path: "/socket.io/".into(),
        echo_path: (flags & 4 != 0).then(|| "/engine.io/".into()),
        ping_interval: Duration::from_millis(1000),
        ping_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(3000),
        handshake_timeout: Duration::from_millis(2000),
        max_payload: if flags & 8 != 0 { 300 } else { 100_000 },
        deflate_threshold: (flags & 128 == 0).then_some(64),
        cors_origins: vec!["*".into()],
        trust_proxy: (flags & 16 != 0).then(|| ProxyTrust {
            proxies: vec!["10.0.0.0/8".parse().expect("a CIDR")],
            hops: 1,
        }),
        demo_page: false,
        outbound_soft_limit: soft,
        outbound_hard_limit: hard,
        close_linger: Duration::from_millis(5_000),
        outbound_total_limit: usize::MAX,
        work_rate_per_ip: 1000.0,
        app: if flags & 32 != 0 {
            App::Conformance
        } else {
            App::Gateway(Arc::new(GatewaySettings {
                recovery,
                ..GatewaySettings::default()
            }))
        },
    };
    let mut shared = Shared::new(LimitSettings {
        max_connections: 64,
        max_connections_per_ip: 16,
        max_connections_per_user: 4,
        handshakes_per_sec_per_ip: 1000.0,
        handshake_burst_per_ip: 1000.0,
        ..LimitSettings::default()
    });
    if recovery {
        shared.recovery = Some(Arc::new(Recovery::standalone(
            RecoverySettings {
                window_ms: 60_000,
                max_events: 256,
            },
            1_700_000_000_000,
        )));
    }
    shared.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let shards = if flags & 64 != 0 { 2 } else { 1 };
    let mut world = World {
        sim: Sim::new(settings, Arc::new(shared), shards),
        conns: Vec::new(),
        sids: Vec::new(),
        recovery,
    };
    // An exhausted input still yields ops (all zeros): stop when it is used up.
    for _ in 0..200 {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        world.apply(op);
        world.check();
    }
    // Every peer goes away and every timeout passes: nothing may be left held.
    for c in world.conns.clone() {
        world.sim.reset(c);
    }
    for _ in 0..4 {
        world.sim.advance(Duration::from_secs(60));
    }
    world.check();
    let census = world.sim.engine.census();
    assert_eq!((census.sessions, census.conns), (0, 0), "{census:?}");
    assert_eq!((census.rooms, census.subscriptions), (0, 0), "{census:?}");
    assert_eq!(world.sim.shared.limits.connections(), 0, "cap slots given back");
    assert_eq!(world.sim.shared.limits.user_connections(), 0, "user counts given back");
    assert_eq!(world.sim.shared.limits.input_buffered(), 0, "input budget given back");
    for n in 0..4 {
        assert_eq!(
            world.sim.shared.limits.tcp_connections(IpAddr::from([10, 0, 0, n])),
            0,
            "TCP connection slots given back"
        );
    }
});
