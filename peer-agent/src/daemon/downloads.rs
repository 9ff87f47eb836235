//! Adding a download, the queue of `--max-active-downloads`, and running one download to its
//! end: then seeding it until the seed policy is met.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::model::{AddDownload, Kind, Status, TransferView};
use super::transfers::{DownloadSpec, Entry, Key, now_secs};
use super::{Daemon, DaemonError, parse_id};
use crate::agent::TrackerTarget;
use crate::download::{DownloadError, DownloadOptions, download};
use crate::share_code::ShareCode;

impl Daemon {
    /// Queues a download of a share code, or of a file id on a tracker. The manifest is fetched
    /// now, so a wrong code or an unknown id is refused at once.
    pub async fn add_download(
        self: &Arc<Self>,
        req: AddDownload,
    ) -> Result<TransferView, DaemonError> {
        let (id, tracker) = self.target_of(&req)?;
        let key = (Kind::Download, id);
        if self.table().contains_key(&key) {
            return Err(DaemonError::Conflict(format!(
                "{id} is already a download of this daemon"
            )));
        }
        // One file is served from one place: a share already holds every byte of it.
        if self.table().contains_key(&(Kind::Share, id)) {
            return Err(DaemonError::Conflict(format!(
                "{id} is shared by this daemon: it has every byte already"
            )));
        }
        let out_dir = match &req.out_dir {
            Some(d) => std::path::absolute(PathBuf::from(d))
                .map_err(|e| DaemonError::BadRequest(format!("{d}: {e}")))?,
            None => self.config.download_dir.clone(),
        };
        let session = self
            .trackers
            .session_for(&tracker, id)
            .await
            .map_err(|e| DaemonError::Tracker(e.to_string()))?;
        let manifest = session.manifest(&id).await.map_err(|e| {
            DaemonError::Tracker(format!("the tracker cannot give the manifest of {id}: {e}"))
        })?;
        let mut e = Entry::new(Kind::Download, id, tracker, out_dir);
        e.name = manifest.name.clone();
        e.size = manifest.size;
        e.download_spec = DownloadSpec {
            force: req.force,
            only: req.only,
        };
        e.share_code = self.share_code(&e);
        self.table().insert(key, e);
        self.persist(key).await?;
        self.schedule();
        self.view(key)
    }

    /// The file id and tracker a request names: a share code carries both; a bare id takes the
    /// request's tracker or the daemon's.
    fn target_of(
        &self,
        req: &AddDownload,
    ) -> Result<(torrentguard_protocol::FileId, TrackerTarget), DaemonError> {
        if let Some(code) = &req.code {
            if req.file_id.is_some() {
                return Err(DaemonError::BadRequest(
                    "give either a share code or a file id, not both".into(),
                ));
            }
            let code: ShareCode = code
                .parse()
                .map_err(|e| DaemonError::BadRequest(format!("{e}")))?;
            // The daemon keeps one tracker per transfer: the code's first.
            let first =
                code.trackers.first().cloned().ok_or_else(|| {
                    DaemonError::BadRequest("the share code names no tracker".into())
                })?;
            let target = TrackerTarget {
                url: first.url,
                fingerprint: first.fingerprint,
                token: code.swarm_token,
            };
            return Ok((code.file_id, target));
        }
        let id = req.file_id.as_deref().ok_or_else(|| {
            DaemonError::BadRequest(
                "give a share code (\"code\") or a file id (\"file_id\")".into(),
            )
        })?;
        let id = parse_id(id)?;
        let fingerprint =
            match &req.tracker_fingerprint {
                Some(f) => Some(f.parse().map_err(|e| {
                    DaemonError::BadRequest(format!("tracker_fingerprint {f:?}: {e}"))
                })?),
                None => None,
            };
        let target = match (&req.tracker, &self.config.tracker) {
            (Some(url), _) => TrackerTarget {
                url: url.clone(),
                fingerprint,
                token: None,
            },
            (None, Some(t)) => t.clone(),
            (None, None) => {
                return Err(DaemonError::BadRequest(
                    "this daemon has no tracker: give a share code, or \"tracker\" with the file id".into(),
                ));
            }
        };
        Ok((id, target))
    }

    /// Starts queued downloads, oldest first, while slots are free.
    pub(super) fn schedule(self: &Arc<Self>) {
        if self.cancel.is_cancelled() {
            return;
        }
        let max = self.config.max_active_downloads.max(1);
        let start: Vec<Key> = {
            let mut t = self.table();
            let active = t.values().filter(|e| e.holds_slot()).count();
            let mut queued: Vec<&mut Entry> = t
                .values_mut()
                .filter(|e| e.kind == Kind::Download && e.status == Status::Queued && !e.paused)
                .collect();
            queued.sort_by_key(|e| e.added_at);
            queued
                .into_iter()
                .take(max.saturating_sub(active))
                .map(|e| {
                    e.status = Status::Downloading;
                    e.key()
                })
                .collect()
        };
        for key in start {
            let d = self.clone();
            self.tasks.spawn(async move { d.run_download(key).await });
        }
    }

    /// Runs one download: fetch (resuming what is on disk), then seed.
    async fn run_download(self: Arc<Self>, key: Key) {
        let cancel = self.cancel.child_token();
        let finished = CancellationToken::new();
        let _finished = finished.clone().drop_guard();
        let Some((tracker, out_dir, spec)) = self.table().get_mut(&key).map(|e| {
            e.cancel = Some(cancel.clone());
            e.finished = Some(finished);
            (
                e.tracker.clone(),
                e.out_dir.clone(),
                e.download_spec.clone(),
            )
        }) else {
            return;
        };
        self.persist_logged(key).await;
        let result = self
            .fetch(key, &tracker, out_dir, spec, cancel.clone())
            .await;
        match result {
            Ok(report) => self.downloaded(key, &tracker, report, cancel).await,
            Err(_) if cancel.is_cancelled() => {
                // Paused, removed or the daemon stopping: each says where it stands itself.
            }
            Err(e) => {
                tracing::warn!(file_id = %key.1, error = %e, "download failed");
                self.seeder_forget(key);
                self.set_status(key, Status::Failed, Some(e)).await;
            }
        }
        self.schedule();
    }

    async fn fetch(
        self: &Arc<Self>,
        key: Key,
        tracker: &TrackerTarget,
        out_dir: PathBuf,
        spec: DownloadSpec,
        cancel: CancellationToken,
    ) -> Result<crate::DownloadReport, String> {
        let session = match self.session_retrying(key, tracker, &cancel).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("interrupted".into()),
            Err(e) => return Err(e.to_string()),
        };
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
        let mut opts = DownloadOptions::new(out_dir);
        opts.force = spec.force;
        opts.only = spec.only;
        opts.compression = self.config.compression;
        opts.download_limit = self.download_limit.clone();
        opts.misbehaving = Some(self.misbehaving.clone());
        opts.events = self.sink(key);
        let r = download(
            self.identity.clone(),
            &session,
            &self.seeder,
            key.1,
            opts,
            cancel,
        )
        .await;
        r.map_err(|e| match e {
            DownloadError::Interrupted => "interrupted".to_string(),
            e => e.to_string(),
        })
    }

    /// A finished download: seed it under the seed policy (a policy already met ends it here).
    async fn downloaded(
        self: &Arc<Self>,
        key: Key,
        tracker: &TrackerTarget,
        report: crate::DownloadReport,
        cancel: CancellationToken,
    ) {
        if let Some(e) = self.table().get_mut(&key) {
            e.path = report.path.clone();
            e.completed_at.get_or_insert(now_secs());
            e.shared = Some(report.shared.clone());
            e.seeding_since = Some(std::time::Instant::now());
            e.status = Status::Seeding;
            e.bytes_done = e.size;
        }
        let seeded = match self.trackers.session_for(tracker, key.1).await {
            Ok(session) => {
                let sink = self.sink(key);
                sink.emit(crate::Event::Seeding {
                    file_id: key.1,
                    name: report.shared.manifest.name.clone(),
                    size: report.bytes,
                    listen: self.seeder.local_addr(),
                });
                let announcer = crate::session::Announcer { session, cancel };
                announcer.keep_announcing(&self.tasks, report.shared.clone(), sink);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        match seeded {
            Ok(()) if !self.config.seed.seeds_at_all() => self.finish_seeding(key).await,
            Ok(()) => self.persist_logged(key).await,
            Err(e) => {
                self.seeder_forget(key);
                self.set_status(
                    key,
                    Status::Completed,
                    Some(format!("downloaded, but cannot seed: {e}")),
                )
                .await;
            }
        }
    }

    fn seeder_forget(&self, key: Key) {
        if let Some(e) = self.table().get_mut(&key) {
            e.shared = None;
        }
        self.seeder.remove(&key.1);
    }
}
