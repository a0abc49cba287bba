//! The per-delivery user-space work of a broadcast, through the shard engine itself: one
//! envelope encode, the engine's publish (the frame copied once into the shard, queued to
//! every local member under the slow-consumer policy) and its transmit step, writing to
//! in-memory peers (so the kernel's share is left out).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use maven_gateway::gateway::envelope;
use maven_gateway::gateway::GatewaySettings;
use maven_gateway::limits::LimitSettings;
use maven_gateway::market::{Payload, Publish, StreamClass};
use maven_gateway::session::sockets::App;
use maven_gateway::shard::engine::sim::{client, Sim};
use maven_gateway::shard::{ServerSettings, Shared};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A shard with `members` WebSocket subscribers of `trades:BTCUSDT`, which offered
/// permessage-deflate or not.
fn engine_with_subscribers(members: usize, deflate: bool) -> Sim {
    let settings = ServerSettings {
        engine_path: "/socket.io/".into(),
        echo_path: None,
        ping_interval: Duration::from_secs(3600),
        ping_timeout: Duration::from_secs(3600),
        connect_timeout: Duration::from_secs(3600),
        handshake_timeout: Duration::from_secs(3600),
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
        app: App::Gateway(Arc::new(GatewaySettings::default())),
    };
    let shared = Arc::new(Shared::new(LimitSettings {
        max_connections: usize::MAX,
        max_connections_per_ip: usize::MAX,
        handshakes_per_sec_per_ip: 1e12,
        handshake_burst_per_ip: 1e12,
        ..LimitSettings::default()
    }));
    let mut sim = Sim::new(settings, shared, 1);
    let subscribe =
        client::text("42/ws,[\"subscribe\",{\"channel\":\"trades\",\"symbol\":\"BTCUSDT\"}]");
    for i in 0..members {
        let ip = std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
        let (c, _) = sim.open_websocket_offering(ip, deflate).expect("handshake");
        sim.send(c, &client::text("40/ws,"));
        sim.send(c, &subscribe);
        sim.take(c);
    }
    sim.discard = true;
    sim
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let data = json!({"tradeId":"t-1700000123","symbol":"BTCUSDT","price":"45012.35","quantity":"0.01250000","side":"buy","timestamp":1_700_000_000_123u64,"venue":"spot","maker":"sell"});
    g.bench_function("encode_envelope", |b| {
        b.iter(|| envelope::encode("trade", "trades:BTCUSDT", black_box(&data), 1))
    });
    let payload = Payload::Value(data);
    // A ticker-sized frame (past the compression threshold), to members that negotiated
    // permessage-deflate or not: compressed once per publish, whatever the members.
    for (members, deflate) in [(100usize, false), (1000, false), (100, true), (1000, true)] {
        let mut sim = engine_with_subscribers(members, deflate);
        let name = if deflate { "deflate" } else { "plain" };
        g.throughput(Throughput::Elements(members as u64));
        g.bench_function(format!("publish_to_members/{name}/{members}"), |b| {
            b.iter(|| {
                let publish = Publish::new(
                    Arc::from("trades:BTCUSDT"),
                    "trade",
                    payload.clone(),
                    StreamClass::Lossless,
                );
                sim.publish(&[publish.encode(1, None)]);
                black_box(sim.bytes_written)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
