//! Connection caps shared by all shards: global, per IP and per user, and the handshake rate
//! per IP. Touched once per handshake and once per close, never per message; per-connection
//! message rates live with each session (`bucket`).

pub mod bucket;

use bucket::TokenBucket;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_user: usize,
    pub handshakes_per_sec_per_ip: f64,
    pub handshake_burst_per_ip: f64,
    /// TCP connections one address may hold, whatever they carry.
    pub max_tcp_per_ip: usize,
    /// Input one address may have buffered beyond the free allowance per connection.
    pub max_input_per_ip: usize,
    /// The same, all addresses together.
    pub max_input: usize,
    /// Rooms all shards together hold at most.
    pub max_rooms: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_connections: 50_000,
            max_connections_per_ip: 200,
            max_connections_per_user: 20,
            handshakes_per_sec_per_ip: 20.0,
            handshake_burst_per_ip: 40.0,
            max_tcp_per_ip: 408,
            max_input_per_ip: 8 << 20,
            max_input: 256 << 20,
            max_rooms: 100_000,
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
    /// A TCP connection over the per-address cap, closed as it is accepted.
    TcpConnectionsPerIp,
    /// The gateway is draining for a restart.
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerIp,
        Refusal::HandshakeRate,
        Refusal::MaxConnectionsPerUser,
        Refusal::TcpConnectionsPerIp,
    ];

    pub fn status(self) -> u16 {
        match self {
            Refusal::MaxConnections | Refusal::Draining => 503,
            Refusal::MaxConnectionsPerIp
            | Refusal::HandshakeRate
            | Refusal::MaxConnectionsPerUser
            | Refusal::TcpConnectionsPerIp => 429,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "MAX_CONNECTIONS",
            Refusal::MaxConnectionsPerIp => "MAX_CONNECTIONS_PER_IP",
            Refusal::HandshakeRate => "HANDSHAKE_RATE",
            Refusal::MaxConnectionsPerUser => "CONNECTION_LIMIT",
            Refusal::TcpConnectionsPerIp => "TCP_CONNECTIONS_PER_IP",
            Refusal::Draining => "DRAINING",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "the gateway is at its connection capacity; retry later",
            Refusal::MaxConnectionsPerIp => "too many connections from this address",
            Refusal::HandshakeRate => "too many handshakes from this address; slow down",
            Refusal::MaxConnectionsPerUser => "too many connections for this user",
            Refusal::TcpConnectionsPerIp => "too many TCP connections from this address",
            Refusal::Draining => "the gateway is restarting; reconnect shortly",
        }
    }
}

#[derive(Debug)]
struct IpEntry {
    /// Engine.IO sessions.
    connections: usize,
    tcp: usize,
    /// Buffered input charged to this address.
    input: usize,
    handshakes: TokenBucket,
    recoveries: TokenBucket,
}

impl IpEntry {
    fn holds_nothing(&self, now_ms: u64) -> bool {
        self.connections == 0
            && self.tcp == 0
            && self.input == 0
            && self.handshakes.is_full(now_ms)
            && self.recoveries.is_full(now_ms)
    }
}

/// How often addresses that hold nothing are forgotten.
const SWEEP_EVERY_MS: u64 = 10_000;

#[derive(Debug)]
pub struct Limits {
    settings: LimitSettings,
    /// Refusals by reason, in `Refusal::ALL` order.
    refused: [AtomicU64; 5],
    total: AtomicUsize,
    input: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, IpEntry>>,
    per_user: Mutex<HashMap<Arc<str>, usize>>,
    last_sweep_ms: AtomicU64,
    rooms: AtomicUsize,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            settings,
            refused: Default::default(),
            total: AtomicUsize::new(0),
            input: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
            last_sweep_ms: AtomicU64::new(0),
            rooms: AtomicUsize::new(0),
        }
    }

    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Refusals so far, by reason.
    pub fn refusals(&self) -> [(Refusal, u64); 5] {
        std::array::from_fn(|i| (Refusal::ALL[i], self.refused[i].load(Ordering::Relaxed)))
    }

    fn count(&self, r: Refusal) -> Refusal {
        let i = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        r
    }

    fn entry<'a>(
        &self,
        per_ip: &'a mut HashMap<IpAddr, IpEntry>,
        ip: IpAddr,
        now_ms: u64,
    ) -> &'a mut IpEntry {
        let s = &self.settings;
        per_ip.entry(ip).or_insert_with(|| IpEntry {
            connections: 0,
            tcp: 0,
            input: 0,
            handshakes: TokenBucket::new(
                s.handshakes_per_sec_per_ip,
                s.handshake_burst_per_ip,
                now_ms,
            ),
            recoveries: TokenBucket::new(
                s.handshakes_per_sec_per_ip,
                s.handshake_burst_per_ip,
                now_ms,
            ),
        })
    }

    /// Forgets addresses that hold nothing, at most once per `SWEEP_EVERY_MS`, so the table
    /// does not grow without bound and no handshake pays for a walk over it.
    fn sweep(&self, per_ip: &mut HashMap<IpAddr, IpEntry>, now_ms: u64) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        per_ip.retain(|_, e| !e.holds_nothing(now_ms));
    }

    /// Admits a new session from `ip`, counting it, or says why not.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        self.admit_uncounted(ip, now_ms).map_err(|r| self.count(r))
    }

    fn admit_uncounted(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let s = &self.settings;
        let mut per_ip = self.per_ip.lock();
        self.sweep(&mut per_ip, now_ms);
        let entry = self.entry(&mut per_ip, ip, now_ms);
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
        Ok(())
    }

    pub fn release(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.per_ip.lock();
        if let Some(e) = per_ip.get_mut(&ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Counts a TCP connection from `ip` as it is accepted, unless the address holds its cap.
    pub fn admit_tcp(&self, ip: IpAddr, now_ms: u64) -> bool {
        let mut per_ip = self.per_ip.lock();
        let entry = self.entry(&mut per_ip, ip, now_ms);
        if entry.tcp >= self.settings.max_tcp_per_ip {
            drop(per_ip);
            self.count(Refusal::TcpConnectionsPerIp);
            return false;
        }
        entry.tcp += 1;
        true
    }

    pub fn release_tcp(&self, ip: IpAddr) {
        if let Some(e) = self.per_ip.lock().get_mut(&ip) {
            e.tcp = e.tcp.saturating_sub(1);
        }
    }

    /// Whether `ip` may buffer more input beyond the free allowance: its own budget and the
    /// gateway's both have room.
    pub fn input_available(&self, ip: IpAddr) -> bool {
        if self.input.load(Ordering::Relaxed) >= self.settings.max_input {
            return false;
        }
        self.per_ip
            .lock()
            .get(&ip)
            .is_none_or(|e| e.input < self.settings.max_input_per_ip)
    }

    /// Moves `ip`'s buffered-input charge from `from` to `to` bytes.
    pub fn recharge_input(&self, ip: IpAddr, from: usize, to: usize, now_ms: u64) {
        if from == to {
            return;
        }
        let mut per_ip = self.per_ip.lock();
        let entry = self.entry(&mut per_ip, ip, now_ms);
        entry.input = (entry.input + to).saturating_sub(from);
        if to > from {
            self.input.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.input.fetch_sub(from - to, Ordering::Relaxed);
        }
    }

    /// Buffered input charged to all addresses.
    pub fn input_buffered(&self) -> usize {
        self.input.load(Ordering::Relaxed)
    }

    /// Whether `ip` may try one more connection state recovery now (each attempt searches
    /// the replay log).
    pub fn admit_recovery(&self, ip: IpAddr, now_ms: u64) -> bool {
        let mut per_ip = self.per_ip.lock();
        self.entry(&mut per_ip, ip, now_ms).recoveries.take(now_ms)
    }

    /// Whether `new` more rooms may be created. A soft cap: shards creating rooms at the
    /// same moment may pass it by a few.
    pub fn rooms_available(&self, new: usize) -> bool {
        new == 0 || self.rooms.load(Ordering::Relaxed) + new <= self.settings.max_rooms
    }

    /// A shard created (`true`) or removed a room.
    pub fn room_changed(&self, created: bool) {
        if created {
            self.rooms.fetch_add(1, Ordering::Relaxed);
        } else {
            self.rooms.fetch_sub(1, Ordering::Relaxed);
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

    /// TCP connections counted for `ip` (for tests and invariant checks).
    pub fn tcp_connections(&self, ip: IpAddr) -> usize {
        self.per_ip.lock().get(&ip).map_or(0, |e| e.tcp)
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
            ..LimitSettings::default()
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

    #[test]
    fn tcp_connections_and_input_per_address() {
        let l = Limits::new(LimitSettings {
            max_tcp_per_ip: 2,
            max_input_per_ip: 100,
            max_input: 150,
            ..Default::default()
        });
        assert!(l.admit_tcp(ip(1), 0) && l.admit_tcp(ip(1), 0));
        assert!(!l.admit_tcp(ip(1), 0));
        assert!(l.admit_tcp(ip(2), 0));
        l.release_tcp(ip(1));
        assert!(l.admit_tcp(ip(1), 0));
        assert_eq!(l.refusals()[4], (Refusal::TcpConnectionsPerIp, 1));
        l.recharge_input(ip(1), 0, 100, 0);
        assert!(!l.input_available(ip(1)), "its own budget is full");
        assert!(l.input_available(ip(2)));
        l.recharge_input(ip(2), 0, 60, 0);
        assert!(!l.input_available(ip(3)), "the gateway's budget is full");
        l.recharge_input(ip(1), 100, 10, 0);
        assert!(l.input_available(ip(1)) && l.input_available(ip(3)));
        assert_eq!(l.input_buffered(), 70);
    }

    #[test]
    fn addresses_that_hold_nothing_are_swept_now_and_then() {
        let l = Limits::new(LimitSettings::default());
        for n in 0..50 {
            assert!(l.admit(ip(n), 0).is_ok());
            l.release(ip(n));
        }
        assert_eq!(l.per_ip.lock().len(), 50);
        assert!(l.admit(ip(200), 5_000).is_ok());
        assert_eq!(l.per_ip.lock().len(), 51, "not before the sweep interval");
        assert!(l.admit(ip(201), 20_000).is_ok());
        assert_eq!(
            l.per_ip.lock().len(),
            2,
            "only the addresses holding a session stay"
        );
    }
}
