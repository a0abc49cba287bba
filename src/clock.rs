//! The wall clock, read only at the edges (the shard driver, ingest, wiring). Protocol logic
//! is handed the time instead, so it can be tested and fuzzed with a clock moved by hand.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
#[allow(
    clippy::disallowed_methods,
    reason = "the one reader of the wall clock"
)]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
