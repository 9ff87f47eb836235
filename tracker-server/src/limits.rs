//! Overload protection: token buckets on writes per client certificate and per source address,
//! a global bound on requests in flight, the announce cache that answers too-fast announces
//! without a database write, and the bounds on what one client can make the tracker store.
//!
//! Hand-written rather than `governor`: the buckets need an explicit, tested memory bound (idle
//! entries swept, a cap on keys) and a `Retry-After` in whole seconds, both a few lines here,
//! while `governor` would add a dependency tree (dashmap, quanta, …) for one `check` call.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use tokio::sync::Semaphore;
use torrentguard_protocol::{FileId, Fingerprint};

use crate::app::{AppState, PeerIdentity};
use crate::connections::Source;
use crate::error::ApiError;

pub const DEFAULT_WRITE_RATE_PER_IDENTITY: f64 = 20.0;
pub const DEFAULT_WRITE_BURST_PER_IDENTITY: u32 = 100;
pub const DEFAULT_WRITE_RATE_PER_ADDRESS: f64 = 100.0;
pub const DEFAULT_WRITE_BURST_PER_ADDRESS: u32 = 500;
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
pub const DEFAULT_MAX_FILES_PER_IDENTITY: u64 = 10_000;
pub const DEFAULT_MAX_PEERS_PER_FILE: u64 = 10_000;
/// Keys one bucket map holds at most (~100 bytes each): past it, idle buckets are swept, and
/// if every one is active a new key is refused until some go idle.
pub const MAX_BUCKET_KEYS: usize = 100_000;
/// Entries the announce cache holds at most (~150 bytes each).
pub const MAX_ANNOUNCE_CACHE_ENTRIES: usize = 100_000;
/// How long a request waits for a slot under `--max-concurrent-requests` before its 429: long
/// enough to ride out a burst, short enough that a client is told to back off promptly.
pub const CONCURRENCY_QUEUE_WAIT: Duration = Duration::from_millis(100);
/// A full map is swept at most this often, so a map full of active keys does not cost a scan
/// per request.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A token bucket's shape: `rate` tokens a second, at most `burst` saved up. A rate of 0 turns
/// the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

impl Rate {
    fn enabled(&self) -> bool {
        self.per_sec > 0.0 && self.burst > 0
    }
}

/// Every limit and bound, as configured by the flags (see `TrackerArgs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    pub per_identity: Rate,
    pub per_address: Rate,
    pub max_concurrent_requests: usize,
    pub max_files_per_identity: u64,
    pub max_manifest_chunks: u32,
    pub max_manifest_entries: u32,
    pub max_peers_per_file: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_identity: Rate {
                per_sec: DEFAULT_WRITE_RATE_PER_IDENTITY,
                burst: DEFAULT_WRITE_BURST_PER_IDENTITY,
            },
            per_address: Rate {
                per_sec: DEFAULT_WRITE_RATE_PER_ADDRESS,
                burst: DEFAULT_WRITE_BURST_PER_ADDRESS,
            },
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_files_per_identity: DEFAULT_MAX_FILES_PER_IDENTITY,
            max_manifest_chunks: torrentguard_protocol::manifest::MAX_CHUNKS,
            max_manifest_entries: torrentguard_protocol::tree::MAX_ENTRIES as u32,
            max_peers_per_file: DEFAULT_MAX_PEERS_PER_FILE,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key, bounded to `max_keys` entries.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    max_keys: usize,
    inner: Mutex<BucketMap<K>>,
}

#[derive(Debug)]
struct BucketMap<K> {
    map: HashMap<K, Bucket>,
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Buckets {
            rate,
            max_keys,
            inner: Mutex::new(BucketMap {
                map: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Takes one token of `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        if !self.rate.enabled() {
            return Ok(());
        }
        let rate = self.rate;
        // A poisoned lock only means a panic elsewhere mid-update; the buckets are still sane.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.map.contains_key(&key) && inner.map.len() >= self.max_keys {
            inner.sweep(rate, now);
            if inner.map.len() >= self.max_keys {
                return Err(SWEEP_EVERY);
            }
        }
        let bucket = inner.map.entry(key).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_sec).min(f64::from(rate.burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / rate.per_sec,
            ))
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq> BucketMap<K> {
    /// Drops buckets that have refilled: an absent key starts full, so forgetting them changes
    /// nothing. At most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, rate: Rate, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let burst = f64::from(rate.burst);
        self.map.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * rate.per_sec < burst
        });
    }
}

/// What a refusal was about, for `Retry-After` and the metric's `scope` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Identity,
    Address,
    Concurrency,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Identity, Scope::Address, Scope::Concurrency];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Identity => "identity",
            Scope::Address => "address",
            Scope::Concurrency => "concurrency",
        }
    }
}

/// The shared limiter state of one tracker.
#[derive(Debug)]
pub struct Limiter {
    pub config: LimitsConfig,
    identities: Buckets<Fingerprint>,
    addresses: Buckets<Source>,
    in_flight: Arc<Semaphore>,
    pub announces: AnnounceCache,
}

impl Limiter {
    pub fn new(config: LimitsConfig) -> Self {
        Limiter {
            identities: Buckets::new(config.per_identity, MAX_BUCKET_KEYS),
            addresses: Buckets::new(config.per_address, MAX_BUCKET_KEYS),
            in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            announces: AnnounceCache::new(MAX_ANNOUNCE_CACHE_ENTRIES),
            config,
        }
    }

    /// Takes a write token for the source address and, if it has one, the client certificate.
    /// The address goes first: a client minting certificates is still one address.
    pub fn take_write(&self, ip: IpAddr, identity: Option<Fingerprint>) -> Result<(), ApiError> {
        let now = Instant::now();
        self.addresses
            .take(Source::of(ip), now)
            .map_err(|wait| ApiError::RateLimited(Scope::Address, wait))?;
        if let Some(fp) = identity {
            self.identities
                .take(fp, now)
                .map_err(|wait| ApiError::RateLimited(Scope::Identity, wait))?;
        }
        Ok(())
    }
}

/// Middleware for the write routes: refuses a request over its address's or identity's rate
/// with 429 before its body is read. Apply it with [`crate::app::write_limited`].
pub async fn limit_writes(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .ok_or_else(|| ApiError::Internal("connection address missing".into()))?;
    let identity = req.extensions().get::<PeerIdentity>().and_then(|p| p.0);
    if let Err(e) = state.limiter().take_write(ip, identity) {
        if let ApiError::RateLimited(scope, _) = &e {
            state.metrics().record_rate_limited(*scope);
        }
        return Err(e);
    }
    Ok(next.run(req).await)
}

/// Middleware bounding the requests handled at once; past the bound (after a short wait) the
/// answer is 429 rather than a queue that grows until clients time out.
pub async fn limit_concurrency(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let semaphore = state.limiter().in_flight.clone();
    let permit = match tokio::time::timeout(CONCURRENCY_QUEUE_WAIT, semaphore.acquire_owned()).await
    {
        Ok(Ok(permit)) => permit,
        // Timed out, or (never: the semaphore is not closed) closed.
        _ => {
            state.metrics().record_rate_limited(Scope::Concurrency);
            return Err(ApiError::RateLimited(
                Scope::Concurrency,
                Duration::from_secs(1),
            ));
        }
    };
    let response = next.run(req).await;
    drop(permit);
    Ok(response)
}

/// What the last written announce of one peer for one file said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceState {
    pub address: IpAddr,
    pub port: u16,
    /// Hash of the wire bitfield (keyed per process, so not forgeable into a collision).
    pub bitfield: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    state: AnnounceState,
    written: Instant,
}

/// The last written announce per (peer, file), so that one repeating the same state before its
/// interval is answered without a database write. Bounded: entries older than any window are
/// swept when full, and past the cap new peers are simply not cached (their announces write).
#[derive(Debug)]
pub struct AnnounceCache {
    hasher: std::collections::hash_map::RandomState,
    max_entries: usize,
    inner: Mutex<CacheMap>,
}

#[derive(Debug, Default)]
struct CacheMap {
    map: HashMap<(Fingerprint, FileId), Cached>,
    last_sweep: Option<Instant>,
}

impl AnnounceCache {
    pub fn new(max_entries: usize) -> Self {
        AnnounceCache {
            hasher: std::collections::hash_map::RandomState::new(),
            max_entries,
            inner: Mutex::new(CacheMap::default()),
        }
    }

    pub fn state(&self, address: IpAddr, port: u16, bitfield: &str) -> AnnounceState {
        AnnounceState {
            address,
            port,
            bitfield: self.hasher.hash_one(bitfield),
        }
    }

    /// Whether `key` wrote this very state less than `window` ago.
    pub fn is_fresh(
        &self,
        key: (Fingerprint, FileId),
        state: AnnounceState,
        window: Duration,
        now: Instant,
    ) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .map
            .get(&key)
            .is_some_and(|c| c.state == state && now.saturating_duration_since(c.written) < window)
    }

    /// Whether `key` wrote an announce (whatever its state) less than `within` ago.
    pub fn wrote_within(&self, key: (Fingerprint, FileId), within: Duration, now: Instant) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .map
            .get(&key)
            .is_some_and(|c| now.saturating_duration_since(c.written) < within)
    }

    /// Notes a written announce; entries older than `window` are dropped if the cache is full.
    pub fn record(
        &self,
        key: (Fingerprint, FileId),
        state: AnnounceState,
        window: Duration,
        now: Instant,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.map.contains_key(&key) && inner.map.len() >= self.max_entries {
            let swept_lately = inner
                .last_sweep
                .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY);
            if !swept_lately {
                inner.last_sweep = Some(now);
                inner
                    .map
                    .retain(|_, c| now.saturating_duration_since(c.written) < window);
            }
            if inner.map.len() >= self.max_entries {
                return;
            }
        }
        inner.map.insert(
            key,
            Cached {
                state,
                written: now,
            },
        );
    }

    pub fn forget(&self, key: (Fingerprint, FileId)) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The whole seconds a `Retry-After` header says for `wait`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: f64, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let b = Buckets::new(rate(2.0, 3), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.take(1u8, t0).unwrap();
        }
        let wait = b.take(1u8, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another key has its own bucket.
        b.take(2u8, t0).unwrap();
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        b.take(1u8, t1).unwrap();
        assert!(b.take(1u8, t1).is_err());
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        let b = Buckets::new(rate(0.0, 0), 1);
        let t0 = Instant::now();
        for k in 0..1000u32 {
            b.take(k, t0).unwrap();
        }
        assert!(b.is_empty());
    }

    #[test]
    fn the_key_map_is_bounded_and_idle_keys_are_swept() {
        let b = Buckets::new(rate(1.0, 2), 3);
        let t0 = Instant::now();
        for k in 0..3u32 {
            b.take(k, t0).unwrap();
        }
        // Full of active buckets: a new key waits rather than growing the map.
        assert_eq!(b.take(99, t0), Err(SWEEP_EVERY));
        assert_eq!(b.len(), 3);
        // Two seconds on, every bucket has refilled: the sweep frees them all.
        let t1 = t0 + Duration::from_secs(2);
        b.take(99, t1).unwrap();
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    fn key(n: u8) -> (Fingerprint, FileId) {
        (Fingerprint::from_bytes([n; 32]), FileId([n; 32]))
    }

    #[test]
    fn the_announce_cache_matches_state_within_the_window() {
        let c = AnnounceCache::new(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let s = c.state(ip, 6881, "AAA=");
        let w = Duration::from_secs(30);
        let t0 = Instant::now();
        assert!(!c.is_fresh(key(1), s, w, t0));
        c.record(key(1), s, w, t0);
        assert!(c.is_fresh(key(1), s, w, t0 + Duration::from_secs(29)));
        assert!(!c.is_fresh(key(1), s, w, t0 + w));
        assert!(!c.is_fresh(key(1), c.state(ip, 6881, "gAA="), w, t0));
        assert!(!c.is_fresh(key(1), c.state(ip, 6882, "AAA="), w, t0));
        c.forget(key(1));
        assert!(!c.is_fresh(key(1), s, w, t0));
    }

    #[test]
    fn a_peer_that_wrote_lately_is_known_whatever_it_said() {
        let c = AnnounceCache::new(10);
        let s = c.state("192.0.2.1".parse().unwrap(), 6881, "AAA=");
        let (w, t0) = (Duration::from_secs(30), Instant::now());
        let ttl_half = Duration::from_secs(60);
        assert!(!c.wrote_within(key(1), ttl_half, t0));
        c.record(key(1), s, w, t0);
        assert!(c.wrote_within(key(1), ttl_half, t0 + Duration::from_secs(59)));
        assert!(!c.wrote_within(key(1), ttl_half, t0 + ttl_half));
        assert!(!c.wrote_within(key(2), ttl_half, t0));
        c.forget(key(1));
        assert!(!c.wrote_within(key(1), ttl_half, t0));
    }

    #[test]
    fn the_announce_cache_is_bounded() {
        let c = AnnounceCache::new(2);
        let s = c.state("192.0.2.1".parse().unwrap(), 1, "");
        let w = Duration::from_secs(30);
        let t0 = Instant::now();
        for n in 0..5 {
            c.record(key(n), s, w, t0);
        }
        assert_eq!(c.len(), 2);
        // Once the old entries are past the window they make room.
        c.record(key(9), s, w, t0 + w);
        assert_eq!(c.len(), 1);
        assert!(c.is_fresh(key(9), s, w, t0 + w));
    }
}
