//! The TorrentGuard peer agent: pinned mutual TLS between peers, seeding, and a verified,
//! resumable, multi-peer download engine. The `torrentguard` CLI (`main.rs`, `cli/`) is a thin
//! shell over this library.

pub mod agent;
pub mod conn;
pub mod download;
pub mod events;
pub mod picker;
pub mod reach;
pub mod scan;
pub mod seeder;
pub mod spawn;
pub mod store;
pub mod tracker_client;

pub use agent::{Agent, AgentError, TrackerTarget};
pub use download::{DownloadError, DownloadOptions, DownloadReport};
pub use events::{Event, EventSink};
