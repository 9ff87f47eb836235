//! Progress and lifecycle events the engine emits; the CLI renders them (bars, lines or JSON).
//! The engine itself never prints.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::mpsc;
use torrentguard_protocol::{FileId, Fingerprint};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Hashing a file to share.
    Hashing {
        name: String,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// A file is registered and served.
    Seeding {
        file_id: FileId,
        name: String,
        size: u64,
        listen: SocketAddr,
    },
    /// A shared file changed on disk and is no longer served.
    Withdrawn { file_id: FileId, reason: String },
    /// How this agent can be reached, as learned from the tracker and its relay (again each
    /// time it changes).
    Reach {
        inbound: bool,
        public: SocketAddr,
        mapping: torrentguard_protocol::api::NatMapping,
    },
    /// A download began (possibly resuming).
    Started {
        file_id: FileId,
        name: String,
        size: u64,
        chunks_total: u32,
        chunks_have: u32,
        discarded: u32,
        /// Bytes taken from local files (`--reuse`) before fetching.
        bytes_reused: u64,
    },
    Progress {
        file_id: FileId,
        bytes_done: u64,
        bytes_total: u64,
        chunks_done: u32,
        chunks_total: u32,
        /// A directory share: files complete and wanted, and the first one still incomplete.
        #[serde(skip_serializing_if = "Option::is_none")]
        files_done: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        files_total: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        current_file: Option<String>,
        /// Bytes per second over the last few seconds.
        speed_bps: u64,
        eta_secs: Option<u64>,
        peers: u32,
        /// Current download rate from each connected peer.
        peer_rates: Vec<PeerRate>,
        retries: u32,
        bans: u32,
    },
    PeerConnected {
        file_id: FileId,
        fingerprint: Fingerprint,
        address: SocketAddr,
        cipher: String,
        group: String,
        /// How the peer was reached: direct, punched or relayed.
        path: crate::peer::Path,
        /// Attempts of that path (a punch retries).
        tries: u32,
        /// From the start of that path's attempt to the TLS session.
        after_ms: u64,
    },
    PeerDropped {
        file_id: FileId,
        fingerprint: Fingerprint,
        reason: String,
        rate_bps: u64,
    },
    PeerBanned {
        file_id: FileId,
        fingerprint: Fingerprint,
        reason: String,
    },
    /// A chunk failed (bad data, rejected, timed out) and goes back to the queue.
    ChunkRetry {
        file_id: FileId,
        index: u32,
        fingerprint: Fingerprint,
        reason: String,
    },
    /// No usable peer right now; retrying. `reason` sums up `peers`, each known peer with the
    /// error its last connection ended with.
    Waiting {
        file_id: FileId,
        reason: String,
        retry_in_secs: u64,
        peers: Vec<PeerProblem>,
    },
    /// The file is in place and verified. `chunks_fetched`/`bytes_fetched` count only what came
    /// from peers in this run; `chunks_reused` were already on disk (resumed, or an identical
    /// or `--force`d existing file).
    Completed {
        file_id: FileId,
        path: PathBuf,
        bytes: u64,
        secs: f64,
        chunks_fetched: u32,
        bytes_fetched: u64,
        chunks_reused: u32,
        /// Bytes not fetched because they were already on this host (resumed, an existing
        /// output, `--reuse`).
        bytes_reused: u64,
        /// A single file was also hashed whole from disk (`--verify-full`, or an identical
        /// file already there) besides every chunk.
        whole_file_checked: bool,
        /// Bytes of chunk frames that came over the wire for `bytes_fetched` (with frame
        /// headers, end-game duplicates and refused chunks): less than it when compression
        /// saved something.
        bytes_on_wire: u64,
        /// Chunks that arrived zstd-compressed.
        chunks_compressed: u32,
        /// From the download's start to the first chunk fetched from a peer and verified;
        /// `None` when nothing was fetched.
        first_chunk_ms: Option<u64>,
    },
    /// `share --self-download`: the file came back through the TLS path and was compared with
    /// the original.
    SelfDownload {
        file_id: FileId,
        ok: bool,
        bytes: u64,
        secs: f64,
        path: PathBuf,
        seeder: SocketAddr,
    },
}

/// A known peer that cannot be used right now, and why.
#[derive(Debug, Clone, Serialize)]
pub struct PeerProblem {
    pub fingerprint: Fingerprint,
    pub address: SocketAddr,
    pub last_error: String,
    /// Seconds until it is tried again (0: at the next chance).
    pub retry_in_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerRate {
    pub fingerprint: Fingerprint,
    pub bps: u64,
    /// Chunk bytes received from it over its current connection (a new connection counts
    /// from 0 again).
    pub bytes: u64,
}

/// Where events go: a channel, a function called in place (which keeps them in order with
/// other output), or nowhere.
#[derive(Clone, Default)]
pub struct EventSink(Sink);

#[derive(Clone, Default)]
enum Sink {
    #[default]
    None,
    Channel(mpsc::UnboundedSender<Event>),
    Callback(std::sync::Arc<dyn Fn(Event) + Send + Sync>),
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Sink::None => "EventSink::None",
            Sink::Channel(_) => "EventSink::Channel",
            Sink::Callback(_) => "EventSink::Callback",
        })
    }
}

impl EventSink {
    pub fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        EventSink(Sink::Channel(tx))
    }

    /// Calls `f` for every event, on the emitting task: keep it quick.
    pub fn from_fn(f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        EventSink(Sink::Callback(std::sync::Arc::new(f)))
    }

    pub fn none() -> Self {
        EventSink(Sink::None)
    }

    pub fn emit(&self, e: Event) {
        match &self.0 {
            Sink::None => {}
            Sink::Channel(tx) => {
                let _ = tx.send(e);
            }
            Sink::Callback(f) => f(e),
        }
    }
}
