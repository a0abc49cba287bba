//! Loading a gateway that is not a process of this machine: refused unless asked for with
//! `--allow-remote`, and then measured from the gateway's own metrics, with the report saying
//! where the load went.

mod common;

use common::{scratch, Gateway};
use std::process::Command;

fn loadtest(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest")
}

#[test]
fn hosts_off_this_machine_are_refused_without_allow_remote() {
    // TEST-NET-1: never routed, and never reached, since the refusal comes first.
    let cases: [&[&str]; 4] = [
        &["connect", "--target", "192.0.2.1:3000", "--clients", "1"],
        &[
            "fanout",
            "--target",
            "127.0.0.1:9",
            "--ingest",
            "http://192.0.2.1:9100",
        ],
        &[
            "fanout",
            "--target",
            "127.0.0.1:9",
            "--publish-url",
            "http://192.0.2.1/publish",
        ],
        &[
            "fanout",
            "--target",
            "127.0.0.1:9",
            "--stats-url",
            "http://192.0.2.1/stats",
        ],
    ];
    for args in cases {
        let out = loadtest(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(
            err.contains("not a loopback address") && err.contains("--allow-remote"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_gateway_known_by_address_only_is_measured_from_its_metrics() {
    let gw = Gateway::start();
    let dir = scratch("remote");
    let json = dir.join("fanout.json");
    let target = format!("127.0.0.1:{}", gw.port);
    let ingest = format!("http://127.0.0.1:{}", gw.internal);
    let out = loadtest(&[
        "fanout",
        "--allow-remote",
        "--target",
        &target,
        "--ingest",
        &ingest,
        "--clients",
        "40",
        "--rooms",
        "2",
        "--rate",
        "20",
        "--duration",
        "3",
        "--workers",
        "1",
        "--no-html",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).unwrap();
    let notes: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let said = notes
        .iter()
        .find(|n| n.starts_with("load went to"))
        .unwrap_or_else(|| panic!("no line says where the load went: {notes:?}"));
    assert!(said.contains(&target), "{said}");
    assert!(said.contains(&format!("{ingest}/metrics")), "{said}");
    let server = &r["server_resources"];
    assert!(
        server["cpu_us_per_delivery"].as_f64().unwrap_or(0.0) > 0.0,
        "{server}"
    );
    assert!(
        server["rss_end_mb"].as_f64().unwrap_or(0.0) > 1.0,
        "{server}"
    );
    assert!(r["delivery"]["received"].as_u64().unwrap_or(0) > 0, "{r}");
    let _ = std::fs::remove_dir_all(dir);
}
