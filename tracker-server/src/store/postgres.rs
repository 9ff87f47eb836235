//! The PostgreSQL store (migrations in `migrations/postgres/`): what lets several tracker
//! processes serve as one tracker.
//!
//! Every write is safe when replicas run it at the same moment: registering is an
//! `INSERT … ON CONFLICT DO NOTHING` whose row count tells the one replica that created the file
//! (201) from the others (200); announces are upserts; expiry runs in short transactions that
//! cannot deadlock with an announce, and only one replica at a time runs it.

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};
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

/// Connections per tracker process. Several replicas share the server's `max_connections`
/// (100 by default), so this stays well below it.
const MAX_CONNECTIONS: u32 = 16;
/// How long a query waits for a free connection, and start-up for the first one, before the
/// store reports the database unreachable rather than hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Key of the advisory lock that lets one replica at a time expire peers ("TGEXPIRE" in ASCII).
const EXPIRY_LOCK: i64 = 0x5447_4558_5049_5245;
/// Rows per `INSERT` of tree entries: 6 bound values each stays far below PostgreSQL's 65 535.
const ENTRY_ROWS_PER_INSERT: usize = 1000;

/// The PostgreSQL store: a connection pool to one database, shared by any number of trackers.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, with
    /// any of libpq's query parameters such as `sslmode`) and applies the migrations. The
    /// database must exist; the migrations create the tables.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and applies the migrations. Replicas starting together are safe:
    /// sqlx takes an advisory lock around the migrations, so one applies them and the others
    /// find them applied.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }

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

    /// Runs `statement` (binding `cutoff` as `$1`) in its own transaction if no other replica
    /// holds the expiry lock; `None` if one does (its run removes the same rows).
    async fn expire_step(&self, statement: &str, cutoff: i64) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(EXPIRY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            return Ok(None);
        }
        let gone = sqlx::query(statement)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(gone))
    }
}

/// Stores a tree's entries under `tree_no`, in batches.
async fn insert_entries(
    tx: &mut sqlx::PgConnection,
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
        let mut q: QueryBuilder<Postgres> =
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

impl PostgresStore {
    /// Inserts the manifest unless it is known, or `registrant` (when given) has `max_files`
    /// files already; true if this call created it. Across replicas the quota check and the
    /// insert are one statement but not serialised: two registrations by one identity at the
    /// same instant on two replicas may pass the bound by one.
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
        // One transaction: a tree is visible with all of its entries or not at all. A
        // replica inserting the same id at the same moment waits on the unique index until
        // this commits, then inserts nothing: exactly one of them sees a row created.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO files (file_id, name, size, chunk_size, hash_algo, chunk_count,
                                chunks, file_hash, registered_at, file_count, registered_by)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
             WHERE $11::TEXT IS NULL
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

impl Store for PostgresStore {
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
            // Every id is 64 hex digits, so "" sorts before all of them (collation "C").
            let after = after.map(|a| a.to_string()).unwrap_or_default();
            let rows: Vec<FileSummaryRow> = sqlx::query_as(
                "SELECT f.file_id, f.name, f.size, f.chunk_size, f.chunk_count, f.registered_at,
                        f.file_count,
                        (SELECT COUNT(*) FROM peer_files pf
                          WHERE pf.file_id = f.file_id AND pf.last_seen >= $1
                            AND pf.complete) AS seeders,
                        (SELECT COUNT(*) FROM peer_files pf
                          WHERE pf.file_id = f.file_id AND pf.last_seen >= $1
                            AND NOT pf.complete) AS leechers
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
                // Upserts: the same peer announcing to two replicas at once ends as one row
                // with the later values, never as a unique-key error.
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
            // Grouping by the primary key lets the other columns of `peers` be selected.
            let rows: Vec<PeerSummaryRow> = sqlx::query_as(
                "SELECT p.fingerprint, p.address, p.port, p.last_seen,
                        string_agg(pf.file_id, ',' ORDER BY pf.file_id) AS files
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
            // Two transactions, not one: holding the deleted entries' locks while deleting a
            // peer would deadlock with an announce that holds the peer's row and waits for its
            // entry. Each runs under the expiry lock, so replicas do not race each other
            // through the same rows (two bulk DELETEs can deadlock on each other too).
            let Some(gone) = self
                .expire_step("DELETE FROM peer_files WHERE last_seen < $1", cutoff)
                .await?
            else {
                return Ok(0);
            };
            // `last_seen < $1`: a peer announcing right now has a fresh row (PostgreSQL checks
            // the condition again on the row it waited for), so it is never taken with the
            // entry it is adding.
            self.expire_step(
                "DELETE FROM peers WHERE last_seen < $1 AND NOT EXISTS
                    (SELECT 1 FROM peer_files pf WHERE pf.fingerprint = peers.fingerprint)",
                cutoff,
            )
            .await?;
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
            // SUM over BIGINT is NUMERIC in PostgreSQL: cast back (a file's chunk count times
            // its live peers stays far below 2^63).
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT file_id, SUM(have)::BIGINT FROM peer_files
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
            // One upsert; `xmax = 0` holds only for a row this statement inserted, so it says
            // whether this reporter is new for this peer, even with replicas racing.
            let inserted: bool = sqlx::query_scalar(
                "INSERT INTO reports (peer, reporter, file_id, kind, chunk, reported_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (peer, reporter) DO UPDATE
                    SET file_id = excluded.file_id, kind = excluded.kind,
                        chunk = excluded.chunk, reported_at = excluded.reported_at
                 RETURNING (xmax = 0)",
            )
            .bind(r.peer.to_string())
            .bind(r.reporter.to_string())
            .bind(r.file_id.to_string())
            .bind(kind_text(r.kind))
            .bind(r.chunk.map(i64::from))
            .bind(r.now)
            .fetch_one(&self.pool)
            .await?;
            Ok(inserted)
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
                let batch: Vec<String> = batch.iter().map(ToString::to_string).collect();
                let rows: Vec<ReportDbRow> = sqlx::query_as(
                    "SELECT peer, reporter, kind, reported_at FROM reports
                     WHERE reported_at >= $1 AND peer = ANY($2)",
                )
                .bind(since)
                .bind(&batch)
                .fetch_all(&self.pool)
                .await?;
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
    use torrentguard_protocol::{Bitfield, HashAlgo};

    /// A fresh database on the server of `TORRENTGUARD_TEST_POSTGRES` (as the integration tests'
    /// harness): `None`, and a message, without one unless `TORRENTGUARD_REQUIRE_POSTGRES=1`.
    /// Returns the admin URL, the name, and the database's URL.
    async fn fresh_database() -> Option<(String, String, String)> {
        use sqlx::Connection as _;
        use std::hash::{BuildHasher as _, Hasher as _};
        let Some(admin) = std::env::var("TORRENTGUARD_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            let required = std::env::var("TORRENTGUARD_REQUIRE_POSTGRES").as_deref() == Ok("1");
            assert!(
                !required,
                "TORRENTGUARD_REQUIRE_POSTGRES=1 without a server"
            );
            eprintln!("TORRENTGUARD_TEST_POSTGRES is not set: skipping this PostgreSQL test");
            return None;
        };
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let name = format!("tg_unit_{random:016x}");
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let mut url = reqwest::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        Some((admin, name, url.to_string()))
    }

    async fn drop_database(admin: &str, name: &str) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    fn manifest(name: &str, data: &[u8]) -> Manifest {
        Manifest::single(
            name,
            data.len() as u64,
            16 * 1024,
            HashAlgo::Sha256,
            data.chunks(16 * 1024)
                .map(|c| HashAlgo::Sha256.digest(c))
                .collect(),
            HashAlgo::Sha256.digest(data),
        )
    }

    fn announce(n: u16, file: &Manifest, now: i64) -> AnnounceRecord {
        let b = Bitfield::new(file.chunk_count());
        let mut fp = [0u8; 32];
        fp[..2].copy_from_slice(&n.to_be_bytes());
        AnnounceRecord {
            fingerprint: Fingerprint::from_bytes(fp),
            file_id: file.file_id(),
            address: IpAddr::from([10, 0, 0, 1]),
            port: 1000 + n,
            event: AnnounceEvent::Started,
            bitfield: b.as_bytes().to_vec(),
            have: 0,
            complete: false,
            now,
        }
    }

    /// Two replicas (two pools, started together so they race through the migrations too)
    /// registering the same manifests at the same moment: one row each, exactly one `true`.
    #[tokio::test]
    async fn concurrent_registers_on_two_replicas_store_one_row_and_one_creation() {
        let Some((admin, name, url)) = fresh_database().await else {
            return;
        };
        let (a, b) = tokio::join!(PostgresStore::open(&url), PostgresStore::open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        let entries = (0..2500)
            .map(|i| Entry::file(format!("f{i:05}"), 1, 0o644))
            .collect();
        let chunks = (0..2500u32)
            .map(|i| torrentguard_protocol::HashAlgo::Sha256.digest(&i.to_be_bytes()))
            .collect();
        let tree = Manifest::tree("t", 16 * 1024, HashAlgo::Sha256, entries, chunks);
        let mut all: Vec<Manifest> = (0..20u8)
            .map(|i| manifest(&format!("m{i}"), &[i; 20_000]))
            .collect();
        all.push(tree.clone());
        for m in &all {
            let id = m.file_id();
            let (x, y) = tokio::join!(a.register_file(id, m, 1), b.register_file(id, m, 2));
            let created = [x.unwrap(), y.unwrap()];
            assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
        }
        assert_eq!(a.counts(0).await.unwrap().files, all.len() as u64);
        assert_eq!(b.manifest(tree.file_id()).await.unwrap(), Some(tree));
        a.close().await;
        b.close().await;
        drop_database(&admin, &name).await;
    }

    /// Expiry run by two replicas at once, again and again, while both take announces: no
    /// error (no deadlock), the stale peers go, every fresh one stays.
    #[tokio::test]
    async fn expiry_by_every_replica_is_safe_while_peers_announce() {
        let Some((admin, name, url)) = fresh_database().await else {
            return;
        };
        let a = PostgresStore::open(&url).await.unwrap();
        let b = PostgresStore::open(&url).await.unwrap();
        let m = manifest("x", &[1; 50_000]);
        a.register_file(m.file_id(), &m, 0).await.unwrap();
        for n in 0..60 {
            a.announce(&announce(n, &m, 100)).await.unwrap();
        }
        // Peers 0..30 come back (fresh) while both replicas expire everything older than 200.
        let expire = |s: &PostgresStore| {
            let s = s.clone();
            async move {
                for _ in 0..20 {
                    s.expunge(200).await.unwrap();
                }
            }
        };
        let returning = async {
            for n in 0..30 {
                let store = if n % 2 == 0 { &a } else { &b };
                store.announce(&announce(n, &m, 300)).await.unwrap();
            }
        };
        tokio::join!(expire(&a), expire(&b), returning);
        a.expunge(200).await.unwrap();
        let live = b.file_peers(m.file_id(), 0, None, 1000).await.unwrap();
        assert_eq!(live.len(), 30);
        assert!(live.iter().all(|p| p.last_seen == 300));
        assert_eq!(a.list_peers(None, 1000, 0).await.unwrap().items.len(), 30);
        a.close().await;
        b.close().await;
        drop_database(&admin, &name).await;
    }
}
