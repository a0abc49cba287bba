//! A worker process: one single-threaded tokio runtime, one task per client connection. It
//! reads commands and reports ticks as JSON lines: on stdin and stdout when the coordinator
//! re-executes the binary as `loadtest __worker` (so that no process holds more than its share
//! of descriptors), or over TCP when it runs on another machine as `loadtest worker --listen`,
//! taking one run at a time from a coordinator that presents the shared token.

use crate::hist;
use crate::inflate::Inflating;
use crate::plan::*;
use crate::proto::{self, EioPacket, SioType};
use crate::tally::Tally;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How far this machine's clock is ahead of the coordinator's (µs), as the coordinator
/// measured it: latencies are taken against publish times stamped on the coordinator's clock.
static CLOCK_AHEAD_US: AtomicI64 = AtomicI64::new(0);

/// Now on the coordinator's clock, in µs since the epoch.
pub fn now_us() -> u64 {
    clock_us().saturating_add_signed(-CLOCK_AHEAD_US.load(Relaxed))
}

/// Now on this machine's clock.
fn clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct StreamTrack {
    stream: u32,
    first: Option<u64>,
    next: u64,
    received: u64,
    dups: u64,
}

#[derive(Default)]
struct ConnRec {
    index: u64,
    open: bool,
    /// When the last subscription was confirmed (µs since the epoch).
    sub_us: u64,
    streams: Vec<StreamTrack>,
    books: Vec<(String, u64)>,
    /// The server told this client it fell behind (`SLOW_CONSUMER`, `OVERLOADED`) or closed
    /// its connection: a gap in what it received is not silent.
    told: bool,
}

struct Group {
    remaining: u64,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

struct State {
    spec: WorkerSpec,
    conns: Vec<ConnRec>,
    acc: Tally,
    connected: u64,
    connects_ok: u64,
    connects_failed: u64,
    dropped: u64,
    drop_reasons: BTreeMap<String, u64>,
    groups: HashMap<u32, Group>,
    next_src: usize,
    http: Vec<reqwest::Client>,
    /// This process's CPU time when the run began: a listening worker serves many runs.
    cpu0: u64,
}

type Shared = Rc<RefCell<State>>;

pub fn run() -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    crate::sys::raise_nofile_limit();
    let lines = BufReader::new(tokio::io::stdin()).lines();
    let code = local.block_on(&rt, serve(lines, None, tokio::io::stdout(), &[], None));
    std::process::exit(code)
}

/// `loadtest worker --listen ADDR`: serves coordinators on other machines, one run at a time.
pub fn listen(addr: &str, token: &str, once: bool, sources: &[std::net::Ipv4Addr]) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    crate::sys::raise_nofile_limit();
    let local = tokio::task::LocalSet::new();
    let token: Rc<str> = Rc::from(token);
    let sources: Rc<[std::net::Ipv4Addr]> = Rc::from(sources);
    let code = local.block_on(&rt, async {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("loadtest worker: listen on {addr}: {e}");
                return 2;
            }
        };
        if let Ok(a) = listener.local_addr() {
            eprintln!("loadtest worker: listening on {a}");
        }
        let busy = Rc::new(std::cell::Cell::new(false));
        let (ended_tx, mut ended) = mpsc::unbounded_channel::<i32>();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    // Each connection is admitted on its own, so one that never speaks holds
                    // up nobody.
                    Ok((sock, peer)) => {
                        tokio::task::spawn_local(session(
                            sock,
                            peer,
                            token.clone(),
                            sources.clone(),
                            busy.clone(),
                            ended_tx.clone(),
                        ));
                    }
                    Err(e) => eprintln!("loadtest worker: accept: {e}"),
                },
                Some(code) = ended.recv(), if once => return code,
            }
        }
    });
    std::process::exit(code)
}

/// Most a coordinator may write in one line before its run is under way.
const ADMISSION_LINE_MAX: usize = 64 * 1024;
/// How long a coordinator has to present its token, and between its later words.
const TOKEN_WITHIN: Duration = Duration::from_secs(3);
const WORDS_WITHIN: Duration = Duration::from_secs(10);
/// A run whose coordinator says nothing for this long (it pings every 2 s) is over.
const COORDINATOR_SILENCE: Duration = Duration::from_secs(20);

/// One connection: the token, then (if no other run is being served) clock probes, the
/// run's spec and the run.
async fn session(
    sock: TcpStream,
    peer: SocketAddr,
    token: Rc<str>,
    sources: Rc<[std::net::Ipv4Addr]>,
    busy: Rc<std::cell::Cell<bool>>,
    ended: mpsc::UnboundedSender<i32>,
) {
    let _ = sock.set_nodelay(true);
    let (r, mut out) = sock.into_split();
    let mut input = BufReader::new(r);
    let hello = match line_within(&mut input, TOKEN_WITHIN).await {
        Ok(l) => serde_json::from_str::<Hello>(&l).map_err(|e| format!("not a coordinator: {e}")),
        Err(e) => Err(e),
    };
    let refuse = async |out: &mut tokio::net::tcp::OwnedWriteHalf, why: &str| {
        let _ = send_line(out, &serde_json::json!({ "refused": why })).await;
        log_refusal(peer, why);
    };
    match hello {
        Ok(h) if same_token(h.token.as_bytes(), token.as_bytes()) => {}
        Ok(_) => return refuse(&mut out, "wrong token").await,
        Err(e) => return refuse(&mut out, &e).await,
    }
    if busy.replace(true) {
        return refuse(&mut out, "busy with another coordinator's run").await;
    }
    let spec = match probes_then_spec(&mut input, &mut out).await {
        Ok(spec) => spec,
        Err(e) => {
            busy.set(false);
            return eprintln!("loadtest worker: {peer} left before its run: {e}");
        }
    };
    eprintln!("loadtest worker: a run from {peer}");
    let code = serve(
        input.lines(),
        Some(spec),
        out,
        &sources,
        Some(COORDINATOR_SILENCE),
    )
    .await;
    eprintln!("loadtest worker: the run from {peer} ended");
    busy.set(false);
    let _ = ended.send(code);
}

thread_local! {
    /// When a refusal was last logged, and how many went unlogged since.
    static REFUSALS: std::cell::Cell<(Option<Instant>, u64)> = const { std::cell::Cell::new((None, 0)) };
}

/// Logs a refused connection, at most one line a second: a flood of them must not become a
/// flood of log lines.
fn log_refusal(peer: SocketAddr, why: &str) {
    REFUSALS.with(|r| {
        let (last, quiet) = r.get();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            r.set((last, quiet + 1));
            return;
        }
        let more = if quiet > 0 {
            format!(" (and {quiet} more refused since the last line)")
        } else {
            String::new()
        };
        eprintln!("loadtest worker: refused {peer}: {why}{more}");
        r.set((Some(Instant::now()), 0));
    });
}

/// Answers clock probes until the run's spec comes, which it returns.
async fn probes_then_spec<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    input: &mut R,
    out: &mut W,
) -> Result<String, String> {
    send_line(out, &serde_json::json!({"ok": true})).await?;
    loop {
        let line = line_within(input, WORDS_WITHIN).await?;
        if serde_json::from_str::<Probe>(&line).is_ok() {
            send_line(out, &serde_json::json!({"now_us": clock_us()})).await?;
            continue;
        }
        return Ok(line);
    }
}

/// One line, read within `within` and no longer than [`ADMISSION_LINE_MAX`].
async fn line_within<R: AsyncBufRead + Unpin>(
    input: &mut R,
    within: Duration,
) -> Result<String, String> {
    let read = async {
        let mut line = Vec::new();
        loop {
            let got = input.fill_buf().await.map_err(|e| e.to_string())?;
            if got.is_empty() {
                return Err("closed before its run began".to_string());
            }
            if let Some(end) = got.iter().position(|b| *b == b'\n') {
                line.extend_from_slice(&got[..end]);
                input.consume(end + 1);
                break;
            }
            let n = got.len();
            line.extend_from_slice(got);
            input.consume(n);
            if line.len() > ADMISSION_LINE_MAX {
                return Err(format!("a line over {ADMISSION_LINE_MAX} bytes"));
            }
        }
        String::from_utf8(line).map_err(|_| "a line that is not UTF-8".to_string())
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| format!("silent for {} s", within.as_secs()))?
}

async fn send_line<W: AsyncWrite + Unpin>(
    out: &mut W,
    v: &serde_json::Value,
) -> Result<(), String> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    out.write_all(&line).await.map_err(|e| e.to_string())
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One run: the spec (given, or the first line), then commands until `Exit` or the end of the
/// input; reports go to `out`.
/// `sources` are this machine's own client addresses, for a coordinator that leaves the
/// choice to it.
async fn serve<R, W>(
    mut lines: Lines<R>,
    first: Option<String>,
    out: W,
    sources: &[std::net::Ipv4Addr],
    silence: Option<Duration>,
) -> i32
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let first = match first {
        Some(l) => Some(l),
        None => lines.next_line().await.ok().flatten(),
    };
    let mut spec: WorkerSpec = match first.map(|l| serde_json::from_str(&l)) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("worker: bad spec: {e}");
            return 2;
        }
        None => return 2,
    };
    CLOCK_AHEAD_US.store(spec.clock_ahead_us, Relaxed);
    let unchosen = spec.source_addrs.iter().all(|a| a.is_unspecified());
    if unchosen && !sources.is_empty() {
        spec.source_addrs = sources.to_vec();
    }
    if spec.source_addrs.is_empty() {
        spec.source_addrs = vec![std::net::Ipv4Addr::UNSPECIFIED];
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Report>();
    // Writer: one JSON line per report.
    let writer = tokio::task::spawn_local(async move {
        let mut out = out;
        while let Some(r) = out_rx.recv().await {
            let mut line = serde_json::to_vec(&r).unwrap();
            line.push(b'\n');
            if out.write_all(&line).await.is_err() {
                break;
            }
            let _ = out.flush().await;
        }
    });
    let worker = spec.worker;
    let http = spec
        .source_addrs
        .iter()
        .map(|a| {
            reqwest::Client::builder()
                .local_address(IpAddr::V4(*a))
                .pool_max_idle_per_host(usize::MAX)
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client")
        })
        .collect();
    let tick_ms = spec.tick_ms.max(100);
    let (close_tx, close_rx) = watch::channel(false);
    let state: Shared = Rc::new(RefCell::new(State {
        spec,
        conns: Vec::new(),
        acc: Tally::new(),
        connected: 0,
        connects_ok: 0,
        connects_failed: 0,
        dropped: 0,
        drop_reasons: BTreeMap::new(),
        groups: HashMap::new(),
        next_src: worker,
        http,
        cpu0: own_cpu_us(),
    }));
    let _ = out_tx.send(Report::Ready {
        worker,
        pid: std::process::id(),
    });

    // Event-loop lag probe.
    {
        let st = state.clone();
        let done = close_rx.clone();
        tokio::task::spawn_local(async move {
            while !*done.borrow() {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let lag = t.elapsed().as_micros().saturating_sub(10_000) as u64;
                let mut s = st.borrow_mut();
                s.acc.lag_max_us = s.acc.lag_max_us.max(lag);
            }
        });
    }
    // Ticks.
    {
        let st = state.clone();
        let tx = out_tx.clone();
        let done = close_rx.clone();
        tokio::task::spawn_local(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(tick_ms));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            iv.tick().await;
            while !*done.borrow() {
                iv.tick().await;
                let t = take_tick(&st);
                if tx.send(Report::Tick(Box::new(t))).is_err() {
                    break;
                }
            }
        });
    }

    let mut code = 0;
    loop {
        let next = match silence {
            Some(d) => match tokio::time::timeout(d, lines.next_line()).await {
                Ok(next) => next,
                Err(_) => {
                    eprintln!(
                        "worker {worker}: the coordinator was silent for {} s; the run ends",
                        d.as_secs()
                    );
                    break;
                }
            },
            None => lines.next_line().await,
        };
        let line = match next {
            Ok(Some(l)) => l,
            _ => break, // coordinator gone: stop
        };
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("worker {worker}: bad command: {e}");
                code = 2;
                break;
            }
        };
        match cmd {
            Command::Open {
                group,
                first,
                count,
                rate,
                plan,
            } => {
                state.borrow_mut().groups.insert(
                    group,
                    Group {
                        remaining: count,
                        ok: 0,
                        failed: 0,
                        first_error: None,
                    },
                );
                if count == 0 {
                    finish_group(&state, &out_tx, group);
                }
                let st = state.clone();
                let tx = out_tx.clone();
                let crx = close_rx.clone();
                tokio::task::spawn_local(async move {
                    let plan = Rc::new(plan);
                    let start = Instant::now();
                    let rate = if rate <= 0.0 { f64::INFINITY } else { rate };
                    for k in 0..count {
                        let due = start + Duration::from_secs_f64(k as f64 / rate);
                        if due > Instant::now() + Duration::from_millis(1) {
                            tokio::time::sleep_until(due.into()).await;
                        }
                        if *crx.borrow() {
                            break;
                        }
                        let idx = {
                            let mut s = st.borrow_mut();
                            s.conns.push(ConnRec {
                                index: first + k,
                                ..Default::default()
                            });
                            s.conns.len() - 1
                        };
                        tokio::task::spawn_local(client(
                            st.clone(),
                            tx.clone(),
                            crx.clone(),
                            plan.clone(),
                            group,
                            idx,
                        ));
                    }
                });
            }
            Command::Final {
                last_seq,
                publish_start_us,
            } => {
                let last_seq: BTreeMap<u32, u64> = last_seq.into_iter().collect();
                let r = final_report(&state, &last_seq, publish_start_us);
                eprintln!(
                    "worker {worker}: {} clients, {} of {} expected events received",
                    r.clients, r.received, r.expected
                );
                let _ = out_tx.send(Report::Final(r));
            }
            Command::CloseAll => {
                let _ = close_tx.send(true);
                // Give the clients a moment to send their closes.
                let st = state.clone();
                let tx = out_tx.clone();
                tokio::task::spawn_local(async move {
                    let until = Instant::now() + Duration::from_secs(5);
                    while st.borrow().connected > 0 && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = tx.send(Report::Closed { worker });
                });
            }
            Command::Ping => {}
            Command::Exit => break,
        }
    }
    // The run is over: its clients, ticks and probes stop (a listening worker serves on).
    let _ = close_tx.send(true);
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    code
}

fn own_cpu_us() -> u64 {
    crate::sys::proc_sample(std::process::id())
        .map(|p| p.cpu_us)
        .unwrap_or(0)
}

fn take_tick(st: &Shared) -> Tick {
    let mut s = st.borrow_mut();
    let acc = std::mem::replace(&mut s.acc, Tally::new());
    let enc = |h: &Histogram<u64>| {
        if h.is_empty() {
            String::new()
        } else {
            hist::encode(h)
        }
    };
    Tick {
        worker: s.spec.worker,
        t_us: now_us(),
        connected: s.connected,
        connects_ok: s.connects_ok,
        connects_failed: s.connects_failed,
        dropped: s.dropped,
        received: acc.received,
        latency: std::array::from_fn(|i| enc(&acc.lat[i])),
        handshake: enc(&acc.handshake),
        bytes: acc.bytes,
        gaps: acc.gaps,
        dups: acc.dups,
        book_gaps: acc.book_gaps,
        book_resyncs: acc.book_resyncs,
        replays: acc.replays,
        lag_max_us: acc.lag_max_us,
        errors: acc.errors,
        cpu_us: own_cpu_us().saturating_sub(s.cpu0),
    }
}

fn final_report(st: &Shared, last_seq: &BTreeMap<u32, u64>, publish_start_us: u64) -> FinalReport {
    let s = st.borrow();
    let mut r = FinalReport {
        worker: s.spec.worker,
        ..Default::default()
    };
    for c in &s.conns {
        r.clients += 1;
        // Alive: still connected and, for each lossless stream it follows, reached by that
        // stream's last message (the final probe in `connect`).
        let reached_last = c.streams.iter().all(|t| {
            last_seq
                .get(&t.stream)
                .is_none_or(|&l| t.first.is_some() && t.next > l)
        });
        if c.open && reached_last {
            r.alive += 1;
        }
        let mut lost_here = 0;
        for t in &c.streams {
            let Some(&last) = last_seq.get(&t.stream) else {
                continue;
            };
            let base = if c.sub_us != 0 && c.sub_us <= publish_start_us {
                0
            } else if let Some(f) = t.first {
                f
            } else {
                r.silent_streams += 1;
                continue;
            };
            let expected = (last + 1).saturating_sub(base);
            let missing = expected.saturating_sub(t.received);
            let kind = stream_kind(t.stream).to_string();
            *r.expected_by_kind.entry(kind.clone()).or_default() += expected;
            *r.missing_by_kind.entry(kind).or_default() += missing;
            r.expected += expected;
            r.received += t.received.min(expected);
            r.missing += missing;
            r.dups += t.dups;
            lost_here += missing;
        }
        if lost_here > 0 {
            r.clients_with_loss += 1;
            if !c.told {
                r.clients_with_untold_loss += 1;
            }
        }
    }
    r.drop_reasons = s.drop_reasons.clone();
    r
}

fn finish_group(st: &Shared, tx: &mpsc::UnboundedSender<Report>, group: u32) {
    let mut s = st.borrow_mut();
    let worker = s.spec.worker;
    if let Some(g) = s.groups.get(&group) {
        if g.remaining == 0 {
            let g = s.groups.remove(&group).unwrap();
            let _ = tx.send(Report::Opened {
                worker,
                group,
                ok: g.ok,
                failed: g.failed,
                first_error: g.first_error,
            });
        }
    }
}

fn setup_done(st: &Shared, tx: &mpsc::UnboundedSender<Report>, group: u32, err: Option<String>) {
    {
        let mut s = st.borrow_mut();
        if let Some(e) = &err {
            s.connects_failed += 1;
            *s.acc
                .errors
                .entry(format!("connect: {}", short(e)))
                .or_default() += 1;
        }
        if let Some(g) = s.groups.get_mut(&group) {
            g.remaining = g.remaining.saturating_sub(1);
            match err {
                None => g.ok += 1,
                Some(e) => {
                    g.failed += 1;
                    g.first_error.get_or_insert(e);
                }
            }
        }
    }
    finish_group(st, tx, group);
}

fn short(e: &str) -> String {
    let e = e.split(" (os error").next().unwrap_or(e);
    e.chars().take(60).collect()
}

// ---------------------------------------------------------------------------------------------
// One client.

enum Wire {
    Ws(Box<WebSocketStream<Inflating<TcpStream>>>),
    Polling(Box<Polling>),
}

struct Polling {
    http: reqwest::Client,
    url: String,
    origin: Option<String>,
    rx: mpsc::UnboundedReceiver<Result<String, String>>,
    stop: watch::Sender<bool>,
    poller: tokio::task::JoinHandle<()>,
}

impl Polling {
    async fn post(&self, body: String) -> Result<(), String> {
        let mut rq = self
            .http
            .post(&self.url)
            .body(body)
            .header("content-type", "text/plain;charset=UTF-8");
        if let Some(o) = &self.origin {
            rq = rq.header("origin", o);
        }
        let r = rq.send().await.map_err(|e| format!("poll post: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("poll post: HTTP {}", r.status()));
        }
        let _ = r.bytes().await;
        Ok(())
    }
}

struct Conn {
    st: Shared,
    idx: usize,
    nsp: String,
    plan: Rc<Plan>,
    /// Ack ids of subscriptions still unanswered.
    pending_acks: Vec<u64>,
    /// Subscriptions waiting for a `subscribed`/`error` event (no-ack mode).
    pending_events: usize,
    ns_connected: bool,
    ns_error: Option<String>,
    /// First refused subscription (error code).
    sub_error: Option<String>,
    /// Where setup is, for timeout messages.
    stage: &'static str,
}

async fn ws_connect(
    target: SocketAddr,
    src: IpAddr,
    url: &str,
    deflate: bool,
) -> Result<WebSocketStream<Inflating<TcpStream>>, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    crate::sys::bind_no_port(&sock);
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let tcp = sock
        .connect(target)
        .await
        .map_err(|e| format!("tcp connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("websocket request: {e}"))?;
    if deflate {
        request.headers_mut().insert(
            "Sec-WebSocket-Extensions",
            crate::inflate::OFFER.parse().expect("a valid header value"),
        );
    }
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, Inflating::new(tcp), Some(cfg))
            .await
            .map_err(|e| format!("websocket upgrade: {e}"))?;
    Ok(ws)
}

async fn client(
    st: Shared,
    tx: mpsc::UnboundedSender<Report>,
    mut close_rx: watch::Receiver<bool>,
    plan: Rc<Plan>,
    group: u32,
    idx: usize,
) {
    let t0 = Instant::now();
    let (spec, src, http) = {
        let mut s = st.borrow_mut();
        let n = s.spec.source_addrs.len().max(1);
        let i = s.next_src % n;
        s.next_src += 1;
        (
            s.spec.clone(),
            IpAddr::V4(s.spec.source_addrs[i]),
            s.http[i].clone(),
        )
    };
    let index = st.borrow().conns[idx].index;
    let mut conn = Conn {
        st: st.clone(),
        idx,
        nsp: spec.namespace.clone(),
        plan: plan.clone(),
        pending_acks: Vec::new(),
        pending_events: 0,
        ns_connected: false,
        ns_error: None,
        sub_error: None,
        stage: "connecting",
    };
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let setup = tokio::time::timeout(timeout, setup(&mut conn, &spec, src, http, index, t0)).await;
    let mut wire = match setup {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            setup_done(&st, &tx, group, Some(e));
            return;
        }
        Err(_) => {
            setup_done(
                &st,
                &tx,
                group,
                Some(format!("setup timed out ({})", conn.stage)),
            );
            return;
        }
    };
    setup_done(&st, &tx, group, None);

    // Steady state.
    let reason: Option<String> = loop {
        if *close_rx.borrow() {
            let _ = match &mut wire {
                Wire::Ws(ws) => WebSocketStream::close(&mut **ws, None)
                    .await
                    .map_err(|e| e.to_string()),
                Wire::Polling(p) => {
                    let _ = p.stop.send(true);
                    p.post("1".into()).await
                }
            };
            break None;
        }
        match &mut wire {
            Wire::Ws(ws) => {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let now = now_us();
                            match conn.on_eio(t.as_str(), now) {
                                Step::Continue => {}
                                Step::Pong => {
                                    if let Err(e) = ws.send(Message::Text("3".into())).await {
                                        break Some(format!("send: {e}"));
                                    }
                                }
                                Step::Closed(r) => break Some(r),
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => break Some("closed by server".into()),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Some(format!("websocket: {}", short(&e.to_string()))),
                    },
                    _ = close_rx.changed() => {}
                }
            }
            Wire::Polling(p) => {
                tokio::select! {
                    m = p.rx.recv() => match m {
                        Some(Ok(body)) => {
                            let now = now_us();
                            let mut pong = false;
                            let mut closed = None;
                            for pk in proto::split_payload(&body) {
                                match conn.on_eio(pk, now) {
                                    Step::Continue => {}
                                    Step::Pong => pong = true,
                                    Step::Closed(r) => closed = Some(r),
                                }
                            }
                            if let Some(r) = closed { break Some(r); }
                            if pong {
                                if let Err(e) = p.post("3".into()).await { break Some(e); }
                            }
                        }
                        Some(Err(e)) => break Some(e),
                        None => break Some("poller ended".into()),
                    },
                    _ = close_rx.changed() => {}
                }
            }
        }
    };
    let mut s = st.borrow_mut();
    s.connected -= 1;
    s.conns[idx].open = false;
    s.conns[idx].told |= reason.is_some();
    if let Some(r) = reason {
        s.dropped += 1;
        *s.drop_reasons.entry(short(&r)).or_default() += 1;
    }
}

enum Step {
    Continue,
    Pong,
    Closed(String),
}

async fn setup(
    conn: &mut Conn,
    spec: &WorkerSpec,
    src: IpAddr,
    http: reqwest::Client,
    index: u64,
    t0: Instant,
) -> Result<Wire, String> {
    let base = format!("{}:{}{}", spec.target.ip(), spec.target.port(), spec.path);
    let auth = conn.plan.auth.as_ref().map(|a| {
        let token = crate::jwt::hs256(&a.jwt_secret, &format!("{}{}", a.user_prefix, index));
        serde_json::json!({ "token": token }).to_string()
    });
    let connect_pkt = proto::connect_packet(&conn.nsp, auth.as_deref());
    let mut wire = match conn.plan.transport {
        Transport::Websocket => {
            let url = format!("ws://{base}?EIO=4&transport=websocket");
            let mut ws = ws_connect(spec.target, src, &url, spec.deflate).await?;
            conn.stage = "waiting for the Engine.IO open packet";
            // Engine.IO open.
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
                Some(Ok(m)) => return Err(format!("expected open packet, got {m:?}")),
                Some(Err(e)) => return Err(format!("websocket: {e}")),
                None => return Err("closed before open".into()),
            }
            ws.send(Message::Text(connect_pkt.into()))
                .await
                .map_err(|e| e.to_string())?;
            Wire::Ws(Box::new(ws))
        }
        Transport::Polling | Transport::Upgrade => {
            conn.stage = "polling handshake";
            let url0 = format!("http://{base}?EIO=4&transport=polling");
            let mut rq = http.get(format!("{url0}&t={index:x}"));
            if let Some(o) = &spec.origin {
                rq = rq.header("origin", o);
            }
            let r = rq
                .send()
                .await
                .map_err(|e| format!("polling handshake: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("polling handshake: HTTP {}", r.status()));
            }
            let body = r.text().await.map_err(|e| e.to_string())?;
            let open = proto::split_payload(&body)
                .find_map(|p| match proto::parse_eio(p) {
                    Some(EioPacket::Open(j)) => serde_json::from_str::<proto::OpenInfo>(j).ok(),
                    _ => None,
                })
                .ok_or_else(|| format!("no open packet in {body:?}"))?;
            let url = format!("{url0}&sid={}", open.sid);
            let (btx, brx) = mpsc::unbounded_channel();
            let (stop_tx, stop_rx) = watch::channel(false);
            let poller = tokio::task::spawn_local(poll_loop(
                http.clone(),
                url.clone(),
                spec.origin.clone(),
                btx,
                stop_rx,
            ));
            let p = Polling {
                http,
                url,
                origin: spec.origin.clone(),
                rx: brx,
                stop: stop_tx,
                poller,
            };
            p.post(connect_pkt).await?;
            let mut w = Wire::Polling(Box::new(p));
            wait_until(conn, &mut w, |c| c.ns_connected || c.ns_error.is_some()).await?;
            if conn.plan.transport == Transport::Upgrade {
                // Subscriptions go out over polling, as a browser emits them right after
                // connecting; then the upgrade.
                send_subs(conn, &mut w, index).await?;
                let Wire::Polling(p) = w else { unreachable!() };
                conn.stage = "upgrading to websocket";
                let ws_url = format!("ws://{base}?EIO=4&transport=websocket&sid={}", open.sid);
                let mut ws = ws_connect(spec.target, src, &ws_url, spec.deflate).await?;
                // Pause polling once the pending GET returns: the server answers it with a
                // noop once probed.
                let _ = p.stop.send(true);
                ws.send(Message::Text("2probe".into()))
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == "3probe" => break,
                        Some(Ok(_)) => {}
                        _ => return Err("upgrade: no 3probe".into()),
                    }
                }
                let mut p = *p;
                let _ = (&mut p.poller).await;
                while let Ok(m) = p.rx.try_recv() {
                    if let Ok(body) = m {
                        let now = now_us();
                        for pk in proto::split_payload(&body) {
                            if let Step::Closed(r) = conn.on_eio(pk, now) {
                                return Err(r);
                            }
                        }
                    }
                }
                ws.send(Message::Text("5".into()))
                    .await
                    .map_err(|e| e.to_string())?;
                w = Wire::Ws(Box::new(ws));
                return subscriptions_answered(conn, w, t0).await;
            }
            w
        }
    };
    conn.stage = "waiting for the namespace CONNECT answer";
    wait_until(conn, &mut wire, |c| c.ns_connected || c.ns_error.is_some()).await?;
    if let Some(e) = &conn.ns_error {
        return Err(format!("connect_error: {e}"));
    }
    conn.stage = "waiting for subscription answers";
    send_subs(conn, &mut wire, index).await?;
    subscriptions_answered(conn, wire, t0).await
}

/// Waits for every subscription answer (refusing in strict mode), then counts the connection
/// as set up.
async fn subscriptions_answered(
    conn: &mut Conn,
    mut wire: Wire,
    t0: Instant,
) -> Result<Wire, String> {
    wait_until(conn, &mut wire, |c| {
        c.pending_acks.is_empty() && c.pending_events == 0
    })
    .await?;
    if conn.plan.strict {
        if let Some(e) = &conn.sub_error {
            return Err(format!("subscription refused: {e}"));
        }
    }
    finish_setup(conn, t0);
    Ok(wire)
}

fn finish_setup(conn: &mut Conn, t0: Instant) {
    let mut s = conn.st.borrow_mut();
    s.connected += 1;
    s.connects_ok += 1;
    let idx = conn.idx;
    s.conns[idx].open = true;
    s.conns[idx].sub_us = now_us();
    let us = t0.elapsed().as_micros() as u64;
    hist::record(&mut s.acc.handshake, us);
}

async fn send_subs(conn: &mut Conn, wire: &mut Wire, index: u64) -> Result<(), String> {
    let mut ack_id = 0u64;
    let mut msgs = Vec::new();
    for t in conn.plan.subs.clone().iter() {
        let mut payloads = Vec::new();
        if t.symbols.is_empty() {
            let mut o = serde_json::json!({ "channel": t.channel });
            if let Some(i) = &t.interval {
                o["interval"] = i.clone().into();
            }
            payloads.push(o);
            if let Some(b) = t.stream_base {
                let stream = if t.per_user_stream {
                    b + index as u32
                } else {
                    b
                };
                conn.track(stream);
            }
        } else {
            for j in 0..t.per_client.max(1) {
                let k = ((index as usize) * t.per_client.max(1) + j) % t.symbols.len();
                let mut o = serde_json::json!({ "channel": t.channel, "symbol": t.symbols[k] });
                if let Some(i) = &t.interval {
                    o["interval"] = i.clone().into();
                }
                payloads.push(o);
                if let Some(b) = t.stream_base {
                    conn.track(b + k as u32);
                }
            }
        }
        for p in payloads {
            let ack = if conn.plan.ack {
                ack_id += 1;
                conn.pending_acks.push(ack_id);
                Some(ack_id)
            } else {
                conn.pending_events += 1;
                None
            };
            msgs.push(proto::event_packet(
                &conn.nsp,
                ack,
                &t.event,
                Some(&p.to_string()),
            ));
        }
    }
    match wire {
        Wire::Ws(ws) => {
            for m in msgs {
                ws.feed(Message::Text(m.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ws.flush().await.map_err(|e| e.to_string())?;
        }
        Wire::Polling(p) => {
            if !msgs.is_empty() {
                p.post(msgs.join(&proto::RECORD_SEP.to_string())).await?;
            }
        }
    }
    Ok(())
}

/// Reads packets until `done` holds (during setup).
async fn wait_until(
    conn: &mut Conn,
    wire: &mut Wire,
    done: impl Fn(&Conn) -> bool,
) -> Result<(), String> {
    while !done(conn) {
        match wire {
            Wire::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(t))) => match conn.on_eio(t.as_str(), now_us()) {
                    Step::Continue => {}
                    Step::Pong => ws
                        .send(Message::Text("3".into()))
                        .await
                        .map_err(|e| e.to_string())?,
                    Step::Closed(r) => return Err(r),
                },
                Some(Ok(Message::Close(_))) | None => return Err("closed during setup".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("websocket: {e}")),
            },
            Wire::Polling(p) => match p.rx.recv().await {
                Some(Ok(body)) => {
                    let mut pong = false;
                    let now = now_us();
                    for pk in proto::split_payload(&body) {
                        match conn.on_eio(pk, now) {
                            Step::Continue => {}
                            Step::Pong => pong = true,
                            Step::Closed(r) => return Err(r),
                        }
                    }
                    if pong {
                        p.post("3".into()).await?;
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err("poller ended".into()),
            },
        }
        if let Some(e) = &conn.ns_error {
            return Err(format!("connect_error: {e}"));
        }
    }
    Ok(())
}

async fn poll_loop(
    http: reqwest::Client,
    url: String,
    origin: Option<String>,
    tx: mpsc::UnboundedSender<Result<String, String>>,
    stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    loop {
        n += 1;
        let mut rq = http.get(format!("{url}&t=p{n}"));
        if let Some(o) = &origin {
            rq = rq.header("origin", o);
        }
        let res = match rq.send().await {
            Ok(r) if r.status().is_success() => r.text().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("poll: HTTP {}", r.status())),
            Err(e) => Err(format!("poll: {e}")),
        };
        let failed = res.is_err();
        let closed = matches!(&res, Ok(b) if proto::split_payload(b).any(|p| p == "1"));
        if tx.send(res).is_err() || failed || closed || *stop.borrow() {
            return;
        }
    }
}

impl Conn {
    fn track(&mut self, stream: u32) {
        let mut s = self.st.borrow_mut();
        let c = &mut s.conns[self.idx];
        if !c.streams.iter().any(|t| t.stream == stream) {
            c.streams.push(StreamTrack {
                stream,
                ..Default::default()
            });
        }
    }

    fn on_eio(&mut self, pkt: &str, now: u64) -> Step {
        match proto::parse_eio(pkt) {
            Some(EioPacket::Ping(_)) => Step::Pong,
            Some(EioPacket::Message(m)) => {
                self.st.borrow_mut().acc.bytes += pkt.len() as u64;
                self.on_sio(m, now)
            }
            Some(EioPacket::Close) => Step::Closed("engine.io close".into()),
            _ => Step::Continue,
        }
    }

    fn on_sio(&mut self, m: &str, now: u64) -> Step {
        let Some(p) = proto::parse_sio(m) else {
            return Step::Continue;
        };
        if p.nsp != self.nsp {
            return Step::Continue;
        }
        match p.ty {
            SioType::Connect => self.ns_connected = true,
            SioType::ConnectError => {
                let msg = serde_json::from_str::<serde_json::Value>(p.json)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                    .unwrap_or_else(|| p.json.to_string());
                self.ns_error = Some(msg);
            }
            SioType::Disconnect => return Step::Closed("socket.io disconnect".into()),
            SioType::Ack => {
                if let Some(id) = p.ack {
                    self.pending_acks.retain(|&a| a != id);
                }
                // `[{"ok":false,"error":{"code":..}}]`
                if p.json.contains("\"ok\":false") {
                    let code = serde_json::from_str::<serde_json::Value>(p.json)
                        .ok()
                        .and_then(|v| v[0]["error"]["code"].as_str().map(String::from))
                        .unwrap_or_else(|| "ack error".into());
                    self.sub_error.get_or_insert(code.clone());
                    *self.st.borrow_mut().acc.errors.entry(code).or_default() += 1;
                }
            }
            SioType::Event => self.on_event(p.json, now),
            _ => {}
        }
        Step::Continue
    }

    fn on_event(&mut self, json: &str, now: u64) {
        let Ok(proto::EventArgs(name, arg, _)) = serde_json::from_str::<proto::EventArgs>(json)
        else {
            return;
        };
        match name.as_ref() {
            "connected" | "pong" => return,
            "subscribed" | "unsubscribed" => {
                self.pending_events = self.pending_events.saturating_sub(1);
                return;
            }
            "error" => {
                self.pending_events = self.pending_events.saturating_sub(1);
                let code = arg
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(a.get()).ok())
                    .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(String::from))
                    .unwrap_or_else(|| "error".into());
                self.sub_error.get_or_insert(code.clone());
                let mut s = self.st.borrow_mut();
                if matches!(code.as_str(), "SLOW_CONSUMER" | "OVERLOADED") {
                    s.conns[self.idx].told = true;
                }
                *s.acc.errors.entry(code).or_default() += 1;
                return;
            }
            _ => {}
        }
        let kind = kind_of(&name);
        let Some(arg) = arg else { return };
        let env: proto::Envelope = serde_json::from_str(arg.get()).unwrap_or_default();
        let data = env.data.unwrap_or(arg).get();
        let mut s = self.st.borrow_mut();
        let s = &mut *s;
        s.acc.received[kind] += 1;
        let c = &mut s.conns[self.idx];
        let acc = &mut s.acc;
        let mut handle = |m: proto::Marker| {
            let mut ts = m.lt_ts;
            if kind == 1 {
                // Order book: continuity, and the publish time carried in lastUpdateId.
                let sym = m.symbol.unwrap_or("");
                let pos = c.books.iter().position(|(b, _)| b == sym);
                match (m.ty, m.first_update_id, m.last_update_id) {
                    (Some("delta"), Some(first), Some(last)) => {
                        match pos {
                            Some(i) => {
                                if first != c.books[i].1 + 1 {
                                    acc.book_gaps += 1;
                                }
                                c.books[i].1 = last;
                            }
                            // No snapshot (a server without a book replica): follow
                            // from this delta on.
                            None => c.books.push((sym.to_string(), last)),
                        }
                        if ts.is_none() && last > 1_000_000_000_000_000 {
                            ts = Some(last);
                        }
                    }
                    (Some("snapshot"), _, Some(last)) => {
                        match pos {
                            Some(i) => {
                                c.books[i].1 = last;
                                acc.book_resyncs += 1;
                            }
                            None => c.books.push((sym.to_string(), last)),
                        }
                        ts = None;
                        acc.replays += 1;
                    }
                    _ => {}
                }
            }
            if kind == crate::plan::BOOK_TICKER && ts.is_none() {
                ts = m
                    .last_update_id
                    .filter(|last| *last > 1_000_000_000_000_000);
            }
            if let Some(ts) = ts {
                // Before setup completes (sub_us 0) or published before it: a replay (last
                // value on subscribe), not a live delivery.
                if c.sub_us == 0 || ts < c.sub_us {
                    acc.replays += 1;
                } else {
                    hist::record(&mut acc.lat[kind], now.saturating_sub(ts));
                }
            }
            if let (Some(seq), Some(stream)) = (m.lt_seq, m.lt_s) {
                if let Some(t) = c.streams.iter_mut().find(|t| t.stream == stream) {
                    if t.first.is_none() {
                        t.first = Some(seq);
                        t.next = seq + 1;
                        t.received += 1;
                    } else if seq >= t.next {
                        acc.gaps += seq - t.next;
                        t.next = seq + 1;
                        t.received += 1;
                    } else {
                        t.dups += 1;
                        acc.dups += 1;
                    }
                }
            }
        };
        if data.starts_with('[') {
            if let Ok(v) = serde_json::from_str::<Vec<proto::Marker>>(data) {
                for m in v {
                    handle(m);
                }
            }
        } else if let Ok(m) = serde_json::from_str::<proto::Marker>(data) {
            handle(m);
        }
    }
}
