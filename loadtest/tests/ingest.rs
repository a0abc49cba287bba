//! The ingest scenario against the gateway built beside it: every kind of event is accepted
//! at the rates asked for, its CPU cost is reported, and subscribers see the events arrive
//! with their latency measured and nothing lost.

mod common;

use common::{gateway_bin, ingest_report};

fn run(kind: &str, subscribers: &str) -> serde_json::Value {
    let gateway = gateway_bin();
    let gateway = gateway.to_str().expect("a UTF-8 path");
    ingest_report(
        &format!("ingest-{kind}"),
        &[
            "--server-bin",
            gateway,
            "--server-arg=--ticker-throttle-ms=0",
            "--kind",
            kind,
            "--rates",
            "500,1000",
            "--symbols",
            "20",
            "--subscribers",
            subscribers,
        ],
    )
}

#[test]
fn each_kind_is_accepted_at_the_asked_rates_and_reaches_its_subscribers() {
    for kind in ["trades", "tickers", "books", "private"] {
        let r = run(kind, "40");
        let steps = r["capacity"]["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 2, "{kind}: both steps kept up: {steps:?}");
        for s in steps {
            let target = s["load"].as_f64().unwrap();
            let accepted = s["accepted_per_s"].as_f64().unwrap();
            assert!(accepted >= 0.9 * target, "{kind}: {s}");
            assert!(
                s["server_cpu_us_per_event"].as_f64().unwrap() > 0.0,
                "{kind}: {s}"
            );
            assert!(s["latency"]["count"].as_u64().unwrap() > 0, "{kind}: {s}");
        }
        assert_eq!(
            r["publish"]["errors"].as_u64(),
            Some(0),
            "{kind}: {}",
            r["publish"]
        );
        let d = &r["delivery"];
        if kind == "trades" || kind == "private" {
            // Lossless streams: every event published reached its subscriber.
            assert!(d["expected"].as_u64().unwrap() > 0, "{kind}: {d}");
            assert_eq!(d["missing"].as_u64(), Some(0), "{kind}: {d}");
        }
        if kind == "books" {
            assert_eq!(d["book_gaps"].as_u64(), Some(0), "{kind}: {d}");
        }
    }
}
