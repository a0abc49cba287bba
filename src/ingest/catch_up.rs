//! Where an instance stands against the cluster stream. Events the stream took before the
//! instance was following it are history: they rebuild its state, and they reach a socket
//! only through connection state recovery, never as live events.
//!
//! Written by the stream follower, read by shards (per handshake and per join, never per
//! delivery) and by `/ready`.

use crate::recovery::Offset;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct CatchUp {
    /// Not following the stream: before the first catch-up, while Redis is unreachable, and
    /// while catching up. Sockets that subscribe meanwhile are not sent later-delivered events
    /// the stream took before they subscribed.
    behind: AtomicBool,
    /// Reading up to the stream's tail as of the (re)connection: `/ready` says so, new
    /// sessions are refused.
    catching_up: AtomicBool,
    /// Events read in the current catch-up.
    events: AtomicU64,
    /// How far (ms of stream ids) the last event read is from the tail being caught up to.
    behind_ms: AtomicU64,
}

/// What `/ready` reports of a catch-up in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub behind_ms: u64,
}

impl CatchUp {
    /// Standalone: the only source is this process, so it is never behind.
    pub fn following() -> CatchUp {
        CatchUp {
            behind: AtomicBool::new(false),
            catching_up: AtomicBool::new(false),
            events: AtomicU64::new(0),
            behind_ms: AtomicU64::new(0),
        }
    }

    /// Cluster mode at start: nothing is known until the stream has been read.
    pub fn await_stream(&self) {
        self.behind.store(true, Relaxed);
        self.catching_up.store(true, Relaxed);
    }

    pub fn is_behind(&self) -> bool {
        self.behind.load(Relaxed)
    }

    pub fn is_catching_up(&self) -> bool {
        self.catching_up.load(Relaxed)
    }

    pub fn progress(&self) -> Progress {
        Progress {
            events: self.events.load(Relaxed),
            behind_ms: self.behind_ms.load(Relaxed),
        }
    }

    /// The stream connection was lost: until the next catch-up ends, the instance is behind.
    pub fn fell_behind(&self) {
        self.behind.store(true, Relaxed);
    }

    /// Reading toward `target`, the stream's tail as of the (re)connection.
    pub fn start(&self, from: Offset, target: Offset) {
        self.events.store(0, Relaxed);
        // From the start, how far is known once the first entry is read.
        let behind = if from == Offset::ZERO {
            0
        } else {
            target.ms.saturating_sub(from.ms)
        };
        self.behind_ms.store(behind, Relaxed);
        self.catching_up.store(true, Relaxed);
        self.behind.store(true, Relaxed);
    }

    pub fn advanced(&self, read: u64, at: Offset, target: Offset) {
        self.events.fetch_add(read, Relaxed);
        self.behind_ms
            .store(target.ms.saturating_sub(at.ms), Relaxed);
    }

    /// At the tail: events read from now on are live.
    pub fn caught_up(&self) {
        self.behind_ms.store(0, Relaxed);
        self.catching_up.store(false, Relaxed);
        self.behind.store(false, Relaxed);
    }
}
