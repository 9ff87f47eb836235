//! Introductions: a downloader asks the tracker to introduce it to a peer of a file's swarm that
//! it cannot dial (`POST /introductions`); the tracker answers it at once and queues the other
//! side's view for that peer, which collects it with a long-poll (`GET /introductions`). Both
//! views carry one random token: the relay pairs the two sides by it.
//!
//! Everything here is in memory and per tracker process, like the reach table: an introduction
//! lives [`INTRODUCTION_TTL`], far less than a restart, and the seeder must long-poll the same
//! tracker process the downloader asked (replicas behind one name each introduce their own
//! long-pollers; a miss costs the downloader one retry on its next path).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use torrentguard_protocol::api::{
    IntroVia, IntroduceRequest, Introduction, Introductions as IntroductionList, IntroductionsQuery,
};
use torrentguard_protocol::relay::RelayStatus;
use torrentguard_protocol::{FileId, Fingerprint};

use crate::app::{
    AppState, AuthorizedPeer, LocalAddr, MAX_FILE_PEERS, RemoteAddr, address_for_asker, unix_now,
};
use crate::error::{ApiError, AppJson, AppQuery};
use crate::limits::Scope;
use crate::metrics::TraversalStats;

/// How long an introduction can be collected by the seeder and joined at the relay.
pub const INTRODUCTION_TTL: Duration = Duration::from_secs(30);
/// Introductions queued for one peer; past it the oldest is dropped (its asker retries).
pub const MAX_QUEUED_PER_PEER: usize = 32;
/// Introductions held in all (~300 bytes each); past it `POST /introductions` is 429.
pub const MAX_INTRODUCTIONS: usize = 100_000;
/// Longest long-poll, in seconds.
pub const MAX_WAIT_SECS: u32 = 30;
/// Long-polls waiting at once, in all. They are exempt from `--max-concurrent-requests` (a
/// long-poll holds its slot for up to 30 s and would starve the bound), so they have their own.
pub const MAX_LONG_POLLS: usize = 4096;
/// Long-polls one identity may have waiting; a newer one past it ends the oldest at once. More
/// than one, so two processes sharing an identity (the daemon and a `share`) do not end each
/// other's polls in a loop; few, so one identity cannot take the whole bound.
pub const MAX_LONG_POLLS_PER_IDENTITY: usize = 4;
/// How far ahead a punch is scheduled: time for the seeder's long-poll answer to arrive.
pub const PUNCH_LEAD: Duration = Duration::from_millis(1000);

pub type Token = [u8; 32];

/// One side of an introduction: who, and the public endpoint the other side should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub fingerprint: Fingerprint,
    pub address: IpAddr,
    pub port: u16,
}

/// Which side of an introduction a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The downloader that asked (the inner TLS client through the relay).
    Asker = 0,
    /// The peer it asked to meet (the inner TLS server).
    Seeder = 1,
}

#[derive(Debug)]
struct Entry {
    file_id: FileId,
    via: IntroVia,
    asker: Side,
    seeder: Side,
    created: Instant,
    start_at: Instant,
    /// Which sides have joined at the relay (each may once).
    joined: [bool; 2],
}

#[derive(Debug, Default)]
struct Mailbox {
    queue: VecDeque<Token>,
    notify: Arc<Notify>,
    /// Bumped by each long-poll that starts, to name it.
    generation: u64,
    /// The long-polls waiting, oldest first; one no longer here was superseded.
    waiters: VecDeque<u64>,
}

impl Mailbox {
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.waiters.is_empty()
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Token, Entry>,
    /// Tokens in creation order, for expiry.
    order: VecDeque<(Instant, Token)>,
    mailboxes: HashMap<Fingerprint, Mailbox>,
}

/// The live introductions and each peer's queue of those waiting for it.
#[derive(Debug)]
pub struct Introductions {
    ttl: Duration,
    inner: Mutex<Inner>,
    long_polls: Arc<Semaphore>,
    random: Arc<rustls::crypto::CryptoProvider>,
}

/// The introduction table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tracker holds as many introductions as it keeps")]
pub struct Full;

impl Default for Introductions {
    fn default() -> Self {
        Self::new(INTRODUCTION_TTL)
    }
}

impl Introductions {
    pub fn new(ttl: Duration) -> Self {
        Introductions {
            ttl,
            inner: Mutex::new(Inner::default()),
            long_polls: Arc::new(Semaphore::new(MAX_LONG_POLLS)),
            random: torrentguard_trust::config::provider(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps are still sane.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an introduction and queues it for the seeder, waking its long-poll.
    pub fn introduce(
        &self,
        file_id: FileId,
        via: IntroVia,
        asker: Side,
        seeder: Side,
        start_in: Duration,
        now: Instant,
    ) -> Result<Token, IntroduceError> {
        let mut token = [0u8; 32];
        self.random
            .secure_random
            .fill(&mut token)
            .map_err(|_| IntroduceError::Random)?;
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if inner.entries.len() >= MAX_INTRODUCTIONS {
            return Err(IntroduceError::Full(Full));
        }
        let entry = Entry {
            file_id,
            via,
            asker,
            seeder,
            created: now,
            start_at: now + start_in,
            joined: [false; 2],
        };
        inner.entries.insert(token, entry);
        inner.order.push_back((now, token));
        let mailbox = inner.mailboxes.entry(seeder.fingerprint).or_default();
        if mailbox.queue.len() >= MAX_QUEUED_PER_PEER {
            mailbox.queue.pop_front();
        }
        mailbox.queue.push_back(token);
        mailbox.notify.notify_waiters();
        Ok(token)
    }

    /// Drops introductions older than the TTL, oldest first.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(created, token)) = inner.order.front() {
            if now.saturating_duration_since(created) <= self.ttl {
                break;
            }
            inner.order.pop_front();
            let Some(e) = inner.entries.remove(&token) else {
                continue;
            };
            // A queue holds at most MAX_QUEUED_PER_PEER tokens: cheap to search.
            let seeder = e.seeder.fingerprint;
            if let Some(m) = inner.mailboxes.get_mut(&seeder) {
                m.queue.retain(|t| *t != token);
                if m.idle() {
                    inner.mailboxes.remove(&seeder);
                }
            }
        }
    }

    /// `role`'s view of the introduction `token` (the other side's endpoint), with the start
    /// counted from `now`; `reached` is the tracker address the viewer reached, for
    /// [`address_for_asker`].
    pub fn view(
        &self,
        token: &Token,
        role: Role,
        reached: IpAddr,
        relay_port: Option<u16>,
        now: Instant,
    ) -> Option<Introduction> {
        let inner = self.lock();
        let e = inner.entries.get(token)?;
        self.live(e, now)
            .then(|| view_of(token, e, role, reached, relay_port, now))
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.created) <= self.ttl
    }

    /// The introductions queued for `peer`, each handed out once; expired ones are dropped.
    pub fn take(
        &self,
        peer: &Fingerprint,
        reached: IpAddr,
        relay_port: Option<u16>,
        now: Instant,
    ) -> Vec<Introduction> {
        let mut inner = self.lock();
        let Some(mailbox) = inner.mailboxes.get_mut(peer) else {
            return Vec::new();
        };
        let tokens: Vec<Token> = mailbox.queue.drain(..).collect();
        if mailbox.idle() {
            inner.mailboxes.remove(peer);
        }
        tokens
            .iter()
            .filter_map(|t| {
                let e = inner.entries.get(t)?;
                self.live(e, now)
                    .then(|| view_of(t, e, Role::Seeder, reached, relay_port, now))
            })
            .collect()
    }

    /// Starts a long-poll of `peer`, ending its oldest past [`MAX_LONG_POLLS_PER_IDENTITY`]
    /// (it sees [`Self::superseded`]); returns what to wait on and this poll's generation.
    fn subscribe(&self, peer: Fingerprint) -> (Arc<Notify>, u64) {
        let mut inner = self.lock();
        let mailbox = inner.mailboxes.entry(peer).or_default();
        mailbox.generation += 1;
        mailbox.waiters.push_back(mailbox.generation);
        if mailbox.waiters.len() > MAX_LONG_POLLS_PER_IDENTITY {
            mailbox.waiters.pop_front();
            mailbox.notify.notify_waiters();
        }
        (mailbox.notify.clone(), mailbox.generation)
    }

    fn superseded(&self, peer: &Fingerprint, generation: u64) -> bool {
        self.lock()
            .mailboxes
            .get(peer)
            .is_none_or(|m| !m.waiters.contains(&generation))
    }

    fn unsubscribe(&self, peer: &Fingerprint, generation: u64) {
        let mut inner = self.lock();
        if let Some(m) = inner.mailboxes.get_mut(peer) {
            m.waiters.retain(|g| *g != generation);
            if m.idle() {
                inner.mailboxes.remove(peer);
            }
        }
    }

    /// A relay join of `token` by `peer`: which side it is, if the token names a live relay
    /// introduction of which `peer` is a side that has not joined yet.
    pub fn join(
        &self,
        token: &Token,
        peer: &Fingerprint,
        now: Instant,
    ) -> Result<Role, RelayStatus> {
        let mut inner = self.lock();
        let ttl = self.ttl;
        let Some(e) = inner.entries.get_mut(token) else {
            return Err(RelayStatus::UnknownToken);
        };
        if now.saturating_duration_since(e.created) > ttl || e.via != IntroVia::Relay {
            return Err(RelayStatus::UnknownToken);
        }
        let role = if *peer == e.asker.fingerprint {
            Role::Asker
        } else if *peer == e.seeder.fingerprint {
            Role::Seeder
        } else {
            return Err(RelayStatus::NotYours);
        };
        if std::mem::replace(&mut e.joined[role as usize], true) {
            return Err(RelayStatus::NotYours);
        }
        Ok(role)
    }

    /// Introductions held now (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntroduceError {
    #[error(transparent)]
    Full(#[from] Full),
    #[error("the system random generator failed")]
    Random,
}

fn view_of(
    token: &Token,
    e: &Entry,
    role: Role,
    reached: IpAddr,
    relay_port: Option<u16>,
    now: Instant,
) -> Introduction {
    let other = match role {
        Role::Asker => e.seeder,
        Role::Seeder => e.asker,
    };
    let start_in = e.start_at.saturating_duration_since(now);
    Introduction {
        token: hex::encode(token),
        file_id: e.file_id,
        peer: other.fingerprint,
        address: address_for_asker(other.address, reached),
        port: other.port,
        via: e.via,
        start_in_ms: u64::try_from(start_in.as_millis()).unwrap_or(u64::MAX),
        relay_port: (e.via == IntroVia::Relay).then_some(relay_port).flatten(),
    }
}

/// `POST /introductions`: introduces the caller to a live peer of a file; 201 with the
/// caller's view, the peer's queued for its long-poll.
pub(crate) async fn introduce(
    State(state): State<AppState>,
    AuthorizedPeer(asker): AuthorizedPeer,
    RemoteAddr(remote): RemoteAddr,
    LocalAddr(local): LocalAddr,
    AppJson(req): AppJson<IntroduceRequest>,
) -> Result<(StatusCode, Json<Introduction>), ApiError> {
    if req.port == 0 {
        return Err(ApiError::BadRequest("port must be 1..=65535".into()));
    }
    if req.peer == asker {
        return Err(ApiError::BadRequest(
            "a peer cannot be introduced to itself".into(),
        ));
    }
    let relay_port = state.traversal().relay_port;
    if req.via == IntroVia::Relay && relay_port.is_none() {
        return Err(ApiError::NoRelay("this tracker runs no relay".into()));
    }
    let seeder = live_peer(&state, req.file_id, req.peer).await?;
    let asker_side = Side {
        fingerprint: asker,
        address: remote.ip().to_canonical(),
        port: req.port,
    };
    let start_in = match req.via {
        IntroVia::Punch => PUNCH_LEAD,
        IntroVia::Relay => Duration::ZERO,
    };
    let intros = &state.traversal().introductions;
    let now = Instant::now();
    let token = intros
        .introduce(req.file_id, req.via, asker_side, seeder, start_in, now)
        .map_err(|e| match e {
            IntroduceError::Full(_) => {
                ApiError::RateLimited(Scope::Concurrency, Duration::from_secs(1))
            }
            IntroduceError::Random => ApiError::internal(e),
        })?;
    state.metrics().traversal().record_introduction(req.via);
    tracing::debug!(asker = %asker.short(), peer = %req.peer.short(), file = %req.file_id.short(), via = ?req.via, "introduction");
    let view = intros
        .view(&token, Role::Asker, local.ip(), relay_port, now)
        .ok_or_else(|| ApiError::Internal("an introduction expired as it was made".into()))?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `peer` as a live member of `file`'s swarm, at the address and port it announced.
async fn live_peer(state: &AppState, file: FileId, peer: Fingerprint) -> Result<Side, ApiError> {
    if state.chunk_count(file).await?.is_none() {
        return Err(ApiError::NotFound(format!("no file {file}")));
    }
    let peers = state
        .store()
        .file_peers(file, state.live_since(unix_now()), None, MAX_FILE_PEERS)
        .await?;
    peers
        .into_iter()
        .find(|p| p.fingerprint == peer)
        .map(|p| Side {
            fingerprint: p.fingerprint,
            address: p.address,
            port: p.port,
        })
        .ok_or_else(|| {
            ApiError::NotInSwarm(format!(
                "{} is not a live peer of file {}",
                peer.short(),
                file.short()
            ))
        })
}

/// Ends a long-poll's subscription however the handler ends (answered, timed out, dropped).
struct Subscription<'a> {
    intros: &'a Introductions,
    stats: &'a TraversalStats,
    peer: Fingerprint,
    generation: u64,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.intros.unsubscribe(&self.peer, self.generation);
        self.stats.long_poll(false);
    }
}

/// `GET /introductions?wait_secs=N`: the caller's queued introductions at once, or the first
/// to arrive within N seconds (an empty list after that, at shutdown, or when a newer
/// long-poll of the same identity starts).
pub(crate) async fn collect(
    State(state): State<AppState>,
    AuthorizedPeer(peer): AuthorizedPeer,
    LocalAddr(local): LocalAddr,
    AppQuery(q): AppQuery<IntroductionsQuery>,
) -> Result<Json<IntroductionList>, ApiError> {
    let wait = q.wait_secs.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::BadRequest(format!(
            "wait_secs {wait} is out of range 0..={MAX_WAIT_SECS}"
        )));
    }
    let traversal = state.traversal();
    let intros = &traversal.introductions;
    let (reached, relay_port) = (local.ip(), traversal.relay_port);
    let items = intros.take(&peer, reached, relay_port, Instant::now());
    if !items.is_empty() || wait == 0 {
        return Ok(Json(IntroductionList { items }));
    }
    let Ok(slot) = intros.long_polls.clone().try_acquire_owned() else {
        state.metrics().record_rate_limited(Scope::Concurrency);
        return Err(ApiError::RateLimited(
            Scope::Concurrency,
            Duration::from_secs(1),
        ));
    };
    let (notify, generation) = intros.subscribe(peer);
    let stats = state.metrics().traversal();
    stats.long_poll(true);
    let _subscription = Subscription {
        intros,
        stats,
        peer,
        generation,
        _slot: slot,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
    loop {
        // Registered before the queue is read, so an introduction queued right after the
        // read still wakes this.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let items = intros.take(&peer, reached, relay_port, Instant::now());
        if !items.is_empty() || intros.superseded(&peer, generation) {
            return Ok(Json(IntroductionList { items }));
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = state.closing().cancelled() => break,
        }
    }
    Ok(Json(IntroductionList { items: Vec::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(b: u8, port: u16) -> Side {
        Side {
            fingerprint: Fingerprint::of_der(&[b]),
            address: IpAddr::from([192, 0, 2, b]),
            port,
        }
    }

    fn file() -> FileId {
        "00".repeat(32).parse().unwrap()
    }

    const LOOP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn each_side_sees_the_other_and_the_seeder_gets_it_once() {
        let t = Introductions::default();
        let now = Instant::now();
        let (a, s) = (side(1, 1111), side(2, 2222));
        let token = t
            .introduce(file(), IntroVia::Punch, a, s, PUNCH_LEAD, now)
            .unwrap();
        let asker = t.view(&token, Role::Asker, LOOP, None, now).unwrap();
        assert_eq!((asker.peer, asker.port), (s.fingerprint, 2222));
        assert_eq!(asker.address, s.address);
        let later = now + Duration::from_millis(400);
        let got = t.take(&s.fingerprint, LOOP, None, later);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].peer, got[0].port), (a.fingerprint, 1111));
        assert_eq!(got[0].token, asker.token);
        assert_eq!(got[0].start_in_ms, 600);
        assert!(t.take(&s.fingerprint, LOOP, None, later).is_empty());
    }

    #[test]
    fn expired_introductions_are_not_delivered_nor_joinable() {
        let t = Introductions::new(Duration::from_secs(30));
        let now = Instant::now();
        let (a, s) = (side(1, 1), side(2, 2));
        let token = t
            .introduce(file(), IntroVia::Relay, a, s, Duration::ZERO, now)
            .unwrap();
        let late = now + Duration::from_secs(31);
        assert!(t.take(&s.fingerprint, LOOP, Some(9), late).is_empty());
        assert_eq!(
            t.join(&token, &a.fingerprint, late),
            Err(RelayStatus::UnknownToken)
        );
        // The next introduction sweeps it out.
        t.introduce(file(), IntroVia::Punch, a, s, PUNCH_LEAD, late)
            .unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_seeders_queue_keeps_the_newest() {
        let t = Introductions::default();
        let now = Instant::now();
        let s = side(2, 2);
        for i in 0..(MAX_QUEUED_PER_PEER + 3) {
            let a = side(10 + i as u8, 1000 + i as u16);
            t.introduce(file(), IntroVia::Punch, a, s, PUNCH_LEAD, now)
                .unwrap();
        }
        let got = t.take(&s.fingerprint, LOOP, None, now);
        assert_eq!(got.len(), MAX_QUEUED_PER_PEER);
        assert_eq!(got[0].port, 1003);
    }

    #[test]
    fn joins_are_by_side_once_and_only_for_relay_introductions() {
        let t = Introductions::default();
        let now = Instant::now();
        let (a, s, x) = (side(1, 1), side(2, 2), side(3, 3));
        let relay = t
            .introduce(file(), IntroVia::Relay, a, s, Duration::ZERO, now)
            .unwrap();
        assert_eq!(
            t.join(&relay, &x.fingerprint, now),
            Err(RelayStatus::NotYours)
        );
        assert_eq!(t.join(&relay, &s.fingerprint, now), Ok(Role::Seeder));
        assert_eq!(
            t.join(&relay, &s.fingerprint, now),
            Err(RelayStatus::NotYours)
        );
        assert_eq!(t.join(&relay, &a.fingerprint, now), Ok(Role::Asker));
        let punch = t
            .introduce(file(), IntroVia::Punch, a, s, PUNCH_LEAD, now)
            .unwrap();
        assert_eq!(
            t.join(&punch, &a.fingerprint, now),
            Err(RelayStatus::UnknownToken)
        );
        assert_eq!(
            t.join(&[0; 32], &a.fingerprint, now),
            Err(RelayStatus::UnknownToken)
        );
    }

    #[test]
    fn past_its_bound_a_newer_long_poll_supersedes_the_oldest() {
        let t = Introductions::default();
        let peer = Fingerprint::of_der(&[7]);
        let polls: Vec<u64> = (0..MAX_LONG_POLLS_PER_IDENTITY)
            .map(|_| t.subscribe(peer).1)
            .collect();
        assert!(polls.iter().all(|&g| !t.superseded(&peer, g)));
        let (_, newest) = t.subscribe(peer);
        assert!(t.superseded(&peer, polls[0]));
        assert!(!t.superseded(&peer, polls[1]) && !t.superseded(&peer, newest));
        for g in polls.into_iter().chain([newest]) {
            t.unsubscribe(&peer, g);
        }
        assert!(t.lock().mailboxes.is_empty());
    }
}
