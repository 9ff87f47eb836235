//! Several trackers for one agent (the daemon). Shares and downloads may name different trackers
//! (a share code carries its own), yet the daemon has one identity and one peer port: one
//! [`Session`] per tracker over the one seeder, and one [`SwarmDirectory`] for the seeder that
//! asks each file's own tracker who is in its swarm.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use futures::future::BoxFuture;
use torrentguard_protocol::{FileId, Fingerprint};
use torrentguard_trust::Identity;

use super::{Session, TrackerClient, TrackerError, leave_swarms};
use crate::agent::TrackerTarget;
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
}

impl Trackers {
    pub fn new(identity: Arc<Identity>, data_dir: PathBuf, files: Arc<FileTrackers>) -> Self {
        Trackers {
            identity,
            data_dir,
            files,
            sessions: Default::default(),
            seeder: Mutex::new(None),
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
                let made = (client.clone(), Session::new(client, seeder));
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
