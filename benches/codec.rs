//! Decode and encode of every packet kind we own: WebSocket frames, Engine.IO packets and
//! polling payloads, Socket.IO packets (with and without binary attachments).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use maven_gateway::codec::socketio::{BinaryAssembler, Packet as SioPacket};
use maven_gateway::codec::websocket::{apply_mask, decode_client_frame, encode_frame, OpCode};
use maven_gateway::codec::{engineio, WireMessage};

fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut v = vec![0x81];
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    let mut body = payload.to_vec();
    apply_mask(&mut body, mask);
    v.extend_from_slice(&body);
    v
}

const SUBSCRIBE: &str =
    r#"2/ws,12["subscribe",{"channel":"orderbook","symbols":["BTCUSDT","ETHUSDT","SOLUSDT"]}]"#;

fn websocket(c: &mut Criterion) {
    let mut g = c.benchmark_group("websocket");
    for size in [64usize, 1024, 16 * 1024] {
        let frame = masked(&vec![b'x'; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("decode_masked/{size}"), |b| {
            b.iter(|| {
                decode_client_frame(black_box(&frame), 1 << 20)
                    .unwrap()
                    .unwrap()
            })
        });
        let payload = vec![b'x'; size];
        g.bench_function(format!("encode/{size}"), |b| {
            b.iter(|| encode_frame(OpCode::Text, black_box(&payload)))
        });
    }
    g.finish();
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engineio");
    let text = Bytes::from_static(b"4hello world, a typical short message");
    g.bench_function("decode_text", |b| {
        b.iter(|| engineio::Packet::decode_text(black_box(text.clone())).unwrap())
    });
    let payload = Bytes::from(
        std::iter::repeat_n("42/ws,[\"trade\",{\"price\":\"45000.00\"}]", 16)
            .collect::<Vec<_>>()
            .join("\x1e"),
    );
    g.bench_function("decode_payload/16", |b| {
        b.iter(|| engineio::decode_payload(black_box(payload.clone()), usize::MAX).unwrap())
    });
    let bin = Bytes::from(vec![7u8; 1024]);
    let p = engineio::Packet::Binary(bin);
    g.bench_function("encode_binary_polling/1024", |b| {
        b.iter(|| black_box(&p).to_text())
    });
    let msg = engineio::Packet::Message(Bytes::from_static(br#"2/ws,["pong",{"timestamp":1}]"#));
    g.bench_function("encode_frame", |b| {
        b.iter(|| WireMessage::engine(black_box(&msg)))
    });
    g.finish();
}

fn socket(c: &mut Criterion) {
    let mut g = c.benchmark_group("socketio");
    g.bench_function("decode_event", |b| {
        b.iter(|| SioPacket::decode(black_box(SUBSCRIBE)).unwrap())
    });
    let (p, _) = SioPacket::decode(SUBSCRIBE).unwrap();
    g.bench_function("encode_event", |b| {
        b.iter(|| {
            let mut out = bytes::BytesMut::new();
            black_box(&p).encode(&mut out);
            out
        })
    });
    let head = r#"51-/ws,3["message",{"_placeholder":true,"num":0}]"#;
    let att = Bytes::from(vec![1u8; 256]);
    g.bench_function("decode_binary_event", |b| {
        b.iter(|| {
            let mut asm = BinaryAssembler::default();
            let (p, n) = SioPacket::decode(black_box(head)).unwrap();
            assert!(asm.start(p, n).unwrap().is_none());
            asm.push(att.clone()).unwrap().unwrap()
        })
    });
    g.finish();
}

/// Market data frames as the gateway sends them, by kind.
fn market_frames() -> Vec<(&'static str, String)> {
    let trade = r#"42/ws,["trade",{"channel":"trades:BTCUSDT","data":{"tradeId":"t-1700000123","symbol":"BTCUSDT","price":"45012.35","quantity":"0.01250000","side":"buy","timestamp":1700000000123},"timestamp":1700000000125,"seq":48213}]"#.to_owned();
    let ticker = r#"42/ws,["ticker.update",{"channel":"ticker:BTCUSDT","data":{"symbol":"BTCUSDT","lastPrice":"45012.35","priceChange":"1502.10","priceChangePercent":"3.45","high24h":"46000.00","low24h":"43000.00","volume24h":"12500.50","quoteVolume24h":"562525000.00","openTime":1699913600000,"closeTime":1700000000000},"timestamp":1700000000125}]"#.to_owned();
    let level = |p: f64, i: usize| {
        format!(
            r#"["{:.2}","{:.4}"]"#,
            p,
            0.1 + (i * 37 % 101) as f64 / 13.0
        )
    };
    let side = |from: f64, step: f64, n: usize| {
        (0..n)
            .map(|i| level(from + step * i as f64, i))
            .collect::<Vec<_>>()
            .join(",")
    };
    let delta = format!(
        r#"42/ws,["orderbook.update",{{"channel":"orderbook:BTCUSDT","data":{{"symbol":"BTCUSDT","type":"delta","bids":[{}],"asks":[{}],"firstUpdateId":81231,"lastUpdateId":81232,"checksum":3405691582}},"timestamp":1700000000125}}]"#,
        side(45011.5, -0.5, 2),
        side(45012.0, 0.5, 1)
    );
    let snapshot = format!(
        r#"42/ws,["orderbook.update",{{"channel":"orderbook:BTCUSDT","data":{{"symbol":"BTCUSDT","type":"snapshot","reason":"subscribe","bids":[{}],"asks":[{}],"lastUpdateId":81232,"checksum":3405691582}},"timestamp":1700000000125}}]"#,
        side(45011.5, -0.5, 100),
        side(45012.0, 0.5, 100)
    );
    let all = (0..200)
        .map(|i| format!(r#"{{"symbol":"S{i:03}USDT","lastPrice":"{}.35","priceChange":"1.10","priceChangePercent":"0.45","high24h":"46000.00","low24h":"43000.00","volume24h":"{}.50","quoteVolume24h":"562525000.00","openTime":1699913600000,"closeTime":1700000000000}}"#, 100 + i * 7, 1000 + i * 13))
        .collect::<Vec<_>>()
        .join(",");
    let ticker_all = format!(
        r#"42/ws,["tickers.update",{{"channel":"ticker:all","data":[{all}],"timestamp":1700000000125}}]"#
    );
    vec![
        ("trade", trade),
        ("ticker", ticker),
        ("book_delta", delta),
        ("book_snapshot_100", snapshot),
        ("ticker_all_200", ticker_all),
    ]
}

/// permessage-deflate: what compressing each kind of frame once costs and saves (the ratio is
/// printed, as criterion has no place for it).
fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    for (kind, text) in market_frames() {
        let frame = maven_gateway::codec::deflate::compressed_frame(0x1, text.as_bytes());
        eprintln!(
            "deflate {kind}: {} -> {} bytes ({:.0}%)",
            text.len(),
            frame.len() - 2,
            100.0 * (frame.len() - 2) as f64 / text.len() as f64
        );
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("compress/{kind}"), |b| {
            b.iter(|| {
                maven_gateway::codec::deflate::compressed_frame(0x1, black_box(text.as_bytes()))
            })
        });
        let body = frame.slice(
            if frame.len() - 2 < 126 {
                2
            } else if frame.len() - 4 < 65536 {
                4
            } else {
                10
            }..,
        );
        g.bench_function(format!("inflate/{kind}"), |b| {
            b.iter(|| maven_gateway::codec::deflate::inflate(black_box(&body), 1 << 20).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, websocket, engine, socket, deflate);
criterion_main!(benches);
