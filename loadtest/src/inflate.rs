//! permessage-deflate for load-test clients (`--deflate`). tungstenite has no extension
//! support, so this stream sits between the socket and it: it passes the HTTP answer through,
//! then turns every compressed server frame (RSV1) into the plain frame it stands for, so a
//! client that offered the extension reads what a browser reads after inflating. The server's
//! answer says whether it keeps its compression context between messages; the inflater does
//! the same.

use flate2::{Decompress, FlushDecompress, Status};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a browser offers.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

const FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest message inflated; a server sending more is broken.
const MAX_MESSAGE: usize = 64 << 20;

pub struct Inflating<S> {
    inner: S,
    /// Bytes read and not yet understood (a partial head or frame).
    raw: Vec<u8>,
    /// Bytes ready for tungstenite.
    out: Vec<u8>,
    out_at: usize,
    head_done: bool,
    /// Set once the server accepted the extension.
    inflater: Option<Decompress>,
    /// The server starts every message afresh (`server_no_context_takeover`).
    fresh_each: bool,
    /// A compressed message arriving in fragments: its opcode and payload so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl<S> Inflating<S> {
    pub fn new(inner: S) -> Inflating<S> {
        Inflating {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            head_done: false,
            inflater: None,
            fresh_each: false,
            partial: None,
        }
    }

    /// Moves whatever of `raw` is complete into `out`, inflated.
    fn process(&mut self) -> io::Result<()> {
        if !self.head_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            let head: Vec<u8> = self.raw.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("sec-websocket-extensions:"))
            {
                if line.contains("permessage-deflate") {
                    self.inflater = Some(Decompress::new(false));
                    self.fresh_each = line.contains("server_no_context_takeover");
                }
            }
            self.out.extend_from_slice(&head);
            self.head_done = true;
        }
        loop {
            let Some((header, len)) = frame_header(&self.raw) else {
                return Ok(());
            };
            if self.raw.len() < header + len {
                return Ok(());
            }
            let b0 = self.raw[0];
            let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
            let compressed_part = self.partial.is_some() && opcode == 0;
            if self.inflater.is_none() || !(rsv1 || compressed_part) {
                self.out.extend(self.raw.drain(..header + len));
                continue;
            }
            let payload: Vec<u8> = self.raw.drain(..header + len).skip(header).collect();
            let (op, mut whole) = self.partial.take().unwrap_or((opcode, Vec::new()));
            whole.extend_from_slice(&payload);
            if !fin {
                self.partial = Some((op, whole));
                continue;
            }
            let plain = self.inflate(&whole)?;
            self.out.push(0x80 | op);
            match plain.len() {
                n if n < 126 => self.out.push(n as u8),
                n if n <= 0xffff => {
                    self.out.push(126);
                    self.out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    self.out.push(127);
                    self.out.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            self.out.extend_from_slice(&plain);
        }
    }

    fn inflate(&mut self, payload: &[u8]) -> io::Result<Vec<u8>> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let fresh_each = self.fresh_each;
        let d = self.inflater.as_mut().ok_or_else(|| bad("no inflater"))?;
        if fresh_each {
            d.reset(false);
        }
        let mut input = payload.to_vec();
        input.extend_from_slice(&FLUSH_TAIL);
        let start = d.total_in();
        let mut out = Vec::with_capacity(payload.len() * 4 + 64);
        loop {
            let used = (d.total_in() - start) as usize;
            if out.len() == out.capacity() {
                if out.len() > MAX_MESSAGE {
                    return Err(bad("inflated message too large"));
                }
                out.reserve(out.capacity());
            }
            let status = d
                .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                .map_err(|e| bad(&e.to_string()))?;
            let used = (d.total_in() - start) as usize;
            if status == Status::StreamEnd || (used == input.len() && out.len() < out.capacity()) {
                return Ok(out);
            }
        }
    }
}

/// The length of a server frame's header and of its payload, once both are readable.
fn frame_header(b: &[u8]) -> Option<(usize, usize)> {
    let len7 = *b.get(1)? & 0x7f;
    match len7 {
        126 => Some((4, u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize)),
        127 => {
            let bytes: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            Some((10, u64::from_be_bytes(bytes) as usize))
        }
        n => Some((2, n as usize)),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Nothing was negotiated: past the head, straight through.
            if this.head_done && this.inflater.is_none() && this.out_at == this.out.len() {
                if !this.raw.is_empty() {
                    this.out.append(&mut this.raw);
                    continue;
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.out_at < this.out.len() {
                let n = (this.out.len() - this.out_at).min(buf.remaining());
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // End of stream: what was left unparsed goes as it is.
                    this.out.append(&mut this.raw);
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(rb.filled());
                    this.process()?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
