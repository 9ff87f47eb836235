//! TCP hole punching: both peers dial each other's public endpoint at the same moment from their
//! own listening ports, so each NAT sees an outgoing connection before the other side's SYN
//! comes in and lets it through (TCP simultaneous open).
//!
//! The punch socket binds the port the listener already holds (SO_REUSEADDR + SO_REUSEPORT on
//! both). A SYN from the peer that arrives before our own `connect()` has left finds no
//! connecting socket and lands on the listener instead; the listener hands such a connection
//! to the waiting punch through [`PendingPunches`], and whichever stream comes first wins.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::PeerError;

/// Connect attempts of one punch: NATs and the peer's timing differ by a few hundred ms.
pub const PUNCH_TRIES: u32 = 4;
/// Pause between attempts, before jitter.
const PUNCH_GAP: Duration = Duration::from_millis(250);
/// Upper bound of the random part of the pause, so two peers that both failed do not retry in
/// lockstep.
const PUNCH_JITTER_MS: u64 = 100;
/// Bound on one connect attempt.
pub const PUNCH_CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A TCP socket bound to `local` that may share the port with our listener and other punches.
pub fn reusable_socket(local: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    Ok(socket)
}

/// The claims of waiting punches by address, oldest first, each with its id.
type Waiting = HashMap<IpAddr, Vec<(u64, oneshot::Sender<TcpStream>)>>;

/// Punches waiting for a connection from a given address: filled by the listener, which
/// offers every connection it accepts here first.
#[derive(Debug, Default)]
pub struct PendingPunches {
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
}

/// One punch's claim on connections from its peer's address; withdrawn when dropped.
#[derive(Debug)]
pub struct Expected {
    registry: Arc<PendingPunches>,
    ip: IpAddr,
    id: u64,
    rx: oneshot::Receiver<TcpStream>,
}

impl PendingPunches {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Claims the next connection the listener accepts from `remote_ip`.
    pub fn expect(self: &Arc<Self>, remote_ip: IpAddr) -> Expected {
        let ip = remote_ip.to_canonical();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().entry(ip).or_default().push((id, tx));
        Expected {
            registry: self.clone(),
            ip,
            id,
            rx,
        }
    }

    /// Hands `tcp`, accepted from `addr`, to a punch waiting for that address. Gives it back
    /// when none is: it is an ordinary inbound connection.
    pub fn offer(&self, tcp: TcpStream, addr: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        let ip = addr.ip().to_canonical();
        let mut tcp = tcp;
        let mut waiting = self.lock();
        let Some(list) = waiting.get_mut(&ip) else {
            return Some((tcp, addr));
        };
        // The oldest claim first; one whose punch has ended hands the stream back to us.
        while !list.is_empty() {
            let (_, tx) = list.remove(0);
            match tx.send(tcp) {
                Ok(()) => {
                    if list.is_empty() {
                        waiting.remove(&ip);
                    }
                    tracing::debug!(peer = %addr, "inbound connection handed to a waiting punch");
                    return None;
                }
                Err(back) => tcp = back,
            }
        }
        waiting.remove(&ip);
        Some((tcp, addr))
    }

    /// Punches waiting now (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Expected {
    /// The connection the listener handed over; `None` if the registry is gone.
    pub async fn recv(&mut self) -> Option<TcpStream> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        let mut waiting = self.registry.lock();
        if let Some(list) = waiting.get_mut(&self.ip) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiting.remove(&self.ip);
            }
        }
    }
}

/// Punches from our listening port `local_port` to `remote` from `start_at` on (see the
/// module). Returns the stream and how many connect attempts were started (at least 1).
pub async fn punch(
    local_port: u16,
    remote: SocketAddr,
    start_at: Instant,
    punches: &Arc<PendingPunches>,
) -> Result<(TcpStream, u32), PeerError> {
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    let any: IpAddr = if remote.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    punch_from(SocketAddr::new(any, local_port), remote, start_at, punches).await
}

/// As [`punch`], from the bound address `local`.
pub async fn punch_from(
    local: SocketAddr,
    remote: SocketAddr,
    start_at: Instant,
    punches: &Arc<PendingPunches>,
) -> Result<(TcpStream, u32), PeerError> {
    // Claimed before the first SYN leaves: the peer's may be in flight already.
    let mut inbound = punches.expect(remote.ip());
    let tries = AtomicU64::new(0);
    let dial = async {
        tokio::time::sleep_until(start_at).await;
        let mut last = None;
        for attempt in 1..=PUNCH_TRIES {
            tries.store(u64::from(attempt), Ordering::Relaxed);
            match connect_once(local, remote).await {
                Ok(tcp) => return Ok((tcp, attempt)),
                Err(e) => {
                    tracing::debug!(%remote, attempt, error = %e, "punch attempt failed");
                    last = Some(e);
                }
            }
            if attempt < PUNCH_TRIES {
                tokio::time::sleep(PUNCH_GAP + jitter()).await;
            }
        }
        Err(last.unwrap_or_else(|| PeerError::Timeout {
            step: format!("punching to {remote}"),
            after: PUNCH_CONNECT_TIMEOUT,
        }))
    };
    tokio::select! {
        r = dial => r,
        Some(tcp) = inbound.recv() => {
            let attempts = tries.load(Ordering::Relaxed).max(1);
            Ok((tcp, u32::try_from(attempts).unwrap_or(PUNCH_TRIES)))
        }
    }
}

async fn connect_once(local: SocketAddr, remote: SocketAddr) -> Result<TcpStream, PeerError> {
    let socket = reusable_socket(local).map_err(|source| PeerError::Connect {
        addr: remote,
        source,
    })?;
    tokio::time::timeout(PUNCH_CONNECT_TIMEOUT, socket.connect(remote))
        .await
        .map_err(|_| PeerError::Timeout {
            step: format!("punching to {remote}"),
            after: PUNCH_CONNECT_TIMEOUT,
        })?
        .map_err(|source| PeerError::Connect {
            addr: remote,
            source,
        })
}

/// A few random milliseconds (std's per-map random keys are seeded from the OS; no need for a
/// random crate for this).
fn jitter() -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    Duration::from_millis(h.finish() % PUNCH_JITTER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// An agent's listener on a reusable loopback port whose accept loop offers every
    /// connection to `punches` first, as the seeder's does; others are dropped.
    fn listener(punches: Arc<PendingPunches>) -> SocketAddr {
        let socket = reusable_socket(SocketAddr::new(LOOPBACK, 0)).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener: TcpListener = socket.listen(64).unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, from)) = listener.accept().await {
                drop(punches.offer(tcp, from));
            }
        });
        addr
    }

    async fn check_joined(mut a: TcpStream, mut b: TcpStream) {
        a.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(a.local_addr().unwrap(), b.peer_addr().unwrap());
    }

    /// Both sides punch at once from their listening ports: whichever way the SYNs cross
    /// (simultaneous open, or one landing on the other's listener), each side ends up with
    /// one end of the same connection, from and to the listening ports.
    #[tokio::test]
    async fn two_peers_punching_at_once_get_one_connection() {
        let (pa, pb) = (PendingPunches::new(), PendingPunches::new());
        let (a, b) = (listener(pa.clone()), listener(pb.clone()));
        let start = Instant::now();
        let (ra, rb) = tokio::join!(punch_from(a, b, start, &pa), punch_from(b, a, start, &pb));
        let ((sa, ta), (sb, tb)) = (ra.unwrap(), rb.unwrap());
        assert_eq!(sa.local_addr().unwrap(), a);
        assert_eq!(sb.local_addr().unwrap(), b);
        assert!((1..=PUNCH_TRIES).contains(&ta) && (1..=PUNCH_TRIES).contains(&tb));
        check_joined(sa, sb).await;
        assert!(pa.is_empty() && pb.is_empty(), "claims withdrawn");
    }

    /// The peer's SYN arrives long before our own punch starts: it lands on our listener,
    /// which hands it to the waiting punch, and the punch wins without dialling.
    #[tokio::test]
    async fn a_syn_that_lands_on_the_listener_goes_to_the_waiting_punch() {
        let (pa, pb) = (PendingPunches::new(), PendingPunches::new());
        let (a, b) = (listener(pa.clone()), listener(pb.clone()));
        let later = Instant::now() + Duration::from_secs(600);
        let waiting = tokio::spawn({
            let pb = pb.clone();
            async move { punch_from(b, a, later, &pb).await }
        });
        // The claim is in before A dials: wait for it, not for time.
        while pb.is_empty() {
            tokio::task::yield_now().await;
        }
        let (sa, _) = punch_from(a, b, Instant::now(), &pa).await.unwrap();
        let (sb, tries) = waiting.await.unwrap().unwrap();
        assert_eq!(tries, 1);
        check_joined(sa, sb).await;
    }

    /// Nothing listening and nobody punching back: every attempt is refused, and the error is
    /// the network's, not the peer's.
    #[tokio::test]
    async fn a_punch_nobody_answers_fails_after_its_tries() {
        let closed = {
            let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
            l.local_addr().unwrap()
        };
        let punches = PendingPunches::new();
        let local = SocketAddr::new(LOOPBACK, 0);
        let e = punch_from(local, closed, Instant::now(), &punches)
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::Connect { .. }), "{e:?}");
        assert!(!e.is_peer_fault());
        assert!(punches.is_empty());
    }

    /// A connection from an address no punch waits for is handed back to the listener; a
    /// claim dropped before anything came is withdrawn.
    #[tokio::test]
    async fn offers_from_unexpected_addresses_come_back() {
        let l = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (tcp, from) = l.accept().await.unwrap();
        let punches = PendingPunches::new();
        let claim = punches.expect("192.0.2.1".parse().unwrap());
        assert_eq!(punches.len(), 1);
        let (tcp, _) = punches.offer(tcp, from).expect("not expected");
        drop(claim);
        assert!(punches.is_empty());
        let mut claim = punches.expect(from.ip());
        assert!(punches.offer(tcp, from).is_none());
        assert!(claim.recv().await.is_some());
    }
}
