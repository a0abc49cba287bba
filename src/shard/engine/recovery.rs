//! The engine's side of connection state recovery: asking for a presented session's record,
//! restoring it (rooms, replay, socket id), and leaving records behind for sockets that may
//! come back. Records are stored and looked up by the driver (`Action::SaveRecord`,
//! `Action::TakeRecord`).

use super::ids::SessionId;
use super::{Action, Engine};
use crate::recovery::{self, Offset, RestoreTicket, SessionRecord};
use crate::GATEWAY_NAMESPACE;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Engine {
    /// A `/ws` CONNECT presented `pid`: ask for its record (or finish now when recovery is off).
    pub(super) fn start_restore(&mut self, s: SessionId, pid: Box<str>, offset: Option<Offset>) {
        if self.shared.recovery.is_none() {
            return self.finish_restore(s, offset, None);
        }
        let Some(session) = self.live_session(s) else {
            return;
        };
        // Each attempt searches the replay log: attempts are rate-limited per address.
        if !self
            .shared
            .limits
            .admit_recovery(session.ip, self.now.unix_ms)
        {
            return self.finish_restore(s, offset, None);
        }
        let ticket = RestoreTicket {
            shard: self.id,
            sid: session.sid.clone(),
            generation: session.generation,
            namespace: GATEWAY_NAMESPACE.into(),
            pid,
            offset,
            user: session.sockets.pending_user().flatten().map(Into::into),
        };
        self.actions.push_back(Action::TakeRecord(ticket));
    }

    /// The record lookup answered; the session may have gone meanwhile.
    pub(super) fn on_restored(&mut self, ticket: RestoreTicket, record: Option<SessionRecord>) {
        let Some(&s) = self.sids.get(&ticket.sid) else {
            return;
        };
        let waiting = self.live_session(s).is_some_and(|x| {
            x.generation == ticket.generation && x.sockets.pending_user().is_some()
        });
        if waiting {
            self.finish_restore(s, ticket.offset, record);
        }
    }

    fn finish_restore(
        &mut self,
        s: SessionId,
        offset: Option<Offset>,
        record: Option<SessionRecord>,
    ) {
        let Some(user) = self.live_session(s).and_then(|x| x.sockets.pending_user()) else {
            return;
        };
        let user = user.map(str::to_owned);
        let plan = match (&self.shared.recovery, record) {
            (Some(rec), Some(record)) => {
                // A gap near the outbound hard limit would get the client dropped as a slow
                // consumer mid-replay (and it would come back for the same replay, again and
                // again): a new session instead, never a partial replay. Half the limit
                // leaves room for what is queued beside the replay.
                let plan = recovery::plan(
                    record,
                    user.as_deref(),
                    offset,
                    &rec.log(),
                    self.last_offset,
                    self.settings.outbound_hard_limit / 2,
                );
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
        let Some(session) = self.live_session_mut(s) else {
            return;
        };
        if let Some(p) = &plan {
            session.joined = p.rooms.iter().cloned().collect();
            session.skip_until = p.skip_until;
        }
        // Packets the client sent before the answer were held: they are handled now, after
        // the CONNECT answer and before the replay.
        self.feed_sockets(s, |layer, app, ctx, out| {
            layer.finish_connect(app, ctx, plan.as_ref(), out)
        });
        // Rooms the caps did not admit again are not the session's (what it missed in them
        // while it was subscribed is still replayed).
        if let Some(session) = self.live_session_mut(s) {
            if session.joined.len() > session.sockets.rooms().count() {
                let kept: std::collections::HashSet<Arc<str>> =
                    session.sockets.rooms().cloned().collect();
                session.joined.retain(|r, _| kept.contains(r));
            }
        }
        if let (Some(p), Some(rec)) = (plan, &self.shared.recovery) {
            rec.counters
                .replayed_events
                .fetch_add(p.replay.len() as u64, Relaxed);
            let ip = self.live_session(s).map(|x| x.ip);
            let mut sent = 0;
            for m in &p.replay {
                if self.live_session(s).is_none() {
                    break;
                }
                sent += m.ws_frame().len();
                // Plain: a replay of thousands of messages compressed one by one would hold
                // the shard (~9 µs each) from every other client.
                self.send_wire_as(s, m, false);
            }
            // A replay is work like any answer: a client that reconnects and drops again to
            // be replayed the same gap pays for each time.
            if let Some(ip) = ip {
                let work = crate::limits::cost::Work {
                    messages: 1,
                    rooms: p.rooms.len(),
                    output_bytes: sent,
                    ..Default::default()
                };
                self.charge_work(ip, &work);
            }
        }
    }

    /// Records every recoverable socket of session `s`. `closing`: the session is ending
    /// (always recorded); otherwise only where records are kept live (cluster mode).
    pub(super) fn persist(&mut self, s: SessionId, closing: bool) {
        let Some(rec) = &self.shared.recovery else {
            return;
        };
        if !closing && !rec.store.keeps_live_records() {
            return;
        }
        let Some(session) = self.live_session(s) else {
            return;
        };
        let records: Vec<SessionRecord> = session
            .sockets
            .sockets
            .iter()
            .filter_map(|socket| {
                let pid = socket.pid.as_ref()?;
                let user = socket
                    .gateway
                    .as_ref()
                    .and_then(|g| g.identity.as_ref())
                    .map(|i| i.user_id.to_string());
                Some(SessionRecord {
                    pid: pid.to_string(),
                    sid: socket.id.to_string(),
                    user,
                    rooms: session
                        .joined
                        .iter()
                        .map(|(r, o)| (r.to_string(), o.to_string()))
                        .collect(),
                })
            })
            .collect();
        self.actions
            .extend(records.into_iter().map(Action::SaveRecord));
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
        if self.now.mono.duration_since(self.last_refresh) < every {
            return;
        }
        self.last_refresh = self.now.mono;
        let keys: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.closing.is_none())
            .filter(|(_, s)| s.sockets.sockets.iter().any(|n| n.pid.is_some()))
            .map(|(k, _)| SessionId::new(k))
            .collect();
        for s in keys {
            self.persist(s, false);
        }
    }
}
