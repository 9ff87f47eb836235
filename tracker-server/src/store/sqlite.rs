//! The SQLite store: one database file in WAL mode (migrations in `migrations/sqlite/`).

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use torrentguard_protocol::api::{AnnounceEvent, FileSummary, Page, PeerInfo, PeerSummary};
use torrentguard_protocol::{Entry, FileId, Fingerprint, Manifest};

use super::rows::{
    EntryRow, FileSummaryRow, ManifestRow, PeerInfoRow, PeerSummaryRow, REPORT_QUERY_BATCH,
    ReportDbRow, kind_text, paginate,
};
use super::{
    AnnounceRecord, Counts, EntrySlice, ManifestHead, PoolStatus, Registration, ReportRecord,
    ReportRow, Store, StoreError, SwarmSize, corrupt,
};

/// The SQLite store: one database file in WAL mode behind a connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL lets the GET handlers read while an announce writes.
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; a power cut may lose
            // the last announces, which peers repeat anyway within their interval.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool (tests use `#[sqlx::test]`'s) and applies the migrations.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

/// Rows per `INSERT` of tree entries: 6 bound values each stays far below SQLite's 32 766.
const ENTRY_ROWS_PER_INSERT: usize = 1000;

/// Stores a tree's entries under `tree_no`, in batches.
async fn insert_entries(
    tx: &mut sqlx::SqliteConnection,
    tree_no: i64,
    entries: &[Entry],
) -> Result<(), StoreError> {
    // Validated entries have sizes ≤ 16 TiB; checked here so the casts below cannot wrap.
    if let Some(e) = entries.iter().find(|e| i64::try_from(e.size).is_err()) {
        return Err(corrupt(
            "tree_entries",
            format!("size {} of {:?}", e.size, e.path),
        ));
    }
    for (batch, rows) in entries.chunks(ENTRY_ROWS_PER_INSERT).enumerate() {
        let first = batch * ENTRY_ROWS_PER_INSERT;
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO tree_entries (tree_no, idx, path, is_dir, size, mode) ");
        q.push_values(rows.iter().enumerate(), |mut b, (i, e)| {
            b.push_bind(tree_no)
                .push_bind((first + i) as i64)
                .push_bind(e.path.as_str())
                .push_bind(e.is_dir())
                .push_bind(e.size as i64)
                .push_bind(i64::from(e.mode));
        });
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

impl SqliteStore {
    /// Up to `limit` entries of tree `tree_no` from index `start` on, in order.
    async fn entry_rows(
        &self,
        tree_no: i64,
        start: u32,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT path, is_dir, size, mode FROM tree_entries
             WHERE tree_no = $1 AND idx >= $2
             ORDER BY idx
             LIMIT $3",
        )
        .bind(tree_no)
        .bind(i64::from(start))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Entry::try_from).collect()
    }
}

impl SqliteStore {
    /// Stores a manifest unless its id is known, or `registrant` has `max_files` files already;
    /// `Ok(true)` if it was stored. The bound is checked inside the insert itself, so
    /// concurrent registrations cannot overshoot it.
    async fn insert_manifest(
        &self,
        id: FileId,
        manifest: &Manifest,
        now: i64,
        registrant: Option<String>,
        max_files: i64,
    ) -> Result<bool, StoreError> {
        let mut chunks = Vec::with_capacity(manifest.chunks.len() * manifest.hash.digest_len());
        for c in &manifest.chunks {
            chunks.extend_from_slice(c.as_bytes());
        }
        // Sizes were validated (size ≤ 16 TiB, chunk size ≤ 16 MiB), so they fit an i64.
        let size = i64::try_from(manifest.size).map_err(|e| corrupt("files", e))?;
        let file_count = i64::try_from(manifest.file_count()).map_err(|e| corrupt("files", e))?;
        // One transaction: a tree is visible with all of its entries or not at all.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO files (file_id, name, size, chunk_size, hash_algo, chunk_count,
                                chunks, file_hash, registered_at, file_count, registered_by)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
             WHERE $11 IS NULL
                OR (SELECT COUNT(*) FROM files WHERE registered_by = $11) < $12
             ON CONFLICT (file_id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(&manifest.name)
        .bind(size)
        .bind(i64::from(manifest.chunk_size))
        .bind(manifest.hash.as_str())
        .bind(i64::from(manifest.chunk_count()))
        .bind(chunks)
        .bind(manifest.file_hash.as_bytes())
        .bind(now)
        .bind(file_count)
        .bind(registrant)
        .bind(max_files)
        .execute(&mut *tx)
        .await?;
        let created = done.rows_affected() == 1;
        if let (true, Some(entries)) = (created, &manifest.files) {
            let tree_no: i64 = sqlx::query_scalar(
                "INSERT INTO trees (file_id, entry_count) VALUES ($1, $2) RETURNING tree_no",
            )
            .bind(id.to_string())
            .bind(entries.len() as i64)
            .fetch_one(&mut *tx)
            .await?;
            insert_entries(&mut tx, tree_no, entries).await?;
        }
        tx.commit().await?;
        Ok(created)
    }
}

impl Store for SqliteStore {
    fn register_file<'a>(
        &'a self,
        id: FileId,
        manifest: &'a Manifest,
        now: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.insert_manifest(id, manifest, now, None, i64::MAX))
    }

    fn manifest_head(
        &self,
        id: FileId,
        max_entries: u32,
    ) -> BoxFuture<'_, Result<Option<ManifestHead>, StoreError>> {
        Box::pin(async move {
            let row: Option<ManifestRow> = sqlx::query_as(
                "SELECT f.name, f.size, f.chunk_size, f.hash_algo, f.chunks, f.file_hash,
                        t.tree_no, t.entry_count
                 FROM files f LEFT JOIN trees t ON t.file_id = f.file_id
                 WHERE f.file_id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let entry_count = row
                .entry_count
                .map_or(Ok(0), u32::try_from)
                .map_err(|e| corrupt("trees", e))?;
            let entries = match row.tree_no {
                Some(tree_no) => self.entry_rows(tree_no, 0, max_entries).await?,
                None => Vec::new(),
            };
            Ok(Some(ManifestHead {
                manifest: row.into_manifest(entries)?,
                entry_count,
            }))
        })
    }

    fn entries(
        &self,
        id: FileId,
        start: u32,
        limit: u32,
    ) -> BoxFuture<'_, Result<Option<EntrySlice>, StoreError>> {
        Box::pin(async move {
            let tree: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT t.tree_no, t.entry_count
                 FROM files f LEFT JOIN trees t ON t.file_id = f.file_id
                 WHERE f.file_id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            let Some(tree) = tree else {
                return Ok(None);
            };
            let (items, entry_count) = match tree {
                (Some(tree_no), Some(count)) => (
                    self.entry_rows(tree_no, start, limit).await?,
                    u32::try_from(count).map_err(|e| corrupt("trees", e))?,
                ),
                _ => (Vec::new(), 0),
            };
            Ok(Some(EntrySlice { items, entry_count }))
        })
    }

    fn chunk_count(&self, id: FileId) -> BoxFuture<'_, Result<Option<u32>, StoreError>> {
        Box::pin(async move {
            let count: Option<i64> =
                sqlx::query_scalar("SELECT chunk_count FROM files WHERE file_id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
            count
                .map(|c| u32::try_from(c).map_err(|e| corrupt("files", e)))
                .transpose()
        })
    }

    fn list_files(
        &self,
        after: Option<FileId>,
        limit: u32,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Page<FileSummary>, StoreError>> {
        Box::pin(async move {
            // Every id is 64 hex digits, so "" sorts before all of them.
            let after = after.map(|a| a.to_string()).unwrap_or_default();
            let rows: Vec<FileSummaryRow> = sqlx::query_as(
                "SELECT f.file_id, f.name, f.size, f.chunk_size, f.chunk_count, f.registered_at,
                        f.file_count,
                        (SELECT COUNT(*) FROM peer_files pf
                          WHERE pf.file_id = f.file_id AND pf.last_seen >= $1
                            AND pf.complete = 1) AS seeders,
                        (SELECT COUNT(*) FROM peer_files pf
                          WHERE pf.file_id = f.file_id AND pf.last_seen >= $1
                            AND pf.complete = 0) AS leechers
                 FROM files f
                 WHERE f.file_id > $2
                 ORDER BY f.file_id
                 LIMIT $3",
            )
            .bind(live_since)
            .bind(after)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
            let items = rows
                .into_iter()
                .map(FileSummary::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(items, limit, |f| f.file_id.to_string()))
        })
    }

    fn announce<'a>(&'a self, r: &'a AnnounceRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let fingerprint = r.fingerprint.to_string();
            let file_id = r.file_id.to_string();
            let mut tx = self.pool.begin().await?;
            if r.event == AnnounceEvent::Stopped {
                sqlx::query("DELETE FROM peer_files WHERE fingerprint = $1 AND file_id = $2")
                    .bind(&fingerprint)
                    .bind(&file_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "DELETE FROM peers WHERE fingerprint = $1
                       AND NOT EXISTS (SELECT 1 FROM peer_files WHERE fingerprint = $1)",
                )
                .bind(&fingerprint)
                .execute(&mut *tx)
                .await?;
            } else {
                // The first statement writes, so SQLite takes the write lock at once (waiting
                // under busy_timeout) instead of failing a read-to-write upgrade later.
                sqlx::query(
                    "INSERT INTO peers (fingerprint, address, port, last_seen)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (fingerprint) DO UPDATE
                        SET address = excluded.address, port = excluded.port,
                            last_seen = excluded.last_seen",
                )
                .bind(&fingerprint)
                .bind(r.address.to_string())
                .bind(i64::from(r.port))
                .bind(r.now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO peer_files (fingerprint, file_id, bitfield, have, complete,
                                             last_seen)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (fingerprint, file_id) DO UPDATE
                        SET bitfield = excluded.bitfield, have = excluded.have,
                            complete = excluded.complete, last_seen = excluded.last_seen",
                )
                .bind(&fingerprint)
                .bind(&file_id)
                .bind(&r.bitfield)
                .bind(i64::from(r.have))
                .bind(r.complete)
                .bind(r.now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn file_peers(
        &self,
        id: FileId,
        live_since: i64,
        exclude: Option<Fingerprint>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PeerInfo>, StoreError>> {
        Box::pin(async move {
            // Fingerprints all start with "sha256:", so "" excludes nobody.
            let exclude = exclude.map(|f| f.to_string()).unwrap_or_default();
            let rows: Vec<PeerInfoRow> = sqlx::query_as(
                "SELECT p.fingerprint, p.address, p.port, pf.have, pf.complete, pf.last_seen
                 FROM peer_files pf JOIN peers p ON p.fingerprint = pf.fingerprint
                 WHERE pf.file_id = $1 AND pf.last_seen >= $2 AND pf.fingerprint <> $3
                 ORDER BY p.fingerprint
                 LIMIT $4",
            )
            .bind(id.to_string())
            .bind(live_since)
            .bind(exclude)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(PeerInfo::try_from).collect()
        })
    }

    fn list_peers(
        &self,
        after: Option<Fingerprint>,
        limit: u32,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Page<PeerSummary>, StoreError>> {
        Box::pin(async move {
            let after = after.map(|a| a.to_string()).unwrap_or_default();
            let rows: Vec<PeerSummaryRow> = sqlx::query_as(
                "SELECT p.fingerprint, p.address, p.port, p.last_seen,
                        group_concat(pf.file_id, ',') AS files
                 FROM peers p JOIN peer_files pf ON pf.fingerprint = p.fingerprint
                 WHERE pf.last_seen >= $1 AND p.fingerprint > $2
                 GROUP BY p.fingerprint
                 ORDER BY p.fingerprint
                 LIMIT $3",
            )
            .bind(live_since)
            .bind(after)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
            let items = rows
                .into_iter()
                .map(PeerSummary::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(items, limit, |p| p.fingerprint.to_string()))
        })
    }

    fn expunge(&self, cutoff: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let gone = sqlx::query("DELETE FROM peer_files WHERE last_seen < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "DELETE FROM peers WHERE NOT EXISTS
                    (SELECT 1 FROM peer_files pf WHERE pf.fingerprint = peers.fingerprint)",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(gone)
        })
    }

    fn counts(&self, live_since: i64) -> BoxFuture<'_, Result<Counts, StoreError>> {
        Box::pin(async move {
            let (files, live_peers): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM files),
                        (SELECT COUNT(DISTINCT fingerprint) FROM peer_files
                          WHERE last_seen >= $1)",
            )
            .bind(live_since)
            .fetch_one(&self.pool)
            .await?;
            Ok(Counts {
                files: u64::try_from(files).unwrap_or(0),
                live_peers: u64::try_from(live_peers).unwrap_or(0),
            })
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }

    fn chunks_held(
        &self,
        first: FileId,
        last: FileId,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Vec<(FileId, u64)>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT file_id, SUM(have) FROM peer_files
                 WHERE file_id >= $1 AND file_id <= $2 AND last_seen >= $3
                 GROUP BY file_id",
            )
            .bind(first.to_string())
            .bind(last.to_string())
            .bind(live_since)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|(id, held)| {
                    let file_id = id.parse().map_err(|_| corrupt("peer_files", &id))?;
                    Ok((file_id, u64::try_from(held).unwrap_or(0)))
                })
                .collect()
        })
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        Some(PoolStatus {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        })
    }

    fn register_file_by<'a>(
        &'a self,
        id: FileId,
        manifest: &'a Manifest,
        now: i64,
        registrant: Fingerprint,
        max_files: u64,
    ) -> BoxFuture<'a, Result<Registration, StoreError>> {
        Box::pin(async move {
            let registrant = registrant.to_string();
            let max = i64::try_from(max_files).unwrap_or(i64::MAX);
            if self
                .insert_manifest(id, manifest, now, Some(registrant.clone()), max)
                .await?
            {
                return Ok(Registration::Created);
            }
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM files WHERE file_id = $1)")
                    .bind(id.to_string())
                    .fetch_one(&self.pool)
                    .await?;
            if known {
                return Ok(Registration::Existing);
            }
            let registered: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM files WHERE registered_by = $1")
                    .bind(&registrant)
                    .fetch_one(&self.pool)
                    .await?;
            Ok(Registration::OverQuota {
                registered: u64::try_from(registered).map_err(|e| corrupt("files", e))?,
            })
        })
    }

    fn swarm_size(
        &self,
        id: FileId,
        live_since: i64,
        peer: Fingerprint,
    ) -> BoxFuture<'_, Result<SwarmSize, StoreError>> {
        Box::pin(async move {
            let (live, mine): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*),
                        COALESCE(SUM(CASE WHEN fingerprint = $3 THEN 1 ELSE 0 END), 0)
                 FROM peer_files WHERE file_id = $1 AND last_seen >= $2",
            )
            .bind(id.to_string())
            .bind(live_since)
            .bind(peer.to_string())
            .fetch_one(&self.pool)
            .await?;
            Ok(SwarmSize {
                live_peers: u64::try_from(live).map_err(|e| corrupt("peer_files", e))?,
                includes_peer: mine > 0,
            })
        })
    }

    fn record_report<'a>(&'a self, r: &'a ReportRecord) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let (peer, reporter) = (r.peer.to_string(), r.reporter.to_string());
            let (file_id, kind) = (r.file_id.to_string(), kind_text(r.kind));
            let chunk = r.chunk.map(i64::from);
            let mut tx = self.pool.begin().await?;
            // Update first (taking SQLite's write lock at once), insert only if there was no
            // row: the answer says whether this reporter is new for this peer.
            let replaced = sqlx::query(
                "UPDATE reports SET file_id = $3, kind = $4, chunk = $5, reported_at = $6
                 WHERE peer = $1 AND reporter = $2",
            )
            .bind(&peer)
            .bind(&reporter)
            .bind(&file_id)
            .bind(kind)
            .bind(chunk)
            .bind(r.now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if replaced == 0 {
                sqlx::query(
                    "INSERT INTO reports (peer, reporter, file_id, kind, chunk, reported_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (peer, reporter) DO UPDATE
                        SET file_id = excluded.file_id, kind = excluded.kind,
                            chunk = excluded.chunk, reported_at = excluded.reported_at",
                )
                .bind(&peer)
                .bind(&reporter)
                .bind(&file_id)
                .bind(kind)
                .bind(chunk)
                .bind(r.now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(replaced == 0)
        })
    }

    fn reports_about<'a>(
        &'a self,
        peers: &'a [Fingerprint],
        since: i64,
    ) -> BoxFuture<'a, Result<Vec<ReportRow>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for batch in peers.chunks(REPORT_QUERY_BATCH) {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "SELECT peer, reporter, kind, reported_at FROM reports WHERE reported_at >= ",
                );
                q.push_bind(since).push(" AND peer IN (");
                let mut list = q.separated(", ");
                for p in batch {
                    list.push_bind(p.to_string());
                }
                q.push(")");
                let rows: Vec<ReportDbRow> = q.build_query_as().fetch_all(&self.pool).await?;
                for row in rows {
                    out.push(ReportRow::try_from(row)?);
                }
            }
            Ok(out)
        })
    }

    fn prune_reports(&self, cutoff: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query("DELETE FROM reports WHERE reported_at < $1")
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use torrentguard_protocol::api::ReportKind;
    use torrentguard_protocol::{Bitfield, HashAlgo};

    fn manifest(name: &str, data: &[u8]) -> Manifest {
        let chunk_size = 16 * 1024;
        Manifest::single(
            name,
            data.len() as u64,
            chunk_size,
            HashAlgo::Sha256,
            data.chunks(chunk_size as usize)
                .map(|c| HashAlgo::Sha256.digest(c))
                .collect(),
            HashAlgo::Sha256.digest(data),
        )
    }

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn record(n: u8, file: &Manifest, event: AnnounceEvent, held: u32, now: i64) -> AnnounceRecord {
        let mut b = Bitfield::new(file.chunk_count());
        for i in 0..held {
            b.set(i);
        }
        AnnounceRecord {
            fingerprint: fp(n),
            file_id: file.file_id(),
            address: IpAddr::from([10, 0, 0, n]),
            port: 7000 + u16::from(n),
            event,
            have: b.count(),
            complete: b.is_complete(),
            bitfield: b.as_bytes().to_vec(),
            now,
        }
    }

    #[sqlx::test(migrations = false)]
    async fn chunks_held_sums_live_peers_of_the_files_in_range(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let (a, b) = (manifest("a", &[1u8; 40_000]), manifest("b", &[2u8; 40_000]));
        for m in [&a, &b] {
            store.register_file(m.file_id(), m, 1).await.unwrap();
        }
        store
            .announce(&record(1, &a, AnnounceEvent::Completed, 3, 100))
            .await
            .unwrap();
        store
            .announce(&record(2, &a, AnnounceEvent::Started, 1, 100))
            .await
            .unwrap();
        // Stale: announced before live_since, so not counted.
        store
            .announce(&record(3, &a, AnnounceEvent::Started, 2, 10))
            .await
            .unwrap();
        store
            .announce(&record(1, &b, AnnounceEvent::Started, 2, 100))
            .await
            .unwrap();
        let (lo, hi) = if a.file_id() < b.file_id() {
            (a.file_id(), b.file_id())
        } else {
            (b.file_id(), a.file_id())
        };
        let mut all = store.chunks_held(lo, hi, 50).await.unwrap();
        all.sort();
        let mut want = vec![(a.file_id(), 4), (b.file_id(), 2)];
        want.sort();
        assert_eq!(all, want);
        let only_a = store
            .chunks_held(a.file_id(), a.file_id(), 50)
            .await
            .unwrap();
        assert_eq!(only_a, vec![(a.file_id(), 4)]);
        let status = store.pool_status().unwrap();
        assert!(status.max >= 1 && status.idle <= status.size, "{status:?}");
    }

    #[sqlx::test(migrations = false)]
    async fn manifests_round_trip_and_register_is_idempotent(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let m = manifest("a.bin", &vec![3u8; 40_000]);
        let id = m.file_id();
        assert!(store.register_file(id, &m, 100).await.unwrap());
        assert!(!store.register_file(id, &m, 200).await.unwrap());
        assert_eq!(store.manifest(id).await.unwrap(), Some(m.clone()));
        assert_eq!(store.chunk_count(id).await.unwrap(), Some(3));
        let unknown = manifest("b.bin", b"x").file_id();
        assert_eq!(store.manifest(unknown).await.unwrap(), None);
        assert_eq!(store.chunk_count(unknown).await.unwrap(), None);

        let mut sha1 = manifest("c", b"");
        sha1.hash = HashAlgo::Sha1;
        sha1.file_hash = HashAlgo::Sha1.digest(b"");
        assert!(store.register_file(sha1.file_id(), &sha1, 1).await.unwrap());
        assert_eq!(store.manifest(sha1.file_id()).await.unwrap(), Some(sha1));
        store.ping().await.unwrap();
    }

    #[sqlx::test(migrations = false)]
    async fn registrations_count_against_their_registrant(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let files: Vec<Manifest> = (0..4u8).map(|n| manifest("f", &[n; 10])).collect();
        let by = |i: usize, who: u8| {
            store.register_file_by(files[i].file_id(), &files[i], 1, fp(who), 2)
        };
        assert_eq!(by(0, 1).await.unwrap(), Registration::Created);
        assert_eq!(by(1, 1).await.unwrap(), Registration::Created);
        assert_eq!(
            by(2, 1).await.unwrap(),
            Registration::OverQuota { registered: 2 }
        );
        assert_eq!(store.chunk_count(files[2].file_id()).await.unwrap(), None);
        // A known file is known, whoever asks and whatever their count.
        assert_eq!(by(0, 1).await.unwrap(), Registration::Existing);
        assert_eq!(by(0, 2).await.unwrap(), Registration::Existing);
        assert_eq!(by(2, 2).await.unwrap(), Registration::Created);
        // Files registered without a registrant count against nobody.
        assert!(
            store
                .register_file(files[3].file_id(), &files[3], 1)
                .await
                .unwrap()
        );
        assert_eq!(by(3, 2).await.unwrap(), Registration::Existing);
    }

    #[sqlx::test(migrations = false)]
    async fn swarm_sizes_count_live_peers(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let m = manifest("s", &[1; 10]);
        store.register_file(m.file_id(), &m, 1).await.unwrap();
        let size = store.swarm_size(m.file_id(), 0, fp(1)).await.unwrap();
        assert_eq!(
            size,
            SwarmSize {
                live_peers: 0,
                includes_peer: false
            }
        );
        store
            .announce(&record(1, &m, AnnounceEvent::Started, 0, 100))
            .await
            .unwrap();
        store
            .announce(&record(2, &m, AnnounceEvent::Started, 0, 50))
            .await
            .unwrap();
        let size = store.swarm_size(m.file_id(), 0, fp(1)).await.unwrap();
        assert_eq!(
            size,
            SwarmSize {
                live_peers: 2,
                includes_peer: true
            }
        );
        // Peer 2 is past the TTL: not counted, though still in the table.
        let size = store.swarm_size(m.file_id(), 60, fp(2)).await.unwrap();
        assert_eq!(
            size,
            SwarmSize {
                live_peers: 1,
                includes_peer: false
            }
        );
    }

    /// A tree of `dirs` directories with `per_dir` one-byte files each.
    fn tree(dirs: usize, per_dir: usize) -> Manifest {
        let mut entries = Vec::new();
        for d in 0..dirs {
            entries.push(Entry::dir(format!("d{d:04}"), 0o755));
            for f in 0..per_dir {
                entries.push(Entry::file(format!("d{d:04}/f{f:04}"), 1, 0o600));
            }
        }
        let chunks = (0..dirs * per_dir)
            .map(|i| HashAlgo::Sha256.digest(&i.to_be_bytes()))
            .collect();
        Manifest::tree("t", 16 * 1024, HashAlgo::Sha256, entries, chunks)
    }

    #[sqlx::test(migrations = false)]
    async fn trees_round_trip_whole_and_in_slices(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let m = tree(3, 1500); // 4503 entries: several insert batches
        m.validate().unwrap();
        let id = m.file_id();
        assert!(store.register_file(id, &m, 1).await.unwrap());
        assert!(!store.register_file(id, &m, 2).await.unwrap());
        let back = store.manifest(id).await.unwrap().unwrap();
        assert_eq!(back, m);
        back.verify(&id).unwrap();

        let head = store.manifest_head(id, 10).await.unwrap().unwrap();
        assert_eq!(head.entry_count, 4503);
        assert_eq!(head.manifest.entries(), &m.entries()[..10]);
        assert_eq!(
            (head.manifest.size, head.manifest.chunks.len()),
            (4500, 4500)
        );
        let slice = store.entries(id, 4500, 100).await.unwrap().unwrap();
        assert_eq!(slice.items, &m.entries()[4500..]);
        assert_eq!(slice.entry_count, 4503);

        let files = store.list_files(None, 10, 0).await.unwrap();
        assert_eq!(files.items[0].file_count, 4500);
        let single = manifest("s", b"x");
        store
            .register_file(single.file_id(), &single, 3)
            .await
            .unwrap();
        let s = store
            .entries(single.file_id(), 0, 10)
            .await
            .unwrap()
            .unwrap();
        assert!(s.items.is_empty() && s.entry_count == 0);
        let head = store.manifest_head(single.file_id(), 10).await.unwrap();
        assert_eq!(head.map(|h| h.manifest), Some(single.clone()));
        let unknown = manifest("u", b"u").file_id();
        assert!(store.entries(unknown, 0, 10).await.unwrap().is_none());
        let counts: Vec<u64> = store
            .list_files(None, 10, 0)
            .await
            .unwrap()
            .items
            .iter()
            .map(|f| f.file_count)
            .collect();
        assert!(counts.contains(&1) && counts.contains(&4500), "{counts:?}");
    }

    /// A database written before trees existed opens with its files intact: single files,
    /// counted as one file each.
    #[sqlx::test(migrations = false)]
    async fn a_database_from_before_trees_upgrades_in_place(pool: SqlitePool) {
        let old = tempfile::tempdir().unwrap();
        let first = "20250101000000_initial.sql";
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations/sqlite")
            .join(first);
        std::fs::copy(src, old.path().join(first)).unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let m = manifest("old.bin", &[9u8; 20_000]);
        let chunks: Vec<u8> = m
            .chunks
            .iter()
            .flat_map(|c| c.as_bytes().to_vec())
            .collect();
        sqlx::query(
            "INSERT INTO files (file_id, name, size, chunk_size, hash_algo, chunk_count, chunks,
                                file_hash, registered_at)
             VALUES ($1, 'old.bin', 20000, 16384, 'sha256', 2, $2, $3, 7)",
        )
        .bind(m.file_id().to_string())
        .bind(chunks)
        .bind(m.file_hash.as_bytes())
        .execute(&pool)
        .await
        .unwrap();

        let store = SqliteStore::from_pool(pool).await.unwrap();
        assert_eq!(store.manifest(m.file_id()).await.unwrap(), Some(m));
        let listed = store.list_files(None, 10, 0).await.unwrap();
        assert_eq!(listed.items[0].file_count, 1);
        let t = tree(1, 3);
        assert!(store.register_file(t.file_id(), &t, 8).await.unwrap());
        assert_eq!(store.manifest(t.file_id()).await.unwrap(), Some(t));
    }

    /// An empty directory share is a tree too: it keeps its own id, not a single file's.
    #[sqlx::test(migrations = false)]
    async fn an_empty_tree_stays_a_tree(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let m = Manifest::tree("empty", 16 * 1024, HashAlgo::Sha256, vec![], vec![]);
        store.register_file(m.file_id(), &m, 1).await.unwrap();
        let back = store.manifest(m.file_id()).await.unwrap().unwrap();
        assert!(back.is_tree());
        back.verify(&m.file_id()).unwrap();
        assert_eq!(
            store.list_files(None, 1, 0).await.unwrap().items[0].file_count,
            0
        );
    }

    #[sqlx::test(migrations = false)]
    async fn file_pages_follow_the_cursor(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..5u8 {
            let m = manifest(&format!("f{i}"), &[i]);
            store.register_file(m.file_id(), &m, 10).await.unwrap();
            ids.push(m.file_id());
        }
        ids.sort();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_files(after, 2, 0).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|f| f.file_id));
            match page.next {
                Some(c) => after = Some(c.parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, ids);
    }

    #[sqlx::test(migrations = false)]
    async fn announces_peers_counts_and_expiry(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let m = manifest("data", &vec![1u8; 50_000]); // 4 chunks
        let id = m.file_id();
        store.register_file(id, &m, 0).await.unwrap();

        store
            .announce(&record(1, &m, AnnounceEvent::Completed, 4, 100))
            .await
            .unwrap();
        store
            .announce(&record(2, &m, AnnounceEvent::Started, 1, 105))
            .await
            .unwrap();

        let all = store.file_peers(id, 0, None, 100).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].fingerprint, fp(1));
        assert!(all[0].complete && all[0].have == 4);
        assert_eq!(all[1].address, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(
            (all[1].port, all[1].have, all[1].complete),
            (7002, 1, false)
        );
        let others = store.file_peers(id, 0, Some(fp(1)), 100).await.unwrap();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].fingerprint, fp(2));
        assert_eq!(store.file_peers(id, 0, None, 1).await.unwrap().len(), 1);

        let files = store.list_files(None, 10, 0).await.unwrap();
        assert_eq!((files.items[0].seeders, files.items[0].leechers), (1, 1));
        // Peer 1 (last seen 100) is not live since 101, even before expiry runs.
        let files = store.list_files(None, 10, 101).await.unwrap();
        assert_eq!((files.items[0].seeders, files.items[0].leechers), (0, 1));
        assert_eq!(
            store.counts(0).await.unwrap(),
            Counts {
                files: 1,
                live_peers: 2
            }
        );

        let peers = store.list_peers(None, 1, 0).await.unwrap();
        assert_eq!(peers.items.len(), 1);
        assert_eq!(peers.items[0].files, vec![id]);
        let rest = store
            .list_peers(Some(peers.next.unwrap().parse().unwrap()), 1, 0)
            .await
            .unwrap();
        assert_eq!(rest.items[0].fingerprint, fp(2));
        assert!(rest.next.is_none());

        assert_eq!(store.expunge(101).await.unwrap(), 1);
        assert_eq!(store.counts(0).await.unwrap().live_peers, 1);
        assert_eq!(store.list_peers(None, 10, 0).await.unwrap().items.len(), 1);

        store
            .announce(&record(2, &m, AnnounceEvent::Stopped, 0, 106))
            .await
            .unwrap();
        assert!(store.file_peers(id, 0, None, 100).await.unwrap().is_empty());
        assert!(
            store
                .list_peers(None, 10, 0)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(store.expunge(1000).await.unwrap(), 0);
        store.close().await;
        assert!(store.ping().await.is_err());
    }

    #[tokio::test]
    async fn file_database_is_created_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let m = manifest("x", b"hello");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store.register_file(m.file_id(), &m, 1).await.unwrap();
            store.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.manifest(m.file_id()).await.unwrap(), Some(m));
        store.close().await;
    }

    #[sqlx::test(migrations = false)]
    async fn reports_keep_each_reporter_s_latest_and_prune(pool: SqlitePool) {
        let store = SqliteStore::from_pool(pool).await.unwrap();
        let m = manifest("r", b"reported");
        let report = |reporter: u8, peer: u8, kind, now| ReportRecord {
            reporter: fp(reporter),
            peer: fp(peer),
            file_id: m.file_id(),
            kind,
            chunk: Some(0),
            now,
        };
        assert!(
            store
                .record_report(&report(1, 9, ReportKind::BadChunk, 10))
                .await
                .unwrap()
        );
        // The same reporter again: replaced, not added.
        assert!(
            !store
                .record_report(&report(1, 9, ReportKind::Stall, 20))
                .await
                .unwrap()
        );
        assert!(
            store
                .record_report(&report(2, 9, ReportKind::BadChunk, 30))
                .await
                .unwrap()
        );
        assert!(
            store
                .record_report(&report(2, 8, ReportKind::BadChunk, 5))
                .await
                .unwrap()
        );
        let mut rows = store.reports_about(&[fp(9)], 0).await.unwrap();
        rows.sort_by_key(|r| r.reported_at);
        let want = [
            (fp(1), ReportKind::Stall, 20),
            (fp(2), ReportKind::BadChunk, 30),
        ];
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.reporter, r.kind, r.reported_at))
            .collect();
        assert_eq!(got, want);
        assert!(rows.iter().all(|r| r.peer == fp(9)));
        assert_eq!(store.reports_about(&[fp(9)], 25).await.unwrap().len(), 1);
        assert_eq!(
            store.reports_about(&[fp(8), fp(9)], 0).await.unwrap().len(),
            3
        );
        assert!(store.reports_about(&[], 0).await.unwrap().is_empty());
        // More peers than one batch binds, the reported ones in different batches.
        let mut many: Vec<_> = (0..1200u16)
            .map(|i| {
                let mut b = [0xAA; 32];
                b[..2].copy_from_slice(&i.to_be_bytes());
                Fingerprint::from_bytes(b)
            })
            .collect();
        many[10] = fp(8);
        many[1100] = fp(9);
        assert_eq!(store.reports_about(&many, 0).await.unwrap().len(), 3);
        assert_eq!(store.prune_reports(21).await.unwrap(), 2);
        assert_eq!(
            store.reports_about(&[fp(8), fp(9)], 0).await.unwrap().len(),
            1
        );
    }
}
