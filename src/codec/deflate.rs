//! permessage-deflate (RFC 7692): reading a client's offer, compressing a message, and
//! inflating one under a hard bound on what it inflates to.
//!
//! Every message stands alone in both directions (`server_no_context_takeover`,
//! `client_no_context_takeover`): one compressed broadcast is then valid for every subscriber
//! that negotiated the extension, and a connection keeps no compressor or inflater between
//! messages, so an idle one costs what it cost without compression.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use thiserror::Error;

/// The extension as the server accepts it.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The four bytes a sync flush ends with, which RFC 7692 §7.2.1 has the sender drop and the
/// receiver put back.
const FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compression level. Level 1 is a quick pass that leaves a third more bytes on
/// repetitive JSON (80 KB of book levels: 23.4 KB against 13.4 KB at level 2); past 2 the
/// gain is small (12.8 KB at 6) for much more CPU (see `benches/codec.rs`).
const LEVEL: u32 = 2;

/// The answer to the first permessage-deflate offer in `offers` (the
/// `Sec-WebSocket-Extensions` values, comma separated) the server can accept, if any: the
/// extension as [`ACCEPTED`] says, repeating `server_max_window_bits=15` when the offer named it
/// (RFC 7692 §7.1.2.1 has the server confirm it).
///
/// An offer whose parameters are unknown, repeated or malformed is declined, as §5.1 asks, and
/// the next one is considered. One that limits the server's window below 15 bits is declined
/// too: a broadcast is compressed once for every subscriber, with one window.
pub fn negotiate(offers: &str) -> Option<&'static str> {
    offers.split(',').find_map(|offer| acceptable(offer.trim()))
}

fn acceptable(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return None;
    }
    let mut seen: [bool; 4] = [false; 4];
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquoted(v.trim())?)),
            None => (param, None),
        };
        let (slot, ok) = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => (0, value.is_none()),
            "client_no_context_takeover" => (1, value.is_none()),
            "server_max_window_bits" => (2, value.and_then(window_bits) == Some(15)),
            "client_max_window_bits" => (3, value.is_none_or(|v| window_bits(v).is_some())),
            _ => return None,
        };
        if !ok || std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(if seen[2] {
        ACCEPTED_WITH_WINDOW
    } else {
        ACCEPTED
    })
}

/// The answer when the offer named `server_max_window_bits=15`.
const ACCEPTED_WITH_WINDOW: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// A parameter value as a token or a quoted string with both quotes; `None` if malformed.
fn unquoted(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => (!v.contains('"')).then_some(v),
    }
}

/// A window size as RFC 7692 writes it: 8 to 15, in digits, without a leading zero.
fn window_bits(v: &str) -> Option<u8> {
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    digits
        .then(|| v.parse::<u8>().ok())
        .flatten()
        .filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// One compressor per thread, reset for every message: its tables are large, and every
    /// message starts from an empty window anyway.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// A complete server frame of `opcode` carrying `payload` compressed, RSV1 set (RFC 7692
/// §6): the header first, then the deflate stream without its sync-flush tail.
pub fn compressed_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let body = COMPRESSOR.with(|c| deflate(&mut c.borrow_mut(), payload));
    let mut frame = BytesMut::with_capacity(super::websocket::MAX_SERVER_HEADER + body.len());
    frame.put_u8(0x80 | 0x40 | (opcode & 0x0f));
    super::websocket::put_length(&mut frame, body.len());
    frame.extend_from_slice(&body);
    frame.freeze()
}

fn deflate(c: &mut Compress, input: &[u8]) -> Vec<u8> {
    c.reset();
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        // Compressing into a vector with room left cannot fail; a failure would leave what
        // was written, which the length check below still frames correctly.
        let _ = c.compress_vec(
            input.get(consumed..).unwrap_or_default(),
            &mut out,
            FlushCompress::Sync,
        );
        // The flush is complete once all input is in and the output did not fill up.
        if c.total_in() as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&FLUSH_TAIL) {
        out.truncate(out.len() - FLUSH_TAIL.len());
    }
    out
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InflateError {
    #[error("compressed message inflates past the limit of {max} bytes")]
    TooLarge { max: usize },
    #[error("compressed message is not a valid deflate stream")]
    Corrupt,
}

/// A compressed message's payload inflated, refused as soon as it would pass `max` bytes:
/// a bomb costs no more than `max` bytes of output and the time to write them.
///
/// The stream must end where the message does: after the sync-flush tail (or a final block
/// the sender chose to end it with) nothing but our own end marker may follow. A stream cut
/// short, or with bytes after its final block, is corrupt, not a shorter message.
pub fn inflate(payload: &[u8], max: usize) -> Result<Bytes, InflateError> {
    // The tail RFC 7692 has the receiver put back, then a final empty block (fixed Huffman,
    // end of block at once): a stream that ends where it should reaches its end in it.
    const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];
    let mut input = Vec::with_capacity(payload.len() + FLUSH_TAIL.len() + 2);
    input.extend_from_slice(payload);
    input.extend_from_slice(&FLUSH_TAIL);
    input.extend_from_slice(&FINAL_EMPTY_BLOCK);
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity((payload.len() * 4).clamp(64, max.max(64)));
    loop {
        if out.len() == out.capacity() {
            // Room for one byte past the limit, so that passing it is seen.
            let want = (out.capacity() * 2).min(max + 1).max(out.len() + 1);
            out.reserve_exact(want - out.len());
        }
        let consumed = d.total_in() as usize;
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(
                input.get(consumed..).unwrap_or_default(),
                &mut out,
                FlushDecompress::None,
            )
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > max {
            return Err(InflateError::TooLarge { max });
        }
        if status == Status::StreamEnd {
            // Ended inside the payload: what follows its final block is not deflate data.
            if (d.total_in() as usize) < payload.len() {
                return Err(InflateError::Corrupt);
            }
            return Ok(out.into());
        }
        let progressed = (d.total_in(), d.total_out()) != before;
        if !progressed && out.len() < out.capacity() {
            // All input taken and the stream not at its end: cut short.
            return Err(InflateError::Corrupt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_browsers_and_ws_offer() {
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate",
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; client_max_window_bits=\"12\"",
        ] {
            assert!(negotiate(offer).is_some(), "{offer}");
        }
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=+15",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=\"12",
        ] {
            assert!(negotiate(offer).is_none(), "{offer}");
        }
        assert_eq!(negotiate("permessage-deflate"), Some(ACCEPTED));
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits=15"),
            Some(ACCEPTED_WITH_WINDOW)
        );
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits=9, permessage-deflate"),
            Some(ACCEPTED)
        );
    }

    fn body_of(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0] & 0x70, 0x40, "RSV1 only");
        match frame[1] {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn compresses_and_inflates_back() {
        let small = br#"{"channel":"trades:BTCUSDT","data":{"price":"45000.10"}}"#.to_vec();
        let big: Vec<u8> = (0..5000)
            .flat_map(|i| format!("[\"{}.5\",\"{}\"],", 45000 + i % 300, i % 7).into_bytes())
            .collect();
        let noise: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for payload in [Vec::new(), small, big.clone(), noise] {
            let frame = compressed_frame(0x1, &payload);
            let body = body_of(&frame);
            assert_eq!(inflate(body, payload.len() + 1).unwrap(), payload);
        }
        assert!(body_of(&compressed_frame(0x1, &big)).len() < big.len() / 4);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let frame = compressed_frame(0x2, &zeros);
        let body = body_of(&frame);
        assert!(body.len() < 20_000);
        assert_eq!(
            inflate(body, 1 << 20),
            Err(InflateError::TooLarge { max: 1 << 20 })
        );
        assert_eq!(inflate(body, 10 << 20).map(|b| b.len()), Ok(10 << 20));
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        assert_eq!(inflate(&[0xff; 64], 1 << 20), Err(InflateError::Corrupt));
        let frame = compressed_frame(0x1, "a message long enough to matter".repeat(9).as_bytes());
        let body = body_of(&frame);
        // Cut short anywhere: corrupt, never a shorter message.
        for cut in 1..body.len() {
            assert!(inflate(&body[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        // A stream its sender ended with a final block is whole; bytes after it are not.
        let mut whole = Vec::with_capacity(64);
        let mut c = Compress::new(Compression::new(6), false);
        c.compress_vec(b"final block", &mut whole, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&whole, 100).as_deref(), Ok(&b"final block"[..]));
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"garbage after the end");
        assert_eq!(inflate(&trailing, 100), Err(InflateError::Corrupt));
    }
}
