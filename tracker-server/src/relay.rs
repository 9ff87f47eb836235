//! The relay (`--relay-listen`): a TLS 1.3 listener in the tracker process, with the tracker's
//! certificate, where two peers that cannot reach each other meet by an introduction's token
//! and then only have bytes copied between them.
//!
//! Per connection: the TLS handshake (client certificate mandatory) and the
//! [`RelayRequest`](torrentguard_protocol::relay::RelayRequest) within [`HANDSHAKE_DEADLINE`];
//! `Reflect` is answered with the TCP source address and closed; `Join` must name a live relay
//! introduction of which the certificate is a side not yet joined, waits up to [`PAIR_WAIT`]
//! for the other side, then both get `Ok` and the connection carries their own mutual TLS end
//! to end: the relay sees only ciphertext, so it can drop or delay bytes but not read or alter
//! them without the peers' TLS failing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::relay::{RelayAnswer, RelayRequest, RelayStatus};
use torrentguard_trust::peer_fingerprint;

use crate::introductions::{Introductions, Role, Token};
use crate::metrics::{RelayOutcome, TraversalStats};

/// The TLS handshake and the request must be in by then.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// How long the first side of a session waits for the second.
pub const PAIR_WAIT: Duration = Duration::from_secs(15);
/// A session with no byte either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// `--relay-tamper-for-tests` flips the byte at this offset of the seeder-to-downloader stream.
pub const TAMPER_AFTER: u64 = 64 * 1024;
pub const DEFAULT_SESSIONS_PER_IDENTITY: usize = 8;
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Bytes read and written at a time per direction.
const BUFFER: usize = 16 * 1024;
/// Connections not yet in a session (handshaking or waiting) beyond the sessions' own two each.
const EXTRA_CONNECTIONS: usize = 256;

/// The relay's settings (see the `--relay-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    /// Bytes per second per session and direction; 0: unlimited.
    pub session_rate: u64,
    /// Bytes per second over all sessions and directions; 0: unlimited.
    pub total_rate: u64,
    pub sessions_per_identity: usize,
    pub max_sessions: usize,
    /// Flip one byte of each session's seeder-to-downloader stream (for tests of the peers'
    /// tamper detection; never in production).
    pub tamper_for_tests: bool,
}

impl RelayConfig {
    /// The defaults, listening on `listen`.
    pub fn on(listen: SocketAddr) -> Self {
        RelayConfig {
            listen,
            session_rate: 0,
            total_rate: 0,
            sessions_per_identity: DEFAULT_SESSIONS_PER_IDENTITY,
            max_sessions: DEFAULT_MAX_SESSIONS,
            tamper_for_tests: false,
        }
    }
}

/// A token bucket over bytes: `rate` a second, up to a tenth of a second saved (at least one
/// buffer). A send larger than what is saved goes into debt, which the next sends wait out, so
/// over any window the bytes passed are at most the saved amount plus `rate` times its length.
#[derive(Debug)]
pub struct ByteBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl ByteBucket {
    /// `None` for a rate of 0 (unlimited).
    pub fn new(rate: u64, now: Instant) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let rate = rate as f64;
        let burst = (rate / 10.0).max(BUFFER as f64);
        Some(ByteBucket {
            rate,
            burst,
            state: Mutex::new((burst, now)),
        })
    }

    /// Takes `n` bytes at `now`: how long to wait before sending them.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst) - n as f64;
        s.1 = now.max(s.1);
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate)
        }
    }

    async fn take(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A bound relay listener, ready to [`Relay::run`].
pub struct Relay {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
    pub config: RelayConfig,
    pub introductions: Arc<Introductions>,
    pub stats: Arc<TraversalStats>,
}

struct Shared {
    config: RelayConfig,
    introductions: Arc<Introductions>,
    stats: Arc<TraversalStats>,
    total: Option<ByteBucket>,
    pairing: Mutex<Pairing>,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Pairing {
    /// The first side of each session waiting for the second.
    waiting: HashMap<Token, oneshot::Sender<Joined>>,
    /// Joined connections (waiting or in a session) per identity.
    per_identity: HashMap<Fingerprint, usize>,
    /// Sessions reserved (a first side waiting) or running.
    sessions: usize,
}

/// A side that joined, handed to the first side's task by the second.
struct Joined {
    stream: TlsStream<TcpStream>,
    role: Role,
    _slot: IdentitySlot,
}

/// One joined connection of an identity, released on drop.
struct IdentitySlot {
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut p = self.shared.lock();
        if let Some(n) = p.per_identity.get_mut(&self.fingerprint) {
            *n -= 1;
            if *n == 0 {
                p.per_identity.remove(&self.fingerprint);
            }
        }
    }
}

/// A session reserved by its first side, released on drop.
struct SessionSlot(Arc<Shared>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut p = self.0.lock();
        p.sessions = p.sessions.saturating_sub(1);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pairing> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts are still sane.
        self.pairing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Relay {
    /// Accepts until `shutdown`, then ends every connection and session and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.config;
        let shared = Arc::new(Shared {
            config,
            introductions: self.introductions,
            stats: self.stats,
            total: ByteBucket::new(config.total_rate, Instant::now()),
            pairing: Mutex::new(Pairing::default()),
            shutdown: shutdown.clone(),
        });
        let slots = Arc::new(Semaphore::new(
            config.max_sessions.saturating_mul(2) + EXTRA_CONNECTIONS,
        ));
        let tasks = TaskTracker::new();
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "relay accept failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "relay connection refused: too many open");
                continue;
            };
            let (shared, acceptor) = (shared.clone(), self.acceptor.clone());
            tasks.spawn(async move {
                connection(tcp, remote, acceptor, shared).await;
                drop(slot);
            });
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("relay stopped");
    }
}

async fn write_answer(
    stream: &mut (impl AsyncWrite + Unpin),
    status: RelayStatus,
    message: &str,
    observed: Option<SocketAddr>,
) -> std::io::Result<()> {
    let answer = RelayAnswer {
        status,
        message: message.to_string(),
        observed,
    };
    stream.write_all(&answer.encode()).await?;
    stream.flush().await
}

/// Answers a refusal and closes, within the handshake deadline.
async fn refuse(mut stream: TlsStream<TcpStream>, status: RelayStatus, message: &str) {
    let _ = tokio::time::timeout(HANDSHAKE_DEADLINE, async {
        write_answer(&mut stream, status, message, None).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads the relay request: `Ok(Err(status, why))` for a request that is not one.
async fn read_request(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Result<RelayRequest, String>> {
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).await?;
    let n = match RelayRequest::body_len(&head) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut bytes = head.to_vec();
    bytes.resize(6 + n, 0);
    stream.read_exact(&mut bytes[6..]).await?;
    Ok(RelayRequest::decode(&bytes).map_err(|e| e.to_string()))
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let start = async {
        let mut tls = acceptor.accept(tcp).await?;
        let request = read_request(&mut tls).await?;
        Ok::<_, std::io::Error>((tls, request))
    };
    let (tls, request) = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_DEADLINE, start) => match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "relay handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "relay handshake timed out");
                return;
            }
        },
    };
    // The client certificate is mandatory, so a session always has one.
    let Some(fingerprint) = peer_fingerprint(tls.get_ref().1.peer_certificates()) else {
        return;
    };
    match request {
        Err(why) => {
            shared.stats.record_relay_session(RelayOutcome::Refused);
            refuse(tls, RelayStatus::BadRequest, &why).await;
        }
        Ok(RelayRequest::Reflect) => reflect(tls, remote).await,
        Ok(RelayRequest::Join { token }) => join(tls, fingerprint, token, shared).await,
    }
}

async fn reflect(mut tls: TlsStream<TcpStream>, remote: SocketAddr) {
    let observed = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    let _ = tokio::time::timeout(HANDSHAKE_DEADLINE, async {
        write_answer(&mut tls, RelayStatus::Ok, "", Some(observed)).await?;
        tls.shutdown().await
    })
    .await;
}

/// What a join became: the first side (waits), or the second (hands itself over).
enum Place {
    First(oneshot::Receiver<Joined>, SessionSlot),
    Second(oneshot::Sender<Joined>),
}

/// Checks the caps and the token, and takes this connection's place in its session.
fn place(
    shared: &Arc<Shared>,
    fingerprint: Fingerprint,
    token: &Token,
) -> Result<(Place, Role, IdentitySlot), (RelayStatus, String)> {
    let config = &shared.config;
    let mut p = shared.lock();
    let mine = p.per_identity.get(&fingerprint).copied().unwrap_or(0);
    if mine >= config.sessions_per_identity {
        return Err((
            RelayStatus::OverLimit,
            format!(
                "this identity has {mine} relay sessions, the most this relay allows ({})",
                config.sessions_per_identity
            ),
        ));
    }
    let second = p.waiting.contains_key(token);
    if !second && p.sessions >= config.max_sessions {
        return Err((
            RelayStatus::OverLimit,
            format!("the relay runs its most sessions ({})", config.max_sessions),
        ));
    }
    let role = shared
        .introductions
        .join(token, &fingerprint, Instant::now())
        .map_err(|status| (status, refusal_message(status).to_string()))?;
    *p.per_identity.entry(fingerprint).or_insert(0) += 1;
    let slot = IdentitySlot {
        shared: shared.clone(),
        fingerprint,
    };
    let place = match p.waiting.remove(token) {
        Some(tx) => {
            shared.stats.relay_waiting(false);
            Place::Second(tx)
        }
        None => {
            let (tx, rx) = oneshot::channel();
            p.waiting.insert(*token, tx);
            shared.stats.relay_waiting(true);
            p.sessions += 1;
            Place::First(rx, SessionSlot(shared.clone()))
        }
    };
    Ok((place, role, slot))
}

fn refusal_message(status: RelayStatus) -> &'static str {
    match status {
        RelayStatus::UnknownToken => "no live relay introduction has this token",
        RelayStatus::NotYours => {
            "this certificate is not a side of the introduction, or that side already joined"
        }
        _ => "refused",
    }
}

async fn join(
    tls: TlsStream<TcpStream>,
    fingerprint: Fingerprint,
    token: Token,
    shared: Arc<Shared>,
) {
    let (place, role, slot) = match place(&shared, fingerprint, &token) {
        Ok(v) => v,
        Err((status, why)) => {
            tracing::debug!(peer = %fingerprint.short(), ?status, "relay join refused");
            shared.stats.record_relay_session(RelayOutcome::Refused);
            refuse(tls, status, &why).await;
            return;
        }
    };
    let me = Joined {
        stream: tls,
        role,
        _slot: slot,
    };
    match place {
        Place::Second(tx) => {
            if let Err(me) = tx.send(me) {
                // The first side's task ended (shutdown) between our taking its place and now.
                refuse(me.stream, RelayStatus::Timeout, "the other side left").await;
            }
        }
        Place::First(rx, session) => {
            let Some(other) = wait_for_other(rx, &token, &shared).await else {
                shared.stats.record_relay_session(RelayOutcome::Timeout);
                refuse(
                    me.stream,
                    RelayStatus::Timeout,
                    "the other side did not join in time",
                )
                .await;
                return;
            };
            run_session(me, other, &shared).await;
            drop(session);
        }
    }
}

/// The second side, or `None` after [`PAIR_WAIT`] (or at shutdown).
async fn wait_for_other(
    mut rx: oneshot::Receiver<Joined>,
    token: &Token,
    shared: &Shared,
) -> Option<Joined> {
    tokio::select! {
        r = &mut rx => return r.ok(),
        _ = tokio::time::sleep(PAIR_WAIT) => {}
        _ = shared.shutdown.cancelled() => {}
    }
    // Still in the table: nobody came. Gone: the second side took it and is sending now.
    if shared.lock().waiting.remove(token).is_some() {
        shared.stats.relay_waiting(false);
        return None;
    }
    rx.await.ok()
}

/// When the session last moved a byte, for the idle timeout.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed()
    }
}

/// Answers `Ok` to both sides, then copies bytes both ways until both have closed, either
/// fails, the session idles out, or the relay stops.
async fn run_session(a: Joined, b: Joined, shared: &Arc<Shared>) {
    let (mut asker, mut seeder) = match (a.role, b.role) {
        (Role::Asker, _) => (a, b),
        _ => (b, a),
    };
    let answered = async {
        write_answer(&mut asker.stream, RelayStatus::Ok, "", None).await?;
        write_answer(&mut seeder.stream, RelayStatus::Ok, "", None).await
    };
    match tokio::time::timeout(HANDSHAKE_DEADLINE, answered).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "relay session ended before it started");
            return;
        }
        Err(_) => {
            tracing::debug!("relay session answers timed out");
            return;
        }
    }
    shared.stats.record_relay_session(RelayOutcome::Paired);
    shared.stats.relay_session_started();
    let activity = Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (asker_read, asker_write) = tokio::io::split(asker.stream);
    let (seeder_read, seeder_write) = tokio::io::split(seeder.stream);
    let to_seeder = forward(asker_read, seeder_write, shared, &activity, false);
    let to_asker = forward(
        seeder_read,
        asker_write,
        shared,
        &activity,
        shared.config.tamper_for_tests,
    );
    tokio::pin!(to_seeder, to_asker);
    // A clean end of one direction is a half-close: the other keeps going until it ends too.
    tokio::select! {
        r = &mut to_seeder => if r.is_ok() {
            tokio::select! { _ = &mut to_asker => {}, _ = shared.shutdown.cancelled() => {} }
        },
        r = &mut to_asker => if r.is_ok() {
            tokio::select! { _ = &mut to_seeder => {}, _ = shared.shutdown.cancelled() => {} }
        },
        _ = shared.shutdown.cancelled() => {}
    }
    shared.stats.relay_session_ended();
}

/// Copies one direction under the rate caps until the source closes (then half-closes the
/// destination) or fails.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    activity: &Activity,
    tamper: bool,
) -> std::io::Result<()> {
    let session = ByteBucket::new(shared.config.session_rate, Instant::now());
    let mut buf = vec![0u8; BUFFER];
    let mut passed: u64 = 0;
    loop {
        let n = read_unless_idle(&mut from, &mut buf, activity).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if tamper && (passed..passed + n as u64).contains(&TAMPER_AFTER) {
            // In range by the check above, so the index fits the buffer.
            buf[(TAMPER_AFTER - passed) as usize] ^= 0x01;
        }
        passed += n as u64;
        if let Some(bucket) = &session {
            bucket.take(n).await;
        }
        if let Some(bucket) = &shared.total {
            bucket.take(n).await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        shared.stats.record_relay_bytes(n as u64);
        activity.touch();
    }
}

/// A read, failing once neither direction has moved a byte for [`IDLE_TIMEOUT`].
async fn read_unless_idle(
    from: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
    activity: &Activity,
) -> std::io::Result<usize> {
    loop {
        let wait = IDLE_TIMEOUT.saturating_sub(activity.idle_for());
        match tokio::time::timeout(wait, from.read(buf)).await {
            Ok(r) => return r,
            Err(_) if activity.idle_for() >= IDLE_TIMEOUT => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "relay session idle",
                ));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_rate_is_unlimited() {
        assert!(ByteBucket::new(0, Instant::now()).is_none());
    }

    #[test]
    fn the_bucket_passes_its_burst_then_the_rate() {
        let start = Instant::now();
        let rate = 1_000_000;
        let b = ByteBucket::new(rate, start).unwrap();
        // A tenth of a second is saved up: 100 000 bytes pass at once.
        assert_eq!(b.reserve(100_000, start), Duration::ZERO);
        // The next 50 000 must wait 50 ms.
        let wait = b.reserve(50_000, start);
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-6, "{wait:?}");
        // After waiting that out, the debt is paid and nothing more is saved.
        let later = start + wait;
        let wait = b.reserve(10_000, later);
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn over_a_window_the_bucket_passes_at_most_burst_plus_rate() {
        let start = Instant::now();
        let rate = 200_000u64;
        let b = ByteBucket::new(rate, start).unwrap();
        // A sender that sends BUFFER bytes whenever the bucket lets it, for 10 simulated s.
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(10) {
            let wait = b.reserve(BUFFER, now);
            now += wait;
            sent += BUFFER as u64;
        }
        let allowed = 10 * rate + (rate / 10).max(BUFFER as u64) + BUFFER as u64;
        assert!(sent <= allowed, "{sent} > {allowed}");
        assert!(sent >= 10 * rate, "{sent} < {}", 10 * rate);
    }
}
