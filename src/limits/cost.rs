//! What a client's requests cost, counted in events: the unit of every client rate limit.
//! One rate then bounds a client's work whatever shape it takes: many small events, one
//! large one, one that joins a thousand rooms, or one that makes the gateway send megabytes
//! of order book snapshots.

/// Input that costs as much as one event. Decoding is linear in size, and a 64 KiB event
/// dense with numbers takes ~2 ms to decode where an ordinary one takes ~2 µs: priced so a
/// client address's work budget bounds its CPU, whatever it sends.
pub const INPUT_BYTES_PER_EVENT: usize = 512;
/// Room joins and leaves that cost as much as one event.
pub const ROOMS_PER_EVENT: usize = 16;
/// Output (answers, snapshots) that costs as much as one event.
pub const OUTPUT_BYTES_PER_EVENT: usize = 64 * 1024;
/// What compressing one message for one client (permessage-deflate) costs, in events: ~9 µs
/// whatever its size (the compressor's reset), against ~2 µs for an ordinary event. A
/// broadcast is compressed once for all its subscribers and charged to nobody.
pub const EVENTS_PER_COMPRESSION: usize = 4;

/// What one event costs beyond itself: whole units of its size and of the rooms it changed,
/// so an ordinary event (under 512 bytes, under 16 rooms) costs exactly one.
pub fn event_surcharge(input_bytes: usize, rooms: usize) -> f64 {
    (input_bytes / INPUT_BYTES_PER_EVENT + rooms / ROOMS_PER_EVENT) as f64
}

/// Work done for one client address, in any mix.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Messages handled (Socket.IO packets, Engine.IO packets, requests).
    pub messages: usize,
    pub input_bytes: usize,
    pub rooms: usize,
    pub output_bytes: usize,
    /// Messages compressed for this client alone.
    pub compressions: usize,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        *self == Work::default()
    }

    /// The work in events.
    pub fn cost(&self) -> f64 {
        self.messages as f64
            + self.input_bytes as f64 / INPUT_BYTES_PER_EVENT as f64
            + self.rooms as f64 / ROOMS_PER_EVENT as f64
            + self.output_bytes as f64 / OUTPUT_BYTES_PER_EVENT as f64
            + (self.compressions * EVENTS_PER_COMPRESSION) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_events_cost_one_and_large_ones_more() {
        assert_eq!(event_surcharge(200, 1), 0.0);
        assert_eq!(event_surcharge(20_000, 1024), 39.0 + 64.0);
        let w = Work {
            messages: 2,
            input_bytes: 1024,
            rooms: 32,
            output_bytes: 128 * 1024,
            compressions: 0,
        };
        assert_eq!(w.cost(), 8.0);
        let compressed = Work {
            compressions: 2,
            ..w
        };
        assert_eq!(compressed.cost(), 8.0 + 2.0 * EVENTS_PER_COMPRESSION as f64);
        assert!(Work::default().is_empty());
    }
}
