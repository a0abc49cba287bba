//! The coordinator: spawns the server (optionally) and the worker processes, drives the
//! phases of a scenario, merges the workers' ticks into a timeline and cumulative figures,
//! samples /proc for the server and the client, and prints a progress line.

use crate::cli::Common;
use crate::hist;
use crate::plan::*;
use crate::publish::{BodyFormat, Hook, PubStats};
use crate::report::{Sample, ServerInfo};
use crate::sys;
use crate::tally::Tally;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command as PCommand};
use tokio::sync::mpsc;

pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.octets()[0] == 127,
            IpAddr::V6(v6) => v6.is_loopback(),
        };
    }
    // A name: every address it resolves to must be loopback.
    match (h, 0).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<_> = addrs.collect();
            !v.is_empty() && v.iter().all(|a| is_loopback_host(&a.ip().to_string()))
        }
        Err(_) => false,
    }
}

/// Checks a URL loadtest will send to: http, and on loopback unless `allow_remote`.
pub fn check_url(what: &str, url: &str, allow_remote: bool) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{what}: bad URL {url}: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!("{what}: only http:// is supported ({url})"));
    }
    let host = u.host_str().unwrap_or("");
    if !allow_remote && !is_loopback_host(host) {
        return Err(format!(
            "{what}: {host} is not a loopback address; loadtest only targets 127.0.0.0/8 \
             unless given --allow-remote"
        ));
    }
    Ok(())
}

/// GETs `url` every second for the rest of the run, giving each answer's body to `take`.
fn poll_each_second(url: String, take: impl Fn(&str) + Send + 'static) {
    tokio::spawn(async move {
        let Ok(client) = reqwest::Client::builder()
            .timeout(Duration::from_millis(800))
            .build()
        else {
            return;
        };
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if let Ok(text) = r.text().await {
                    take(&text);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// CPU and resident memory from a Prometheus text exposition.
fn process_figures(text: &str) -> Option<sys::ProcSample> {
    let value = |name: &str| {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
    };
    let cpu = value("process_cpu_seconds_total")?;
    Some(sys::ProcSample {
        cpu_us: (cpu * 1e6) as u64,
        rss_bytes: value("process_resident_memory_bytes").unwrap_or(0.0) as u64,
        threads: 0,
    })
}

/// Forwards a worker's reports, then `None` when it is gone.
fn read_reports(
    w: usize,
    from: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<(usize, Option<Report>)>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<Report>(&l) {
                Ok(r) => {
                    let _ = tx.send((w, Some(r)));
                }
                Err(e) => eprintln!("worker {w}: bad report: {e}"),
            }
        }
        let _ = tx.send((w, None));
    });
}

/// How often the coordinator tells remote workers it is there, and how long a remote worker
/// (which reports every second) may go unheard before the run is void.
const REMOTE_PING: Duration = Duration::from_secs(2);
const REMOTE_SILENCE: Duration = Duration::from_secs(10);

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub ingest_port: u16,
    pub log: PathBuf,
    pub command: String,
}

struct WorkerProc {
    /// A local worker process; `None` for a worker on another machine.
    child: Option<Child>,
    commands: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    pid: Option<u32>,
    /// Where a worker on another machine listens.
    remote: Option<String>,
    alive: bool,
}

/// Figures over a window (measurement phase, capacity step).
pub struct Window {
    pub lat: Vec<Histogram<u64>>,
    pub received: [u64; KIND_COUNT],
    pub gaps: u64,
    pub started: Instant,
    pub server_cpu_us0: Option<u64>,
    pub client_cpu_us0: u64,
    pub machine0: Option<(u64, u64)>,
    pub lag_max_us: u64,
    pub worker_cpu0: Vec<u64>,
}

pub struct WindowResult {
    pub secs: f64,
    pub lat: Vec<Histogram<u64>>,
    pub received: [u64; KIND_COUNT],
    pub gaps: u64,
    pub server_cpu_us: Option<u64>,
    pub client_cpu_us: u64,
    pub machine_busy_pct: Option<f64>,
    pub worker_cpu_pct: Vec<f64>,
}

impl WindowResult {
    pub fn all_latency(&self, kinds: &[usize]) -> Histogram<u64> {
        let mut h = hist::new_hist();
        for &k in kinds {
            hist::merge(&mut h, &self.lat[k]);
        }
        h
    }
    pub fn deliveries(&self) -> u64 {
        self.received.iter().sum()
    }
}

pub struct OpenResult {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub secs: f64,
}

pub struct Harness {
    pub common: Common,
    pub target: SocketAddr,
    pub hook: Option<Hook>,
    pub server_pid: Option<u32>,
    pub server: Option<ServerProc>,
    pub server_info: ServerInfo,
    workers: Vec<WorkerProc>,
    rx: mpsc::UnboundedReceiver<(usize, Option<Report>)>,
    queued: Vec<VecDeque<Tick>>,
    last_tick: Vec<Tick>,
    cum: Tally,
    pub windows: HashMap<String, Window>,
    pub timeline: Vec<Sample>,
    pub phase: String,
    pub start: Instant,
    progress: bool,
    tty: bool,
    opened: HashMap<u32, (usize, u64, u64, Option<String>)>,
    finals: Vec<FinalReport>,
    closed: usize,
    next_group: u32,
    pub next_client: u64,
    pub publishers: Vec<Arc<PubStats>>,
    prev_server_cpu: Option<u64>,
    prev_client_cpu: u64,
    prev_machine: Option<(u64, u64)>,
    prev_published: u64,
    prev_sample_at: Instant,
    pub gateway_stats: Arc<Mutex<Option<serde_json::Value>>>,
    /// (time, total.messages_out) of the last two distinct /stats readings.
    stats_readings: Arc<Mutex<VecDeque<(Instant, u64)>>>,
    last_stats_at: Option<Instant>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    /// Why the run is void: a worker on another machine was lost.
    pub lost: Option<String>,
    /// When each worker was last heard from, and when remote workers were last pinged.
    last_heard: Vec<Instant>,
    last_ping: Instant,
    /// Workers have been told to exit: their going is expected.
    ending: bool,
    /// The server's CPU and memory from its metrics, when it is not a process here.
    remote_sample: Arc<Mutex<Option<sys::ProcSample>>>,
    pub deadline: Instant,
    pub peak_rss: u64,
    /// Connection failures that were expected (the `mixed` private-channel probe).
    pub ignored_failures: u64,
    /// Kinds whose latency goes into the per-second timeline (and progress line).
    pub timeline_kinds: Vec<usize>,
}

impl Harness {
    /// Validate the target, spawn the server if asked, prepare the publish hook.
    pub async fn new(common: Common, scenario: &str, budget: Duration) -> Result<Harness, String> {
        Self::with_env(common, scenario, budget, &[]).await
    }

    /// As `new`, with extra environment for a spawned server.
    pub async fn with_env(
        common: Common,
        scenario: &str,
        budget: Duration,
        extra_env: &[(String, String)],
    ) -> Result<Harness, String> {
        let started = Instant::now();
        let mut server = None;
        let out_dir = PathBuf::from(&common.out_dir);
        let _ = std::fs::create_dir_all(&out_dir);
        if common.server_bin.is_some() && common.server_cmd.is_some() {
            return Err("give --server-bin or --server-cmd, not both".into());
        }
        if common.server_bin.is_some() || common.server_cmd.is_some() {
            if common.target.is_some() {
                return Err("--target is chosen by loadtest when it spawns the server".into());
            }
            server = Some(spawn_server(&common, scenario, &out_dir, extra_env).await?);
        }
        let target: SocketAddr = match (&server, &common.target) {
            (Some(s), _) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), s.port),
            (None, Some(t)) => {
                let (host, _) = t.rsplit_once(':').ok_or("--target must be host:port")?;
                if !common.allow_remote && !is_loopback_host(host) {
                    return Err(format!(
                        "--target {t}: not a loopback address; loadtest only targets \
                         127.0.0.0/8 unless given --allow-remote"
                    ));
                }
                t.to_socket_addrs()
                    .map_err(|e| format!("--target {t}: {e}"))?
                    .find(|a| a.is_ipv4())
                    .ok_or(format!("--target {t}: no IPv4 address"))?
            }
            (None, None) => {
                return Err(
                    "give --target HOST:PORT, or --server-bin / --server-cmd to spawn a server"
                        .into(),
                )
            }
        };
        if !common.allow_remote && !target.ip().is_loopback() {
            return Err(format!("{target} is not on 127.0.0.0/8"));
        }
        // Publish hook.
        let mut hook = None;
        let ingest_default = server
            .as_ref()
            .map(|s| format!("http://127.0.0.1:{}/internal/events", s.ingest_port));
        let template = common.publish_body.clone();
        if let Some(cmd) = &common.publish_cmd {
            hook = Some(Hook::Cmd {
                cmd: cmd.clone(),
                template,
            });
        } else {
            let url = common
                .publish_url
                .clone()
                .or_else(|| common.ingest.as_ref().map(|i| ingest_url(i)))
                .or(ingest_default);
            if let Some(url) = url {
                check_url("publish URL", &url, common.allow_remote)?;
                let format = if template.is_none() {
                    BodyFormat::Ndjson
                } else {
                    common.publish_format
                };
                hook = Some(Hook::Http {
                    url,
                    template,
                    format,
                    token: common.ingest_token.clone(),
                });
            }
        }
        let stats_url = match (&common.stats_url, &server, common.server_cmd.is_some()) {
            (Some(u), _, _) => Some(u.clone()),
            (None, Some(s), false) => Some(format!("http://127.0.0.1:{}/stats", s.ingest_port)),
            (None, None, _) => common.ingest.as_ref().map(|i| {
                let u = ingest_url(i);
                u.trim_end_matches("/internal/events").to_string() + "/stats"
            }),
            _ => None,
        };
        if let Some(u) = &stats_url {
            check_url("--stats-url", u, common.allow_remote)?;
        }
        let server_pid = common.server_pid.or(server.as_ref().map(|s| s.pid));
        // A server that is no process here is measured from its own metrics.
        let metrics_url = match (&common.metrics_url, server_pid, &stats_url) {
            (Some(u), _, _) => Some(u.clone()),
            (None, None, Some(s)) => s
                .strip_suffix("/stats")
                .map(|base| format!("{base}/metrics")),
            _ => None,
        };
        let remote_sample = Arc::new(Mutex::new(None));
        if let Some(u) = &metrics_url {
            check_url("--metrics-url", u, common.allow_remote)?;
            if server_pid.is_none() {
                let into = remote_sample.clone();
                poll_each_second(u.clone(), move |text| {
                    if let Some(s) = process_figures(text) {
                        *into.lock().unwrap() = Some(s);
                    }
                });
            }
        }
        let mut notes = Vec::new();
        if common.allow_remote {
            notes.push(format!(
                "load went to {target} (clients){}{}",
                hook.as_ref()
                    .map(|h| format!(", publishes to {}", h.describe()))
                    .unwrap_or_default(),
                metrics_url
                    .as_ref()
                    .filter(|_| server_pid.is_none())
                    .map(|u| format!("; server CPU and memory from {u}"))
                    .unwrap_or_default(),
            ));
        }
        let server_info = ServerInfo {
            name: common.label.clone().unwrap_or_else(|| {
                match (&common.server_bin, &common.server_cmd) {
                    (Some(b), _) => b
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    (_, Some(c)) => c.split_whitespace().next().unwrap_or("server").to_string(),
                    _ => "server".to_string(),
                }
            }),
            target: target.to_string(),
            pid: server_pid,
            command: server.as_ref().map(|s| s.command.clone()),
            log: server.as_ref().map(|s| s.log.display().to_string()),
            publish: hook.as_ref().map(|h| h.describe()),
            stats_url: stats_url.clone(),
        };
        let tty = std::io::stderr().is_terminal();
        let (_tx, rx) = mpsc::unbounded_channel();
        let gateway_stats = Arc::new(Mutex::new(None));
        let stats_readings = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(u) = &stats_url {
            let gs = gateway_stats.clone();
            let rd = stats_readings.clone();
            poll_each_second(u.clone(), move |text| {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                    if let Some(m) = v["total"]["messages_out"].as_u64() {
                        let mut q = rd.lock().unwrap();
                        q.push_back((Instant::now(), m));
                        if q.len() > 2 {
                            q.pop_front();
                        }
                    }
                    *gs.lock().unwrap() = Some(v);
                }
            });
        }
        let now = Instant::now();
        Ok(Harness {
            progress: !common.quiet,
            common,
            target,
            hook,
            server_pid,
            server,
            server_info,
            workers: Vec::new(),
            rx,
            queued: Vec::new(),
            last_tick: Vec::new(),
            cum: Tally::new(),
            windows: HashMap::new(),
            timeline: Vec::new(),
            phase: "setup".into(),
            start: now,
            tty,
            opened: HashMap::new(),
            finals: Vec::new(),
            closed: 0,
            next_group: 0,
            next_client: 0,
            publishers: Vec::new(),
            prev_server_cpu: None,
            prev_client_cpu: 0,
            prev_machine: sys::machine_cpu(),
            prev_published: 0,
            prev_sample_at: now,
            gateway_stats,
            stats_readings,
            last_stats_at: None,
            warnings: Vec::new(),
            notes,
            lost: None,
            last_heard: Vec::new(),
            last_ping: now,
            ending: false,
            remote_sample,
            deadline: started + budget + Duration::from_secs(60),
            peak_rss: 0,
            ignored_failures: 0,
            timeline_kinds: (0..KIND_COUNT).collect(),
        })
    }

    pub fn require_hook(&self) -> Result<Hook, String> {
        self.hook.clone().ok_or_else(|| {
            "this scenario publishes: give --ingest URL (gateway ingest), --publish-url, or --publish-cmd".into()
        })
    }

    /// Start `n` worker processes (re-executing this binary), or join the workers on other
    /// machines named by `--worker-at`.
    pub async fn start_workers(&mut self, n: usize) -> Result<(), String> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.rx = rx;
        if !self.common.worker_at.is_empty() {
            let addrs = self.common.worker_at.clone();
            let far = addrs.iter().any(|a| {
                a.rsplit_once(':')
                    .is_some_and(|(host, _)| !is_loopback_host(host))
            });
            if far && self.target.ip().is_loopback() {
                self.warnings.push(format!(
                    "the target {} is a loopback address: workers on other machines load their own",
                    self.target
                ));
            }
            for (w, addr) in addrs.iter().enumerate() {
                self.join_worker(w, addr, tx.clone()).await?;
            }
            return self.await_ready(addrs.len()).await;
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // Loopback addresses spread the client ports; another host is reached from whatever
        // address the route gives.
        let src: Vec<Ipv4Addr> = if self.target.ip().is_loopback() {
            (0..self.common.source_addrs.clamp(1, 250))
                .map(|i| Ipv4Addr::new(127, 0, 0, 1 + i as u8))
                .collect()
        } else {
            vec![Ipv4Addr::UNSPECIFIED]
        };
        for w in 0..n {
            let mut child = PCommand::new(&exe)
                .arg("__worker")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            let pid = child.id().unwrap_or(0);
            let mut stdin = child.stdin.take().unwrap();
            let spec = self.worker_spec(w, src.clone(), 0);
            let mut line = serde_json::to_vec(&spec).unwrap();
            line.push(b'\n');
            stdin.write_all(&line).await.map_err(|e| e.to_string())?;
            let stdout = child.stdout.take().unwrap();
            read_reports(w, stdout, tx.clone());
            self.add_worker(WorkerProc {
                child: Some(child),
                commands: Some(Box::new(stdin)),
                pid: Some(pid),
                remote: None,
                alive: true,
            });
        }
        self.await_ready(n).await
    }

    /// Joins the worker listening at `addr` on another machine: the token, a clock reading,
    /// then the run's spec, as a local worker gets it.
    async fn join_worker(
        &mut self,
        w: usize,
        addr: &str,
        tx: mpsc::UnboundedSender<(usize, Option<Report>)>,
    ) -> Result<(), String> {
        let token = crate::cli::worker_token(&self.common.worker_token)
            .ok_or("--worker-at needs --worker-token (or LOADTEST_WORKER_TOKEN)")?;
        let fail = |e: String| format!("worker at {addr}: {e}");
        let sock = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| fail("no answer in 5 s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = sock.set_nodelay(true);
        let (r, mut out) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        let mut ask = async |out: &mut tokio::net::tcp::OwnedWriteHalf,
                             v: serde_json::Value|
               -> Result<serde_json::Value, String> {
            let mut line = v.to_string().into_bytes();
            line.push(b'\n');
            out.write_all(&line)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let answer = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
                .await
                .map_err(|_| fail("no answer in 5 s".into()))?
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail("closed the connection".into()))?;
            serde_json::from_str(&answer).map_err(|e| fail(format!("{e}: {answer}")))
        };
        let hello = ask(&mut out, serde_json::json!({ "token": token })).await?;
        if let Some(why) = hello["refused"].as_str() {
            return Err(fail(format!("refused: {why}")));
        }
        // Its clock against ours, from the probe with the shortest round trip: latencies are
        // measured on its clock against publish times on ours.
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..8 {
            let t0 = crate::worker::now_us();
            let r = ask(&mut out, serde_json::json!({ "probe": 1 })).await?;
            let t1 = crate::worker::now_us();
            let theirs = r["now_us"].as_u64().ok_or_else(|| fail(format!("{r}")))?;
            let rtt = t1.saturating_sub(t0);
            let ahead = theirs as i64 - ((t0 + t1) / 2) as i64;
            if best.is_none_or(|(b, _)| rtt < b) {
                best = Some((rtt, ahead));
            }
        }
        let (rtt, ahead) = best.unwrap_or_default();
        self.notes.push(format!(
            "worker {w} at {addr}: clock {ahead} µs ahead of the coordinator's, measured to \
             ±{} µs (half the best of 8 round trips); its latencies are corrected by it",
            rtt / 2 + 1
        ));
        let spec = self.worker_spec(w, vec![Ipv4Addr::UNSPECIFIED], ahead);
        let mut line = serde_json::to_vec(&spec).unwrap();
        line.push(b'\n');
        out.write_all(&line)
            .await
            .map_err(|e| fail(e.to_string()))?;
        read_reports(w, lines.into_inner(), tx);
        self.add_worker(WorkerProc {
            child: None,
            commands: Some(Box::new(out)),
            pid: None,
            remote: Some(addr.to_string()),
            alive: true,
        });
        Ok(())
    }

    /// What every worker is told first: the target, the protocol, where its clients come
    /// from, and how far its clock is ahead of ours.
    fn worker_spec(
        &self,
        w: usize,
        source_addrs: Vec<Ipv4Addr>,
        clock_ahead_us: i64,
    ) -> WorkerSpec {
        WorkerSpec {
            worker: w,
            target: self.target,
            path: self.common.path.clone(),
            namespace: self.common.namespace.clone(),
            source_addrs,
            connect_timeout_ms: self.common.connect_timeout_ms,
            tick_ms: 1000,
            origin: self.common.origin.clone(),
            clock_ahead_us,
            deflate: self.common.deflate,
        }
    }

    fn add_worker(&mut self, worker: WorkerProc) {
        self.workers.push(worker);
        self.queued.push(VecDeque::new());
        self.last_tick.push(Tick::default());
        self.last_heard.push(Instant::now());
    }

    async fn await_ready(&mut self, n: usize) -> Result<(), String> {
        let mut ready = 0;
        let until = Instant::now() + Duration::from_secs(10);
        while ready < n {
            match tokio::time::timeout_at(until.into(), self.rx.recv()).await {
                Ok(Some((_, Some(Report::Ready { .. })))) => ready += 1,
                Ok(Some((w, None))) => return Err(format!("worker {w} ended at start")),
                Ok(_) => {}
                Err(_) => return Err("workers did not start".into()),
            }
        }
        self.prev_client_cpu = self.client_cpu_us();
        Ok(())
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    async fn send_all(&mut self, cmd: &Command) {
        let mut line = serde_json::to_vec(cmd).unwrap();
        line.push(b'\n');
        for w in &mut self.workers {
            if let Some(s) = &mut w.commands {
                if s.write_all(&line).await.is_err() {
                    w.alive = false;
                }
            }
        }
    }

    async fn send_to(&mut self, w: usize, cmd: &Command) {
        let mut line = serde_json::to_vec(cmd).unwrap();
        line.push(b'\n');
        if let Some(s) = &mut self.workers[w].commands {
            if s.write_all(&line).await.is_err() {
                self.workers[w].alive = false;
            }
        }
    }

    /// Open `count` clients following `plan`, at `rate` per second overall; returns once each
    /// one is connected and subscribed, or failed.
    pub async fn open(&mut self, plan: &Plan, count: u64, rate: f64) -> Result<OpenResult, String> {
        let group = self.next_group;
        self.next_group += 1;
        let nw = self.workers.len() as u64;
        let t0 = Instant::now();
        let first = self.next_client;
        self.next_client += count;
        for w in 0..nw {
            let share = count / nw + u64::from(w < count % nw);
            let offset = (count / nw) * w + w.min(count % nw);
            let cmd = Command::Open {
                group,
                first: first + offset,
                count: share,
                rate: rate / nw as f64,
                plan: plan.clone(),
            };
            self.send_to(w as usize, &cmd).await;
        }
        let max_wait = Duration::from_secs_f64(count as f64 / rate.max(1.0))
            + Duration::from_millis(self.common.connect_timeout_ms)
            + Duration::from_secs(10);
        let until = Instant::now() + max_wait;
        loop {
            if let Some((done, ..)) = self.opened.get(&group) {
                if *done >= self.alive_workers() {
                    break;
                }
            }
            if !self.pump(until).await {
                return Err(self
                    .lost
                    .clone()
                    .unwrap_or_else(|| "timed out waiting for clients to connect".into()));
            }
        }
        let (_, ok, failed, first_error) = self.opened.remove(&group).unwrap();
        Ok(OpenResult {
            ok,
            failed,
            first_error,
            secs: t0.elapsed().as_secs_f64(),
        })
    }

    fn alive_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.alive).count()
    }

    /// Process reports for `d`.
    pub async fn run_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while self.pump(until).await {}
        // With no worker left to hear from, the time still has to pass (publishers run).
        let until = until.min(self.deadline);
        if Instant::now() < until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Handle one report or sample the timeline; false once `until` has passed.
    async fn pump(&mut self, until: Instant) -> bool {
        let until = until.min(self.deadline);
        if Instant::now() >= until {
            return false;
        }
        if self.lost.is_some() {
            return false;
        }
        // Woken at least once a second, to hear whether remote workers are still there.
        let wake = until.min(Instant::now() + Duration::from_secs(1));
        let r = tokio::time::timeout_at(wake.into(), self.rx.recv()).await;
        if let Ok(Some((w, Some(_)))) = &r {
            self.last_heard[*w] = Instant::now();
        }
        match r {
            Err(_) => return self.remote_alive().await && Instant::now() < until,
            Ok(None) => return false,
            Ok(Some((w, None))) => {
                if self.workers[w].alive {
                    self.workers[w].alive = false;
                    if self.workers[w].remote.is_some() && !self.ending {
                        self.lose(w, "was lost mid-run");
                        return false;
                    }
                    self.warnings.push(format!("worker {w} exited early"));
                }
            }
            Ok(Some((w, Some(rep)))) => match rep {
                Report::Tick(t) => {
                    self.queued[w].push_back(*t);
                    self.try_sample();
                }
                Report::Opened {
                    group,
                    ok,
                    failed,
                    first_error,
                    ..
                } => {
                    let e = self.opened.entry(group).or_insert((0, 0, 0, None));
                    e.0 += 1;
                    e.1 += ok;
                    e.2 += failed;
                    if e.3.is_none() {
                        e.3 = first_error;
                    }
                }
                Report::Final(f) => self.finals.push(f),
                Report::Closed { .. } => self.closed += 1,
                Report::Ready { .. } => {}
            },
        }
        if Instant::now() >= self.deadline {
            self.warnings
                .push("hard time limit reached; stopping".into());
            return false;
        }
        self.remote_alive().await
    }

    /// A machine's share of the load is gone: the figures would no longer be the load asked
    /// for, so the run ends, void.
    fn lose(&mut self, w: usize, how: &str) {
        let addr = self.workers[w].remote.clone().unwrap_or_default();
        self.lost
            .get_or_insert_with(|| format!("worker {w} at {addr} {how}; the run is void"));
        self.deadline = Instant::now();
    }

    /// Tells remote workers the coordinator is there, and finds any that went silent (a
    /// frozen machine or a cut network closes nothing); false once one is lost.
    async fn remote_alive(&mut self) -> bool {
        if self.lost.is_some() {
            return false;
        }
        if self.ending || self.workers.iter().all(|w| w.remote.is_none()) {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.last_ping) >= REMOTE_PING {
            self.last_ping = now;
            for w in 0..self.workers.len() {
                if self.workers[w].remote.is_some() && self.workers[w].alive {
                    self.send_to(w, &Command::Ping).await;
                }
            }
        }
        let silent = (0..self.workers.len()).find(|&w| {
            self.workers[w].remote.is_some()
                && self.workers[w].alive
                && now.duration_since(self.last_heard[w]) > REMOTE_SILENCE
        });
        match silent {
            Some(w) => {
                self.lose(w, "went silent mid-run (no report for 10 s)");
                false
            }
            None => true,
        }
    }

    /// Samples every tick still queued behind a worker that fell behind, so what it
    /// received late is counted (at the end of a window, nothing waits for the others).
    fn flush_ticks(&mut self) {
        self.try_sample();
        while self.queued.iter().any(|q| !q.is_empty()) {
            let ticks: Vec<(usize, Tick)> = (0..self.queued.len())
                .filter_map(|w| self.queued[w].pop_front().map(|t| (w, t)))
                .collect();
            self.sample(ticks);
        }
    }

    fn try_sample(&mut self) {
        loop {
            let alive: Vec<usize> = (0..self.workers.len())
                .filter(|&w| self.workers[w].alive)
                .collect();
            let ready = alive.iter().all(|&w| !self.queued[w].is_empty());
            let stuck = alive.iter().any(|&w| self.queued[w].len() >= 3);
            if alive.is_empty() || !(ready || stuck) {
                return;
            }
            let ticks: Vec<(usize, Tick)> = alive
                .iter()
                .filter_map(|&w| self.queued[w].pop_front().map(|t| (w, t)))
                .collect();
            self.sample(ticks);
        }
    }

    pub fn client_cpu_us(&self) -> u64 {
        let t = sys::proc_sample(std::process::id())
            .map(|s| s.cpu_us)
            .unwrap_or(0);
        t + self.worker_cpu().iter().sum::<u64>()
    }

    /// Each worker's CPU time: read here for a local process, as it last reported it for one
    /// on another machine.
    fn worker_cpu(&self) -> Vec<u64> {
        self.workers
            .iter()
            .zip(&self.last_tick)
            .map(|(w, tick)| match w.pid {
                Some(pid) => sys::proc_sample(pid).map(|s| s.cpu_us).unwrap_or(0),
                None => tick.cpu_us,
            })
            .collect()
    }

    pub fn server_sample(&self) -> Option<sys::ProcSample> {
        match self.server_pid {
            Some(pid) => sys::proc_sample(pid),
            None => *self.remote_sample.lock().unwrap(),
        }
    }

    pub fn published(&self) -> u64 {
        self.publishers.iter().map(|p| p.sent.load(Relaxed)).sum()
    }

    fn sample(&mut self, ticks: Vec<(usize, Tick)>) {
        let now = Instant::now();
        let dt = now
            .duration_since(self.prev_sample_at)
            .as_secs_f64()
            .max(0.001);
        self.prev_sample_at = now;
        let mut interval = hist::new_hist();
        let mut received = [0u64; KIND_COUNT];
        let mut gaps = 0;
        let mut lag = 0;
        let mut hs = hist::new_hist();
        for (w, t) in &ticks {
            for (k, enc) in t.latency.iter().enumerate() {
                received[k] += t.received[k];
                if !enc.is_empty() {
                    if let Some(h) = hist::decode(enc) {
                        hist::merge(&mut self.cum.lat[k], &h);
                        for win in self.windows.values_mut() {
                            hist::merge(&mut win.lat[k], &h);
                        }
                        if self.timeline_kinds.contains(&k) {
                            hist::merge(&mut interval, &h);
                        }
                    }
                }
            }
            if !t.handshake.is_empty() {
                if let Some(h) = hist::decode(&t.handshake) {
                    hist::merge(&mut self.cum.handshake, &h);
                    hist::merge(&mut hs, &h);
                }
            }
            gaps += t.gaps;
            lag = lag.max(t.lag_max_us);
            self.cum.bytes += t.bytes;
            self.cum.dups += t.dups;
            self.cum.book_gaps += t.book_gaps;
            self.cum.book_resyncs += t.book_resyncs;
            self.cum.replays += t.replays;
            for (k, v) in &t.errors {
                *self.cum.errors.entry(k.clone()).or_default() += v;
            }
            self.last_tick[*w] = t.clone();
        }
        for (c, r) in self.cum.received.iter_mut().zip(received) {
            *c += r;
        }
        self.cum.gaps += gaps;
        self.cum.lag_max_us = self.cum.lag_max_us.max(lag);
        for win in self.windows.values_mut() {
            for (c, r) in win.received.iter_mut().zip(received) {
                *c += r;
            }
            win.gaps += gaps;
            win.lag_max_us = win.lag_max_us.max(lag);
        }
        let connected: u64 = self.last_tick.iter().map(|t| t.connected).sum();
        let connects_ok: u64 = self.last_tick.iter().map(|t| t.connects_ok).sum();
        let failed: u64 = self.last_tick.iter().map(|t| t.connects_failed).sum();
        let dropped: u64 = self.last_tick.iter().map(|t| t.dropped).sum();
        // Server.
        let srv = self.server_sample();
        let server_cpu_pct = match (srv, self.prev_server_cpu) {
            (Some(s), Some(p)) => Some((s.cpu_us.saturating_sub(p)) as f64 / (dt * 1e6) * 100.0),
            _ => None,
        };
        if let Some(s) = srv {
            self.prev_server_cpu = Some(s.cpu_us);
            self.peak_rss = self.peak_rss.max(s.rss_bytes);
        }
        let ccpu = self.client_cpu_us();
        let client_cpu_pct = ccpu.saturating_sub(self.prev_client_cpu) as f64 / (dt * 1e6) * 100.0;
        self.prev_client_cpu = ccpu;
        let m = sys::machine_cpu();
        let machine_pct = match (m, self.prev_machine) {
            (Some((b, t)), Some((pb, pt))) if t > pt => {
                Some((b - pb) as f64 / (t - pt) as f64 * 100.0)
            }
            _ => None,
        };
        self.prev_machine = m;
        let published = self.published();
        let pubs = published.saturating_sub(self.prev_published);
        self.prev_published = published;
        // Server-side messages/s between the last two distinct /stats readings.
        let server_msgs_rate = {
            let q = self.stats_readings.lock().unwrap();
            match (q.front(), q.back()) {
                (Some(a), Some(b)) if b.0 > a.0 && Some(b.0) != self.last_stats_at => {
                    self.last_stats_at = Some(b.0);
                    Some(b.1.saturating_sub(a.1) as f64 / b.0.duration_since(a.0).as_secs_f64())
                }
                _ => None,
            }
        };
        let s = hist::summary(&interval);
        let deliveries: u64 = received.iter().sum();
        let sample = Sample {
            t: self.start.elapsed().as_secs_f64(),
            phase: self.phase.clone(),
            connected,
            connects_ok,
            connects_failed: failed,
            dropped,
            publishes_per_s: pubs as f64 / dt,
            deliveries_per_s: deliveries as f64 / dt,
            server_messages_per_s: server_msgs_rate,
            p50_ms: s.p50_ms,
            p90_ms: s.p90_ms,
            p99_ms: s.p99_ms,
            max_ms: s.max_ms,
            handshake_p99_ms: hist::summary(&hs).p99_ms,
            gaps,
            server_cpu_pct,
            server_rss_mb: srv.map(|s| s.rss_bytes as f64 / 1048576.0),
            client_cpu_pct,
            machine_cpu_pct: machine_pct,
            client_lag_ms: lag as f64 / 1000.0,
        };
        if self.progress {
            let line = format!(
                "[{:>5.1}s] {:<8} conns {:>6} (+{} fail, {} drop)  pub {:>6.0}/s  recv {:>8.0}/s  p50 {} p99 {} max {} ms  gaps {}  srv {} cli {:>3.0}%",
                sample.t,
                sample.phase,
                connected,
                failed,
                dropped,
                sample.publishes_per_s,
                sample.deliveries_per_s,
                hist::fmt_ms(s.p50_ms),
                hist::fmt_ms(s.p99_ms),
                hist::fmt_ms(s.max_ms),
                gaps,
                match (server_cpu_pct, srv) {
                    (Some(c), Some(r)) => format!("{c:>3.0}% {:.0}MB", r.rss_bytes as f64 / 1048576.0),
                    _ => "-".into(),
                },
                client_cpu_pct
            );
            if self.tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
        self.timeline.push(sample);
    }

    pub fn end_progress(&self) {
        if self.progress && self.tty {
            eprintln!();
        }
    }

    pub fn begin_window(&mut self, name: &str) {
        let w = Window {
            lat: (0..KIND_COUNT).map(|_| hist::new_hist()).collect(),
            received: [0; KIND_COUNT],
            gaps: 0,
            started: Instant::now(),
            server_cpu_us0: self.server_sample().map(|s| s.cpu_us),
            client_cpu_us0: self.client_cpu_us(),
            machine0: sys::machine_cpu(),
            lag_max_us: 0,
            worker_cpu0: self.worker_cpu(),
        };
        self.windows.insert(name.to_string(), w);
    }

    pub fn end_window(&mut self, name: &str) -> Option<WindowResult> {
        self.flush_ticks();
        let w = self.windows.remove(name)?;
        let secs = w.started.elapsed().as_secs_f64();
        let machine_busy_pct = match (w.machine0, sys::machine_cpu()) {
            (Some((b0, t0)), Some((b, t))) if t > t0 => {
                Some((b - b0) as f64 / (t - t0) as f64 * 100.0)
            }
            _ => None,
        };
        let wc = self.worker_cpu();
        Some(WindowResult {
            secs,
            received: w.received,
            gaps: w.gaps,
            server_cpu_us: match (w.server_cpu_us0, self.server_sample()) {
                (Some(a), Some(b)) => Some(b.cpu_us.saturating_sub(a)),
                _ => None,
            },
            client_cpu_us: self.client_cpu_us().saturating_sub(w.client_cpu_us0),
            machine_busy_pct,
            worker_cpu_pct: wc
                .iter()
                .zip(w.worker_cpu0.iter())
                .map(|(a, b)| a.saturating_sub(*b) as f64 / (secs * 1e6) * 100.0)
                .collect(),
            lat: w.lat,
        })
    }

    pub fn connected(&self) -> u64 {
        self.last_tick.iter().map(|t| t.connected).sum()
    }

    /// Ask workers for their loss figures.
    pub async fn finals(
        &mut self,
        last_seq: BTreeMap<u32, u64>,
        publish_start_us: u64,
    ) -> FinalReport {
        self.finals.clear();
        let last_seq = last_seq.into_iter().collect();
        self.send_all(&Command::Final {
            last_seq,
            publish_start_us,
        })
        .await;
        let until = Instant::now() + Duration::from_secs(15);
        while self.finals.len() < self.alive_workers() && self.pump(until).await {}
        let mut r = FinalReport::default();
        for f in &self.finals {
            r.clients += f.clients;
            r.alive += f.alive;
            r.expected += f.expected;
            r.received += f.received;
            r.missing += f.missing;
            r.dups += f.dups;
            r.clients_with_loss += f.clients_with_loss;
            r.clients_with_untold_loss += f.clients_with_untold_loss;
            r.silent_streams += f.silent_streams;
            for (k, v) in &f.expected_by_kind {
                *r.expected_by_kind.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &f.missing_by_kind {
                *r.missing_by_kind.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &f.drop_reasons {
                *r.drop_reasons.entry(k.clone()).or_default() += v;
            }
        }
        r
    }

    /// Close every client, stop workers and the spawned server.
    pub async fn shutdown(&mut self) {
        self.end_progress();
        self.closed = 0;
        self.send_all(&Command::CloseAll).await;
        let until = Instant::now() + Duration::from_secs(8);
        let saved = self.progress;
        self.progress = false;
        while self.closed < self.alive_workers() && self.pump(until).await {}
        self.progress = saved;
        self.ending = true;
        self.send_all(&Command::Exit).await;
        for w in &mut self.workers {
            w.commands = None;
            let Some(child) = &mut w.child else {
                continue;
            };
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        if let Some(s) = &mut self.server {
            unsafe {
                libc::kill(s.pid as i32, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(5), s.child.wait())
                .await
                .is_err()
            {
                let _ = s.child.start_kill();
                let _ = s.child.wait().await;
            }
        }
    }

    pub fn handshake(&self) -> &Histogram<u64> {
        &self.cum.handshake
    }
    pub fn cum_counters(&self) -> (u64, u64, u64, u64, u64, u64) {
        (
            self.cum.gaps,
            self.cum.dups,
            self.cum.book_gaps,
            self.cum.book_resyncs,
            self.cum.replays,
            self.cum.bytes,
        )
    }
    pub fn cum_errors(&self) -> BTreeMap<String, u64> {
        self.cum.errors.clone()
    }
    pub fn cum_lag_ms(&self) -> f64 {
        self.cum.lag_max_us as f64 / 1000.0
    }
    pub fn dropped(&self) -> u64 {
        self.last_tick.iter().map(|t| t.dropped).sum()
    }
    pub fn failed(&self) -> u64 {
        let f: u64 = self.last_tick.iter().map(|t| t.connects_failed).sum();
        f.saturating_sub(self.ignored_failures)
    }
}

fn ingest_url(i: &str) -> String {
    let i = i.trim_end_matches('/');
    if i.ends_with("/internal/events") {
        i.to_string()
    } else {
        format!("{i}/internal/events")
    }
}

async fn spawn_server(
    common: &Common,
    scenario: &str,
    out_dir: &std::path::Path,
    extra_env: &[(String, String)],
) -> Result<ServerProc, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let ingest_port = free_port().map_err(|e| e.to_string())?;
    let (program, args, command): (String, Vec<String>, String) =
        if let Some(bin) = &common.server_bin {
            let mut args = vec![
                "--listen".to_string(),
                format!("127.0.0.1:{port}"),
                "--internal-listen".into(),
                format!("127.0.0.1:{ingest_port}"),
                "--shards".into(),
                common.shards.to_string(),
                "--log".into(),
                "warn".into(),
            ];
            args.extend(common.server_args.iter().cloned());
            let cmd = format!("{} {}", bin.display(), args.join(" "));
            (bin.display().to_string(), args, cmd)
        } else {
            let c = common.server_cmd.clone().unwrap();
            let c = c
                .replace("{port}", &port.to_string())
                .replace("{ingest_port}", &ingest_port.to_string());
            ("sh".into(), vec!["-c".into(), format!("exec {c}")], c)
        };
    let log = out_dir.join(format!("{scenario}-server-{}.log", std::process::id()));
    let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut env: Vec<(String, String)> = Vec::new();
    if common.server_bin.is_some() && !common.keep_server_limits {
        // The gateway's per-address limits are meant for the internet; a load from a few
        // loopback addresses would hit them at once. And its clients subscribe to the run's
        // symbols before anything is published on them, which the gateway by default only
        // allows for symbols it knows. Environment variables, so that a gateway without
        // these flags ignores them; --server-arg still wins.
        for (k, v) in [
            ("GATEWAY_MAX_CONNECTIONS", "1000000"),
            ("GATEWAY_MAX_CONNECTIONS_PER_IP", "1000000"),
            ("GATEWAY_HANDSHAKE_RATE_PER_IP", "1000000"),
            ("GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS", "true"),
        ] {
            env.push((k.into(), v.into()));
        }
    }
    env.extend(extra_env.iter().cloned());
    let command = if env.is_empty() {
        command
    } else {
        format!(
            "{} {command}",
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let child = PCommand::new(&program)
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORT", port.to_string())
        .env("INGEST_PORT", ingest_port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn server {program}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let mut sp = ServerProc {
        child,
        pid,
        port,
        ingest_port,
        log,
        command,
    };
    // Ready: an Engine.IO polling handshake answers 200.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // The gateway has /ready; any other server: an Engine.IO polling handshake answers 200
    // (its session then times out on the server by itself).
    let url = if common.server_bin.is_some() {
        format!("http://127.0.0.1:{port}/ready")
    } else {
        format!(
            "http://127.0.0.1:{port}{}?EIO=4&transport=polling",
            common.path
        )
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = sp.child.try_wait() {
            let tail = std::fs::read_to_string(&sp.log).unwrap_or_default();
            return Err(format!(
                "server exited ({st}) before it was ready: {}",
                tail.chars()
                    .rev()
                    .take(800)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            ));
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > until {
            return Err(format!("server not ready after 30 s ({url})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(sp)
}
