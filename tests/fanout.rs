//! A broadcast is encoded once per publish and written to every subscriber, across shards.
//! Real sockets on 127.0.0.1, a real WebSocket client (tokio-tungstenite).

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use maven_gateway::config::Config;
use maven_gateway::server::Gateway;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("message within 5 s")
            .expect("stream open")
            .expect("valid frame");
        match msg {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Message::Text(t) => return t.to_string(),
            _ => {}
        }
    }
}

async fn subscriber(addr: std::net::SocketAddr, room_symbol: &str) -> Ws {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake");
    assert!(next_text(&mut ws).await.starts_with("0{\"sid\":"));
    ws.send(Message::text("40/ws,")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40/ws,{\"sid\":"));
    assert!(next_text(&mut ws).await.starts_with("42/ws,[\"connected\""));
    ws.send(Message::text(format!(
        "42/ws,1[\"subscribe\",{{\"channel\":\"trades\",\"symbol\":\"{room_symbol}\"}}]"
    )))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.starts_with("43/ws,1[{\"ok\":true"));
    ws
}

async fn stats(internal: std::net::SocketAddr) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(internal).await.unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

#[test]
fn one_encode_per_publish_for_every_subscriber_on_every_shard() {
    let config = Config::parse_from([
        "maven-gateway",
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--symbols",
        "BTCUSDT,ETHUSDT",
    ]);
    let gw = Gateway::start(&config).expect("gateway starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(exercise(&gw));
    gw.stop();
}

async fn exercise(gw: &Gateway) {
    let mut subs = Vec::new();
    for _ in 0..20 {
        subs.push(subscriber(gw.public_addr, "BTCUSDT").await);
    }
    let mut other = subscriber(gw.public_addr, "ETHUSDT").await;
    let shards_used = stats(gw.internal_addr).await["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["websocket_connections"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(shards_used, 2, "connections spread over both shards");
    let before = stats(gw.internal_addr).await;

    let accepted = gw
        .ingest
        .submit_body(
            br#"{"type":"trade","symbol":"BTCUSDT","data":{"tradeId":"t1","price":"45000.00"}}"#,
        )
        .unwrap();
    assert_eq!(accepted, 1);
    for ws in subs.iter_mut() {
        let text = next_text(ws).await;
        assert!(text.starts_with("42/ws,[\"trade\",{\"channel\":\"trades:BTCUSDT\",\"data\":{\"tradeId\":\"t1\",\"price\":\"45000.00\"},\"timestamp\":"), "{text}");
    }
    // The ETHUSDT subscriber gets nothing of BTCUSDT: its next message is its own room's.
    gw.ingest
        .submit_body(br#"{"type":"trade","symbol":"ETHUSDT","data":{"tradeId":"e1"}}"#)
        .unwrap();
    assert!(next_text(&mut other).await.contains("\"tradeId\":\"e1\""));

    // A shard with no member in a batch's rooms is not woken for it: it takes the batch at
    // its next turn, within half a second.
    let mut after = stats(gw.internal_addr).await;
    for _ in 0..30 {
        let received = after["total"]["broadcasts_received"].as_u64().unwrap()
            - before["total"]["broadcasts_received"].as_u64().unwrap();
        if received >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = stats(gw.internal_addr).await;
    }
    let delta =
        |k: &str| after["total"][k].as_u64().unwrap() - before["total"][k].as_u64().unwrap();
    assert_eq!(
        after["ingest"]["encodes"].as_u64().unwrap()
            - before["ingest"]["encodes"].as_u64().unwrap(),
        2
    );
    assert_eq!(
        delta("messages_out"),
        21,
        "20 BTCUSDT deliveries + 1 ETHUSDT"
    );
    assert_eq!(
        delta("broadcasts_received"),
        4,
        "each publish reached each of 2 shards once"
    );
}
