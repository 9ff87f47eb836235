//! Serving chunks to other peers over mutual TLS.
//!
//! One listener serves every file this agent holds, complete (shared) or partial (being
//! downloaded). A connecting peer must present a certificate whose fingerprint the tracker lists
//! in the swarm of the file its `Hello` names; chunks are read with positional reads straight
//! from the file into a pooled buffer and written as one TLS write.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::wire::{
    self, CHUNK_HEADER_LEN, Frame, PROTOCOL_VERSION, RejectReason, chunk_header, frame_bound,
};
use torrentguard_protocol::{Bitfield, FileId, Fingerprint};
use torrentguard_trust::config::peer_server_config;
use torrentguard_trust::{Identity, peer_fingerprint};

mod limits;
mod pacer;

use limits::{Admission, PeerSlot, SlotScheduler};
pub use limits::{Refusal, SeederLimits};

use super::frames::{BufferPool, FrameReader, Incoming, write_frame};
use crate::reach::Advertise;
use crate::torrent::{ClaimsGuard, SharedFile, SwarmDirectory, WithdrawReason};
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// After shutdown begins, how long a connection may take to finish the chunk it is writing and
/// say `Bye`; then it is dropped as it stands. Keeps the whole stop under ~2 s.
pub const CONNECTION_STOP_GRACE: Duration = Duration::from_millis(1000);
/// Bound on writing a `Bye` and closing the TLS stream.
const BYE_TIMEOUT: Duration = Duration::from_millis(500);

/// The seeding side of an agent: a TLS listener and the files it serves.
pub struct Seeder {
    files: RwLock<HashMap<FileId, Arc<SharedFile>>>,
    /// Who is in each swarm (the session's tracker client, behind a trait).
    swarm: Arc<dyn SwarmDirectory>,
    local_addr: SocketAddr,
    limits: SeederLimits,
    admission: Arc<Admission>,
    /// Upload slots, granted in turn by certificate.
    slots: Arc<SlotScheduler>,
    /// Connections closed for having nothing requested for the idle timeout.
    idle_closes: AtomicU64,
    pool: BufferPool,
    /// Stops accepting; connections end with it.
    pub cancel: CancellationToken,
    tasks: TaskTracker,
    /// Test hook: serve corrupted data (to exercise the downloader's defences).
    corrupt: AtomicBool,
    /// Upload limit across all connections.
    pacer: pacer::UploadPacer,
    /// What to tell the tracker about where we are reached (`--advertise`); `None`: the
    /// connection's address and our listening port.
    advertise: std::sync::OnceLock<Advertise>,
}

impl Seeder {
    /// Binds `listen` and starts accepting, with the default [`SeederLimits`].
    pub async fn start(
        listen: SocketAddr,
        identity: &Identity,
        swarm: Arc<dyn SwarmDirectory>,
        cancel: CancellationToken,
    ) -> std::io::Result<Arc<Seeder>> {
        Self::start_with_limits(listen, identity, swarm, cancel, SeederLimits::default()).await
    }

    /// Binds `listen` and starts accepting, within `limits`.
    pub async fn start_with_limits(
        listen: SocketAddr,
        identity: &Identity,
        swarm: Arc<dyn SwarmDirectory>,
        cancel: CancellationToken,
        limits: SeederLimits,
    ) -> std::io::Result<Arc<Seeder>> {
        let config = peer_server_config(identity).map_err(std::io::Error::other)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = bind_dual_stack(listen)?;
        let local_addr = listener.local_addr()?;
        let seeder = Arc::new(Seeder {
            files: RwLock::new(HashMap::new()),
            swarm,
            local_addr,
            admission: Admission::new(limits.clone()),
            slots: SlotScheduler::new(limits.upload_slots),
            idle_closes: AtomicU64::new(0),
            limits,
            pool: BufferPool::new(CHUNK_HEADER_LEN + wire::PRE_HELLO_MAX_FRAME as usize * 4),
            cancel,
            tasks: TaskTracker::new(),
            corrupt: AtomicBool::new(false),
            advertise: std::sync::OnceLock::new(),
            pacer: pacer::UploadPacer::new(),
        });
        tracing::info!(listen = %local_addr, fingerprint = %identity.fingerprint, "seeding listener ready");
        let s = seeder.clone();
        crate::spawn::spawn_tracked(
            &seeder.tasks,
            "accept-loop",
            tracing::info_span!("seeder", listen = %local_addr),
            crate::spawn::Failure::Fault,
            async move { s.accept_loop(listener, acceptor).await },
        );
        Ok(seeder)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn limits(&self) -> &SeederLimits {
        &self.limits
    }

    /// Connections refused so far: over the per-address or per-certificate cap, or from a
    /// certificate in its cool-down.
    pub fn refused_connections(&self) -> u64 {
        self.admission.refused()
    }

    /// Connections closed so far for having nothing requested for the idle timeout.
    pub fn idle_closes(&self) -> u64 {
        self.idle_closes.load(Ordering::Relaxed)
    }

    pub fn add(&self, f: Arc<SharedFile>) {
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(f.file_id, f);
    }

    pub fn remove(&self, id: &FileId) {
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Every file served.
    pub fn files(&self) -> Vec<Arc<SharedFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &FileId) -> Option<Arc<SharedFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Limits the total upload rate (bytes per second; 0 lifts the limit).
    /// Sets the address announced to the tracker instead of the connection's (once, at start).
    pub fn set_advertise(&self, advertise: Advertise) {
        if self.advertise.set(advertise).is_err() {
            tracing::warn!("advertised address already set; keeping the first");
        }
    }

    /// The address and port to announce: the `--advertise` ones, else none (the tracker takes
    /// the connection's address) and the listening port.
    pub fn announced_endpoint(&self) -> (Option<std::net::IpAddr>, u16) {
        match self.advertise.get() {
            Some(a) => (Some(a.ip), a.port.unwrap_or(self.local_addr.port())),
            None => (None, self.local_addr.port()),
        }
    }

    pub fn set_upload_limit(&self, bytes_per_sec: u64) {
        self.pacer.set_limit(bytes_per_sec);
    }

    #[doc(hidden)]
    pub fn set_corrupt_for_tests(&self, on: bool) {
        self.corrupt.store(on, Ordering::Relaxed);
    }

    /// Stops accepting and waits for connections to end: each finishes or abandons its chunk
    /// and says `Bye` within [`CONNECTION_STOP_GRACE`], or is dropped.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        for f in self.files() {
            tracing::info!(file_id = %f.file_id, uploaded = f.uploaded.load(Ordering::Relaxed),
                busy_refusals = f.busy_refusals(), size = f.manifest.size, "stopped serving");
        }
        tracing::info!(
            refused_connections = self.refused_connections(),
            idle_closes = self.idle_closes(),
            "seeding listener closed"
        );
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, acceptor: TlsAcceptor) {
        let limit = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut backoff = Duration::from_millis(10);
        loop {
            // Take the permit before accepting, so a flood waits in the kernel's backlog.
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = self.cancel.cancelled() => return,
            };
            let (tcp, addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => { backoff = Duration::from_millis(10); x }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                _ = self.cancel.cancelled() => return,
            };
            // Before any TLS work: one address cannot fill the connection limit.
            let Some(address_slot) = self.admission.admit_address(addr.ip().to_canonical()) else {
                tracing::debug!(peer = %addr, "refusing connection: too many from this address");
                continue;
            };
            let s = self.clone();
            let acceptor = acceptor.clone();
            let stopping = self.cancel.clone();
            // A peer ending its connection, politely or not, is routine for a seeder.
            let span = tracing::debug_span!("upload", peer = %addr);
            let failure = crate::spawn::Failure::Routine;
            crate::spawn::spawn_tracked(
                &self.tasks,
                "peer-connection",
                span,
                failure,
                async move {
                    let _held = (permit, address_slot);
                    // The connection reacts to the stop itself (Bye); this bounds whatever it might
                    // still be blocked on (a handshake, a peer that reads nothing).
                    let grace_over = async {
                        stopping.cancelled().await;
                        tokio::time::sleep(CONNECTION_STOP_GRACE).await;
                    };
                    tokio::select! {
                        r = s.serve(tcp, addr, acceptor) => r,
                        _ = grace_over => {
                            tracing::debug!("peer connection dropped at shutdown");
                            Ok(())
                        }
                    }
                },
            );
        }
    }

    async fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        acceptor: TlsAcceptor,
    ) -> anyhow::Result<()> {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let conn_id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let Some(peer) = self.admit(tcp, addr, acceptor).await? else {
            return Ok(());
        };
        let fp = peer.fp;
        let result = self.serve_requests(conn_id, addr, peer).await;
        if let Err(e) = &result
            && e.downcast_ref::<Wasted>().is_some()
        {
            // Idle or breaking the protocol: counts toward this certificate's cool-down.
            self.admission.strike(fp);
        }
        result
    }

    /// TLS handshake, `Hello` and the checks before serving: caps and cool-down of the
    /// certificate, the file, the swarm. `None`: refused (the peer was told why).
    async fn admit(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        acceptor: TlsAcceptor,
    ) -> anyhow::Result<Option<AdmittedPeer>> {
        let _ = tcp.set_nodelay(true);
        // One deadline for the handshake and the Hello together.
        let deadline = tokio::time::Instant::now() + self.limits.handshake_timeout;
        let tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await??;
        let (_, session) = tls.get_ref();
        let Some(fp) = peer_fingerprint(session.peer_certificates()) else {
            anyhow::bail!("no client certificate");
        };
        tracing::debug!(peer = %addr, fingerprint = %fp,
            suite = ?session.negotiated_cipher_suite().map(|s| s.suite()),
            group = ?session.negotiated_key_exchange_group().map(|g| g.name()),
            "peer handshake done");
        let (rd, mut wr) = tokio::io::split(tls);
        let mut scratch = BytesMut::with_capacity(256);
        let slot = match self.admission.admit_peer(fp) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(peer = %addr, fingerprint = %fp, %refusal, "refusing peer connection");
                say_bye(&mut wr, &mut scratch, 1, &refusal.to_string()).await;
                return Ok(None);
            }
        };
        let mut reader = FrameReader::new(rd);
        let hello = tokio::time::timeout_at(deadline, reader.next(&self.pool)).await;
        let Ok(Ok(Some(Incoming::Control(Frame::Hello {
            version,
            file_id,
            chunk_count,
        })))) = hello
        else {
            // Silent, garbled or not a Hello: it held a place for nothing.
            self.admission.strike(fp);
            anyhow::bail!("no Hello from the peer: {hello:?}");
        };
        let refuse = |text: &str| Frame::Bye {
            reason: 1,
            text: text.to_string(),
        };
        if version != PROTOCOL_VERSION {
            write_frame(
                &mut wr,
                &refuse("unsupported protocol version"),
                &mut scratch,
            )
            .await?;
            anyhow::bail!("peer speaks protocol version {version}");
        }
        let Some(file) = self.get(&file_id) else {
            write_frame(&mut wr, &refuse("file not served here"), &mut scratch).await?;
            wr.shutdown().await.ok();
            anyhow::bail!("peer asked for unknown file {file_id}");
        };
        if chunk_count != file.manifest.chunk_count() {
            write_frame(&mut wr, &refuse("chunk count mismatch"), &mut scratch).await?;
            anyhow::bail!("chunk count mismatch");
        }
        if !file.admits(&fp, &*self.swarm).await {
            tracing::warn!(peer = %addr, fingerprint = %fp, %file_id, "refusing peer: the tracker does not list it in this swarm");
            self.admission.strike(fp);
            write_frame(&mut wr, &refuse("not in the swarm"), &mut scratch).await?;
            wr.shutdown().await.ok();
            anyhow::bail!("peer not in swarm");
        }
        if let Err(reason) = file.check_unchanged() {
            say_bye(&mut wr, &mut scratch, 1, &withdrawn_text(&reason)).await;
            anyhow::bail!("file withdrawn: {}", reason.local);
        }
        Ok(Some(AdmittedPeer {
            fp,
            file,
            reader,
            wr,
            scratch,
            _slot: slot,
        }))
    }

    /// Answers the admitted peer's requests until it leaves, idles, breaks the protocol, or
    /// the file or the seeder stops.
    async fn serve_requests(
        &self,
        conn_id: u64,
        addr: SocketAddr,
        peer: AdmittedPeer,
    ) -> anyhow::Result<()> {
        let AdmittedPeer {
            fp,
            file,
            mut reader,
            mut wr,
            mut scratch,
            _slot,
        } = peer;
        let _claims = ClaimsGuard::new(file.clone(), conn_id);
        let m = file.manifest.clone();
        let mut haves = file.subscribe_haves();
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            file_id: file.file_id,
            chunk_count: m.chunk_count(),
        };
        write_frame(&mut wr, &hello, &mut scratch).await?;
        let bitfield = Frame::Bitfield(file.have().as_bytes().to_vec().into());
        write_frame(&mut wr, &bitfield, &mut scratch).await?;
        wr.flush().await?;
        reader.set_max_frame(frame_bound(m.chunk_size, m.chunk_count()));

        let (mut frames, _abort) = self.spawn_reader(reader);

        let idle = self.limits.idle_timeout;
        let mut queue: VecDeque<u32> = VecDeque::new();
        let mut last_active = Instant::now();
        let n = m.chunk_count();
        loop {
            // Take every frame already received before serving, so Cancels win races.
            loop {
                let f = if queue.is_empty() {
                    tokio::select! {
                        f = frames.recv() => f,
                        h = haves.recv() => {
                            if let Ok(i) = h {
                                write_frame(&mut wr, &Frame::Have(i), &mut scratch).await?;
                                wr.flush().await?;
                                // Something new to ask for: the peer gets a full idle period.
                                last_active = Instant::now();
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until((last_active + idle).into()) => {
                            let text = format!("idle: no request for {}s", idle.as_secs());
                            say_bye(&mut wr, &mut scratch, 1, &text).await;
                            self.idle_closes.fetch_add(1, Ordering::Relaxed);
                            return Err(Wasted("idle with nothing requested".into()).into());
                        }
                        _ = self.cancel.cancelled() => {
                            say_bye(&mut wr, &mut scratch, 0, SHUTTING_DOWN).await;
                            return Ok(());
                        }
                        _ = file.withdrawal() => {
                            say_bye(&mut wr, &mut scratch, 1, &withdrawn_text_of(file.withdraw_reason())).await;
                            anyhow::bail!("file withdrawn");
                        }
                    }
                } else {
                    match frames.try_recv() {
                        Ok(f) => Some(f),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    }
                };
                // The reader ended (EOF or error): so does the connection.
                let f = match f {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Err(Wasted(e).into()),
                    None => return Ok(()),
                };
                match f {
                    Frame::Request(i) if i >= n => {
                        let bye = Frame::Bye {
                            reason: 3,
                            text: "chunk index out of range".into(),
                        };
                        write_frame(&mut wr, &bye, &mut scratch).await.ok();
                        return Err(Wasted("request out of range".into()).into());
                    }
                    Frame::Request(i) => {
                        last_active = Instant::now();
                        match self.refusal(&file, i, queue.len(), conn_id, fp) {
                            Some(reason) => {
                                let reject = Frame::Reject { index: i, reason };
                                write_frame(&mut wr, &reject, &mut scratch).await?;
                                wr.flush().await?;
                            }
                            None => queue.push_back(i),
                        }
                    }
                    Frame::Cancel(i) => queue.retain(|q| *q != i),
                    Frame::Have(i) if i < n => {}
                    Frame::Bitfield(b) if Bitfield::from_bytes(&b, n).is_ok() => {}
                    Frame::Bye { text, .. } => {
                        tracing::debug!(peer = %addr, %text, "peer said bye");
                        return Ok(());
                    }
                    other => {
                        let e = format!("unexpected {} frame from a downloader", other.name());
                        return Err(Wasted(e).into());
                    }
                }
            }
            // Between chunks: a stop or a change on disk ends the connection with a reason,
            // however many requests the peer keeps queued.
            if self.cancel.is_cancelled() {
                say_bye(&mut wr, &mut scratch, 0, SHUTTING_DOWN).await;
                return Ok(());
            }
            // The flag, not a stat per chunk: the announcer stats the file every few seconds.
            if let Some(reason) = file.withdraw_reason() {
                say_bye(&mut wr, &mut scratch, 1, &withdrawn_text(&reason)).await;
                anyhow::bail!("file withdrawn: {}", reason.local);
            }
            if let Some(i) = queue.pop_front() {
                self.send_chunk(&file, fp, i, &mut wr).await?;
                last_active = Instant::now();
            }
        }
    }

    /// Reads the peer's frames in their own task (a read cut short by `select!` would lose
    /// stream bytes); the last item is the error that ended the stream, if any. No timeout
    /// there: a peer silent (or stuck mid-frame) with nothing queued meets the idle timeout.
    fn spawn_reader(
        &self,
        mut reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    ) -> (mpsc::Receiver<Result<Frame, String>>, AbortOnDrop) {
        let (frames_tx, frames) = mpsc::channel(self.limits.max_queued_requests);
        let pool = self.pool.clone();
        // Called inside the connection's task: its span (the peer's address) carries over.
        let span = tracing::Span::current();
        let failure = crate::spawn::Failure::Fault;
        let read_task = crate::spawn::spawn("upload-reader", span, failure, async move {
            loop {
                let next = match reader.next(&pool).await {
                    Ok(Some(Incoming::Control(f))) => Ok(f),
                    Ok(Some(Incoming::Chunk { .. })) => Err("peer sent a chunk to a seeder".into()),
                    Ok(None) => return,
                    Err(e) => Err(e.to_string()),
                };
                let last = next.is_err();
                if frames_tx.send(next).await.is_err() || last {
                    return;
                }
            }
        });
        (frames, AbortOnDrop(read_task.abort_handle()))
    }

    /// Why a request for chunk `i` is not queued, if it is not.
    fn refusal(
        &self,
        file: &SharedFile,
        i: u32,
        queued: usize,
        conn_id: u64,
        fp: Fingerprint,
    ) -> Option<RejectReason> {
        if !file.holds(i) {
            Some(RejectReason::NotHeld)
        } else if queued >= self.limits.max_queued_requests
            || !file.claim(i, conn_id, fp, |c| self.admission.is_cooling(c))
        {
            Some(RejectReason::Busy)
        } else {
            None
        }
    }

    async fn send_chunk<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        file: &SharedFile,
        fp: Fingerprint,
        i: u32,
        wr: &mut W,
    ) -> anyhow::Result<()> {
        let m = &file.manifest;
        let len = m.chunk_len(i) as usize;
        // Slot first, in turn by certificate, then the pacer: under a rate limit the bytes go
        // round robin too. Both waits give way to a stop or a withdrawal: the chunk is
        // abandoned unsent and the caller says `Bye`.
        let slot = async {
            let slot = self.slots.acquire(fp).await;
            self.pacer.pace(len).await;
            slot
        };
        let _slot = tokio::select! {
            s = slot => s,
            _ = self.cancel.cancelled() => return Ok(()),
            _ = file.withdrawal() => return Ok(()),
        };
        let mut buf = self.pool.take();
        buf.resize(CHUNK_HEADER_LEN + len, 0);
        let storage = file.storage().clone();
        let corrupt = self.corrupt.load(Ordering::Relaxed);
        // Read off the reactor: a cold page cache means real disk latency.
        let mut buf = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            storage.read_chunk(i, &mut buf[CHUNK_HEADER_LEN..])?;
            if corrupt {
                buf[CHUNK_HEADER_LEN] ^= 0xff;
            }
            Ok(buf)
        })
        .await??;
        buf[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(i, len as u32));
        tokio::time::timeout(WRITE_TIMEOUT, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await??;
        file.uploaded.fetch_add(len as u64, Ordering::Relaxed);
        self.pool.give(buf);
        Ok(())
    }
}

const SHUTTING_DOWN: &str = "seeder shutting down";

/// A peer admitted to a file's swarm, its `Hello` read, not yet answered.
struct AdmittedPeer {
    fp: Fingerprint,
    file: Arc<SharedFile>,
    reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    scratch: BytesMut,
    /// Its place under the per-certificate cap, held as long as the connection.
    _slot: PeerSlot,
}

/// A connection ended by the peer's fault (idle, protocol broken): it counts toward the
/// certificate's cool-down.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Wasted(String);

fn withdrawn_text(reason: &WithdrawReason) -> String {
    format!("file withdrawn: {}", reason.remote)
}

fn withdrawn_text_of(reason: Option<WithdrawReason>) -> String {
    reason.map_or_else(|| "file withdrawn".to_string(), |r| withdrawn_text(&r))
}

/// Tells the peer why we close, then closes the TLS stream. Bounded: a peer that reads
/// nothing must not hold up a stop.
async fn say_bye<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    scratch: &mut BytesMut,
    reason: u8,
    text: &str,
) {
    let bye = Frame::Bye {
        reason,
        text: text.to_string(),
    };
    let _ = tokio::time::timeout(BYE_TIMEOUT, async {
        write_frame(wr, &bye, scratch).await?;
        wr.flush().await?;
        wr.shutdown().await
    })
    .await;
}

struct AbortOnDrop(tokio::task::AbortHandle);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr`; for the IPv6 wildcard, accepts IPv4 too (dual stack), falling back to the IPv4
/// wildcard on hosts without IPv6.
pub fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std_listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            tracing::debug!(error = %e, "IPv6 wildcard unavailable; listening on IPv4 only");
            std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port())))?
        }
        Err(e) => return Err(e),
    };
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}
