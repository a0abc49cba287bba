//! HTTP/1.1 request heads for the public listener, parsed with `httparse` under fixed limits.

use thiserror::Error;

/// Longest request head accepted; socket.io handshakes are a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Options,
    Other,
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: Option<Method>,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub origin: Option<String>,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub websocket_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// The server's answer to a permessage-deflate offer it can take, if one was made.
    pub ws_deflate: Option<&'static str>,
    pub authorization: Option<String>,
    pub forwarded_for: Option<String>,
    pub keep_alive: bool,
}

/// Why a request head was refused. Each ends the connection: after a framing error nothing
/// on it can be trusted to start where the next request does (RFC 9112 §6.3).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncoding,
    #[error("a {0} request may not have a body")]
    BodyNotAllowed(&'static str),
}

impl Request {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a request head from the front of `buf`: `Ok(None)` until the head is complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if consumed > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = Request {
        method: Some(match req.method.unwrap_or("") {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }),
        path: path.to_owned(),
        query: form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        keep_alive: req.version == Some(1),
        ..Request::default()
    };
    let mut upgrade_header = false;
    let mut connection_upgrade = false;
    for h in req.headers.iter() {
        let value = || String::from_utf8_lossy(h.value).into_owned();
        let name = h.name;
        if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value());
        } else if name.eq_ignore_ascii_case("content-length") {
            // 1*DIGIT only: no sign, no list; a repeat must agree (RFC 9112 §6.3).
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(|s| s.trim_matches([' ', '\t']))
                .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(HeadError::BadContentLength)?;
            if out.content_length.is_some_and(|prev| prev != v) {
                return Err(HeadError::BadContentLength);
            }
            out.content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = value().eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value();
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                } else if token.eq_ignore_ascii_case("close") {
                    out.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    out.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(value());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            // The header may come more than once: the first acceptable offer is taken.
            if out.ws_deflate.is_none() {
                out.ws_deflate = crate::codec::deflate::negotiate(&value());
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(value());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            out.forwarded_for = Some(value());
        }
    }
    out.websocket_upgrade = upgrade_header && connection_upgrade;
    if out.chunked {
        return Err(if out.content_length.is_some() {
            HeadError::ConflictingFraming
        } else {
            HeadError::TransferEncoding
        });
    }
    if out.method() != Method::Post && out.content_length.is_some_and(|n| n > 0) {
        let method = match out.method() {
            Method::Get => "GET",
            Method::Options => "OPTIONS",
            _ => "non-POST",
        };
        return Err(HeadError::BodyNotAllowed(method));
    }
    Ok(Some((out, consumed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engineio_handshake() {
        let raw = b"GET /socket.io/?EIO=4&transport=polling&t=N8hyd6w&token=a%20b HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\nrest";
        let (req, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 4);
        assert_eq!(req.path, "/socket.io/");
        assert_eq!(req.query("EIO"), Some("4"));
        assert_eq!(req.query("token"), Some("a b"));
        assert_eq!(req.origin.as_deref(), Some("http://a"));
        assert!(req.keep_alive);
    }

    #[test]
    fn detects_websocket_upgrade() {
        let raw = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (req, _) = parse_head(raw).unwrap().unwrap();
        assert!(req.websocket_upgrade);
        assert_eq!(req.ws_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn partial_and_bad_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_err());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(big.as_bytes()).unwrap_err(), HeadError::TooLarge);
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err(),
            HeadError::BadContentLength
        );
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let err = |raw: &str| parse_head(raw.as_bytes()).unwrap_err();
        for bad in ["+5", "-1", "5, 5", "0x10", "", "1 2"] {
            assert_eq!(
                err(&format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n")),
                HeadError::BadContentLength,
                "{bad:?}"
            );
        }
        assert_eq!(
            err("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            HeadError::BadContentLength
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::ConflictingFraming
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::TransferEncoding
        );
        assert_eq!(
            err("GET /health HTTP/1.1\r\nContent-Length: 20\r\n\r\n"),
            HeadError::BodyNotAllowed("GET")
        );
        let (req, _) = parse_head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.content_length, Some(0));
        let (req, _) = parse_head(b"POST / HTTP/1.1\r\nContent-Length:  12 \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.content_length, Some(12));
    }
}
