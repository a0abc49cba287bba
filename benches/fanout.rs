//! The per-delivery user-space work of a broadcast: one envelope encode, then for each local
//! member a reference to the same frame queued and written with `writev` (to a sink here, so
//! the kernel's share is left out).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use maven_gateway::gateway::envelope;
use maven_gateway::shard::outbound::Outbound;
use serde_json::json;

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let data = json!({"tradeId":"t-1","symbol":"BTCUSDT","price":"45000.00","quantity":"0.125","timestamp":1_700_000_000_000u64});
    g.bench_function("encode_envelope", |b| {
        b.iter(|| envelope::encode("trade", "trades:BTCUSDT", black_box(&data), 1))
    });
    for members in [100usize, 1000] {
        let mut queues: Vec<Outbound> = (0..members).map(|_| Outbound::default()).collect();
        g.throughput(Throughput::Elements(members as u64));
        g.bench_function(format!("publish_to_members/{members}"), |b| {
            b.iter(|| {
                let m = envelope::encode("trade", "trades:BTCUSDT", &data, 1);
                let frame = bytes::Bytes::copy_from_slice(m.ws_frame());
                for q in queues.iter_mut() {
                    q.push(frame.clone(), 1, false);
                }
                for q in queues.iter_mut() {
                    black_box(q.write_to(&mut std::io::sink()));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
