//! Where the control API listens: the Unix socket in the data dir (mode 0600: the file's
//! permissions are the access control), and optionally loopback TCP, where every request needs
//! the bearer token kept in `<data-dir>/api-token`. One daemon per data dir, held by a lock.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// The control socket's file name in the data dir.
pub const SOCKET_FILE: &str = "daemon.sock";
/// The TCP API's bearer token's file name in the data dir.
pub const TOKEN_FILE: &str = "api-token";
const LOCK_FILE: &str = "daemon.lock";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "another daemon already runs with the data dir {0} (its socket answers); stop it first or use another --data-dir"
    )]
    AlreadyRunning(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--api-listen {0}: the TCP API listens on loopback only (127.0.0.0/8 or ::1)")]
    NotLoopback(SocketAddr),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Holds the data dir for this daemon while it lives (an exclusive `flock`).
pub struct DirLock(#[allow(dead_code)] std::fs::File);

pub fn lock_data_dir(dir: &Path) -> Result<DirLock, ServerError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DirLock(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ServerError::AlreadyRunning(dir.into())),
        Err(e) => Err(io(&path)(e.into())),
    }
}

/// Binds the control socket (replacing a stale one), mode 0600.
pub fn bind_socket(dir: &Path) -> Result<UnixListener, ServerError> {
    let path = dir.join(SOCKET_FILE);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ServerError::AlreadyRunning(dir.into()));
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    let listener = UnixListener::bind(&path).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
    Ok(listener)
}

/// Serves `app` on the control socket until `stop`.
pub fn serve_socket(listener: UnixListener, app: Router, stop: CancellationToken) {
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the control socket stopped");
        }
    });
}

/// Binds the TCP API on a loopback address.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    if !addr.ip().is_loopback() {
        return Err(ServerError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Io {
            path: PathBuf::from(addr.to_string()),
            source,
        })
}

/// Serves `app` on TCP, each request checked for the bearer `token`, until `stop`.
pub fn serve_tcp(listener: TcpListener, app: Router, token: String, stop: CancellationToken) {
    let token = std::sync::Arc::<str>::from(token);
    let app = app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let token = token.clone();
            async move { check_bearer(&token, req, next).await }
        },
    ));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the TCP control API stopped");
        }
    });
}

async fn check_bearer(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    let body = super::model::ErrorView {
        error: format!(
            "this API needs `Authorization: Bearer <token>`, the token in the daemon's data dir ({TOKEN_FILE})"
        ),
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}

/// Compares without an early exit, so the time taken says nothing about the token.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The TCP API's token: read from the data dir, made (random, 0600) on first use.
pub fn api_token(dir: &Path) -> Result<String, ServerError> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| io(&path)(std::io::Error::other("no randomness")))?;
    let token = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    std::io::Write::write_all(&mut f, token.as_bytes()).map_err(io(&path))?;
    Ok(token)
}

use std::os::unix::fs::OpenOptionsExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_daemon_per_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_data_dir(dir.path()),
            Err(ServerError::AlreadyRunning(_))
        ));
    }

    #[tokio::test]
    async fn the_socket_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let l = bind_socket(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SOCKET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            bind_socket(dir.path()),
            Err(ServerError::AlreadyRunning(_))
        ));
        drop(l);
        bind_socket(dir.path()).expect("a socket nobody answers on is stale");
    }

    #[test]
    fn the_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let t = api_token(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(api_token(dir.path()).unwrap(), t);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(constant_time_eq(t.as_bytes(), t.as_bytes()));
        assert!(!constant_time_eq(t.as_bytes(), &t.as_bytes()[1..]));
    }

    #[tokio::test]
    async fn tcp_is_loopback_only() {
        let err = bind_tcp("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert!(matches!(err, ServerError::NotLoopback(_)));
    }
}
