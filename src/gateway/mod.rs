//! The gateway's Socket.IO API on `/ws`: channels, subscriptions and the data envelope.

pub mod api;
pub mod channels;
pub mod envelope;

pub use api::{GatewaySettings, GatewaySocket};
