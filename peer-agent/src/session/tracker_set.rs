//! Several trackers as one: an agent given more than one `--tracker` (or a share code naming
//! several) asks the first that answers and fails over to the next.
//!
//! Each tracker is pinned on its own (its own fingerprint, or trust on first use) and connected
//! on first need. A tracker that fails (cannot be reached, TLS or pin failure, 5xx, timeout)
//! rests for a backoff that doubles from 1 s to 60 s; calls go to the others meanwhile and come
//! back to it, in the order given, once its rest is over. A tracker that answers 429 is waited
//! for as its `Retry-After` says (bounded), and is not counted as failing: it is overloaded,
//! not gone. A tracker that does not know the file asked about (404) is not failing either: the
//! next one may know it.
//!
//! Registration goes to every tracker, so a downloader that fails over finds the manifest
//! wherever it lands; announces go to the first that answers (replicas of one tracker share
//! their peers; independent trackers each list the peers announced to them).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::StatusCode;
use torrentguard_protocol::api::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, RegisterResponse, ReportRequest,
};
use torrentguard_protocol::{FileId, Fingerprint, Manifest};
use torrentguard_trust::Identity;

use super::{TrackerClient, TrackerError, leave_swarms};
use crate::agent::TrackerTarget;
use crate::torrent::{SwarmDirectory, SwarmLookupError};

mod nat;

/// Longest wait a tracker's `Retry-After` buys before the call moves on to the next tracker.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How many 429s in a row one call waits out on one tracker before moving on.
const MAX_RATE_LIMITED_RETRIES: u32 = 3;
/// First rest of a failing tracker; it doubles with each failure in a row, up to the max.
const FIRST_REST: Duration = Duration::from_secs(1);
const MAX_REST: Duration = Duration::from_secs(60);

/// The trackers of one agent, tried in order. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct TrackerSet {
    inner: Arc<Inner>,
}

struct Inner {
    /// How to connect a member: none for a set made of a connected client.
    connector: Option<(Arc<Identity>, PathBuf)>,
    members: Vec<Member>,
    /// The member that answered last: its announce interval is the one to keep.
    current: AtomicUsize,
}

struct Member {
    target: TrackerTarget,
    client: tokio::sync::OnceCell<TrackerClient>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Failures in a row (429s are not failures).
    failures: u32,
    /// Until when other trackers are asked first.
    rest_until: Option<Instant>,
}

/// What an error from one tracker means for the call.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The tracker is failing: rest it and ask the next.
    Failing,
    /// The tracker is fine but could not serve this call (it does not know the file, or is
    /// busy for longer than we wait): ask the next, without resting it.
    AskNext,
    /// A refusal every tracker would repeat (a bad request, a refused token): stop here.
    Final,
}

fn verdict(e: &TrackerError) -> Verdict {
    match e {
        TrackerError::Unreachable { .. }
        | TrackerError::PinMismatch { .. }
        | TrackerError::FingerprintChanged { .. }
        | TrackerError::ConflictingRecords { .. }
        | TrackerError::BadUrl(_)
        | TrackerError::BadAnswer(_)
        | TrackerError::Tls(_) => Verdict::Failing,
        TrackerError::Api { status, .. } if status.is_server_error() => Verdict::Failing,
        TrackerError::Api { status, .. } if *status == StatusCode::NOT_FOUND => Verdict::AskNext,
        TrackerError::RateLimited { .. } | TrackerError::BadManifest { .. } => Verdict::AskNext,
        _ => Verdict::Final,
    }
}

impl TrackerSet {
    /// The trackers of `targets`, in that order, none connected yet; at least one.
    pub fn new(
        targets: Vec<TrackerTarget>,
        identity: Arc<Identity>,
        data_dir: PathBuf,
    ) -> Result<Self, TrackerError> {
        if targets.is_empty() {
            return Err(TrackerError::NoTracker);
        }
        let members = targets
            .into_iter()
            .map(|target| Member {
                target,
                client: tokio::sync::OnceCell::new(),
                health: Mutex::default(),
            })
            .collect();
        Ok(TrackerSet {
            inner: Arc::new(Inner {
                connector: Some((identity, data_dir)),
                members,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// A set of one tracker already connected (the daemon connects its own per share).
    pub fn of_client(client: TrackerClient) -> Self {
        let target = TrackerTarget {
            url: client.base_url().to_string(),
            fingerprint: Some(client.fingerprint()),
            token: client.token().map(str::to_owned),
        };
        let member = Member {
            target,
            client: tokio::sync::OnceCell::new_with(Some(client)),
            health: Mutex::default(),
        };
        TrackerSet {
            inner: Arc::new(Inner {
                connector: None,
                members: vec![member],
                current: AtomicUsize::new(0),
            }),
        }
    }

    /// Connects to the first tracker that answers, so that a wrong pin or a dead tracker is
    /// reported up front; the others connect when first needed.
    pub async fn connect_first(&self) -> Result<TrackerClient, TrackerError> {
        self.call(|c| async move { Ok(c) }).await
    }

    /// The trackers, in the order they are tried.
    pub fn targets(&self) -> impl Iterator<Item = &TrackerTarget> {
        self.inner.members.iter().map(|m| &m.target)
    }

    /// Each tracker, pinned to the fingerprint it presented if it was connected, else to the
    /// one given (none: it is trusted on first use).
    pub fn pinned_targets(&self) -> Vec<TrackerTarget> {
        let members = self.inner.members.iter();
        members
            .map(|m| {
                let presented = m.client.get().map(TrackerClient::fingerprint);
                TrackerTarget {
                    fingerprint: presented.or(m.target.fingerprint),
                    ..m.target.clone()
                }
            })
            .collect()
    }

    /// The client of the tracker that answered last (connected before any call returns Ok).
    pub fn current(&self) -> Option<TrackerClient> {
        let i = self.inner.current.load(Ordering::Relaxed);
        self.inner.members.get(i)?.client.get().cloned()
    }

    /// How often the tracker that answered last wants to hear from us.
    pub fn announce_interval(&self) -> Duration {
        self.current()
            .map_or(super::tracker_client::DEFAULT_ANNOUNCE_INTERVAL, |c| {
                c.announce_interval()
            })
    }

    /// Runs `op` on the first tracker that answers, failing over as the module says.
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, TrackerError>
    where
        F: Fn(TrackerClient) -> Fut,
        Fut: Future<Output = Result<T, TrackerError>>,
    {
        let mut failures = Vec::new();
        for i in self.order() {
            match self.try_member(i, &op).await {
                Ok(v) => {
                    self.inner.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => match verdict(&e) {
                    Verdict::Final => return Err(e),
                    verdict => {
                        let url = self.inner.members[i].target.url.clone();
                        if verdict == Verdict::Failing {
                            self.rest(i);
                        }
                        tracing::warn!(tracker = %url, error = %e, "tracker did not serve the request; trying the next one");
                        failures.push((url, e));
                    }
                },
            }
        }
        Err(collapse(failures))
    }

    /// Registers `manifest` with every tracker, so that a downloader finds it on whichever it
    /// fails over to. Succeeds if one tracker took it.
    pub async fn register(&self, manifest: &Manifest) -> Result<RegisterResponse, TrackerError> {
        let register = |c: TrackerClient| async move { c.register(manifest).await };
        let register = &register;
        let all = (0..self.inner.members.len())
            .map(|i| async move { (i, self.try_member(i, register).await) });
        let mut accepted = None;
        let mut failures = Vec::new();
        for (i, r) in futures::future::join_all(all).await {
            let url = self.inner.members[i].target.url.clone();
            match r {
                Ok(resp) => {
                    accepted.get_or_insert(resp);
                }
                Err(e) => {
                    if verdict(&e) == Verdict::Failing {
                        self.rest(i);
                    }
                    tracing::warn!(tracker = %url, error = %e, "could not register the manifest with this tracker");
                    failures.push((url, e));
                }
            }
        }
        accepted.ok_or_else(|| collapse(failures))
    }

    /// The manifest of `id` from the first tracker that has it.
    pub async fn manifest(&self, id: &FileId) -> Result<Manifest, TrackerError> {
        self.call(|c| async move { c.manifest(id).await }).await
    }

    /// Announces `req` to the first tracker that answers. One that does not know the file
    /// (it was down when the file was registered) is given `manifest` first.
    pub async fn announce(
        &self,
        req: &AnnounceRequest,
        manifest: &Manifest,
    ) -> Result<AnnounceResponse, TrackerError> {
        self.call(|c| async move {
            match c.announce(req).await {
                Err(TrackerError::Api { status, .. })
                    if status == StatusCode::NOT_FOUND && req.event != AnnounceEvent::Stopped =>
                {
                    c.register(manifest).await?;
                    c.announce(req).await
                }
                r => r,
            }
        })
        .await
    }

    /// Reports a misbehaving peer to the first tracker that answers (the one whose answers
    /// are being used, unless it has just failed).
    pub async fn report(&self, req: &ReportRequest) -> Result<(), TrackerError> {
        self.call(|c| async move { c.report(req).await }).await
    }

    /// Asks the first tracker that answers for an introduction, as [`TrackerSet::announce`]
    /// picks one; returns the client that made it (its relay is the one to meet at).
    pub async fn introduce(
        &self,
        req: &torrentguard_protocol::api::IntroduceRequest,
    ) -> Result<(TrackerClient, torrentguard_protocol::api::Introduction), TrackerError> {
        self.call(|c| async move {
            let intro = c.introduce(req).await?;
            Ok((c, intro))
        })
        .await
    }

    /// Announces `stopped` for everything announced, on every tracker that was announced to.
    pub async fn leave_all(&self) {
        let clients = self.inner.members.iter().filter_map(|m| m.client.get());
        futures::future::join_all(clients.map(leave_swarms)).await;
    }

    /// Members not resting, in the order given, then the resting ones (soonest back first):
    /// when every tracker is failing, trying one beats failing without asking.
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let rest_of = |i: usize| {
            let h = self.inner.members[i].health();
            h.rest_until.filter(|t| *t > now)
        };
        let mut order: Vec<(Option<Instant>, usize)> = (0..self.inner.members.len())
            .map(|i| (rest_of(i), i))
            .collect();
        // `None` (not resting) sorts first; ties keep the given order.
        order.sort();
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// `op` on member `i`, connecting it first if need be, waiting out its 429s (bounded).
    async fn try_member<T, F, Fut>(&self, i: usize, op: &F) -> Result<T, TrackerError>
    where
        F: Fn(TrackerClient) -> Fut,
        Fut: Future<Output = Result<T, TrackerError>>,
    {
        let member = &self.inner.members[i];
        let mut waits = 0;
        loop {
            let result = match self.client(member).await {
                Ok(client) => op(client).await,
                Err(e) => Err(e),
            };
            match result {
                Err(TrackerError::RateLimited { url, retry_after })
                    if retry_after <= MAX_RETRY_AFTER && waits < MAX_RATE_LIMITED_RETRIES =>
                {
                    tracing::info!(tracker = %url, ?retry_after, "tracker is busy; waiting as it asks");
                    tokio::time::sleep(retry_after).await;
                    waits += 1;
                }
                Err(TrackerError::RateLimited { url, retry_after }) => {
                    // Busy for longer than a call waits: ask the others until then.
                    member.health().rest_until = Some(Instant::now() + retry_after);
                    return Err(TrackerError::RateLimited { url, retry_after });
                }
                Ok(v) => {
                    *member.health() = Health::default();
                    return Ok(v);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn client(&self, member: &Member) -> Result<TrackerClient, TrackerError> {
        let t = &member.target;
        let connect = || async {
            // A set without a connector holds connected clients only: the cell is set.
            let (identity, data_dir) = self
                .inner
                .connector
                .as_ref()
                .ok_or(TrackerError::NoTracker)?;
            TrackerClient::connect(&t.url, t.fingerprint, identity, data_dir, t.token.clone()).await
        };
        member.client.get_or_try_init(connect).await.cloned()
    }

    /// Member `i` failed: others are asked first for a while, longer with each failure.
    fn rest(&self, i: usize) {
        let mut h = self.inner.members[i].health();
        let rest = FIRST_REST
            .saturating_mul(1 << h.failures.min(6))
            .min(MAX_REST);
        h.failures = h.failures.saturating_add(1);
        h.rest_until = Some(Instant::now() + rest);
    }
}

impl Member {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One tracker's error as it is; several as the list of what each said.
fn collapse(mut failures: Vec<(String, TrackerError)>) -> TrackerError {
    match failures.len() {
        0 => TrackerError::NoTracker,
        1 => failures.remove(0).1,
        _ => TrackerError::NoneAnswered(failures),
    }
}

impl SwarmDirectory for TrackerSet {
    fn members<'a>(
        &'a self,
        id: &'a FileId,
    ) -> BoxFuture<'a, Result<Vec<Fingerprint>, SwarmLookupError>> {
        Box::pin(async move {
            let list = self
                .call(|c| async move { c.file_peers(id).await })
                .await
                .map_err(SwarmLookupError::new)?;
            Ok(list.peers.iter().map(|p| p.fingerprint).collect())
        })
    }
}

#[cfg(test)]
mod tests;
