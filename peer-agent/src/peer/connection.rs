//! One peer connection, whichever side opened it (mini-redis's `Connection`): the TLS stream
//! with the peer's pinned identity, framing in and out, the `Hello`/`Bitfield` handshake, and
//! the reader task that hands frames to the session. The upload and download sides differ in
//! what they do with it, not in how it is set up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use torrentguard_protocol::wire::{Frame, PROTOCOL_VERSION, WireError};
use torrentguard_protocol::{Bitfield, FileId, Fingerprint};
use torrentguard_trust::config::{peer_client_config, peer_server_name};
use torrentguard_trust::{Identity, peer_fingerprint};

use super::error::{PeerError, Violation};
use super::frames::{BufferPool, FrameReader, Incoming, write_frame};
use super::transport::{Path, Transport};

/// Bound on connecting, and on each handshake step, when dialling a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on writing a `Bye` and closing the TLS stream.
const BYE_TIMEOUT: Duration = Duration::from_millis(500);
/// Read buffer between the socket and TLS on the side that receives chunks: rustls asks the
/// socket for at most 4 KiB at a time; a large buffer below it turns ~260 000 read syscalls
/// per GiB into ~4 000.
const CHUNK_RECEIVER_BUFFER: usize = 256 * 1024;
/// The same on the side that receives only requests.
const REQUEST_RECEIVER_BUFFER: usize = 8 * 1024;

/// The TLS stream of either direction, over TCP or through a relay.
pub type PeerStream = TlsStream<BufReader<Transport>>;
/// The receiving half, framed.
pub type PeerReader = FrameReader<ReadHalf<PeerStream>>;
/// Frames from the reader task: `Ok(None)` is a clean close between frames.
pub type Inbox = mpsc::Receiver<Result<Option<Incoming>, WireError>>;

/// The peer's `Hello`, as it said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub file_id: FileId,
    pub chunk_count: u32,
    /// Capability bits; `None`: the short `Hello` of peers before capabilities.
    pub capabilities: Option<u8>,
}

impl Hello {
    /// Ours for the file, in the short form (no capabilities).
    pub fn ours(file_id: FileId, chunk_count: u32) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            file_id,
            chunk_count,
            capabilities: None,
        }
    }

    pub fn with_capabilities(self, capabilities: Option<u8>) -> Self {
        Hello {
            capabilities,
            ..self
        }
    }

    /// The same protocol version, file and chunk count: capabilities aside, the same `Hello`.
    pub fn same_file(&self, other: &Hello) -> bool {
        (self.version, self.file_id, self.chunk_count)
            == (other.version, other.file_id, other.chunk_count)
    }

    /// Whether both `Hello`s set every bit of `cap`.
    pub fn both_have(&self, other: &Hello, cap: u8) -> bool {
        let has = |h: &Hello| h.capabilities.unwrap_or(0) & cap == cap;
        has(self) && has(other)
    }
}

impl From<Hello> for Frame {
    fn from(h: Hello) -> Frame {
        Frame::Hello {
            version: h.version,
            file_id: h.file_id,
            chunk_count: h.chunk_count,
            capabilities: h.capabilities,
        }
    }
}

/// What the TLS handshake negotiated, for the user's benefit.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    pub cipher: String,
    pub group: String,
    /// The TCP handshake's time, one round trip, measured by the side that dials.
    pub round_trip: Option<Duration>,
    /// How the connection reaches the peer.
    pub path: Path,
}

/// A peer connection after TLS: who is at the other end, and the framed stream.
pub struct PeerConnection {
    pub fingerprint: Fingerprint,
    pub addr: SocketAddr,
    pub negotiated: Negotiated,
    pub reader: PeerReader,
    pub writer: PeerWriter,
}

/// The sending half: frames, chunk bytes, and a bounded goodbye.
pub struct PeerWriter {
    io: WriteHalf<PeerStream>,
    scratch: BytesMut,
}

impl PeerConnection {
    /// Dials `addr` and accepts it only if its certificate's fingerprint is `pin`.
    pub async fn connect(
        identity: &Identity,
        addr: SocketAddr,
        pin: Fingerprint,
    ) -> Result<Self, PeerError> {
        Self::connect_within(identity, addr, pin, CONNECT_TIMEOUT).await
    }

    /// As [`PeerConnection::connect`], with the TCP connect bounded by `connect_timeout` (the
    /// TLS handshake keeps [`CONNECT_TIMEOUT`]): a dial ladder tries a peer of unknown reach
    /// directly for a short while before falling back.
    pub async fn connect_within(
        identity: &Identity,
        addr: SocketAddr,
        pin: Fingerprint,
        connect_timeout: Duration,
    ) -> Result<Self, PeerError> {
        let dialled = std::time::Instant::now();
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| timeout(format!("connecting to {addr}"), connect_timeout))?
            .map_err(|source| PeerError::Connect { addr, source })?;
        let round_trip = dialled.elapsed();
        Self::connect_over(identity, Transport::Tcp(tcp), addr, pin, Some(round_trip)).await
    }

    /// The client side of the TLS handshake over `transport` (dialled, punched or relayed),
    /// accepted only if the peer's certificate's fingerprint is `pin`. `round_trip`: the TCP
    /// handshake's time, when the caller measured one.
    pub async fn connect_over(
        identity: &Identity,
        transport: Transport,
        addr: SocketAddr,
        pin: Fingerprint,
        round_trip: Option<Duration>,
    ) -> Result<Self, PeerError> {
        transport.set_nodelay();
        let path = if transport.is_relayed() {
            Path::Relayed
        } else {
            Path::Direct
        };
        let config = peer_client_config(identity, pin).map_err(|e| PeerError::Tls {
            addr,
            source: std::io::Error::other(e),
        })?;
        let io = BufReader::with_capacity(CHUNK_RECEIVER_BUFFER, transport);
        let handshake = TlsConnector::from(Arc::new(config)).connect(peer_server_name(), io);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| timeout(format!("TLS handshake with {addr}"), CONNECT_TIMEOUT))?
            .map_err(|source| PeerError::Tls { addr, source })?;
        let mut conn = Self::new(TlsStream::Client(tls), addr, pin);
        conn.negotiated.round_trip = round_trip;
        conn.negotiated.path = path;
        Ok(conn)
    }

    /// The TLS handshake of an inbound connection, by `deadline`; the client certificate is
    /// mandatory (its signature checked by the verifier), and names the peer.
    /// The path is `Relayed` for a relayed transport, else `Direct` (the caller that punched
    /// the TCP stream may say `Punched`).
    pub async fn accept(
        acceptor: &TlsAcceptor,
        transport: Transport,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Self, PeerError> {
        transport.set_nodelay();
        let path = if transport.is_relayed() {
            Path::Relayed
        } else {
            Path::Direct
        };
        let io = BufReader::with_capacity(REQUEST_RECEIVER_BUFFER, transport);
        let after = left(deadline);
        let tls = tokio::time::timeout_at(deadline, acceptor.accept(io))
            .await
            .map_err(|_| timeout(format!("TLS handshake with {addr}"), after))?
            .map_err(|source| PeerError::Tls { addr, source })?;
        let (_, session) = tls.get_ref();
        let fp = peer_fingerprint(session.peer_certificates()).ok_or(PeerError::NoCertificate)?;
        let mut conn = Self::new(TlsStream::Server(tls), addr, fp);
        conn.negotiated.path = path;
        Ok(conn)
    }

    fn new(tls: PeerStream, addr: SocketAddr, fingerprint: Fingerprint) -> Self {
        let (_, session) = tls.get_ref();
        let negotiated = Negotiated {
            cipher: session
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            group: session
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
            round_trip: None,
            path: Path::Direct,
        };
        tracing::debug!(peer = %addr, %fingerprint, cipher = %negotiated.cipher,
            group = %negotiated.group, "peer TLS handshake done");
        let (rd, wr) = tokio::io::split(tls);
        PeerConnection {
            fingerprint,
            addr,
            negotiated,
            reader: FrameReader::new(rd),
            writer: PeerWriter {
                io: wr,
                scratch: BytesMut::with_capacity(256),
            },
        }
    }

    /// The peer's `Hello`, by `deadline`. A `Bye` instead is the peer refusing us.
    pub async fn recv_hello(
        &mut self,
        pool: &BufferPool,
        deadline: Instant,
    ) -> Result<Hello, PeerError> {
        match self.recv_control(pool, deadline, "Hello").await? {
            Frame::Hello {
                version,
                file_id,
                chunk_count,
                capabilities,
            } => Ok(Hello {
                version,
                file_id,
                chunk_count,
                capabilities,
            }),
            other => Err(unexpected(&other, "instead of Hello")),
        }
    }

    /// The peer's bitfield of `n` chunks, by `deadline`.
    pub async fn recv_bitfield(
        &mut self,
        pool: &BufferPool,
        n: u32,
        deadline: Instant,
    ) -> Result<Bitfield, PeerError> {
        match self.recv_control(pool, deadline, "Bitfield").await? {
            Frame::Bitfield(b) => Ok(Bitfield::from_bytes(&b, n).map_err(Violation::from)?),
            other => Err(unexpected(&other, "instead of Bitfield")),
        }
    }

    async fn recv_control(
        &mut self,
        pool: &BufferPool,
        deadline: Instant,
        what: &str,
    ) -> Result<Frame, PeerError> {
        let after = left(deadline);
        let next = tokio::time::timeout_at(deadline, self.reader.next(pool))
            .await
            .map_err(|_| timeout(format!("waiting for the peer's {what}"), after))?;
        match next? {
            Some(Incoming::Control(Frame::Bye { text, .. })) => {
                Err(PeerError::Refused { reason: text })
            }
            Some(Incoming::Control(f)) => Ok(f),
            Some(Incoming::Chunk { data, .. }) => {
                pool.give(data);
                Err(Violation::Unexpected {
                    frame: "Chunk",
                    when: "during the handshake",
                }
                .into())
            }
            None => Err(PeerError::Disconnected),
        }
    }

    /// Runs the reader in its own task (a read cut short by `select!` would lose stream
    /// bytes) under `span`, handing at most `depth` frames ahead to the returned inbox; the
    /// last item is the end of the stream or its error. The task ends with the guard.
    pub fn spawn_reader(
        self,
        name: &'static str,
        span: tracing::Span,
        pool: BufferPool,
        depth: usize,
    ) -> (PeerWriter, Inbox, ReaderGuard) {
        let (tx, rx) = mpsc::channel(depth);
        let mut reader = self.reader;
        let failure = crate::spawn::Failure::Fault;
        let task = crate::spawn::spawn(name, span, failure, async move {
            loop {
                let r = reader.next(&pool).await;
                let last = !matches!(r, Ok(Some(_)));
                if tx.send(r).await.is_err() || last {
                    return;
                }
            }
        });
        (self.writer, rx, ReaderGuard(task.abort_handle()))
    }
}

impl PeerWriter {
    /// Queues `frame` (written; not flushed).
    pub async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        write_frame(&mut self.io, frame, &mut self.scratch).await
    }

    /// Sends `frame` and flushes.
    pub async fn send_now(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.send(frame).await?;
        self.io.flush().await
    }

    /// Writes bytes already framed (a chunk read into a pooled buffer behind its header), and
    /// flushes.
    pub async fn send_encoded(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush().await
    }

    /// Our half of the handshake: `Hello`, then the chunks we hold.
    pub async fn send_handshake(&mut self, hello: Hello, have: &Bitfield) -> std::io::Result<()> {
        self.send(&Frame::from(hello)).await?;
        self.send(&Frame::Bitfield(have.as_bytes().to_vec().into()))
            .await?;
        self.io.flush().await
    }

    /// Tells the peer why we close, then closes the TLS stream. Bounded: a peer that reads
    /// nothing must not hold up a stop.
    pub async fn bye(&mut self, reason: u8, text: &str) {
        let bye = Frame::Bye {
            reason,
            text: text.to_string(),
        };
        let _ = tokio::time::timeout(BYE_TIMEOUT, async {
            self.send_now(&bye).await?;
            self.io.shutdown().await
        })
        .await;
    }
}

/// Aborts a connection's reader task when the connection's session ends.
pub struct ReaderGuard(tokio::task::AbortHandle);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn timeout(step: String, after: Duration) -> PeerError {
    PeerError::Timeout { step, after }
}

/// What is left of the time until `deadline`, for saying how long was waited.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn unexpected(frame: &Frame, when: &'static str) -> PeerError {
    Violation::Unexpected {
        frame: frame.name(),
        when,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use torrentguard_trust::config::peer_server_config;

    const WAIT: Duration = Duration::from_secs(10);

    fn id(name: &str) -> Identity {
        Identity::generate(name).unwrap()
    }

    /// A listener on loopback whose first inbound connection is accepted as `server` and then
    /// handed to `then`.
    async fn serve_one<F, Fut>(server: Identity, then: F) -> SocketAddr
    where
        F: FnOnce(Result<PeerConnection, PeerError>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(peer_server_config(&server).unwrap()));
        tokio::spawn(async move {
            let (tcp, from) = listener.accept().await.unwrap();
            let deadline = Instant::now() + WAIT;
            let tcp = Transport::Tcp(tcp);
            then(PeerConnection::accept(&acceptor, tcp, from, deadline).await).await;
        });
        addr
    }

    /// Both directions use the same type: each learns the other's pinned identity, and the
    /// `Hello`/`Bitfield` handshake goes through in both directions.
    #[tokio::test]
    async fn both_directions_handshake_through_one_connection_type() {
        let (seeder, leecher) = (id("seeder"), id("leecher"));
        let (seeder_fp, leecher_fp) = (seeder.fingerprint, leecher.fingerprint);
        let file_id = FileId([7; 32]);
        let pool = BufferPool::new(64);
        let server_pool = pool.clone();
        let addr = serve_one(seeder, move |conn| async move {
            let mut conn = conn.unwrap();
            assert_eq!(conn.fingerprint, leecher_fp);
            let deadline = Instant::now() + WAIT;
            let hello = conn.recv_hello(&server_pool, deadline).await.unwrap();
            assert_eq!(hello, Hello::ours(file_id, 10));
            let mut have = Bitfield::new(10);
            have.set(3);
            conn.writer.send_handshake(hello, &have).await.unwrap();
            let theirs = conn
                .recv_bitfield(&server_pool, 10, deadline)
                .await
                .unwrap();
            assert_eq!(theirs.count(), 0);
        })
        .await;
        let mut conn = PeerConnection::connect(&leecher, addr, seeder_fp)
            .await
            .unwrap();
        assert_eq!(conn.fingerprint, seeder_fp);
        let ours = Hello::ours(file_id, 10);
        conn.writer
            .send_handshake(ours, &Bitfield::new(10))
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        assert_eq!(conn.recv_hello(&pool, deadline).await.unwrap(), ours);
        let has = conn.recv_bitfield(&pool, 10, deadline).await.unwrap();
        assert!(has.get(3) && has.count() == 1);
    }

    /// A seeder whose certificate is not the pinned one fails as a TLS error, not a protocol
    /// or network one.
    #[tokio::test]
    async fn a_certificate_that_is_not_the_pin_is_a_tls_failure() {
        let (seeder, impostor, leecher) = (id("seeder"), id("impostor"), id("leecher"));
        let addr = serve_one(impostor, |_| async {}).await;
        let Err(e) = PeerConnection::connect(&leecher, addr, seeder.fingerprint).await else {
            panic!("an impostor was accepted");
        };
        assert!(matches!(e, PeerError::Tls { .. }), "{e:?}");
        assert!(e.to_string().contains("TLS handshake"), "{e}");
    }

    /// A `Bye` in place of the `Hello` is the peer refusing, with its reason; a `Chunk` there
    /// is a protocol violation.
    #[tokio::test]
    async fn a_bye_instead_of_hello_is_a_refusal_and_a_chunk_a_violation() {
        for refuse in [true, false] {
            let (seeder, leecher) = (id("seeder"), id("leecher"));
            let seeder_fp = seeder.fingerprint;
            let addr = serve_one(seeder, move |conn| async move {
                let mut conn = conn.unwrap();
                if refuse {
                    conn.writer.bye(1, "busy: too many connections").await;
                } else {
                    let chunk = Frame::Chunk {
                        index: 0,
                        data: vec![1, 2, 3].into(),
                    };
                    conn.writer.send_now(&chunk).await.unwrap();
                    // Held open until the client has read it.
                    let _ = conn
                        .recv_hello(&BufferPool::new(64), Instant::now() + WAIT)
                        .await;
                }
            })
            .await;
            let mut conn = PeerConnection::connect(&leecher, addr, seeder_fp)
                .await
                .unwrap();
            let deadline = Instant::now() + WAIT;
            let e = conn.recv_hello(&BufferPool::new(64), deadline).await;
            match e {
                Err(PeerError::Refused { reason }) if refuse => {
                    assert_eq!(reason, "busy: too many connections");
                }
                Err(e @ PeerError::Protocol(Violation::Unexpected { .. })) if !refuse => {
                    assert!(e.is_peer_fault());
                }
                other => panic!("refuse: {refuse}: {other:?}"),
            }
        }
    }
}
