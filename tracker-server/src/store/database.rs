//! Which database a tracker uses (`--database`), and opening the [`Store`] for it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::{PostgresStore, SqliteStore, Store, StoreError};

/// How long start-up waits for the first PostgreSQL connection before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the tracker keeps manifests and peers, parsed from `sqlite://PATH` or
/// `postgres://…` (also `postgresql://…`). Printing it never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, checked to parse as one.
    Postgres(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("{0:?} is not a database URL: use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE")]
    UnknownScheme(String),
    #[error("sqlite:// needs a file path, e.g. sqlite:///var/lib/torrentguard/tracker.db")]
    EmptySqlitePath,
    #[error("invalid PostgreSQL URL {url}: {source}")]
    Postgres {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

impl FromStr for Database {
    type Err = DatabaseUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(DatabaseUrlError::EmptySqlitePath);
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return match PgConnectOptions::from_str(s) {
                Ok(_) => Ok(Database::Postgres(s.to_string())),
                Err(source) => Err(DatabaseUrlError::Postgres {
                    url: redact(s),
                    source,
                }),
            };
        }
        Err(DatabaseUrlError::UnknownScheme(redact(s)))
    }
}

/// `url` with the password of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user.len() < user_info.len() {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Database::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({self})")
    }
}

/// Opens (and migrates) the store `database` names.
pub async fn open(database: &Database) -> Result<Arc<dyn Store>, StoreError> {
    match database {
        Database::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        Database::Postgres(url) => {
            let unreachable = |detail: String| StoreError::Unreachable {
                database: redact(url),
                detail,
            };
            // One plain connection first: a pool would retry until its timeout and report only
            // that it timed out, where this says "connection refused" or "password
            // authentication failed".
            let options = PgConnectOptions::from_str(url)?;
            let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                .await
                .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| unreachable(e.to_string()))?;
            probe.close().await?;
            Ok(Arc::new(PostgresStore::open(url).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_their_database() {
        assert_eq!(
            "sqlite:///var/lib/tg/t.db".parse::<Database>().unwrap(),
            Database::Sqlite(PathBuf::from("/var/lib/tg/t.db"))
        );
        assert_eq!(
            "sqlite://rel/t.db".parse::<Database>().unwrap(),
            Database::Sqlite(PathBuf::from("rel/t.db"))
        );
        for url in [
            "postgres://tg@127.0.0.1:5432/tg",
            "postgresql://tg:pw@db/tg?sslmode=require",
        ] {
            assert_eq!(
                url.parse::<Database>().unwrap(),
                Database::Postgres(url.into())
            );
        }
    }

    #[test]
    fn unknown_schemes_and_empty_paths_are_refused_with_the_forms_that_work() {
        let e = "mysql://root:hunter2@db/tg"
            .parse::<Database>()
            .unwrap_err();
        assert!(matches!(e, DatabaseUrlError::UnknownScheme(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("sqlite://PATH") && text.contains("postgres://"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!("/var/lib/tg.db".parse::<Database>().is_err());
        assert!(matches!(
            "sqlite://".parse::<Database>(),
            Err(DatabaseUrlError::EmptySqlitePath)
        ));
        assert!(matches!(
            "postgres://tg@db:notaport/tg".parse::<Database>(),
            Err(DatabaseUrlError::Postgres { .. })
        ));
    }

    #[test]
    fn passwords_never_show() {
        let db: Database = "postgres://tg:s3cret@db:5432/tg".parse().unwrap();
        assert_eq!(db.to_string(), "postgres://tg:***@db:5432/tg");
        assert!(!format!("{db:?}").contains("s3cret"));
        assert_eq!(redact("postgres://tg@db/tg"), "postgres://tg@db/tg");
        assert_eq!(redact("postgres://db/tg"), "postgres://db/tg");
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_one_clear_error() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let db: Database = format!("postgres://tg:pw@127.0.0.1:{port}/tg")
            .parse()
            .unwrap();
        let Err(e) = open(&db).await else {
            panic!("nothing listens there");
        };
        let text = e.to_string();
        assert!(matches!(e, StoreError::Unreachable { .. }), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }
}
