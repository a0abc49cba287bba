//! maven-gateway: a Socket.IO v4 compatible real-time market-data gateway on a sharded
//! reactor. See README.md for the architecture.

/// The namespace the gateway API lives on (the seed's clients call `io('…/ws')`).
pub const GATEWAY_NAMESPACE: &str = "/ws";

pub mod admin;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod conformance;
pub mod demo_page;
pub mod gateway;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod log_rate;
pub mod market;
pub mod metrics;
pub mod notice;
pub mod recovery;
pub mod room;
pub mod server;
pub mod session;
pub mod shard;
pub mod transport;
