//! Publishing: events made by a scenario's source, stamped with the publish time and a
//! per-stream sequence number, sent at a target rate through a hook:
//! - the gateway ingest API (`POST /internal/events`, NDJSON), the default;
//! - any HTTP endpoint with a body template (`--publish-url`, `--publish-body`);
//! - a command that reads one rendered event per line on its stdin (`--publish-cmd`).

use crate::hist;
use crate::worker::now_us;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone)]
pub enum EventKind {
    Trade,
    Ticker,
    Book,
    Kline { interval: String },
    Private { ty: String, user: String },
    Manual,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub symbol: String,
    /// Room and client event name (as the gateway routes it), for templates.
    pub room: String,
    pub event: String,
    /// The data object (JSON).
    pub data: String,
}

impl Event {
    /// The gateway's ingest JSON for this event.
    pub fn ingest_json(&self) -> String {
        let s = serde_json::to_string(&self.symbol).unwrap();
        match &self.kind {
            EventKind::Trade => format!(r#"{{"type":"trade","symbol":{s},"data":{}}}"#, self.data),
            EventKind::Ticker => format!(
                r#"{{"type":"ticker.update","symbol":{s},"data":{}}}"#,
                self.data
            ),
            EventKind::Book => format!(
                r#"{{"type":"orderbook.update","symbol":{s},"data":{}}}"#,
                self.data
            ),
            EventKind::Kline { interval } => format!(
                r#"{{"type":"kline.update","symbol":{s},"interval":"{interval}","data":{}}}"#,
                self.data
            ),
            EventKind::Private { ty, user } => {
                format!(
                    r#"{{"type":"{ty}","userId":"{user}","data":{}}}"#,
                    self.data
                )
            }
            EventKind::Manual => format!(
                r#"{{"room":{},"event":{},"data":{}}}"#,
                serde_json::to_string(&self.room).unwrap(),
                serde_json::to_string(&self.event).unwrap(),
                self.data
            ),
        }
    }

    pub fn render(&self, template: Option<&str>) -> String {
        let Some(t) = template else {
            return self.ingest_json();
        };
        let (ty, user, interval) = match &self.kind {
            EventKind::Trade => ("trade", "", ""),
            EventKind::Ticker => ("ticker.update", "", ""),
            EventKind::Book => ("orderbook.update", "", ""),
            EventKind::Kline { interval } => ("kline.update", "", interval.as_str()),
            EventKind::Private { ty, user } => (ty.as_str(), user.as_str(), ""),
            EventKind::Manual => ("manual", "", ""),
        };
        t.replace("{ingest}", &self.ingest_json())
            .replace("{room}", &self.room)
            .replace("{event}", &self.event)
            .replace("{symbol}", &self.symbol)
            .replace("{interval}", interval)
            .replace("{user}", user)
            .replace("{type}", ty)
            .replace("{data}", &self.data)
    }
}

/// Per-stream sequence numbers.
#[derive(Default)]
pub struct Seqs {
    pub next: BTreeMap<u32, u64>,
}

impl Seqs {
    pub fn take(&mut self, stream: u32) -> u64 {
        let n = self.next.entry(stream).or_insert(0);
        let s = *n;
        *n += 1;
        s
    }
    pub fn last(&self) -> BTreeMap<u32, u64> {
        self.next
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(&k, &n)| (k, n - 1))
            .collect()
    }
}

/// A scenario's event maker: called once per publish with the publish time (µs).
pub trait Source: Send {
    fn make(&mut self, ts_us: u64, seqs: &mut Seqs) -> Event;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum BodyFormat {
    /// One event per line, one request per batch.
    Ndjson,
    /// A JSON array per batch.
    Array,
    /// One request per event.
    Single,
}

#[derive(Clone)]
pub enum Hook {
    Http {
        url: String,
        template: Option<String>,
        format: BodyFormat,
        token: Option<String>,
    },
    Cmd {
        cmd: String,
        template: Option<String>,
    },
}

impl Hook {
    pub fn describe(&self) -> String {
        match self {
            Hook::Http {
                url,
                template: None,
                ..
            } => format!("POST {url} (gateway ingest NDJSON)"),
            Hook::Http { url, format, .. } => format!("POST {url} (template, {format:?})"),
            Hook::Cmd { cmd, .. } => format!("command `{cmd}` (one event per stdin line)"),
        }
    }
}

#[derive(Default)]
pub struct PubStats {
    pub sent: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// Request latency (send → answer), µs.
    pub req_hist: Mutex<Option<Histogram<u64>>>,
    pub seqs: Mutex<BTreeMap<u32, u64>>,
    pub started_us: AtomicU64,
}

/// A running publisher. The rate may be changed while it runs (capacity steps).
pub struct Publisher {
    pub stats: Arc<PubStats>,
    pub rate_bits: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn start(hook: Hook, rate: f64, source: Box<dyn Source>) -> Publisher {
        Publisher::start_batched(hook, rate, source, 1)
    }

    /// As `start`, sending at least `min_batch` events a request (or what 50 ms brought), as
    /// a backend batching its events would.
    pub fn start_batched(
        hook: Hook,
        rate: f64,
        source: Box<dyn Source>,
        min_batch: usize,
    ) -> Publisher {
        let stats = Arc::new(PubStats::default());
        *stats.req_hist.lock().unwrap() = Some(hist::new_hist());
        let rate_bits = Arc::new(AtomicU64::new(rate.to_bits()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            hook,
            source,
            stats.clone(),
            rate_bits.clone(),
            stop.clone(),
            min_batch.clamp(1, MAX_BATCH),
        ));
        Publisher {
            stats,
            rate_bits,
            stop,
            task,
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Relaxed);
    }

    pub async fn stop(self) -> Arc<PubStats> {
        self.stop.store(true, Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.stats
    }
}

/// Publish a fixed list of events once (setup: order book snapshots).
pub async fn publish_once(hook: &Hook, events: Vec<Event>) -> Result<(), String> {
    let mut sink = Sink::open(hook)?;
    let bodies: Vec<String> = events.iter().map(|e| e.render(sink.template())).collect();
    sink.send(bodies).await
}

enum Sink {
    Http {
        client: reqwest::Client,
        url: String,
        template: Option<String>,
        format: BodyFormat,
        token: Option<String>,
    },
    Cmd {
        child: tokio::process::Child,
        stdin: tokio::process::ChildStdin,
        template: Option<String>,
    },
}

impl Sink {
    fn open(hook: &Hook) -> Result<Sink, String> {
        Ok(match hook.clone() {
            Hook::Http {
                url,
                template,
                format,
                token,
            } => Sink::Http {
                client: reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())?,
                url,
                template,
                format,
                token,
            },
            Hook::Cmd { cmd, template } => {
                let mut child = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .stdin(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("--publish-cmd: {e}"))?;
                let stdin = child.stdin.take().unwrap();
                Sink::Cmd {
                    child,
                    stdin,
                    template,
                }
            }
        })
    }

    fn template(&self) -> Option<&str> {
        match self {
            Sink::Http { template, .. } | Sink::Cmd { template, .. } => template.as_deref(),
        }
    }

    async fn send(&mut self, bodies: Vec<String>) -> Result<(), String> {
        match self {
            Sink::Http {
                client,
                url,
                format,
                token,
                ..
            } => {
                let reqs: Vec<String> = match format {
                    BodyFormat::Ndjson => vec![bodies.join("\n")],
                    BodyFormat::Array => vec![format!("[{}]", bodies.join(","))],
                    BodyFormat::Single => bodies,
                };
                for body in reqs {
                    let mut rq = client
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .body(body);
                    if let Some(t) = token {
                        rq = rq.bearer_auth(t);
                    }
                    let r = rq.send().await.map_err(|e| format!("publish: {e}"))?;
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if !status.is_success() {
                        return Err(format!(
                            "publish: HTTP {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ));
                    }
                }
                Ok(())
            }
            Sink::Cmd { stdin, child, .. } => {
                let mut buf = bodies.join("\n");
                buf.push('\n');
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!("--publish-cmd exited: {st}"));
                }
                stdin
                    .write_all(buf.as_bytes())
                    .await
                    .map_err(|e| format!("publish-cmd: {e}"))?;
                stdin.flush().await.map_err(|e| format!("publish-cmd: {e}"))
            }
        }
    }
}

const MAX_BATCH: usize = 1000;

async fn run(
    hook: Hook,
    mut source: Box<dyn Source>,
    stats: Arc<PubStats>,
    rate_bits: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    min_batch: usize,
) {
    let mut sink = match Sink::open(&hook) {
        Ok(s) => s,
        Err(e) => {
            stats.errors.fetch_add(1, Relaxed);
            *stats.first_error.lock().unwrap() = Some(e);
            return;
        }
    };
    let mut seqs = Seqs::default();
    stats.started_us.store(now_us(), Relaxed);
    // The first event goes out at once.
    let mut credit = 1.0f64;
    let mut last = Instant::now();
    let mut last_send = Instant::now();
    let mut hist = hist::new_hist();
    while !stop.load(Relaxed) {
        let now = Instant::now();
        let rate = f64::from_bits(rate_bits.load(Relaxed));
        credit += rate * now.duration_since(last).as_secs_f64();
        last = now;
        // Never bank more than 1 s of backlog.
        credit = credit.min(rate.max(1.0));
        let due = credit.floor() as usize;
        let batching = due < min_batch && last_send.elapsed() < Duration::from_millis(50);
        if due == 0 || batching {
            let want = if batching { min_batch as f64 } else { 1.0 };
            let wait = if rate > 0.0 {
                ((want - credit) / rate).clamp(0.0005, 0.05)
            } else {
                0.05
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            continue;
        }
        let n = due.min(MAX_BATCH);
        credit -= n as f64;
        last_send = Instant::now();
        let ts = now_us();
        let template = sink.template().map(str::to_string);
        let bodies: Vec<String> = (0..n)
            .map(|_| source.make(ts, &mut seqs).render(template.as_deref()))
            .collect();
        let t = Instant::now();
        match sink.send(bodies).await {
            Ok(()) => {
                stats.sent.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                stats.errors.fetch_add(1, Relaxed);
                let mut fe = stats.first_error.lock().unwrap();
                if fe.is_none() {
                    *fe = Some(e);
                }
            }
        }
        stats.requests.fetch_add(1, Relaxed);
        hist::record(&mut hist, t.elapsed().as_micros() as u64);
        *stats.seqs.lock().unwrap() = seqs.last();
    }
    *stats.req_hist.lock().unwrap() = Some(hist);
    *stats.seqs.lock().unwrap() = seqs.last();
}

// ---------------------------------------------------------------------------------------------
// Sources.

pub fn symbol(i: usize) -> String {
    format!("LT{i:04}")
}

fn pad(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(r#","pad":"{}""#, "x".repeat(n))
    }
}

/// Trades round-robin over `rooms` symbols; stream id = room index.
pub struct TradeSource {
    pub rooms: usize,
    pub next: usize,
    pub pad: usize,
    pub stream_base: u32,
    pub symbols: Vec<String>,
}

impl TradeSource {
    pub fn new(rooms: usize, payload_bytes: usize) -> Self {
        TradeSource {
            rooms,
            next: 0,
            pad: payload_bytes,
            stream_base: 0,
            symbols: (0..rooms).map(symbol).collect(),
        }
    }
}

impl Source for TradeSource {
    fn make(&mut self, ts: u64, seqs: &mut Seqs) -> Event {
        let k = self.next % self.rooms.max(1);
        self.next += 1;
        let stream = self.stream_base + k as u32;
        let seq = seqs.take(stream);
        let sym = &self.symbols[k];
        Event {
            kind: EventKind::Trade,
            symbol: sym.clone(),
            room: format!("trades:{sym}"),
            event: "trade".into(),
            data: format!(
                r#"{{"lt_ts":{ts},"lt_seq":{seq},"lt_s":{stream},"tradeId":"{stream}-{seq}","symbol":"{sym}","price":"100.5","quantity":"0.25","side":"buy"{}}}"#,
                pad(self.pad)
            ),
        }
    }
}
