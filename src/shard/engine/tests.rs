//! The engine driven in-process by `sim::Sim`: whole protocol exchanges with the clock moved
//! by hand, no sockets, no sleeps.

use super::outbound::ITEM_COST;
use super::sim::{client, Sim};
use super::ConnId;
use crate::codec::WireMessage;
use crate::gateway::GatewaySettings;
use crate::limits::LimitSettings;
use crate::market::{Payload, Publish, StreamClass};
use crate::recovery::{LogEntry, Offset, Recovery, RecoverySettings};
use crate::session::sockets::App;
use crate::shard::handle::Broadcast;
use crate::shard::{ServerSettings, Shared};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

fn settings() -> ServerSettings {
    ServerSettings {
        engine_path: "/socket.io/".into(),
        echo_path: None,
        ping_interval: Duration::from_millis(25_000),
        ping_timeout: Duration::from_millis(20_000),
        connect_timeout: Duration::from_millis(45_000),
        handshake_timeout: Duration::from_millis(10_000),
        max_payload: 1_000_000,
        deflate_threshold: Some(200),
        cors_origins: Vec::new(),
        trust_proxy: None,
        demo_page: false,
        outbound_soft_limit: 1 << 20,
        outbound_hard_limit: 8 << 20,
        close_linger: Duration::from_millis(5_000),
        outbound_total_limit: usize::MAX,
        work_rate_per_ip: 1000.0,
        app: App::Gateway(Arc::new(GatewaySettings {
            recovery: true,
            ..GatewaySettings::default()
        })),
    }
}

fn shared(recovery: bool) -> Arc<Shared> {
    let mut shared = Shared::new(LimitSettings::default());
    if recovery {
        shared.recovery = Some(Arc::new(Recovery::standalone(
            RecoverySettings {
                window_ms: 120_000,
                max_events: 1000,
            },
            1_700_000_000_000,
        )));
    }
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Arc::new(shared)
}

fn sim() -> Sim {
    Sim::new(settings(), shared(false), 1)
}

/// The polling response bodies `c` received, as text.
fn bodies(sim: &mut Sim, c: ConnId) -> Vec<(u16, String)> {
    let got = sim.take(c);
    client::responses(&got)
        .0
        .into_iter()
        .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
        .collect()
}

/// An event to a room, encoded as ingest encodes it, at time 1.
fn broadcast(room: &str, event: &str, data: Payload, class: StreamClass) -> Publish {
    Publish::new(Arc::from(room), event, data, class)
}

fn trade_with(room: &str, data: Payload) -> Broadcast {
    broadcast(room, "trade", data, StreamClass::Lossless).encode(1, None)
}

fn trade(room: &str, n: u64, offset: Option<Offset>) -> Broadcast {
    let data = Payload::Json(format!("{{\"tradeId\":{n}}}").into());
    Publish {
        offset,
        ..broadcast(room, "trade", data, StreamClass::Lossless)
    }
    .encode(1, None)
}

/// A WebSocket client connected to `/ws` and subscribed to `trades:BTCUSDT`.
fn subscribed_websocket(sim: &mut Sim) -> ConnId {
    let (c, _) = sim.open_websocket(CLIENT).expect("websocket handshake");
    sim.send(c, &client::text("40/ws,"));
    sim.send(
        c,
        &client::text("42/ws,1[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]"),
    );
    let texts = client::texts(&sim.take(c));
    assert!(texts[0].starts_with("40/ws,{\"sid\":"), "{texts:?}");
    assert!(texts[1].starts_with("42/ws,[\"connected\""), "{texts:?}");
    assert!(texts[2].starts_with("43/ws,1[{\"ok\":true"), "{texts:?}");
    c
}

#[test]
fn polling_handshake_connect_and_poll() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).expect("handshake");
    assert_eq!(sid.len(), 20);
    sim.send(c, &client::post(&sid, b"40/ws,"));
    assert_eq!(bodies(&mut sim, c), vec![(200, "ok".to_owned())]);
    sim.send(c, &client::poll(&sid));
    let got = bodies(&mut sim, c);
    assert_eq!(got.len(), 1);
    let packets: Vec<&str> = got[0].1.split('\u{1e}').collect();
    assert!(packets[0].starts_with("40/ws,{\"sid\":"), "{packets:?}");
    assert!(
        packets[1].starts_with("42/ws,[\"connected\""),
        "{packets:?}"
    );
    assert_eq!(sim.shared.limits.connections(), 1);
}

#[test]
fn a_parked_poll_is_answered_by_the_next_packet() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    sim.send(c, &client::poll(&sid));
    assert!(
        bodies(&mut sim, c).is_empty(),
        "nothing to send: the GET waits"
    );
    let post = sim.connect(CLIENT);
    sim.send(post, &client::post(&sid, b"40"));
    assert_eq!(bodies(&mut sim, post), vec![(200, "ok".to_owned())]);
    let got = bodies(&mut sim, c);
    assert_eq!(got.len(), 1);
    assert!(got[0].1.starts_with("40{\"sid\":"), "{got:?}");
}

#[test]
fn websocket_subscriber_gets_each_publish_once() {
    let mut sim = sim();
    let c = subscribed_websocket(&mut sim);
    sim.publish(&[
        trade("trades:BTCUSDT", 1, None),
        trade("trades:ETHUSDT", 2, None),
    ]);
    let texts = client::texts(&sim.take(c));
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("\"tradeId\":1"));
}

#[test]
fn upgrade_moves_the_session_to_the_websocket() {
    let mut sim = sim();
    let (poll, sid) = sim.open_polling(CLIENT).unwrap();
    sim.send(poll, &client::post(&sid, b"40/ws,"));
    sim.take(poll);
    sim.send(poll, &client::poll(&sid));
    assert_eq!(bodies(&mut sim, poll).len(), 1, "connect answer");
    sim.send(poll, &client::poll(&sid));
    let ws = sim.connect(CLIENT);
    sim.send(ws, &client::websocket(Some(&sid)));
    sim.send(ws, &client::text("2probe"));
    let (resp, rest) = client::responses(&sim.take(ws));
    assert_eq!(resp[0].0, 101);
    assert_eq!(client::texts(&rest), vec!["3probe"]);
    assert_eq!(
        bodies(&mut sim, poll),
        vec![(200, "6".to_owned())],
        "noop frees the poll"
    );
    sim.send(ws, &client::text("5"));
    sim.send(
        ws,
        &client::text("42/ws,[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]"),
    );
    sim.take(ws);
    sim.publish(&[trade("trades:BTCUSDT", 9, None)]);
    let texts = client::texts(&sim.take(ws));
    assert!(
        texts.iter().any(|t| t.contains("\"tradeId\":9")),
        "{texts:?}"
    );
    assert!(bodies(&mut sim, poll).is_empty(), "nothing more on polling");
}

#[test]
fn a_silent_client_is_pinged_then_timed_out_and_released() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.advance(Duration::from_millis(25_000));
    assert_eq!(client::texts(&sim.take(c)), vec!["2"]);
    sim.advance(Duration::from_millis(19_999));
    assert!(sim.is_open(c));
    sim.advance(Duration::from_millis(1));
    assert!(!sim.is_open(c), "closed at the ping timeout");
    assert_eq!(sim.shared.limits.connections(), 0, "cap slot released");
    assert_eq!(sim.engine.census().sessions, 0);
}

#[test]
fn a_pong_keeps_the_session() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.take(c);
    for _ in 0..5 {
        // The next ping is due a full interval after the open or the last pong.
        sim.advance(Duration::from_millis(24_999));
        assert!(client::texts(&sim.take(c)).is_empty());
        sim.advance(Duration::from_millis(1));
        assert_eq!(client::texts(&sim.take(c)), vec!["2"]);
        sim.advance(Duration::from_millis(10_000));
        sim.send(c, &client::text("3"));
    }
    assert!(sim.is_open(c));
}

/// The remotely triggerable shard panic of the reactor before the engine: a polling session
/// whose queue is exactly at the hard limit is tipped over by the server's next heartbeat
/// ping, dropped as a slow consumer inside the heartbeat handler, and the handler then touched
/// the removed session. (Then an echoed client ping filled the queue; the trade here does.)
#[test]
fn heartbeat_ping_that_overflows_a_polling_queue_ends_only_that_session() {
    let hard = 4096;
    let mut s = settings();
    s.ping_interval = Duration::from_millis(1000);
    s.outbound_soft_limit = hard;
    s.outbound_hard_limit = hard;
    let mut sim = Sim::new(s, shared(false), 1);
    let (bystander, _) = sim.open_websocket(CLIENT).unwrap();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    let subscribe = "42/ws,[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]";
    sim.send(
        c,
        &client::post(&sid, format!("40/ws,\u{1e}{subscribe}").as_bytes()),
    );
    sim.send(c, &client::poll(&sid));
    assert_eq!(
        bodies(&mut sim, c).len(),
        2,
        "the POST's ok and the answers"
    );
    // A trade that fills the queue to exactly the hard limit: not over it.
    let size = |pad: usize| {
        let data = Payload::Json(format!("\"{}\"", "x".repeat(pad)).into());
        let b = trade_with("trades:BTCUSDT", data);
        (b.body.polling().len() + ITEM_COST, b)
    };
    let pad = (0..hard).find(|p| size(*p).0 == hard).unwrap();
    sim.publish(&[size(pad).1]);
    assert_eq!(sim.engine.census().sessions, 2);
    sim.advance(Duration::from_millis(1000));
    assert_eq!(
        sim.engine.census().sessions,
        1,
        "the overflowing session is gone"
    );
    assert_eq!(
        sim.shared.limits.connections(),
        1,
        "and its cap slot released"
    );
    assert_eq!(
        client::texts(&sim.take(bystander)),
        vec!["2"],
        "others carry on"
    );
    sim.send(c, &client::poll(&sid));
    assert_eq!(bodies(&mut sim, c)[0].0, 400, "the sid is unknown now");
}

#[test]
fn a_slow_websocket_reader_is_dropped_past_the_hard_limit() {
    let mut s = settings();
    s.outbound_soft_limit = 4096;
    s.outbound_hard_limit = 16_384;
    let mut sim = Sim::new(s, shared(false), 1);
    let fast = subscribed_websocket(&mut sim);
    let slow = subscribed_websocket(&mut sim);
    sim.set_window(slow, Some(0));
    let mut n = 0;
    while sim.engine.census().sessions == 2 && n < 1000 {
        n += 1;
        sim.publish(&[trade("trades:BTCUSDT", n, None)]);
    }
    assert!(
        n > 100 && n < 1000,
        "dropped past the hard limit, after {n} trades"
    );
    let fast_got = client::texts(&sim.take(fast));
    assert_eq!(fast_got.len() as u64, n, "the fast reader got every trade");
    // What the slow reader gets once it reads: its backlog, the notice, then the close.
    sim.set_window(slow, None);
    let tail = client::texts(&sim.take(slow));
    assert!(
        tail.iter().any(|t| t.contains("SLOW_CONSUMER")),
        "{:?}",
        &tail[tail.len().saturating_sub(3)..]
    );
    assert!(!sim.is_open(slow));
    let census = sim.engine.census();
    assert_eq!((census.sessions, census.subscriptions), (1, 1));
}

#[test]
fn drain_notifies_writes_and_closes() {
    let mut sim = sim();
    let c = subscribed_websocket(&mut sim);
    sim.drain(1500, Duration::from_millis(10_000));
    let texts = client::texts(&sim.take(c));
    assert_eq!(
        texts,
        vec!["42/ws,[\"server.shutdown\",{\"reconnectAfterMs\":1500}]"]
    );
    sim.advance(Duration::from_millis(60));
    let frames = client::frames(&sim.take(c));
    assert_eq!(frames[0], (1, b"1".to_vec()), "Engine.IO close");
    assert_eq!(frames[1].0, 8, "then a WebSocket close");
    assert!(sim.engine.is_stopped());
    assert!(!sim.is_open(c));
}

#[test]
fn new_sessions_are_refused_while_draining() {
    let mut sim = sim();
    let (_c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.drain(1000, Duration::from_secs(10));
    let c = sim.connect(CLIENT);
    sim.send(c, &client::polling_open());
    let got = bodies(&mut sim, c);
    assert_eq!(got[0].0, 503);
    assert!(got[0].1.contains("DRAINING"));
}

#[test]
fn a_session_that_joins_no_namespace_is_closed_at_the_connect_timeout() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.advance(Duration::from_millis(44_999));
    sim.take(c);
    sim.send(c, &client::text("3"));
    sim.advance(Duration::from_millis(1));
    let frames = client::frames(&sim.take(c));
    assert_eq!(frames[0], (1, b"1".to_vec()));
    assert!(!sim.is_open(c));
}

#[test]
fn a_connection_that_sends_no_request_is_closed_at_the_handshake_timeout() {
    let mut sim = sim();
    let c = sim.connect(CLIENT);
    sim.send(c, b"GET /health HTTP/1.1\r\n");
    sim.advance(Duration::from_millis(9_999));
    assert!(sim.is_open(c));
    sim.advance(Duration::from_millis(1));
    assert!(!sim.is_open(c));
}

#[test]
fn recovery_gives_back_the_socket_its_rooms_and_what_it_missed() {
    let shared = shared(true);
    let mut sim = Sim::new(settings(), shared.clone(), 1);
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.send(
        c,
        &client::text("42/ws,1[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]"),
    );
    let texts = client::texts(&sim.take(c));
    let answer: serde_json::Value = serde_json::from_str(&texts[0]["40/ws,".len()..]).unwrap();
    let (sid, pid) = (
        answer["sid"].as_str().unwrap(),
        answer["pid"].as_str().unwrap(),
    );
    let rec = shared.recovery.as_ref().unwrap();
    let publish = |sim: &mut Sim, n: u64| {
        let offset = rec.next_local_offset();
        let b = trade("trades:BTCUSDT", n, Some(offset));
        rec.log().push(LogEntry {
            offset,
            room: b.room.clone(),
            message: b.body.clone(),
            at_ms: sim.now.unix_ms,
        });
        sim.publish(&[b]);
        offset
    };
    let first = publish(&mut sim, 1);
    assert_eq!(client::texts(&sim.take(c)).len(), 1);
    sim.reset(c);
    assert_eq!(sim.records_saved, 1, "the lost socket left its record");
    publish(&mut sim, 2);
    publish(&mut sim, 3);
    let (c2, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(
        c2,
        &client::text(&format!(
            "40/ws,{{\"pid\":\"{pid}\",\"offset\":\"{first}\"}}"
        )),
    );
    let texts = client::texts(&sim.take(c2));
    assert_eq!(
        texts[0],
        format!("40/ws,{{\"sid\":\"{sid}\",\"pid\":\"{pid}\"}}"),
        "the same socket id"
    );
    let replayed: Vec<&String> = texts.iter().filter(|t| t.contains("\"trade\"")).collect();
    assert_eq!(replayed.len(), 2, "{texts:?}");
    assert!(replayed[0].contains("\"tradeId\":2") && replayed[1].contains("\"tradeId\":3"));
    publish(&mut sim, 4);
    assert!(
        client::texts(&sim.take(c2))[0].contains("\"tradeId\":4"),
        "back in its room"
    );
}

#[test]
fn a_request_for_another_shards_session_is_handed_over_with_its_bytes() {
    let mut sim = Sim::new(settings(), shared(false), 2);
    let c = sim.connect(CLIENT);
    let sid = format!("01{}", "a".repeat(18));
    sim.send(c, &client::poll(&sid));
    assert_eq!(sim.handed_off, 1);
    assert!(!sim.is_open(c));
    assert_eq!(sim.engine.census().conns, 0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut sim = sim();
    let c = sim.connect(CLIENT);
    let mut two = client::get("/health", "");
    two.extend(client::get("/nowhere", ""));
    sim.send(c, &two);
    let got = bodies(&mut sim, c);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![200, 404]
    );
}

#[test]
fn closing_a_session_twice_in_one_call_is_harmless() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    sim.send(c, &client::poll(&sid));
    // A close packet, then more packets for the closed session, in one body.
    let post = sim.connect(CLIENT);
    sim.send(post, &client::post(&sid, b"1\x1e2\x1e40/ws,"));
    assert_eq!(bodies(&mut sim, post), vec![(200, "ok".to_owned())]);
    assert_eq!(bodies(&mut sim, c), vec![(200, "6".to_owned())]);
    assert_eq!(sim.engine.census().sessions, 0);
    assert_eq!(sim.shared.limits.connections(), 0);
}

#[test]
fn publishes_reach_polling_sessions_through_their_poll() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    sim.send(
        c,
        &client::post(
            &sid,
            b"40/ws,\x1e42/ws,[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]",
        ),
    );
    sim.send(c, &client::poll(&sid));
    sim.take(c);
    sim.send(c, &client::poll(&sid));
    let m: WireMessage = trade("trades:BTCUSDT", 5, None).body;
    sim.publish(&[trade("trades:BTCUSDT", 5, None)]);
    let got = bodies(&mut sim, c);
    assert_eq!(
        got,
        vec![(200, String::from_utf8(m.polling().to_vec()).unwrap())]
    );
}

#[test]
fn a_client_that_pipelines_and_never_reads_holds_one_response() {
    let mut sim = sim();
    let c = sim.connect(CLIENT);
    sim.set_window(c, Some(0));
    let many: Vec<u8> = (0..2000).flat_map(|_| client::get("/health", "")).collect();
    sim.send(c, &many);
    assert!(sim.engine.outbound_bytes() < 200, "one response queued");
    assert!(
        sim.unread(c) > many.len() / 2,
        "the rest is left in the socket"
    );
    // Once it reads, every request is answered, in order.
    sim.set_window(c, None);
    let got = bodies(&mut sim, c);
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|(s, _)| *s == 200));
}

#[test]
fn a_websocket_that_floods_pings_and_never_reads_is_paused_at_the_soft_limit() {
    let mut s = settings();
    s.outbound_soft_limit = 64 * 1024;
    s.outbound_hard_limit = 1 << 20;
    let mut sim = Sim::new(s, shared(false), 1);
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.set_window(c, Some(0));
    let ping = crate::codec::websocket::encode_masked_frame(true, 9, &[7; 125], [1, 2, 3, 4], 0);
    let flood: Vec<u8> = (0..20_000).flat_map(|_| ping.clone()).collect();
    sim.send(c, &flood);
    let held = sim.engine.outbound_bytes();
    assert!(
        held < 64 * 1024 + 32 * 1024,
        "reading paused near the soft limit: {held}"
    );
    assert!(sim.unread(c) > flood.len() / 2);
    assert!(sim.is_open(c), "paused, not dropped: it may still read");
    sim.set_window(c, None);
    // Its address is also in work debt by now: it reads on as the debt is paid.
    let mut pongs = 0;
    for _ in 0..1000 {
        pongs += client::frames(&sim.take(c))
            .into_iter()
            .filter(|(op, _)| *op == 10)
            .count();
        if pongs == 20_000 || !sim.advance_to_next_deadline(Duration::from_secs(30)) {
            break;
        }
    }
    assert_eq!(pongs, 20_000, "every ping answered once it read");
}

#[test]
fn engine_io_pings_from_a_client_end_its_session() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    let pings: Vec<u8> = std::iter::repeat_n(&b"2\x1e"[..], 1000)
        .flatten()
        .copied()
        .collect();
    sim.send(c, &client::post(&sid, &pings[..pings.len() - 1]));
    assert_eq!(bodies(&mut sim, c), vec![(200, "ok".to_owned())]);
    assert_eq!(
        sim.engine.census().sessions,
        0,
        "invalid heartbeat direction"
    );
    assert!(sim.engine.outbound_bytes() < 200, "no pong was queued");
    let (ws, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(ws, &client::text("2"));
    let frames = client::frames(&sim.take(ws));
    assert_eq!(frames[0], (1, b"1".to_vec()), "an Engine.IO close, no pong");
}

#[test]
fn a_second_post_while_a_body_is_arriving_is_refused_and_ends_the_session() {
    let mut sim = sim();
    let (_, sid) = sim.open_polling(CLIENT).unwrap();
    let first = sim.connect(CLIENT);
    let whole = client::post(&sid, &[b'6'; 1000]);
    sim.send(first, &whole[..whole.len() - 500]);
    let second = sim.connect(CLIENT);
    sim.send(second, &client::post(&sid, b"6"));
    assert_eq!(bodies(&mut sim, second)[0].0, 400);
    assert_eq!(sim.engine.census().sessions, 0);
}

#[test]
fn a_payload_of_too_many_packets_is_refused() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    let body: Vec<u8> = std::iter::repeat_n(&b"6\x1e"[..], 1001)
        .flatten()
        .copied()
        .collect();
    sim.send(c, &client::post(&sid, &body[..body.len() - 1]));
    assert_eq!(bodies(&mut sim, c)[0].0, 400);
    assert_eq!(sim.engine.census().sessions, 0);
}

#[test]
fn a_closing_connection_whose_peer_takes_nothing_is_reset_after_the_linger_time() {
    let mut sim = sim();
    let c = sim.connect(CLIENT);
    sim.set_window(c, Some(0));
    sim.send(c, &client::get("/health", "Connection: close\r\n"));
    sim.advance(Duration::from_millis(4_999));
    assert!(sim.is_open(c));
    sim.advance(Duration::from_millis(1));
    assert!(!sim.is_open(c));
    assert_eq!(sim.engine.counters().linger_resets, 1);
}

#[test]
fn a_second_websocket_for_an_upgraded_session_is_accepted_then_closed() {
    let mut sim = sim();
    let (poll, sid) = sim.open_polling(CLIENT).unwrap();
    let ws = sim.connect(CLIENT);
    sim.send(ws, &client::websocket(Some(&sid)));
    sim.send(ws, &client::text("2probe"));
    sim.send(ws, &client::text("5"));
    sim.take(ws);
    let again = sim.connect(CLIENT);
    sim.send(again, &client::websocket(Some(&sid)));
    let (resp, rest) = client::responses(&sim.take(again));
    assert_eq!(resp[0].0, 101);
    assert_eq!(client::frames(&rest), vec![(8, Vec::new())]);
    assert!(!sim.is_open(again));
    sim.send(ws, &client::text("40/ws,"));
    assert!(
        client::texts(&sim.take(ws))[0].starts_with("40/ws,"),
        "the upgraded one lives on"
    );
    let _ = poll;
}

#[test]
fn a_parked_poll_that_asked_to_close_is_answered_with_close() {
    let mut sim = sim();
    let (c, sid) = sim.open_polling(CLIENT).unwrap();
    sim.send(
        c,
        &client::get(
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "Connection: close\r\n",
        ),
    );
    let post = sim.connect(CLIENT);
    sim.send(post, &client::post(&sid, b"40"));
    let got = sim.take(c);
    assert!(String::from_utf8_lossy(&got).contains("Connection: close\r\n"));
    assert!(!sim.is_open(c));
}

#[test]
fn an_overflow_conflates_latest_values_resyncs_books_and_sends_lossless_followers_to_recover() {
    use crate::shard::handle::Overflow;
    let shared = shared(true);
    let mut sim = Sim::new(settings(), shared.clone(), 1);
    let trades = subscribed_websocket(&mut sim);
    let (ticker, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(ticker, &client::text("40/ws,"));
    sim.send(
        ticker,
        &client::text("42/ws,[\"subscribe\",{\"channel\":\"ticker\",\"symbol\":\"BTCUSDT\"}]"),
    );
    sim.take(ticker);
    let latest = |n: u64| Broadcast {
        class: StreamClass::Latest,
        retain: true,
        ..trade_with(
            "ticker:BTCUSDT",
            Payload::Json(format!("{{\"v\":{n}}}").into()),
        )
    };
    let mut overflow = Overflow {
        batches: 3,
        ..Overflow::default()
    };
    overflow
        .latest
        .insert((Arc::from("ticker:BTCUSDT"), None), latest(3));
    overflow
        .retained
        .insert(Arc::from("ticker:BTCUSDT"), latest(3).body);
    overflow.lossless.insert(Arc::from("trades:BTCUSDT"));
    sim.engine.handle_overflow(sim.now, overflow);
    sim.pump();
    let got = client::texts(&sim.take(ticker));
    assert_eq!(got.len(), 1, "only the newest value: {got:?}");
    assert!(got[0].contains("{\"v\":3}"));
    let got = client::frames(&sim.take(trades));
    let texts: Vec<String> = got
        .iter()
        .filter(|(op, _)| *op == 1)
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(texts[0].contains("OVERLOADED"), "{texts:?}");
    assert_eq!(texts[1], "1", "then an Engine.IO close");
    assert!(sim.records_saved >= 1, "its state is kept to recover");
    assert_eq!(sim.engine.counters().overflowed_batches, 3);
}

#[test]
fn a_get_with_a_body_is_refused_not_read_as_the_next_request() {
    let mut sim = sim();
    let c = sim.connect(CLIENT);
    let mut smuggled = b"GET /health HTTP/1.1\r\nContent-Length: 24\r\n\r\n".to_vec();
    smuggled.extend_from_slice(b"GET /ready HTTP/1.1\r\n\r\n\r\n");
    sim.send(c, &smuggled);
    let got = bodies(&mut sim, c);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 400);
    assert!(!sim.is_open(c));
}

#[test]
fn tcp_connections_per_address_are_capped_at_accept() {
    let mut sim = Sim::new(
        settings(),
        {
            let shared = Shared::new(LimitSettings {
                max_tcp_per_ip: 3,
                ..LimitSettings::default()
            });
            Arc::new(shared)
        },
        1,
    );
    let conns: Vec<ConnId> = (0..3).map(|_| sim.connect(CLIENT)).collect();
    assert!(sim.try_connect(CLIENT).is_none(), "the fourth is refused");
    let other = std::net::Ipv4Addr::new(10, 0, 0, 8).into();
    assert!(sim.try_connect(other).is_some(), "another address is not");
    sim.reset(conns[0]);
    assert!(
        sim.try_connect(CLIENT).is_some(),
        "a slot freed is a slot taken"
    );
    assert_eq!(sim.engine.counters().tcp_refused, 1);
}

#[test]
fn repeated_refused_connects_end_the_session_and_long_namespaces_are_not_echoed() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    for _ in 0..11 {
        sim.send(c, &client::text("40/nope,"));
    }
    let texts = client::texts(&sim.take(c));
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("44/nope,")).count(),
        11
    );
    assert_eq!(
        texts.last().map(String::as_str),
        Some("1"),
        "closed after the 11th"
    );
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    let long = format!("40/{},", "n".repeat(200));
    sim.send(c, &client::text(&long));
    let texts = client::texts(&sim.take(c));
    assert_eq!(
        texts,
        vec!["1"],
        "no connect_error carrying the name, just the close"
    );
}

#[test]
fn a_large_message_that_stops_arriving_is_given_up_at_the_handshake_timeout() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    let frame = crate::codec::websocket::encode_masked_frame(
        true,
        1,
        format!("4{}", "x".repeat(200_000)).as_bytes(),
        [1, 2, 3, 4],
        0,
    );
    sim.send(c, &frame[..150_000]);
    assert!(
        sim.shared.limits.input_buffered() > 0,
        "charged to its address"
    );
    sim.advance(Duration::from_millis(9_999));
    assert!(sim.is_open(c));
    sim.advance(Duration::from_millis(1));
    assert!(!sim.is_open(c));
    assert_eq!(sim.shared.limits.input_buffered(), 0, "and given back");
}

#[test]
fn packets_sent_right_after_a_recovery_connect_wait_for_it() {
    let shared = shared(true);
    let mut sim = Sim::new(settings(), shared.clone(), 1);
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    let answer = client::texts(&sim.take(c))[0].clone();
    let pid = serde_json::from_str::<serde_json::Value>(&answer["40/ws,".len()..]).unwrap()["pid"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.reset(c);
    let (c2, _) = sim.open_websocket(CLIENT).unwrap();
    // The CONNECT and a subscribe in one write, without waiting for the answer.
    let mut both = client::text(&format!("40/ws,{{\"pid\":\"{pid}\"}}"));
    both.extend(client::text(
        "42/ws,5[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]",
    ));
    sim.send(c2, &both);
    let texts = client::texts(&sim.take(c2));
    assert!(texts[0].contains(&pid), "recovered: {texts:?}");
    assert!(
        texts.iter().any(|t| t.starts_with("43/ws,5[{\"ok\":true")),
        "the subscribe is answered after the CONNECT: {texts:?}"
    );
    assert!(sim.is_open(c2));
}

#[test]
fn a_close_and_a_new_handshake_in_one_write_find_the_cap_slot_free() {
    let shared = Arc::new(Shared::new(LimitSettings {
        max_connections_per_ip: 1,
        ..LimitSettings::default()
    }));
    let mut sim = Sim::new(settings(), shared, 1);
    let (_, sid) = sim.open_polling(CLIENT).unwrap();
    let c = sim.connect(CLIENT);
    let mut both = client::post(&sid, b"1");
    both.extend(client::polling_open());
    sim.send(c, &both);
    let got = bodies(&mut sim, c);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![200, 200],
        "{got:?}"
    );
}

fn with_limits(limits: LimitSettings, settings: ServerSettings) -> Sim {
    let shared = Shared::new(limits);
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Sim::new(settings, Arc::new(shared), 1)
}

const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));

#[test]
fn a_small_message_that_stops_arriving_is_given_up_too() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    let frame = crate::codec::websocket::encode_masked_frame(true, 1, b"4hello", [1, 2, 3, 4], 0);
    sim.send(c, &frame[..4]);
    assert!(
        sim.shared.limits.input_buffered() > 0,
        "what it holds is charged"
    );
    sim.advance(Duration::from_millis(10_000));
    assert!(!sim.is_open(c));
    assert_eq!(sim.engine.counters().input_timeouts, 1);
    assert_eq!(sim.shared.limits.input_buffered(), 0);
}

#[test]
fn an_address_holds_no_more_input_than_its_budget() {
    let budget = 64 * 1024;
    let mut sim = with_limits(
        LimitSettings {
            max_input_per_ip: budget,
            ..LimitSettings::default()
        },
        settings(),
    );
    let body = format!("4{}", "x".repeat(200_000));
    let frame = crate::codec::websocket::encode_masked_frame(true, 1, body.as_bytes(), [1; 4], 0);
    let conns: Vec<ConnId> = (0..4)
        .map(|_| sim.open_websocket(CLIENT).unwrap().0)
        .collect();
    for &c in &conns {
        sim.send(c, &frame[..30_000]);
    }
    // Reads stop at the budget; one buffer's growth on the last read may pass it.
    let held = sim.shared.limits.input_buffered();
    assert!(held <= budget + 32 * 1024, "{held} bytes held");
    assert!(
        conns.iter().any(|&c| sim.unread(c) > 0),
        "the rest waits in the sockets"
    );
    // Another address is not held back.
    let (c, _) = sim.open_websocket(OTHER).unwrap();
    sim.send(c, &client::text("40/ws,"));
    assert!(client::texts(&sim.take(c))[0].starts_with("40/ws,"));
    // Those holding input are given up at the deadline; the others then read, and follow.
    sim.advance(Duration::from_millis(10_000));
    assert!(conns.iter().any(|&c| !sim.is_open(c)));
    sim.advance(Duration::from_millis(10_000));
    assert!(conns.iter().all(|&c| !sim.is_open(c)));
    assert_eq!(sim.shared.limits.input_buffered(), 0);
}

#[test]
fn an_address_past_its_work_budget_waits_and_others_do_not() {
    let mut sim = Sim::new(
        ServerSettings {
            work_rate_per_ip: 20.0,
            ..settings()
        },
        shared(false),
        1,
    );
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.take(c);
    // 64 rooms per request: each costs 1 + 4 events of rooms, and more of answers.
    let symbols: Vec<String> = (0..64).map(|i| format!("\"S{i}USDT\"")).collect();
    let subscribe = format!(
        "42/ws,[\"subscribe\",{{\"channel\":\"trades\",\"symbols\":[{}]}}]",
        symbols.join(",")
    );
    let unsubscribe = subscribe.replace("\"subscribe\"", "\"unsubscribe\"");
    for _ in 0..20 {
        sim.send(c, &client::text(&subscribe));
        sim.send(c, &client::text(&unsubscribe));
    }
    assert!(sim.unread(c) > 0, "paused once in debt");
    assert!(sim.engine.counters().work_pauses > 0);
    let (o, _) = sim.open_websocket(OTHER).unwrap();
    sim.send(o, &client::text("40/ws,"));
    assert!(client::texts(&sim.take(o))[0].starts_with("40/ws,"));
    // About 5 events a request at 20 a second: read to the end within 20 s (before the
    // unanswered heartbeat ends the session).
    for _ in 0..20 {
        sim.advance(Duration::from_millis(1_000));
    }
    assert_eq!(sim.unread(c), 0, "read again as the debt is paid");
    assert!(sim.is_open(c));
}

#[test]
fn at_the_tcp_cap_the_connection_idle_longest_makes_room() {
    let mut sim = with_limits(
        LimitSettings {
            max_tcp: 3,
            ..LimitSettings::default()
        },
        settings(),
    );
    let busy = sim.connect(CLIENT);
    sim.send(busy, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let idle = sim.connect(CLIENT);
    sim.send(idle, b"GET /hea");
    let idle2 = sim.connect(OTHER);
    let newcomer = sim.connect(OTHER);
    assert!(
        !sim.is_open(idle),
        "the oldest one without a request gave way"
    );
    assert!(sim.is_open(busy) && sim.is_open(idle2) && sim.is_open(newcomer));
    sim.send(idle2, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.send(newcomer, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        sim.try_connect(CLIENT).is_none(),
        "none idle: the new one is refused"
    );
    assert_eq!(sim.engine.counters().idle_evictions, 1);
    assert_eq!(sim.shared.limits.tcp_total(), 3);
}

#[test]
fn binary_events_on_the_gateway_are_refused_at_once_and_their_attachments_dropped() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.take(c);
    sim.send(
        c,
        &client::text("451-/ws,7[\"subscribe\",{\"_placeholder\":true,\"num\":0}]"),
    );
    let texts = client::texts(&sim.take(c));
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("43/ws,7") && t.contains("binary payloads")),
        "answered before its attachment: {texts:?}"
    );
    sim.send(
        c,
        &crate::codec::websocket::encode_masked_frame(true, 2, b"\x04abc", [1; 4], 0),
    );
    sim.send(c, &client::text("42/ws,8[\"ping\"]"));
    let texts = client::texts(&sim.take(c));
    assert!(texts.iter().any(|t| t.starts_with("43/ws,8")), "{texts:?}");
    assert!(sim.is_open(c));
}

#[test]
fn events_larger_than_the_api_takes_are_refused_without_decoding() {
    let mut sim = sim();
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.take(c);
    let big = format!("42/ws,9[\"subscribe\",[{}0]]", "0,".repeat(100_000));
    sim.send(c, &client::text(&big));
    let texts = client::texts(&sim.take(c));
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("43/ws,9") && t.contains("at most 65536")),
        "{texts:?}"
    );
    assert!(sim.is_open(c), "an event is answered, not punished");
    sim.send(
        c,
        &client::text(&format!("40/x,{{\"a\":\"{}\"}}", "a".repeat(70_000))),
    );
    assert!(
        !sim.is_open(c),
        "anything else over the size ends the session"
    );
}

#[test]
fn events_delivered_late_skip_only_sockets_that_subscribed_after_the_stream_took_them() {
    let mut sim = sim();
    let early = subscribed_websocket(&mut sim);
    // The instance loses the stream; a socket subscribes meanwhile, at `joined`.
    sim.shared.catch_up.fell_behind();
    sim.advance(Duration::from_secs(2));
    let late = subscribed_websocket(&mut sim);
    let joined = sim.now.unix_ms;
    sim.shared.catch_up.caught_up();
    let appended = |n: u64, at: u64| Broadcast {
        appended_ms: Some(at),
        ..trade("trades:BTCUSDT", n, None)
    };
    sim.publish(&[appended(1, joined - 1500), appended(2, joined + 5)]);
    sim.publish(&[trade("trades:BTCUSDT", 3, None)]);
    let ids = |sim: &mut Sim, c| -> Vec<u64> {
        client::texts(&sim.take(c))
            .iter()
            .filter_map(|t| {
                t.split("\"tradeId\":")
                    .nth(1)?
                    .split('}')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    assert_eq!(ids(&mut sim, early), vec![1, 2, 3], "owed everything");
    assert_eq!(
        ids(&mut sim, late),
        vec![2, 3],
        "nothing from before it subscribed"
    );
}

#[test]
fn new_sessions_are_refused_while_catching_up_with_the_stream() {
    let mut sim = sim();
    sim.shared.catch_up.await_stream();
    assert!(sim.open_polling(CLIENT).is_none());
    let c = sim.connect(CLIENT);
    sim.send(c, &client::get("/ready", ""));
    let (resp, _) = client::responses(&sim.take(c));
    assert_eq!(resp[0].0, 503);
    let body = String::from_utf8_lossy(&resp[0].1).into_owned();
    assert!(body.contains("\"catching_up\""), "{body}");
    sim.shared.catch_up.caught_up();
    assert!(sim.open_polling(CLIENT).is_some());
}

#[test]
fn a_new_ticker_all_subscriber_gets_every_symbols_latest_value() {
    use crate::market::TickerValue;
    let mut sim = sim();
    let values = |list: &[(&str, &str)]| -> Arc<[TickerValue]> {
        list.iter()
            .map(|(s, j)| TickerValue {
                symbol: Arc::from(*s),
                json: bytes::Bytes::copy_from_slice(j.as_bytes()),
            })
            .collect()
    };
    let directory = |list| Broadcast {
        room: Arc::from("ticker:all"),
        deliver: false,
        class: StreamClass::Latest,
        tickers: Some(values(list)),
        ..trade("ticker:all", 0, None)
    };
    sim.publish(&[directory(&[
        ("AAA", "{\"s\":\"A1\"}"),
        ("BBB", "{\"s\":\"B1\"}"),
    ])]);
    sim.publish(&[directory(&[("BBB", "{\"s\":\"B2\"}")])]);
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.send(
        c,
        &client::text("42/ws,1[\"subscribe\",{\"channel\":\"ticker\",\"symbol\":\"all\"}]"),
    );
    let texts = client::texts(&sim.take(c));
    let first = texts
        .iter()
        .find(|t| t.contains("tickers.update"))
        .expect("a first tickers.update");
    assert!(
        first.contains("\"data\":[{\"s\":\"A1\"},{\"s\":\"B2\"}]"),
        "{first}"
    );
}

#[test]
fn under_backpressure_book_ticker_all_keeps_the_newest_top_of_every_symbol() {
    let mut s = settings();
    s.outbound_soft_limit = 4096;
    s.outbound_hard_limit = 1 << 20;
    let mut sim = Sim::new(s, shared(false), 1);
    let (c, _) = sim.open_websocket(CLIENT).unwrap();
    sim.send(c, &client::text("40/ws,"));
    sim.send(
        c,
        &client::text("42/ws,[\"subscribe\",{\"channel\":\"bookTicker\",\"symbol\":\"all\"}]"),
    );
    sim.take(c);
    sim.set_window(c, Some(0));
    let top = |symbol: &str, n: u64| Broadcast {
        class: StreamClass::Latest,
        latest_key: Some(if symbol == "XSYM" { 1 } else { 2 }),
        refresh: None,
        ..trade_with(
            "bookTicker:all",
            Payload::Json(
                format!(
                    "{{\"symbol\":\"{symbol}\",\"n\":{n},\"pad\":\"{}\"}}",
                    "x".repeat(200)
                )
                .into(),
            ),
        )
    };
    // Far past the soft limit: X's last change comes early, Y's keep coming.
    sim.publish(&[top("XSYM", 1)]);
    for n in 2..200 {
        sim.publish(&[top("YSYM", n)]);
    }
    sim.set_window(c, None);
    let texts = client::texts(&sim.take(c));
    let last_of = |symbol: &str| {
        texts
            .iter()
            .rfind(|t| t.contains(&format!("\"symbol\":\"{symbol}\"")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(last_of("XSYM").contains("\"n\":1"), "X's top is kept");
    assert!(last_of("YSYM").contains("\"n\":199"), "Y's newest top");
    assert!(
        texts.len() < 100,
        "older tops were replaced: {}",
        texts.len()
    );
}

/// A book view's message as the market sends it: a snapshot or delta of `room` at `last`,
/// optionally as the refresh answering `epoch`.
fn view_book(room: &str, last: u64, snapshot: bool, refresh: Option<u64>) -> Broadcast {
    use crate::market::book::{checksum, BookView};
    let view = Arc::new(BookView {
        symbol: Arc::from("BTCUSDT"),
        bids: Default::default(),
        asks: Default::default(),
        last_update_id: last,
        checksum: checksum(&[], &[]),
    });
    let data = if snapshot {
        view.snapshot_json(if refresh.is_some() {
            "subscribe"
        } else {
            "resync"
        })
    } else {
        format!("{{\"type\":\"delta\",\"firstUpdateId\":{last},\"lastUpdateId\":{last}}}")
            .into_bytes()
    };
    let class = if snapshot {
        StreamClass::BookSnapshot
    } else {
        StreamClass::BookDelta
    };
    Publish {
        deliver: refresh.is_none(),
        book: Some(view),
        refresh,
        ..broadcast(room, "orderbook.update", Payload::Json(data.into()), class)
    }
    .encode(1, None)
}

#[test]
fn a_view_is_delivered_from_the_refresh_of_the_epoch_it_was_opened_in() {
    let shared = shared(false);
    let mut sim = Sim::new(settings(), shared.clone(), 1);
    let room = "orderbook:BTCUSDT:5:100ms";
    let (c, _) = sim.open_websocket(CLIENT).expect("websocket handshake");
    sim.send(c, &client::text("40/ws,"));
    // Someone elsewhere had the view open once: its old epoch's messages are stale here.
    let old = shared.demand.open(&Arc::from(room));
    shared.demand.close(&Arc::from(room));
    sim.send(
        c,
        &client::text(
            "42/ws,1[\"subscribe\",{\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\",\"depth\":5,\"speed\":100}]",
        ),
    );
    let texts = client::texts(&sim.take(c));
    assert!(texts[2].contains("orderbook:BTCUSDT:5:100ms"), "{texts:?}");
    assert_eq!(
        texts.len(),
        3,
        "no snapshot before the market's refresh: {texts:?}"
    );
    let epoch = match shared.demand.take_changes(0).as_slice() {
        [crate::market::demand::Change::Refresh { epoch, .. }] => *epoch,
        other => panic!("{other:?}"),
    };
    assert!(epoch > old);
    // A delta and a refresh that left the market before this epoch began: not for it.
    sim.publish(&[
        view_book(room, 7, false, None),
        view_book(room, 7, true, Some(old)),
    ]);
    assert!(client::texts(&sim.take(c)).is_empty());
    // Its own refresh is its first message; the deltas after it follow.
    sim.publish(&[
        view_book(room, 9, true, Some(epoch)),
        view_book(room, 10, false, None),
    ]);
    let texts = client::texts(&sim.take(c));
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].contains("\"reason\":\"subscribe\"") && texts[0].contains("\"lastUpdateId\":9")
    );
    assert!(texts[1].contains("\"firstUpdateId\":10"));
    // A second member gets the view as last sent, at once, chained to what follows.
    let (d, _) = sim.open_websocket(CLIENT).expect("websocket handshake");
    sim.send(d, &client::text("40/ws,"));
    sim.send(
        d,
        &client::text(
            "42/ws,1[\"subscribe\",{\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\",\"depth\":5,\"speed\":100}]",
        ),
    );
    let texts = client::texts(&sim.take(d));
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(
        texts[3].contains("\"reason\":\"subscribe\"") && texts[3].contains("\"lastUpdateId\":10")
    );
    assert!(
        shared.demand.take_changes(0).is_empty(),
        "already open on this shard"
    );
    // The last one out closes it.
    for (conn, id) in [(c, 2), (d, 2)] {
        let leave = format!("42/ws,{id}[\"unsubscribe\",{{\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\",\"depth\":5,\"speed\":100}}]");
        assert_eq!(shared.demand.open_count(), 1);
        sim.send(conn, &client::text(&leave));
        sim.take(conn);
    }
    assert_eq!(shared.demand.open_count(), 0);
    sim.engine.check_invariants().unwrap();
}

// A view's refresh folded into an overflow comes after what was folded for it before.

fn view_ticker(room: &str, v: u64, refresh: Option<u64>) -> Broadcast {
    let data = Payload::Json(format!("{{\"v\":{v}}}").into());
    Publish {
        deliver: refresh.is_none(),
        retain: true,
        refresh,
        ..broadcast(room, "ticker.update", data, StreamClass::Latest)
    }
    .encode(1, None)
}

#[test]
fn an_overflowed_view_refresh_is_not_followed_by_older_values() {
    use crate::shard::handle::Overflow;
    let shared = shared(false);
    let mut sim = Sim::new(settings(), shared.clone(), 1);
    let room = "ticker:BTCUSDT:100ms";
    // Another shard follows the view (epoch e): the market emits v2 for it, holds v3.
    let e = shared.demand.open(&Arc::from(room));
    shared.demand.take_changes(0);
    let (c, _) = sim.open_websocket(CLIENT).expect("websocket handshake");
    sim.send(c, &client::text("40/ws,"));
    sim.take(c);
    // This shard is behind (its publishes are being folded) when its client subscribes.
    let mut overflow = Overflow::default();
    overflow.fold(&[view_ticker(room, 2, None)], sim.now.mono);
    sim.send(
        c,
        &client::text(
            "42/ws,1[\"subscribe\",{\"channel\":\"ticker\",\"symbol\":\"BTCUSDT\",\"speed\":100}]",
        ),
    );
    sim.take(c);
    // The shard opened the view in the same epoch (checked by opening it once more).
    assert_eq!(shared.demand.open(&Arc::from(room)), e);
    shared.demand.close(&Arc::from(room));
    // The market answers the opening with the newest ticker (v3).
    overflow.fold(&[view_ticker(room, 3, Some(e))], sim.now.mono);
    sim.engine.handle_overflow(sim.now, overflow);
    sim.pump();
    let texts = client::texts(&sim.take(c));
    // A second member joining now gets the retained value.
    let (d, _) = sim.open_websocket(CLIENT).expect("websocket handshake");
    sim.send(d, &client::text("40/ws,"));
    sim.send(
        d,
        &client::text(
            "42/ws,1[\"subscribe\",{\"channel\":\"ticker\",\"symbol\":\"BTCUSDT\",\"speed\":100}]",
        ),
    );
    let texts2 = client::texts(&sim.take(d));
    assert_eq!(texts.len(), 1, "only the newest value (v3): {texts:?}");
    assert!(texts[0].contains("{\"v\":3}"), "{texts:?}");
    assert!(texts2.iter().any(|t| t.contains("{\"v\":3}")), "{texts2:?}");
}

#[test]
fn a_reopened_book_view_in_an_overflow_gets_no_window_of_its_old_epoch() {
    use crate::shard::handle::Overflow;
    let shared = shared(false);
    let mut sim = Sim::new(settings(), shared.clone(), 1);
    let room = "orderbook:BTCUSDT:5:100ms";
    let sub = "[\"subscribe\",{\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\",\"depth\":5,\"speed\":100}]";
    let unsub = "[\"unsubscribe\",{\"channel\":\"orderbook\",\"symbol\":\"BTCUSDT\",\"depth\":5,\"speed\":100}]";
    let (c, _) = sim.open_websocket(CLIENT).expect("websocket handshake");
    sim.send(c, &client::text("40/ws,"));
    sim.send(c, &client::text(&format!("42/ws,1{sub}")));
    sim.take(c);
    let e1 = match shared.demand.take_changes(0).as_slice() {
        [crate::market::demand::Change::Refresh { epoch, .. }] => *epoch,
        other => panic!("{other:?}"),
    };
    sim.publish(&[
        view_book(room, 100, true, Some(e1)),
        view_book(room, 101, false, None),
    ]);
    sim.take(c);
    // The shard falls behind: epoch e1's next delta (105) is folded ...
    let mut overflow = Overflow::default();
    overflow.fold(&[view_book(room, 105, false, None)], sim.now.mono);
    // ... meanwhile the client unsubscribes and subscribes again: last one out, so a new epoch.
    sim.send(c, &client::text(&format!("42/ws,2{unsub}")));
    sim.send(c, &client::text(&format!("42/ws,3{sub}")));
    sim.take(c);
    let changes = shared.demand.take_changes(0);
    let e2 = match changes.as_slice() {
        [crate::market::demand::Change::Refresh { epoch, .. }] => *epoch,
        other => panic!("{other:?}"),
    };
    assert!(e2 > e1);
    // The market restarted the view from the replica (at 150) and answers e2 with it.
    overflow.fold(&[view_book(room, 150, true, Some(e2))], sim.now.mono);
    sim.engine.handle_overflow(sim.now, overflow);
    sim.pump();
    // The view's next delta chains to 150.
    sim.publish(&[view_book(room, 151, false, None)]);
    let texts = client::texts(&sim.take(c));
    let ids: Vec<String> = texts
        .iter()
        .map(|t| {
            let reason = t
                .split("\"reason\":\"")
                .nth(1)
                .map(|r| r.split('"').next().unwrap_or(""));
            let last = t.split("\"lastUpdateId\":").nth(1).map(|r| {
                r.split(|ch: char| !ch.is_ascii_digit())
                    .next()
                    .unwrap_or("")
            });
            format!("{}@{}", reason.unwrap_or("delta"), last.unwrap_or("?"))
        })
        .collect();
    assert!(
        !ids.iter().any(|s| s.ends_with("@105")),
        "the old epoch's window must not be sent after the new epoch's refresh: {ids:?}"
    );
}

/// A WebSocket session on `/ws` subscribed to `trades:BTCUSDT`, offering permessage-deflate
/// or not; checks the 101 answers the offer as the server takes it.
fn subscribed_websocket_offering(sim: &mut Sim, deflate: bool) -> ConnId {
    let c = sim.connect(CLIENT);
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    sim.send(
        c,
        &client::get(
            "/socket.io/?EIO=4&transport=websocket",
            &format!("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}"),
        ),
    );
    let head = String::from_utf8_lossy(&sim.take(c)).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        head.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
        deflate,
        "{head}"
    );
    sim.send(c, &client::text("40/ws,"));
    sim.send(
        c,
        &client::text("42/ws,1[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]"),
    );
    sim.take(c);
    c
}

#[test]
fn a_broadcast_is_compressed_once_for_every_deflate_subscriber() {
    let mut sim = sim();
    let a = subscribed_websocket_offering(&mut sim, true);
    let b = subscribed_websocket_offering(&mut sim, true);
    let plain = subscribed_websocket_offering(&mut sim, false);
    let pad = "45000.10,".repeat(200);
    sim.publish(&[
        trade_with(
            "trades:BTCUSDT",
            Payload::Json(format!("{{\"pad\":\"{pad}\"}}").into()),
        ),
        trade("trades:BTCUSDT", 7, None),
    ]);
    let (got_a, got_b, got_plain) = (sim.take(a), sim.take(b), sim.take(plain));
    assert_eq!(got_a, got_b, "the same bytes for every deflate subscriber");
    let plain_frames = client::frames(&got_plain);
    let deflated_frames = client::frames(&got_a);
    assert_eq!(plain_frames.len(), 2);
    assert_eq!(deflated_frames.len(), 2);
    // The long one compressed (RSV1), the short one below the threshold as it was.
    assert_eq!(got_a[0] & 0xf0, 0xc0);
    let inflated = crate::codec::deflate::inflate(&deflated_frames[0].1, 1 << 20).unwrap();
    assert_eq!(&inflated[..], &plain_frames[0].1[..]);
    assert!(deflated_frames[0].1.len() * 5 < plain_frames[0].1.len());
    assert_eq!(deflated_frames[1], plain_frames[1]);
    assert_eq!(got_plain[0], 0x81);
    let counters = *sim.engine.counters();
    assert_eq!(counters.compressions, 1);
    let sent = deflated_frames[0].1.len();
    let framed = crate::codec::websocket::header_len(sent) + sent;
    assert_eq!(counters.deflate_bytes_after, 2 * framed as u64);
}

#[test]
fn compressed_client_messages_are_inflated_and_a_bomb_is_closed_with_1009() {
    let mut sim = sim();
    let c = subscribed_websocket_offering(&mut sim, true);
    let compressed_text = |text: &str| {
        let frame = crate::codec::deflate::compressed_frame(0x1, text.as_bytes());
        let body = client::frames(&frame).remove(0).1;
        let mut raw = crate::codec::websocket::encode_masked_frame(true, 1, &body, [9, 8, 7, 6], 0);
        raw[0] |= 0x40;
        raw
    };
    sim.send(
        c,
        &compressed_text("42/ws,2[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"ETHUSDT\"}]"),
    );
    let texts = client::texts(&sim.take(c));
    assert!(texts[0].starts_with("43/ws,2[{\"ok\":true"), "{texts:?}");
    // Inflating past --max-payload: closed with 1009, nothing else decoded.
    let bomb = compressed_text(&"4".repeat(2_000_000));
    assert!(bomb.len() < 10_000);
    sim.send(c, &bomb);
    let frames = client::frames(&sim.take(c));
    let close = frames
        .iter()
        .find(|(op, _)| *op == 8)
        .expect("a close frame");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 1009);
}
