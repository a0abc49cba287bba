//! `--deflate`: clients that offer permessage-deflate as browsers do get the gateway's
//! compressed frames and read every event whole.

mod common;

use common::{scratch, Gateway};
use std::process::Command;

#[test]
fn deflate_clients_read_compressed_trades_and_books_whole() {
    let gw = Gateway::start_with(&["--compression-threshold", "64"]);
    for kind in ["trades", "books"] {
        let dir = scratch(&format!("deflate-{kind}"));
        let json = dir.join("ingest.json");
        let status = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["ingest", "--deflate", "--kind", kind])
            .args(["--target", &format!("127.0.0.1:{}", gw.port)])
            .args(["--ingest", &format!("http://127.0.0.1:{}", gw.internal)])
            .args(["--rates", "500", "--symbols", "10", "--subscribers", "40"])
            .args([
                "--step-secs",
                "2",
                "--warmup-secs",
                "0.5",
                "--no-html",
                "--quiet",
            ])
            .arg("--json")
            .arg(&json)
            .status()
            .expect("run loadtest");
        assert!(
            status.success(),
            "loadtest ingest --deflate --kind {kind}: {status}"
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).unwrap();
        let d = &r["delivery"];
        if kind == "trades" {
            assert!(d["expected"].as_u64().unwrap() > 0, "{d}");
            assert_eq!(d["missing"].as_u64(), Some(0), "{d}");
        } else {
            assert_eq!(d["book_gaps"].as_u64(), Some(0), "{d}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(gw.metric("gateway_compressions_total") > 0.0);
    let before = gw.metric("gateway_deflate_bytes_total{stage=\"before\"}");
    let after = gw.metric("gateway_deflate_bytes_total{stage=\"after\"}");
    assert!(after > 0.0 && after < before, "{after} of {before}");
}
