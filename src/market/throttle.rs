//! A leading- and trailing-edge throttle: the first value of a quiet period goes out at once,
//! later ones within the window are held, and the latest held value goes out when the window
//! ends. Nothing newer is ever followed by something older. Time is passed in (ms).

#[derive(Debug, Clone)]
pub struct Throttle<V> {
    window_ms: u64,
    last_emit: Option<u64>,
    pending: Option<V>,
    deadline: Option<u64>,
}

/// What the caller does with an offered value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer<V> {
    /// Send it now.
    Emit(V),
    /// Held; when `Some`, arm a timer for this instant (none is armed yet).
    Held(Option<u64>),
}

impl<V> Throttle<V> {
    pub fn new(window_ms: u64) -> Self {
        Throttle {
            window_ms,
            last_emit: None,
            pending: None,
            deadline: None,
        }
    }

    pub fn offer(&mut self, value: V, now: u64) -> Offer<V> {
        let open = self.window_ms == 0 || self.last_emit.is_none_or(|t| now >= t + self.window_ms);
        if open && self.pending.is_none() {
            self.last_emit = Some(now);
            return Offer::Emit(value);
        }
        self.pending = Some(value);
        if self.deadline.is_some() {
            return Offer::Held(None);
        }
        let at = self.last_emit.map_or(now, |t| t + self.window_ms);
        self.deadline = Some(at);
        Offer::Held(Some(at))
    }

    /// The timer fired: the held value, if its window is over.
    pub fn on_timer(&mut self, now: u64) -> Option<V> {
        match self.deadline {
            Some(at) if now >= at => {
                self.deadline = None;
                let v = self.pending.take()?;
                self.last_emit = Some(now);
                Some(v)
            }
            _ => None,
        }
    }

    /// Gives up the held value at once (before a value that must not wait, like a closed
    /// candle); the window restarts from `now`.
    pub fn take_pending(&mut self) -> Option<V> {
        self.deadline = None;
        self.pending.take()
    }

    /// Marks an out-of-band emit, so the window restarts.
    pub fn mark_emitted(&mut self, now: u64) {
        self.last_emit = Some(now);
    }

    pub fn pending(&self) -> Option<&V> {
        self.pending.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_then_latest_trailing() {
        let mut t = Throttle::new(1000);
        assert_eq!(t.offer(1, 0), Offer::Emit(1));
        assert_eq!(t.offer(2, 10), Offer::Held(Some(1000)));
        for i in 3..=50 {
            assert_eq!(t.offer(i, 10 + i), Offer::Held(None));
        }
        assert_eq!(t.on_timer(999), None);
        assert_eq!(t.on_timer(1000), Some(50));
        // Quiet after the trailing edge: the next value waits for the window from 1000.
        assert_eq!(t.offer(51, 1500), Offer::Held(Some(2000)));
        assert_eq!(t.on_timer(2000), Some(51));
        assert_eq!(t.offer(52, 3500), Offer::Emit(52));
    }

    #[test]
    fn zero_window_never_holds() {
        let mut t = Throttle::new(0);
        for i in 0..5 {
            assert_eq!(t.offer(i, 7), Offer::Emit(i));
        }
    }

    #[test]
    fn at_most_two_sends_per_window() {
        let mut t = Throttle::new(100);
        let mut sent = Vec::new();
        let mut timer = None;
        for now in 0..100u64 {
            match t.offer(now, now) {
                Offer::Emit(v) => sent.push((now, v)),
                Offer::Held(Some(at)) => timer = Some(at),
                Offer::Held(None) => {}
            }
        }
        if let Some(v) = timer.and_then(|at| t.on_timer(at)) {
            sent.push((100, v));
        }
        assert_eq!(sent, vec![(0, 0), (100, 99)]);
    }
}
