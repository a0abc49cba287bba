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

criterion_group!(benches, websocket, engine, socket);
criterion_main!(benches);
