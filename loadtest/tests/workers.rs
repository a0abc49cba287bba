//! Workers on other machines, played here by `loadtest worker` processes listening on
//! different loopback addresses: the coordinator splits the clients over them and merges
//! their figures, refuses a worker that does not know its token, and ends the run when a
//! worker is lost.

mod common;

use common::{gateway_bin, scratch};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `loadtest worker` listening on `ip`, its stderr kept.
struct Worker {
    child: Child,
    addr: String,
    said: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(ip: &str, token: &str) -> Worker {
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{ip}:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["worker", "--listen", &addr, "--token", token])
            // Its clients leave from its own address, as on a machine of its own.
            .args(["--source-addr", ip])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a worker");
        let said = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap());
        let keep = said.clone();
        std::thread::spawn(move || {
            for l in lines.lines().map_while(Result::ok) {
                keep.lock().unwrap().push(l);
            }
        });
        let until = Instant::now() + Duration::from_secs(10);
        while !said.lock().unwrap().iter().any(|l| l.contains("listening")) {
            assert!(Instant::now() < until, "the worker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Worker { child, addr, said }
    }

    /// Waits until a coordinator's run is under way here.
    fn await_run(&self) {
        assert!(self.says("a run from"), "the run did not start");
    }

    /// Whether the worker prints a line containing `what` within 30 s (its output is read
    /// by another thread, so a line may land after the coordinator has finished).
    fn says(&self, what: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(30);
        while !self.said.lock().unwrap().iter().any(|l| l.contains(what)) {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn signal(&self, which: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([which, &pid]).status().unwrap();
        assert!(sent.success(), "kill {which} {pid}");
    }

    /// What it reported of its clients at the end of a run: (clients, events received).
    fn own_figures(&self) -> (u64, u64) {
        let said = self.said.lock().unwrap();
        let line = said
            .iter()
            .find(|l| l.contains("expected events received"))
            .unwrap_or_else(|| panic!("no figures from {}: {said:?}", self.addr));
        let n: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        // "worker W: C clients, R of E expected events received"
        (n[1], n[2])
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator(workers: &[&Worker], token: &str, secs: &str, json: &Path) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    c.args(["fanout", "--server-bin"]).arg(gateway_bin());
    for w in workers {
        c.args(["--worker-at", &w.addr]);
    }
    c.args(["--worker-token", token])
        .args(["--clients", "40", "--rooms", "2", "--rate", "20"])
        .args(["--duration", secs, "--no-html", "--quiet", "--json"])
        .arg(json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loadtest")
}

fn finish(c: Child) -> (bool, String) {
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_workers_carry_the_run_and_their_figures_add_up() {
    let (a, b) = (
        Worker::start("127.0.0.1", "s3cret"),
        Worker::start("127.0.0.2", "s3cret"),
    );
    // Someone holds a connection to a worker and never says a word: nobody waits on it.
    let _idle = std::net::TcpStream::connect(&a.addr).unwrap();
    let dir = scratch("workers");
    let json = dir.join("fanout.json");
    let (ok, err) = finish(coordinator(&[&a, &b], "s3cret", "3", &json));
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let (ca, ra) = a.own_figures();
    let (cb, rb) = b.own_figures();
    assert!(ca > 0 && cb > 0, "both carried clients: {ca}, {cb}");
    assert_eq!(ca + cb, 40);
    assert_eq!(r["connections"]["connected"].as_u64(), Some(40), "{r}");
    assert_eq!(r["client_resources"]["workers"].as_u64(), Some(2));
    let received = r["delivery"]["received"].as_u64().unwrap();
    assert!(received > 0, "{r}");
    assert_eq!(
        received,
        ra + rb,
        "the report is the sum of the workers' own figures"
    );
    assert_eq!(
        r["delivery"]["missing"].as_u64(),
        Some(0),
        "{}",
        r["delivery"]
    );
    let notes = r["notes"].to_string();
    assert!(
        notes.contains(&format!("worker 0 at {}: clock", a.addr))
            && notes.contains(&format!("worker 1 at {}: clock", b.addr)),
        "{notes}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_coordinator_without_the_token_is_refused() {
    let w = Worker::start("127.0.0.1", "right");
    let dir = scratch("workers-token");
    let (ok, err) = finish(coordinator(&[&w], "wrong", "2", &dir.join("r.json")));
    assert!(!ok);
    assert!(err.contains("refused: wrong token"), "{err}");
    assert!(w.says("refused"), "the worker says so too");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_lost_worker_ends_the_run_with_an_error() {
    let a = Worker::start("127.0.0.1", "t");
    let mut b = Worker::start("127.0.0.3", "t");
    let dir = scratch("workers-lost");
    let c = coordinator(&[&a, &b], "t", "20", &dir.join("r.json"));
    // Once the run is under way, one machine goes.
    b.await_run();
    std::thread::sleep(Duration::from_secs(2));
    b.child.kill().unwrap();
    let (ok, err) = finish(c);
    assert!(!ok, "the run went on");
    assert!(
        err.contains(&format!("at {} was lost mid-run", b.addr)),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_worker_that_goes_silent_voids_the_run() {
    let a = Worker::start("127.0.0.1", "t");
    let b = Worker::start("127.0.0.4", "t");
    let dir = scratch("workers-silent");
    let c = coordinator(&[&a, &b], "t", "40", &dir.join("r.json"));
    b.await_run();
    std::thread::sleep(Duration::from_secs(2));
    // A frozen machine, or a cut network: nothing is closed, nothing more is heard.
    b.signal("-STOP");
    let (ok, err) = finish(c);
    assert!(!ok, "the run went on");
    assert!(
        err.contains(&format!("at {} went silent mid-run", b.addr)),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_worker_that_falls_behind_for_a_while_is_counted_in_full() {
    let a = Worker::start("127.0.0.1", "t");
    let b = Worker::start("127.0.0.5", "t");
    let dir = scratch("workers-behind");
    let json = dir.join("fanout.json");
    let c = coordinator(&[&a, &b], "t", "8", &json);
    b.await_run();
    std::thread::sleep(Duration::from_secs(4));
    // Frozen for less than the silence that voids a run: its reports come late, all at once.
    b.signal("-STOP");
    std::thread::sleep(Duration::from_secs(4));
    b.signal("-CONT");
    let (ok, err) = finish(c);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ((_, ra), (_, rb)) = (a.own_figures(), b.own_figures());
    assert_eq!(
        r["delivery"]["received"].as_u64(),
        Some(ra + rb),
        "what the late worker received is in the report"
    );
    let _ = std::fs::remove_dir_all(dir);
}
