//! What the coordinator tells its worker processes (JSON lines on their stdin) and what they
//! report back (JSON lines on their stdout).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

/// Latency kinds, by the event a client receives.
pub const KINDS: [&str; KIND_COUNT] = [
    "trade",
    "orderbook",
    "ticker",
    "tickers",
    "kline",
    "private",
    "probe",
    "other",
    "bookTicker",
];

pub const KIND_COUNT: usize = 9;

/// `bookTicker.update`: the publish time is the `lastUpdateId` of the book update that moved
/// the best bid or ask (the publisher puts its timestamp there).
pub const BOOK_TICKER: usize = 8;

pub fn kind_of(event: &str) -> usize {
    match event {
        "trade" => 0,
        "orderbook.update" => 1,
        "ticker.update" => 2,
        "tickers.update" => 3,
        "kline.update" => 4,
        "probe" => 6,
        "bookTicker.update" => BOOK_TICKER,
        e if e.starts_with("order.")
            || e.starts_with("balance.")
            || e.starts_with("deposit.")
            || e == "trade.executed" =>
        {
            5
        }
        _ => 7,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: usize,
    pub target: SocketAddr,
    pub path: String,
    pub namespace: String,
    pub source_addrs: Vec<Ipv4Addr>,
    pub connect_timeout_ms: u64,
    pub tick_ms: u64,
    /// HTTP `Origin` header for polling (browser-like clients).
    pub origin: Option<String>,
    /// How far the worker's clock is ahead of the coordinator's, in µs (0 on one machine).
    #[serde(default)]
    pub clock_ahead_us: i64,
    /// Clients offer permessage-deflate and inflate what comes compressed.
    #[serde(default)]
    pub deflate: bool,
}

/// A coordinator's first line to a worker on another machine.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub token: String,
}

/// A clock probe: the worker answers with its clock (`{"now_us": ...}`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub probe: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket only (`transport=websocket` from the first request), like trading bots.
    Websocket,
    /// HTTP long-polling only.
    Polling,
    /// Long-polling handshake, then upgrade to WebSocket (the official client's default).
    Upgrade,
}

/// One subscription a client sends after connecting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubTemplate {
    /// `subscribe` or `subscribe.private`.
    pub event: String,
    pub channel: String,
    /// Symbols to pick from: client `i` takes `symbols[(i * per_client + j) % len]`,
    /// `j < per_client`. Empty: no symbol field (private channels).
    #[serde(default)]
    pub symbols: Vec<String>,
    #[serde(default = "one")]
    pub per_client: usize,
    #[serde(default)]
    pub interval: Option<String>,
    /// Lossless stream ids: `base + symbol index` (or `base + client index` when
    /// `per_user_stream`). None for conflated streams (tickers, open klines, books).
    #[serde(default)]
    pub stream_base: Option<u32>,
    #[serde(default)]
    pub per_user_stream: bool,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRule {
    /// HS256 secret; the token's `sub` is `user_prefix + client index`.
    pub jwt_secret: String,
    pub user_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub transport: Transport,
    pub subs: Vec<SubTemplate>,
    #[serde(default)]
    pub auth: Option<AuthRule>,
    /// Ask for an ack on each subscribe (the reply then confirms it); otherwise wait for a
    /// `subscribed` or `error` event.
    pub ack: bool,
    /// A refused subscription fails the client's setup (otherwise it is only counted).
    #[serde(default)]
    pub strict: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open `count` clients numbered from `first`, `rate` per second.
    Open {
        group: u32,
        first: u64,
        count: u64,
        rate: f64,
        plan: Plan,
    },
    /// Publishing is over: the last sequence number of each lossless stream, and when
    /// publishing started (µs since the epoch; a stream subscribed before it expects seq 0).
    Final {
        last_seq: Vec<(u32, u64)>,
        publish_start_us: u64,
    },
    /// Close every client (Engine.IO close).
    CloseAll,
    /// The coordinator is still there (to a worker on another machine, every 2 s).
    Ping,
    Exit,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    pub worker: usize,
    pub t_us: u64,
    /// Clients currently connected to the namespace.
    pub connected: u64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    /// Connections closed by the server or the network after connecting.
    pub dropped: u64,
    /// Data events received, per kind (this interval).
    pub received: [u64; KIND_COUNT],
    /// Base64 HdrHistograms of the interval, per kind (empty when no samples).
    pub latency: [String; KIND_COUNT],
    pub handshake: String,
    pub bytes: u64,
    /// Messages missing between sequence numbers seen this interval (gaps).
    pub gaps: u64,
    pub dups: u64,
    pub book_gaps: u64,
    pub book_resyncs: u64,
    pub replays: u64,
    /// Worst event-loop oversleep this interval (µs): the client's own scheduling lag.
    pub lag_max_us: u64,
    pub errors: BTreeMap<String, u64>,
    /// The worker's own CPU time since its run began (µs), for a coordinator on another
    /// machine.
    #[serde(default)]
    pub cpu_us: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalReport {
    pub worker: usize,
    pub clients: u64,
    pub alive: u64,
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub dups: u64,
    pub clients_with_loss: u64,
    /// Clients that lost messages without the server telling them (a notice or a close).
    pub clients_with_untold_loss: u64,
    /// Lossless streams that a client subscribed after publishing started and never saw.
    pub silent_streams: u64,
    /// Per kind: expected / missing.
    pub expected_by_kind: BTreeMap<String, u64>,
    pub missing_by_kind: BTreeMap<String, u64>,
    pub drop_reasons: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    Ready {
        worker: usize,
        pid: u32,
    },
    Tick(Box<Tick>),
    Opened {
        worker: usize,
        group: u32,
        ok: u64,
        failed: u64,
        first_error: Option<String>,
    },
    Final(FinalReport),
    Closed {
        worker: usize,
    },
}

/// A stream id's kind for loss reports (by convention of the scenarios' stream bases).
pub fn stream_kind(stream: u32) -> &'static str {
    match stream {
        0..=99_999 => "trade",
        100_000..=199_999 => "probe",
        _ => "private",
    }
}
pub const PROBE_STREAM_BASE: u32 = 100_000;
pub const PRIVATE_STREAM_BASE: u32 = 200_000;
