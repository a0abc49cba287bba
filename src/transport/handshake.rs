//! Engine.IO v4 request classification, done the way the reference server's `verify` does it,
//! and the WebSocket accept key. Session lookup is the caller's (it owns the sessions).

use crate::http::{Method, Request};
use base64::Engine as _;
use sha1::{Digest, Sha1};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Polling,
    WebSocket,
}

/// What an Engine.IO request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineRequest {
    /// A new session over this transport.
    Open(TransportKind),
    /// A request on an existing session (poll, post, or WebSocket upgrade).
    Existing {
        sid: String,
        transport: TransportKind,
    },
}

/// The Engine.IO v4 error codes, with the HTTP answer each one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedProtocolVersion,
}

impl EngineError {
    pub fn code(self) -> u8 {
        match self {
            Self::UnknownTransport => 0,
            Self::UnknownSid => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest => 3,
            Self::Forbidden => 4,
            Self::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    pub fn status(self) -> u16 {
        if self == Self::Forbidden {
            403
        } else {
            400
        }
    }
}

pub fn classify(req: &Request) -> Result<EngineRequest, EngineError> {
    let transport = match req.query("transport") {
        Some("polling") => TransportKind::Polling,
        Some("websocket") => TransportKind::WebSocket,
        _ => return Err(EngineError::UnknownTransport),
    };
    if req
        .origin
        .as_deref()
        .is_some_and(|o| o.bytes().any(|b| b < 0x20 && b != b'\t'))
    {
        return Err(EngineError::BadRequest);
    }
    if let Some(sid) = req.query("sid") {
        if transport == TransportKind::WebSocket && !req.websocket_upgrade {
            return Err(EngineError::BadRequest);
        }
        return Ok(EngineRequest::Existing {
            sid: sid.to_owned(),
            transport,
        });
    }
    if req.method() != Method::Get {
        return Err(EngineError::BadHandshakeMethod);
    }
    if transport == TransportKind::WebSocket && !req.websocket_upgrade {
        return Err(EngineError::BadRequest);
    }
    if req.query("EIO") != Some("4") {
        return Err(EngineError::UnsupportedProtocolVersion);
    }
    Ok(EngineRequest::Open(transport))
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn req(target: &str) -> Request {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn rfc_6455_example_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn classifies_like_the_reference_server() {
        assert_eq!(
            classify(&req("/socket.io/?EIO=4&transport=polling")),
            Ok(EngineRequest::Open(TransportKind::Polling))
        );
        assert_eq!(
            classify(&req("/socket.io/?EIO=3&transport=polling")),
            Err(EngineError::UnsupportedProtocolVersion)
        );
        assert_eq!(
            classify(&req("/socket.io/?transport=polling")),
            Err(EngineError::UnsupportedProtocolVersion)
        );
        assert_eq!(
            classify(&req("/socket.io/?EIO=4&transport=carrier-pigeon")),
            Err(EngineError::UnknownTransport)
        );
        assert_eq!(
            classify(&req("/socket.io/?EIO=4&transport=websocket")),
            Err(EngineError::BadRequest)
        );
        assert!(matches!(
            classify(&req("/socket.io/?EIO=4&transport=polling&sid=abc")),
            Ok(EngineRequest::Existing { .. })
        ));
    }
}
