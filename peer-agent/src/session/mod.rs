//! The agent's session with its tracker: the only module that talks to it.
//!
//! Registering manifests, fetching them, announcing (started, progress, completed, stopped),
//! keeping shared files announced and withdrawing those that change on disk all happen here.
//! The upload side learns who is in a swarm through [`SwarmDirectory`], which this module
//! implements over the tracker client, so `peer/` never holds a tracker client itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::api::{AnnounceEvent, AnnounceRequest, AnnounceResponse};
use torrentguard_protocol::{FileId, Fingerprint, Manifest};

use crate::download::{DownloadError, check_distinct_outputs};
use crate::events::{Event, EventSink};
use crate::peer::Seeder;
use crate::torrent::{SharedFile, SwarmDirectory, SwarmLookupError, WithdrawReason};

pub mod introductions;
pub mod reachability;
pub mod rendezvous;
pub mod tracker_client;
pub mod tracker_set;
pub mod trackers;

pub use tracker_client::{KNOWN_TRACKERS_FILE, TrackerClient, TrackerError};
pub use tracker_set::TrackerSet;

/// How often a shared file's size and modification time are checked.
const WITHDRAW_CHECK: Duration = Duration::from_secs(2);

impl SwarmDirectory for TrackerClient {
    fn members<'a>(
        &'a self,
        id: &'a FileId,
    ) -> BoxFuture<'a, Result<Vec<Fingerprint>, SwarmLookupError>> {
        Box::pin(async move {
            let list = self.file_peers(id).await.map_err(SwarmLookupError::new)?;
            Ok(list.peers.iter().map(|p| p.fingerprint).collect())
        })
    }
}

/// Announces `event` for `file` with its current bitfield, and notes the swarm it hears of.
pub async fn announce(
    tracker: &TrackerClient,
    seeder: &Seeder,
    file: &SharedFile,
    event: AnnounceEvent,
) -> Result<AnnounceResponse, TrackerError> {
    let req = announce_request(seeder, file, event);
    let resp = tracker.announce(&req).await?;
    file.note_swarm(resp.peers.iter().map(|p| p.fingerprint));
    Ok(resp)
}

/// As [`announce`], to the first tracker of `trackers` that answers.
async fn announce_to_set(
    trackers: &TrackerSet,
    seeder: &Seeder,
    file: &SharedFile,
    event: AnnounceEvent,
) -> Result<AnnounceResponse, TrackerError> {
    let req = announce_request(seeder, file, event);
    let resp = trackers.announce(&req, &file.manifest).await?;
    file.note_swarm(resp.peers.iter().map(|p| p.fingerprint));
    Ok(resp)
}

fn announce_request(seeder: &Seeder, file: &SharedFile, event: AnnounceEvent) -> AnnounceRequest {
    let (address, port) = seeder.announced_endpoint();
    AnnounceRequest {
        file_id: file.file_id,
        port,
        event,
        bitfield: file.have().to_base64(),
        address,
        reach: seeder.reach(),
    }
}

/// Fetches the manifests of `ids` and checks that no two of them would share an output,
/// `.part` or state file in one directory: before anything is downloaded. A manifest that
/// cannot be fetched is `None` here; its own download reports why, and the others go on.
pub async fn fetch_manifests(
    tracker: &TrackerClient,
    ids: &[FileId],
) -> Result<Vec<Option<Arc<Manifest>>>, DownloadError> {
    fetch_manifests_from(&TrackerSet::of_client(tracker.clone()), ids).await
}

/// As [`fetch_manifests`], each from the first of `trackers` that has it.
pub async fn fetch_manifests_from(
    tracker: &TrackerSet,
    ids: &[FileId],
) -> Result<Vec<Option<Arc<Manifest>>>, DownloadError> {
    let manifests: Vec<_> = futures::future::join_all(ids.iter().map(|id| tracker.manifest(id)))
        .await
        .into_iter()
        .map(|r| r.ok().map(Arc::new))
        .collect();
    let known: Vec<_> = manifests.iter().flatten().cloned().collect();
    check_distinct_outputs(&known)?;
    Ok(manifests)
}

/// The agent's standing with its trackers, as shares and downloads use it: announces carry the
/// endpoint of this agent's listener and feed each share's swarm cache; with several trackers,
/// each call fails over as [`TrackerSet`] says.
#[derive(Clone)]
pub struct Session {
    tracker: TrackerSet,
    seeder: Arc<Seeder>,
    /// Our IP as the latest announce answer saw it: reach is learned again when it moves.
    observed: Arc<tokio::sync::watch::Sender<Option<std::net::IpAddr>>>,
}

impl Session {
    pub fn new(tracker: TrackerClient, seeder: Arc<Seeder>) -> Self {
        Self::over(TrackerSet::of_client(tracker), seeder)
    }

    /// A session with every tracker of `trackers`.
    pub fn over(trackers: TrackerSet, seeder: Arc<Seeder>) -> Self {
        Session {
            tracker: trackers,
            seeder,
            observed: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }

    /// The trackers of this session.
    pub fn trackers(&self) -> &TrackerSet {
        &self.tracker
    }

    /// Our public IP as announce answers see it; changes only when it moves.
    pub fn observed_ips(&self) -> tokio::sync::watch::Receiver<Option<std::net::IpAddr>> {
        self.observed.subscribe()
    }

    /// Notes the address an announce answer saw us at (answers without one change nothing).
    fn note_observed(&self, resp: &AnnounceResponse) {
        let Some(seen) = resp.observed.map(|a| a.ip().to_canonical()) else {
            return;
        };
        self.observed.send_if_modified(|ip| {
            let moved = *ip != Some(seen);
            *ip = Some(seen);
            moved
        });
    }

    /// Announces `event` for `file` (see [`announce`]).
    pub async fn announce(
        &self,
        file: &SharedFile,
        event: AnnounceEvent,
    ) -> Result<AnnounceResponse, TrackerError> {
        let resp = announce_to_set(&self.tracker, &self.seeder, file, event).await?;
        self.note_observed(&resp);
        Ok(resp)
    }

    /// Registers a manifest (idempotent: a known id is left as it is).
    pub async fn register(
        &self,
        manifest: &Manifest,
    ) -> Result<torrentguard_protocol::api::RegisterResponse, TrackerError> {
        self.tracker.register(manifest).await
    }

    /// The manifest of `id`, checked against the id by the client.
    pub async fn manifest(&self, id: &FileId) -> Result<Manifest, TrackerError> {
        self.tracker.manifest(id).await
    }

    /// Reports a misbehaving peer to the tracker.
    pub async fn report(
        &self,
        req: &torrentguard_protocol::api::ReportRequest,
    ) -> Result<(), TrackerError> {
        self.tracker.report(req).await
    }

    /// The tracker's re-announce interval, as it last said.
    pub fn announce_interval(&self) -> Duration {
        self.tracker.announce_interval()
    }
}

/// What keeps a shared file announced: the session and the agent's stop.
#[derive(Clone)]
pub struct Announcer {
    pub session: Session,
    pub cancel: CancellationToken,
}

impl Announcer {
    /// Keeps `file` announced on the tracker's interval until the stop. Withdraws it as soon
    /// as it changes on disk: stops serving it, announces `stopped` for it at once and says so.
    pub fn keep_announcing(&self, tasks: &TaskTracker, file: Arc<SharedFile>, events: EventSink) {
        let this = self.clone();
        let span = tracing::info_span!("announce", file_id = %file.file_id);
        let failure = crate::spawn::Failure::Fault;
        crate::spawn::spawn_tracked(tasks, "announce", span, failure, async move {
            this.announce_loop(&file, &events).await
        });
    }

    async fn announce_loop(&self, file: &SharedFile, events: &EventSink) {
        let (tracker, seeder, cancel) = (&self.session.tracker, &self.session.seeder, &self.cancel);
        // The tracker's own interval from the start: a TTL shorter than our default must
        // not drop us before the first re-announce.
        let mut next = Instant::now() + tracker.announce_interval();
        let mut backoff = Duration::from_secs(1);
        // A stat every few seconds catches a change even when no downloader comes by.
        let mut look = tokio::time::interval(WITHDRAW_CHECK);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = look.tick() => {
                    let _ = file.check_unchanged();
                    continue;
                }
                _ = file.withdrawal() => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(reason) = file.check_unchanged() {
                withdraw(tracker, seeder, file, reason, events).await;
                return;
            }
            let progress = self.session.announce(file, AnnounceEvent::Progress);
            let result = tokio::select! {
                r = progress => r,
                _ = cancel.cancelled() => return,
            };
            match result {
                Ok(_) => {
                    next = Instant::now() + tracker.announce_interval();
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(file_id = %file.file_id, error = %e, "re-announce failed; retrying");
                    next = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        // `stopped` is announced by `leave_swarms`, for every file alike.
    }
}

/// Stops serving a file that changed on disk and tells the tracker and the user at once.
async fn withdraw(
    tracker: &TrackerSet,
    seeder: &Seeder,
    file: &SharedFile,
    reason: WithdrawReason,
    events: &EventSink,
) {
    seeder.remove(&file.file_id);
    events.emit(Event::Withdrawn {
        file_id: file.file_id,
        reason: reason.local,
    });
    if let Err(e) = announce_to_set(tracker, seeder, file, AnnounceEvent::Stopped).await {
        tracing::warn!(file_id = %file.file_id, error = %e, "could not announce that the file is withdrawn");
    }
}

/// Announces `stopped` for every file the client announced (shared, downloaded, partial,
/// failed or withdrawn), so the tracker stops listing them at once; each bounded by the
/// client's stopped timeout.
pub async fn leave_swarms(tracker: &TrackerClient) {
    let leave = tracker
        .announced()
        .into_iter()
        .map(|req| announce_stopped(tracker, req));
    futures::future::join_all(leave).await;
}

/// Announces `stopped` for what `last` announced.
async fn announce_stopped(tracker: &TrackerClient, last: AnnounceRequest) {
    let file_id = last.file_id;
    let req = AnnounceRequest {
        event: AnnounceEvent::Stopped,
        ..last
    };
    if let Err(e) = tracker.announce(&req).await {
        tracing::warn!(%file_id, error = %e, "could not announce stopped");
    }
}
