//! Per-packet offsets: a client's position in the stream of lossless events.
//!
//! In cluster mode an offset is the Redis Stream id of the event (`<ms>-<seq>`), so it means
//! the same thing on every instance. Standalone, it is `<boot ms>-<counter>`: ordered within
//! the process, and never mistaken for a position of an earlier run.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl Offset {
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Offset {
        Offset { ms, seq }
    }

    /// Parses `<ms>-<seq>` (a bare `<ms>` reads as `<ms>-0`, as Redis does); anything else is
    /// not an offset.
    pub fn parse(text: &str) -> Option<Offset> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Offset {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The offset just before this one.
    pub fn pred(self) -> Offset {
        match (self.ms, self.seq) {
            (0, 0) => Offset::ZERO,
            (ms, 0) => Offset::new(ms - 1, u64::MAX),
            (ms, seq) => Offset::new(ms, seq - 1),
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stream_ids_and_orders_numerically() {
        let a = Offset::parse("1700000000000-2").unwrap();
        assert_eq!(a, Offset::new(1_700_000_000_000, 2));
        assert_eq!(a.to_string(), "1700000000000-2");
        assert!(Offset::parse("999-5").unwrap() < Offset::parse("1000-0").unwrap());
        assert_eq!(Offset::parse("42"), Some(Offset::new(42, 0)));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "+1-2",
            "1 -2",
            "999999999999999999999-0",
        ] {
            assert_eq!(Offset::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn pred_is_the_previous_offset() {
        assert_eq!(Offset::new(5, 3).pred(), Offset::new(5, 2));
        assert_eq!(Offset::new(5, 0).pred(), Offset::new(4, u64::MAX));
        assert_eq!(Offset::ZERO.pred(), Offset::ZERO);
    }
}
