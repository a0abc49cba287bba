//! What a connection's input costs the gateway, charged to the client that sent it.
//!
//! Memory: every byte a connection holds of a message still arriving (its input buffer, a
//! fragmented WebSocket message) is charged to its address's input budget and the gateway's.
//! The driver reads no more than what is left of them, and a message must be complete within
//! the handshake timeout of the moment the connection began holding it.
//!
//! Work: what one read's messages cost (`limits::cost`: messages, bytes, rooms changed,
//! answers sent) is charged to the address's work budget on this shard. An address in debt is
//! not read until the debt is paid, so a client that makes the shard work hard slows down
//! only itself.

use super::conn::{self, HttpState, Role};
use super::ids::ConnId;
use super::timers::Timer;
use super::{Engine, OWN_OUTBOUND, PIPELINED_INPUT};
use crate::limits::bucket::TokenBucket;
use crate::limits::cost::Work;
use crate::limits::InputAccount;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// How often addresses whose work budget is full again are forgotten.
const SWEEP_EVERY_MS: u64 = 10_000;

/// Each client address's work budget on this shard, in events.
#[derive(Debug)]
pub(super) struct AddressWork {
    buckets: HashMap<IpAddr, TokenBucket>,
    rate: f64,
    burst: f64,
    last_sweep_ms: u64,
}

impl AddressWork {
    pub fn new(rate_per_sec: f64) -> AddressWork {
        AddressWork {
            buckets: HashMap::new(),
            rate: rate_per_sec,
            burst: rate_per_sec * 2.0,
            last_sweep_ms: 0,
        }
    }

    /// Charges `work` to `ip`; returns how long until its debt is paid (zero: none).
    pub fn charge(&mut self, ip: IpAddr, work: &Work, now_ms: u64) -> u64 {
        let ip = crate::limits::address_key(ip);
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self
            .buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(rate, burst, now_ms));
        bucket.charge(work.cost(), now_ms);
        bucket.debt_paid_in_ms(now_ms)
    }

    pub fn in_debt(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.buckets
            .get(&crate::limits::address_key(ip))
            .is_some_and(|b| b.in_debt(now_ms))
    }

    /// Forgets addresses whose budget is full again, now and then.
    pub fn sweep(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_sweep_ms) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        self.buckets.retain(|_, b| !b.is_full(now_ms));
    }
}

impl Engine {
    /// How many bytes the driver may read from `c` now; zero pauses reading (the driver
    /// reads again once this is positive). Reading pauses while the connection holds more
    /// outbound than the soft limit (its client is not reading what it asked for), while its
    /// address is in work debt, while a plain HTTP connection has a response pending and a
    /// request's worth of pipelined input waiting, and while the input budgets are spent.
    pub fn read_allowance(&self, c: ConnId) -> usize {
        let Some(conn) = self.live_conn(c) else {
            return 0;
        };
        let out = &conn.out;
        if out.charge() > self.settings.outbound_soft_limit || out.own_charge() > OWN_OUTBOUND {
            return 0;
        }
        if conn
            .client
            .is_some_and(|ip| self.work.in_debt(ip, self.now.unix_ms))
        {
            return 0;
        }
        let role = match &conn.role {
            Role::WebSocket(_) | Role::Http(HttpState::Body { .. }) => usize::MAX,
            Role::Http(HttpState::Head) if conn.out.is_empty() => usize::MAX,
            Role::Http(_) => PIPELINED_INPUT.saturating_sub(conn.inbuf.len()),
        };
        role.min(
            self.shared
                .limits
                .input_allowance(&conn.input, conn.input_charged),
        )
    }

    /// Charges what `c` holds of messages still arriving to its input budgets, and gives it
    /// until the handshake timeout to complete them. A parked poll's pipelined requests are
    /// complete: they wait for the poll's answer, with no deadline.
    pub(super) fn settle_input(&mut self, c: ConnId) {
        let (now, timeout) = (self.now, self.settings.handshake_timeout);
        let Some(conn) = conn::live_mut(&mut self.conns, c) else {
            return;
        };
        let held = conn.held_input();
        if held != conn.input_charged {
            self.shared
                .limits
                .recharge_input(&conn.input, conn.input_charged, held);
            conn.input_charged = held;
        }
        let parked = matches!(conn.role, Role::Http(HttpState::PendingGet { .. }));
        if held == 0 || parked {
            conn.input_deadline = None;
        } else if conn.input_deadline.is_none() {
            let at = now.mono + timeout;
            conn.input_deadline = Some(at);
            let generation = conn.generation;
            self.timers
                .schedule(at, Timer::InputDeadline(c, generation));
        }
    }

    /// Charges `c`'s input and work to `client` from now on: the address a trusted proxy's
    /// request names.
    pub(super) fn attribute(&mut self, c: ConnId, client: IpAddr) {
        if self
            .live_conn(c)
            .is_none_or(|conn| conn.client == Some(client))
        {
            return;
        }
        let account = self.shared.limits.input_account(client, self.now.unix_ms);
        let Some(conn) = conn::live_mut(&mut self.conns, c) else {
            return;
        };
        let limits = &self.shared.limits;
        limits.recharge_input(&conn.input, conn.input_charged, 0);
        limits.recharge_input(&account, 0, conn.input_charged);
        conn.input = account;
        conn.client = Some(client);
    }

    /// The input account of a new connection from `peer`: its own, or none for a trusted
    /// proxy until a request names the client.
    pub(super) fn account_of(&self, peer: IpAddr) -> (Option<IpAddr>, InputAccount) {
        if self.is_trusted_proxy(peer) {
            return (None, InputAccount::unattributed());
        }
        let account = self.shared.limits.input_account(peer, self.now.unix_ms);
        (Some(peer), account)
    }

    /// Starts counting the work one read of `c` causes.
    pub(super) fn begin_work(&mut self, input_bytes: usize) {
        self.work_done = Some(Work {
            input_bytes,
            ..Work::default()
        });
    }

    /// Adds to the work being counted (nothing is counted outside a read).
    pub(super) fn count_work(&mut self, f: impl FnOnce(&mut Work)) {
        if let Some(w) = self.work_done.as_mut() {
            f(w);
        }
    }

    /// Charges the work counted since `begin_work` to `client`; an address left in debt gets
    /// a wake-up for when it is paid, so its connections are read again then.
    pub(super) fn end_work(&mut self, client: Option<IpAddr>) {
        let Some(work) = self.work_done.take() else {
            return;
        };
        if let Some(ip) = client {
            self.charge_work(ip, &work);
        }
    }

    /// Charges `work` done for `ip` outside a read (a recovery replay answered from Redis).
    pub(super) fn charge_work(&mut self, ip: IpAddr, work: &Work) {
        let wait = self.work.charge(ip, work, self.now.unix_ms);
        if wait > 0 {
            self.counters.work_pauses += 1;
            let at = self.now.mono + Duration::from_millis(wait);
            self.timers.schedule(at, Timer::WorkPaid);
        }
    }
}
