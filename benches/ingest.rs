//! Ingest body parsing, on a batch of 100 mixed events as NDJSON (lines) and as one JSON
//! array: into `serde_json::Value` with serde_json and simd-json, and as ingest reads a body
//! (validated in place, data left as text) against simd-json's borrowed tape.
//!
//! And the whole path of a posted body, per kind of event: taken apart, validated, applied to
//! the market, encoded into frames and logged for recovery, handed to no shard (what
//! subscribers cost is the fan-out bench's).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use maven_gateway::ingest::parse::{parse_body, parse_body_raw, parse_one_simd};
use maven_gateway::ingest::Ingest;
use maven_gateway::market::demand::Demand;
use maven_gateway::market::input::parse_checked_event_in;
use maven_gateway::market::MarketSettings;
use maven_gateway::recovery::{Recovery, RecoverySettings};
use maven_gateway::room::Symbols;
use maven_gateway::shard::Fanout;
use serde_json::Value;
use std::sync::Arc;

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
    // What ingest does: the body validated and taken apart in place, each event's routing
    // fields read and its data left as text.
    g.bench_function("raw/ndjson_100", |b| {
        b.iter(|| {
            let raw = parse_body_raw(black_box(&ndjson)).unwrap();
            raw.events
                .iter()
                .map(|e| parse_checked_event_in(e.fields(&raw.members).unwrap(), None).unwrap())
                .collect::<Vec<_>>()
        })
    });
    // simd-json's cheapest full parse of the same lines (a tape of borrowed values), over the
    // mutable copy it needs of a body that arrives immutable; routing fields not yet read.
    g.bench_function("simd_json_borrowed/ndjson_100", |b| {
        b.iter(|| {
            black_box(&ndjson)
                .split(|&b| b == b'\n')
                .map(|l| {
                    let mut line = l.to_vec();
                    let ok = simd_json::to_borrowed_value(&mut line).is_ok();
                    ok
                })
                .filter(|ok| *ok)
                .count()
        })
    });
    // Checking alone (no value built): serde_json skipping every value, against simd-json's
    // tape over a reused copy and reused buffers.
    g.bench_function("validate_serde/ndjson_100", |b| {
        b.iter(|| {
            black_box(&ndjson)
                .split(|&b| b == b'\n')
                .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
                .count()
        })
    });
    g.bench_function("validate_simd_tape/ndjson_100", |b| {
        let mut scratch = Vec::new();
        let mut buffers = simd_json::Buffers::new(1024);
        b.iter(|| {
            black_box(&ndjson)
                .split(|&b| b == b'\n')
                .filter(|l| {
                    scratch.clear();
                    scratch.extend_from_slice(l);
                    simd_json::to_tape_with_buffers(&mut scratch, &mut buffers).is_ok()
                })
                .count()
        })
    });
    g.finish();
}

fn gateway() -> Arc<Ingest> {
    let recovery = Recovery::standalone(
        RecoverySettings {
            window_ms: 120_000,
            max_events: 100_000,
        },
        0,
    );
    Ingest::new(
        Fanout::new(Arc::from([])),
        MarketSettings::default(),
        Some(Arc::new(recovery)),
        Arc::new(Symbols::any()),
        Arc::new(Demand::default()),
    )
}

/// 100 events of one kind as an NDJSON body; `n` numbers the batch (book update ids follow on).
fn body(kind: &str, n: u64) -> Vec<u8> {
    let lines: Vec<String> = (0..100u64)
        .map(|i| {
            let id = n * 100 + i + 2;
            let sym = format!("S{}USDT", i % 50);
            match kind {
                "trades" => format!(r#"{{"type":"trade","symbol":"{sym}","data":{{"tradeId":"t{id}","price":"45000.{i:02}","quantity":"0.5","side":"buy","timestamp":1700000000000}}}}"#),
                "tickers" => format!(r#"{{"type":"ticker.update","symbol":"{sym}","data":{{"symbol":"{sym}","lastPrice":"2400.{i:02}","priceChange":"1.00","volume24h":"12500.50"}}}}"#),
                "private" => format!(r#"{{"type":"order.filled","userId":"u{}","data":{{"orderId":"o{id}","price":"45000.00","filled":"0.5","status":"filled"}}}}"#, i % 50),
                // One book, so every delta continues the last: 1 to 2 levels near the top.
                _ => format!(r#"{{"type":"orderbook.update","symbol":"BTCUSDT","data":{{"type":"delta","bids":[["{}.5","{}"]],"asks":[["{}.5","1.25"]],"firstUpdateId":{id},"lastUpdateId":{id}}}}}"#, 44_990 + id % 40, if id.is_multiple_of(4) { 0 } else { id % 9 + 1 }, 45_000 + id % 60),
            }
        })
        .collect();
    lines.join("\n").into_bytes()
}

fn submit(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest_submit");
    g.throughput(Throughput::Elements(100));
    for kind in ["trades", "tickers", "private", "books"] {
        let ingest = gateway();
        // A top-100 window over 200 levels a side.
        let levels = |from: u64, step: i64| {
            (0..200)
                .map(|i| format!(r#"["{}.5","2"]"#, from as i64 + i * step))
                .collect::<Vec<_>>()
                .join(",")
        };
        let snapshot = format!(
            r#"{{"type":"orderbook.update","symbol":"BTCUSDT","data":{{"type":"snapshot","bids":[{}],"asks":[{}],"lastUpdateId":1}}}}"#,
            levels(44_999, -1),
            levels(45_000, 1)
        );
        ingest.submit_body(snapshot.as_bytes()).unwrap();
        let mut n = 0;
        g.bench_function(format!("ndjson_100/{kind}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    bytes::Bytes::from(body(kind, n))
                },
                // As the ingest endpoint hands it over: the body already in shared memory.
                |body| ingest.submit_shared(black_box(&body)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, parse, submit);
criterion_main!(benches);
