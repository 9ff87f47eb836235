//! Rows as the queries of every store return them, and their conversion to protocol types.
//! Column types are the same in each database (BIGINT/INTEGER as `i64`, BOOLEAN/0-1 as `bool`,
//! TEXT, BLOB/BYTEA), so one `FromRow` derive serves them all.

use std::str::FromStr;

use sqlx::FromRow;
use torrentguard_protocol::api::{FileSummary, Page, PeerInfo, PeerSummary, ReportKind};
use torrentguard_protocol::{Digest, Entry, EntryKind, FileId, HashAlgo, Manifest};

use super::{ReportRow, StoreError, corrupt};

#[derive(FromRow)]
pub(super) struct ManifestRow {
    name: String,
    size: i64,
    chunk_size: i64,
    hash_algo: String,
    chunks: Vec<u8>,
    file_hash: Vec<u8>,
    /// Set for a tree only.
    pub(super) tree_no: Option<i64>,
    pub(super) entry_count: Option<i64>,
}

impl ManifestRow {
    /// The manifest with `entries` as its list if the row is a tree's (`Manifest::tree` would
    /// derive size and content digest again; the stored ones are what the id was checked on).
    pub(super) fn into_manifest(self, entries: Vec<Entry>) -> Result<Manifest, StoreError> {
        let is_tree = self.tree_no.is_some();
        let mut m = self.into_single()?;
        if is_tree {
            m.files = Some(entries);
        }
        Ok(m)
    }

    fn into_single(self) -> Result<Manifest, StoreError> {
        let bad = |d: &dyn std::fmt::Display| corrupt("files", d.to_string());
        let hash = HashAlgo::from_str(&self.hash_algo).map_err(|e| bad(&e))?;
        let len = hash.digest_len();
        if !self.chunks.len().is_multiple_of(len) {
            return Err(bad(&"chunk digests are not a whole number of digests"));
        }
        let chunks = self
            .chunks
            .chunks_exact(len)
            .map(Digest::from_slice)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        Ok(Manifest::single(
            self.name,
            u64::try_from(self.size).map_err(|e| bad(&e))?,
            u32::try_from(self.chunk_size).map_err(|e| bad(&e))?,
            hash,
            chunks,
            Digest::from_slice(&self.file_hash).map_err(|e| bad(&e))?,
        ))
    }
}

#[derive(FromRow)]
pub(super) struct FileSummaryRow {
    file_id: String,
    name: String,
    size: i64,
    chunk_size: i64,
    chunk_count: i64,
    registered_at: i64,
    seeders: i64,
    leechers: i64,
    file_count: i64,
}

impl TryFrom<FileSummaryRow> for FileSummary {
    type Error = StoreError;
    fn try_from(r: FileSummaryRow) -> Result<Self, StoreError> {
        let bad = |d: String| corrupt("files", d);
        Ok(FileSummary {
            file_id: r.file_id.parse().map_err(|_| bad(r.file_id.clone()))?,
            name: r.name,
            size: u64::try_from(r.size).map_err(|e| bad(e.to_string()))?,
            chunk_size: u32::try_from(r.chunk_size).map_err(|e| bad(e.to_string()))?,
            chunk_count: u32::try_from(r.chunk_count).map_err(|e| bad(e.to_string()))?,
            seeders: u32::try_from(r.seeders).map_err(|e| bad(e.to_string()))?,
            leechers: u32::try_from(r.leechers).map_err(|e| bad(e.to_string()))?,
            registered_at: r.registered_at,
            file_count: u64::try_from(r.file_count).map_err(|e| bad(e.to_string()))?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct EntryRow {
    path: String,
    is_dir: bool,
    size: i64,
    mode: i64,
}

impl TryFrom<EntryRow> for Entry {
    type Error = StoreError;
    fn try_from(r: EntryRow) -> Result<Self, StoreError> {
        let bad = |d: String| corrupt("tree_entries", d);
        Ok(Entry {
            kind: if r.is_dir {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            size: u64::try_from(r.size).map_err(|e| bad(e.to_string()))?,
            mode: u32::try_from(r.mode).map_err(|e| bad(e.to_string()))?,
            path: r.path,
        })
    }
}

#[derive(FromRow)]
pub(super) struct PeerInfoRow {
    fingerprint: String,
    address: String,
    port: i64,
    have: i64,
    complete: bool,
    last_seen: i64,
}

impl TryFrom<PeerInfoRow> for PeerInfo {
    type Error = StoreError;
    fn try_from(r: PeerInfoRow) -> Result<Self, StoreError> {
        let bad = |d: String| corrupt("peers", d);
        Ok(PeerInfo {
            fingerprint: r
                .fingerprint
                .parse()
                .map_err(|_| bad(r.fingerprint.clone()))?,
            address: r.address.parse().map_err(|_| bad(r.address.clone()))?,
            port: u16::try_from(r.port).map_err(|e| bad(e.to_string()))?,
            have: u32::try_from(r.have).map_err(|e| bad(e.to_string()))?,
            complete: r.complete,
            last_seen: r.last_seen,
            reputation: None,
            reach: None,
        })
    }
}

#[derive(FromRow)]
pub(super) struct PeerSummaryRow {
    fingerprint: String,
    address: String,
    port: i64,
    last_seen: i64,
    /// Comma-separated file ids (hex never contains a comma).
    files: String,
}

impl TryFrom<PeerSummaryRow> for PeerSummary {
    type Error = StoreError;
    fn try_from(r: PeerSummaryRow) -> Result<Self, StoreError> {
        let bad = |d: String| corrupt("peers", d);
        let files = r
            .files
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| bad(s.to_string())))
            .collect::<Result<Vec<FileId>, _>>()?;
        Ok(PeerSummary {
            fingerprint: r
                .fingerprint
                .parse()
                .map_err(|_| bad(r.fingerprint.clone()))?,
            address: r.address.parse().map_err(|_| bad(r.address.clone()))?,
            port: u16::try_from(r.port).map_err(|e| bad(e.to_string()))?,
            files,
            last_seen: r.last_seen,
            reputation: None,
            reach: None,
        })
    }
}

pub(super) fn kind_text(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::BadChunk => "bad_chunk",
        ReportKind::Stall => "stall",
    }
}

/// Fingerprints bound per `reports_about` query: far under SQLite's and PostgreSQL's limits on
/// bound parameters, so a listing of 10 000 peers is a few queries.
pub(super) const REPORT_QUERY_BATCH: usize = 500;

#[derive(FromRow)]
pub(super) struct ReportDbRow {
    peer: String,
    reporter: String,
    kind: String,
    reported_at: i64,
}

impl TryFrom<ReportDbRow> for ReportRow {
    type Error = StoreError;
    fn try_from(r: ReportDbRow) -> Result<Self, StoreError> {
        let bad = |d: &str| corrupt("reports", d);
        let kind = match r.kind.as_str() {
            "bad_chunk" => ReportKind::BadChunk,
            "stall" => ReportKind::Stall,
            other => return Err(bad(other)),
        };
        Ok(ReportRow {
            peer: r.peer.parse().map_err(|_| bad(&r.peer))?,
            reporter: r.reporter.parse().map_err(|_| bad(&r.reporter))?,
            kind,
            reported_at: r.reported_at,
        })
    }
}

/// Turns `limit + 1` rows into a page: the extra row only says that another page exists.
pub(super) fn paginate<T>(
    mut items: Vec<T>,
    limit: u32,
    cursor_of: impl Fn(&T) -> String,
) -> Page<T> {
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor_of)
    } else {
        None
    };
    Page { items, next }
}
