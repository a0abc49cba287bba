//! Connection caps shared by all shards: global, per IP and per user, and the handshake rate
//! per IP. Touched once per handshake and once per close, never per message; per-connection
//! message rates live with each session (`bucket`).

pub mod bucket;
pub mod cost;
pub mod descriptors;

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
    /// TCP connections the gateway holds at most (below its descriptor limit, so the
    /// internal listener, Redis and the log always have descriptors).
    pub max_tcp: usize,
    /// Input one address's connections may hold buffered (partial messages).
    pub max_input_per_ip: usize,
    /// The same, all addresses together (connections holding less than `SMALL_INPUT` may
    /// read past it).
    pub max_input: usize,
    /// Rooms all shards together hold at most.
    pub max_rooms: usize,
    /// Depth/speed views the market computes at most (`market::demand`).
    pub max_views: usize,
    /// View subscriptions of one address, all its connections together.
    pub max_views_per_ip: usize,
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
            max_tcp: 100_000,
            max_input_per_ip: 8 << 20,
            max_input: 32 << 20,
            max_rooms: 100_000,
            max_views: 10_000,
            max_views_per_ip: 1_000,
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
    /// A TCP connection over the gateway's cap, closed as it is accepted.
    TcpConnections,
    /// The gateway is draining for a restart.
    Draining,
    /// The instance is catching up with the cluster stream.
    CatchingUp,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerIp,
        Refusal::HandshakeRate,
        Refusal::MaxConnectionsPerUser,
        Refusal::TcpConnectionsPerIp,
        Refusal::TcpConnections,
    ];

    pub fn status(self) -> u16 {
        match self {
            Refusal::MaxConnections
            | Refusal::TcpConnections
            | Refusal::Draining
            | Refusal::CatchingUp => 503,
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
            Refusal::TcpConnections => "TCP_CONNECTIONS",
            Refusal::Draining => "DRAINING",
            Refusal::CatchingUp => "CATCHING_UP",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "the gateway is at its connection capacity; retry later",
            Refusal::MaxConnectionsPerIp => "too many connections from this address",
            Refusal::HandshakeRate => "too many handshakes from this address; slow down",
            Refusal::MaxConnectionsPerUser => "too many connections for this user",
            Refusal::TcpConnectionsPerIp => "too many TCP connections from this address",
            Refusal::TcpConnections => "the gateway is at its TCP connection capacity",
            Refusal::Draining => "the gateway is restarting; reconnect shortly",
            Refusal::CatchingUp => {
                "this instance is catching up with the event stream; reconnect shortly"
            }
        }
    }
}

/// The unit per-address limits count: an IPv4 address, or an IPv6 /64. A host or a site is
/// routinely given a whole /64, so counting single IPv6 addresses would let one client pose
/// as billions. An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Input a connection may hold whatever the gateway's input budget: ordinary messages keep
/// flowing while large ones on their way in have used the budget up.
pub const SMALL_INPUT: usize = 4096;

/// One address's buffered input. Each connection holds its address's account, so charging
/// and checking it on every read takes no lock.
#[derive(Debug, Clone, Default)]
pub struct InputAccount(Option<Arc<AtomicUsize>>);

impl InputAccount {
    /// An account charged to no address (a trusted proxy's connection before a request
    /// names its client): only the gateway's budget applies.
    pub fn unattributed() -> InputAccount {
        InputAccount(None)
    }

    /// Input buffered by this account's address (0 when unattributed).
    pub fn held(&self) -> usize {
        self.0.as_ref().map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct IpEntry {
    /// Engine.IO sessions.
    connections: usize,
    tcp: usize,
    /// Buffered input charged to this address, shared with its connections.
    input: Arc<AtomicUsize>,
    handshakes: TokenBucket,
    recoveries: TokenBucket,
    /// Subscriptions to depth/speed views.
    views: usize,
}

impl IpEntry {
    fn holds_nothing(&self, now_ms: u64) -> bool {
        self.connections == 0
            && self.tcp == 0
            && self.views == 0
            && Arc::strong_count(&self.input) == 1
            && self.input.load(Ordering::Relaxed) == 0
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
    refused: [AtomicU64; 6],
    total: AtomicUsize,
    tcp: AtomicUsize,
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
            tcp: AtomicUsize::new(0),
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
    pub fn refusals(&self) -> [(Refusal, u64); 6] {
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
            input: Arc::default(),
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
            views: 0,
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
        let ip = address_key(ip);
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
        let ip = address_key(ip);
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.per_ip.lock();
        if let Some(e) = per_ip.get_mut(&ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Counts a TCP connection as it is accepted, against the gateway's cap and, given its
    /// address (none for a trusted proxy), against that address's, or says which is full.
    /// `making_room`: the caller closes another connection right after, so the gateway's cap
    /// may be passed by one meanwhile.
    pub fn admit_tcp(
        &self,
        ip: Option<IpAddr>,
        now_ms: u64,
        making_room: bool,
    ) -> Result<(), Refusal> {
        let ip = ip.map(address_key);
        let cap = self.settings.max_tcp + usize::from(making_room);
        if self.tcp.fetch_add(1, Ordering::Relaxed) >= cap {
            self.tcp.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TcpConnections);
        }
        let Some(ip) = ip else {
            return Ok(());
        };
        let mut per_ip = self.per_ip.lock();
        let entry = self.entry(&mut per_ip, ip, now_ms);
        if entry.tcp >= self.settings.max_tcp_per_ip {
            drop(per_ip);
            self.tcp.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TcpConnectionsPerIp);
        }
        entry.tcp += 1;
        Ok(())
    }

    /// Counts a refusal of `admit_tcp` that stands (the caller found no room to make).
    pub fn refused_tcp(&self, r: Refusal) {
        self.count(r);
    }

    pub fn release_tcp(&self, ip: Option<IpAddr>) {
        let ip = ip.map(address_key);
        self.tcp.fetch_sub(1, Ordering::Relaxed);
        let Some(ip) = ip else {
            return;
        };
        if let Some(e) = self.per_ip.lock().get_mut(&ip) {
            e.tcp = e.tcp.saturating_sub(1);
        }
    }

    /// TCP connections held, all addresses together.
    pub fn tcp_total(&self) -> usize {
        self.tcp.load(Ordering::Relaxed)
    }

    /// The input account of `ip`, for a connection to hold.
    pub fn input_account(&self, ip: IpAddr, now_ms: u64) -> InputAccount {
        let ip = address_key(ip);
        let mut per_ip = self.per_ip.lock();
        InputAccount(Some(self.entry(&mut per_ip, ip, now_ms).input.clone()))
    }

    /// How many more bytes a connection holding `held` and charging `account` may read now:
    /// what is left of its address's budget, and of the gateway's (or, when that is spent,
    /// up to `SMALL_INPUT`).
    pub fn input_allowance(&self, account: &InputAccount, held: usize) -> usize {
        let own = account.0.as_ref().map_or(usize::MAX, |a| {
            self.settings
                .max_input_per_ip
                .saturating_sub(a.load(Ordering::Relaxed))
        });
        let all = self
            .settings
            .max_input
            .saturating_sub(self.input.load(Ordering::Relaxed))
            .max(SMALL_INPUT.saturating_sub(held));
        own.min(all)
    }

    /// Moves a connection's input charge from `from` to `to` bytes.
    pub fn recharge_input(&self, account: &InputAccount, from: usize, to: usize) {
        if to > from {
            self.input.fetch_add(to - from, Ordering::Relaxed);
            if let Some(a) = &account.0 {
                a.fetch_add(to - from, Ordering::Relaxed);
            }
        } else if from > to {
            self.input.fetch_sub(from - to, Ordering::Relaxed);
            if let Some(a) = &account.0 {
                a.fetch_sub(from - to, Ordering::Relaxed);
            }
        }
    }

    /// Buffered input charged to all addresses.
    pub fn input_buffered(&self) -> usize {
        self.input.load(Ordering::Relaxed)
    }

    /// Whether `ip` may try one more connection state recovery now (each attempt searches
    /// the replay log).
    pub fn admit_recovery(&self, ip: IpAddr, now_ms: u64) -> bool {
        let ip = address_key(ip);
        let mut per_ip = self.per_ip.lock();
        self.entry(&mut per_ip, ip, now_ms).recoveries.take(now_ms)
    }

    /// Whether `new` more rooms may be created. A soft cap: shards creating rooms at the
    /// same moment may pass it by a few.
    pub fn rooms_available(&self, new: usize) -> bool {
        new == 0 || self.rooms.load(Ordering::Relaxed) + new <= self.settings.max_rooms
    }

    /// Whether `ip` may subscribe to `new` more views, `opening` of them not computed yet
    /// while `open` are. Views cost the market per update of their symbol, so they are
    /// bounded apart from rooms: neither one address nor all of them can take the room budget
    /// the default channels need.
    pub fn views_available(&self, ip: IpAddr, new: usize, opening: usize, open: usize) -> bool {
        if new == 0 {
            return true;
        }
        let s = &self.settings;
        let held = self
            .per_ip
            .lock()
            .get(&address_key(ip))
            .map_or(0, |e| e.views);
        held + new <= s.max_views_per_ip && open + opening <= s.max_views
    }

    pub fn max_views_per_ip(&self) -> usize {
        self.settings.max_views_per_ip
    }

    /// A connection from `ip` joined (`true`) or left a view.
    pub fn view_subscription(&self, ip: IpAddr, joined: bool, now_ms: u64) {
        let ip = address_key(ip);
        let mut per_ip = self.per_ip.lock();
        let e = self.entry(&mut per_ip, ip, now_ms);
        e.views = if joined {
            e.views + 1
        } else {
            e.views.saturating_sub(1)
        };
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
        let ip = address_key(ip);
        self.per_ip.lock().get(&ip).map_or(0, |e| e.tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let limits = Limits::new(LimitSettings {
            max_connections_per_ip: 1,
            ..LimitSettings::default()
        });
        assert!(limits.admit(a, 0).is_ok());
        assert_eq!(limits.admit(b, 0), Err(Refusal::MaxConnectionsPerIp));
        assert!(limits.admit(c, 0).is_ok());
    }

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
            max_input_per_ip: 10_000,
            max_input: 15_000,
            ..Default::default()
        });
        let one = Some(ip(1));
        assert!(l.admit_tcp(one, 0, false).is_ok() && l.admit_tcp(one, 0, false).is_ok());
        assert_eq!(
            l.admit_tcp(one, 0, false),
            Err(Refusal::TcpConnectionsPerIp)
        );
        l.refused_tcp(Refusal::TcpConnectionsPerIp);
        assert!(l.admit_tcp(Some(ip(2)), 0, false).is_ok());
        l.release_tcp(one);
        assert!(l.admit_tcp(one, 0, false).is_ok());
        assert_eq!(l.refusals()[4], (Refusal::TcpConnectionsPerIp, 1));
        assert_eq!(l.tcp_total(), 3);
        let (a1, a2) = (l.input_account(ip(1), 0), l.input_account(ip(2), 0));
        l.recharge_input(&a1, 0, 10_000);
        assert_eq!(l.input_allowance(&a1, 10_000), 0, "its own budget is spent");
        assert_eq!(l.input_allowance(&a2, 0), 5_000);
        l.recharge_input(&a2, 0, 6_000);
        let a3 = l.input_account(ip(3), 0);
        assert_eq!(
            l.input_allowance(&a3, 0),
            SMALL_INPUT,
            "the gateway's budget is spent: small messages still flow"
        );
        assert_eq!(l.input_allowance(&a3, SMALL_INPUT), 0);
        l.recharge_input(&a1, 10_000, 1_000);
        assert_eq!(l.input_allowance(&a1, 1_000), 8_000);
        assert_eq!(l.input_allowance(&InputAccount::unattributed(), 0), 8_000);
        assert_eq!(l.input_buffered(), 7_000);
    }

    #[test]
    fn the_gateway_caps_tcp_connections_of_every_address_and_proxy() {
        let l = Limits::new(LimitSettings {
            max_tcp: 2,
            ..Default::default()
        });
        assert!(l.admit_tcp(None, 0, false).is_ok());
        assert!(l.admit_tcp(Some(ip(1)), 0, false).is_ok());
        assert_eq!(
            l.admit_tcp(Some(ip(2)), 0, false),
            Err(Refusal::TcpConnections)
        );
        assert_eq!(l.tcp_connections(ip(2)), 0, "a refused one is not counted");
        l.release_tcp(None);
        assert!(l.admit_tcp(Some(ip(2)), 0, false).is_ok());
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
