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
    /// A download began (possibly resuming).
    Started {
        file_id: FileId,
        name: String,
        size: u64,
        chunks_total: u32,
        chunks_have: u32,
        discarded: u32,
    },
    Progress {
        file_id: FileId,
        bytes_done: u64,
        bytes_total: u64,
        chunks_done: u32,
        chunks_total: u32,
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
    /// No usable peer right now; retrying.
    Waiting {
        file_id: FileId,
        reason: String,
        retry_in_secs: u64,
    },
    Completed {
        file_id: FileId,
        path: PathBuf,
        bytes: u64,
        secs: f64,
        chunks_fetched: u32,
        chunks_reused: u32,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerRate {
    pub fingerprint: Fingerprint,
    pub bps: u64,
}

/// Where events go. Dropped silently if nobody listens.
#[derive(Debug, Clone, Default)]
pub struct EventSink(Option<mpsc::UnboundedSender<Event>>);

impl EventSink {
    pub fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        EventSink(Some(tx))
    }

    pub fn none() -> Self {
        EventSink(None)
    }

    pub fn emit(&self, e: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(e);
        }
    }
}
