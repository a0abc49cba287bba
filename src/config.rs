//! Configuration: a TOML file (`--config`), `GATEWAY_*` environment variables and flags, in
//! rising precedence, into one typed struct.

use clap::{CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::net::SocketAddr;
use thiserror::Error;

#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "maven-gateway",
    version,
    about = "Socket.IO v4 compatible real-time market-data gateway",
    args_override_self = true
)]
pub struct Config {
    /// TOML file with any of the settings below (keys as the flags, without `--`).
    #[arg(long, env = "GATEWAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long, default_value_t = false)]
    #[serde(skip)]
    pub print_config: bool,

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

    /// Threads of the internal listener, where ingest batches are parsed, applied and
    /// encoded (batches of distinct symbols apply at once); 0 means one per two CPU cores,
    /// leaving the rest to the shards' fan-out.
    #[arg(long, env = "GATEWAY_INGEST_THREADS", default_value_t = 0)]
    pub ingest_threads: usize,

    /// Run the built-in market simulator (BTCUSDT, ETHUSDT, SOLUSDT).
    #[arg(long, env = "GATEWAY_DEMO", default_value_t = false)]
    pub demo: bool,

    /// Bearer token required on POST /internal/events (none: no check).
    #[arg(long, env = "GATEWAY_INGEST_TOKEN", hide_env_values = true)]
    #[serde(serialize_with = "redact")]
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

    /// Close TCP connections that have not completed a request head within this many
    /// milliseconds: the first request, and each next one on a kept-alive HTTP connection.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Largest inbound message or polling body in bytes.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,

    /// permessage-deflate for WebSocket clients that offer it (browsers and the Node client
    /// do): each broadcast is compressed once for all of them. `off` never negotiates it.
    #[arg(long, env = "GATEWAY_COMPRESSION", value_enum, default_value_t = Switch::On)]
    pub compression: Switch,

    /// Smallest message payload in bytes sent compressed to a client that negotiated
    /// permessage-deflate. Compressing costs ~9 µs per message whatever its size (once per
    /// broadcast); at 200 bytes a trade or ticker frame already shrinks by a third, while
    /// acks and pings stay as they are.
    #[arg(long, env = "GATEWAY_COMPRESSION_THRESHOLD", default_value_t = 200)]
    pub compression_threshold: usize,

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

    /// Outbound bytes all connections together may have queued (each counts the frames it
    /// shares with others in full); past it the connections with the longest backlogs are
    /// disconnected as slow consumers.
    #[arg(long, env = "GATEWAY_OUTBOUND_TOTAL_LIMIT", default_value_t = 512 * 1024 * 1024)]
    pub outbound_total_limit: usize,

    /// HS256 shared secret for client JWTs (enables private channels).
    #[arg(
        long,
        env = "GATEWAY_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    #[serde(serialize_with = "redact")]
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

    /// Take the client address from `X-Forwarded-For`, as written by the proxies in
    /// `--trusted-proxies` (the right-most entry, or `--proxy-hops` from the right).
    #[arg(long, env = "GATEWAY_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,

    /// With `--trust-proxy`: the peers (CIDRs or addresses, comma-separated) whose
    /// `X-Forwarded-For` is believed; any other peer counts as its own address.
    #[arg(
        long,
        env = "GATEWAY_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128"
    )]
    pub trusted_proxies: Vec<String>,

    /// With `--trust-proxy`: how many trusted proxies stand in front of the gateway (the
    /// client is that many entries from the right of `X-Forwarded-For`).
    #[arg(long, env = "GATEWAY_PROXY_HOPS", default_value_t = 1)]
    pub proxy_hops: usize,

    /// TCP connections one client address may hold open, kept-alive HTTP included; more are
    /// closed as they are accepted. 0: twice `--max-connections-per-ip`, plus 8.
    #[arg(long, env = "GATEWAY_MAX_TCP_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_tcp_connections_per_ip: usize,

    /// Input one client address's connections may hold of messages still arriving, in
    /// bytes; past it they are not read until some completes.
    #[arg(long, env = "GATEWAY_MAX_INPUT_PER_IP", default_value_t = 8 * 1024 * 1024)]
    pub max_input_per_ip: usize,

    /// The same, all clients together, in bytes (a connection holding under 4 KiB may
    /// still read, so ordinary small messages always flow).
    #[arg(long, env = "GATEWAY_MAX_INPUT", default_value_t = 32 * 1024 * 1024)]
    pub max_input: usize,

    /// TCP connections the gateway holds at most; past it, the connection idle longest
    /// without a request makes room, or the new one is closed. 0: the process's descriptor
    /// limit (raised to its hard limit at start) less a reserve for the internal listener,
    /// Redis and logs.
    #[arg(long, env = "GATEWAY_MAX_TCP_CONNECTIONS", default_value_t = 0)]
    pub max_tcp_connections: usize,

    /// Work one client address may make the gateway do, in events per second (burst: twice
    /// as many): an event is one client message under 4 KiB; each further 4 KiB of input, 16
    /// rooms joined or left and 64 KiB of answers (snapshots) count as one more. Past it the
    /// address's connections are not read until the debt is paid.
    #[arg(long, env = "GATEWAY_WORK_RATE_PER_IP", default_value_t = 1000.0)]
    pub work_rate_per_ip: f64,

    /// Rooms the gateway holds at most (each distinct channel and symbol subscribed); past
    /// it subscriptions to new rooms are refused with SUBSCRIPTION_LIMIT.
    #[arg(long, env = "GATEWAY_MAX_ROOMS", default_value_t = 100_000)]
    pub max_rooms: usize,

    /// Depth/speed views (rooms at a subscription's own depth or speed) the gateway computes
    /// at most; past it, subscriptions to new views are refused with SUBSCRIPTION_LIMIT.
    #[arg(long, env = "GATEWAY_MAX_VIEWS", default_value_t = 10_000)]
    pub max_views: usize,

    /// Subscriptions to depth/speed views one client address holds at most, all its
    /// connections together; past it they are refused with SUBSCRIPTION_LIMIT.
    #[arg(long, env = "GATEWAY_MAX_VIEWS_PER_IP", default_value_t = 1_000)]
    pub max_views_per_ip: usize,

    /// Let clients subscribe to any well-formed symbol. By default a symbol must be listed in
    /// `--symbols` or have been seen from ingest, so clients cannot create rooms at will.
    #[arg(
        long,
        env = "GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS",
        default_value_t = false
    )]
    pub subscribe_unknown_symbols: bool,

    /// How long a closing connection may take to accept what it is owed (an answer, a close
    /// frame) before it is reset, in ms.
    #[arg(long, env = "GATEWAY_CLOSE_LINGER_MS", default_value_t = 5_000)]
    pub close_linger_ms: u64,

    /// Cluster mode: events flow through a Redis Stream shared by every instance.
    #[arg(long, env = "GATEWAY_REDIS")]
    pub redis: Option<String>,

    /// The Redis Stream events flow through.
    #[arg(
        long,
        env = "GATEWAY_REDIS_STREAM_KEY",
        default_value = "gateway:events"
    )]
    pub redis_stream_key: String,

    /// Approximate length the stream is trimmed to (`XADD MAXLEN ~`).
    #[arg(long, env = "GATEWAY_REDIS_STREAM_MAXLEN", default_value_t = 1_000_000)]
    pub redis_stream_maxlen: usize,

    /// Key prefix of socket.io's Redis emitter (`@socket.io/redis-emitter`): in cluster mode its
    /// emits to `/ws` rooms are delivered; empty turns that off.
    #[arg(long, env = "GATEWAY_REDIS_EMITTER_KEY", default_value = "socket.io")]
    pub redis_emitter_key: String,

    /// Connection state recovery: how long a disconnected `/ws` socket can come back and get
    /// its rooms and every missed lossless event, in ms; 0 turns recovery off (no `pid`, no
    /// offsets appended to events).
    #[arg(
        long,
        alias = "recovery-window",
        env = "GATEWAY_RECOVERY_WINDOW_MS",
        default_value_t = 120_000
    )]
    pub recovery_window_ms: u64,

    /// Most lossless events kept for recovery replays, whatever the window (memory bound:
    /// roughly this many times the average frame size).
    #[arg(long, env = "GATEWAY_RECOVERY_MAX_EVENTS", default_value_t = 500_000)]
    pub recovery_max_events: usize,

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
pub enum Switch {
    On,
    Off,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("config file {path}: unknown key '{key}'")]
    UnknownKey { path: String, key: String },
    #[error("config file {path}: key '{key}' {message}")]
    BadValue {
        path: String,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Args(String),
}

impl Config {
    /// Reads flags and the environment, then the file named by `--config`, which fills only
    /// what neither of them set.
    pub fn load(args: impl IntoIterator<Item = OsString>) -> Result<Config, clap::Error> {
        let args: Vec<OsString> = args.into_iter().collect();
        let first = Config::try_parse_from(&args)?;
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let from_file = match file_args(&path) {
            Ok(a) => a,
            Err(e) => {
                return Err(Config::command().error(clap::error::ErrorKind::ValueValidation, e))
            }
        };
        // File settings go first on the command line: real flags later override them.
        let mut merged = vec![args
            .first()
            .cloned()
            .unwrap_or_else(|| "maven-gateway".into())];
        merged.extend(from_file);
        merged.extend(args.into_iter().skip(1));
        let matches = Config::command().try_get_matches_from(merged)?;
        Config::from_arg_matches(&matches)
    }

    /// The effective configuration, as a TOML file would say it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub fn shard_count(&self) -> usize {
        per_core_if_zero(self.shards)
    }

    pub fn ingest_thread_count(&self) -> usize {
        if self.ingest_threads == 0 {
            per_core_if_zero(0).div_ceil(2)
        } else {
            self.ingest_threads
        }
    }
}

fn per_core_if_zero(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        n
    }
}

/// Turns a TOML file into flags, skipping keys whose `GATEWAY_*` variable is set (the
/// environment outranks the file).
fn file_args(path: &std::path::Path) -> Result<Vec<OsString>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: shown.clone(),
            message: e.message().to_owned(),
        })?;
    let command = Config::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let Some(arg) = command.get_arguments().find(|a| a.get_id() == id.as_str()) else {
            return Err(ConfigError::UnknownKey { path: shown, key });
        };
        if matches!(id.as_str(), "config" | "print_config") {
            return Err(ConfigError::UnknownKey { path: shown, key });
        }
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let flag = format!("--{}", id.replace('_', "-"));
        let bad = |message: &str| ConfigError::BadValue {
            path: shown.clone(),
            key: key.clone(),
            message: message.to_owned(),
        };
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        match value {
            toml::Value::Boolean(b) if is_switch => {
                if b {
                    out.push(flag.into());
                }
            }
            _ if is_switch => return Err(bad("must be true or false")),
            toml::Value::String(s) => out.push(format!("{flag}={s}").into()),
            toml::Value::Integer(i) => out.push(format!("{flag}={i}").into()),
            toml::Value::Float(f) => out.push(format!("{flag}={f}").into()),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        _ => return Err(bad("must be a list of strings")),
                    }
                }
                if !parts.is_empty() {
                    out.push(format!("{flag}={}", parts.join(",")).into());
                }
            }
            _ => return Err(bad("has a type this setting does not take")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(file: &str, args: &[&str]) -> Result<Config, clap::Error> {
        let dir =
            std::env::temp_dir().join(format!("gw-config-{}-{}", std::process::id(), file.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["maven-gateway".into(), "--config".into(), path.into()];
        argv.extend(args.iter().map(OsString::from));
        Config::load(argv)
    }

    #[test]
    fn file_fills_what_flags_do_not_set() {
        let c = load_with("shards = 3\ndemo = true\ncors-origin = [\"http://a\", \"http://b\"]\nticker_throttle_ms = 250\n", &["--shards", "5"]).unwrap();
        assert_eq!(c.shards, 5, "the flag wins over the file");
        assert!(c.demo);
        assert_eq!(c.cors_origin, vec!["http://a", "http://b"]);
        assert_eq!(c.ticker_throttle_ms, 250);
        assert!(c.to_toml().contains("ticker_throttle_ms = 250"));
    }

    #[test]
    fn the_example_file_states_the_defaults() {
        let example = include_str!("../gateway.example.toml");
        let from_file = load_with(example, &[]).unwrap();
        let defaults = Config::try_parse_from(["maven-gateway"]).unwrap();
        assert_eq!(from_file.to_toml(), defaults.to_toml());
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "config" | "print_config" | "help" | "version") {
                continue;
            }
            let key = id.replace('_', "-");
            assert!(
                example.contains(&format!("{key} =")),
                "gateway.example.toml documents '{key}'"
            );
        }
    }

    #[test]
    fn errors_name_the_bad_key() {
        let e = load_with("shardz = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key 'shardz'"), "{e}");
        let e = load_with("shards = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--shards"), "{e}");
        let e = load_with("demo = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("'demo' must be true or false"), "{e}");
        let secret = load_with("jwt-secret = \"s\"\n", &[]).unwrap();
        assert!(secret.to_toml().contains("jwt_secret = \"(set)\""));
    }
}
