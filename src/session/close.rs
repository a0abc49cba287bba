//! Why a session ends, and everything that follows from it: whether its state is kept for
//! connection state recovery, whether the client is told (an Engine.IO close on its
//! transport), the WebSocket close code, and the name logs use. Behaviour hangs on these
//! variants, never on strings, so a misspelt reason cannot silently turn recovery off.

use std::fmt;

/// A client broke the Engine.IO or Socket.IO protocol, or a limit that ends its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// A packet that does not parse.
    ParseError,
    /// A text packet arrived while binary attachments were still expected.
    TextDuringAttachments,
    /// A CONNECT for a namespace already connected or connecting.
    SecondConnect,
    /// A packet for a namespace the session has not connected.
    NamespaceNotConnected,
    /// Client events far over the rate limit for too long.
    EventFlood,
    /// An Engine.IO upgrade packet outside an upgrade probe.
    UnexpectedUpgrade,
    /// An Engine.IO open packet sent by a client.
    OpenFromClient,
    /// A long-polling body that is not a valid Engine.IO payload.
    BadPollingPayload,
    /// An Engine.IO ping from a client outside an upgrade probe (in protocol v4 only the
    /// server pings).
    PingFromClient,
    /// A namespace name longer than any the gateway serves.
    NamespaceTooLong,
    /// CONNECTs refused again and again.
    ConnectFlood,
    /// Binary attachments of one packet over their byte bound.
    AttachmentsTooLarge,
    /// A packet other than an event over the size the gateway's API takes.
    PacketTooLarge,
}

impl Violation {
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::ParseError => "parse error",
            Violation::TextDuringAttachments => "text packet while binary attachments were pending",
            Violation::SecondConnect => "second CONNECT for a namespace",
            Violation::NamespaceNotConnected => "packet for a namespace that is not connected",
            Violation::EventFlood => "sustained flood of client events",
            Violation::UnexpectedUpgrade => "unexpected upgrade packet",
            Violation::OpenFromClient => "open packet from a client",
            Violation::BadPollingPayload => "bad polling payload",
            Violation::PingFromClient => "invalid heartbeat direction",
            Violation::NamespaceTooLong => "namespace name too long",
            Violation::ConnectFlood => "too many refused CONNECTs",
            Violation::AttachmentsTooLarge => "binary attachments too large",
            Violation::PacketTooLarge => "packet too large",
        }
    }
}

/// Why an Engine.IO session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The TCP connection carrying the session went away.
    TransportClosed,
    /// The session's WebSocket closed (close frame, framing error, or end of stream).
    WebSocketClosed,
    /// A parked long-poll's connection closed before it was answered.
    PollCutShort,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The client sent an Engine.IO close packet.
    ClientClosed,
    /// The gateway is stopping or draining.
    ServerShutdown,
    /// No namespace was joined within the connect timeout.
    ConnectTimeout,
    /// The outbound backlog passed the hard limit.
    SlowConsumer,
    /// A polling body over the payload limit.
    PayloadTooLarge,
    /// A second long-poll while one was parked.
    OverlappingPolls,
    /// A second polling POST while one's body was still arriving.
    OverlappingPosts,
    /// The shard could not keep up with the publishes of a lossless stream the client
    /// follows: it comes back and is replayed what it missed.
    Overloaded,
    /// The instance fell behind the cluster stream and skipped events of a lossless stream
    /// the client follows: it comes back and is replayed what it missed.
    StreamGap,
    Violation(Violation),
}

impl CloseReason {
    /// Whether the client is expected back (its connection went, not the client), so its
    /// sockets' state is kept for connection state recovery.
    pub fn recoverable(self) -> bool {
        matches!(
            self,
            CloseReason::TransportClosed
                | CloseReason::WebSocketClosed
                | CloseReason::PollCutShort
                | CloseReason::PingTimeout
                | CloseReason::ClientClosed
                | CloseReason::ServerShutdown
                | CloseReason::Overloaded
                | CloseReason::StreamGap
        )
    }

    /// Whether the client is sent an Engine.IO close: when the server ends a session the
    /// client still listens to. A transport that is gone, or a client that closed or went
    /// silent, has nobody left to tell.
    pub fn notifies(self) -> bool {
        match self {
            CloseReason::ServerShutdown
            | CloseReason::ConnectTimeout
            | CloseReason::SlowConsumer
            | CloseReason::PayloadTooLarge
            | CloseReason::Overloaded
            | CloseReason::StreamGap
            | CloseReason::Violation(_) => true,
            CloseReason::TransportClosed
            | CloseReason::WebSocketClosed
            | CloseReason::PollCutShort
            | CloseReason::PingTimeout
            | CloseReason::ClientClosed
            | CloseReason::OverlappingPolls
            | CloseReason::OverlappingPosts => false,
        }
    }

    /// The WebSocket close code sent after the Engine.IO close (RFC 6455 §7.4.1). The
    /// Engine.IO close packet is what clients act on; the frame says the close is orderly.
    pub fn ws_close_code(self) -> u16 {
        1000
    }

    /// Whether the session broke the protocol (counted as a protocol error).
    pub fn is_violation(self) -> bool {
        matches!(
            self,
            CloseReason::Violation(_) | CloseReason::PayloadTooLarge
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClosed => "transport closed",
            CloseReason::WebSocketClosed => "websocket closed",
            CloseReason::PollCutShort => "poll connection closed prematurely",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ClientClosed => "client closed",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::ConnectTimeout => "connect timeout",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::PayloadTooLarge => "payload too large",
            CloseReason::OverlappingPolls => "overlapping polls",
            CloseReason::OverlappingPosts => "overlapping posts",
            CloseReason::Overloaded => "shard overloaded",
            CloseReason::StreamGap => "behind the event stream",
            CloseReason::Violation(v) => v.as_str(),
        }
    }
}

impl From<Violation> for CloseReason {
    fn from(v: Violation) -> CloseReason {
        CloseReason::Violation(v)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lost_connections_are_recoverable() {
        let kept = [
            CloseReason::TransportClosed,
            CloseReason::WebSocketClosed,
            CloseReason::PollCutShort,
            CloseReason::PingTimeout,
            CloseReason::ClientClosed,
            CloseReason::ServerShutdown,
        ];
        for r in kept {
            assert!(r.recoverable(), "{r}");
        }
        for r in [
            CloseReason::ConnectTimeout,
            CloseReason::SlowConsumer,
            CloseReason::PayloadTooLarge,
            CloseReason::OverlappingPolls,
            CloseReason::Violation(Violation::EventFlood),
        ] {
            assert!(!r.recoverable(), "{r}");
        }
    }

    #[test]
    fn the_client_is_told_only_when_it_is_still_listening() {
        assert!(CloseReason::SlowConsumer.notifies());
        assert!(CloseReason::Violation(Violation::ParseError).notifies());
        assert!(!CloseReason::PingTimeout.notifies());
        assert!(!CloseReason::TransportClosed.notifies());
    }
}
