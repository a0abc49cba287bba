//! Rate limiting for warnings a flood could repeat thousands of times a second (accept
//! failures while out of descriptors): one line per interval, saying how many were skipped.

/// Whether a repeated warning is due, with the time passed in.
#[derive(Debug)]
pub struct LogRate {
    every_ms: u64,
    last_ms: Option<u64>,
    skipped: u64,
}

impl LogRate {
    pub const fn new(every_ms: u64) -> LogRate {
        LogRate {
            every_ms,
            last_ms: None,
            skipped: 0,
        }
    }

    /// Some(number skipped since the last line) when this occurrence should be logged.
    pub fn due(&mut self, now_ms: u64) -> Option<u64> {
        if self
            .last_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < self.every_ms)
        {
            self.skipped += 1;
            return None;
        }
        self.last_ms = Some(now_ms);
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_skipped() {
        let mut r = LogRate::new(1000);
        assert_eq!(r.due(0), Some(0));
        assert_eq!(r.due(10), None);
        assert_eq!(r.due(999), None);
        assert_eq!(r.due(1000), Some(2));
        assert_eq!(r.due(1500), None);
    }
}
