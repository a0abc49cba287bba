//! Ingest body parsing into `serde_json::Value`, serde_json against simd-json, on a batch of
//! 100 mixed events as NDJSON (lines) and as one JSON array. `parse_body` uses the faster of
//! the two for each shape.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use maven_gateway::ingest::parse::{parse_body, parse_one_simd};
use serde_json::Value;

fn batch() -> Vec<String> {
    (0..100)
        .map(|i| match i % 4 {
            0 => format!(r#"{{"type":"trade","symbol":"BTCUSDT","data":{{"tradeId":"t{i}","price":"45000.00","quantity":"0.5","timestamp":1700000000000}}}}"#),
            1 => format!(r#"{{"type":"ticker.update","symbol":"ETHUSDT","data":{{"symbol":"ETHUSDT","lastPrice":"2400.{i:02}","priceChange":"1.00","volume24h":"12500.50"}}}}"#),
            2 => format!(r#"{{"type":"orderbook.update","symbol":"BTCUSDT","data":{{"type":"delta","bids":[["45000.00","1.5"],["44999.50","0"]],"asks":[["45001.00","2"]],"firstUpdateId":{i},"lastUpdateId":{i}}}}}"#),
            _ => format!(r#"{{"type":"kline.update","symbol":"SOLUSDT","interval":"1m","data":{{"openTime":1700000000000,"open":"98.1","close":"98.{i:02}","closed":false}}}}"#),
        })
        .collect()
}

fn parse(c: &mut Criterion) {
    let lines = batch();
    let ndjson = lines.join("\n").into_bytes();
    let array = format!("[{}]", lines.join(",")).into_bytes();
    let mut g = c.benchmark_group("ingest_parse");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_body/ndjson_100", |b| {
        b.iter(|| parse_body(black_box(&ndjson)).unwrap())
    });
    g.bench_function("parse_body/array_100", |b| {
        b.iter(|| parse_body(black_box(&array)).unwrap())
    });
    g.bench_function("serde_json/ndjson_100", |b| {
        b.iter(|| {
            black_box(&ndjson)
                .split(|&b| b == b'\n')
                .map(|l| serde_json::from_slice::<Value>(l).unwrap())
                .collect::<Vec<Value>>()
        })
    });
    g.bench_function("serde_json/array_100", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&array)).unwrap())
    });
    g.bench_function("simd_json/ndjson_100", |b| {
        b.iter(|| {
            black_box(&ndjson)
                .split(|&b| b == b'\n')
                .map(|l| parse_one_simd(l).unwrap())
                .collect::<Vec<Value>>()
        })
    });
    g.bench_function("simd_json/array_100", |b| {
        b.iter(|| parse_one_simd(black_box(&array)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
