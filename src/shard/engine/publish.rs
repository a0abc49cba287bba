//! Fan-out: each broadcast queued to every local member of its room, under the slow-consumer
//! policy of its stream class.

use super::ids::SessionId;
use super::session::Transport;
use super::Engine;
use crate::codec::WireMessage;
use crate::gateway::envelope;
use crate::market::{Payload, StreamClass};
use crate::shard::handle::Broadcast;
use bytes::Bytes;

impl Engine {
    /// Queues each broadcast for every local member of its room. The frame is copied once
    /// into this shard's memory so the per-subscriber reference counting stays on this core.
    pub(super) fn publish(&mut self, batch: &[Broadcast]) {
        let mut over_limit: Vec<SessionId> = Vec::new();
        let (soft, hard) = (
            self.settings.outbound_soft_limit,
            self.settings.outbound_hard_limit,
        );
        for b in batch {
            self.counters.broadcasts_received += 1;
            if b.refresh.is_some() {
                self.refreshed(b);
                continue;
            }
            let book = matches!(b.class, StreamClass::BookDelta | StreamClass::BookSnapshot);
            if (b.retain || book) && !self.follows(&b.room) {
                continue;
            }
            if b.retain {
                self.last_values.insert(b.room.clone(), b.body.clone());
            }
            if let Some(view) = &b.book {
                self.books.insert(b.room.clone(), (view.clone(), None));
            }
            if let Some(values) = &b.tickers {
                self.ticker_all.update(values);
            }
            if b.offset.is_some() {
                self.last_offset = b.offset.max(self.last_offset);
            }
            if !b.deliver {
                continue;
            }
            let Some(room) = self.rooms.get(&b.room) else {
                continue;
            };
            // Several streams in one latest-only room are each their own: a key marks them
            // apart (tags with the high bit set are never a room's own).
            let tag = match b.latest_key {
                Some(k) => (room.id.rotate_left(32) ^ k) | 1 << 63,
                None => room.id,
            };
            let frame = Bytes::copy_from_slice(b.body.ws_frame());
            let mut polling: Option<Bytes> = None;
            // Compressed at most once for the whole gateway (the message keeps it), copied
            // here once like the plain frame, only if a member negotiated permessage-deflate.
            let compressible = self.compressible(&b.body);
            let mut deflated: Option<Bytes> = None;
            for &s in &room.members {
                let Some(session) = self
                    .sessions
                    .get_mut(s.key())
                    .filter(|x| x.closing.is_none())
                else {
                    continue;
                };
                if let (Some(skip), Some(offset)) = (session.skip_until, b.offset) {
                    if offset <= skip {
                        continue;
                    }
                }
                if let (StreamClass::Lossless, Some(appended)) = (b.class, b.appended_ms) {
                    if session.subscribed_after(&b.room, appended) {
                        continue;
                    }
                }
                let (queue, data) = match session.transport {
                    Transport::WebSocket(c) => {
                        let Some(conn) = self.conns.get_mut(c.key()).filter(|x| x.fate.is_none())
                        else {
                            continue;
                        };
                        if !conn.dirty {
                            conn.dirty = true;
                            self.dirty_conns.push_back(c);
                        }
                        let data = if compressible && conn.deflates() {
                            let counters = &mut self.counters;
                            let d = deflated.get_or_insert_with(|| {
                                let (f, made) = b.body.deflated_frame();
                                counters.compressions += u64::from(made);
                                Bytes::copy_from_slice(f)
                            });
                            counters.deflate_bytes_before += frame.len() as u64;
                            counters.deflate_bytes_after += d.len() as u64;
                            d.clone()
                        } else {
                            frame.clone()
                        };
                        (&mut conn.out, data)
                    }
                    Transport::Polling { .. } => {
                        if !session.dirty {
                            session.dirty = true;
                            self.dirty_sessions.push(s);
                        }
                        let p = polling.get_or_insert_with(|| b.body.polling()).clone();
                        (&mut session.queue, p)
                    }
                };
                let over_soft = queue.charge() > soft;
                let sent = match b.class {
                    StreamClass::Lossless => {
                        queue.push(data, tag, false);
                        true
                    }
                    StreamClass::Latest => {
                        if over_soft && queue.replace_latest(data.clone(), tag) {
                            false
                        } else {
                            queue.push(data, tag, true);
                            true
                        }
                    }
                    StreamClass::BookDelta => {
                        if session.owed.contains(&b.room) {
                            false
                        } else if over_soft {
                            session.owed.push(b.room.clone());
                            false
                        } else {
                            queue.push(data, tag, false);
                            true
                        }
                    }
                    StreamClass::BookSnapshot => {
                        session.owed.retain(|r| *r != b.room);
                        queue.push(data, tag, false);
                        true
                    }
                };
                if sent {
                    self.counters.messages_out += 1;
                } else {
                    self.counters.slow_consumer_drops += 1;
                }
                if queue.charge() > hard {
                    over_limit.push(s);
                }
            }
        }
        over_limit.sort_unstable();
        over_limit.dedup();
        for s in over_limit {
            self.drop_slow_consumer(s);
        }
    }

    /// Sends the order book snapshots a session is owed, once its queue has drained.
    pub(super) fn pay_owed_snapshots(&mut self, s: SessionId) {
        let now_ms = self.now.unix_ms;
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        if session.owed.is_empty() {
            return;
        }
        let owed = std::mem::take(&mut session.owed);
        for room in owed {
            if let Some((view, _)) = self.books.get(&room) {
                let data = Payload::Json(view.snapshot_json("resync").into());
                let m: WireMessage =
                    envelope::encode_payload("orderbook.update", &room, &data, now_ms);
                self.send_wire(s, &m);
            }
        }
    }
}
