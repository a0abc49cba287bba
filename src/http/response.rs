//! HTTP/1.1 responses written by the public listener.

use bytes::{BufMut, Bytes, BytesMut};

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response with a body. `extra` headers are written verbatim (`Name: value`).
pub fn build(
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    keep_alive: bool,
    body: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(160 + body.len());
    head(
        &mut out,
        status,
        content_type,
        extra,
        keep_alive,
        body.len(),
    );
    out.extend_from_slice(body);
    out.freeze()
}

/// Writes the head only, for bodies the caller appends itself.
pub fn head(
    out: &mut BytesMut,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    keep_alive: bool,
    len: usize,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.put_u8(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive".as_slice()
    } else {
        b"\r\nConnection: close".as_slice()
    });
    out.extend_from_slice(b"\r\nCache-Control: no-store");
    for (name, value) in extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

pub fn json(status: u16, extra: &[(&str, &str)], keep_alive: bool, body: &str) -> Bytes {
    build(
        status,
        "application/json",
        extra,
        keep_alive,
        body.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_status_line_and_length() {
        let r = build(200, "text/plain", &[("X-A", "1")], true, b"ok");
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.contains("X-A: 1\r\n"));
        assert!(s.ends_with("\r\n\r\nok"));
    }
}
