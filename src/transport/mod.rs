//! Engine.IO transports: request classification and the WebSocket upgrade handshake. The
//! long-polling and WebSocket drivers live in the shard, which owns the sockets.

pub mod handshake;

pub use handshake::{classify, EngineError, EngineRequest, TransportKind};
