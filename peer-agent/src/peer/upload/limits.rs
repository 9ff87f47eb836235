//! What one peer may take of a seeder: connections per certificate and per address, a
//! cool-down for a certificate that keeps opening connections, and upload slots granted in turn
//! by certificate, so many connections from one peer buy it no larger share.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use torrentguard_protocol::Fingerprint;

/// The seeder's resource bounds. Every field is a hard cap; [`Default`] holds the values the
/// CLI uses unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeederLimits {
    /// Inbound connections at once, all peers together.
    pub max_connections: usize,
    /// Connections at once from one certificate (one per file it fetches is the normal case).
    pub max_per_peer: usize,
    /// Connections at once from one source IP address, counted before the TLS handshake.
    pub max_per_address: usize,
    /// TLS handshake plus the peer's `Hello`, together.
    pub handshake_timeout: Duration,
    /// How long a connection may go without a request while nothing of its is queued or being
    /// sent. A downloader with nothing to ask for reconnects when it has.
    pub idle_timeout: Duration,
    /// Chunk reads+writes in progress at once, all connections together (bounds memory).
    pub upload_slots: usize,
    /// Requests one connection may queue before being answered `Busy`.
    pub max_queued_requests: usize,
    /// Refused or idle-closed connections of one certificate within `strike_window` that put it
    /// in the cool-down.
    pub strikes: usize,
    pub strike_window: Duration,
    /// How long a certificate that used up its strikes is refused outright.
    pub cooldown: Duration,
}

impl Default for SeederLimits {
    fn default() -> Self {
        SeederLimits {
            max_connections: 256,
            max_per_peer: 4,
            max_per_address: 32,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            upload_slots: 32,
            max_queued_requests: 128,
            strikes: 16,
            strike_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(120),
        }
    }
}

/// Why a certificate's connection is refused; the `Display` text is what its `Bye` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections from your certificate (at most {0} at once)")]
    TooManyConnections(usize),
    #[error(
        "refused for {}s: too many refused or idle connections from your certificate",
        .0.as_secs().max(1)
    )]
    CoolingDown(Duration),
}

/// Counts connections per address and per certificate, and the strikes that lead to a
/// certificate's cool-down. One per seeder.
pub(crate) struct Admission {
    limits: SeederLimits,
    state: Mutex<AdmissionState>,
}

#[derive(Default)]
struct AdmissionState {
    by_address: HashMap<IpAddr, usize>,
    by_peer: HashMap<Fingerprint, usize>,
    strikes: HashMap<Fingerprint, Strikes>,
    refused: u64,
}

#[derive(Default)]
struct Strikes {
    recent: VecDeque<Instant>,
    cooling_until: Option<Instant>,
}

/// Bound on the certificates whose strikes are remembered; beyond it, stale entries go.
const STRIKE_MEMORY: usize = 4096;

impl Admission {
    pub fn new(limits: SeederLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(AdmissionState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection from `ip`, unless that address already holds its cap.
    pub fn admit_address(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut s = self.state();
        let n = s.by_address.entry(ip).or_default();
        if *n >= self.limits.max_per_address {
            s.refused += 1;
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            admission: self.clone(),
            ip,
        })
    }

    /// A connection from the certificate `fp`, unless it is cooling down or at its cap (which
    /// counts as a strike).
    pub fn admit_peer(self: &Arc<Self>, fp: Fingerprint) -> Result<PeerSlot, Refusal> {
        let now = Instant::now();
        let mut s = self.state();
        if let Some(left) = self.cooling(&mut s, &fp, now) {
            s.refused += 1;
            return Err(Refusal::CoolingDown(left));
        }
        let n = s.by_peer.get(&fp).copied().unwrap_or(0);
        if n >= self.limits.max_per_peer {
            s.refused += 1;
            self.add_strike(&mut s, fp, now);
            return Err(Refusal::TooManyConnections(self.limits.max_per_peer));
        }
        s.by_peer.insert(fp, n + 1);
        Ok(PeerSlot {
            admission: self.clone(),
            fp,
        })
    }

    /// Counts against `fp` a connection it wasted (idle, not in the swarm, bad protocol).
    pub fn strike(&self, fp: Fingerprint) {
        let mut s = self.state();
        self.add_strike(&mut s, fp, Instant::now());
    }

    /// Whether `fp` is in its cool-down now.
    pub fn is_cooling(&self, fp: &Fingerprint) -> bool {
        let now = Instant::now();
        self.state()
            .strikes
            .get(fp)
            .and_then(|st| st.cooling_until)
            .is_some_and(|until| until > now)
    }

    /// Connections refused so far (by address, by certificate or for a cool-down).
    pub fn refused(&self) -> u64 {
        self.state().refused
    }

    /// How long `fp` stays refused, if it is cooling down; forgets a cool-down that ended.
    fn cooling(&self, s: &mut AdmissionState, fp: &Fingerprint, now: Instant) -> Option<Duration> {
        let st = s.strikes.get_mut(fp)?;
        match st.cooling_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                // Served its time: it starts again with a clean slate.
                s.strikes.remove(fp);
                None
            }
            None => None,
        }
    }

    fn add_strike(&self, s: &mut AdmissionState, fp: Fingerprint, now: Instant) {
        if s.strikes.len() >= STRIKE_MEMORY && !s.strikes.contains_key(&fp) {
            let window = self.limits.strike_window;
            s.strikes.retain(|_, st| {
                st.cooling_until.is_some_and(|t| t > now)
                    || st
                        .recent
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < window)
            });
            if s.strikes.len() >= STRIKE_MEMORY {
                // Still full of live entries: this one is not tracked (the caps still hold it).
                return;
            }
        }
        let st = s.strikes.entry(fp).or_default();
        if st.cooling_until.is_some() {
            return;
        }
        while st
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limits.strike_window)
        {
            st.recent.pop_front();
        }
        st.recent.push_back(now);
        if st.recent.len() > self.limits.strikes {
            tracing::warn!(fingerprint = %fp, strikes = st.recent.len(), cooldown = ?self.limits.cooldown,
                "peer keeps opening connections that are refused or left idle; refusing it for a while");
            st.recent.clear();
            st.cooling_until = Some(now + self.limits.cooldown);
        }
    }
}

/// One admitted connection from an address; freed on drop.
pub(crate) struct AddressSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut s = self.admission.state();
        if let Some(n) = s.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_address.remove(&self.ip);
            }
        }
    }
}

/// One admitted connection from a certificate; freed on drop.
pub(crate) struct PeerSlot {
    admission: Arc<Admission>,
    fp: Fingerprint,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut s = self.admission.state();
        if let Some(n) = s.by_peer.get_mut(&self.fp) {
            *n -= 1;
            if *n == 0 {
                s.by_peer.remove(&self.fp);
            }
        }
    }
}

/// Upload slots handed out in turn by certificate: when slots are short, each waiting
/// certificate gets the next free slot in rotation, whatever number of connections it has
/// waiting; within one certificate, first come first served.
pub(crate) struct SlotScheduler {
    state: Mutex<SchedulerState>,
}

struct SchedulerState {
    free: usize,
    /// Waiters per certificate. Invariant: a certificate is in `turns` exactly when its queue
    /// is not empty, and there are waiters only while `free == 0`.
    queues: HashMap<Fingerprint, VecDeque<oneshot::Sender<UploadSlot>>>,
    turns: VecDeque<Fingerprint>,
}

impl SlotScheduler {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(SlotScheduler {
            state: Mutex::new(SchedulerState {
                free: slots,
                queues: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SchedulerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for an upload slot for certificate `fp`. Cancel-safe: a slot granted to a waiter
    /// that went away passes on to the next one.
    pub async fn acquire(self: &Arc<Self>, fp: Fingerprint) -> UploadSlot {
        let rx = {
            let mut s = self.state();
            if s.free > 0 {
                s.free -= 1;
                return UploadSlot::new(self.clone());
            }
            let (tx, rx) = oneshot::channel();
            let s = &mut *s;
            let queue = s.queues.entry(fp).or_default();
            if queue.is_empty() {
                s.turns.push_back(fp);
            }
            queue.push_back(tx);
            rx
        };
        match rx.await {
            Ok(slot) => slot,
            // The scheduler only drops a sender by granting through it (below), and this
            // struct outlives every waiter (the waiter holds an Arc of it).
            Err(_) => unreachable!("a slot scheduler never drops a waiter unserved"),
        }
    }

    /// Hands a freed slot to the next certificate in turn, or keeps it free.
    fn release(self: &Arc<Self>) {
        let mut guard = self.state();
        let s = &mut *guard;
        while let Some(fp) = s.turns.pop_front() {
            let Some(queue) = s.queues.get_mut(&fp) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                s.queues.remove(&fp);
            } else {
                s.turns.push_back(fp);
            }
            let Some(tx) = next else { continue };
            match tx.send(UploadSlot::new(self.clone())) {
                Ok(()) => return,
                // That waiter went away: disarm the slot (dropping it here would re-enter the
                // lock) and try the next.
                Err(mut slot) => slot.scheduler = None,
            }
        }
        s.free += 1;
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.state().free
    }
}

/// An upload slot; given back (to the next certificate in turn) on drop.
pub(crate) struct UploadSlot {
    scheduler: Option<Arc<SlotScheduler>>,
}

impl UploadSlot {
    fn new(scheduler: Arc<SlotScheduler>) -> Self {
        UploadSlot {
            scheduler: Some(scheduler),
        }
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            s.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::of_der(&[b])
    }

    fn limits() -> SeederLimits {
        SeederLimits {
            max_per_peer: 2,
            max_per_address: 3,
            strikes: 3,
            strike_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            ..SeederLimits::default()
        }
    }

    #[test]
    fn one_certificate_gets_at_most_its_cap_of_connections() {
        let a = Admission::new(limits());
        let first = a.admit_peer(fp(1)).unwrap();
        let _second = a.admit_peer(fp(1)).unwrap();
        assert_eq!(
            a.admit_peer(fp(1)).err(),
            Some(Refusal::TooManyConnections(2))
        );
        // Another certificate is not affected.
        let _other = a.admit_peer(fp(2)).unwrap();
        // A connection that ends frees its place.
        drop(first);
        let _again = a.admit_peer(fp(1)).unwrap();
        assert_eq!(a.refused(), 1);
    }

    #[test]
    fn one_address_gets_at_most_its_cap_of_connections() {
        let a = Admission::new(limits());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let slots: Vec<_> = (0..3).map(|_| a.admit_address(ip).unwrap()).collect();
        assert!(a.admit_address(ip).is_none());
        assert!(a.admit_address("127.0.0.3".parse().unwrap()).is_some());
        drop(slots);
        assert!(a.admit_address(ip).is_some());
        assert_eq!(a.refused(), 1);
    }

    #[test]
    fn a_certificate_that_keeps_getting_refused_cools_down() {
        let a = Admission::new(limits());
        let _held: Vec<_> = (0..2).map(|_| a.admit_peer(fp(1)).unwrap()).collect();
        for _ in 0..3 {
            assert!(matches!(
                a.admit_peer(fp(1)),
                Err(Refusal::TooManyConnections(_))
            ));
        }
        // The fourth strike starts the cool-down: refused even once its connections are gone.
        assert!(matches!(
            a.admit_peer(fp(1)),
            Err(Refusal::TooManyConnections(_))
        ));
        drop(_held);
        assert!(a.is_cooling(&fp(1)));
        assert!(!a.is_cooling(&fp(2)));
        let refusal = a.admit_peer(fp(1)).err().unwrap();
        assert!(matches!(refusal, Refusal::CoolingDown(_)), "{refusal:?}");
        assert!(refusal.to_string().contains("refused for"), "{refusal}");
        assert!(a.admit_peer(fp(2)).is_ok());
    }

    #[test]
    fn a_cool_down_ends() {
        let a = Admission::new(SeederLimits {
            cooldown: Duration::ZERO,
            strikes: 0,
            ..limits()
        });
        a.strike(fp(1));
        // A zero cool-down is over at once, and the slate is clean again.
        assert!(a.admit_peer(fp(1)).is_ok());
    }

    #[test]
    fn idle_strikes_alone_lead_to_the_cool_down() {
        let a = Admission::new(limits());
        for _ in 0..4 {
            a.strike(fp(1));
        }
        assert!(matches!(a.admit_peer(fp(1)), Err(Refusal::CoolingDown(_))));
    }

    /// Slots go round robin by certificate: one with many waiting connections gets a turn like
    /// one with a single connection.
    #[tokio::test]
    async fn upload_slots_go_in_turn_by_certificate_not_by_connection() {
        let sched = SlotScheduler::new(1);
        let held = sched.acquire(fp(9)).await;
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        // Ten connections of the hog queue up before the single one of the honest peer.
        let queued: Vec<Fingerprint> = std::iter::repeat_n(fp(1), 10)
            .chain([fp(2)])
            .chain(std::iter::repeat_n(fp(3), 2))
            .collect();
        for who in queued {
            let (s, tx) = (sched.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let slot = s.acquire(who).await;
                tx.send(who).unwrap();
                // Hold the slot until the test has seen the grant.
                tokio::task::yield_now().await;
                drop(slot);
            }));
            // Let each waiter register in order.
            while sched
                .state()
                .queues
                .values()
                .map(VecDeque::len)
                .sum::<usize>()
                < waiters.len()
            {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let mut grants = Vec::new();
        for _ in 0..13 {
            grants.push(order.recv().await.unwrap());
        }
        assert_eq!(
            &grants[..6],
            &[fp(1), fp(2), fp(3), fp(1), fp(3), fp(1)],
            "{grants:?}"
        );
        assert!(grants[6..].iter().all(|g| *g == fp(1)));
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(sched.free(), 1, "every slot came back");
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_waiter_that_left_passes_on() {
        let sched = SlotScheduler::new(1);
        let held = sched.acquire(fp(1)).await;
        let gone = tokio::spawn({
            let s = sched.clone();
            async move { s.acquire(fp(2)).await }
        });
        while sched.state().queues.is_empty() {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        let s = sched.clone();
        let next = tokio::spawn(async move { s.acquire(fp(3)).await });
        while sched.state().queues.len() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the slot passed over the waiter that left")
            .unwrap();
        drop(slot);
        assert_eq!(sched.free(), 1);
    }
}
