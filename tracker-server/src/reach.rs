//! How peers can be reached: the `reach` each peer last announced (kept in memory, see
//! [`ReachTable`]), and `POST /reachability`, where the tracker dials a caller back to tell it
//! whether it is reachable inbound.
//!
//! The table is per tracker process, not in the store: a reach is a hint a peer repeats in every
//! announce, lost harmlessly on restart (peers without one are listed without one until their
//! next announce), and keeping it out of the store spares both backends a schema change and a
//! write whenever it changes. Replicas sharing a PostgreSQL store therefore each know the reach
//! of the peers that announced to them; a peer listed without one is tried directly first,
//! which is what an agent does for a peer that never said.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::api::{PeerInfo, Reach, ReachabilityRequest, ReachabilityResponse};
use torrentguard_trust::Identity;
use torrentguard_trust::config::{peer_client_config, peer_server_name};

use crate::app::{AppState, AuthorizedPeer, RemoteAddr};
use crate::error::{ApiError, AppJson};
use crate::limits::Scope;

/// Reaches held at most (~80 bytes each); past it, entries older than the TTL are swept and,
/// if all are fresh, a new peer's reach is not kept (it is listed without one).
pub const MAX_REACH_ENTRIES: usize = 100_000;
/// A probe (TCP connect and TLS handshake) that takes longer counts as not reachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Probes running at once; past it `POST /reachability` is 429. Each holds a socket for up to
/// [`PROBE_TIMEOUT`], so this bounds the descriptors and handshakes callers can make us spend.
pub const MAX_CONCURRENT_PROBES: usize = 64;
/// A full table is swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The latest announced [`Reach`] per peer, bounded and swept like the limiter's maps.
#[derive(Debug)]
pub struct ReachTable {
    ttl: Duration,
    max_entries: usize,
    inner: Mutex<ReachMap>,
}

#[derive(Debug, Default)]
struct ReachMap {
    map: HashMap<Fingerprint, (Reach, Instant)>,
    last_sweep: Option<Instant>,
}

impl ReachTable {
    /// Entries last set more than `ttl` ago (the peer TTL: the peer is gone) are dropped.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        ReachTable {
            ttl,
            max_entries,
            inner: Mutex::new(ReachMap::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReachMap> {
        // A poisoned lock only means a panic elsewhere mid-update; the map is still sane.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what `peer` announced: `None` (it does not know, or an older agent) forgets.
    pub fn set(&self, peer: Fingerprint, reach: Option<Reach>, now: Instant) {
        let mut inner = self.lock();
        let Some(reach) = reach else {
            inner.map.remove(&peer);
            return;
        };
        if !inner.map.contains_key(&peer) && inner.map.len() >= self.max_entries {
            self.sweep(&mut inner, now);
            if inner.map.len() >= self.max_entries {
                return;
            }
        }
        inner.map.insert(peer, (reach, now));
    }

    /// What `peer` last announced, unless that is older than the TTL.
    pub fn get(&self, peer: &Fingerprint, now: Instant) -> Option<Reach> {
        let inner = self.lock();
        let (reach, at) = inner.map.get(peer)?;
        (now.saturating_duration_since(*at) <= self.ttl).then_some(*reach)
    }

    /// `peers` with their reach filled in.
    pub fn fill(&self, peers: &mut [PeerInfo]) {
        let now = Instant::now();
        for p in peers {
            p.reach = self.get(&p.fingerprint, now);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self, inner: &mut ReachMap, now: Instant) {
        if inner
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        inner.last_sweep = Some(now);
        let ttl = self.ttl;
        inner
            .map
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= ttl);
    }
}

/// What `POST /reachability` needs besides the state every handler has.
#[derive(Debug)]
pub struct Prober {
    /// The tracker's own identity: its certificate is the probe's client certificate, so the
    /// caller's listener sees a proven identity, as with any peer.
    identity: Option<Arc<Identity>>,
    slots: Arc<Semaphore>,
}

impl Prober {
    /// With `identity` `None` (a router driven in-process) every probe is an internal error:
    /// there is no certificate to probe with.
    pub fn new(identity: Option<Arc<Identity>>) -> Self {
        Prober {
            identity,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        }
    }
}

/// The address to probe for a caller at `source` asking about `port`: always the caller's own
/// source IP, never one it names, so the probe cannot be aimed at a third host. A source that
/// cannot be dialled (unspecified, multicast: impossible for a real TCP peer) is refused.
pub fn probe_target(source: SocketAddr, port: u16) -> Result<SocketAddr, ApiError> {
    if port == 0 {
        return Err(ApiError::BadRequest("port must be 1..=65535".into()));
    }
    let ip = source.ip().to_canonical();
    let undialable =
        ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]);
    if undialable {
        return Err(ApiError::BadRequest(format!(
            "the connection's source {ip} cannot be dialled back"
        )));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Whether a TLS 1.3 handshake as client, presenting `identity` and pinning `expect`,
/// completes at `target` within [`PROBE_TIMEOUT`]. The connection is closed at once after.
pub async fn probe(target: SocketAddr, identity: &Identity, expect: Fingerprint) -> bool {
    let config = match peer_client_config(identity, expect) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "probe TLS configuration failed");
            return false;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect(target).await?;
        connector.connect(peer_server_name(), tcp).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(mut tls)) => {
            // A polite close_notify; the answer does not wait on it for long.
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "reachability probe failed");
            false
        }
        Err(_) => {
            tracing::debug!(%target, "reachability probe timed out");
            false
        }
    }
}

/// `POST /reachability`: dials the caller back at its source IP and the given port.
pub(crate) async fn reachability(
    State(state): State<AppState>,
    AuthorizedPeer(caller): AuthorizedPeer,
    RemoteAddr(remote): RemoteAddr,
    AppJson(req): AppJson<ReachabilityRequest>,
) -> Result<Json<ReachabilityResponse>, ApiError> {
    let target = probe_target(remote, req.port)?;
    let prober = &state.traversal().prober;
    let Some(identity) = prober.identity.clone() else {
        return Err(ApiError::Internal(
            "this tracker has no identity to probe with".into(),
        ));
    };
    let Ok(_slot) = prober.slots.clone().try_acquire_owned() else {
        state.metrics().record_rate_limited(Scope::Concurrency);
        return Err(ApiError::RateLimited(
            Scope::Concurrency,
            Duration::from_secs(1),
        ));
    };
    let inbound = probe(target, &identity, caller).await;
    tracing::debug!(peer = %caller.short(), %target, inbound, "reachability probe");
    Ok(Json(ReachabilityResponse {
        observed: SocketAddr::new(remote.ip().to_canonical(), remote.port()),
        inbound,
        relay_port: state.traversal().relay_port,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::api::NatMapping;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::of_der(&[b])
    }

    const OPEN: Reach = Reach {
        inbound: true,
        mapping: NatMapping::Open,
    };

    #[test]
    fn the_latest_reach_is_kept_and_none_forgets() {
        let t = ReachTable::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        t.set(fp(1), Some(OPEN), now);
        assert_eq!(t.get(&fp(1), now), Some(OPEN));
        let closed = Reach {
            inbound: false,
            mapping: NatMapping::Unpredictable,
        };
        t.set(fp(1), Some(closed), now);
        assert_eq!(t.get(&fp(1), now), Some(closed));
        t.set(fp(1), None, now);
        assert_eq!(t.get(&fp(1), now), None);
    }

    #[test]
    fn old_entries_are_not_shown_and_are_swept_to_make_room() {
        let t = ReachTable::new(Duration::from_secs(60), 2);
        let start = Instant::now();
        t.set(fp(1), Some(OPEN), start);
        t.set(fp(2), Some(OPEN), start);
        // Full of fresh entries: a third peer is not kept.
        t.set(fp(3), Some(OPEN), start);
        assert_eq!(t.get(&fp(3), start), None);
        assert_eq!(t.len(), 2);
        let later = start + Duration::from_secs(61);
        assert_eq!(t.get(&fp(1), later), None);
        t.set(fp(3), Some(OPEN), later);
        assert_eq!(t.get(&fp(3), later), Some(OPEN));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn probes_go_to_the_source_address_only() {
        let source: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(
            probe_target(source, 7000).unwrap(),
            "192.0.2.7:7000".parse().unwrap()
        );
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:40000".parse().unwrap();
        assert_eq!(
            probe_target(mapped, 7000).unwrap(),
            "192.0.2.7:7000".parse().unwrap()
        );
        assert!(probe_target(source, 0).is_err());
        assert!(probe_target("0.0.0.0:1".parse().unwrap(), 7000).is_err());
        assert!(probe_target("[::]:1".parse().unwrap(), 7000).is_err());
    }
}
