//! `--deflate`: clients that offer permessage-deflate as browsers do get the gateway's
//! compressed frames and read every event whole.

mod common;

use common::{ingest_report, Gateway};

#[test]
fn deflate_clients_read_compressed_trades_and_books_whole() {
    let gw = Gateway::start_with(&["--compression-threshold", "64"]);
    let (target, ingest) = (
        format!("127.0.0.1:{}", gw.port),
        format!("http://127.0.0.1:{}", gw.internal),
    );
    for kind in ["trades", "books"] {
        let r = ingest_report(
            &format!("deflate-{kind}"),
            &[
                "--deflate",
                "--kind",
                kind,
                "--target",
                &target,
                "--ingest",
                &ingest,
                "--rates",
                "500",
                "--symbols",
                "10",
                "--subscribers",
                "40",
            ],
        );
        let d = &r["delivery"];
        if kind == "trades" {
            assert!(d["expected"].as_u64().unwrap() > 0, "{d}");
            assert_eq!(d["missing"].as_u64(), Some(0), "{d}");
        } else {
            assert_eq!(d["book_gaps"].as_u64(), Some(0), "{d}");
        }
    }
    assert!(gw.metric("gateway_compressions_total") > 0.0);
    let before = gw.metric("gateway_deflate_bytes_total{stage=\"before\"}");
    let after = gw.metric("gateway_deflate_bytes_total{stage=\"after\"}");
    assert!(after > 0.0 && after < before, "{after} of {before}");
}
