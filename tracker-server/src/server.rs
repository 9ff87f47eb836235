//! The accept loop: TCP → TLS → HTTP/1.1 or HTTP/2 → the axum router.
//!
//! Hand-rolled instead of `axum::serve` so each request can carry the TLS session's client
//! certificate fingerprint ([`PeerIdentity`]), the remote address and the local address the
//! client reached ([`LocalAddr`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::Fingerprint;
use tower::ServiceExt as _;

use crate::app::{LocalAddr, MAX_MANIFEST_BODY, PeerIdentity};

/// Connections served at once; the next accept waits for a free slot.
pub const MAX_CONNECTIONS: usize = 1024;
/// A client that has not finished the TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1 request headers must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After shutdown starts, in-flight requests get this long before connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Most of a request body read and discarded after an early answer (see
/// [`drain_unread`]): the largest body the tracker accepts, plus a quarter, so a client that
/// overshoots a limit still gets its 413 in full. Beyond it the stream is reset.
pub const MAX_DRAINED_BODY: u64 = (MAX_MANIFEST_BODY as u64) * 5 / 4;
/// How long draining may take before the stream is reset anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
                // The address this client dialled: what it can reach this host by (see
                // `app::address_for_asker`). Unknown only if the socket died meanwhile.
                let Ok(local) = tls.get_ref().0.local_addr() else {
                    return;
                };
                let peer = PeerIdentity(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| Fingerprint::of_der(leaf)),
                );
                let addrs = Addrs {
                    remote,
                    local: LocalAddr(local),
                };
                serve_connection(tls, addrs, peer, router, watcher, force).await;
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

/// Both ends of a connection.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    remote: SocketAddr,
    local: LocalAddr,
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    addrs: Addrs,
    peer: PeerIdentity,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    force: CancellationToken,
) {
    let remote = addrs.remote;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer);
        req.extensions_mut().insert(ConnectInfo(addrs.remote));
        req.extensions_mut().insert(addrs.local);
        handle(router.clone(), req)
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

/// Runs one request through the router. A body the router did not read to its end (an early
/// rejection: 401 before the upload, 413 at the limit, 415 on the content type) is read and
/// discarded before the answer goes out, so the client is never cut off mid-upload: h2 would
/// otherwise answer and reset the stream with NO_ERROR, as RFC 9113 §8.1 allows, which curl
/// (7.x) reports as "Stream error in the HTTP/2 framing layer" without the answer; hyper's
/// HTTP/1.1 would close the connection under the client's upload ("Send failure: Broken pipe").
/// A client still waiting for `100 Continue` has sent nothing and sends nothing once it sees the
/// answer, so its body is left alone.
async fn handle(
    router: Router,
    req: hyper::Request<Incoming>,
) -> Result<axum::response::Response, std::convert::Infallible> {
    let awaits_continue = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (returned_tx, returned_rx) = oneshot::channel();
    let req = req.map(|body| {
        Body::new(ReturnedBody {
            inner: Some(body),
            polled: false,
            back: Some(returned_tx),
        })
    });
    // The router is always ready (axum's `Router::poll_ready` is `Ready(Ok)`), so oneshot never
    // waits; the error type is `Infallible`.
    let response = router.oneshot(req).await;
    // The router has dropped the request by now (nothing in it outlives a handler); an
    // unfinished body came back through the channel.
    if let Ok(rest) = returned_rx.await
        && (rest.polled || !awaits_continue)
    {
        drain_unread(rest.body).await;
    }
    response
}

/// A body the router let go of before its end.
struct Unread {
    body: Incoming,
    /// Whether anything read it: then hyper has sent `100 Continue` and the upload is coming.
    polled: bool,
}

/// A request body that, dropped before its end, goes back to [`handle`] to be drained.
struct ReturnedBody {
    inner: Option<Incoming>,
    polled: bool,
    back: Option<oneshot::Sender<Unread>>,
}

impl HttpBody for ReturnedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.polled = true;
        match self.inner.as_mut() {
            // `Incoming` is `Unpin`, and so is this wrapper.
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for ReturnedBody {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.inner.take(), self.back.take())
            && !body.is_end_stream()
        {
            // The receiver is gone only if the request was abandoned; then so is the body.
            let _ = back.send(Unread {
                body,
                polled: self.polled,
            });
        }
    }
}

/// Reads and discards the rest of `body`, up to [`MAX_DRAINED_BODY`] bytes and
/// [`DRAIN_TIMEOUT`]; past either the stream is left to be reset (the connection closed, in
/// HTTP/1.1).
async fn drain_unread(mut body: Incoming) {
    if body.size_hint().lower() > MAX_DRAINED_BODY {
        return;
    }
    let drain = async {
        let mut seen: u64 = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else { return };
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > MAX_DRAINED_BODY {
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::debug!("gave up draining an unread request body");
    }
}
