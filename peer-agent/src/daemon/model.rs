//! What the control API says and takes: the JSON shapes of transfers, peers, stats and
//! requests. The OpenAPI description is generated from these very types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A share (a file or folder this daemon serves) or a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Share,
    Download,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Share => "share",
            Kind::Download => "download",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "share" => Some(Kind::Share),
            "download" => Some(Kind::Download),
            _ => None,
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A download waiting for a slot (`--max-active-downloads`).
    Queued,
    /// A share being hashed (at start, when it changed since it was last hashed).
    Hashing,
    Downloading,
    /// Served to peers and announced.
    Seeding,
    /// Stopped by the user: not fetched, not served, not announced.
    Paused,
    /// A download done and no longer seeded (its seed policy was met).
    Completed,
    /// Stopped by an error, given in `error`; resume retries it.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Hashing => "hashing",
            Status::Downloading => "downloading",
            Status::Seeding => "seeding",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Hashing,
            Status::Downloading,
            Status::Seeding,
            Status::Paused,
            Status::Completed,
            Status::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One transfer, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    /// The file id (64 hex digits).
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub size: u64,
    /// A share: the path shared. A download: its output path once known, else the directory.
    pub path: String,
    pub status: Status,
    pub error: Option<String>,
    pub bytes_done: u64,
    pub percent: f64,
    pub download_bps: u64,
    pub upload_bps: u64,
    pub eta_secs: Option<u64>,
    pub peers: u32,
    /// Bytes that were already on this host (resumed, an existing output, `--reuse`).
    pub bytes_reused: u64,
    /// Bytes fetched from peers in this run.
    pub bytes_fetched: u64,
    /// Bytes served to peers, over every run.
    pub uploaded: u64,
    /// The one string another host passes to `get` (or pastes in its UI).
    pub share_code: Option<String>,
    /// Unix seconds.
    pub added_at: i64,
}

/// A peer of a download, with its current rate and its record on this daemon.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerView {
    pub fingerprint: String,
    pub address: Option<String>,
    pub download_bps: u64,
    pub state: PeerState,
    pub reputation: Reputation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    Connected,
    Dropped,
    Banned,
}

/// How a peer has behaved towards this daemon, over every transfer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Reputation {
    /// Chunk bytes received from it, over every transfer (counted at each progress event).
    pub bytes_received: u64,
    /// Chunks it sent that failed verification or were refused.
    pub chunks_failed: u64,
    pub bans: u64,
    pub last_error: Option<String>,
}

/// The daemon as a whole.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// This agent's identity.
    pub fingerprint: String,
    /// The one port peers reach every share and download at.
    pub peer_port: u16,
    pub download_bps: u64,
    pub upload_bps: u64,
    /// Bytes per second; 0 is unlimited.
    pub download_limit: u64,
    pub upload_limit: u64,
    pub downloads_active: u32,
    pub downloads_queued: u32,
    pub shares_seeding: u32,
    pub uploaded_total: u64,
    pub downloaded_total: u64,
    pub version: String,
}

/// `POST /api/shares`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddShare {
    /// A file or folder on the daemon's host (absolute, or relative to the daemon's working
    /// directory).
    pub path: String,
    /// Share the path as a tree under this name.
    #[serde(default)]
    pub name: Option<String>,
    /// In a folder, follow links that stay inside it.
    #[serde(default)]
    pub follow_symlinks: bool,
}

/// `POST /api/downloads`: a share code, or a file id with its tracker.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDownload {
    /// A share code (`tg1:…`) as `share` prints it.
    #[serde(default)]
    pub code: Option<String>,
    /// A file id; needs `tracker` unless the daemon has one.
    #[serde(default)]
    pub file_id: Option<String>,
    #[serde(default)]
    pub tracker: Option<String>,
    #[serde(default)]
    pub tracker_fingerprint: Option<String>,
    /// Where to put it [default: the daemon's download directory].
    #[serde(default)]
    pub out_dir: Option<String>,
    /// Replace a different existing output (its matching chunks are kept).
    #[serde(default)]
    pub force: bool,
    /// Of a folder share, only the files matching these globs.
    #[serde(default)]
    pub only: Vec<String>,
}

/// Every error answer: one sentence.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorView {
    pub error: String,
}
