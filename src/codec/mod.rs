//! The wire codecs we own: WebSocket frames, Engine.IO packets and Socket.IO packets.
//! Pure functions over bytes: no I/O, no clock.

pub mod deflate;
pub mod engineio;
pub mod socketio;
pub mod websocket;
mod wire;

pub use wire::WireMessage;
