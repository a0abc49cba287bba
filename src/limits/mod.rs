//! Connection caps shared by all shards: global, per IP and per user, and the handshake rate
//! per IP. Touched once per handshake and once per close, never per message; per-connection
//! message rates live with each session (`bucket`).

pub mod bucket;

use bucket::TokenBucket;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_user: usize,
    pub handshakes_per_sec_per_ip: f64,
    pub handshake_burst_per_ip: f64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_connections: 50_000,
            max_connections_per_ip: 200,
            max_connections_per_user: 20,
            handshakes_per_sec_per_ip: 20.0,
            handshake_burst_per_ip: 40.0,
        }
    }
}

/// Why a handshake was refused: the HTTP status and the reason sent in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
    HandshakeRate,
    /// Refused at the namespace CONNECT (the user is known only then).
    MaxConnectionsPerUser,
    /// The gateway is draining for a restart.
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerIp,
        Refusal::HandshakeRate,
        Refusal::MaxConnectionsPerUser,
    ];

    pub fn status(self) -> u16 {
        match self {
            Refusal::MaxConnections | Refusal::Draining => 503,
            Refusal::MaxConnectionsPerIp
            | Refusal::HandshakeRate
            | Refusal::MaxConnectionsPerUser => 429,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "MAX_CONNECTIONS",
            Refusal::MaxConnectionsPerIp => "MAX_CONNECTIONS_PER_IP",
            Refusal::HandshakeRate => "HANDSHAKE_RATE",
            Refusal::MaxConnectionsPerUser => "CONNECTION_LIMIT",
            Refusal::Draining => "DRAINING",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "the gateway is at its connection capacity; retry later",
            Refusal::MaxConnectionsPerIp => "too many connections from this address",
            Refusal::HandshakeRate => "too many handshakes from this address; slow down",
            Refusal::MaxConnectionsPerUser => "too many connections for this user",
            Refusal::Draining => "the gateway is restarting; reconnect shortly",
        }
    }
}

#[derive(Debug)]
struct IpEntry {
    connections: usize,
    handshakes: TokenBucket,
}

#[derive(Debug)]
pub struct Limits {
    settings: LimitSettings,
    /// Refusals by reason, in `Refusal::ALL` order.
    refused: [std::sync::atomic::AtomicU64; 4],
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, IpEntry>>,
    per_user: Mutex<HashMap<Arc<str>, usize>>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            settings,
            refused: Default::default(),
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits a new session from `ip`, counting it, or says why not.
    pub fn refusals(&self) -> [(Refusal, u64); 4] {
        std::array::from_fn(|i| (Refusal::ALL[i], self.refused[i].load(Ordering::Relaxed)))
    }

    fn count(&self, r: Refusal) -> Refusal {
        let i = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        r
    }

    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        self.admit_uncounted(ip, now_ms).map_err(|r| self.count(r))
    }

    fn admit_uncounted(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let s = &self.settings;
        let mut per_ip = self.per_ip.lock();
        let entry = per_ip.entry(ip).or_insert_with(|| IpEntry {
            connections: 0,
            handshakes: TokenBucket::new(
                s.handshakes_per_sec_per_ip,
                s.handshake_burst_per_ip,
                now_ms,
            ),
        });
        if !entry.handshakes.take(now_ms) {
            return Err(Refusal::HandshakeRate);
        }
        if entry.connections >= s.max_connections_per_ip {
            return Err(Refusal::MaxConnectionsPerIp);
        }
        if self.total.fetch_add(1, Ordering::Relaxed) >= s.max_connections {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::MaxConnections);
        }
        entry.connections += 1;
        // Forget addresses that hold nothing, so the table does not grow without bound.
        if per_ip.len() > 10_000 {
            per_ip.retain(|_, e| e.connections > 0 || !e.handshakes.is_full(now_ms));
        }
        Ok(())
    }

    pub fn release(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.per_ip.lock();
        if let Some(e) = per_ip.get_mut(&ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Connections counted against users, all users together.
    pub fn user_connections(&self) -> usize {
        self.per_user.lock().values().sum()
    }

    /// Counts one more connection for `user`, unless it is at its cap.
    pub fn admit_user(&self, user: &Arc<str>) -> bool {
        let mut per_user = self.per_user.lock();
        let n = per_user.entry(user.clone()).or_insert(0);
        if *n >= self.settings.max_connections_per_user {
            self.count(Refusal::MaxConnectionsPerUser);
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_user(&self, user: &str) {
        let mut per_user = self.per_user.lock();
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn caps_refuse_and_release() {
        let l = Limits::new(LimitSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            max_connections_per_user: 1,
            handshakes_per_sec_per_ip: 1000.0,
            handshake_burst_per_ip: 1000.0,
        });
        assert_eq!(l.admit(ip(1), 0), Ok(()));
        assert_eq!(l.admit(ip(1), 0), Ok(()));
        assert_eq!(l.admit(ip(1), 0), Err(Refusal::MaxConnectionsPerIp));
        assert_eq!(l.admit(ip(2), 0), Ok(()));
        assert_eq!(l.admit(ip(3), 0), Err(Refusal::MaxConnections));
        l.release(ip(1));
        assert_eq!(l.admit(ip(3), 0), Ok(()));
        assert_eq!(l.connections(), 3);
        let u: Arc<str> = Arc::from("u-1");
        assert!(l.admit_user(&u));
        assert!(!l.admit_user(&u));
        l.release_user("u-1");
        assert!(l.admit_user(&u));
    }

    #[test]
    fn handshake_rate_per_ip() {
        let l = Limits::new(LimitSettings {
            handshakes_per_sec_per_ip: 1.0,
            handshake_burst_per_ip: 2.0,
            ..Default::default()
        });
        assert!(l.admit(ip(1), 0).is_ok());
        assert!(l.admit(ip(1), 0).is_ok());
        assert_eq!(l.admit(ip(1), 0), Err(Refusal::HandshakeRate));
        assert!(
            l.admit(ip(2), 0).is_ok(),
            "other addresses are not affected"
        );
        assert!(l.admit(ip(1), 1000).is_ok());
    }
}
