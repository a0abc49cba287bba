//! A token bucket with the time passed in (ms).

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: f64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            rate_per_sec,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token could be taken now, without taking it.
    pub fn has_token(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        (self.tokens + elapsed * self.rate_per_sec).min(self.burst) >= 1.0
    }

    /// Charges work already done, which may leave the bucket in debt: what a request will
    /// cost is known only once it has been handled, and the debt is paid by waiting.
    pub fn charge(&mut self, tokens: f64, now_ms: u64) {
        self.refill(now_ms);
        self.tokens -= tokens;
    }

    /// Whether the bucket is in debt at `now_ms`.
    pub fn in_debt(&self, now_ms: u64) -> bool {
        self.debt_paid_in_ms(now_ms) > 0
    }

    /// Milliseconds from `now_ms` until the bucket is out of debt.
    pub fn debt_paid_in_ms(&self, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        let tokens = self.tokens + elapsed * self.rate_per_sec;
        if tokens >= 0.0 || self.rate_per_sec <= 0.0 {
            return 0;
        }
        (-tokens / self.rate_per_sec * 1000.0).ceil() as u64
    }

    /// Whether the bucket is full again (nothing to remember about this peer).
    pub fn is_full(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens + elapsed * self.rate_per_sec >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10.0, 3.0, 0);
        assert!(b.take(0) && b.take(0) && b.take(0));
        assert!(!b.take(0));
        assert!(!b.take(50));
        assert!(b.take(100));
        assert!(!b.take(100));
        assert!(b.is_full(1000));
    }

    #[test]
    fn work_charged_after_the_fact_is_paid_by_waiting() {
        let mut b = TokenBucket::new(10.0, 5.0, 0);
        b.charge(25.0, 0);
        assert!(b.in_debt(0));
        assert_eq!(b.debt_paid_in_ms(0), 2000);
        assert!(!b.take(1000));
        assert!(b.in_debt(1500));
        assert!(!b.in_debt(2000));
        assert!(b.take(2100));
    }
}
