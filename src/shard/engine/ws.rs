//! WebSocket input: frames to messages to Engine.IO packets.

use super::conn::{HttpState, Role};
use super::ids::ConnId;
use super::session::Transport;
use super::Engine;
use crate::codec::engineio::Packet;
use crate::codec::websocket::{self, decode_client_frame, Message};
use crate::session::CloseReason;

impl Engine {
    pub(super) fn process_ws(&mut self, c: ConnId) {
        let max = self.settings.max_payload;
        loop {
            let Some(conn) = self.live_conn_mut(c) else {
                return;
            };
            if conn.closing {
                conn.inbuf.clear();
                return;
            }
            let Role::WebSocket(ws) = &mut conn.role else {
                return;
            };
            let (frame, used) = match decode_client_frame(&conn.inbuf, max) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.ws_fail(c, e.close_code(), &e.to_string()),
            };
            let _ = conn.inbuf.split_to(used);
            let pushed = ws.assembler.push(frame, max);
            let (session, probing) = (ws.session, ws.probing);
            // What a compressed message inflated to is work its sender caused, beyond the
            // bytes it sent: charged like input before anything below can end the connection,
            // so a bomb, refused or under the limit, is paid for.
            let inflated = ws.assembler.take_inflated();
            if inflated > 0 {
                self.count_work(|w| w.input_bytes += inflated);
            }
            let msg = match pushed {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => return self.ws_fail(c, e.close_code(), &e.to_string()),
            };
            let packet = match msg {
                Message::Text(t) => match Packet::decode_text(t) {
                    Ok(p) => p,
                    Err(e) => return self.ws_fail(c, 1002, &e.to_string()),
                },
                Message::Binary(b) => Packet::Binary(b),
                Message::Ping(p) => {
                    if let Some(conn) = self.live_conn_mut(c) {
                        conn.push(websocket::encode_frame(websocket::OpCode::Pong, &p));
                    }
                    self.queued(c);
                    continue;
                }
                Message::Pong(_) => continue,
                Message::Close(code) => {
                    if let Some(conn) = self.live_conn_mut(c) {
                        conn.push(websocket::encode_close(code.unwrap_or(1000), ""));
                    }
                    self.set_closing(c);
                    self.detach_ws(c);
                    return;
                }
            };
            if self.live_session(session).is_none() {
                return self.ws_fail(c, 1000, "session ended");
            }
            // A probing socket carries only the probe and the upgrade.
            if probing && !matches!(packet, Packet::Ping(_) | Packet::Upgrade | Packet::Noop) {
                return self.ws_fail(c, 1002, "unexpected packet during upgrade");
            }
            self.on_engine_packet(session, packet, Some((c, probing)));
        }
    }

    fn ws_fail(&mut self, c: ConnId, code: u16, reason: &str) {
        self.counters.protocol_errors += 1;
        if let Some(conn) = self.live_conn_mut(c) {
            conn.push(websocket::encode_close(code, reason));
            conn.inbuf.clear();
        }
        self.set_closing(c);
        self.detach_ws(c);
    }

    /// Ends the session riding on this WebSocket, keeping the socket open long enough to
    /// write what is queued (the close frame).
    fn detach_ws(&mut self, c: ConnId) {
        let Some(conn) = self.live_conn_mut(c) else {
            return;
        };
        let Role::WebSocket(ws) = &conn.role else {
            return;
        };
        let (s, probing) = (ws.session, ws.probing);
        conn.role = Role::Http(HttpState::Head);
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        if probing {
            if session.probe == Some(c) {
                session.probe = None;
            }
        } else if session.transport == Transport::WebSocket(c) {
            self.close_session(s, CloseReason::WebSocketClosed);
        }
    }
}
