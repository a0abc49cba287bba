//! Loading a gateway that is not a process of this machine: refused unless asked for with
//! `--allow-remote`, and then measured from the gateway's own metrics, with the report saying
//! where the load went.

mod common;

use common::{gateway_bin, scratch};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn loadtest(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway started here but not by loadtest, so loadtest knows no process of it.
struct Gateway {
    child: Child,
    port: u16,
    internal: u16,
}

impl Gateway {
    fn start() -> Gateway {
        let (port, internal) = (free_port(), free_port());
        let child = Command::new(gateway_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--internal-listen", &format!("127.0.0.1:{internal}")])
            .args(["--log", "warn", "--subscribe-unknown-symbols"])
            .env("GATEWAY_MAX_CONNECTIONS_PER_IP", "100000")
            .env("GATEWAY_HANDSHAKE_RATE_PER_IP", "100000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", internal)).is_err() {
            assert!(Instant::now() < until, "the gateway did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway {
            child,
            port,
            internal,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
