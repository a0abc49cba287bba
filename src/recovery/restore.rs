//! Deciding a recovery: whether a presented session may be resumed, and what it is owed.
//! Pure: the record, the client's claim and the log in; a plan or a refusal out.

use super::{Offset, RecoveryLog, SessionRecord};
use crate::codec::WireMessage;
use crate::room::Room;
use std::sync::Arc;

#[derive(Debug)]
pub struct Restored {
    pub sid: String,
    pub pid: String,
    /// Rooms to rejoin, each with the offset it was first joined at.
    pub rooms: Vec<(Arc<str>, Offset)>,
    /// Missed lossless events, in order.
    pub replay: Vec<WireMessage>,
    /// The client has seen events this instance has not delivered yet (it came from an
    /// instance further along the stream): lossless events up to here are not sent again.
    pub skip_until: Option<Offset>,
}

/// `user` is who the reconnecting client authenticated as; `upto` is the newest offset the
/// restoring shard has delivered (events after it reach the socket live once it has joined);
/// `max_replay` bounds the bytes replayed (more is a new session, never a partial replay).
pub fn plan(
    record: SessionRecord,
    user: Option<&str>,
    client_offset: Option<Offset>,
    log: &RecoveryLog,
    upto: Option<Offset>,
    max_replay: usize,
) -> Option<Restored> {
    if record.user.as_deref() != user {
        return None;
    }
    // A private room is restored only to its own user, whatever the record says.
    let rooms: Vec<(Arc<str>, Offset)> = record
        .joined()
        .into_iter()
        .filter(|(r, _)| match Room::parse(r) {
            Room::User(owner, _) => Some(owner) == user,
            _ => true,
        })
        .map(|(r, o)| (Arc::from(r), o))
        .collect();
    // A client that never saw a lossless event sends no offset: it is owed everything since
    // it joined.
    let after = client_offset
        .or_else(|| rooms.iter().map(|(_, o)| *o).min())
        .unwrap_or(Offset::ZERO);
    let replay = match upto {
        Some(upto) if upto > after && !rooms.is_empty() => {
            log.missed(after, upto, &rooms, max_replay).ok()?
        }
        _ => Vec::new(),
    };
    let skip_until = client_offset.filter(|c| upto.is_none_or(|u| *c > u));
    Some(Restored {
        sid: record.sid,
        pid: record.pid,
        rooms,
        replay,
        skip_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::LogEntry;

    fn log_with(rooms: &[&str]) -> RecoveryLog {
        let mut log = RecoveryLog::new(60_000, 1000, Some(Offset::ZERO));
        for (i, r) in rooms.iter().enumerate() {
            log.push(LogEntry {
                offset: Offset::new(1, i as u64 + 1),
                room: Arc::from(*r),
                message: WireMessage::text(|b| b.extend_from_slice(format!("4{i}").as_bytes())),
                at_ms: 0,
            });
        }
        log
    }

    fn record(user: Option<&str>, rooms: &[(&str, &str)]) -> SessionRecord {
        SessionRecord {
            pid: "p".into(),
            sid: "s".into(),
            user: user.map(String::from),
            rooms: rooms
                .iter()
                .map(|(r, o)| (r.to_string(), o.to_string()))
                .collect(),
        }
    }

    #[test]
    fn replays_after_the_client_offset() {
        let log = log_with(&["t", "user:u:orders", "t", "x"]);
        let rec = record(Some("u"), &[("t", "0-0"), ("user:u:orders", "0-0")]);
        let r = plan(
            rec,
            Some("u"),
            Some(Offset::new(1, 1)),
            &log,
            Some(Offset::new(1, 4)),
            usize::MAX,
        )
        .unwrap();
        assert_eq!(r.replay.len(), 2);
        assert_eq!((r.sid.as_str(), r.pid.as_str()), ("s", "p"));
        assert_eq!(r.skip_until, None);
    }

    #[test]
    fn another_user_or_anonymous_gets_nothing() {
        let log = log_with(&["t"]);
        let rec = record(Some("u"), &[("user:u:orders", "0-0")]);
        assert!(plan(rec.clone(), Some("v"), None, &log, None, usize::MAX).is_none());
        assert!(plan(rec, None, None, &log, None, usize::MAX).is_none());
        // A record naming someone else's private room keeps only its own.
        let odd = record(Some("u"), &[("user:v:orders", "0-0"), ("t", "0-0")]);
        let r = plan(
            odd,
            Some("u"),
            None,
            &log,
            Some(Offset::new(1, 1)),
            usize::MAX,
        )
        .unwrap();
        assert_eq!(r.rooms.len(), 1);
        assert_eq!(r.replay.len(), 1);
    }

    #[test]
    fn no_offset_means_everything_since_joining_and_a_lost_gap_refuses() {
        let mut log = RecoveryLog::new(60_000, 2, Some(Offset::ZERO));
        for i in 1..=4 {
            log.push(LogEntry {
                offset: Offset::new(1, i),
                room: Arc::from("t"),
                message: WireMessage::text(|b| b.extend_from_slice(b"4")),
                at_ms: 0,
            });
        }
        let rec = record(None, &[("t", "1-2")]);
        assert_eq!(
            plan(
                rec.clone(),
                None,
                None,
                &log,
                Some(Offset::new(1, 4)),
                usize::MAX
            )
            .unwrap()
            .replay
            .len(),
            2
        );
        let early = record(None, &[("t", "1-0")]);
        assert!(plan(early, None, None, &log, Some(Offset::new(1, 4)), usize::MAX).is_none());
        // Ahead of this instance: nothing to replay, the rest is skipped when it arrives.
        let r = plan(
            rec,
            None,
            Some(Offset::new(1, 9)),
            &log,
            Some(Offset::new(1, 4)),
            usize::MAX,
        )
        .unwrap();
        assert!(r.replay.is_empty());
        assert_eq!(r.skip_until, Some(Offset::new(1, 9)));
        // A gap bigger than the replay may hold is a new session.
        let big = record(None, &[("t", "1-2")]);
        assert!(plan(big, None, None, &log, Some(Offset::new(1, 4)), 5).is_none());
    }
}
