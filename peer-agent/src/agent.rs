//! An agent: identity, tracker client and seeding listener, and the operations the CLI drives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::api::AnnounceEvent;
use torrentguard_protocol::hashing::{HashError, manifest_from_reader};
use torrentguard_protocol::{FileId, Fingerprint, HashAlgo, Manifest, sanitize_name};
use torrentguard_trust::{Identity, IdentityError};

use crate::download::{DownloadError, DownloadOptions, DownloadReport, download};
use crate::events::{Event, EventSink};
use crate::misbehaving::MisbehavingPeers;
use crate::peer::{Seeder, SeederLimits};
use crate::rate::RateLimit;
use crate::scan::Scanned;
use crate::session::{Announcer, Session, TrackerClient, TrackerError, TrackerSet};
use crate::torrent::SharedFile;
use crate::torrent::tree_store::{TreeFiles, TreeRoot};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Share { path: PathBuf, message: String },
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// How to reach one tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerTarget {
    pub url: String,
    pub fingerprint: Option<Fingerprint>,
    pub token: Option<String>,
}

/// A tracker URL as a user gives it: `https://host:port`, followed by the tracker's pin as the
/// URL's fragment when it is known: `https://host:port#sha256:<64 hex>`. The fragment never
/// reaches the tracker (it is not part of a request), so it is free to carry the pin, and one
/// string per tracker keeps each URL with its own fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedUrl {
    pub url: String,
    pub fingerprint: Option<Fingerprint>,
}

#[derive(Debug, thiserror::Error)]
#[error("the pin after '#' in the tracker URL {url:?}: {source}")]
pub struct PinnedUrlError {
    url: String,
    #[source]
    source: torrentguard_protocol::fingerprint::FingerprintError,
}

impl std::str::FromStr for PinnedUrl {
    type Err = PinnedUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some((url, pin)) = s.split_once('#') else {
            return Ok(PinnedUrl {
                url: s.to_string(),
                fingerprint: None,
            });
        };
        let fingerprint = match pin {
            "" => None,
            pin => Some(pin.parse().map_err(|source| PinnedUrlError {
                url: s.to_string(),
                source,
            })?),
        };
        Ok(PinnedUrl {
            url: url.to_string(),
            fingerprint,
        })
    }
}

impl std::fmt::Display for PinnedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fingerprint {
            Some(fp) => write!(f, "{}#{fp}", self.url),
            None => f.write_str(&self.url),
        }
    }
}

/// Loads (or creates) the agent's identity in `data_dir`.
pub fn load_identity(data_dir: &Path) -> Result<(Identity, bool), IdentityError> {
    Identity::load_or_create(data_dir, "torrentguard-peer")
}

pub struct Agent {
    pub identity: Arc<Identity>,
    /// The first tracker that answered at start.
    pub tracker: TrackerClient,
    /// Every tracker given, failed over in order (see [`TrackerSet`]).
    pub trackers: TrackerSet,
    pub seeder: Arc<Seeder>,
    pub data_dir: PathBuf,
    pub cancel: CancellationToken,
    /// One download limit for every download of this agent (unlimited until set).
    pub download_limit: Arc<RateLimit>,
    /// Peers that misbehaved in this agent's earlier downloads, kept in its data directory.
    pub misbehaving: Arc<MisbehavingPeers>,
    /// The tracker and the listener together, for announces.
    session: Session,
    tasks: TaskTracker,
    /// Whether reach learning, and the answering of introductions, were started (once each).
    learning: std::sync::atomic::AtomicBool,
    answering: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Connects to the tracker as `identity` and opens the seeding listener on `listen`, with
    /// the default [`SeederLimits`].
    pub async fn start(
        identity: Arc<Identity>,
        data_dir: PathBuf,
        tracker: &TrackerTarget,
        listen: SocketAddr,
    ) -> Result<Agent, AgentError> {
        Self::start_with_limits(identity, data_dir, tracker, listen, SeederLimits::default()).await
    }

    /// As [`Agent::start`], the seeding listener within `limits`.
    pub async fn start_with_limits(
        identity: Arc<Identity>,
        data_dir: PathBuf,
        tracker: &TrackerTarget,
        listen: SocketAddr,
        limits: SeederLimits,
    ) -> Result<Agent, AgentError> {
        let trackers = vec![tracker.clone()];
        Self::start_with_trackers(identity, data_dir, trackers, listen, limits).await
    }

    /// As [`Agent::start_with_limits`], with several trackers tried in order: the first that
    /// answers must answer now (so that a wrong pin is reported before the listener opens);
    /// later calls fail over between them.
    pub async fn start_with_trackers(
        identity: Arc<Identity>,
        data_dir: PathBuf,
        trackers: Vec<TrackerTarget>,
        listen: SocketAddr,
        limits: SeederLimits,
    ) -> Result<Agent, AgentError> {
        let trackers = TrackerSet::new(trackers, identity.clone(), data_dir.clone())?;
        let client = trackers.connect_first().await?;
        let cancel = CancellationToken::new();
        let seeder = Seeder::start_with_limits(
            listen,
            &identity,
            Arc::new(trackers.clone()),
            cancel.child_token(),
            limits,
        )
        .await
        .map_err(|source| AgentError::Listen {
            addr: listen,
            source,
        })?;
        Ok(Agent {
            identity,
            session: Session::over(trackers.clone(), seeder.clone()),
            tracker: client,
            trackers,
            seeder,
            cancel,
            download_limit: Arc::new(RateLimit::default()),
            misbehaving: Arc::new(MisbehavingPeers::load(&data_dir)),
            data_dir,
            tasks: TaskTracker::new(),
            learning: Default::default(),
            answering: Default::default(),
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.seeder.local_addr()
    }

    /// Hashes `path`, registers its manifest, serves it and announces it until shutdown.
    pub async fn share(
        &self,
        path: &Path,
        chunk_size: u32,
        algo: HashAlgo,
        events: &EventSink,
    ) -> Result<Arc<SharedFile>, AgentError> {
        let manifest = hash_file(path, chunk_size, algo, events).await?;
        let resp = self.trackers.register(&manifest).await?;
        let file = std::fs::File::open(path).map_err(|source| AgentError::File {
            path: path.into(),
            source,
        })?;
        let shared = SharedFile::complete(Arc::new(manifest), path.to_path_buf(), file).map_err(
            |source| AgentError::File {
                path: path.into(),
                source,
            },
        )?;
        // The file must not have changed between hashing and now.
        if let Err(reason) = shared.check_unchanged() {
            return Err(AgentError::Share {
                path: path.into(),
                message: format!("changed while it was being hashed: {}", reason.local),
            });
        }
        tracing::info!(file_id = %resp.file_id, created = resp.created, "manifest registered");
        self.serve(shared.clone(), events).await?;
        Ok(shared)
    }

    /// Shares a directory (or several paths) already scanned into one tree manifest: registers
    /// it, serves its files from where they were found, announces it.
    pub async fn share_tree(
        &self,
        scanned: Scanned,
        events: &EventSink,
    ) -> Result<Arc<SharedFile>, AgentError> {
        let manifest = Arc::new(scanned.manifest);
        let resp = self.trackers.register(&manifest).await?;
        tracing::info!(file_id = %resp.file_id, created = resp.created, files = manifest.file_count(), "tree manifest registered");
        let path = scanned.sources.first().cloned().unwrap_or_default();
        let storage = TreeFiles::shared(
            manifest.clone(),
            TreeRoot::Listed(Arc::new(scanned.sources)),
        )
        .map_err(|source| AgentError::File {
            path: path.clone(),
            source,
        })?;
        let shared = SharedFile::complete_tree(manifest, path, Arc::new(storage));
        self.serve(shared.clone(), events).await?;
        Ok(shared)
    }

    /// Learns how this agent can be reached, now and as long as it runs (see
    /// [`crate::session::reachability`]), emitting [`Event::Reach`] each time it changes, and
    /// announcing it. Once per agent; never fails (a tracker without the probe leaves the
    /// reach unknown).
    pub fn learn_reach(&self, events: &EventSink) {
        use crate::session::reachability::{ReachLearner, TrackerProbe};
        if self
            .learning
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let learner = ReachLearner {
            probe: Arc::new(TrackerProbe::new(
                self.trackers.clone(),
                self.identity.clone(),
            )),
            seeder: self.seeder.clone(),
            observed: self.session.observed_ips(),
            events: events.clone(),
            cancel: self.cancel.clone(),
        };
        let span = tracing::info_span!("reach");
        let failure = crate::spawn::Failure::Fault;
        crate::spawn::spawn_tracked(&self.tasks, "reach", span, failure, learner.run());
    }

    /// Starts answering introductions (see [`crate::session::introductions`]); once per agent,
    /// when it first serves a file.
    fn answer_introductions(&self) {
        use crate::session::introductions::Answerer;
        if self
            .answering
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let answerer = Answerer::new(
            Arc::new(self.trackers.clone()),
            self.seeder.clone(),
            self.identity.clone(),
            self.cancel.clone(),
            self.tasks.clone(),
        );
        let span = tracing::info_span!("introductions");
        let failure = crate::spawn::Failure::Fault;
        crate::spawn::spawn_tracked(&self.tasks, "introductions", span, failure, answerer.run());
    }

    /// Serves a registered share, announces it and keeps announcing it.
    async fn serve(&self, shared: Arc<SharedFile>, events: &EventSink) -> Result<(), AgentError> {
        self.seeder.add(shared.clone());
        self.session
            .announce(&shared, AnnounceEvent::Started)
            .await?;
        events.emit(Event::Seeding {
            file_id: shared.file_id,
            name: shared.manifest.name.clone(),
            size: shared.manifest.size,
            listen: self.listen_addr(),
        });
        self.keep_announcing(shared, events.clone());
        Ok(())
    }

    /// Downloads `id` (resuming if a `.part` exists), within the agent's download limit,
    /// shared by every download it runs (it replaces `opts.download_limit`), remembering
    /// misbehaving peers in the agent's data directory (it sets `opts.misbehaving`).
    pub async fn download(
        &self,
        id: FileId,
        mut opts: DownloadOptions,
    ) -> Result<DownloadReport, AgentError> {
        opts.download_limit = self.download_limit.clone();
        opts.misbehaving = Some(self.misbehaving.clone());
        // What it has fetched is served as it comes: NATed peers reach it by introduction too.
        self.answer_introductions();
        Ok(download(
            self.identity.clone(),
            &self.session,
            &self.seeder,
            id,
            opts,
            self.cancel.child_token(),
        )
        .await?)
    }

    /// Keeps `file` announced on the tracker's interval until shutdown, and withdraws it as
    /// soon as it changes on disk (see [`Announcer`]).
    pub fn keep_announcing(&self, file: Arc<SharedFile>, events: EventSink) {
        self.answer_introductions();
        let announcer = Announcer {
            session: self.session.clone(),
            cancel: self.cancel.clone(),
        };
        announcer.keep_announcing(&self.tasks, file, events);
    }

    /// Asks the router (UPnP-IGD) to forward a public port to our listener, keeps the mapping
    /// until shutdown, and announces that port from now on.
    pub async fn map_port(&self) -> Result<crate::portmap::Mapped, crate::portmap::PortMapError> {
        let port = self.listen_addr().port();
        let mapped =
            crate::portmap::map_listening_port(port, self.cancel.clone(), &self.tasks).await?;
        self.seeder.set_mapped_port(mapped.external_port);
        Ok(mapped)
    }

    /// Stops everything, in at most [`STOP_BUDGET`] whatever is in flight: connections finish or
    /// abandon their chunk and say `Bye`, and `stopped` is announced for every file this agent
    /// announced (shared, downloaded, partial, failed or withdrawn), so the tracker stops
    /// listing it at once. Every way an agent ends goes through here.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let connections = async {
            self.tasks.wait().await;
            self.seeder.shutdown().await;
        };
        let leave = self.trackers.leave_all();
        let stop = futures::future::join(connections, leave);
        if tokio::time::timeout(STOP_BUDGET, stop).await.is_err() {
            tracing::warn!(budget = ?STOP_BUDGET, "stopping took too long; leaving the rest");
        }
    }
}

/// Bound on [`Agent::shutdown`].
pub const STOP_BUDGET: Duration = Duration::from_millis(1800);

/// Hashes a file into a manifest (on a blocking thread), emitting `Hashing` events.
pub async fn hash_file(
    path: &Path,
    chunk_size: u32,
    algo: HashAlgo,
    events: &EventSink,
) -> Result<Manifest, AgentError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AgentError::Share {
            path: path.into(),
            message: "has no usable file name".into(),
        })?
        .to_string();
    sanitize_name(&name).map_err(|e| AgentError::Share {
        path: path.into(),
        message: e.to_string(),
    })?;
    let file = std::fs::File::open(path).map_err(|source| AgentError::File {
        path: path.into(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| AgentError::File {
        path: path.into(),
        source,
    })?;
    if !meta.is_file() {
        return Err(AgentError::Share {
            path: path.into(),
            message: "is not a regular file".into(),
        });
    }
    let total = meta.len();
    let events = events.clone();
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut last = Instant::now();
        let n2 = name.clone();
        manifest_from_reader(&name, file, chunk_size, algo, |done| {
            if last.elapsed() >= Duration::from_millis(200) || done == total {
                last = Instant::now();
                events.emit(Event::Hashing {
                    name: n2.clone(),
                    bytes_done: done,
                    bytes_total: total,
                });
            }
        })
        .map_err(|e| match e {
            HashError::Io(source) => AgentError::File { path: p, source },
            HashError::Manifest(m) => AgentError::Share {
                path: p,
                message: m.to_string(),
            },
        })
    })
    .await
    .expect("hashing does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_url_carries_its_pin_as_its_fragment() {
        let fp = Fingerprint::from_bytes([5; 32]);
        let pinned: PinnedUrl = format!("https://t:1#{fp}").parse().unwrap();
        assert_eq!(
            pinned,
            PinnedUrl {
                url: "https://t:1".into(),
                fingerprint: Some(fp)
            }
        );
        assert_eq!(pinned.to_string().parse::<PinnedUrl>().unwrap(), pinned);
        let bare: PinnedUrl = "https://t:1".parse().unwrap();
        assert_eq!(bare.fingerprint, None);
        assert_eq!(bare.to_string(), "https://t:1");
        let err = "https://t:1#sha256:12".parse::<PinnedUrl>().unwrap_err();
        assert!(err.to_string().contains("the pin after '#'"), "{err}");
    }
}
