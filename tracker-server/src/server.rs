//! The accept loop: TCP → TLS → HTTP/1.1 or HTTP/2 → the axum router.
//!
//! Hand-rolled instead of `axum::serve` so each request can carry the TLS session's client
//! certificate fingerprint ([`PeerIdentity`]), the remote address and the local address the
//! client reached ([`LocalAddr`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_trust::peer_fingerprint;
use tower::ServiceExt as _;

use crate::app::{LocalAddr, MAX_MANIFEST_BODY, PeerIdentity};
use crate::bare_errors::JsonBareErrors;
use crate::connections::{Activity, Admitted, ConnectionLimits, ConnectionTable, RequestGuard};
use crate::metrics::{ConnectionStats, HandshakeFailure};

/// A client that has not finished the TLS handshake by then is dropped (sooner if the
/// first-request timeout is shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own bound on waiting for an HTTP/1.1 request head, a backstop: the idle watchdog
/// already closes a connection whose head is not complete within the first-request or idle
/// timeout (a partial head is not a request). hyper runs this timer while a kept-alive
/// connection waits for its next request too, so it is raised to the idle timeout where that is
/// longer, lest it cut connections that `--idle-timeout` allows.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's own header-count limit for HTTP/1.1, set above [`crate::app::MAX_HEADER_FIELDS`] so
/// that the tracker's JSON 431 is what a client with too many headers gets.
pub const HYPER_MAX_HEADERS: usize = 512;
/// hyper's HTTP/2 header-list limit (SETTINGS_MAX_HEADER_LIST_SIZE), set above
/// [`crate::app::MAX_HEADER_BYTES`] and the 65 534-byte URI bound, for the same reason. Past it
/// the h2 library answers a bare 431, or ends the connection for far larger header blocks.
pub const HYPER_MAX_HEADER_LIST: u32 = 256 * 1024;
/// After shutdown starts, in-flight requests get this long before connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A connection being closed with no request in flight gets this long to say goodbye (h2
/// GOAWAY, then a ping the client should answer) before it is dropped; an HTTP/1.1 one between
/// requests closes at once.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
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
    pub connections: ConnectionTable,
}

/// What each connection task shares.
#[derive(Clone)]
struct Shared {
    acceptor: TlsAcceptor,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: CancellationToken,
    /// Cancelled only if the shutdown grace period runs out: drops connections still open.
    force: CancellationToken,
}

impl Server {
    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests
    /// finish (up to [`SHUTDOWN_GRACE`]) and returns once every connection task has ended.
    pub async fn run(self, shutdown: CancellationToken, stats: Arc<ConnectionStats>) {
        let Server {
            listener,
            acceptor,
            router,
            connections: table,
        } = self;
        let shared = Shared {
            acceptor,
            router,
            limits: *table.limits(),
            stats,
            shutdown: shutdown.clone(),
            force: CancellationToken::new(),
        };
        let connections = TaskTracker::new();
        let mut backoff = Duration::from_millis(5);

        loop {
            // Every connection is accepted and then admitted or closed by the table: leaving
            // them in the kernel's backlog at the cap would queue a new client behind idle ones.
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
            let admitted = match table.admit(remote.ip()) {
                Ok(admitted) => admitted,
                Err(why) => {
                    tracing::debug!(%remote, reason = %why, "connection refused at the cap");
                    continue;
                }
            };
            connections.spawn(run_connection(tcp, remote, admitted, shared.clone()));
        }

        drop(listener);
        tracing::info!(
            open_connections = table.open(),
            "stopped accepting; finishing in-flight requests"
        );
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; dropping the remaining connections");
            shared.force.cancel();
            connections.wait().await;
        }
    }
}

/// Completes once the connection has been idle past its deadline (see
/// [`Activity::idle_deadline`]); never while a request is in flight.
async fn idle_expired(activity: &Activity, limits: &ConnectionLimits) {
    loop {
        // Registered before the state is read, so a request starting or ending right after
        // the read still wakes this.
        let changed = activity.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match activity.idle_deadline(limits) {
            Some(deadline) if Instant::now() >= deadline => return,
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// One connection from accept to close: TLS handshake, then HTTP, each bounded by the idle
/// timeouts and ended early if a newcomer evicts it.
async fn run_connection(tcp: TcpStream, remote: SocketAddr, admitted: Admitted, shared: Shared) {
    let activity = admitted.activity.clone();
    let tls = tokio::select! {
        // Not yet an HTTP connection: nothing in flight to finish.
        _ = shared.shutdown.cancelled() => return,
        _ = admitted.evict.cancelled() => return,
        _ = idle_expired(&activity, &shared.limits) => {
            shared.stats.record_idle_closed();
            tracing::debug!(%remote, "no request before the first-request timeout");
            return;
        }
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => {
                shared.stats.record_handshake();
                tls
            }
            Ok(Err(e)) => {
                shared.stats.record_handshake_failure(HandshakeFailure::Error);
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                shared.stats.record_handshake_failure(HandshakeFailure::Timeout);
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
    let peer = PeerIdentity(peer_fingerprint(tls.get_ref().1.peer_certificates()));
    let addrs = Addrs {
        remote,
        local: LocalAddr(local),
    };
    serve_connection(tls, addrs, peer, admitted, shared).await;
}

/// Both ends of a connection.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    remote: SocketAddr,
    local: LocalAddr,
}

fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT.max(limits.idle_timeout))
        .max_headers(HYPER_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HYPER_MAX_HEADER_LIST)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Why a connection is being closed while it may still have something to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Shutdown,
    Idle,
    Evicted,
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    addrs: Addrs,
    peer: PeerIdentity,
    admitted: Admitted,
    shared: Shared,
) {
    let remote = addrs.remote;
    let activity = admitted.activity.clone();
    let router = shared.router.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let guard = activity.begin_request();
        req.extensions_mut().insert(peer);
        req.extensions_mut().insert(ConnectInfo(addrs.remote));
        req.extensions_mut().insert(addrs.local);
        let router = router.clone();
        async move {
            let response = handle(router, req).await?;
            // The request stays in flight until its answer is sent (or abandoned).
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let builder = http_builder(&shared.limits);
    let conn = builder.serve_connection(TokioIo::new(JsonBareErrors::new(tls)), service);
    tokio::pin!(conn);
    let mut closing: Option<Closing> = None;
    // Far off until a close starts; shutdown's own bound is `force`.
    let give_up = tokio::time::sleep(Duration::from_secs(u32::MAX.into()));
    tokio::pin!(give_up);
    loop {
        let why = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shared.force.cancelled() => return,
            _ = shared.shutdown.cancelled(), if closing.is_none() => Closing::Shutdown,
            _ = idle_expired(&admitted.activity, &shared.limits), if closing.is_none() => Closing::Idle,
            _ = admitted.evict.cancelled(), if closing.is_none() => Closing::Evicted,
            _ = give_up.as_mut(), if closing.is_some() => {
                if !admitted.activity.is_busy() {
                    return;
                }
                // A request in flight (or one that slipped in before the goodbye) finishes;
                // at shutdown, `force` bounds it.
                give_up.as_mut().reset((Instant::now() + CLOSE_GRACE).into());
                continue;
            }
        };
        if why == Closing::Idle {
            shared.stats.record_idle_closed();
        }
        tracing::debug!(%remote, reason = ?why, "closing the connection");
        conn.as_mut().graceful_shutdown();
        give_up
            .as_mut()
            .reset((Instant::now() + CLOSE_GRACE).into());
        closing = Some(why);
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct GuardedBody {
    body: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // `Body` is `Unpin`, and so is this wrapper.
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
