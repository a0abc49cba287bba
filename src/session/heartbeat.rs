//! Engine.IO v4 heartbeat: the server pings every `interval`, and a client that has not
//! answered within `timeout` of a ping is gone. Time is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Next ping is due at this instant.
    Idle { ping_at: Instant },
    /// A ping went out; the pong must arrive before this instant.
    AwaitingPong { deadline: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    SendPing,
    TimedOut,
    Wait,
}

impl Heartbeat {
    pub fn new(now: Instant, interval: Duration) -> Self {
        Heartbeat::Idle {
            ping_at: now + interval,
        }
    }

    pub fn deadline(&self) -> Instant {
        match *self {
            Heartbeat::Idle { ping_at } => ping_at,
            Heartbeat::AwaitingPong { deadline } => deadline,
        }
    }

    pub fn on_pong(&mut self, now: Instant, interval: Duration) {
        if matches!(self, Heartbeat::AwaitingPong { .. }) {
            *self = Heartbeat::Idle {
                ping_at: now + interval,
            };
        }
    }

    pub fn poll(&mut self, now: Instant, timeout: Duration) -> HeartbeatAction {
        match *self {
            Heartbeat::Idle { ping_at } if now >= ping_at => {
                *self = Heartbeat::AwaitingPong {
                    deadline: now + timeout,
                };
                HeartbeatAction::SendPing
            }
            Heartbeat::AwaitingPong { deadline } if now >= deadline => HeartbeatAction::TimedOut,
            _ => HeartbeatAction::Wait,
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "any instant will do as the start"
)]
mod tests {
    use super::*;

    #[test]
    fn ping_then_timeout_unless_pong() {
        let t0 = Instant::now();
        let (i, to) = (Duration::from_millis(300), Duration::from_millis(200));
        let mut hb = Heartbeat::new(t0, i);
        assert_eq!(hb.poll(t0, to), HeartbeatAction::Wait);
        assert_eq!(hb.poll(t0 + i, to), HeartbeatAction::SendPing);
        assert_eq!(hb.poll(t0 + i + to / 2, to), HeartbeatAction::Wait);
        hb.on_pong(t0 + i + to / 2, i);
        assert_eq!(hb.deadline(), t0 + i + to / 2 + i);
        let t1 = hb.deadline();
        assert_eq!(hb.poll(t1, to), HeartbeatAction::SendPing);
        assert_eq!(hb.poll(t1 + to, to), HeartbeatAction::TimedOut);
    }
}
