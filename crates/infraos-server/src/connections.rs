//! Connection accounting at the edge. Every accepted TCP connection holds a slot: at most
//! `maxConnections` in all and `maxConnectionsPerAddress` from one source address, so that
//! connections that never speak, or HTTP/2 connections left open, cannot use up the process's
//! file descriptors and starve `/healthz`, agents' heartbeats and everyone else.
//!
//! ```text
//!  accept ─► admit(addr) ─┬─ under both caps ───────────────► slot (Handshaking)
//!                         ├─ at a cap, an idle one to evict ─► the idle one is closed,
//!                         │                                    the newcomer gets its slot
//!                         └─ at a cap, every one busy ───────► closed at accept (no TLS)
//!
//!  Handshaking ─TLS─► Fresh ─request─► Busy ─answered─► Anonymous | Authenticated ─► Busy …
//!  (a client certificate makes a connection Authenticated at the handshake)
//!  idle ones are evicted in that order of standing, the longest idle first within one;
//!  busy ones (a request or a response body in flight) never are
//! ```
//! Evicting instead of refusing is what keeps the server reachable when a flood holds every
//! slot: a newcomer displaces a connection that never finished its handshake or never made
//! a request before it displaces an agent's connection between two heartbeats, so a flood
//! without credentials only ever evicts itself. Connections idle for `idleTimeout` are closed
//! (HTTP/2: GOAWAY), and HTTP/2 connections are pinged so that a vanished peer is found out.

mod body;
mod handshakes;
mod linger;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use infraos_api::Duration;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use body::{Answer, RequestBody, hold_request_body};
pub use handshakes::HandshakeWorkers;
pub use linger::Lingering;

/// `connectionLimits:` in server.yaml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open connections in all. Kept below the process's open-files limit with headroom
    /// (an eighth of it, at least 512) whatever is configured.
    pub max_connections: usize,
    /// Open connections from one source address (agents behind one NAT share an address:
    /// raise it for such sites).
    pub max_connections_per_address: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A TLS handshake not finished by then is abandoned.
    pub handshake_timeout: Duration,
    /// An HTTP/1.1 request head (also the next one on a kept-alive connection) must arrive
    /// within this (slowloris).
    pub header_timeout: Duration,
    /// HTTP/2 connections are pinged after this long without a frame from the peer…
    pub keepalive_interval: Duration,
    /// …and closed when the ping is not answered within this.
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 16_384,
            max_connections_per_address: 1024,
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl ConnectionLimits {
    /// Settings that parse but cannot work, named by field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("connectionLimits.maxConnections: must be at least 1".into());
        }
        if self.max_connections_per_address == 0 {
            return Err("connectionLimits.maxConnectionsPerAddress: must be at least 1".into());
        }
        for (field, d) in [
            ("idleTimeout", &self.idle_timeout),
            ("handshakeTimeout", &self.handshake_timeout),
            ("headerTimeout", &self.header_timeout),
            ("keepaliveInterval", &self.keepalive_interval),
            ("keepaliveTimeout", &self.keepalive_timeout),
        ] {
            if d.as_millis() < 100 {
                return Err(format!("connectionLimits.{field}: must be at least 100ms"));
            }
        }
        Ok(())
    }

    /// The caps in force: the configured ones, the total kept below `open_files` (the
    /// process's limit, when known) with headroom for the store, watches and connections
    /// being closed.
    pub fn caps(&self, open_files: Option<u64>) -> Caps {
        let fd_room = open_files.map_or(usize::MAX, |n| {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            n.saturating_sub((n / 8).max(512)).max(1)
        });
        let total = self.max_connections.min(fd_room);
        Caps {
            total,
            per_address: self.max_connections_per_address.min(total),
            // Evicted connections keep their descriptor until they are closed (at most a
            // second): bounded too, so that eviction can never exceed the headroom.
            closing: (total / 16).max(16),
        }
    }
}

/// The caps in force (see [`ConnectionLimits::caps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
    pub closing: usize,
}

/// How much a connection has shown of itself: the order in which idle ones are evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    /// Accepted; its TLS handshake is not finished.
    Handshaking,
    /// TLS done, no request yet.
    Fresh,
    /// Carried requests, none of them authenticated.
    Anonymous,
    /// Carried an authenticated request, or presented a client certificate (agents).
    Authenticated,
}

/// Why a connection was closed at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection from the address is busy.
    PerAddress,
    /// Every connection is busy.
    Total,
    /// Too many evicted connections are still closing.
    Closing,
}

/// An idle connection, ordered for eviction: lowest standing, then longest idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct IdleKey {
    standing: Standing,
    since: u64,
    id: u64,
}

struct Entry {
    addr: IpAddr,
    standing: Standing,
    /// Set while no request is in flight (the connection may be evicted).
    idle: Option<IdleKey>,
    evicting: bool,
    conn: Arc<Conn>,
}

#[derive(Default)]
struct Address {
    open: usize,
    evicting: usize,
    idle: BTreeSet<IdleKey>,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<u64, Entry>,
    addresses: HashMap<IpAddr, Address>,
    idle: BTreeSet<IdleKey>,
    evicting: usize,
    /// Orders idle periods: a counter, not a clock, so keys never collide.
    seq: u64,
}

impl Registry {
    fn unmark_idle(&mut self, id: u64) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(key) = entry.idle.take() {
            self.idle.remove(&key);
            if let Some(a) = self.addresses.get_mut(&entry.addr) {
                a.idle.remove(&key);
            }
        }
    }

    fn mark_idle(&mut self, id: u64) {
        self.unmark_idle(id);
        self.seq += 1;
        let since = self.seq;
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.evicting {
            return;
        }
        let key = IdleKey {
            standing: entry.standing,
            since,
            id,
        };
        entry.idle = Some(key);
        self.idle.insert(key);
        if let Some(a) = self.addresses.get_mut(&entry.addr) {
            a.idle.insert(key);
        }
    }

    /// Evicts the first idle connection of `from` (an address), or of all; false when every
    /// one is busy.
    fn evict_one(&mut self, from: Option<IpAddr>) -> bool {
        let key = match from {
            Some(addr) => self
                .addresses
                .get(&addr)
                .and_then(|a| a.idle.first().copied()),
            None => self.idle.first().copied(),
        };
        let Some(key) = key else {
            return false;
        };
        self.unmark_idle(key.id);
        let Some(entry) = self.entries.get_mut(&key.id) else {
            return false;
        };
        entry.evicting = true;
        self.evicting += 1;
        if let Some(a) = self.addresses.get_mut(&entry.addr) {
            a.evicting += 1;
        }
        entry.conn.evict();
        true
    }
}

/// Every open connection of the listener, and the caps they are held to.
pub struct Connections {
    caps: Caps,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    /// Milliseconds since `started` of the last warning about refusals (one per 10 s).
    last_warning: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("caps", &self.caps)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

/// What [`Connections::admit`] hands an accepted connection: its slot (released when dropped)
/// and its shared state.
pub struct Admitted {
    pub slot: Slot,
    pub conn: Arc<Conn>,
}

impl Connections {
    pub fn new(caps: Caps) -> Arc<Connections> {
        Arc::new(Connections {
            caps,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Connections open now (evicted ones still closing included).
    pub fn open(&self) -> usize {
        self.registry.lock().entries.len()
    }

    /// Connections open now from `addr`.
    pub fn open_from(&self, addr: IpAddr) -> usize {
        self.registry
            .lock()
            .addresses
            .get(&addr)
            .map_or(0, |a| a.open)
    }

    /// Connections closed at accept, and idle ones evicted for newcomers, since the start.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.refused.load(Ordering::Relaxed),
            self.evicted.load(Ordering::Relaxed),
        )
    }

    /// Takes a slot for a connection from `addr`, evicting an idle connection at a cap.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Admitted, Refusal> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut reg = self.registry.lock();
        let outcome = self.make_room(&mut reg, addr);
        if let Err(why) = outcome {
            drop(reg);
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.warn_refused(why);
            return Err(why);
        }
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            evicted: AtomicBool::new(false),
            evict_signal: Notify::new(),
            registry: Arc::downgrade(self),
            id,
        });
        reg.entries.insert(
            id,
            Entry {
                addr,
                standing: Standing::Handshaking,
                idle: None,
                evicting: false,
                conn: Arc::clone(&conn),
            },
        );
        reg.addresses.entry(addr).or_default().open += 1;
        reg.mark_idle(id);
        Ok(Admitted {
            slot: Slot {
                registry: Arc::clone(self),
                id,
            },
            conn,
        })
    }

    fn make_room(&self, reg: &mut Registry, addr: IpAddr) -> Result<(), Refusal> {
        let (open, evicting) = reg
            .addresses
            .get(&addr)
            .map_or((0, 0), |a| (a.open, a.evicting));
        let mut evicted = 0;
        if open - evicting >= self.caps.per_address {
            if reg.evicting >= self.caps.closing {
                return Err(Refusal::Closing);
            }
            if !reg.evict_one(Some(addr)) {
                return Err(Refusal::PerAddress);
            }
            evicted += 1;
        }
        if reg.entries.len() - reg.evicting >= self.caps.total {
            if reg.evicting >= self.caps.closing {
                return Err(Refusal::Closing);
            }
            if !reg.evict_one(None) {
                return Err(Refusal::Total);
            }
            evicted += 1;
        }
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        Ok(())
    }

    fn warn_refused(&self, why: Refusal) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 10_000 && last != 0 {
            return;
        }
        if self
            .last_warning
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let (refused, evicted) = self.counters();
            tracing::warn!(
                reason = ?why,
                refused,
                evicted,
                max_connections = self.caps.total,
                max_connections_per_address = self.caps.per_address,
                "connections refused at accept: every slot is busy (connectionLimits)"
            );
        }
    }

    fn set_standing(&self, id: u64, standing: Standing) {
        let mut reg = self.registry.lock();
        let Some(entry) = reg.entries.get_mut(&id) else {
            return;
        };
        if entry.standing >= standing {
            return;
        }
        entry.standing = standing;
        if entry.idle.is_some() {
            reg.mark_idle(id);
        }
    }

    fn release(&self, id: u64) {
        let mut reg = self.registry.lock();
        reg.unmark_idle(id);
        let Some(entry) = reg.entries.remove(&id) else {
            return;
        };
        if entry.evicting {
            reg.evicting -= 1;
        }
        if let Some(a) = reg.addresses.get_mut(&entry.addr) {
            a.open -= 1;
            if entry.evicting {
                a.evicting -= 1;
            }
            if a.open == 0 {
                reg.addresses.remove(&entry.addr);
            }
        }
    }
}

/// A connection's place in the count; dropping it frees the place (after the socket closed).
pub struct Slot {
    registry: Arc<Connections>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.release(self.id);
    }
}

/// One connection's state, shared by its task, its requests and the registry.
pub struct Conn {
    id: u64,
    registry: std::sync::Weak<Connections>,
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
    evicted: AtomicBool,
    evict_signal: Notify,
}

impl Conn {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict_signal.notify_one();
    }

    /// Resolves when the registry evicted this connection for a newcomer.
    pub async fn evicted(&self) {
        while !self.evicted.load(Ordering::Acquire) {
            self.evict_signal.notified().await;
        }
    }

    fn set_standing(&self, standing: Standing) {
        if let Some(r) = self.registry.upgrade() {
            r.set_standing(self.id, standing);
        }
    }

    /// The TLS handshake finished; `certificate`: the client presented one (an agent).
    pub fn handshaken(&self, certificate: bool) {
        *self.last_active.lock() = Instant::now();
        self.set_standing(if certificate {
            Standing::Authenticated
        } else {
            Standing::Fresh
        });
    }

    /// A request on this connection was authenticated.
    pub fn authenticated(&self) {
        self.set_standing(Standing::Authenticated);
    }

    /// A request starts: the connection is busy (and cannot be evicted) until the guard,
    /// carried by the response body, is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(r) = self.registry.upgrade()
        {
            let mut reg = r.registry.lock();
            reg.unmark_idle(self.id);
            if let Some(e) = reg.entries.get_mut(&self.id)
                && e.standing < Standing::Anonymous
            {
                e.standing = Standing::Anonymous;
            }
        }
        *self.last_active.lock() = Instant::now();
        RequestGuard {
            conn: Arc::clone(self),
        }
    }

    /// Resolves once no request has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: std::time::Duration) {
        loop {
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            let deadline = *self.last_active.lock() + timeout;
            let now = Instant::now();
            if !busy && now >= deadline {
                return;
            }
            // Busy: look again a timeout later (a request's end moves the deadline on).
            tokio::time::sleep_until(if busy { now + timeout } else { deadline }).await;
        }
    }
}

/// A request in flight (see [`Conn::request`]).
pub struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        *self.conn.last_active.lock() = Instant::now();
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(r) = self.conn.registry.upgrade()
        {
            let mut reg = r.registry.lock();
            // A request may have started meanwhile: idle only if none did.
            if self.conn.in_flight.load(Ordering::Acquire) == 0 {
                reg.mark_idle(self.conn.id);
            }
        }
    }
}

/// Marks the connection of an authenticated request, so that it is evicted after those that
/// carried none (a tower middleware, after authentication).
pub async fn mark_authenticated(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request
        .extensions()
        .get::<Arc<crate::identity::Identity>>()
        .is_some()
        && let Some(conn) = request.extensions().get::<Arc<Conn>>()
    {
        conn.authenticated();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn caps(total: usize, per_address: usize) -> Caps {
        Caps {
            total,
            per_address,
            closing: 16,
        }
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_connection_is_evicted_for_a_newcomer() {
        let c = Connections::new(caps(2, 10));
        let a = c.admit(addr(1)).unwrap();
        let b = c.admit(addr(1)).unwrap();
        a.conn.handshaken(false);
        // `b` never finished its handshake: it goes first.
        let _n = c.admit(addr(2)).unwrap();
        assert!(b.conn.evicted.load(Ordering::Acquire));
        assert!(!a.conn.evicted.load(Ordering::Acquire));
        assert_eq!(c.counters(), (0, 1));
        drop(b);
        assert_eq!(c.open(), 2);
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted_so_newcomers_are_refused() {
        let c = Connections::new(caps(2, 10));
        let a = c.admit(addr(1)).unwrap();
        let b = c.admit(addr(1)).unwrap();
        let _ra = a.conn.request();
        let rb = b.conn.request();
        assert_eq!(c.admit(addr(2)).err(), Some(Refusal::Total));
        drop(rb);
        // b is idle again: it makes room.
        assert!(c.admit(addr(2)).is_ok());
        assert!(b.conn.evicted.load(Ordering::Acquire));
        assert_eq!(c.counters(), (1, 1));
    }

    #[tokio::test]
    async fn the_per_address_cap_evicts_only_that_address() {
        let c = Connections::new(caps(100, 2));
        let other = c.admit(addr(9)).unwrap();
        let a = c.admit(addr(1)).unwrap();
        let b = c.admit(addr(1)).unwrap();
        let _rb = b.conn.request();
        let _n = c.admit(addr(1)).unwrap();
        assert!(a.conn.evicted.load(Ordering::Acquire), "its own idle one");
        assert!(!other.conn.evicted.load(Ordering::Acquire));
        let _rn = _n.conn.request();
        let _ra = a.conn.request();
        // a is evicting (it still counts until it closes), b and the newcomer are busy.
        assert_eq!(c.admit(addr(1)).err(), Some(Refusal::PerAddress));
        assert!(c.admit(addr(2)).is_ok(), "another address is not affected");
    }

    #[tokio::test]
    async fn agents_and_signed_in_callers_are_evicted_last() {
        let c = Connections::new(caps(3, 10));
        let agent = c.admit(addr(1)).unwrap();
        agent.conn.handshaken(true);
        let user = c.admit(addr(2)).unwrap();
        user.conn.handshaken(false);
        drop(user.conn.request());
        let probe = c.admit(addr(3)).unwrap();
        probe.conn.handshaken(false);
        drop(probe.conn.request());
        user.conn.authenticated();
        // The anonymous one goes first, although the agent has been idle longer.
        let _n = c.admit(addr(4)).unwrap();
        assert!(probe.conn.evicted.load(Ordering::Acquire));
        assert!(!agent.conn.evicted.load(Ordering::Acquire));
        assert!(!user.conn.evicted.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn evictions_still_closing_are_bounded() {
        let c = Connections::new(Caps {
            total: 1,
            per_address: 1,
            closing: 1,
        });
        let _a = c.admit(addr(1)).unwrap();
        let _b = c.admit(addr(2)).unwrap();
        assert_eq!(c.admit(addr(3)).err(), Some(Refusal::Closing));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_until_no_request_for_the_timeout() {
        let c = Connections::new(caps(10, 10));
        let a = c.admit(addr(1)).unwrap();
        let timeout = std::time::Duration::from_secs(5);
        let start = Instant::now();
        let guard = a.conn.request();
        let conn = Arc::clone(&a.conn);
        let idle = tokio::spawn(async move { conn.idle_for(timeout).await });
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        assert!(!idle.is_finished(), "busy connections are not idle");
        drop(guard);
        idle.await.unwrap();
        assert!(start.elapsed() >= std::time::Duration::from_secs(17));
    }

    #[test]
    fn the_cap_stays_below_the_open_files_limit() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.caps(None).total, 16_384);
        let caps = limits.caps(Some(20_000));
        assert_eq!(caps.total, 16_384);
        assert!(caps.total + caps.closing <= 20_000 - 2_048);
        let small = limits.caps(Some(1024));
        assert_eq!(small.total, 512);
        assert_eq!(small.per_address, 512);
        assert!(
            ConnectionLimits {
                max_connections: 0,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .contains("connectionLimits.maxConnections")
        );
    }
}
