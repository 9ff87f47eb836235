//! Adding a share and seeding it again after a restart or a resume.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::model::{AddShare, Kind, Status, TransferView};
use super::shares::{Hashed, from_stored, hash_path};
use super::transfers::{Entry, Key, ShareSpec};
use super::{Daemon, DaemonError};

impl Daemon {
    /// Hashes `req.path`, registers it with the daemon's tracker and seeds it. Answers once it
    /// is served (hashing progress goes out as events meanwhile).
    pub async fn add_share(self: &Arc<Self>, req: AddShare) -> Result<TransferView, DaemonError> {
        let tracker = self.config.tracker.clone().ok_or_else(|| {
            DaemonError::BadRequest(
                "this daemon has no tracker to register shares with: start it with --tracker URL \
                 (or `tracker` in the config file), or --tracker-listen ADDR to run its own"
                    .into(),
            )
        })?;
        let path = std::path::absolute(PathBuf::from(&req.path))
            .map_err(|e| DaemonError::BadRequest(format!("{}: {e}", req.path)))?;
        let spec = ShareSpec {
            name: req.name,
            follow_symlinks: req.follow_symlinks,
        };
        let (chunk, algo) = (self.config.chunk_size, self.config.hash);
        let hashed = hash_path(&path, &spec, chunk, algo, &self.broadcast_sink()).await?;
        let id = hashed.shared.file_id;
        let key = (Kind::Share, id);
        if self.table().contains_key(&key) {
            return Err(DaemonError::Conflict(format!(
                "{id} is already shared by this daemon"
            )));
        }
        if self.table().contains_key(&(Kind::Download, id)) {
            return Err(DaemonError::Conflict(format!(
                "{id} is a download of this daemon, which serves it from its output; remove the download first to share this copy"
            )));
        }
        let mut e = Entry::new(Kind::Share, id, tracker, path);
        e.share_spec = spec;
        e.share_code = self.share_code(&e);
        self.table().insert(key, e);
        if let Err(err) = self.serve_hashed(key, hashed, None).await {
            self.table().remove(&key);
            return Err(err);
        }
        self.view(key)
    }

    /// Seeds a known share again: from the stored manifest when nothing changed, else hashed
    /// anew (a changed file gets a new id: the old entry then goes and the new one is added).
    /// `cancel` (the entry's) stops it, also while it waits for an unreachable tracker.
    pub(super) async fn reseed(
        self: &Arc<Self>,
        key: Key,
        cancel: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let (stored, path, spec) = {
            let t = self.table();
            let e = t.get(&key).ok_or_else(|| super::not_found(key))?;
            let stored = e.manifest.clone().zip(e.sources.clone());
            (stored, e.path.clone(), e.share_spec.clone())
        };
        let id = key.1.to_string();
        let taken_back = stored.and_then(|(m, s)| from_stored(&id, &m, &s));
        let hashed = match taken_back {
            Some(h) => h,
            None => {
                tracing::info!(path = %path.display(), "hashing a share again: it changed since it was last hashed");
                let (chunk, algo) = (self.config.chunk_size, self.config.hash);
                hash_path(&path, &spec, chunk, algo, &self.broadcast_sink()).await?
            }
        };
        if hashed.shared.file_id != key.1 {
            return self.replace_changed(key, hashed, cancel).await;
        }
        self.serve_hashed(key, hashed, Some(cancel)).await
    }

    /// A share whose content changed while the daemon was away: the old id cannot be served any
    /// more, so it is replaced by the new one (same path, same options).
    async fn replace_changed(
        self: &Arc<Self>,
        old: Key,
        hashed: Hashed,
        cancel: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let new_key = (Kind::Share, hashed.shared.file_id);
        let e = self.table().remove(&old);
        self.db.remove("share", &old.1.to_string()).await?;
        let Some(mut e) = e else { return Ok(()) };
        tracing::warn!(old = %old.1, new = %new_key.1, path = %e.path.display(), "a shared path changed on disk; sharing it under its new id");
        e.file_id = new_key.1;
        e.uploaded_before = 0;
        e.share_code = self.share_code(&e);
        self.table().insert(new_key, e);
        self.serve_hashed(new_key, hashed, Some(cancel)).await
    }

    /// Registers a hashed share with its tracker, serves it, stores it. With `wait`, an
    /// unreachable tracker is waited for (a restart) until that token is cancelled, and the
    /// share is seeded under it; without, it is an error at once (a request).
    async fn serve_hashed(
        self: &Arc<Self>,
        key: Key,
        hashed: Hashed,
        wait: Option<&CancellationToken>,
    ) -> Result<(), DaemonError> {
        let tracker = self
            .table()
            .get(&key)
            .map(|e| e.tracker.clone())
            .ok_or_else(|| super::not_found(key))?;
        let session = match wait {
            Some(c) => match self.session_retrying(key, &tracker, c).await {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(()),
                Err(e) => return Err(DaemonError::Tracker(e.to_string())),
            },
            None => self
                .trackers
                .session_for(&tracker, key.1)
                .await
                .map_err(|e| DaemonError::Tracker(e.to_string()))?,
        };
        session
            .register(&hashed.shared.manifest)
            .await
            .map_err(|e| DaemonError::Tracker(e.to_string()))?;
        let cancel = wait.cloned().unwrap_or_else(|| self.cancel.child_token());
        let paused = {
            let mut t = self.table();
            let e = t.get_mut(&key).ok_or_else(|| super::not_found(key))?;
            e.name = hashed.shared.manifest.name.clone();
            e.size = hashed.shared.manifest.size;
            e.bytes_done = e.size;
            e.manifest = Some(hashed.manifest_json);
            e.sources = Some(hashed.sources_json);
            e.error = None;
            if e.paused {
                // Paused while it was being hashed: remembered, not served.
                e.status = Status::Paused;
            } else {
                e.shared = Some(hashed.shared.clone());
                e.cancel = Some(cancel.clone());
                e.seeding_since = Some(std::time::Instant::now());
                e.status = Status::Seeding;
            }
            e.paused
        };
        if !paused {
            self.seed(key, session, hashed.shared, cancel).await?;
        }
        self.persist(key).await
    }
}
