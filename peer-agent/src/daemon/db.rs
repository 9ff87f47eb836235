//! The daemon's state in SQLite (`<data-dir>/daemon.db`), through sqlx: every share and
//! download with what the user wanted of it and where it got, and the peers met with how they
//! behaved. Migrated at start; the in-memory [`super::transfers`] table is the live copy and
//! writes through here.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the daemon database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrating the daemon database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the daemon database holds a bad row ({0}); remove it with `torrentguard rm` or delete daemon.db"
    )]
    BadRow(String),
}

/// One row of `transfers`, as stored.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct TransferRow {
    pub kind: String,
    pub file_id: String,
    pub name: String,
    pub size: i64,
    pub path: String,
    pub wanted: String,
    pub state: String,
    pub error: Option<String>,
    pub bytes_done: i64,
    pub uploaded: i64,
    pub tracker_url: String,
    pub tracker_fp: Option<String>,
    pub swarm_token: Option<String>,
    pub options: String,
    pub manifest: Option<String>,
    pub sources: Option<String>,
    pub added_at: i64,
    pub completed_at: Option<i64>,
}

/// One row of `peers`.
#[derive(Debug, Clone, Default, PartialEq, FromRow)]
pub struct PeerRow {
    pub fingerprint: String,
    pub address: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub bytes_received: i64,
    pub chunks_failed: i64,
    pub bans: i64,
    pub last_error: Option<String>,
}

/// What one event adds to a peer's record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerDelta {
    pub address: Option<String>,
    pub bytes_received: i64,
    pub chunks_failed: i64,
    pub bans: i64,
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Opens (creating) `<dir>/daemon.db` and migrates it.
    pub async fn open(dir: &Path) -> Result<Db, DbError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(dir.join("daemon.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    pub async fn from_pool(pool: SqlitePool) -> Result<Db, DbError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool })
    }

    /// Inserts a transfer, or updates it in place (keeping its place in the order).
    pub async fn put(&self, r: &TransferRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO transfers (kind, file_id, name, size, path, wanted, state, error,
               bytes_done, uploaded, tracker_url, tracker_fp, swarm_token, options, manifest, sources,
               added_at, completed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (kind, file_id) DO UPDATE SET
               name = excluded.name, size = excluded.size, path = excluded.path,
               wanted = excluded.wanted, state = excluded.state, error = excluded.error,
               bytes_done = excluded.bytes_done, uploaded = excluded.uploaded,
               tracker_url = excluded.tracker_url, tracker_fp = excluded.tracker_fp,
               swarm_token = excluded.swarm_token, options = excluded.options,
               manifest = excluded.manifest, sources = excluded.sources,
               completed_at = excluded.completed_at",
        )
        .bind(&r.kind)
        .bind(&r.file_id)
        .bind(&r.name)
        .bind(r.size)
        .bind(&r.path)
        .bind(&r.wanted)
        .bind(&r.state)
        .bind(&r.error)
        .bind(r.bytes_done)
        .bind(r.uploaded)
        .bind(&r.tracker_url)
        .bind(&r.tracker_fp)
        .bind(&r.swarm_token)
        .bind(&r.options)
        .bind(&r.manifest)
        .bind(&r.sources)
        .bind(r.added_at)
        .bind(r.completed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove(&self, kind: &str, file_id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM transfers WHERE kind = ? AND file_id = ?")
            .bind(kind)
            .bind(file_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every transfer, oldest first (the order a restart queues them in).
    pub async fn transfers(&self) -> Result<Vec<TransferRow>, DbError> {
        Ok(
            sqlx::query_as::<_, TransferRow>("SELECT * FROM transfers ORDER BY added_at, rowid")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Adds `d` to the record of `fingerprint`, creating it at `now`.
    pub async fn note_peer(
        &self,
        fingerprint: &str,
        d: &PeerDelta,
        now: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO peers (fingerprint, address, first_seen, last_seen, bytes_received,
               chunks_failed, bans, last_error)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (fingerprint) DO UPDATE SET
               address = coalesce(?2, address), last_seen = ?3,
               bytes_received = bytes_received + ?4, chunks_failed = chunks_failed + ?5,
               bans = bans + ?6, last_error = coalesce(?7, last_error)",
        )
        .bind(fingerprint)
        .bind(&d.address)
        .bind(now)
        .bind(d.bytes_received)
        .bind(d.chunks_failed)
        .bind(d.bans)
        .bind(&d.last_error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn peer(&self, fingerprint: &str) -> Result<Option<PeerRow>, DbError> {
        Ok(
            sqlx::query_as::<_, PeerRow>("SELECT * FROM peers WHERE fingerprint = ?")
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, id: char) -> TransferRow {
        TransferRow {
            kind: kind.into(),
            file_id: id.to_string().repeat(64),
            name: "a.bin".into(),
            size: 10,
            path: "/tmp/a.bin".into(),
            wanted: "active".into(),
            state: "seeding".into(),
            error: None,
            bytes_done: 10,
            uploaded: 0,
            tracker_url: "https://127.0.0.1:1".into(),
            tracker_fp: None,
            swarm_token: None,
            options: "{}".into(),
            manifest: None,
            sources: None,
            added_at: 5,
            completed_at: None,
        }
    }

    #[sqlx::test(migrations = false)]
    async fn transfers_round_trip_and_replace(pool: SqlitePool) {
        let db = Db::from_pool(pool).await.unwrap();
        let mut a = row("share", 'a');
        db.put(&a).await.unwrap();
        db.put(&row("download", 'a')).await.unwrap();
        a.state = "paused".into();
        a.wanted = "paused".into();
        db.put(&a).await.unwrap();
        let all = db.transfers().await.unwrap();
        assert_eq!(all.len(), 2, "one share and one download of the same id");
        assert_eq!(all[0], a);
        db.remove("share", &a.file_id).await.unwrap();
        assert_eq!(db.transfers().await.unwrap().len(), 1);
    }

    #[sqlx::test(migrations = false)]
    async fn peers_accumulate(pool: SqlitePool) {
        let db = Db::from_pool(pool).await.unwrap();
        let fp = "sha256:".to_string() + &"b".repeat(64);
        let d = PeerDelta {
            address: Some("127.0.0.1:9".into()),
            bytes_received: 100,
            ..Default::default()
        };
        db.note_peer(&fp, &d, 1).await.unwrap();
        let bad = PeerDelta {
            chunks_failed: 2,
            bans: 1,
            last_error: Some("sent a corrupt chunk".into()),
            ..Default::default()
        };
        db.note_peer(&fp, &bad, 7).await.unwrap();
        let p = db.peer(&fp).await.unwrap().unwrap();
        assert_eq!(
            (
                p.first_seen,
                p.last_seen,
                p.bytes_received,
                p.chunks_failed,
                p.bans
            ),
            (1, 7, 100, 2, 1)
        );
        assert_eq!(
            p.address.as_deref(),
            Some("127.0.0.1:9"),
            "kept when not given"
        );
        assert_eq!(p.last_error.as_deref(), Some("sent a corrupt chunk"));
    }
}
