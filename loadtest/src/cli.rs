use crate::plan::Transport;
use crate::publish::BodyFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;

/// Capacity-planning load harness for Socket.IO v4 servers: how many users can this box
/// serve, at what latency? Loopback targets only (127.0.0.0/8).
#[derive(Parser, Debug)]
#[command(name = "loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Ramp N connections at a chosen rate, hold them, check every one is still alive.
    Connect(ConnectArgs),
    /// N subscribers over K rooms; publishes at rate R through the publish hook.
    Fanout(FanoutArgs),
    /// Bots (WebSocket, order books + trades), browsers (polling then upgrade, ticker:all +
    /// klines) and authenticated users (private channels).
    Mixed(MixedArgs),
    /// Step the load up until an SLO (p99 latency, loss) breaks; report the largest load
    /// that held.
    Capacity(CapacityArgs),
    /// Publish several times faster than the subscribers can be sent, and check the server
    /// stays responsive, bounded, and tells every client that falls behind.
    Overload(OverloadArgs),
    /// Subscribers whose TCP connections are destroyed every 10–20 s and come back ~2 s
    /// later with connection state recovery: delivery, duplicates, order, replay delay.
    Jitter(JitterArgs),
    /// The ingest API at rising rates: accepted events/s, gateway CPU per event and, with
    /// subscribers, ingest → delivery latency, step by step until ingest saturates.
    Ingest(IngestArgs),
    /// Serve as a worker for a coordinator on another machine (`--worker-at` there): client
    /// connections are opened from here, figures reported back to it.
    Worker(WorkerArgs),
    /// Internal: a worker process (started by the coordinator).
    #[command(name = "__worker", hide = true)]
    LocalWorker,
}

/// The shared worker token: the flag, else `LOADTEST_WORKER_TOKEN`; never empty.
pub fn worker_token(flag: &Option<String>) -> Option<String> {
    flag.clone()
        .or_else(|| std::env::var("LOADTEST_WORKER_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Address to take coordinators on, e.g. 0.0.0.0:7070.
    #[arg(long)]
    pub listen: String,
    /// Shared token a coordinator must present (or LOADTEST_WORKER_TOKEN); anyone who can reach
    /// the port and knows it can drive this machine's load, and it crosses the network in the
    /// clear: keep the port on a private network.
    #[arg(long)]
    pub token: Option<String>,
    /// Serve one run, then exit.
    #[arg(long)]
    pub once: bool,
    /// Open client connections from this address of this machine (repeatable; spreads the
    /// ports over several addresses); default: whatever the route gives.
    #[arg(long = "source-addr")]
    pub source_addrs: Vec<std::net::Ipv4Addr>,
}

/// What the `ingest` scenario posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum IngestKind {
    Trades,
    Tickers,
    Books,
    Private,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct IngestArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "trades")]
    pub kind: IngestKind,
    /// Target events per second, one step each, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50000,100000,200000,400000,800000"
    )]
    pub rates: Vec<f64>,
    /// Concurrent posters (HTTP connections); each takes its own slice of the symbols.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Events per request at least (or what 50 ms brought), as a batching backend posts.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Symbols (or users, for private events) the events are spread over.
    #[arg(long, default_value_t = 200)]
    pub symbols: usize,
    /// Clients subscribed to the events' rooms (one room each, round robin), for latency.
    #[arg(long, default_value_t = 0)]
    pub subscribers: u64,
    /// Measured seconds per step (after warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    #[arg(long, default_value_t = 2000.0)]
    pub ramp_rate: f64,
    /// HS256 secret for the private subscribers' JWTs (`sub` = lt-user-N).
    #[arg(long, default_value = "loadtest-secret")]
    pub jwt_secret: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Socket.IO server to load, host:port on 127.0.0.0/8 (anywhere with --allow-remote).
    #[arg(long)]
    pub target: Option<String>,
    /// Let --target, --ingest, --publish-url and --stats-url name another host (a staging
    /// gateway). The run's bounds (counts, rates, deadline) are the same; the report says
    /// where the load went. Without it, only 127.0.0.0/8 is loaded.
    #[arg(long)]
    pub allow_remote: bool,
    /// Spawn maven-gateway from this binary (free ports, --shards, --log warn).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Spawn any server with `sh -c`; `{port}` and `{ingest_port}` are replaced (also given
    /// as $PORT and $INGEST_PORT). Its publish endpoint defaults to
    /// http://127.0.0.1:{ingest_port}/internal/events.
    #[arg(long)]
    pub server_cmd: Option<String>,
    /// Extra argument for --server-bin (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep a spawned gateway's per-address connection limits (by default loadtest lifts
    /// --max-connections, --max-connections-per-ip and --handshake-rate-per-ip through
    /// GATEWAY_* variables, since all its clients come from a few loopback addresses).
    #[arg(long)]
    pub keep_server_limits: bool,
    /// Reactor shards for a spawned maven-gateway.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Process to measure (CPU, RSS from /proc); set automatically for a spawned server.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Engine.IO path.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,
    /// Socket.IO namespace.
    #[arg(long, default_value = "/ws")]
    pub namespace: String,
    /// Gateway-style ingest, e.g. http://127.0.0.1:9100 (POST /internal/events, NDJSON).
    #[arg(long)]
    pub ingest: Option<String>,
    /// Publish hook: POST rendered events to this URL.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Body template per event for --publish-url / --publish-cmd. Placeholders: {room}
    /// {event} {symbol} {interval} {user} {type} {data} (JSON) {ingest} (gateway JSON).
    #[arg(long)]
    pub publish_body: Option<String>,
    /// How templated bodies are batched into requests.
    #[arg(long, value_enum, default_value = "ndjson")]
    pub publish_format: BodyFormat,
    /// Publish hook: a command (sh -c) that gets one rendered event per line on stdin.
    #[arg(long)]
    pub publish_cmd: Option<String>,
    /// Bearer token for the ingest API.
    #[arg(long)]
    pub ingest_token: Option<String>,
    /// Server counters (GET, JSON with total.messages_out), e.g. the gateway's /stats.
    #[arg(long)]
    pub stats_url: Option<String>,
    /// The server's Prometheus metrics, read for its CPU and memory
    /// (`process_cpu_seconds_total`, `process_resident_memory_bytes`) when it is not a local
    /// process; defaults to the stats URL's /metrics.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Worker processes (default: enough for 15,000 connections each, at least 2).
    #[arg(long)]
    pub workers: Option<usize>,
    /// A worker on another machine (`loadtest worker --listen ADDR` there), repeatable: the
    /// run's clients are split over these instead of local worker processes.
    #[arg(long = "worker-at")]
    pub worker_at: Vec<String>,
    /// The token the `--worker-at` workers were started with (or LOADTEST_WORKER_TOKEN).
    #[arg(long)]
    pub worker_token: Option<String>,
    /// Spread connections over this many source addresses 127.0.0.1..N.
    #[arg(long, default_value_t = 4)]
    pub source_addrs: usize,
    /// Per-client budget to connect and subscribe.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Seconds to wait after publishing stops for in-flight messages.
    #[arg(long, default_value_t = 2.0)]
    pub drain_secs: f64,
    /// Subscribe without acks (wait for `subscribed` events instead).
    #[arg(long)]
    pub no_ack: bool,
    /// Origin header for polling requests.
    #[arg(long)]
    pub origin: Option<String>,
    /// WebSocket clients offer permessage-deflate as browsers do, and inflate what comes
    /// compressed (compare the server's bytes written per delivery with and without).
    #[arg(long)]
    pub deflate: bool,
    /// Where reports (and a spawned server's log) go.
    #[arg(long, default_value = "reports")]
    pub out_dir: String,
    /// JSON report path (default: OUT_DIR/SCENARIO-LABEL-TIME.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// HTML report path (default: beside the JSON).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Skip the HTML report.
    #[arg(long)]
    pub no_html: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Name of the server in reports (default: the binary's name).
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers.
    #[arg(long, default_value_t = 500)]
    pub clients: u64,
    /// Rooms (trades:LT0000..); client i joins room i % rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Publishes per second (all rooms together, round-robin).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// New connections per second during the ramp.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp_rate: f64,
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    /// Extra bytes of padding in each event's data.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct OverloadArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub clients: u64,
    /// Rooms (trades:LT0000..); client i joins room i % rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Publishes per second, all rooms together: far more than can be delivered.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Overload time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// New connections per second during the ramp.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp_rate: f64,
    /// Extra bytes of padding in each event's data.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// How often, during the overload, a probe asks /health and opens a new session (ms).
    #[arg(long, default_value_t = 250)]
    pub probe_ms: u64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct JitterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers (one task each in this process).
    #[arg(long, default_value_t = 1000)]
    pub clients: u64,
    /// Rooms (trades:LT0000..); client i joins room i % rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Publishes per second, all rooms together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Shortest time a connection lives before it is destroyed (ms).
    #[arg(long, default_value_t = 10_000)]
    pub drop_min_ms: u64,
    /// Longest time a connection lives before it is destroyed (ms).
    #[arg(long, default_value_t = 20_000)]
    pub drop_max_ms: u64,
    /// How long a client stays away before it reconnects (ms).
    #[arg(long, default_value_t = 2_000)]
    pub offline_ms: u64,
    /// Extra bytes of padding in each event's data.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub clients: u64,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_rate: f64,
    /// Seconds to hold every connection after the ramp.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    /// Probe broadcasts per second to every client during the hold (0: none); a final probe
    /// at the end must reach every client for it to count as alive. Needs a publish hook;
    /// without one, alive means still connected.
    #[arg(long, default_value_t = 1.0)]
    pub probe_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Vary {
    /// Add subscribers each step (publish rate fixed).
    Clients,
    /// Raise the publish rate each step (subscribers fixed).
    Rate,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "clients")]
    pub vary: Vary,
    /// First step's load (clients, or publishes/s).
    #[arg(long, default_value_t = 1000.0)]
    pub start: f64,
    /// Added each step.
    #[arg(long, default_value_t = 1000.0)]
    pub step: f64,
    /// Largest load to try.
    #[arg(long, default_value_t = 20000.0)]
    pub max: f64,
    /// Fixed publish rate (vary=clients).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Fixed clients (vary=rate).
    #[arg(long, default_value_t = 2000)]
    pub clients: u64,
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Measured seconds per step (after warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Seconds after a step's load is reached before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// SLO: p99 publish→receive latency, ms.
    #[arg(long, default_value_t = 50.0)]
    pub slo_p99_ms: f64,
    /// SLO: largest fraction of messages lost (sequence gaps) and clients dropped.
    #[arg(long, default_value_t = 0.0)]
    pub slo_loss: f64,
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// Time budget for the whole run, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_secs: f64,
    #[arg(long, default_value_t = 5000.0)]
    pub ramp_rate: f64,
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Plan for this many clients: the report projects how many instances they need from
    /// what one instance spent at the largest load that held.
    #[arg(long)]
    pub plan_clients: Option<u64>,
    /// Publishes per second to plan for (default: --rate).
    #[arg(long)]
    pub plan_rate: Option<f64>,
    /// Rooms the planned clients spread over, one each (default: --rooms).
    #[arg(long)]
    pub plan_rooms: Option<usize>,
    /// Cores of one production instance (default: this machine's).
    #[arg(long)]
    pub instance_cores: Option<f64>,
    /// Memory of one production instance, MiB.
    #[arg(long, default_value_t = 8192.0)]
    pub instance_memory_mib: f64,
    /// Share of an instance's CPU and memory to plan to use.
    #[arg(long, default_value_t = 0.6)]
    pub headroom: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Symbols LT0000.. with order books, trades, tickers and klines.
    #[arg(long, default_value_t = 20)]
    pub symbols: usize,
    /// WebSocket-only bots: order book, trades and best bid/ask on --bot-symbols symbols each.
    #[arg(long, default_value_t = 200)]
    pub bots: u64,
    #[arg(long, default_value_t = 3)]
    pub bot_symbols: usize,
    /// Browser-like clients: polling then upgrade, ticker:all + klines on one symbol.
    #[arg(long, default_value_t = 300)]
    pub browsers: u64,
    #[arg(long, default_value = "1m")]
    pub kline_interval: String,
    /// Authenticated users on private channels (skipped, with a note, when the server
    /// refuses `subscribe.private`).
    #[arg(long, default_value_t = 100)]
    pub private_users: u64,
    /// HS256 secret for the users' JWTs (`sub` = lt-user-N).
    #[arg(long, default_value = "loadtest-secret")]
    pub jwt_secret: String,
    /// Private channel to subscribe.
    #[arg(long, default_value = "user.orders")]
    pub private_channel: String,
    /// Trades per second (all symbols).
    #[arg(long, default_value_t = 100.0)]
    pub trade_rate: f64,
    /// Order book deltas per second (all symbols).
    #[arg(long, default_value_t = 200.0)]
    pub book_rate: f64,
    /// Ticker updates per second (all symbols).
    #[arg(long, default_value_t = 50.0)]
    pub ticker_rate: f64,
    /// Kline updates per second (all symbols).
    #[arg(long, default_value_t = 20.0)]
    pub kline_rate: f64,
    /// Private events per second (all users).
    #[arg(long, default_value_t = 20.0)]
    pub private_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_rate: f64,
}

/// Hard bounds: a load harness must stop by itself.
pub const MAX_CLIENTS: u64 = 200_000;
pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_SECS: f64 = 3600.0;

pub fn check_bounds(clients: u64, rate: f64, secs: f64) -> Result<(), String> {
    if clients > MAX_CLIENTS {
        return Err(format!("at most {MAX_CLIENTS} clients"));
    }
    if !(0.0..=MAX_RATE).contains(&rate) {
        return Err(format!("rate must be within 0..{MAX_RATE}"));
    }
    if !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!("durations must be within 0..{MAX_SECS} s"));
    }
    Ok(())
}
