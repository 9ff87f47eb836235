//! Persistence: the [`Store`] trait the handlers talk to and the types it speaks; one module
//! per database implements it ([`sqlite`], [`postgres`]), and [`Database`] says which to open.
//!
//! Rows become `protocol` types here, at the store's edge; handlers never see SQL. Everything
//! handed to a store has been validated already (the manifest checked, the bitfield decoded
//! against the file's chunk count), so the store only has to keep it.

use std::net::IpAddr;

use futures::future::BoxFuture;
use torrentguard_protocol::api::{
    AnnounceEvent, FileSummary, Page, PeerInfo, PeerSummary, ReportKind,
};
use torrentguard_protocol::{Entry, FileId, Fingerprint, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that does not decode into a protocol type: the database was edited by hand or
    /// by a different program.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The database server did not accept a connection at start-up.
    #[error("cannot reach the database {database}: {detail}")]
    Unreachable { database: String, detail: String },
}

fn corrupt(table: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

/// One validated announce, ready to record.
#[derive(Debug, Clone)]
pub struct AnnounceRecord {
    pub fingerprint: Fingerprint,
    pub file_id: FileId,
    pub address: IpAddr,
    pub port: u16,
    pub event: AnnounceEvent,
    /// The wire bitfield, already checked against the file's chunk count.
    pub bitfield: Vec<u8>,
    pub have: u32,
    pub complete: bool,
    pub now: i64,
}

/// A manifest with at most the first few of its entries (all of them for a single file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub manifest: Manifest,
    /// Entries the whole tree has (0 for a single file); more than `manifest.files` holds if
    /// the list was cut.
    pub entry_count: u32,
}

/// Consecutive entries of a tree, and how many it has in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySlice {
    pub items: Vec<Entry>,
    pub entry_count: u32,
}

/// One validated report: `reporter` (from its TLS session) saw `peer` misbehave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub reporter: Fingerprint,
    pub peer: Fingerprint,
    pub file_id: FileId,
    pub kind: ReportKind,
    /// Already checked against the file's chunk count.
    pub chunk: Option<u32>,
    pub now: i64,
}

/// A reporter's latest report of a peer, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRow {
    pub peer: Fingerprint,
    pub reporter: Fingerprint,
    pub kind: ReportKind,
    /// Unix seconds.
    pub reported_at: i64,
}

/// Sizes for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub files: u64,
    pub live_peers: u64,
}

/// What the tracker needs from its database. Object safe (boxed futures) so the handlers hold an
/// `Arc<dyn Store>` and a PostgreSQL implementation can join without touching them.
///
/// `live_since` arguments are Unix seconds: peer entries last seen before it are treated as gone
/// even before the background expiry removes them, so the TTL is exact.
pub trait Store: Send + Sync + 'static {
    /// Stores a validated manifest under its id. `Ok(true)` if it was new, `Ok(false)` if the id
    /// was known (the stored manifest is then left as it was: same id, same content).
    fn register_file<'a>(
        &'a self,
        id: FileId,
        manifest: &'a Manifest,
        now: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// A known manifest, whole: a tree with every entry.
    fn manifest(&self, id: FileId) -> BoxFuture<'_, Result<Option<Manifest>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .manifest_head(id, u32::MAX)
                .await?
                .map(|head| head.manifest))
        })
    }

    /// A known manifest with at most its first `max_entries` entries.
    fn manifest_head(
        &self,
        id: FileId,
        max_entries: u32,
    ) -> BoxFuture<'_, Result<Option<ManifestHead>, StoreError>>;

    /// Up to `limit` entries of a known file from index `start` on (none for a single file).
    fn entries(
        &self,
        id: FileId,
        start: u32,
        limit: u32,
    ) -> BoxFuture<'_, Result<Option<EntrySlice>, StoreError>>;

    /// The chunk count of a known file, `None` for an unknown id.
    fn chunk_count(&self, id: FileId) -> BoxFuture<'_, Result<Option<u32>, StoreError>>;

    /// Files ordered by id, starting after `after`.
    fn list_files(
        &self,
        after: Option<FileId>,
        limit: u32,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Page<FileSummary>, StoreError>>;

    /// Records an announce: upserts the peer and its entry for the file, or removes that entry
    /// (and the peer, if it has no file left) on `stopped`. The file must exist.
    fn announce<'a>(&'a self, record: &'a AnnounceRecord) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Live peers of a file ordered by fingerprint, without `exclude`, at most `limit`.
    fn file_peers(
        &self,
        id: FileId,
        live_since: i64,
        exclude: Option<Fingerprint>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PeerInfo>, StoreError>>;

    /// Live peers ordered by fingerprint, starting after `after`, with their live files.
    fn list_peers(
        &self,
        after: Option<Fingerprint>,
        limit: u32,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Page<PeerSummary>, StoreError>>;

    /// Deletes peer entries last seen before `cutoff`, then peers left without any file.
    /// Returns the number of peer-file entries removed.
    fn expunge(&self, cutoff: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    fn counts(&self, live_since: i64) -> BoxFuture<'_, Result<Counts, StoreError>>;

    /// A cheap round trip, for the health check.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Closes the store; pending work finishes first. Further calls fail.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Chunks held by the live peers of each file whose id is in `first..=last` (files without
    /// a live peer are left out), for the swarm completion the dashboard shows.
    fn chunks_held(
        &self,
        first: FileId,
        last: FileId,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Vec<(FileId, u64)>, StoreError>>;

    /// The connection pool's occupancy, for `/metrics`; `None` for a store without a pool.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// [`Self::register_file`], recording `registrant` as the one who registered it, unless
    /// that identity has registered `max_files` files already. Check and insert are one
    /// atomic step, so concurrent registrations cannot overshoot the bound. A file already
    /// known is [`Registration::Existing`] whatever the registrant's count.
    fn register_file_by<'a>(
        &'a self,
        id: FileId,
        manifest: &'a Manifest,
        now: i64,
        registrant: Fingerprint,
        max_files: u64,
    ) -> BoxFuture<'a, Result<Registration, StoreError>>;

    /// How many live peers `id` has, and whether `peer` is one of them.
    fn swarm_size(
        &self,
        id: FileId,
        live_since: i64,
        peer: Fingerprint,
    ) -> BoxFuture<'_, Result<SwarmSize, StoreError>>;

    /// Keeps `report` as its reporter's latest report of its peer, replacing an earlier one.
    /// `Ok(true)` if this reporter had not reported this peer before.
    fn record_report<'a>(
        &'a self,
        report: &'a ReportRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every kept report about any of `peers` made at or after `since`, at most one per
    /// (peer, reporter).
    fn reports_about<'a>(
        &'a self,
        peers: &'a [Fingerprint],
        since: i64,
    ) -> BoxFuture<'a, Result<Vec<ReportRow>, StoreError>>;

    /// Deletes reports made before `cutoff`; returns how many.
    fn prune_reports(&self, cutoff: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// The outcome of [`Store::register_file_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Created,
    Existing,
    /// Not stored: the registrant has this many files already.
    OverQuota {
        registered: u64,
    },
}

/// The answer of [`Store::swarm_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmSize {
    pub live_peers: u64,
    pub includes_peer: bool,
}

/// A store's connection pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open, idle or in use.
    pub size: u32,
    pub idle: u32,
    /// The most it opens.
    pub max: u32,
}

mod database;
mod instrumented;
mod postgres;
mod rows;
mod sqlite;

pub use database::{Database, DatabaseUrlError, open};
pub use instrumented::InstrumentedStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
