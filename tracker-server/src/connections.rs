//! Who holds the tracker's connections, and who gives one up when they run out.
//!
//! Every accepted connection is registered here before its TLS handshake. The table enforces
//! two caps: connections per source (an IPv4 address, or an IPv6 /64, which one host usually
//! owns whole) and connections in all. A newcomer over either cap takes the place of an idle
//! connection — one not serving a request, handshaking included — of its own source for the
//! per-source cap, of the source holding the most for the global one, oldest idle first. So a
//! client that opens thousands of idle connections only ever recycles its own, and a new client
//! is served while the cap is reached; only when every connection is busy is a newcomer refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::ConnectionStats;

pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection bounds, configurable by flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, handshakes included.
    pub max_connections: usize,
    /// Of those, from one source (IPv4 address or IPv6 /64).
    pub max_per_address: usize,
    /// A connection that has not started a request this long after it was accepted is closed.
    pub first_request_timeout: Duration,
    /// A connection idle this long after its last request ended is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What one client controls: an IPv4 address, or an IPv6 /64 (a host is commonly given a
/// whole /64, so counting single IPv6 addresses would let it take every slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Whether a connection is serving requests, and since when it has not been.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended (or the connection was accepted).
    idle_since_ms: AtomicU64,
    requests: AtomicU64,
    /// Woken when a request starts or ends, so an idle watchdog re-reads its deadline.
    change: Notify,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        let activity = Activity {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            change: Notify::new(),
        };
        activity.touch();
        activity
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Release);
    }

    /// A request has started; the returned guard ends it when dropped (after the response body
    /// was sent or abandoned).
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.change.notify_waiters();
        RequestGuard(self.clone())
    }

    /// Completes at the next start or end of a request.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.change.notified()
    }

    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    pub fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    pub fn has_served(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// When the connection should be closed for idleness if nothing happens before: `None`
    /// while a request is in flight.
    pub fn idle_deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.is_busy() {
            return None;
        }
        let allowed = if self.has_served() {
            limits.idle_timeout
        } else {
            limits.first_request_timeout
        };
        Some(self.idle_since() + allowed)
    }
}

/// Holds a request open in its connection's [`Activity`].
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Touch first, so a watchdog that sees no request in flight also sees the fresh time.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.change.notify_waiters();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("every connection of this address is serving a request")]
    AddressBusy,
    #[error("every connection is serving a request")]
    AllBusy,
}

struct Entry {
    source: Source,
    activity: Arc<Activity>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// The idle connection that has been idle longest among those `pick` accepts.
    fn oldest_idle(&self, pick: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.activity.is_busy() && pick(e))
            // Ids grow with age: the tie-break within a clock tick.
            .min_by_key(|(id, e)| (e.activity.idle_since(), **id))
            .map(|(id, _)| *id)
    }

    /// The oldest idle connection of the source holding the most connections that has one.
    fn victim_for_global_cap(&self) -> Option<u64> {
        let mut sources: Vec<(Source, usize)> =
            self.per_source.iter().map(|(s, n)| (*s, *n)).collect();
        sources.sort_unstable_by_key(|s| std::cmp::Reverse(s.1));
        sources
            .into_iter()
            .find_map(|(source, _)| self.oldest_idle(|e| e.source == source))
    }
}

/// The registry of open connections. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionTable {
    inner: Arc<Mutex<Table>>,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    epoch: Instant,
}

impl ConnectionTable {
    pub fn new(limits: ConnectionLimits, stats: Arc<ConnectionStats>) -> Self {
        ConnectionTable {
            inner: Arc::default(),
            limits,
            stats,
            epoch: Instant::now(),
        }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table's invariants hold between statements that cannot panic; a poisoned lock
        // only means a panic elsewhere while holding it, so go on with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection from `ip`, making room by evicting idle connections if a cap is
    /// reached. The returned [`Admitted`] unregisters it when dropped.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let source = Source::of(ip);
        let mut table = self.lock();
        let mut evicted = Vec::new();
        if table.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_address {
            let id = table
                .oldest_idle(|e| e.source == source)
                .ok_or(Refused::AddressBusy)
                .inspect_err(|_| self.stats.record_refused())?;
            evicted.extend(table.remove(id));
        }
        if table.entries.len() >= self.limits.max_connections {
            let id = table
                .victim_for_global_cap()
                .ok_or(Refused::AllBusy)
                .inspect_err(|_| self.stats.record_refused())?;
            evicted.extend(table.remove(id));
        }
        let id = table.next_id;
        table.next_id += 1;
        let activity = Arc::new(Activity::new(self.epoch));
        let evict = CancellationToken::new();
        table.entries.insert(
            id,
            Entry {
                source,
                activity: activity.clone(),
                evict: evict.clone(),
            },
        );
        *table.per_source.entry(source).or_insert(0) += 1;
        let open = table.entries.len();
        drop(table);
        for entry in evicted {
            entry.evict.cancel();
            self.stats.record_evicted();
        }
        self.stats.set_open(open);
        Ok(Admitted {
            table: self.clone(),
            id,
            activity,
            evict,
        })
    }

    /// Connections registered now.
    pub fn open(&self) -> usize {
        self.lock().entries.len()
    }
}

/// A registered connection. Dropping it frees its place.
pub struct Admitted {
    table: ConnectionTable,
    id: u64,
    pub activity: Arc<Activity>,
    /// Cancelled when a newcomer took this connection's place: close it.
    pub evict: CancellationToken,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        // Already gone if it was evicted.
        table.remove(self.id);
        let open = table.entries.len();
        drop(table);
        self.table.stats.set_open(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, per_address: usize) -> ConnectionTable {
        ConnectionTable::new(
            ConnectionLimits {
                max_connections: max,
                max_per_address: per_address,
                ..ConnectionLimits::default()
            },
            Arc::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_at_its_cap_recycles_its_own_oldest_idle_connection() {
        let t = table(100, 2);
        let first = t.admit(ip("10.0.0.1")).unwrap();
        let second = t.admit(ip("10.0.0.1")).unwrap();
        let third = t.admit(ip("10.0.0.1")).unwrap();
        assert!(first.evict.is_cancelled());
        assert!(!second.evict.is_cancelled() && !third.evict.is_cancelled());
        assert_eq!(t.open(), 2);
    }

    #[test]
    fn busy_connections_are_never_evicted() {
        let t = table(100, 2);
        let a = t.admit(ip("10.0.0.1")).unwrap();
        let b = t.admit(ip("10.0.0.1")).unwrap();
        let _ga = a.activity.begin_request();
        let _gb = b.activity.begin_request();
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Refused::AddressBusy));
        assert!(t.admit(ip("10.0.0.2")).is_ok());
    }

    #[test]
    fn at_the_global_cap_the_largest_source_gives_way() {
        let t = table(4, 3);
        let big: Vec<_> = (0..3).map(|_| t.admit(ip("10.0.0.1")).unwrap()).collect();
        let small = t.admit(ip("10.0.0.2")).unwrap();
        let newcomer = t.admit(ip("10.0.0.3")).unwrap();
        assert!(
            big[0].evict.is_cancelled(),
            "the oldest of the largest source"
        );
        assert!(!small.evict.is_cancelled() && !newcomer.evict.is_cancelled());
        assert_eq!(t.open(), 4);
    }

    #[test]
    fn a_full_table_of_busy_connections_refuses() {
        let t = table(2, 2);
        let a = t.admit(ip("10.0.0.1")).unwrap();
        let b = t.admit(ip("10.0.0.2")).unwrap();
        let _g = (a.activity.begin_request(), b.activity.begin_request());
        assert_eq!(t.admit(ip("10.0.0.3")).err(), Some(Refused::AllBusy));
    }

    #[test]
    fn dropping_frees_the_place() {
        let t = table(1, 1);
        drop(t.admit(ip("10.0.0.1")).unwrap());
        assert_eq!(t.open(), 0);
        let kept = t.admit(ip("10.0.0.1")).unwrap();
        assert!(!kept.evict.is_cancelled());
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            Source::of(ip("2001:db8::1")),
            Source::of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn the_idle_deadline_is_short_before_the_first_request_and_absent_during_one() {
        let limits = ConnectionLimits {
            first_request_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        let activity = Arc::new(Activity::new(Instant::now()));
        let before = activity.idle_deadline(&limits).unwrap();
        assert!(before <= Instant::now() + Duration::from_secs(2));
        let guard = activity.begin_request();
        assert_eq!(activity.idle_deadline(&limits), None);
        drop(guard);
        let after = activity.idle_deadline(&limits).unwrap();
        assert!(after > Instant::now() + Duration::from_secs(30));
    }
}
