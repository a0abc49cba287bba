//! The jitter scenario against the gateway built beside it: clients whose connections are
//! destroyed every 1.5–3 s come back with connection state recovery and miss nothing.

mod common;

use common::{gateway_bin, scratch};
use std::process::Command;

#[test]
fn every_trade_arrives_once_and_in_order_through_dropped_connections() {
    let gateway = gateway_bin();
    let out = scratch("jitter");
    let json = out.join("jitter.json");
    let status = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["jitter", "--server-bin"])
        .arg(&gateway)
        .args([
            "--clients",
            "60",
            "--rooms",
            "3",
            "--rate",
            "60",
            "--duration",
            "8",
            "--drop-min-ms",
            "1500",
            "--drop-max-ms",
            "3000",
            "--offline-ms",
            "500",
            "--no-html",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .status()
        .expect("run loadtest");
    assert!(status.success(), "loadtest jitter failed: {status}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).unwrap();
    let j = &report["jitter"];
    let n = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("{k} in {j}"));
    assert_eq!(n("clients"), 60);
    assert!(n("expected") > 0);
    assert_eq!(n("missing"), 0, "{j}");
    assert_eq!(n("duplicates"), 0, "{j}");
    assert_eq!(n("out_of_order_clients"), 0, "{j}");
    assert!(
        n("comebacks") >= 60,
        "every client came back at least once: {j}"
    );
    assert_eq!(n("recovered"), n("comebacks"), "{j}");
    assert!(
        j["replay_after_back_ms"]["count"].as_u64().unwrap_or(0) > 0,
        "{j}"
    );
    let _ = std::fs::remove_dir_all(out);
}
