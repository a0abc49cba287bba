//! A client session above the transport: ids, heartbeats, why a session ends, and the
//! Socket.IO layer (namespaces, authentication, events). Pure: time and input are passed in.

pub mod close;
pub mod heartbeat;
pub mod sid;
pub mod sockets;

pub use close::{CloseReason, Violation};
