//! Which frame a WebSocket connection gets for a message: the compressed one when it
//! negotiated permessage-deflate and the message is long enough to gain, made once per
//! message (so once per broadcast, whatever the number of subscribers) and shared.

use super::ids::ConnId;
use super::Engine;
use crate::codec::WireMessage;
use bytes::Bytes;

impl Engine {
    /// Whether connection `c` negotiated permessage-deflate.
    pub(super) fn deflates(&self, c: ConnId) -> bool {
        self.conns.get(c.key()).is_some_and(|conn| conn.deflates())
    }

    /// Whether `msg` is long enough to go out compressed to a connection that negotiated
    /// permessage-deflate (never, with compression off).
    pub(super) fn compressible(&self, msg: &WireMessage) -> bool {
        self.settings
            .deflate_threshold
            .is_some_and(|t| msg.body_len() >= t)
    }

    /// The frame `msg` goes out as on a connection that did (`deflate`) or did not negotiate
    /// permessage-deflate.
    pub(super) fn frame_for(&mut self, deflate: bool, msg: &WireMessage) -> Bytes {
        match self.compressed(deflate, msg) {
            Some(frame) => frame.clone(),
            None => msg.ws_frame().clone(),
        }
    }

    /// The compressed frame of `msg` if a connection that did (`deflate`) or did not
    /// negotiate permessage-deflate gets one, counted as sent.
    pub(super) fn compressed<'m>(
        &mut self,
        deflate: bool,
        msg: &'m WireMessage,
    ) -> Option<&'m Bytes> {
        if !deflate || !self.compressible(msg) {
            return None;
        }
        let (frame, made) = msg.deflated_frame();
        self.counters.compressions += u64::from(made);
        // A message to one socket is compressed for its client alone: that client pays.
        if made {
            self.count_work(|w| w.compressions += 1);
        }
        self.counters.deflate_bytes_before += msg.len() as u64;
        self.counters.deflate_bytes_after += frame.len() as u64;
        Some(frame)
    }
}
