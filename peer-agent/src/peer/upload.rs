//! The upload side: serving chunks to other peers over mutual TLS.
//!
//! One listener serves every share this agent holds, complete (shared) or partial (being
//! downloaded). A connecting peer must present a certificate whose fingerprint the tracker lists
//! in the swarm of the share its `Hello` names (asked through `SwarmDirectory`, never the
//! tracker itself); chunks are read through the share's storage straight into a pooled buffer
//! behind their frame header and written as one TLS write.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::api::Reach;
use torrentguard_protocol::compression::{self, Governor, caps};
use torrentguard_protocol::wire::{
    self, CHUNK_HEADER_LEN, Frame, PROTOCOL_VERSION, RejectReason, chunk_header_of, frame_bound, ty,
};
use torrentguard_protocol::{Bitfield, FileId, Fingerprint, Manifest};
use torrentguard_trust::Identity;
use torrentguard_trust::config::peer_server_config;

mod introduced;
mod limits;

use limits::{Admission, PeerSlot, SlotScheduler};
pub use limits::{Refusal, SeederLimits};

use super::connection::{Hello, PeerConnection, PeerWriter};
use super::error::{PeerError, Violation};
use super::frames::{BufferPool, Incoming};
use super::punch::PendingPunches;
use crate::rate::RateLimit;
use crate::reach::Advertise;
use crate::torrent::storage::ChunkStorage;
use crate::torrent::tree_store::FileChanged;
use crate::torrent::{ClaimsGuard, SharedFile, SwarmDirectory, WithdrawReason};

/// Bound on writing one chunk to a peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// After shutdown begins, how long a connection may take to finish the chunk it is writing and
/// say `Bye`; then it is dropped as it stands. Keeps the whole stop under ~2 s.
pub const CONNECTION_STOP_GRACE: Duration = Duration::from_millis(1000);

/// Connections the kernel queues before `accept` (std's own default on Linux).
const LISTEN_BACKLOG: u32 = 1024;

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
    /// Whether chunks may go zstd-compressed to downloaders that offer it (`--compression`).
    compression: std::sync::Mutex<compression::Mode>,
    /// Upload limit across all connections.
    upload_limit: Arc<RateLimit>,
    /// What to tell the tracker about where we are reached (`--advertise`); `None`: the
    /// connection's address and our listening port.
    advertise: std::sync::OnceLock<Advertise>,
    /// The router's public port forwarded to our listener (`--port-map upnp`), announced
    /// instead of the listening port when no `--advertise` port is given.
    mapped_port: std::sync::OnceLock<u16>,
    /// How this agent can be reached, as last learned (none until the session learns it).
    reach: std::sync::Mutex<Option<Reach>>,
    /// Hole punches waiting for a connection that may land on this listener.
    punches: Arc<PendingPunches>,
    /// The TLS server side, for accepted and introduced connections alike.
    acceptor: TlsAcceptor,
    /// Connections served at once, accepted or introduced ([`SeederLimits::max_connections`]).
    connections: Arc<Semaphore>,
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
        let connections = Arc::new(Semaphore::new(limits.max_connections));
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
            compression: std::sync::Mutex::new(compression::Mode::default()),
            advertise: std::sync::OnceLock::new(),
            mapped_port: std::sync::OnceLock::new(),
            reach: std::sync::Mutex::new(None),
            upload_limit: Arc::new(RateLimit::default()),
            punches: PendingPunches::new(),
            acceptor: acceptor.clone(),
            connections,
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

    /// The registry through which this listener hands connections to waiting hole punches.
    pub fn punches(&self) -> &Arc<PendingPunches> {
        &self.punches
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
        let port = self.mapped_port.get().copied();
        let port = port.unwrap_or(self.local_addr.port());
        match self.advertise.get() {
            Some(a) => (Some(a.ip), a.port.unwrap_or(port)),
            None => (None, port),
        }
    }

    /// Sets the router's public port that forwards to our listener (once, at start).
    pub fn set_mapped_port(&self, port: u16) {
        if self.mapped_port.set(port).is_err() {
            tracing::warn!("mapped port already set; keeping the first");
        }
    }

    /// How this agent can be reached, as last learned; `None` until it is known.
    pub fn reach(&self) -> Option<Reach> {
        *self.reach.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records how this agent can be reached (announced from then on).
    pub fn set_reach(&self, reach: Option<Reach>) {
        *self.reach.lock().unwrap_or_else(|e| e.into_inner()) = reach;
    }

    /// Limits the bytes of chunks sent over all connections (0: unlimited).
    pub fn set_upload_limit(&self, bytes_per_sec: u64) {
        self.upload_limit.set_limit(bytes_per_sec);
    }

    /// The upload limit itself, for a caller that changes it while running or reads it back.
    pub fn upload_limit(&self) -> &Arc<RateLimit> {
        &self.upload_limit
    }

    /// Whether chunks may go compressed, to connections made from now on (default `Auto`).
    pub fn set_compression(&self, mode: compression::Mode) {
        *self.compression.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    fn compression(&self) -> compression::Mode {
        *self.compression.lock().unwrap_or_else(|e| e.into_inner())
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
        let limit = self.connections.clone();
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
            // A punch's peer whose SYN beat our own connect() lands here: it is the punch's.
            let Some((tcp, addr)) = self.punches.offer(tcp, addr) else {
                continue;
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
    ) -> Result<(), PeerError> {
        let tcp = super::transport::Transport::Tcp(tcp);
        self.serve_over(tcp, addr, acceptor, None).await
    }

    /// Serves one connection over `transport` (accepted, punched or relayed). `introduced`: the
    /// only certificate an introduced connection may present.
    async fn serve_over(
        self: Arc<Self>,
        transport: super::transport::Transport,
        addr: SocketAddr,
        acceptor: TlsAcceptor,
        introduced: Option<Fingerprint>,
    ) -> Result<(), PeerError> {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let conn_id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let Some(peer) = self.admit(transport, addr, acceptor, introduced).await? else {
            return Ok(());
        };
        let fp = peer.conn.fingerprint;
        let result = self.serve_requests(conn_id, peer).await;
        if let Err(e) = &result
            && e.is_peer_fault()
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
        transport: super::transport::Transport,
        addr: SocketAddr,
        acceptor: TlsAcceptor,
        introduced: Option<Fingerprint>,
    ) -> Result<Option<AdmittedPeer>, PeerError> {
        // One deadline for the handshake and the Hello together.
        let deadline = tokio::time::Instant::now() + self.limits.handshake_timeout;
        let conn = PeerConnection::accept(&acceptor, transport, addr, deadline).await?;
        let mut conn = self.check_introduced(conn, introduced)?;
        let fp = conn.fingerprint;
        let slot = match self.admission.admit_peer(fp) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(peer = %addr, fingerprint = %fp, %refusal, "refusing peer connection");
                conn.writer.bye(1, &refusal.to_string()).await;
                return Ok(None);
            }
        };
        let hello = match conn.recv_hello(&self.pool, deadline).await {
            Ok(hello) => hello,
            Err(e) => {
                // Silent, garbled or not a Hello: it held a place for nothing.
                self.admission.strike(fp);
                return Err(e);
            }
        };
        let Some(file) = self.check_hello(&mut conn, hello).await else {
            return Ok(None);
        };
        Ok(Some(AdmittedPeer {
            conn,
            file,
            hello,
            _slot: slot,
        }))
    }

    /// The file the peer's `Hello` asks for, if it is served here, to this peer, as that
    /// Hello describes it; else the peer is told why not.
    async fn check_hello(
        &self,
        conn: &mut PeerConnection,
        hello: Hello,
    ) -> Option<Arc<SharedFile>> {
        let (fp, addr, file_id) = (conn.fingerprint, conn.addr, hello.file_id);
        let file = self.get(&file_id);
        let refusal = match &file {
            _ if hello.version != PROTOCOL_VERSION => Some("unsupported protocol version"),
            None => Some("file not served here"),
            Some(f) if hello.chunk_count != f.manifest.chunk_count() => {
                Some("chunk count mismatch")
            }
            Some(f) if !f.admits(&fp, &*self.swarm).await => {
                tracing::warn!(peer = %addr, fingerprint = %fp, %file_id, "refusing peer: the tracker does not list it in this swarm");
                self.admission.strike(fp);
                Some("not in the swarm")
            }
            Some(_) => None,
        };
        if let Some(text) = refusal {
            tracing::debug!(peer = %addr, fingerprint = %fp, ?hello, reason = text, "refusing peer");
            conn.writer.bye(1, text).await;
            return None;
        }
        let file = file?;
        if let Err(reason) = file.check_unchanged() {
            tracing::debug!(peer = %addr, reason = %reason.local, "refusing peer: file withdrawn");
            conn.writer.bye(1, &withdrawn_text(&reason)).await;
            return None;
        }
        Some(file)
    }

    /// Answers the admitted peer's requests until it leaves, idles, breaks the protocol, or
    /// the file or the seeder stops.
    async fn serve_requests(&self, conn_id: u64, peer: AdmittedPeer) -> Result<(), PeerError> {
        let AdmittedPeer {
            mut conn,
            file,
            hello: theirs,
            _slot,
        } = peer;
        let (fp, addr) = (conn.fingerprint, conn.addr);
        let _claims = ClaimsGuard::new(file.clone(), conn_id);
        let m = file.manifest.clone();
        let n = m.chunk_count();
        let mut haves = file.subscribe_haves();
        // Answered in the form it came in: a short `Hello` is all a peer from before
        // capabilities can parse.
        let mode = self.compression();
        let caps = theirs.capabilities.map(|_| mode.capabilities());
        let hello = Hello::ours(file.file_id, n).with_capabilities(caps);
        conn.writer.send_handshake(hello, &file.have()).await?;
        let zstd = hello.both_have(&theirs, caps::ZSTD);
        let mut governor = Governor::new(if zstd { mode } else { compression::Mode::Off });
        conn.reader.set_max_frame(frame_bound(m.chunk_size, n));
        // Called inside the connection's task: its span (the peer's address) carries over.
        let span = tracing::Span::current();
        let depth = self.limits.max_queued_requests;
        let (mut wr, mut frames, _reader) =
            conn.spawn_reader("upload-reader", span, self.pool.clone(), depth);

        let idle = self.limits.idle_timeout;
        let mut queue: VecDeque<u32> = VecDeque::new();
        let mut last_active = Instant::now();
        loop {
            // Take every frame already received before serving, so Cancels win races.
            loop {
                let msg = if queue.is_empty() {
                    tokio::select! {
                        f = frames.recv() => f,
                        h = haves.recv() => {
                            if let Ok(i) = h {
                                wr.send_now(&Frame::Have(i)).await?;
                                // Something new to ask for: the peer gets a full idle period.
                                last_active = Instant::now();
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until((last_active + idle).into()) => {
                            let text = format!("idle: no request for {}s", idle.as_secs());
                            wr.bye(1, &text).await;
                            self.idle_closes.fetch_add(1, Ordering::Relaxed);
                            return Err(PeerError::Idle { after: idle });
                        }
                        _ = self.cancel.cancelled() => {
                            wr.bye(0, SHUTTING_DOWN).await;
                            return Ok(());
                        }
                        _ = file.withdrawal() => {
                            let reason = file.withdraw_reason();
                            wr.bye(1, &withdrawn_text_of(reason.clone())).await;
                            return Err(withdrawn(reason));
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
                let f = match msg {
                    Some(Ok(Some(Incoming::Control(f)))) => f,
                    Some(Ok(Some(Incoming::Chunk { data, .. }))) => {
                        self.pool.give(data);
                        let when = "from a downloader";
                        return Err(Violation::Unexpected {
                            frame: "Chunk",
                            when,
                        }
                        .into());
                    }
                    Some(Err(e)) => {
                        let e = PeerError::from(e);
                        if !e.is_peer_fault() {
                            // A stream that breaks under its reader (cut mid-frame, reset)
                            // held a place for nothing too: it counts toward the cool-down.
                            self.admission.strike(fp);
                        }
                        return Err(e);
                    }
                    Some(Ok(None)) | None => return Ok(()),
                };
                match f {
                    Frame::Request(i) if i >= n => {
                        wr.bye(3, "chunk index out of range").await;
                        return Err(Violation::OutOfRange {
                            index: i,
                            chunks: n,
                        }
                        .into());
                    }
                    Frame::Request(i) => {
                        last_active = Instant::now();
                        match self.refusal(&file, i, queue.len(), conn_id, fp) {
                            Some(reason) => {
                                wr.send_now(&Frame::Reject { index: i, reason }).await?;
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
                        let frame = other.name();
                        let when = "from a downloader";
                        return Err(Violation::Unexpected { frame, when }.into());
                    }
                }
            }
            // Between chunks: a stop or a change on disk ends the connection with a reason,
            // however many requests the peer keeps queued.
            if self.cancel.is_cancelled() {
                wr.bye(0, SHUTTING_DOWN).await;
                return Ok(());
            }
            // The flag, not a stat per chunk: the announcer stats the file every few seconds.
            if let Some(reason) = file.withdraw_reason() {
                wr.bye(1, &withdrawn_text(&reason)).await;
                return Err(withdrawn(Some(reason)));
            }
            if !queue.is_empty() {
                let budget = self.pool.capacity();
                let (batch, compress) = take_raw_batch(&mut queue, &m, &mut governor, budget);
                if let [i] = batch[..] {
                    self.send_chunk(&file, fp, i, compress, &mut wr, &mut governor)
                        .await?;
                } else {
                    self.send_raw_batch(&file, fp, &batch, &mut wr).await?;
                }
                last_active = Instant::now();
            }
        }
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

    /// An upload slot for `bytes`, in turn by certificate, then the upload limit: under it
    /// the bytes go round robin too. Both waits give way to a stop or a withdrawal (`None`: the
    /// chunks are abandoned unsent and the caller says `Bye`).
    async fn slot_for(
        &self,
        file: &SharedFile,
        fp: Fingerprint,
        bytes: usize,
    ) -> Option<limits::UploadSlot> {
        let slot = async {
            let slot = self.slots.acquire(fp).await;
            self.upload_limit.pace(bytes).await;
            slot
        };
        tokio::select! {
            s = slot => Some(s),
            _ = self.cancel.cancelled() => None,
            _ = file.withdrawal() => None,
        }
    }

    /// Sends chunk `i`, compressed if `compress` and it shrinks.
    async fn send_chunk(
        &self,
        file: &SharedFile,
        fp: Fingerprint,
        i: u32,
        compress: bool,
        wr: &mut PeerWriter,
        governor: &mut Governor,
    ) -> Result<(), PeerError> {
        let m = &file.manifest;
        let len = m.chunk_len(i) as usize;
        let Some(_slot) = self.slot_for(file, fp, len).await else {
            return Ok(());
        };
        let storage = file.storage().clone();
        let corrupt = self.corrupt.load(Ordering::Relaxed);
        let (pool, len32) = (self.pool.clone(), len as u32);
        // Read (and compress) off the reactor: a cold page cache means real disk latency, and
        // compressing a chunk takes a millisecond or more.
        let read = tokio::task::spawn_blocking(move || {
            read_for_wire(&pool, &*storage, i, len32, corrupt, compress)
        })
        .await
        .map_err(std::io::Error::other)?;
        let out = match read {
            Ok(out) => out,
            Err(e) => return refuse_changed(file, i, e, wr).await,
        };
        let mut shrank = false;
        if let Some((took, size)) = out.compressed {
            governor.record_compression(len, size, took);
            shrank = size.is_some();
        }
        let started = Instant::now();
        tokio::time::timeout(WRITE_TIMEOUT, wr.send_encoded(&out.frame))
            .await
            .map_err(|_| PeerError::Timeout {
                step: format!("writing chunk {i}"),
                after: WRITE_TIMEOUT,
            })??;
        governor.record_write(out.frame.len(), started.elapsed(), shrank);
        file.uploaded.fetch_add(len as u64, Ordering::Relaxed);
        self.pool.give(out.frame);
        Ok(())
    }
}

impl Seeder {
    /// Sends the raw chunks of `batch` (small ones: together they fit in one pooled buffer):
    /// one slot, one read task, one write and flush. A chunk whose file changed is answered
    /// `NotHeld` and the rest still go.
    async fn send_raw_batch(
        &self,
        file: &SharedFile,
        fp: Fingerprint,
        batch: &[u32],
        wr: &mut PeerWriter,
    ) -> Result<(), PeerError> {
        let m = &file.manifest;
        let bytes: usize = batch.iter().map(|&i| m.chunk_len(i) as usize).sum();
        let Some(_slot) = self.slot_for(file, fp, bytes).await else {
            return Ok(());
        };
        let storage = file.storage().clone();
        let corrupt = self.corrupt.load(Ordering::Relaxed);
        let (pool, m2, list) = (self.pool.clone(), file.manifest.clone(), batch.to_vec());
        let (frames, failed) = tokio::task::spawn_blocking(move || {
            read_raw_frames(&pool, &*storage, &m2, &list, corrupt)
        })
        .await
        .map_err(std::io::Error::other)?;
        let written = tokio::time::timeout(WRITE_TIMEOUT, wr.send_encoded(&frames)).await;
        self.pool.give(frames);
        written.map_err(|_| PeerError::Timeout {
            step: format!("writing {} chunks", batch.len()),
            after: WRITE_TIMEOUT,
        })??;
        let unread: usize = failed.iter().map(|(i, _)| m.chunk_len(*i) as usize).sum();
        file.uploaded
            .fetch_add((bytes - unread) as u64, Ordering::Relaxed);
        for (i, e) in failed {
            refuse_changed(file, i, e, wr).await?;
        }
        Ok(())
    }
}

/// Reads the chunks of `list` into one pooled buffer, each behind its `Chunk` header. Returns
/// the frames and the chunks that could not be read (with why). Blocking.
fn read_raw_frames(
    pool: &BufferPool,
    storage: &dyn ChunkStorage,
    m: &Manifest,
    list: &[u32],
    corrupt: bool,
) -> (Vec<u8>, Vec<(u32, std::io::Error)>) {
    let mut buf = pool.take();
    let mut failed = Vec::new();
    for &i in list {
        if let Err(e) = append_raw_frame(&mut buf, storage, i, m.chunk_len(i), corrupt) {
            failed.push((i, e));
        }
    }
    (buf, failed)
}

/// Appends chunk `i` (`len` bytes) to `buf` behind its `Chunk` header (its first byte flipped
/// if `corrupt`, the hostile-seeder test knob); on a read error `buf` is left as it was.
/// Blocking.
fn append_raw_frame(
    buf: &mut Vec<u8>,
    storage: &dyn ChunkStorage,
    i: u32,
    len: u32,
    corrupt: bool,
) -> std::io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&chunk_header_of(ty::CHUNK, i, len));
    buf.resize(at + CHUNK_HEADER_LEN + len as usize, 0);
    if let Err(e) = storage.read_chunk(i, &mut buf[at + CHUNK_HEADER_LEN..]) {
        buf.truncate(at);
        return Err(e);
    }
    if corrupt {
        buf[at + CHUNK_HEADER_LEN] ^= 0xff;
    }
    Ok(())
}

/// Requests served together from the front of `queue`, with the governor's decision for the
/// first: after it, as long as it and the next go raw, as many more as fit in one chunk buffer
/// (`budget` bytes of frames). A tree of small files then costs one read task and one write
/// per buffer rather than per file; a full-size chunk still goes alone. Counts each decision
/// (`Governor::should_compress`) once.
fn take_raw_batch(
    queue: &mut VecDeque<u32>,
    m: &Manifest,
    governor: &mut Governor,
    budget: usize,
) -> (Vec<u32>, bool) {
    let frame = |i: u32| CHUNK_HEADER_LEN + m.chunk_len(i) as usize;
    let Some(first) = queue.pop_front() else {
        return (Vec::new(), false);
    };
    if governor.should_compress() {
        return (vec![first], true);
    }
    let (mut batch, mut bytes) = (vec![first], frame(first));
    while let Some(&next) = queue.front() {
        if bytes + frame(next) > budget || governor.would_compress() {
            break;
        }
        governor.should_compress();
        bytes += frame(next);
        batch.push(next);
        queue.pop_front();
    }
    (batch, false)
}

/// A chunk framed for the wire.
struct WireChunk {
    /// Header and data, raw or compressed.
    frame: Vec<u8>,
    /// If compression was tried: how long it took, and the size it came to (`None`: it did not
    /// shrink the chunk).
    compressed: Option<(Duration, Option<usize>)>,
}

/// Reads chunk `i` (`len` bytes) behind its frame header and, if `compress`, compresses it
/// behind a `ChunkZstd` header; the smaller goes out (compressed only if it shrank). Blocking.
fn read_for_wire(
    pool: &BufferPool,
    storage: &dyn ChunkStorage,
    i: u32,
    len: u32,
    corrupt: bool,
    compress: bool,
) -> std::io::Result<WireChunk> {
    let n = len as usize;
    let mut buf = pool.take();
    if let Err(e) = append_raw_frame(&mut buf, storage, i, len, corrupt) {
        pool.give(buf);
        return Err(e);
    }
    if !compress {
        return Ok(WireChunk {
            frame: buf,
            compressed: None,
        });
    }
    // Room for less than the raw chunk only: what does not shrink is not worth sending.
    let mut z = pool.take();
    z.resize(CHUNK_HEADER_LEN + n.saturating_sub(1), 0);
    let started = Instant::now();
    let size = compression::compress_chunk(&buf[CHUNK_HEADER_LEN..], &mut z[CHUNK_HEADER_LEN..]);
    let took = started.elapsed();
    let frame = match size {
        Some(zn) => {
            pool.give(buf);
            z.truncate(CHUNK_HEADER_LEN + zn);
            z[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header_of(ty::CHUNK_ZSTD, i, zn as u32));
            z
        }
        None => {
            pool.give(z);
            buf
        }
    };
    Ok(WireChunk {
        frame,
        compressed: Some((took, size)),
    })
}

const SHUTTING_DOWN: &str = "seeder shutting down";

/// A peer admitted to a file's swarm, its `Hello` read, not yet answered.
/// A chunk that could not be read: if its file of a shared tree changed on disk, that file's
/// chunks are dropped from the share and the request is answered `NotHeld` (the rest of the
/// tree is still served); any other read error ends the connection.
async fn refuse_changed(
    file: &SharedFile,
    i: u32,
    e: std::io::Error,
    wr: &mut PeerWriter,
) -> Result<(), PeerError> {
    let Some(changed) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<FileChanged>())
    else {
        return Err(e.into());
    };
    tracing::warn!(file_id = %file.file_id, error = %changed, "no longer serving a file of the tree");
    file.forget_file(changed.entry);
    wr.send_now(&Frame::Reject {
        index: i,
        reason: RejectReason::NotHeld,
    })
    .await?;
    Ok(())
}

struct AdmittedPeer {
    conn: PeerConnection,
    file: Arc<SharedFile>,
    /// Its `Hello`: the capabilities it offered.
    hello: Hello,
    /// Its place under the per-certificate cap, held as long as the connection.
    _slot: PeerSlot,
}

fn withdrawn_text(reason: &WithdrawReason) -> String {
    format!("file withdrawn: {}", reason.remote)
}

fn withdrawn_text_of(reason: Option<WithdrawReason>) -> String {
    reason.map_or_else(|| "file withdrawn".to_string(), |r| withdrawn_text(&r))
}

/// How a connection ends when its file is withdrawn: the local reason, for the log.
fn withdrawn(reason: Option<WithdrawReason>) -> PeerError {
    PeerError::Withdrawn {
        reason: reason.map_or_else(|| "changed on disk".to_string(), |r| r.local),
    }
}

/// Binds `addr`; for the IPv6 wildcard, accepts IPv4 too (dual stack), falling back to the IPv4
/// wildcard on hosts without IPv6.
pub fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match listen_reusable(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            tracing::debug!(error = %e, "IPv6 wildcard unavailable; listening on IPv4 only");
            listen_reusable(SocketAddr::from(([0, 0, 0, 0], addr.port())))
        }
        Err(e) => Err(e),
    }
}

/// A listener with SO_REUSEADDR and SO_REUSEPORT, so a hole punch can dial out from its port
/// (see `punch`). A given port is first bound plainly, and let go: SO_REUSEPORT alone would
/// let a second agent of the same user share the port silently instead of saying it is in use.
fn listen_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    super::punch::reusable_socket(addr)?.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::{Entry, HashAlgo};

    /// A tree of 100 files of 4 KiB and one of 256 KiB, chunk size 256 KiB.
    fn small_tree() -> Manifest {
        let mut entries: Vec<Entry> = (0..100)
            .map(|i| Entry::file(format!("f{i:03}"), 4096, 0o644))
            .collect();
        entries.push(Entry::file("z-big", 256 * 1024, 0o644));
        let d = HashAlgo::Sha256.digest(b"");
        Manifest::tree("t", 256 * 1024, HashAlgo::Sha256, entries, vec![d; 101])
    }

    #[test]
    fn small_raw_chunks_go_together_up_to_one_buffer() {
        let m = small_tree();
        let budget = CHUNK_HEADER_LEN + 256 * 1024;
        let mut g = Governor::new(compression::Mode::Off);
        let mut q: VecDeque<u32> = (0..101).collect();
        let (first, compress) = take_raw_batch(&mut q, &m, &mut g, budget);
        assert!(!compress);
        // 63 frames of 4 KiB + 9 fit in 256 KiB + 9; the 64th does not.
        assert_eq!(first, (0..63).collect::<Vec<_>>());
        let (second, _) = take_raw_batch(&mut q, &m, &mut g, budget);
        assert_eq!(
            second,
            (63..100).collect::<Vec<_>>(),
            "the big chunk does not fit"
        );
        let (third, _) = take_raw_batch(&mut q, &m, &mut g, budget);
        assert_eq!(third, vec![100], "a full-size chunk goes alone");
        assert!(q.is_empty());
    }

    #[test]
    fn a_chunk_to_compress_goes_alone_and_ends_a_batch() {
        let m = small_tree();
        let budget = CHUNK_HEADER_LEN + 256 * 1024;
        // Always: every chunk is compressed, one at a time.
        let mut g = Governor::new(compression::Mode::Always);
        let mut q: VecDeque<u32> = (0..5).collect();
        assert_eq!(take_raw_batch(&mut q, &m, &mut g, budget), (vec![0], true));
        // Auto with nothing measured: the first chunk is a probe and goes alone; the next ones,
        // raw (no drain rate yet), go together.
        let mut g = Governor::new(compression::Mode::Auto);
        let mut q: VecDeque<u32> = (0..5).collect();
        assert_eq!(take_raw_batch(&mut q, &m, &mut g, budget), (vec![0], true));
        g.record_compression(4096, Some(100), Duration::from_micros(10));
        assert_eq!(
            take_raw_batch(&mut q, &m, &mut g, budget),
            ((1..5).collect(), false)
        );
    }
}
