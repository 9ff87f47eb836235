//! The download engine: verified, resumable, multi-peer.
//!
//! Peers come from the tracker; each runs in its own task (connect, pinned TLS, `Hello`s,
//! bitfields, then a window of pipelined requests). Chunks are hashed on the blocking pool and
//! written with positional writes only when their digest matches; the [`Picker`] is the one
//! owner of which chunk is where. A separate thread hashes the file in order as contiguous
//! chunks land, so the whole-file check at the end costs almost nothing extra.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::api::{AnnounceEvent, PeerInfo, ReportKind, ReportRequest};
use torrentguard_protocol::{Bitfield, FileId, Fingerprint, Manifest, sanitize_name};
use torrentguard_trust::Identity;

use crate::events::{Event, EventSink};
use crate::misbehaving::MisbehavingPeers;
use crate::peer::PeerError;
use crate::peer::dial::{DialContext, Rendezvous};
use crate::peer::download::{DownloadPeers, PeerEnd, PeerMemory, run_peer};
use crate::peer::{BufferPool, Seeder};
use crate::rate::RateLimit;
use crate::session::{Session, TrackerError};
use crate::torrent::SharedFile;
use crate::torrent::download::{DownloadState, Misbehaviour, SpeedMeter, identical_chunks};
use crate::torrent::ordered_hash::OrderedHasher;
use crate::torrent::output::{Output, OutputOpened, PartialOutput};
use crate::torrent::picker::Picker;
use crate::torrent::reuse::{ReuseError, ReuseReport, reuse_local, reuse_shared};
use crate::torrent::storage::ChunkStorage;
use crate::torrent::store::StoreError;
use crate::torrent::swarm::{PeerRecord, StallClock, peer_problems, waiting_reason};

pub use crate::peer::download::{
    BAN_THRESHOLD, MID_FRAME_PENALTY, MIN_STALL, STALL_CHUNK_TIMES, STALL_PENALTY,
    VIOLATION_PENALTY, stall_after,
};

/// Least time between two `waiting` events with the same reason.
const WAITING_REPEAT: Duration = Duration::from_secs(5);
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub out_dir: PathBuf,
    pub force: bool,
    /// Most peers connected at once.
    pub max_peers: usize,
    /// Most a peer with requests out may send nothing before it is stalled and its chunks go
    /// elsewhere; a peer whose rate is measured gets [`stall_after`] of it (≥ 2 s, 4 chunk
    /// times), and is marked lagging (no end-game copies) halfway there.
    pub stall_timeout: Duration,
    /// Longest wait between re-announces (and reconnects) while no peer is usable: a seeder
    /// that appears is found within it.
    pub max_retry_interval: Duration,
    /// Give up when no verified byte has arrived for this long (`get --timeout`).
    pub timeout: Option<Duration>,
    /// The manifest, if the caller fetched it already (it is checked against the id).
    pub manifest: Option<Arc<Manifest>>,
    /// Files of a directory share to fetch (`--only GLOB`); empty: all.
    pub only: Vec<String>,
    /// Local files or folders to take matching chunks from before fetching (`--reuse PATH`).
    pub reuse: Vec<PathBuf>,
    /// Also hash a single file whole as it lies on disk at the end and compare with the
    /// manifest's `file_hash` (`get --verify-full`). Without it the chain id → manifest → chunk
    /// digests → bytes, each chunk checked before it is written, is the verification.
    pub verify_full: bool,
    /// Whether peers may send chunks zstd-compressed (`--compression`).
    pub compression: torrentguard_protocol::compression::Mode,
    /// Bytes per second of chunk payload this download may ask for, shared with every download
    /// given the same limit (`get --download-limit`; [`Agent::download`](crate::Agent::download)
    /// passes the agent's). Requests wait their turn; the bytes themselves are never held up.
    pub download_limit: Arc<RateLimit>,
    pub events: EventSink,
    /// The agent's memory of misbehaving peers: read to avoid them, told of new ones.
    /// [`Agent::download`](crate::Agent::download) passes the agent's.
    pub misbehaving: Option<Arc<MisbehavingPeers>>,
}

impl DownloadOptions {
    pub fn new(out_dir: PathBuf) -> Self {
        DownloadOptions {
            out_dir,
            force: false,
            max_peers: 32,
            stall_timeout: Duration::from_secs(20),
            max_retry_interval: Duration::from_secs(5),
            timeout: None,
            manifest: None,
            only: Vec::new(),
            reuse: Vec::new(),
            verify_full: false,
            compression: Default::default(),
            download_limit: Arc::new(RateLimit::default()),
            events: EventSink::none(),
            misbehaving: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reuse(#[from] ReuseError),
    #[error(
        "every chunk matched but the whole file does not hash to the manifest's file_hash: the manifest is inconsistent"
    )]
    FileHashMismatch,
    #[error(
        "writing {path}: {source}; the partial download and its state are kept, run the same command again to resume"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "interrupted; the partial download and its state are kept, run the same command again to resume"
    )]
    Interrupted,
    #[error(
        "{first} and {second} would both be written as {name:?} in one directory; run one get per id, each with its own -o directory"
    )]
    NameClash {
        name: String,
        first: FileId,
        second: FileId,
    },
    #[error(
        "gave up: no verified data for {}s ({detail}); the partial download and its state are kept, run the same command again to resume",
        .after.as_secs()
    )]
    Stalled { after: Duration, detail: String },
}

/// What a finished download did.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub file_id: FileId,
    pub path: PathBuf,
    pub bytes: u64,
    pub secs: f64,
    pub chunks_fetched: u32,
    /// Bytes of the chunks fetched from peers in this run (not those found on disk).
    pub bytes_fetched: u64,
    pub chunks_reused: u32,
    /// Bytes held before fetching began: resumed, found in an existing output or reused.
    pub bytes_reused: u64,
    /// A single file was also hashed whole from disk (`--verify-full`, or an existing output).
    pub whole_file_checked: bool,
    /// Bytes of chunk frames received from peers: below `bytes_fetched` by what compression
    /// saved.
    pub bytes_on_wire: u64,
    /// Chunks that arrived zstd-compressed.
    pub chunks_compressed: u32,
    /// Milliseconds from the start to the first chunk fetched from a peer, if any was.
    pub first_chunk_ms: Option<u64>,
    pub shared: Arc<SharedFile>,
}

/// Refuses two manifests whose download files would collide in one directory: the same name,
/// or one's name equal to the other's `.part` or state file.
pub fn check_distinct_outputs(manifests: &[Arc<Manifest>]) -> Result<(), DownloadError> {
    let mut taken: HashMap<String, (FileId, String)> = HashMap::new();
    for m in manifests {
        let id = m.file_id();
        let Ok(name) = sanitize_name(&m.name) else {
            continue; // refused with its own error when its download starts
        };
        let files = if m.is_tree() {
            [
                name.to_string(),
                format!(".{name}.part"),
                format!(".{name}.part.tgstate"),
            ]
        } else {
            [
                name.to_string(),
                format!("{name}.part"),
                format!("{name}.part.tgstate"),
            ]
        };
        for f in &files {
            if let Some((other, other_name)) = taken.get(f)
                && *other != id
            {
                return Err(DownloadError::NameClash {
                    name: if other_name == name {
                        name.into()
                    } else {
                        f.clone()
                    },
                    first: *other,
                    second: id,
                });
            }
        }
        for f in files {
            taken.insert(f, (id, name.to_string()));
        }
    }
    Ok(())
}

/// Parses a duration for `--timeout`: `90` (seconds), `500ms`, `30s`, `5m`, `1h`, or a sum
/// such as `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 5m, 1h30m, or plain seconds)");
    if let Ok(secs) = s.parse::<u64>() {
        return (secs > 0)
            .then(|| Duration::from_secs(secs))
            .ok_or_else(|| "the duration must be more than 0".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let one = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        let part = one.checked_mul(u32::try_from(n).map_err(|_| bad())?);
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(bad)?;
    }
    if total.is_zero() {
        return Err("the duration must be more than 0".into());
    }
    Ok(total)
}

/// Downloads `file_id` into `opts.out_dir`, serving verified chunks to others meanwhile.
pub async fn download(
    identity: Arc<Identity>,
    session: &Session,
    seeder: &Arc<Seeder>,
    file_id: FileId,
    opts: DownloadOptions,
    cancel: CancellationToken,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let manifest = match &opts.manifest {
        Some(m) if m.file_id() == file_id => m.clone(),
        _ => Arc::new(session.manifest(&file_id).await?),
    };
    let (out_dir, m, force, only) = (
        opts.out_dir.clone(),
        manifest.clone(),
        opts.force,
        opts.only.clone(),
    );
    let opened = tokio::task::spawn_blocking(move || Output::open(&out_dir, m, &only, force))
        .await
        .expect("output open does not panic")?;
    let mut opened = match opened {
        OutputOpened::Partial(p) => *p,
        OutputOpened::Complete {
            path,
            storage,
            file,
        } => {
            let done = Complete {
                path,
                storage,
                file,
            };
            return already_complete(session, seeder, manifest, done, &opts, started).await;
        }
    };
    if opened.discarded > 0 {
        tracing::warn!(
            discarded = opened.discarded,
            "chunks claimed by the state file failed verification and will be fetched again"
        );
    }
    let shares = seeder.files();
    let reused = reuse_local_chunks(&manifest, &mut opened, &opts, shares).await?;
    let output = Arc::new(opened.output);
    let _release = ReleaseLock(output.clone());
    let (have, wanted) = (opened.have, opened.wanted);
    let chunks_reused = have.count();
    opts.events.emit(Event::Started {
        file_id,
        name: manifest.name.clone(),
        size: manifest.size,
        chunks_total: wanted.count(),
        chunks_have: chunks_reused,
        discarded: opened.discarded,
        bytes_reused: reused.bytes,
    });

    let shared_file = SharedFile::partial(
        manifest.clone(),
        output.part().to_path_buf(),
        output.storage(),
        have.clone(),
    );
    seeder.add(shared_file.clone());
    let pool = BufferPool::new(manifest.chunk_size as usize);
    // Every chunk is verified before it is written: with the id committing to the manifest and
    // the manifest to every chunk digest, that verifies the whole. `--verify-full` also hashes a
    // single file whole, read back from disk, against its content digest.
    let hasher = (opts.verify_full && !manifest.is_tree()).then(|| {
        let h = OrderedHasher::start(output.storage(), manifest.clone());
        for i in have.iter_set() {
            let _ = h.tx.send(i);
        }
        h
    });
    let bytes_of =
        |b: &Bitfield| -> u64 { b.iter_set().map(|i| manifest.chunk_len(i) as u64).sum() };
    // The picker sees chunks outside the selection as done: they are never asked for, and
    // never announced (the share's bitfield holds only verified chunks).
    let mut picker_have = have.clone();
    for i in (0..manifest.chunk_count()).filter(|i| !wanted.get(*i)) {
        picker_have.set(i);
    }
    // Reports go out as peers misbehave, off the download's path; the task ends when the
    // download's state (holding the sender) is dropped.
    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(report_misbehaviour(
        session.clone(),
        file_id,
        opts.misbehaving.clone(),
        report_rx,
    ));
    let sh = Arc::new(DownloadState {
        file_id,
        manifest: manifest.clone(),
        storage: output.storage(),
        part_path: output.part().to_path_buf(),
        shared_file: shared_file.clone(),
        picker: Mutex::new(Picker::new(&picker_have)),
        completions: broadcast::channel(4096).0,
        hasher: hasher.as_ref().map(|h| h.tx.clone()),
        bytes_done: AtomicU64::new(bytes_of(&have)),
        bytes_total: bytes_of(&wanted),
        chunks_total: wanted.count(),
        copies: identical_chunks(&manifest, &wanted),
        wanted: wanted.clone(),
        bytes_fetched: AtomicU64::new(0),
        bytes_on_wire: AtomicU64::new(0),
        chunks_compressed: AtomicU32::new(0),
        chunks_fetched: AtomicU32::new(0),
        started,
        first_chunk_ms: std::sync::OnceLock::new(),
        retries: AtomicU32::new(0),
        dirty: AtomicBool::new(false),
        done: Notify::new(),
        fatal: Mutex::new(None),
        peer_rates: Mutex::new(HashMap::new()),
        events: opts.events.clone(),
        stall_timeout: opts.stall_timeout,
        cancel: cancel.child_token(),
        next_slot: AtomicU32::new(0),
        misbehaved: report_tx,
    });

    let peers = Arc::new(DownloadPeers {
        state: sh.clone(),
        identity: identity.clone(),
        pool,
        compression: opts.compression,
        limit: opts.download_limit.clone(),
        dial: dial_context(identity, session, seeder),
    });
    let result = run_swarm(&peers, session, &opts, &output).await;
    sh.cancel.cancel();
    let have_now = sh.verified();
    let fail = |e: DownloadError| {
        if let Err(e) = output.save_state(&have_now) {
            tracing::warn!(error = %e, "could not save download state");
        }
        seeder.remove(&file_id);
        e
    };
    if let Err(e) = result {
        let e = fail(e);
        session
            .announce(&sh.shared_file, AnnounceEvent::Stopped)
            .await
            .ok();
        return Err(e);
    }

    // Every chunk verified (and with --verify-full a single file hashed whole as it is on
    // disk); then the output is made durable and that very file or tree is moved into place
    // (`finish` checks it is the same inode before and after).
    let whole_file_checked = hasher.is_some();
    if let Some(hasher) = hasher {
        match hasher.finish().await {
            Ok(d) if d == manifest.file_hash => {}
            Ok(_) => return Err(fail(DownloadError::FileHashMismatch)),
            Err(source) => {
                return Err(fail(DownloadError::Write {
                    path: output.part().to_path_buf(),
                    source,
                }));
            }
        }
    }
    let finish = {
        let output = output.clone();
        tokio::task::spawn_blocking(move || output.finish(force))
            .await
            .expect("finish does not panic")
    };
    if let Err(e) = finish {
        return Err(fail(e.into()));
    }
    shared_file.promote(output.dest().to_path_buf());
    if let Err(e) = session
        .announce(&shared_file, AnnounceEvent::Completed)
        .await
    {
        tracing::warn!(error = %e, "could not announce completion");
    }
    let report = DownloadReport {
        file_id,
        path: output.dest().to_path_buf(),
        bytes: sh.bytes_total,
        secs: started.elapsed().as_secs_f64(),
        chunks_fetched: sh.chunks_fetched.load(Ordering::Relaxed),
        bytes_fetched: sh.bytes_fetched.load(Ordering::Relaxed),
        chunks_reused,
        bytes_reused: bytes_of(&have),
        whole_file_checked,
        bytes_on_wire: sh.bytes_on_wire.load(Ordering::Relaxed),
        chunks_compressed: sh.chunks_compressed.load(Ordering::Relaxed),
        first_chunk_ms: sh.first_chunk_ms.get().copied(),
        shared: shared_file,
    };
    emit_completed(&opts.events, &report);
    Ok(report)
}

/// Fills what it can of the output from this host before any peer is asked: the shares this
/// agent serves (through their manifests), then `--reuse` paths (an old version of the file or
/// folder, hashed). Each chunk found is verified by its digest like a fetched one; the state is
/// saved so a crash does not lose the work.
async fn reuse_local_chunks(
    manifest: &Arc<Manifest>,
    opened: &mut PartialOutput,
    opts: &DownloadOptions,
    shares: Vec<Arc<SharedFile>>,
) -> Result<ReuseReport, DownloadError> {
    let mut need = opened.wanted.clone();
    for i in opened.have.iter_set() {
        need.clear(i);
    }
    if need.count() == 0 {
        return Ok(ReuseReport::default());
    }
    let storage = opened.output.storage();
    let skip = vec![
        opened.output.part().to_path_buf(),
        opened.output.dest().to_path_buf(),
    ];
    let (m, sources) = (manifest.clone(), opts.reuse.clone());
    let (report, found) = tokio::task::spawn_blocking(move || {
        let write = |i: u32, data: &[u8]| storage.write_chunk(i, data);
        let others: Vec<_> = shares
            .into_iter()
            .filter(|s| s.file_id != m.file_id())
            .collect();
        let (mut report, found) = reuse_shared(&m, &need, &others, &write)?;
        for i in found.iter_set() {
            need.clear(i);
        }
        let (local, more) = match sources.is_empty() {
            true => (ReuseReport::default(), Bitfield::new(m.chunk_count())),
            false => reuse_local(&m, &need, &sources, &skip, &write)?,
        };
        report.chunks += local.chunks;
        report.bytes += local.bytes;
        report.scanned += local.scanned;
        report.files += local.files;
        let mut all = found;
        for i in more.iter_set() {
            all.set(i);
        }
        Ok::<_, ReuseError>((report, all))
    })
    .await
    .expect("reuse does not panic")?;
    for i in found.iter_set() {
        opened.have.set(i);
    }
    if report.chunks > 0 {
        opened.output.save_state(&opened.have)?;
        tracing::info!(
            chunks = report.chunks,
            bytes = report.bytes,
            scanned = report.scanned,
            files = report.files,
            "reused chunks found on this host"
        );
    }
    Ok(report)
}

/// Releases the output's lock when `download` returns, however it ends, even if a blocking
/// task still holds the store for a moment: a rerun in this process may start at once.
struct ReleaseLock(Arc<Output>);

impl Drop for ReleaseLock {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

fn emit_completed(events: &EventSink, r: &DownloadReport) {
    events.emit(Event::Completed {
        file_id: r.file_id,
        path: r.path.clone(),
        bytes: r.bytes,
        secs: r.secs,
        chunks_fetched: r.chunks_fetched,
        bytes_fetched: r.bytes_fetched,
        chunks_reused: r.chunks_reused,
        bytes_reused: r.bytes_reused,
        whole_file_checked: r.whole_file_checked,
        bytes_on_wire: r.bytes_on_wire,
        chunks_compressed: r.chunks_compressed,
        first_chunk_ms: r.first_chunk_ms,
    });
}

/// A destination that already holds the share.
struct Complete {
    path: PathBuf,
    storage: Arc<dyn ChunkStorage>,
    file: Option<Arc<File>>,
}

/// The destination already holds this very share (verified when the output was opened):
/// nothing to fetch. It is served as complete from now on, like a finished download.
async fn already_complete(
    session: &Session,
    seeder: &Arc<Seeder>,
    manifest: Arc<Manifest>,
    done: Complete,
    opts: &DownloadOptions,
    started: Instant,
) -> Result<DownloadReport, DownloadError> {
    let n = manifest.chunk_count();
    let path = done.path;
    let shared = match done.file {
        Some(file) => {
            SharedFile::complete(manifest.clone(), path.clone(), file).map_err(|source| {
                DownloadError::Write {
                    path: path.clone(),
                    source,
                }
            })?
        }
        None => SharedFile::complete_tree(manifest.clone(), path.clone(), done.storage),
    };
    seeder.add(shared.clone());
    if let Err(e) = session.announce(&shared, AnnounceEvent::Started).await {
        tracing::warn!(error = %e, "could not announce the complete file");
    }
    let report = DownloadReport {
        file_id: shared.file_id,
        path,
        bytes: manifest.size,
        secs: started.elapsed().as_secs_f64(),
        chunks_fetched: 0,
        bytes_fetched: 0,
        chunks_reused: n,
        bytes_reused: manifest.size,
        // An existing single file was hashed whole when the output was opened.
        whole_file_checked: !manifest.is_tree(),
        bytes_on_wire: 0,
        chunks_compressed: 0,
        first_chunk_ms: None,
        shared,
    };
    emit_completed(&opts.events, &report);
    Ok(report)
}

async fn run_swarm(
    peers: &Arc<DownloadPeers>,
    session: &Session,
    opts: &DownloadOptions,
    output: &Arc<Output>,
) -> Result<(), DownloadError> {
    let sh = &peers.state;
    let own = peers.identity.fingerprint;
    let mut records: HashMap<Fingerprint, PeerRecord> = HashMap::new();
    let mut connected: HashSet<Fingerprint> = HashSet::new();
    let mut tasks: JoinSet<(Fingerprint, PeerEnd, PeerMemory)> = JoinSet::new();
    let mut known: Vec<PeerInfo> = Vec::new();
    let mut progress = tokio::time::interval(Duration::from_millis(250));
    let mut persist = tokio::time::interval(Duration::from_secs(1));
    let mut speed = SpeedMeter::new(sh.bytes_done.load(Ordering::Relaxed));
    let mut announce_interval = session.announce_interval();
    let mut next_announce = Instant::now();
    let mut first = true;
    let mut waiting_backoff = Duration::from_secs(1);
    let mut bans = 0u32;
    // Say why we wait after an announce, or when the last connected peer drops.
    let mut report_waiting = false;
    let mut last_waiting: Option<(String, Instant)> = None;
    let mut stall = StallClock::new(sh.bytes_done.load(Ordering::Relaxed), opts.timeout);
    let remembered = opts
        .misbehaving
        .as_ref()
        .map(|m| m.remembered())
        .unwrap_or_default();

    loop {
        if sh.picker().is_done() {
            sh.emit_progress(&mut speed, connected.len(), bans);
            break;
        }
        if let Some(after) = stall.expired(sh.bytes_done.load(Ordering::Relaxed)) {
            let detail = if connected.is_empty() {
                waiting_reason(&peer_problems(&known, &records, own))
            } else {
                format!("{} peer(s) connected but sending nothing", connected.len())
            };
            tasks.shutdown().await;
            return Err(DownloadError::Stalled { after, detail });
        }
        if let Some(e) = sh.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(DownloadError::Write {
                path: sh.part_path.clone(),
                source: e,
            });
        }
        if Instant::now() >= next_announce {
            let event = if first {
                AnnounceEvent::Started
            } else {
                AnnounceEvent::Progress
            };
            match session.announce(&sh.shared_file, event).await {
                Ok(resp) => {
                    first = false;
                    known = resp.peers;
                    announce_interval = session.announce_interval();
                    // Other downloaders in the swarm: spread our requests over the file so we
                    // hold chunks they lack (and they ours), instead of all asking the seeder
                    // for the same first chunks. Alone with seeders, stay sequential: the
                    // whole-file digest then keeps pace with the download.
                    let leechers = known.iter().any(|p| !p.complete && p.fingerprint != own);
                    sh.picker().set_spread(leechers);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "announce failed; will retry");
                }
                Err(e) => return Err(e.into()),
            }
            // Re-announce on the tracker's interval, sooner at first (1, 2, 4 … s) so peers
            // that started with us are found in seconds, not after a whole interval; and while
            // no peer is connected, within `max_retry_interval` however long we were connected
            // before, so a seeder that appears is used within seconds.
            let cap = if connected.is_empty() {
                opts.max_retry_interval.min(announce_interval)
            } else {
                announce_interval
            };
            next_announce = Instant::now() + waiting_backoff.min(cap);
            waiting_backoff = (waiting_backoff * 2).min(cap);
            report_waiting = true;
        }
        // Connect to every usable peer we are not connected to; a peer that misbehaved in an
        // earlier download only when no other is usable, and with half the ban counted.
        let now = Instant::now();
        let avoid = avoid_remembered(&known, &records, &remembered, own);
        for p in &known {
            if connected.len() >= opts.max_peers {
                break;
            }
            let rec = records.entry(p.fingerprint).or_default();
            if p.fingerprint == own
                || connected.contains(&p.fingerprint)
                || rec.banned
                || rec.retry_at.is_some_and(|t| t > now)
                || (avoid && remembered.contains(&p.fingerprint))
            {
                continue;
            }
            if remembered.contains(&p.fingerprint) && rec.penalty < REMEMBERED_PENALTY {
                tracing::info!(peer = %p.fingerprint, "no other peer usable: trying a peer that misbehaved before");
                rec.penalty = REMEMBERED_PENALTY;
            }
            connected.insert(p.fingerprint);
            let prior = PeerMemory {
                penalty: rec.penalty,
                rate: rec.rate,
                avoid_relay: rec.avoid_relay,
                path: None,
            };
            let (peers, peer) = (peers.clone(), p.clone());
            tasks.spawn(async move {
                let fp = peer.fingerprint;
                let (end, mem) = run_peer(peers, peer, prior).await;
                (fp, end, mem)
            });
        }
        if connected.is_empty() && std::mem::take(&mut report_waiting) {
            let peers = peer_problems(&known, &records, own);
            let reason = waiting_reason(&peers);
            // A new reason at once; the same one again only every few seconds.
            if last_waiting
                .as_ref()
                .is_none_or(|(r, t)| *r != reason || t.elapsed() >= WAITING_REPEAT)
            {
                last_waiting = Some((reason.clone(), Instant::now()));
                let wait = next_announce.saturating_duration_since(Instant::now());
                sh.events.emit(Event::Waiting {
                    file_id: sh.file_id,
                    reason,
                    retry_in_secs: wait.as_secs().max(1),
                    peers,
                });
            }
        }

        let next_retry = records
            .values()
            .filter_map(|r| r.retry_at)
            .filter(|t| *t > Instant::now())
            .min();
        let wake = next_retry.map_or(next_announce, |t| t.min(next_announce));
        tokio::select! {
            _ = sh.done.notified() => {}
            // Someone we did not know connected to us for this file: ask the tracker for its
            // address now, so we fetch from it too.
            _ = sh.shared_file.swarm_changed() => {
                next_announce = Instant::now();
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = progress.tick() => sh.emit_progress(&mut speed, connected.len(), bans),
            _ = persist.tick() => {
                if sh.dirty.swap(false, Ordering::Relaxed) {
                    let have = sh.verified();
                    // fsync + rename: off the reactor.
                    let output = output.clone();
                    let r = tokio::task::spawn_blocking(move || output.save_state(&have)).await;
                    if let Ok(Err(e)) = r {
                        tracing::warn!(error = %e, "could not save download state");
                    }
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((fp, end, mem)) = joined else { continue };
                connected.remove(&fp);
                let last_rate = sh.peer_rates.lock().unwrap_or_else(|e| e.into_inner()).remove(&fp).map_or(0, |(bps, _)| bps);
                let rec = records.entry(fp).or_default();
                rec.penalty = mem.penalty;
                rec.rate = mem.rate;
                rec.avoid_relay |= mem.avoid_relay;
                match end {
                    // `Switched` is handled inside the peer's task.
                    PeerEnd::Finished | PeerEnd::Switched(_) => {}
                    PeerEnd::Fatal => {}
                    PeerEnd::Banned(e) => {
                        if let PeerError::Stalled { .. } = e {
                            // Stalled until banned: attributable, not a blip.
                            let _ = sh.misbehaved.send(Misbehaviour { peer: fp, kind: ReportKind::Stall, chunk: None });
                        }
                        let reason = e.to_string();
                        rec.banned = true;
                        bans += 1;
                        tracing::warn!(peer = %fp, %reason, "peer banned for the rest of this download");
                        sh.events.emit(Event::PeerBanned { file_id: sh.file_id, fingerprint: fp, reason });
                    }
                    PeerEnd::Failed(e) => {
                        let reason = e.to_string();
                        rec.failures += 1;
                        rec.last_error = Some(reason.clone());
                        let backoff = Duration::from_millis(500) * 2u32.saturating_pow(rec.failures.min(6));
                        rec.retry_at = Some(Instant::now() + backoff.min(opts.max_retry_interval));
                        tracing::info!(peer = %fp, %reason, retry_in = ?backoff, "peer connection ended");
                        sh.events.emit(Event::PeerDropped { file_id: sh.file_id, fingerprint: fp, reason, rate_bps: last_rate, });
                        if connected.is_empty() {
                            // Maybe the tracker knows new peers by now.
                            next_announce = next_announce.min(Instant::now() + Duration::from_secs(1));
                            report_waiting = true;
                        }
                    }
                }
            }
            _ = sh.cancel.cancelled() => {
                tasks.shutdown().await;
                return Err(DownloadError::Interrupted);
            }
        }
    }
    sh.cancel.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How this download reaches peers: the session introduces (it asks the tracker), punches go
/// from the seeder's listening port and are handed over by its listener, and our own reach is
/// the seeder's latest, read at each dial.
fn dial_context(
    identity: Arc<Identity>,
    session: &Session,
    seeder: &Arc<Seeder>,
) -> Arc<dyn Fn() -> DialContext + Send + Sync> {
    let rendezvous: Arc<dyn Rendezvous> = Arc::new(session.clone());
    let seeder = seeder.clone();
    Arc::new(move || DialContext {
        identity: identity.clone(),
        rendezvous: Some(rendezvous.clone()),
        listen_port: seeder.local_addr().port(),
        punches: seeder.punches().clone(),
        own_reach: seeder.reach(),
    })
}

/// Penalty a peer remembered as misbehaving starts a download with: one more bad chunk bans it.
const REMEMBERED_PENALTY: u32 = BAN_THRESHOLD / 2;

/// Whether to leave remembered peers alone: while some other peer of the swarm is not banned.
fn avoid_remembered(
    known: &[PeerInfo],
    records: &HashMap<Fingerprint, PeerRecord>,
    remembered: &HashSet<Fingerprint>,
    own: Fingerprint,
) -> bool {
    !remembered.is_empty()
        && known.iter().any(|p| {
            p.fingerprint != own
                && !remembered.contains(&p.fingerprint)
                && !records.get(&p.fingerprint).is_some_and(|r| r.banned)
        })
}

/// Reports each peer that misbehaved to the tracker and remembers it, once per peer and kind
/// per download. Best effort: a failure is logged, never the download's.
async fn report_misbehaviour(
    session: Session,
    file_id: FileId,
    memory: Option<Arc<MisbehavingPeers>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Misbehaviour>,
) {
    let mut done: HashSet<(Fingerprint, ReportKind)> = HashSet::new();
    while let Some(m) = rx.recv().await {
        if !done.insert((m.peer, m.kind)) {
            continue;
        }
        if let Some(memory) = &memory {
            let memory = memory.clone();
            let noted = tokio::task::spawn_blocking(move || memory.note(m.peer, m.kind)).await;
            if let Ok(Err(e)) = noted {
                tracing::warn!(error = %e, "could not remember a misbehaving peer");
            }
        }
        let req = ReportRequest {
            file_id,
            peer: m.peer,
            kind: m.kind,
            chunk: m.chunk,
        };
        match session.report(&req).await {
            Ok(()) => {
                tracing::info!(peer = %m.peer, kind = ?m.kind, "reported the peer to the tracker")
            }
            Err(e) => {
                tracing::warn!(peer = %m.peer, error = %e, "could not report the peer to the tracker")
            }
        }
    }
}

#[cfg(test)]
mod tests;
