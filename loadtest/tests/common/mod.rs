//! What the loadtest integration tests share: the gateway built beside them (and one started
//! by the test itself), and a scratch directory per test.

#![allow(dead_code, reason = "each test binary uses its own part of this")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `GATEWAY_BIN`, else the workspace's debug build.
pub fn gateway_bin() -> PathBuf {
    let bin = match std::env::var_os("GATEWAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("maven-gateway"),
    };
    assert!(
        bin.exists(),
        "{} not built (cargo build --bins, or set GATEWAY_BIN)",
        bin.display()
    );
    bin
}

/// `loadtest ingest` with `args`, in short steps and quietly; its JSON report. The run must
/// succeed.
pub fn ingest_report(name: &str, args: &[&str]) -> serde_json::Value {
    let dir = scratch(name);
    let json = dir.join("ingest.json");
    let status = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("ingest")
        .args(args)
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
    assert!(status.success(), "loadtest ingest {args:?}: {status}");
    let report = serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    report
}

/// A fresh directory for one test's reports.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway started here but not by loadtest, so loadtest knows no process of it.
pub struct Gateway {
    child: Child,
    pub port: u16,
    pub internal: u16,
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    /// With extra flags.
    pub fn start_with(flags: &[&str]) -> Gateway {
        let (port, internal) = (free_port(), free_port());
        let child = Command::new(gateway_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--internal-listen", &format!("127.0.0.1:{internal}")])
            .args(["--log", "warn", "--subscribe-unknown-symbols"])
            .args(flags)
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

    /// The sum of the samples of `name` in the gateway's `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.internal)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: gw\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
