//! Connection state recovery (socket.io v4.6+): a `/ws` socket is given a private session id
//! (`pid`) and every lossless event it gets carries its offset as the last argument. A client
//! that reconnects within the window presenting both gets its socket id, its rooms and every
//! lossless event it missed, in order; anything less than the whole gap means a new session.
//!
//! The replay log lives in each process: standalone it is the only copy, and in cluster mode
//! every instance reads the whole stream, so each has every event. Session records move
//! through Redis in cluster mode so a client may come back through any instance.

pub mod log;
pub mod offset;
pub mod record;
pub mod restore;
pub mod store;

pub use log::{LogEntry, RecoveryLog};
pub use offset::Offset;
pub use record::SessionRecord;
pub use restore::{plan, Restored};
pub use store::{Lookup, MemoryStore, RestoreTicket, SessionStore, StoreOp};

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Clone, Copy)]
pub struct RecoverySettings {
    /// How long a disconnected socket's state is kept.
    pub window_ms: u64,
    /// Most lossless events the replay log holds, whatever the window.
    pub max_events: usize,
}

/// Outcomes of recovery attempts, for metrics.
#[derive(Debug, Default)]
pub struct RecoveryCounters {
    pub recovered: AtomicU64,
    /// Presented a session that was unknown, expired, another user's, or older than the log.
    pub refused: AtomicU64,
    pub replayed_events: AtomicU64,
}

pub struct Recovery {
    pub settings: RecoverySettings,
    log: Mutex<RecoveryLog>,
    pub store: SessionStore,
    /// Standalone offsets: the process start time, then a counter.
    boot_ms: u64,
    next_seq: AtomicU64,
    pub counters: RecoveryCounters,
}

impl Recovery {
    /// In-process store and offsets.
    pub fn standalone(settings: RecoverySettings, now_ms: u64) -> Recovery {
        Recovery {
            settings,
            log: Mutex::new(RecoveryLog::new(
                settings.window_ms,
                settings.max_events,
                Some(Offset::new(now_ms, 0)),
            )),
            store: SessionStore::Memory(Mutex::new(MemoryStore::default())),
            boot_ms: now_ms,
            next_seq: AtomicU64::new(1),
            counters: RecoveryCounters::default(),
        }
    }

    /// Records in Redis, offsets from the stream; the log covers nothing until the stream is
    /// read.
    pub fn cluster(
        settings: RecoverySettings,
        store: tokio::sync::mpsc::UnboundedSender<StoreOp>,
    ) -> Recovery {
        Recovery {
            settings,
            log: Mutex::new(RecoveryLog::new(
                settings.window_ms,
                settings.max_events,
                None,
            )),
            store: SessionStore::Redis(store),
            boot_ms: 0,
            next_seq: AtomicU64::new(1),
            counters: RecoveryCounters::default(),
        }
    }

    /// The offset every event of this process comes after, when known from the start
    /// (standalone); shards count their sockets' rooms as joined from here until they deliver
    /// an event.
    pub fn origin(&self) -> Option<Offset> {
        matches!(self.store, SessionStore::Memory(_)).then(|| Offset::new(self.boot_ms, 0))
    }

    /// The next standalone offset (called in hand-off order, under ingest's numbering lock).
    pub fn next_local_offset(&self) -> Offset {
        Offset::new(self.boot_ms, self.next_seq.fetch_add(1, Relaxed))
    }

    pub fn log(&self) -> MutexGuard<'_, RecoveryLog> {
        self.log.lock()
    }

    /// How often a connected socket's record is rewritten when records are kept live, so one
    /// outlives a killed instance by at least most of the window.
    pub fn refresh_ms(&self) -> u64 {
        (self.settings.window_ms / 4).clamp(250, 30_000)
    }
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("settings", &self.settings)
            .field("log_len", &self.log.lock().len())
            .finish_non_exhaustive()
    }
}
