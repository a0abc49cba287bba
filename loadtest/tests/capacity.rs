//! The capacity scenario as a planner uses it: steps until the SLO breaks or the largest load
//! is reached, then the per-unit costs of the largest load that held and the instances a
//! planned load needs.

mod common;

use common::{gateway_bin, scratch};
use std::process::Command;

#[test]
fn a_capacity_run_projects_the_instances_a_planned_load_needs() {
    let dir = scratch("capacity");
    let json = dir.join("capacity.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["capacity", "--server-bin"])
        .arg(gateway_bin())
        .args([
            "--vary", "clients", "--start", "20", "--step", "20", "--max", "40",
        ])
        .args([
            "--rate",
            "20",
            "--rooms",
            "2",
            "--step-secs",
            "1.5",
            "--warmup-secs",
            "0.5",
        ])
        .args([
            "--slo-p99-ms",
            "1000",
            "--plan-clients",
            "100000",
            "--plan-rate",
            "50",
        ])
        .args(["--instance-cores", "8", "--instance-memory-mib", "16384"])
        .args(["--no-html", "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("run loadtest");
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cap = &r["capacity"];
    assert_eq!(cap["max_load_held"].as_f64(), Some(40.0), "{cap}");
    let p = &cap["projection"];
    assert_eq!(p["held"]["clients"].as_u64(), Some(40), "{p}");
    // 100,000 clients over 2 rooms at 50 publishes/s.
    assert_eq!(
        p["target_deliveries_per_s"].as_f64(),
        Some(2_500_000.0),
        "{p}"
    );
    let cpu = p["held"]["cpu_us_per_delivery"]
        .as_f64()
        .expect("CPU per delivery");
    let per_instance = p["deliveries_per_instance"].as_f64().unwrap();
    assert!((per_instance - 8e6 * 0.6 / cpu).abs() < 1.0, "{p}");
    let instances = p["instances"].as_u64().expect("a count");
    assert!(instances as f64 >= 2_500_000.0 / per_instance, "{p}");
    assert!(!p["assumptions"].as_array().unwrap().is_empty());
    assert!(human.contains("projection   100000 clients"), "{human}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nonsense_planning_figures_are_refused_before_any_load() {
    for (flag, value) in [
        ("--headroom", "NaN"),
        ("--headroom", "0"),
        ("--headroom", "1.5"),
        ("--instance-cores", "0"),
        ("--instance-cores=-8", ""),
        ("--instance-memory-mib", "0"),
        ("--plan-rate", "NaN"),
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_loadtest"));
        c.args([
            "capacity",
            "--target",
            "127.0.0.1:9",
            "--plan-clients",
            "1000",
            flag,
        ]);
        if !value.is_empty() {
            c.arg(value);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} ran");
        let name = flag.split('=').next().unwrap();
        assert!(err.contains(name), "{flag} {value}: {err}");
    }
}
