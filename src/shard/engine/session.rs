//! One Engine.IO session's state on a shard.

use super::ids::ConnId;
use super::ids::SessionId;
use super::outbound::Outbound;
use crate::recovery::Offset;
use crate::session::heartbeat::Heartbeat;
use crate::session::sockets::SocketLayer;
use crate::session::CloseReason;
use indexmap::IndexMap;
use slab::Slab;
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// Long-polling, with the GET parked until there is something to send, if any.
    Polling {
        get: Option<ConnId>,
    },
    WebSocket(ConnId),
}

#[derive(Debug)]
pub(super) struct Session {
    pub sid: Box<str>,
    pub generation: u64,
    pub transport: Transport,
    /// The WebSocket probing an upgrade of this polling session.
    pub probe: Option<ConnId>,
    /// The connection whose POST body for this session is being received.
    pub post: Option<ConnId>,
    /// Packets waiting for a poll (polling transport only).
    pub queue: Outbound,
    /// Order book rooms whose deltas this client missed: it gets a snapshot once caught up.
    pub owed: SmallVec<[Arc<str>; 1]>,
    pub dirty: bool,
    pub heartbeat: Heartbeat,
    /// A bare Engine.IO session that echoes messages (conformance endpoint).
    pub echo: bool,
    pub sockets: SocketLayer,
    /// The client's address, as counted by the connection caps.
    pub ip: IpAddr,
    /// The token the handshake carried (`token` query, else `Authorization: Bearer`).
    pub handshake_token: Option<Box<str>>,
    /// The socket-layer deadline (unix ms) a timer is armed for.
    pub socket_timer: Option<u64>,
    /// With recovery on: each room and the offset this shard had delivered when it was joined.
    /// A map, so a packet joining or leaving a thousand rooms costs a thousand steps.
    pub joined: IndexMap<Arc<str>, Offset>,
    /// Rooms joined while the instance was behind the cluster stream, and when (unix ms):
    /// events the stream took before then, delivered late, are history to this session.
    pub late_joins: Vec<(Arc<str>, u64)>,
    /// A recovered client already has lossless events up to here (see `recovery::Restored`).
    pub skip_until: Option<Offset>,
    /// Set when the session is closed; it is removed as the engine's call ends.
    pub closing: Option<CloseReason>,
}

/// The session `s` of `sessions`, unless it is gone or closing. A free function so that a
/// caller may hold it beside borrows of the engine's other fields.
pub(super) fn live_mut(sessions: &mut Slab<Session>, s: SessionId) -> Option<&mut Session> {
    sessions.get_mut(s.key()).filter(|x| x.closing.is_none())
}

impl Session {
    /// Whether a lossless event the stream took at `appended_ms`, delivered late in `room`,
    /// predates this session's subscription to it.
    pub fn subscribed_after(&self, room: &str, appended_ms: u64) -> bool {
        self.late_joins
            .iter()
            .any(|(r, at)| &**r == room && *at > appended_ms)
    }
}
