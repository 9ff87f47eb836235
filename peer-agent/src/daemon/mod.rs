//! `torrentguard daemon`: one long-running agent for every share and download.
//!
//! One identity and one peer port (one [`Seeder`]) serve everything; each transfer talks to its
//! own tracker through [`Trackers`]. The live table ([`transfers`]) is written through
//! to SQLite ([`db`]), so a restart resumes every download (re-verifying as `get` does) and
//! re-seeds every share, hashing again only what changed on disk ([`shares`]). Downloads beyond
//! `--max-active-downloads` wait in a queue; a finished download seeds until its seed policy is
//! met. The control API ([`api`]) and its listeners ([`server`]) drive it; the CLI's `share`,
//! `get`, `status`, `pause`, `resume` and `rm` are its clients when it runs.

pub mod api;
pub mod db;
mod downloads;
pub mod model;
mod seeding;
pub mod server;
mod shares;
pub mod transfers;
pub mod ui;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::api::AnnounceEvent;
use torrentguard_protocol::{FileId, HashAlgo, compression};
use torrentguard_trust::Identity;

use crate::agent::TrackerTarget;
use crate::events::{Event, EventSink};
use crate::peer::{Seeder, SeederLimits};
use crate::reach::Advertise;
use crate::session::trackers::{FileTrackers, Trackers};
use crate::session::{Announcer, Session};
use db::{Db, DbError, PeerDelta};
use model::{Kind, PeerView, Reputation, Stats, Status, TransferView};
use transfers::{Entry, Key, now_secs};

/// Why a control request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The tracker a request needs could not be reached or refused.
    #[error("{0}")]
    Tracker(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long a finished download keeps seeding: until the first limit met; neither means forever.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeedPolicy {
    /// Stop once uploaded ≥ ratio × size.
    pub ratio: Option<f64>,
    /// Stop after seeding this long (in this run).
    pub time: Option<Duration>,
}

impl SeedPolicy {
    /// `--seed-ratio 0` or `--seed-time 0`: a download is done once it is complete.
    pub fn seeds_at_all(&self) -> bool {
        self.ratio != Some(0.0) && self.time != Some(Duration::ZERO)
    }
}

/// Everything `torrentguard daemon` is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    /// The tracker of shares added without one, and of downloads given by bare id.
    pub tracker: Option<TrackerTarget>,
    /// The public URL of `tracker` for share codes, when it differs (an embedded tracker).
    pub public_tracker_url: Option<String>,
    pub listen: SocketAddr,
    pub advertise: Option<Advertise>,
    pub peer_limits: SeederLimits,
    pub upload_limit: u64,
    pub download_limit: u64,
    pub compression: compression::Mode,
    pub max_active_downloads: usize,
    pub seed: SeedPolicy,
    pub download_dir: PathBuf,
    pub chunk_size: u32,
    pub hash: HashAlgo,
}

/// The running daemon.
pub struct Daemon {
    pub identity: Arc<Identity>,
    pub config: DaemonConfig,
    pub seeder: Arc<Seeder>,
    trackers: Trackers,
    db: Db,
    table: Mutex<HashMap<Key, Entry>>,
    /// Every engine event of every transfer, as `--json` prints them (for `/api/events`).
    events: broadcast::Sender<Arc<str>>,
    peer_notes: mpsc::UnboundedSender<(String, PeerDelta)>,
    /// `--download-limit`: one bucket for every download (uploads have the seeder's).
    download_limit: Arc<crate::rate::RateLimit>,
    pub cancel: CancellationToken,
    /// Peers that misbehaved in earlier downloads (see [`crate::misbehaving`]).
    misbehaving: Arc<crate::misbehaving::MisbehavingPeers>,
    tasks: TaskTracker,
    /// The web UI's logins and its base URL, once `--ui` serves it.
    ui: std::sync::OnceLock<(Arc<ui::UiAuth>, String)>,
}

impl Daemon {
    /// Opens the database, binds the peer port and brings back every transfer it holds.
    pub async fn start(
        identity: Arc<Identity>,
        config: DaemonConfig,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let db = Db::open(&config.data_dir).await?;
        let cancel = CancellationToken::new();
        let files = Arc::new(FileTrackers::default());
        let seeder = Seeder::start_with_limits(
            config.listen,
            &identity,
            files.clone(),
            cancel.child_token(),
            config.peer_limits.clone(),
        )
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
        seeder.set_upload_limit(config.upload_limit);
        seeder.set_compression(config.compression);
        if let Some(a) = config.advertise.clone() {
            seeder.set_advertise(a);
        }
        let trackers = Trackers::new(identity.clone(), config.data_dir.clone(), files);
        trackers.attach(seeder.clone());
        let (peer_notes, notes_rx) = mpsc::unbounded_channel();
        let download_limit = Arc::new(crate::rate::RateLimit::new(config.download_limit));
        let config_dir = config.data_dir.clone();
        let daemon = Arc::new(Daemon {
            identity,
            config,
            seeder,
            trackers,
            db,
            table: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            peer_notes,
            download_limit,
            cancel,
            misbehaving: Arc::new(crate::misbehaving::MisbehavingPeers::load(&config_dir)),
            tasks: TaskTracker::new(),
            ui: std::sync::OnceLock::new(),
        });
        daemon
            .trackers
            .enable_nat(crate::session::trackers::NatTasks {
                cancel: daemon.cancel.clone(),
                tasks: daemon.tasks.clone(),
                events: daemon.broadcast_sink(),
            });
        daemon.spawn_peer_writer(notes_rx);
        daemon.spawn_ticker();
        daemon.restore().await?;
        Ok(daemon)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings back what the database holds: shares seed again, downloads resume or queue.
    async fn restore(self: &Arc<Self>) -> Result<(), DaemonError> {
        for row in self.db.transfers().await? {
            let (kind, id) = (row.kind.clone(), row.file_id.clone());
            let mut e = match Entry::from_row(row) {
                Ok(e) => e,
                Err(why) => {
                    tracing::error!(%kind, %id, %why, "skipping a transfer the database cannot describe");
                    continue;
                }
            };
            e.share_code = self.share_code(&e);
            let key = e.key();
            let run = !e.paused && !matches!(e.status, Status::Completed | Status::Failed);
            if e.paused {
                e.status = Status::Paused;
            } else if run && kind == "download" {
                e.status = Status::Queued;
            }
            self.table().insert(key, e);
            if run && key.0 == Kind::Share {
                self.spawn_reseed(key);
            }
        }
        self.schedule();
        Ok(())
    }

    /// The views of every transfer, newest first; `kind` filters.
    pub fn list(&self, kind: Option<Kind>) -> Vec<TransferView> {
        let mut v: Vec<TransferView> = self
            .table()
            .values()
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .map(Entry::view)
            .collect();
        v.sort_by(|a, b| b.added_at.cmp(&a.added_at).then(a.id.cmp(&b.id)));
        v
    }

    pub fn view(&self, key: Key) -> Result<TransferView, DaemonError> {
        self.table()
            .get(&key)
            .map(Entry::view)
            .ok_or_else(|| not_found(key))
    }

    /// The peers of a transfer, with their record here.
    pub async fn peers(&self, key: Key) -> Result<Vec<PeerView>, DaemonError> {
        let live: Vec<_> = {
            let t = self.table();
            let e = t.get(&key).ok_or_else(|| not_found(key))?;
            e.peers.iter().map(|(fp, p)| (*fp, p.clone())).collect()
        };
        let mut out = Vec::with_capacity(live.len());
        for (fp, p) in live {
            let rec = self.db.peer(&fp.to_string()).await?.unwrap_or_default();
            out.push(PeerView {
                fingerprint: fp.to_string(),
                address: p.address.or(rec.address),
                download_bps: p.download_bps,
                state: p.state,
                reputation: Reputation {
                    bytes_received: rec.bytes_received.max(0) as u64,
                    chunks_failed: rec.chunks_failed.max(0) as u64,
                    bans: rec.bans.max(0) as u64,
                    last_error: rec.last_error,
                },
            });
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.download_bps));
        Ok(out)
    }

    pub fn stats(&self) -> Stats {
        let t = self.table();
        let count = |f: &dyn Fn(&Entry) -> bool| t.values().filter(|e| f(e)).count() as u32;
        Stats {
            fingerprint: self.identity.fingerprint.to_string(),
            peer_port: self.seeder.local_addr().port(),
            download_bps: t.values().map(|e| e.download_bps).sum(),
            upload_bps: t.values().map(|e| e.upload_bps).sum(),
            download_limit: self.config.download_limit,
            upload_limit: self.config.upload_limit,
            downloads_active: count(&|e| e.holds_slot()),
            downloads_queued: count(&|e| e.status == Status::Queued),
            shares_seeding: count(&|e| e.status == Status::Seeding),
            uploaded_total: t.values().map(Entry::uploaded).sum(),
            downloaded_total: t
                .values()
                .filter(|e| e.kind == Kind::Download)
                .map(|e| e.bytes_fetched)
                .sum(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Remembers the web UI's logins and base URL, for [`Daemon::ui_login_url`].
    pub fn attach_ui(&self, auth: Arc<ui::UiAuth>, base: String) {
        let _ = self.ui.set((auth, base));
    }

    /// A fresh one-time login URL of the web UI (`torrentguard ui`).
    pub fn ui_login_url(&self) -> Result<String, DaemonError> {
        let (auth, base) = self.ui.get().ok_or_else(|| {
            DaemonError::Conflict(
                "this daemon serves no web UI: restart it with --ui 127.0.0.1:PORT".into(),
            )
        })?;
        Ok(auth.login_url(base))
    }

    /// Every event of every transfer, as JSON lines.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// The events of one transfer: folded into its entry, noted for its peers, and broadcast.
    fn sink(self: &Arc<Self>, key: Key) -> EventSink {
        let weak = Arc::downgrade(self);
        EventSink::from_fn(move |ev: Event| {
            let Some(d) = weak.upgrade() else { return };
            let notes = d.table().get_mut(&key).map(|e| e.apply(&ev));
            for (fp, delta) in notes.unwrap_or_default() {
                let _ = d.peer_notes.send((fp.to_string(), delta));
            }
            if let Ok(line) = serde_json::to_string(&ev) {
                let _ = d.events.send(line.into());
            }
        })
    }

    /// Events not tied to a transfer yet (hashing a new share): broadcast only.
    fn broadcast_sink(self: &Arc<Self>) -> EventSink {
        let weak = Arc::downgrade(self);
        EventSink::from_fn(move |ev: Event| {
            if let (Some(d), Ok(line)) = (weak.upgrade(), serde_json::to_string(&ev)) {
                let _ = d.events.send(line.into());
            }
        })
    }

    /// Writes the entry of `key` to the database as it is now.
    async fn persist(&self, key: Key) -> Result<(), DaemonError> {
        let row = self.table().get(&key).map(Entry::row);
        if let Some(row) = row {
            self.db.put(&row).await?;
        }
        Ok(())
    }

    /// Sets an entry's status (and error), and stores it.
    async fn set_status(&self, key: Key, status: Status, error: Option<String>) {
        if let Some(e) = self.table().get_mut(&key) {
            e.status = status;
            e.error = error;
            if status != Status::Downloading {
                e.download_bps = 0;
                e.eta_secs = None;
            }
        }
        self.persist_logged(key).await;
    }

    async fn persist_logged(&self, key: Key) {
        if let Err(e) = self.persist(key).await {
            tracing::error!(error = %e, "could not store a transfer's state");
        }
    }

    /// The share code of an entry: its id, its tracker as other hosts reach it, the pin.
    fn share_code(&self, e: &Entry) -> Option<String> {
        let url = match (&self.config.tracker, &self.config.public_tracker_url) {
            (Some(t), Some(public)) if t.url == e.tracker.url => public.clone(),
            _ => e.tracker.url.clone(),
        };
        let code = crate::share_code::ShareCode {
            file_id: e.file_id,
            trackers: vec![crate::PinnedUrl {
                url,
                fingerprint: e.tracker.fingerprint,
            }],
            swarm_token: e.tracker.token.clone(),
        };
        Some(code.to_string())
    }

    /// Serves `shared` for `key` and keeps it announced until `cancel`.
    async fn seed(
        self: &Arc<Self>,
        key: Key,
        session: Session,
        shared: Arc<crate::torrent::SharedFile>,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        self.seeder.add(shared.clone());
        session
            .announce(&shared, AnnounceEvent::Started)
            .await
            .map_err(|e| DaemonError::Tracker(e.to_string()))?;
        let sink = self.sink(key);
        sink.emit(Event::Seeding {
            file_id: shared.file_id,
            name: shared.manifest.name.clone(),
            size: shared.manifest.size,
            listen: self.seeder.local_addr(),
        });
        let announcer = Announcer { session, cancel };
        announcer.keep_announcing(&self.tasks, shared, sink);
        Ok(())
    }

    /// Stops serving and announcing `key` (pause, remove, seed policy met).
    async fn unseed(&self, key: Key) {
        let (shared, cancel, finished, tracker) = {
            let mut t = self.table();
            let Some(e) = t.get_mut(&key) else { return };
            e.seeding_since = None;
            e.upload_bps = 0;
            let finished = e.finished.take();
            (
                e.shared.clone(),
                e.cancel.take(),
                finished,
                e.tracker.clone(),
            )
        };
        if let Some(c) = cancel {
            c.cancel();
        }
        // A download stops within the agent's stop budget; its task then has let go of the
        // seeder (and said `stopped` for a partial file).
        if let Some(f) = finished {
            let _ = tokio::time::timeout(crate::agent::STOP_BUDGET, f.cancelled()).await;
        }
        // Not served any more, whole or partial (a download in progress serves what it has),
        // and the swarm hears it at once. (A daemon never holds a share and a download of one
        // file: `add_share` and `add_download` refuse that.)
        let served = shared.clone().or_else(|| self.seeder.get(&key.1));
        self.seeder.remove(&key.1);
        if let Some(served) = served
            && let Ok(session) = self.trackers.session_for(&tracker, key.1).await
            && let Err(e) = session.announce(&served, AnnounceEvent::Stopped).await
        {
            tracing::warn!(file_id = %key.1, error = %e, "could not announce stopped");
        }
        if shared.is_some()
            && let Some(e) = self.table().get_mut(&key)
        {
            e.uploaded_before = e.uploaded();
            e.shared = None;
        }
    }

    pub async fn pause(self: &Arc<Self>, key: Key) -> Result<TransferView, DaemonError> {
        {
            let mut t = self.table();
            let e = t.get_mut(&key).ok_or_else(|| not_found(key))?;
            e.paused = true;
        }
        self.unseed(key).await;
        self.set_status(key, Status::Paused, None).await;
        self.schedule();
        self.view(key)
    }

    pub async fn resume(self: &Arc<Self>, key: Key) -> Result<TransferView, DaemonError> {
        let status = {
            let mut t = self.table();
            let e = t.get_mut(&key).ok_or_else(|| not_found(key))?;
            let running = !e.paused && !matches!(e.status, Status::Failed | Status::Completed);
            if running {
                return Ok(e.view());
            }
            e.paused = false;
            e.error = None;
            e.status = match key.0 {
                Kind::Share => Status::Hashing,
                Kind::Download => Status::Queued,
            };
            e.status
        };
        self.persist_logged(key).await;
        if status == Status::Hashing {
            self.spawn_reseed(key);
        } else {
            self.schedule();
        }
        self.view(key)
    }

    /// Stops and forgets a transfer. Its files stay on disk: a partial download resumes if it
    /// is added again.
    pub async fn remove(self: &Arc<Self>, key: Key) -> Result<(), DaemonError> {
        if !self.table().contains_key(&key) {
            return Err(not_found(key));
        }
        self.unseed(key).await;
        self.table().remove(&key);
        self.db.remove(key.0.as_str(), &key.1.to_string()).await?;
        self.schedule();
        Ok(())
    }

    /// Stops everything: downloads keep their state (they resume at the next start), every
    /// swarm hears `stopped`, within [`crate::agent::STOP_BUDGET`].
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let keys: Vec<Key> = self.table().keys().copied().collect();
        for key in keys {
            self.persist_logged(key).await;
        }
        let stop = async {
            self.tasks.wait().await;
            self.seeder.shutdown().await;
            self.trackers.leave_all().await;
        };
        if tokio::time::timeout(crate::agent::STOP_BUDGET, stop)
            .await
            .is_err()
        {
            tracing::warn!("stopping took too long; leaving the rest");
        }
        self.db.close().await;
    }

    /// Records peers' conduct as events report it, off the event path.
    fn spawn_peer_writer(self: &Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, PeerDelta)>) {
        let (db, cancel) = (self.db.clone(), self.cancel.clone());
        self.tasks.spawn(async move {
            loop {
                let note = tokio::select! {
                    n = rx.recv() => n,
                    // What is already noted is written; then the stop goes on.
                    _ = cancel.cancelled() => rx.try_recv().ok(),
                };
                let Some((fp, delta)) = note else { return };
                if let Err(e) = db.note_peer(&fp, &delta, now_secs()).await {
                    tracing::warn!(error = %e, "could not record a peer");
                }
            }
        });
    }

    /// Once a second: upload rates, seed policies; every few seconds the progress is stored.
    fn spawn_ticker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = cancel.cancelled() => return,
                }
                let Some(d) = weak.upgrade() else { return };
                n += 1;
                let done = d.sample_uploads();
                for key in done {
                    d.finish_seeding(key).await;
                }
                if n.is_multiple_of(5) {
                    // Only these move between status changes (which are stored as they happen).
                    let moving =
                        |e: &&Entry| matches!(e.status, Status::Downloading | Status::Seeding);
                    let keys: Vec<Key> =
                        d.table().values().filter(moving).map(Entry::key).collect();
                    for key in keys {
                        d.persist_logged(key).await;
                    }
                }
            }
        });
    }

    /// Updates every upload rate; returns the downloads whose seed policy is now met.
    fn sample_uploads(&self) -> Vec<Key> {
        let policy = self.config.seed;
        let mut done = Vec::new();
        for e in self.table().values_mut() {
            let now = e.uploaded();
            e.upload_bps = now.saturating_sub(e.last_uploaded.max(e.uploaded_before));
            e.last_uploaded = now;
            if e.kind == Kind::Download && e.status == Status::Seeding && policy_met(policy, e) {
                done.push(e.key());
            }
        }
        done
    }

    async fn finish_seeding(self: &Arc<Self>, key: Key) {
        tracing::info!(file_id = %key.1, "seed policy met; no longer seeding");
        self.unseed(key).await;
        self.set_status(key, Status::Completed, None).await;
    }

    /// Hashes (or takes back) a share and serves it, in the background.
    fn spawn_reseed(self: &Arc<Self>, key: Key) {
        let d = self.clone();
        let cancel = self.cancel.child_token();
        if let Some(e) = self.table().get_mut(&key) {
            e.cancel = Some(cancel.clone());
        }
        self.tasks.spawn(async move {
            d.set_status(key, Status::Hashing, None).await;
            if let Err(e) = d.reseed(key, &cancel).await {
                tracing::warn!(file_id = %key.1, error = %e, "could not seed a share again");
                d.set_status(key, Status::Failed, Some(e.to_string())).await;
            }
        });
    }
}

impl Daemon {
    /// The session with `tracker` for `key`, waiting out an unreachable tracker (a daemon often
    /// starts before the network or its tracker): retried from 1 s to every 60 s, the entry's
    /// error saying so meanwhile. `None` once `cancel` fires; a refusal (a wrong pin) is final.
    async fn session_retrying(
        &self,
        key: Key,
        tracker: &TrackerTarget,
        cancel: &CancellationToken,
    ) -> Result<Option<Session>, crate::session::TrackerError> {
        let mut backoff = Duration::from_secs(1);
        loop {
            let e = match self.trackers.session_for(tracker, key.1).await {
                Ok(s) => {
                    if let Some(en) = self.table().get_mut(&key) {
                        en.error = None;
                    }
                    return Ok(Some(s));
                }
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            tracing::warn!(file_id = %key.1, error = %e, retry_in = ?backoff, "tracker unreachable; retrying");
            if let Some(en) = self.table().get_mut(&key) {
                en.error = Some(format!("{e}; retrying in {}s", backoff.as_secs()));
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
}

fn policy_met(p: SeedPolicy, e: &Entry) -> bool {
    let ratio = p
        .ratio
        .is_some_and(|r| e.uploaded() as f64 >= r * e.size as f64);
    let time = match (p.time, e.seeding_since) {
        (Some(t), Some(since)) => since.elapsed() >= t,
        _ => false,
    };
    ratio || time
}

fn not_found(key: Key) -> DaemonError {
    DaemonError::NotFound(format!("no {} of {} here", key.0.as_str(), key.1))
}

/// Parses a file id from a URL or a request.
pub fn parse_id(s: &str) -> Result<FileId, DaemonError> {
    s.parse()
        .map_err(|_| DaemonError::BadRequest(format!("{s:?} is not a file id (64 hex digits)")))
}
