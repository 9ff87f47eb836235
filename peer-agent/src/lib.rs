//! The TorrentGuard peer agent: pinned mutual TLS between peers, seeding, and a verified,
//! resumable, multi-peer download engine. The `torrentguard` CLI (`main.rs`, `cli/`) is a thin
//! shell over this library.

pub mod agent;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod download;
pub mod events;
pub mod misbehaving;
pub mod peer;
pub mod portmap;
pub mod rate;
pub mod reach;
pub mod scan;
pub mod session;
pub mod share_code;
pub mod spawn;
pub mod torrent;

pub use agent::{Agent, AgentError, PinnedUrl, TrackerTarget};
pub use download::{DownloadError, DownloadOptions, DownloadReport};
pub use events::{Event, EventSink};
pub use rate::RateLimit;
