//! Per-session protocol state that is independent of sockets: ids and heartbeats.

pub mod heartbeat;
pub mod sid;
