//! The shard's side of connection state recovery: looking up a presented session, restoring
//! it (rooms, replay, socket id), and leaving records behind for sockets that may come back.

use super::{unix_ms, Shard};
use crate::gateway::envelope::GATEWAY_NAMESPACE;
use crate::recovery::{self, Lookup, Offset, RestoreTicket, SessionRecord};
use crate::sockets::Output;
use std::sync::atomic::Ordering::Relaxed;

/// Session ends after which the client is expected back: the connection went, not the client.
pub(super) fn recoverable(reason: &str) -> bool {
    matches!(
        reason,
        "transport closed"
            | "websocket closed"
            | "ping timeout"
            | "client closed"
            | "poll connection closed prematurely"
            | "server shutting down"
    )
}

impl Shard {
    /// A `/ws` CONNECT presented `pid`: finish it now if the record is at hand, else when
    /// Redis answers.
    pub(super) fn start_restore(&mut self, s: usize, pid: Box<str>, offset: Option<Offset>) {
        let Some(rec) = self.shared.recovery.clone() else {
            return self.finish_restore(s, offset, None);
        };
        let session = &self.sessions[s];
        let ticket = RestoreTicket {
            shard: self.id,
            sid: session.sid.clone(),
            generation: session.generation,
            namespace: GATEWAY_NAMESPACE.into(),
            pid,
            offset,
        };
        if let Lookup::Ready(record) = rec.store.take(ticket, unix_ms()) {
            self.finish_restore(s, offset, record);
        }
    }

    /// Redis answered a lookup; the session may have gone meanwhile.
    pub(super) fn on_restored(&mut self, ticket: RestoreTicket, record: Option<SessionRecord>) {
        let Some(&s) = self.sids.get(&ticket.sid) else {
            return;
        };
        if self.sessions[s].generation == ticket.generation
            && self.sessions[s].sockets.pending_user().is_some()
        {
            self.finish_restore(s, ticket.offset, record);
        }
    }

    fn finish_restore(&mut self, s: usize, offset: Option<Offset>, record: Option<SessionRecord>) {
        let Some(user) = self.sessions[s].sockets.pending_user() else {
            return;
        };
        let user = user.map(str::to_owned);
        let plan = match (&self.shared.recovery, record) {
            (Some(rec), Some(record)) => {
                let plan = recovery::plan(
                    record,
                    user.as_deref(),
                    offset,
                    &rec.log(),
                    self.last_offset,
                )
                // A gap bigger than the outbound hard limit would get the client dropped as a
                // slow consumer mid-replay: a new session instead, never a partial replay.
                .filter(|p| {
                    p.replay.iter().map(|m| m.len()).sum::<usize>()
                        <= self.settings.outbound_hard_limit
                });
                let counter = if plan.is_some() {
                    &rec.counters.recovered
                } else {
                    &rec.counters.refused
                };
                counter.fetch_add(1, Relaxed);
                plan
            }
            (Some(rec), None) => {
                rec.counters.refused.fetch_add(1, Relaxed);
                None
            }
            _ => None,
        };
        if let Some(p) = &plan {
            let session = &mut self.sessions[s];
            session.joined = p.rooms.clone();
            session.skip_until = p.skip_until;
        }
        let app = self.settings.app.clone();
        let mut out: Vec<Output> = Vec::new();
        self.sessions[s]
            .sockets
            .finish_connect(&app, unix_ms(), plan.as_ref(), &mut out);
        self.apply_outputs(s, out);
        if let (Some(p), Some(rec)) = (plan, &self.shared.recovery) {
            rec.counters
                .replayed_events
                .fetch_add(p.replay.len() as u64, Relaxed);
            for m in &p.replay {
                if !self.sessions.contains(s) {
                    break;
                }
                self.send_wire(s, m);
            }
        }
    }

    /// Records every recoverable socket of session `s`. `closing`: the session is ending
    /// (always recorded); otherwise only where records are kept live (cluster mode).
    pub(super) fn persist(&self, s: usize, closing: bool) {
        let Some(rec) = &self.shared.recovery else {
            return;
        };
        if !closing && !rec.store.keeps_live_records() {
            return;
        }
        let Some(session) = self.sessions.get(s) else {
            return;
        };
        for socket in &session.sockets.sockets {
            let Some(pid) = &socket.pid else { continue };
            let user = socket
                .gateway
                .as_ref()
                .and_then(|g| g.identity.as_ref())
                .map(|i| i.user_id.to_string());
            let record = SessionRecord {
                pid: pid.to_string(),
                sid: socket.id.to_string(),
                user,
                rooms: session
                    .joined
                    .iter()
                    .map(|(r, o)| (r.to_string(), o.to_string()))
                    .collect(),
            };
            rec.store.save(record, unix_ms(), rec.settings.window_ms);
        }
    }

    /// Rewrites live records before they expire, so a killed instance's clients find theirs.
    pub(super) fn refresh_records(&mut self) {
        let Some(rec) = &self.shared.recovery else {
            return;
        };
        if !rec.store.keeps_live_records() {
            return;
        }
        let every = std::time::Duration::from_millis(rec.refresh_ms());
        if self.now.duration_since(self.last_refresh) < every {
            return;
        }
        self.last_refresh = self.now;
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.sockets.sockets.iter().any(|n| n.pid.is_some()))
            .map(|(k, _)| k)
            .collect();
        for s in keys {
            self.persist(s, false);
        }
    }
}
