//! The accept loop: TCP → TLS → HTTP/1.1 or HTTP/2 → the axum router.
//!
//! Hand-rolled instead of `axum::serve` so each request can carry the TLS session's client
//! certificate fingerprint ([`PeerIdentity`]) and the remote address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::Fingerprint;
use tower::ServiceExt as _;

use crate::app::PeerIdentity;

/// Connections served at once; the next accept waits for a free slot.
pub const MAX_CONNECTIONS: usize = 1024;
/// A client that has not finished the TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1 request headers must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After shutdown starts, in-flight requests get this long before connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct Server {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
    pub router: Router,
}

impl Server {
    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests
    /// finish (up to [`SHUTDOWN_GRACE`]) and returns once every connection task has ended.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            listener,
            acceptor,
            router,
        } = self;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        let connections = TaskTracker::new();
        // Cancelled only if the grace period runs out: drops connections still open then.
        let force = CancellationToken::new();
        let mut backoff = Duration::from_millis(5);

        loop {
            // Taken before accepting, so a full server leaves new connections in the kernel's
            // backlog instead of accepting work it cannot do.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    // Only closed if we close it, which we don't.
                    Err(_) => break,
                },
            };
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(conn) => {
                        backoff = Duration::from_millis(5);
                        conn
                    }
                    Err(e) => {
                        // Typically EMFILE or ECONNABORTED: transient, so wait and retry
                        // rather than spin or die.
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let watcher = graceful.watcher();
            let acceptor = acceptor.clone();
            let router = router.clone();
            let shutdown = shutdown.clone();
            let force = force.clone();
            connections.spawn(async move {
                let _permit = permit;
                let tls = tokio::select! {
                    // Not yet an HTTP connection: nothing in flight to finish.
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match r {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    },
                };
                let peer = PeerIdentity(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| Fingerprint::of_der(leaf)),
                );
                serve_connection(tls, remote, peer, router, watcher, force).await;
            });
        }

        drop(listener);
        tracing::info!(
            open_connections = graceful.count(),
            "stopped accepting; finishing in-flight requests"
        );
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; dropping the remaining connections");
            force.cancel();
        }
        connections.close();
        connections.wait().await;
    }
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
    peer: PeerIdentity,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    force: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer);
        req.extensions_mut().insert(ConnectInfo(remote));
        // The router is always ready (axum's `Router::poll_ready` is `Ready(Ok)`), so oneshot
        // never waits; the error type is `Infallible`.
        let router = router.clone();
        async move { router.oneshot(req).await }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        r = watcher.watch(conn) => {
            if let Err(e) = r {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        }
        _ = force.cancelled() => {}
    }
}
