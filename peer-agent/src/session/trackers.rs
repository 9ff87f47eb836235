//! Several trackers for one agent (the daemon). Shares and downloads may name different trackers
//! (a share code carries its own), yet the daemon has one identity and one peer port: one
//! [`Session`] per tracker over the one seeder, and one [`SwarmDirectory`] for the seeder that
//! asks each file's own tracker who is in its swarm.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::{FileId, Fingerprint};
use torrentguard_trust::Identity;

use super::introductions::Answerer;
use super::reachability::{ReachLearner, TrackerProbe};
use super::{Session, TrackerClient, TrackerError, TrackerSet, leave_swarms};
use crate::agent::TrackerTarget;
use crate::events::EventSink;
use crate::peer::Seeder;
use crate::torrent::{SwarmDirectory, SwarmLookupError};

/// Which tracker each file belongs to, for the seeder's admission checks.
#[derive(Default)]
pub struct FileTrackers {
    by_file: RwLock<HashMap<FileId, TrackerClient>>,
}

impl FileTrackers {
    pub fn set(&self, id: FileId, client: TrackerClient) {
        self.by_file
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, client);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no tracker is known for this file")]
struct NoTracker;

impl SwarmDirectory for FileTrackers {
    fn members<'a>(
        &'a self,
        id: &'a FileId,
    ) -> BoxFuture<'a, Result<Vec<Fingerprint>, SwarmLookupError>> {
        let client = self
            .by_file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        Box::pin(async move {
            let client = client.ok_or_else(|| SwarmLookupError::new(NoTracker))?;
            client.members(id).await
        })
    }
}

/// A tracker is one URL with one swarm token.
type SessionKey = (String, Option<String>);

/// The sessions, one per tracker (URL and swarm token), made on first use.
pub struct Trackers {
    identity: Arc<Identity>,
    data_dir: PathBuf,
    files: Arc<FileTrackers>,
    sessions: tokio::sync::Mutex<HashMap<SessionKey, (TrackerClient, Session)>>,
    seeder: Mutex<Option<Arc<Seeder>>>,
    /// Set once NAT traversal is on: each new session then answers its tracker's
    /// introductions, and the first also learns the reach.
    nat: OnceLock<NatTasks>,
}

/// Where the daemon's NAT traversal tasks run and report.
pub struct NatTasks {
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    pub events: EventSink,
}

impl Trackers {
    pub fn new(identity: Arc<Identity>, data_dir: PathBuf, files: Arc<FileTrackers>) -> Self {
        Trackers {
            identity,
            data_dir,
            files,
            sessions: Default::default(),
            seeder: Mutex::new(None),
            nat: OnceLock::new(),
        }
    }

    /// Turns on NAT traversal for every session made from now on (see [`NatTasks`]).
    pub fn enable_nat(&self, nat: NatTasks) {
        if self.nat.set(nat).is_err() {
            tracing::warn!("NAT traversal already enabled");
        }
    }

    /// A new session's NAT tasks: answering its tracker's introductions, and, for the first
    /// tracker (the reach is one per agent), learning and announcing the reach.
    fn start_nat(
        &self,
        client: &TrackerClient,
        session: &Session,
        seeder: &Arc<Seeder>,
        first: bool,
    ) {
        let Some(nat) = self.nat.get() else {
            return;
        };
        let set = TrackerSet::of_client(client.clone());
        let answerer = Answerer::new(
            Arc::new(set.clone()),
            seeder.clone(),
            self.identity.clone(),
            nat.cancel.clone(),
            nat.tasks.clone(),
        );
        let span = tracing::info_span!("introductions", tracker = %client.base_url());
        let failure = crate::spawn::Failure::Fault;
        crate::spawn::spawn_tracked(&nat.tasks, "introductions", span, failure, answerer.run());
        if first {
            let learner = ReachLearner {
                probe: Arc::new(TrackerProbe::new(set, self.identity.clone())),
                seeder: seeder.clone(),
                observed: session.observed_ips(),
                events: nat.events.clone(),
                cancel: nat.cancel.clone(),
            };
            let span = tracing::info_span!("reach");
            crate::spawn::spawn_tracked(&nat.tasks, "reach", span, failure, learner.run());
        }
    }

    /// The seeder every session announces (set once, right after it starts).
    pub fn attach(&self, seeder: Arc<Seeder>) {
        *self.seeder.lock().unwrap_or_else(|e| e.into_inner()) = Some(seeder);
    }

    /// The session with `target`'s tracker, connecting (and pinning) on first use, and noting
    /// that `file` is in its swarms.
    pub async fn session_for(
        &self,
        target: &TrackerTarget,
        file: FileId,
    ) -> Result<Session, TrackerError> {
        let key = (target.url.clone(), target.token.clone());
        let mut sessions = self.sessions.lock().await;
        let entry = match sessions.get(&key) {
            Some(found)
                if target
                    .fingerprint
                    .is_none_or(|fp| fp == found.0.fingerprint()) =>
            {
                found.clone()
            }
            _ => {
                let client = TrackerClient::connect(
                    &target.url,
                    target.fingerprint,
                    &self.identity,
                    &self.data_dir,
                    target.token.clone(),
                )
                .await?;
                let seeder = self
                    .seeder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .expect("the seeder is attached before any session is made");
                let made = (client.clone(), Session::new(client, seeder.clone()));
                self.start_nat(&made.0, &made.1, &seeder, sessions.is_empty());
                sessions.insert(key, made.clone());
                made
            }
        };
        self.files.set(file, entry.0.clone());
        Ok(entry.1)
    }

    /// Announces `stopped` for everything announced, on every tracker.
    pub async fn leave_all(&self) {
        let clients: Vec<TrackerClient> = self
            .sessions
            .lock()
            .await
            .values()
            .map(|(c, _)| c.clone())
            .collect();
        futures::future::join_all(clients.iter().map(leave_swarms)).await;
    }
}
