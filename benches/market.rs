//! The market-data paths: ticker throttling across many symbols, and order book apply,
//! top-N delta and snapshot encoding.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use maven_gateway::market::book::{BookUpdate, OrderBook};
use maven_gateway::market::input::{parse_event, IngestEvent};
use maven_gateway::market::{Market, MarketSettings};
use serde_json::json;

fn tickers(n: usize) -> Vec<IngestEvent> {
    (0..n)
        .map(|i| {
            parse_event(json!({"type":"ticker.update","symbol":format!("S{i:05}"),"data":{"lastPrice":"1.00","volume24h":"5"}}))
                .unwrap()
        })
        .collect()
}

fn throttle(c: &mut Criterion) {
    let mut g = c.benchmark_group("market");
    // 5,000 symbols, each updated once per step; one step every 10 ms of simulated time.
    let events = tickers(5000);
    g.bench_function("ticker_throttle/5000_symbols_step", |b| {
        let mut m = Market::new(MarketSettings::default());
        let mut now = 0u64;
        let mut out = Vec::new();
        b.iter(|| {
            now += 10;
            m.poll(now, &mut out);
            for e in &events {
                m.apply(e.clone(), now, &mut out);
            }
            out.clear();
        })
    });
    g.finish();
}

fn level(p: u64, q: u64) -> serde_json::Value {
    json!([
        format!("{}.{:02}", p / 100, p % 100),
        format!("{}.{:03}", q / 1000, q % 1000)
    ])
}

fn book(c: &mut Criterion) {
    let mut g = c.benchmark_group("orderbook");
    let snapshot = BookUpdate::parse(&json!({
        "type":"snapshot",
        "bids": (0..500).map(|i| level(4_500_000 - i * 7, 1000 + i)).collect::<Vec<_>>(),
        "asks": (0..500).map(|i| level(4_500_100 + i * 7, 1000 + i)).collect::<Vec<_>>(),
        "lastUpdateId": 1
    }))
    .unwrap();
    let deltas: Vec<BookUpdate> = (0..1000u64)
        .map(|i| {
            BookUpdate::parse(&json!({
                "type":"delta",
                "bids":[level(4_500_000 - (i * 13 % 300) * 7, if i % 5 == 0 { 0 } else { 500 + i })],
                "asks":[level(4_500_100 + (i * 17 % 300) * 7, 700 + i)],
                "firstUpdateId": i + 2, "lastUpdateId": i + 2
            }))
            .unwrap()
        })
        .collect();
    g.bench_function("apply_delta_and_diff/depth100", |b| {
        b.iter_batched(
            || {
                let mut ob = OrderBook::new("BTCUSDT", 100);
                ob.apply(snapshot.clone());
                ob.take_snapshot();
                (ob, deltas.clone())
            },
            |(mut ob, deltas)| {
                for d in deltas {
                    ob.apply(d);
                    black_box(ob.take_delta());
                }
            },
            BatchSize::LargeInput,
        )
    });
    let mut ob = OrderBook::new("BTCUSDT", 100);
    ob.apply(snapshot.clone());
    let view = ob.take_snapshot();
    g.bench_function("snapshot_json/depth100", |b| {
        b.iter(|| black_box(&view).snapshot_json("subscribe"))
    });
    // Once per book update (and window), whatever the number of subscribers.
    g.bench_function("checksum/top10", |b| {
        b.iter(|| {
            maven_gateway::market::book::checksum(black_box(&view.bids), black_box(&view.asks))
        })
    });
    g.finish();
}

criterion_group!(benches, throttle, book);
criterion_main!(benches);
