//! Command-line and environment configuration (every flag is also a `GATEWAY_*` variable).

use clap::Parser;
use std::net::SocketAddr;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "maven-gateway",
    version,
    about = "Socket.IO v4 compatible real-time market-data gateway"
)]
pub struct Config {
    /// Public listener: Socket.IO, /health, /ready.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Internal listener: POST /internal/events, GET /stats. Keep it off the internet.
    #[arg(
        long,
        env = "GATEWAY_INTERNAL_LISTEN",
        default_value = "127.0.0.1:9100"
    )]
    pub internal_listen: SocketAddr,

    /// Reactor shards (threads owning connections); 0 means one per CPU core.
    #[arg(long, env = "GATEWAY_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Run the built-in market simulator (BTCUSDT, ETHUSDT, SOLUSDT).
    #[arg(long, env = "GATEWAY_DEMO", default_value_t = false)]
    pub demo: bool,

    /// Bearer token required on POST /internal/events (none: no check).
    #[arg(long, env = "GATEWAY_INGEST_TOKEN")]
    pub ingest_token: Option<String>,

    /// Engine.IO heartbeat: server ping interval in milliseconds.
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// Engine.IO heartbeat: how long a client may take to answer a ping, in milliseconds.
    #[arg(long, env = "GATEWAY_PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,

    /// Close sessions that have not joined a namespace within this many milliseconds.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 45_000)]
    pub connect_timeout_ms: u64,

    /// Close TCP connections that have not completed a request within this many milliseconds.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Largest inbound message or polling body in bytes.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,

    /// Origins allowed for browser polling (repeat or comma-separate; `*` for any).
    #[arg(long, env = "GATEWAY_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,

    /// Engine.IO path.
    #[arg(long, env = "GATEWAY_PATH", default_value = "/socket.io/")]
    pub path: String,

    /// Symbols clients may subscribe to (comma-separated; empty: any well-formed symbol).
    #[arg(long, env = "GATEWAY_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,

    /// Subscriptions one connection may hold.
    #[arg(long, env = "GATEWAY_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,

    /// At most one ticker (and open-kline) update per symbol per window, in milliseconds,
    /// with the latest value always sent at the window's end; 0 sends every update.
    #[arg(long, env = "GATEWAY_TICKER_THROTTLE_MS", default_value_t = 1000)]
    pub ticker_throttle_ms: u64,

    /// Order book levels per side in snapshots and in the window deltas describe.
    #[arg(long, env = "GATEWAY_ORDERBOOK_DEPTH", default_value_t = 100)]
    pub orderbook_depth: usize,

    /// Merge order book deltas over this many milliseconds into one; 0 sends each at once.
    #[arg(long, env = "GATEWAY_ORDERBOOK_CONFLATION_MS", default_value_t = 0)]
    pub orderbook_conflation_ms: u64,

    /// Outbound bytes queued for one connection past which only the latest ticker and kline
    /// values are kept and order book deltas give way to a resync snapshot.
    #[arg(long, env = "GATEWAY_OUTBOUND_SOFT_LIMIT", default_value_t = 1024 * 1024)]
    pub outbound_soft_limit: usize,

    /// Outbound bytes queued for one connection past which it is disconnected.
    #[arg(long, env = "GATEWAY_OUTBOUND_HARD_LIMIT", default_value_t = 8 * 1024 * 1024)]
    pub outbound_hard_limit: usize,

    /// HS256 shared secret for client JWTs (enables private channels).
    #[arg(
        long,
        env = "GATEWAY_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<String>,

    /// RS256 or ES256 public key (PEM file) for client JWTs (enables private channels).
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Required `iss` claim.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp` and `nbf`, in seconds.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// The claim that holds the user id.
    #[arg(long, env = "GATEWAY_JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,

    /// How long before a token expires the client gets `TOKEN_EXPIRING`, in seconds.
    #[arg(long, env = "GATEWAY_TOKEN_EXPIRY_NOTICE_SECS", default_value_t = 60)]
    pub token_expiry_notice_secs: u64,

    /// Connections (sessions) the gateway holds at most.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Connections one client address may hold.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 200)]
    pub max_connections_per_ip: usize,

    /// Authenticated connections one user may hold.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: usize,

    /// New sessions per second one client address may open (burst: twice as many).
    #[arg(long, env = "GATEWAY_HANDSHAKE_RATE_PER_IP", default_value_t = 20.0)]
    pub handshake_rate_per_ip: f64,

    /// Client events per second per connection (burst: twice as many); Engine.IO pings are
    /// not counted. Past it events are refused with RATE_LIMITED; ten times over in 10 s
    /// closes the connection.
    #[arg(long, env = "GATEWAY_MAX_MESSAGES_PER_SEC", default_value_t = 50.0)]
    pub max_messages_per_sec: f64,

    /// Take the client address from `X-Forwarded-For` (only behind a proxy you trust).
    #[arg(long, env = "GATEWAY_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,

    /// On SIGTERM: how long to let clients receive what is queued before closing, in ms.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// The `reconnectAfterMs` hint sent with `server.shutdown`.
    #[arg(long, env = "GATEWAY_RECONNECT_AFTER_MS", default_value_t = 1_000)]
    pub reconnect_after_ms: u64,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `maven_gateway=debug`.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.shards
        }
    }
}
