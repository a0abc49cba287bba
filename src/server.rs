//! Wiring: starts the reactor, the internal listener and the demo feed, and stops them.

use crate::admin::{self, InternalState};
use crate::auth::{Authenticator, KeySource};
use crate::clock::unix_ms;
use crate::cluster::emitter;
use crate::cluster::{sessions, Cluster, ClusterSettings};
use crate::config::Config;
use crate::gateway::GatewaySettings;
use crate::http::forwarded::ProxyTrust;
use crate::ingest::demo::DemoMarket;
use crate::ingest::Ingest;
use crate::limits::{descriptors, LimitSettings};
use crate::market::MarketSettings;
use crate::metrics::Metrics;
use crate::recovery::{Recovery, RecoverySettings};
use crate::room::Symbols;
use crate::session::sockets::App;
use crate::shard::{Reactor, ServerSettings, ShardMsg, Shared};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the internal runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub struct Gateway {
    reactor: Reactor,
    runtime: tokio::runtime::Runtime,
    stop_demo: Arc<AtomicBool>,
    demo: Option<std::thread::JoinHandle<()>>,
    timers: std::thread::JoinHandle<()>,
    shared: Arc<Shared>,
    pub public_addr: std::net::SocketAddr,
    pub internal_addr: std::net::SocketAddr,
    pub ingest: Arc<Ingest>,
}

pub fn settings_from(config: &Config) -> Result<ServerSettings, StartError> {
    if !config.internal_listen.ip().is_loopback() && config.ingest_token.is_none() {
        // Anyone who reaches it could publish, including private events to any user.
        return Err(StartError::Config(format!(
            "--internal-listen {} is not a loopback address: set --ingest-token too",
            config.internal_listen
        )));
    }
    if config.outbound_soft_limit > config.outbound_hard_limit {
        return Err(StartError::Config(
            "outbound soft limit must not exceed the hard limit".into(),
        ));
    }
    if config.orderbook_depth == 0 {
        return Err(StartError::Config(
            "orderbook depth must be at least 1".into(),
        ));
    }
    if config.max_messages_per_sec <= 0.0
        || config.handshake_rate_per_ip <= 0.0
        || config.work_rate_per_ip <= 0.0
    {
        return Err(StartError::Config(
            "message, handshake and work rates must be positive".into(),
        ));
    }
    if config.ping_interval_ms == 0 || config.ping_timeout_ms == 0 {
        return Err(StartError::Config(
            "ping interval and timeout must be positive".into(),
        ));
    }
    let mut path = config.path.clone();
    if !path.starts_with('/') {
        return Err(StartError::Config(format!(
            "path '{path}' must start with '/'"
        )));
    }
    if !path.ends_with('/') {
        path.push('/');
    }
    Ok(ServerSettings {
        engine_path: path,
        echo_path: None,
        ping_interval: Duration::from_millis(config.ping_interval_ms),
        ping_timeout: Duration::from_millis(config.ping_timeout_ms),
        connect_timeout: Duration::from_millis(config.connect_timeout_ms),
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        max_payload: config.max_payload,
        deflate_threshold: (config.compression == crate::config::Switch::On)
            .then_some(config.compression_threshold),
        trust_proxy: proxy_trust(config)?,
        close_linger: Duration::from_millis(config.close_linger_ms),
        outbound_total_limit: config.outbound_total_limit,
        work_rate_per_ip: config.work_rate_per_ip,
        demo_page: config.demo,
        outbound_soft_limit: config.outbound_soft_limit,
        cors_origins: config.cors_origin.clone(),
        outbound_hard_limit: config.outbound_hard_limit,
        app: App::Gateway(Arc::new(GatewaySettings {
            symbols: Arc::new(Symbols::new(
                &config.symbols,
                config.subscribe_unknown_symbols,
            )),
            max_subscriptions: config.max_subscriptions,
            auth: authenticator(config)?.map(Arc::new),
            token_notice_ms: config.token_expiry_notice_secs * 1000,
            message_rate: config.max_messages_per_sec,
            message_burst: config.max_messages_per_sec * 2.0,
            recovery: config.recovery_window_ms > 0,
            views: crate::gateway::channels::ViewDefaults {
                book_depth: u16::try_from(config.orderbook_depth).unwrap_or(u16::MAX),
                book_speed_ms: u32::try_from(config.orderbook_conflation_ms).unwrap_or(u32::MAX),
                throttle_ms: config.ticker_throttle_ms,
            },
        })),
    })
}

/// The TCP connection cap: as configured, or what the descriptor limit allows. A configured
/// cap above that limit is kept, with a warning: connections past it would fail to accept.
fn max_tcp_connections(config: &Config) -> usize {
    let limit = match descriptors::raise_limit() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the descriptor limit");
            None
        }
    };
    let allowed = limit.map_or(usize::MAX, descriptors::tcp_cap);
    let cap = match config.max_tcp_connections {
        0 => allowed,
        n => {
            if n > allowed {
                tracing::warn!(
                    max_tcp_connections = n,
                    descriptor_limit = limit,
                    "--max-tcp-connections is above what the descriptor limit allows"
                );
            }
            n
        }
    };
    if config.max_connections > cap {
        tracing::warn!(
            max_connections = config.max_connections,
            max_tcp_connections = cap,
            "--max-connections is above the TCP connection cap; raise the descriptor limit"
        );
    }
    cap
}

fn proxy_trust(config: &Config) -> Result<Option<ProxyTrust>, StartError> {
    if !config.trust_proxy {
        return Ok(None);
    }
    let proxies = config
        .trusted_proxies
        .iter()
        .map(|p| {
            let p = p.trim();
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    StartError::Config(format!("--trusted-proxies: '{p}' is not a CIDR or address"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.proxy_hops == 0 {
        return Err(StartError::Config("--proxy-hops must be at least 1".into()));
    }
    Ok(Some(ProxyTrust {
        proxies,
        hops: config.proxy_hops,
    }))
}

fn authenticator(config: &Config) -> Result<Option<Authenticator>, StartError> {
    let source = match (&config.jwt_secret, &config.jwt_public_key) {
        (Some(secret), _) => KeySource::Secret(secret.clone()),
        (None, Some(path)) => KeySource::PublicKeyPem(std::fs::read(path).map_err(|e| {
            StartError::Config(format!(
                "cannot read --jwt-public-key {}: {e}",
                path.display()
            ))
        })?),
        (None, None) => return Ok(None),
    };
    Authenticator::new(
        source,
        config.jwt_issuer.as_deref(),
        config.jwt_audience.as_deref(),
        config.jwt_leeway_secs,
        &config.jwt_user_claim,
    )
    .map(Some)
    .map_err(|e| StartError::Config(e.to_string()))
}

impl Gateway {
    pub fn start(config: &Config) -> Result<Gateway, StartError> {
        let settings = Arc::new(settings_from(config)?);
        let mut shared = Shared::new(LimitSettings {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            max_connections_per_user: config.max_connections_per_user,
            handshakes_per_sec_per_ip: config.handshake_rate_per_ip,
            handshake_burst_per_ip: config.handshake_rate_per_ip * 2.0,
            max_tcp_per_ip: match config.max_tcp_connections_per_ip {
                0 => config
                    .max_connections_per_ip
                    .saturating_mul(2)
                    .saturating_add(8),
                n => n,
            },
            max_input_per_ip: config.max_input_per_ip,
            max_input: config.max_input,
            max_rooms: config.max_rooms,
            max_views: config.max_views,
            max_views_per_ip: config.max_views_per_ip,
            max_tcp: max_tcp_connections(config),
        });
        let (store_tx, store_rx) = tokio::sync::mpsc::unbounded_channel();
        let recovery_settings = RecoverySettings {
            window_ms: config.recovery_window_ms,
            max_events: config.recovery_max_events,
        };
        shared.recovery = (config.recovery_window_ms > 0).then(|| {
            Arc::new(match config.redis {
                None => Recovery::standalone(recovery_settings, unix_ms()),
                Some(_) => Recovery::cluster(recovery_settings, store_tx),
            })
        });
        let shared = Arc::new(shared);
        let reactor = Reactor::start(
            config.shard_count(),
            config.listen,
            settings.clone(),
            shared.clone(),
        )
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let ingest = Ingest::new(
            reactor.fanout(),
            MarketSettings {
                ticker_throttle_ms: config.ticker_throttle_ms,
                orderbook_depth: config.orderbook_depth,
                orderbook_conflation_ms: config.orderbook_conflation_ms,
            },
            shared.recovery.clone(),
            match &settings.app {
                App::Gateway(g) => g.symbols.clone(),
                App::Conformance => Arc::new(Symbols::any()),
            },
            shared.demand.clone(),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.ingest_thread_count())
            .thread_name("internal")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let listener = runtime
            .block_on(admin::bind(config.internal_listen))
            .map_err(|source| StartError::Listen {
                addr: config.internal_listen,
                source,
            })?;
        let internal_addr = listener.local_addr().map_err(StartError::Runtime)?;
        let stop_demo = Arc::new(AtomicBool::new(false));
        let emitter_counters = Arc::new(emitter::EmitterCounters::default());
        let cluster = match &config.redis {
            None => None,
            Some(url) => {
                shared.upstream_ok.store(false, Ordering::Relaxed);
                let c = Cluster::new(
                    ClusterSettings {
                        url: url.clone(),
                        stream_key: config.redis_stream_key.clone(),
                        max_len: config.redis_stream_maxlen,
                    },
                    shared.upstream_ok.clone(),
                )
                .map_err(|e| StartError::Config(format!("--redis: {e}")))?;
                shared.catch_up.await_stream();
                runtime.spawn(c.clone().follow(
                    ingest.clone(),
                    shared.catch_up.clone(),
                    stop_demo.clone(),
                ));
                if !config.redis_emitter_key.is_empty() {
                    let fanout = reactor.fanout();
                    runtime.spawn(emitter::follow(
                        c.client(),
                        config.redis_emitter_key.clone(),
                        move |emit| fanout.emit(Arc::new(emit)),
                        emitter_counters.clone(),
                        stop_demo.clone(),
                    ));
                }
                if shared.recovery.is_some() {
                    let fanout = reactor.fanout();
                    runtime.spawn(sessions::serve(
                        c.client(),
                        c.session_prefix(),
                        store_rx,
                        move |ticket, record| {
                            if let Some(shard) = fanout.shard(ticket.shard) {
                                shard.send(ShardMsg::Restored { ticket, record });
                            }
                        },
                    ));
                }
                Some(c)
            }
        };
        let state = Arc::new(InternalState {
            ingest: ingest.clone(),
            token: config.ingest_token.clone(),
            stats: reactor.stats.clone(),
            shared: shared.clone(),
            metrics: Metrics::new(
                reactor.stats.clone(),
                shared.clone(),
                ingest.clone(),
                emitter_counters,
            ),
            cluster: cluster.clone(),
        });
        runtime.spawn(admin::serve(listener, state));
        let timers = {
            let ingest = ingest.clone();
            let stop = stop_demo.clone();
            std::thread::Builder::new()
                .name("market-timers".into())
                .spawn(move || ingest.run_timers(&stop))
                .map_err(StartError::Runtime)?
        };
        let demo = config.demo.then(|| {
            let ingest = ingest.clone();
            let stop = stop_demo.clone();
            let sink = match &cluster {
                None => DemoSink::Local,
                Some(c) => DemoSink::Cluster(c.clone(), runtime.handle().clone()),
            };
            std::thread::Builder::new()
                .name("demo-feed".into())
                .spawn(move || run_demo(&ingest, &sink, &stop))
                .expect("spawning the demo thread")
        });
        shared.ready.store(true, Ordering::Relaxed);
        Ok(Gateway {
            public_addr: reactor.local_addr,
            internal_addr,
            reactor,
            runtime,
            stop_demo,
            demo,
            timers,
            shared,
            ingest,
        })
    }

    /// Stops at once: every session gets an Engine.IO close.
    pub fn stop(self) {
        self.finish(|r| r.shutdown());
    }

    /// Graceful drain: `/ready` turns 503 and new sessions are refused, every client is sent
    /// `server.shutdown` `{ reconnectAfterMs }` and what is queued for it, then everything is
    /// closed within `timeout`. Ingest keeps running meanwhile, so what it accepted still
    /// reaches the clients that are connected.
    pub fn drain(self, reconnect_after_ms: u64, timeout: Duration) {
        self.shared.ready.store(false, Ordering::Relaxed);
        self.shared.draining.store(true, Ordering::Relaxed);
        self.finish(|r| r.drain(reconnect_after_ms, timeout));
    }

    fn finish(self, close: impl FnOnce(Reactor)) {
        close(self.reactor);
        self.stop_demo.store(true, Ordering::Relaxed);
        if let Some(d) = self.demo {
            let _ = d.join();
        }
        let _ = self.timers.join();
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Where the demo feed's events go: straight in, or through the cluster stream like any
/// backend's (so every instance shows the same market).
enum DemoSink {
    Local,
    Cluster(Arc<Cluster>, tokio::runtime::Handle),
}

fn run_demo(ingest: &Ingest, sink: &DemoSink, stop: &AtomicBool) {
    let mut market = DemoMarket::new(unix_ms());
    while !stop.load(Ordering::Relaxed) {
        let events = market.tick(unix_ms());
        match sink {
            DemoSink::Local => {
                if let Err(e) = ingest.submit(events) {
                    tracing::error!(error = %e, "demo feed produced an invalid event");
                }
            }
            DemoSink::Cluster(cluster, rt) => match ingest.check(events) {
                Ok(checked) => {
                    if let Err(e) = rt.block_on(cluster.append(&checked)) {
                        tracing::warn!(error = %e, "demo feed could not append to the stream");
                    }
                }
                Err(e) => tracing::error!(error = %e, "demo feed produced an invalid event"),
            },
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
