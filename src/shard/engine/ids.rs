//! Typed handles for what an engine owns. A connection is one TCP socket; a session is one
//! Engine.IO session, which may use several connections over its life (polls, the upgrade
//! probe, then the WebSocket). Keeping the two apart in the types is what stops a timer or a
//! room member from naming the wrong table.

/// One TCP connection of a shard. Its index is also the driver's poll token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(usize);

impl ConnId {
    /// The id a driver's readiness token names; an id the engine does not hold is ignored.
    pub fn from_token(token: usize) -> ConnId {
        ConnId(token)
    }

    pub fn token(self) -> usize {
        self.0
    }

    pub(super) fn key(self) -> usize {
        self.0
    }
}

/// One Engine.IO session of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(usize);

impl SessionId {
    pub(super) fn new(key: usize) -> SessionId {
        SessionId(key)
    }

    pub(super) fn key(self) -> usize {
        self.0
    }
}

impl ConnId {
    pub(super) fn new(key: usize) -> ConnId {
        ConnId(key)
    }
}
