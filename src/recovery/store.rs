//! Where session records wait for their client: process memory standalone, Redis in cluster
//! mode (so a client can come back through any instance). Redis is reached from the async
//! runtime; shards hand it requests and get answers back as shard messages.

use super::SessionRecord;
use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::mpsc::UnboundedSender;

/// Which socket a pending restore is for, so the answer finds it (or finds it gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTicket {
    pub shard: usize,
    pub sid: Box<str>,
    pub generation: u64,
    pub namespace: Box<str>,
    pub pid: Box<str>,
    /// The offset the client presented (none if it never got a lossless event).
    pub offset: Option<super::Offset>,
    /// Who presented it: a record of another user is left for its owner.
    pub user: Option<Box<str>>,
}

#[derive(Debug)]
pub enum StoreOp {
    Save { record: SessionRecord, ttl_ms: u64 },
    Take(RestoreTicket),
}

pub enum Lookup {
    Ready(Option<SessionRecord>),
    /// The answer comes later as `ShardMsg::Restored`.
    Pending,
}

pub enum SessionStore {
    Memory(Mutex<MemoryStore>),
    Redis(UnboundedSender<StoreOp>),
}

#[derive(Default)]
pub struct MemoryStore {
    records: HashMap<String, (SessionRecord, u64)>,
    last_sweep_ms: u64,
}

impl SessionStore {
    /// Whether records are written while the socket is still connected: needed when the
    /// process may die without closing its sockets and another instance takes over.
    pub fn keeps_live_records(&self) -> bool {
        matches!(self, SessionStore::Redis(_))
    }

    pub fn save(&self, record: SessionRecord, now_ms: u64, ttl_ms: u64) {
        match self {
            SessionStore::Memory(m) => {
                let mut m = m.lock();
                if now_ms.saturating_sub(m.last_sweep_ms) >= 1_000 {
                    m.last_sweep_ms = now_ms;
                    m.records.retain(|_, (_, exp)| *exp > now_ms);
                }
                m.records
                    .insert(record.pid.clone(), (record, now_ms.saturating_add(ttl_ms)));
            }
            SessionStore::Redis(tx) => {
                // A closed channel means the runtime is going away with the process.
                let _ = tx.send(StoreOp::Save { record, ttl_ms });
            }
        }
    }

    /// Takes the record of `ticket.pid` (it can be used once), if it belongs to the user who
    /// presented it; another user's record is left where it is, for its owner.
    pub fn take(&self, ticket: RestoreTicket, now_ms: u64) -> Lookup {
        match self {
            SessionStore::Memory(m) => {
                let mut m = m.lock();
                let owner = match m.records.get(&*ticket.pid) {
                    Some((r, exp)) if *exp > now_ms => r.user.as_deref() == ticket.user.as_deref(),
                    _ => true,
                };
                if !owner {
                    return Lookup::Ready(None);
                }
                Lookup::Ready(
                    m.records
                        .remove(&*ticket.pid)
                        .filter(|(_, exp)| *exp > now_ms)
                        .map(|(r, _)| r),
                )
            }
            SessionStore::Redis(tx) => match tx.send(StoreOp::Take(ticket)) {
                Ok(()) => Lookup::Pending,
                Err(_) => Lookup::Ready(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(pid: &str) -> RestoreTicket {
        RestoreTicket {
            shard: 0,
            sid: "s".into(),
            generation: 1,
            namespace: "/ws".into(),
            pid: pid.into(),
            offset: None,
            user: None,
        }
    }

    #[test]
    fn memory_records_are_taken_once_and_expire() {
        let store = SessionStore::Memory(Mutex::new(MemoryStore::default()));
        let rec = |pid: &str| SessionRecord {
            pid: pid.into(),
            sid: "x".into(),
            user: None,
            rooms: vec![],
        };
        store.save(rec("a"), 1_000, 500);
        store.save(rec("b"), 1_000, 500);
        assert!(matches!(store.take(ticket("a"), 1_400), Lookup::Ready(Some(r)) if r.pid == "a"));
        assert!(matches!(
            store.take(ticket("a"), 1_400),
            Lookup::Ready(None)
        ));
        assert!(matches!(
            store.take(ticket("b"), 1_500),
            Lookup::Ready(None)
        ));
    }

    #[test]
    fn another_users_attempt_leaves_the_record_to_its_owner() {
        let store = SessionStore::Memory(Mutex::new(MemoryStore::default()));
        let owned = SessionRecord {
            pid: "p".into(),
            sid: "x".into(),
            user: Some("alice".into()),
            rooms: vec![],
        };
        store.save(owned, 0, 1_000);
        let as_user = |u: Option<&str>| RestoreTicket {
            user: u.map(Into::into),
            ..ticket("p")
        };
        assert!(matches!(
            store.take(as_user(Some("mallory")), 10),
            Lookup::Ready(None)
        ));
        assert!(matches!(store.take(as_user(None), 10), Lookup::Ready(None)));
        assert!(
            matches!(store.take(as_user(Some("alice")), 10), Lookup::Ready(Some(r)) if r.sid == "x"),
            "the owner still gets it"
        );
    }
}
