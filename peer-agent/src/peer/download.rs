//! One peer connection of a download: connect with the pinned fingerprint, exchange `Hello`s
//! and bitfields, keep a window of requests out, verify and write what arrives.
//!
//! A peer that stops sending loses its requests after a stall timeout adapted to its measured
//! rate; halfway there it is marked lagging, so end-game copies of its chunks go to peers that
//! keep up. Protocol violations score the peer like a bad chunk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use torrentguard_protocol::api::PeerInfo;
use torrentguard_protocol::wire::{Frame, PROTOCOL_VERSION, RejectReason, WireError, frame_bound};
use torrentguard_protocol::{Bitfield, Fingerprint};
use torrentguard_trust::config::{peer_client_config, peer_server_name};

use super::frames::{FrameReader, Incoming, write_frame};
use crate::download::{
    BAD_CHUNK_PENALTY, BAN_THRESHOLD, CONNECT_TIMEOUT, MID_FRAME_PENALTY, PeerEnd,
    SOCKET_READ_BUFFER, STALL_PENALTY, Shared, SpeedMeter, VERIFY_DEPTH, VIOLATION_PENALTY,
};
use crate::events::Event;
use crate::torrent::ChunkStorage;
use crate::torrent::picker::PeerSlot;

/// How long a chunk a peer answered `Busy` for is not asked of that peer again.
const BUSY_BACKOFF: Duration = Duration::from_secs(2);
/// Least stall timeout, however fast the peer was.
pub const MIN_STALL: Duration = Duration::from_secs(2);
/// Stall timeout in multiples of the time one chunk takes at the peer's measured rate.
pub const STALL_CHUNK_TIMES: u32 = 4;

/// How one peer connection failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Connecting, the TLS handshake or the network failed, or the peer went away between
    /// frames: retried with backoff, not scored.
    #[error("{0}")]
    Network(String),
    /// The peer broke the protocol (bad frame, bad `Hello`, unrequested chunk, out-of-range
    /// index): scored like a bad chunk.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The connection ended inside a frame, typically mid-chunk: scored lightly, so a peer
    /// that keeps doing it is banned while one that restarts once is not.
    #[error("connection dropped in the middle of a frame")]
    MidFrame,
}

impl PeerError {
    /// Penalty points this failure costs the peer.
    fn penalty(&self) -> u32 {
        match self {
            PeerError::Network(_) => 0,
            PeerError::Violation(_) => VIOLATION_PENALTY,
            PeerError::MidFrame => MID_FRAME_PENALTY,
        }
    }
}

impl From<WireError> for PeerError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => PeerError::MidFrame,
            // A peer killed between frames: rustls reports the missing close_notify with a
            // link to its manual; the user needs only to know the connection dropped.
            WireError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                PeerError::Network("connection dropped by the peer (no orderly close)".into())
            }
            WireError::Io(e) => PeerError::Network(e.to_string()),
            other => PeerError::Violation(other.to_string()),
        }
    }
}

impl From<std::io::Error> for PeerError {
    fn from(e: std::io::Error) -> Self {
        PeerError::Network(e.to_string())
    }
}

fn violation(what: impl Into<String>) -> PeerError {
    PeerError::Violation(what.into())
}

/// The stall timeout of a peer last measured at `rate_bps` (0: not measured yet):
/// `STALL_CHUNK_TIMES` × one chunk's time at that rate, at least `MIN_STALL`, at most `cap`.
pub fn stall_after(chunk_size: u32, rate_bps: u64, cap: Duration) -> Duration {
    let cap = cap.max(MIN_STALL);
    if rate_bps == 0 {
        return cap;
    }
    let one = Duration::from_secs_f64(f64::from(chunk_size) / rate_bps as f64);
    one.saturating_mul(STALL_CHUNK_TIMES).clamp(MIN_STALL, cap)
}

/// Releases a peer's outstanding requests and availability however its task ends.
struct PeerGuard<'a> {
    sh: &'a Shared,
    slot: PeerSlot,
    inflight: Vec<(u32, Instant)>,
    has: Bitfield,
}

impl Drop for PeerGuard<'_> {
    fn drop(&mut self) {
        let mut p = self.sh.picker();
        // Everything the picker has on this peer, including chunks still being verified.
        p.release_peer(self.slot);
        p.remove_availability(&self.has);
    }
}

/// What one peer connection leaves for the next one to the same peer.
pub struct PeerMemory {
    pub penalty: u32,
    /// Its last measured rate, bytes per second (0: none yet).
    pub rate: u64,
}

/// Runs one peer connection until the download ends or the peer fails. Returns how it ended
/// and what to remember of the peer.
pub(crate) async fn run_peer(
    sh: Arc<Shared>,
    peer: PeerInfo,
    mut mem: PeerMemory,
) -> (PeerEnd, PeerMemory) {
    let end = match peer_session(&sh, &peer, &mut mem).await {
        Ok(e) => e,
        Err(e) => {
            mem.penalty += e.penalty();
            PeerEnd::Failed(e.to_string())
        }
    };
    let end = match end {
        PeerEnd::Failed(r) if mem.penalty >= BAN_THRESHOLD => PeerEnd::Banned(r),
        other => other,
    };
    (end, mem)
}

type Inbox = mpsc::Receiver<Result<Option<Incoming>, WireError>>;
type Writer =
    tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::io::BufReader<TcpStream>>>;

/// Aborts the reader task when the session ends.
struct Abort(tokio::task::AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to `peer` over pinned TLS and sends our `Hello` and bitfield.
async fn connect(sh: &Shared, peer: &PeerInfo) -> Result<(Inbox, Writer, Abort), PeerError> {
    let addr = SocketAddr::new(peer.address, peer.port);
    let net = |what: String| PeerError::Network(what);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r.map_err(|e| net(format!("connecting to {addr}: {e}")))?,
        Err(_) => {
            return Err(net(format!(
                "connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    let config = peer_client_config(&sh.identity, peer.fingerprint)
        .map_err(|e| net(format!("TLS configuration: {e}")))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(
            peer_server_name(),
            // rustls asks the socket for at most 4 KiB at a time; a large read buffer below it
            // turns ~260 000 read syscalls per GiB into ~4 000.
            tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp),
        ),
    )
    .await
    .map_err(|_| {
        net(format!(
            "TLS handshake with {addr}: no answer within {CONNECT_TIMEOUT:?}"
        ))
    })?
    .map_err(|e| net(format!("TLS handshake with {addr} failed: {e}")))?;
    let (_, session) = tls.get_ref();
    let cipher = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let group = session
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    tracing::debug!(peer = %addr, fingerprint = %peer.fingerprint, %cipher, %group, "connected to peer");
    sh.events.emit(Event::PeerConnected {
        file_id: sh.file_id,
        fingerprint: peer.fingerprint,
        address: addr,
        cipher,
        group,
    });

    let (rd, mut wr) = tokio::io::split(tls);
    let mut scratch = BytesMut::with_capacity(256);
    let n = sh.manifest.chunk_count();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        file_id: sh.file_id,
        chunk_count: n,
    };
    write_frame(&mut wr, &hello, &mut scratch).await?;
    let own = Frame::Bitfield(sh.shared_file.have().as_bytes().to_vec().into());
    write_frame(&mut wr, &own, &mut scratch).await?;
    wr.flush().await?;

    // The reader runs in its own task (select! must never cut a read short); the small channel
    // bounds how many chunk buffers can be queued. `Ok(None)` is a clean close between frames.
    let (tx, rx) = mpsc::channel(2);
    let pool = sh.pool.clone();
    let bound = frame_bound(sh.manifest.chunk_size, n);
    let span = tracing::debug_span!("download", peer = %addr, fingerprint = %peer.fingerprint);
    let failure = crate::spawn::Failure::Fault;
    let reader_task = crate::spawn::spawn("download-reader", span, failure, async move {
        let mut reader = FrameReader::new(rd);
        let mut hello_seen = false;
        loop {
            let r = reader.next(&pool).await;
            let stop = !matches!(r, Ok(Some(_)));
            if let Ok(Some(Incoming::Control(Frame::Hello { .. }))) = &r
                && !hello_seen
            {
                hello_seen = true;
                reader.set_max_frame(bound);
            }
            if tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    Ok((rx, wr, Abort(reader_task.abort_handle())))
}

/// Reads the peer's `Hello` and bitfield.
async fn handshake(sh: &Shared, rx: &mut Inbox) -> Result<Bitfield, PeerError> {
    let n = sh.manifest.chunk_count();
    let mut next = async || -> Result<Frame, PeerError> {
        let msg = tokio::time::timeout(CONNECT_TIMEOUT, rx.recv())
            .await
            .map_err(|_| PeerError::Network(format!("no handshake within {CONNECT_TIMEOUT:?}")))?;
        match msg {
            Some(Ok(Some(Incoming::Control(Frame::Bye { text, .. })))) => {
                Err(PeerError::Network(format!("peer refused: {text}")))
            }
            Some(Ok(Some(Incoming::Control(f)))) => Ok(f),
            Some(Ok(Some(Incoming::Chunk { .. }))) => Err(violation("chunk before handshake")),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(None)) | None => Err(PeerError::Network(
                "connection closed during handshake".into(),
            )),
        }
    };
    match next().await? {
        Frame::Hello {
            version,
            file_id,
            chunk_count,
        } if version == PROTOCOL_VERSION && file_id == sh.file_id && chunk_count == n => {}
        other => return Err(violation(format!("bad Hello: {other:?}"))),
    }
    match next().await? {
        Frame::Bitfield(b) => {
            Bitfield::from_bytes(&b, n).map_err(|e| violation(format!("bad Bitfield: {e}")))
        }
        other => Err(violation(format!(
            "expected Bitfield, got {}",
            other.name()
        ))),
    }
}

/// Per-connection state of the request loop.
struct Session<'a> {
    sh: &'a Arc<Shared>,
    fp: Fingerprint,
    g: PeerGuard<'a>,
    wr: Writer,
    scratch: BytesMut,
    /// Chunks cancelled after another peer delivered them; their data may still come.
    cancelled: Vec<u32>,
    /// Chunks this peer answered `Busy` for, not to be asked of it again until the instant.
    deferred: Vec<(u32, Instant)>,
    verifying: FuturesOrdered<tokio::task::JoinHandle<Verified>>,
    meter: SpeedMeter,
    received: u64,
    /// Last chunk arrival, or the moment requests went out to an idle peer.
    last_progress: Instant,
    /// Lagging in the picker: not delivered yet, or overdue.
    lagging: bool,
}

async fn peer_session(
    sh: &Arc<Shared>,
    peer: &PeerInfo,
    mem: &mut PeerMemory,
) -> Result<PeerEnd, PeerError> {
    let (mut rx, wr, _abort) = connect(sh, peer).await?;
    let has = handshake(sh, &mut rx).await?;
    let slot = PeerSlot(sh.next_slot.fetch_add(1, Ordering::Relaxed));
    {
        let mut p = sh.picker();
        p.add_availability(&has);
        // Unproven on this connection until a chunk arrives: no end-game copies yet.
        p.set_lagging(slot, true);
    }
    let mut s = Session {
        sh,
        fp: peer.fingerprint,
        g: PeerGuard {
            sh,
            slot,
            inflight: Vec::new(),
            has,
        },
        wr,
        scratch: BytesMut::with_capacity(256),
        cancelled: Vec::new(),
        deferred: Vec::new(),
        verifying: FuturesOrdered::new(),
        meter: SpeedMeter::new(0),
        received: 0,
        last_progress: Instant::now(),
        lagging: true,
    };
    s.run(&mut rx, mem).await
}

impl Session<'_> {
    /// Keeps the pipe full: enough requests out to cover ~250 ms at this peer's rate (a
    /// shaped or distant link queues for tens of milliseconds).
    async fn fill_window(&mut self) -> Result<(), PeerError> {
        let bps = self.meter.update(self.received);
        self.sh
            .peer_rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.fp, bps);
        let depth =
            ((bps / 4) / u64::from(self.sh.manifest.chunk_size.max(1)) + 2).clamp(2, 32) as usize;
        // Deferrals that ran out make their chunks askable again, before picking.
        let now = Instant::now();
        self.deferred.retain(|(_, until)| *until > now);
        let mut wrote = false;
        while self.g.inflight.len() < depth {
            let (inflight, deferred) = (&self.g.inflight, &self.deferred);
            let pick = self.sh.picker().pick(self.g.slot, &self.g.has, |i| {
                inflight.iter().any(|(x, _)| *x == i) || deferred.iter().any(|(x, _)| *x == i)
            });
            let Some(i) = pick else { break };
            if self.g.inflight.is_empty() {
                // The stall clock starts with the first request of a busy spell, not at the
                // last chunk of an earlier one.
                self.last_progress = now;
            }
            self.g.inflight.push((i, now));
            write_frame(&mut self.wr, &Frame::Request(i), &mut self.scratch).await?;
            wrote = true;
        }
        if wrote {
            self.wr.flush().await?;
        }
        Ok(())
    }

    async fn run(&mut self, rx: &mut Inbox, mem: &mut PeerMemory) -> Result<PeerEnd, PeerError> {
        let sh = self.sh;
        let mut completions = sh.completions.subscribe();
        let mut wake = sh.picker().subscribe();
        loop {
            // Seen before picking: a release after this pick wakes the select below.
            wake.borrow_and_update();
            self.fill_window().await?;
            if self.g.inflight.is_empty() && self.verifying.is_empty() && sh.picker().is_done() {
                self.bye("download complete").await;
                return Ok(PeerEnd::Finished);
            }
            let retry_deferred = self.deferred.iter().map(|(_, t)| *t).min();
            let stall = stall_after(sh.manifest.chunk_size, mem.rate, sh.stall_timeout);
            let stall_at = self.last_progress + stall;
            let overdue_at = self.last_progress + stall / 2;
            let busy = !self.g.inflight.is_empty();
            tokio::select! {
                msg = rx.recv() => {
                    if let Some(end) = self.on_message(msg, mem).await? {
                        return Ok(end);
                    }
                }
                Some(r) = self.verifying.next(), if !self.verifying.is_empty() => {
                    if let Some(end) = settle(sh, r, &mut mem.penalty, self.fp, self.g.slot) {
                        return Ok(end);
                    }
                }
                c = completions.recv() => {
                    if let Ok(i) = c {
                        self.on_completed_elsewhere(i).await?;
                    }
                }
                // A chunk was released somewhere, or a holder fell behind: try picking again.
                Ok(()) = wake.changed() => {}
                // A deferral runs out: loop round to ask for those chunks again.
                _ = tokio::time::sleep_until(retry_deferred.unwrap_or(self.last_progress).into()), if retry_deferred.is_some() => {}
                _ = tokio::time::sleep_until(overdue_at.into()), if busy && !self.lagging => {
                    self.lagging = true;
                    sh.picker().set_lagging(self.g.slot, true);
                }
                _ = tokio::time::sleep_until(stall_at.into()), if busy => {
                    return Ok(self.stalled(stall, mem));
                }
                _ = sh.cancel.cancelled() => {
                    self.bye("done").await;
                    return Ok(PeerEnd::Finished);
                }
            }
        }
    }

    async fn bye(&mut self, text: &str) {
        let bye = Frame::Bye {
            reason: 0,
            text: text.into(),
        };
        write_frame(&mut self.wr, &bye, &mut self.scratch)
            .await
            .ok();
        self.wr.shutdown().await.ok();
    }

    /// No data for `after` with requests out: the requests go elsewhere (the guard releases
    /// them when the session returns) and the peer is scored.
    fn stalled(&mut self, after: Duration, mem: &mut PeerMemory) -> PeerEnd {
        let sh = self.sh;
        mem.penalty += STALL_PENALTY;
        for (i, _) in &self.g.inflight {
            sh.events.emit(Event::ChunkRetry {
                file_id: sh.file_id,
                index: *i,
                fingerprint: self.fp,
                reason: "peer stalled".into(),
            });
        }
        sh.retries
            .fetch_add(self.g.inflight.len() as u32, Ordering::Relaxed);
        PeerEnd::Failed(format!("stalled: no data for {after:?}"))
    }

    /// Another peer delivered chunk `i` first (end game): cancel ours.
    async fn on_completed_elsewhere(&mut self, i: u32) -> Result<(), PeerError> {
        if let Some(pos) = self.g.inflight.iter().position(|(x, _)| *x == i) {
            self.g.inflight.swap_remove(pos);
            self.cancelled.push(i);
            write_frame(&mut self.wr, &Frame::Cancel(i), &mut self.scratch).await?;
            self.wr.flush().await?;
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Option<Incoming>, WireError>>,
        mem: &mut PeerMemory,
    ) -> Result<Option<PeerEnd>, PeerError> {
        match msg {
            Some(Ok(Some(Incoming::Chunk { index, data }))) => {
                self.on_chunk(index, data, mem).await
            }
            Some(Ok(Some(Incoming::Control(f)))) => self.on_control(f),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(None)) | None => Err(PeerError::Network("connection closed".into())),
        }
    }

    async fn on_chunk(
        &mut self,
        index: u32,
        data: Vec<u8>,
        mem: &mut PeerMemory,
    ) -> Result<Option<PeerEnd>, PeerError> {
        let sh = self.sh;
        if let Some(pos) = self.g.inflight.iter().position(|(i, _)| *i == index) {
            self.g.inflight.swap_remove(pos);
            self.last_progress = Instant::now();
            self.received += data.len() as u64;
            let bps = self.meter.update(self.received);
            if bps > 0 {
                mem.rate = bps;
            }
            if self.lagging {
                self.lagging = false;
                sh.picker().set_lagging(self.g.slot, false);
            }
            if self.verifying.len() >= VERIFY_DEPTH
                && let Some(r) = self.verifying.next().await
                && let Some(end) = settle(sh, r, &mut mem.penalty, self.fp, self.g.slot)
            {
                return Ok(Some(end));
            }
            self.verifying.push_back(verify_and_write(sh, index, data));
        } else if let Some(pos) = self.cancelled.iter().position(|i| *i == index) {
            self.cancelled.swap_remove(pos);
            sh.pool.give(data);
        } else {
            sh.pool.give(data);
            return Err(violation(format!(
                "sent chunk {index}, which was not requested"
            )));
        }
        Ok(None)
    }

    fn on_control(&mut self, f: Frame) -> Result<Option<PeerEnd>, PeerError> {
        let sh = self.sh;
        let n = sh.manifest.chunk_count();
        match f {
            Frame::Have(i) if i < n => {
                if !self.g.has.get(i) {
                    self.g.has.set(i);
                    sh.picker().add_have(i);
                }
            }
            Frame::Have(i) => return Err(violation(format!("Have({i}) beyond the {n} chunks"))),
            Frame::Reject { index, reason } => self.on_reject(index, reason),
            Frame::Bye { text, .. } => {
                return Ok(Some(PeerEnd::Failed(format!("peer closed: {text}"))));
            }
            other => return Err(violation(format!("unexpected {} frame", other.name()))),
        }
        Ok(None)
    }

    fn on_reject(&mut self, index: u32, reason: RejectReason) {
        let sh = self.sh;
        if let Some(pos) = self.g.inflight.iter().position(|(i, _)| *i == index) {
            self.g.inflight.swap_remove(pos);
            sh.picker().release(index, self.g.slot);
            match reason {
                RejectReason::NotHeld => {
                    self.g.has.clear(index);
                    sh.retries.fetch_add(1, Ordering::Relaxed);
                }
                // The seeder just gave this chunk to another downloader, who will pass it
                // on: ask someone else, or this peer again later.
                RejectReason::Busy => self.deferred.push((index, Instant::now() + BUSY_BACKOFF)),
                RejectReason::Invalid => {
                    sh.retries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // A reject of a cancelled (or unknown) request is the race with our Cancel: harmless.
        self.cancelled.retain(|i| *i != index);
    }
}

type Verified = (u32, Result<bool, std::io::Error>);

/// Hashes chunk `index` on the blocking pool and writes it if it matches.
fn verify_and_write(
    sh: &Arc<Shared>,
    index: u32,
    data: Vec<u8>,
) -> tokio::task::JoinHandle<Verified> {
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || {
        let m = &sh.manifest;
        let ok = m.chunk_matches(index, &data);
        let r = if ok {
            sh.store.storage().write_chunk(index, &data).map(|_| true)
        } else {
            Ok(false)
        };
        sh.pool.give(data);
        if matches!(r, Ok(true)) {
            // Verified and on disk: the in-order hasher reads it back from the file, so the
            // whole-file digest covers the bytes that will be renamed into place. Nothing to do
            // if it is gone (the download is ending).
            let _ = sh.hasher.send(index);
        }
        (index, r)
    })
}

/// Applies a verification result. Returns how the peer ends, if it must.
fn settle(
    sh: &Shared,
    r: Result<Verified, tokio::task::JoinError>,
    penalty: &mut u32,
    fp: Fingerprint,
    slot: PeerSlot,
) -> Option<PeerEnd> {
    let (index, r) = match r {
        Ok(x) => x,
        Err(e) => return Some(PeerEnd::Failed(format!("verification task failed: {e}"))),
    };
    match r {
        Ok(true) => {
            let new = sh.picker().complete(index);
            if new {
                sh.shared_file.add_chunk(index);
                let _ = sh.completions.send(index);
                sh.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                let len = sh.manifest.chunk_len(index) as u64;
                sh.bytes_done.fetch_add(len, Ordering::Relaxed);
                sh.bytes_fetched.fetch_add(len, Ordering::Relaxed);
                sh.dirty.store(true, Ordering::Relaxed);
                if sh.picker().is_done() {
                    sh.done.notify_one();
                }
            }
            None
        }
        Ok(false) => {
            sh.picker().release(index, slot);
            sh.retries.fetch_add(1, Ordering::Relaxed);
            *penalty += BAD_CHUNK_PENALTY;
            tracing::warn!(peer = %fp, index, "chunk failed verification; discarded, will be fetched again");
            sh.events.emit(Event::ChunkRetry {
                file_id: sh.file_id,
                index,
                fingerprint: fp,
                reason: "digest mismatch".into(),
            });
            (*penalty >= BAN_THRESHOLD).then(|| {
                PeerEnd::Banned(format!(
                    "sent chunks that fail verification (chunk {index})"
                ))
            })
        }
        Err(e) => {
            sh.picker().release(index, slot);
            tracing::error!(error = %e, index, "writing a verified chunk failed");
            *sh.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            sh.done.notify_one();
            Some(PeerEnd::Fatal)
        }
    }
}
