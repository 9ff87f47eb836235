//! The download side of a peer connection: one peer of a download. Connects with the pinned
//! fingerprint, exchanges `Hello`s and bitfields, keeps a window of requests out, verifies and
//! writes what arrives.
//!
//! A peer that stops sending loses its requests after a stall timeout adapted to its measured
//! rate; halfway there it is marked lagging, so end-game copies of its chunks go to peers that
//! keep up. Protocol violations score the peer like a bad chunk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use torrentguard_protocol::api::PeerInfo;
use torrentguard_protocol::compression::{self, DecompressError, caps};
use torrentguard_protocol::wire::{CHUNK_HEADER_LEN, Frame, RejectReason, WireError, frame_bound};
use torrentguard_protocol::{Bitfield, Fingerprint};
use torrentguard_trust::Identity;

use super::connection::{CONNECT_TIMEOUT, Hello, Inbox, PeerWriter};
use super::dial::{DialContext, DialTarget, Dialled, RELAY_UPGRADE_EVERY, dial, upgrade};
use super::error::{PeerError, Violation};
use super::frames::{BufferPool, Incoming};
use super::transport::Path;
use crate::events::Event;
use crate::rate::{RateLimit, Turn};
use crate::torrent::download::{DownloadState, SpeedMeter};
use crate::torrent::picker::PeerSlot;
use crate::torrent::window::RequestWindow;

/// Penalty points at which a peer is dropped for the rest of the download.
pub const BAN_THRESHOLD: u32 = 10;
const BAD_CHUNK_PENALTY: u32 = 5;
/// Penalty of a protocol violation (bad frame, bad `Hello`, unrequested chunk, out-of-range
/// index): as much as a bad chunk, so two of them ban the peer.
pub const VIOLATION_PENALTY: u32 = 5;
/// Penalty of a connection that ends inside a frame (e.g. mid-chunk): five of them ban.
pub const MID_FRAME_PENALTY: u32 = 2;
/// Penalty of a stall: five of them ban.
pub const STALL_PENALTY: u32 = 2;
/// Chunks being hashed/written per connection while the next ones are read.
const VERIFY_DEPTH: usize = 3;
/// How long a broken connection's reader is given to yield the peer's `Bye`.
const BYE_GRACE: Duration = Duration::from_millis(500);
/// Raw chunks up to this long are verified and written in the connection's task: for them
/// the blocking pool's hand-off costs more than the work.
const INLINE_VERIFY_MAX: usize = 16 * 1024;
/// How long a chunk a peer answered `Busy` for is not asked of that peer again.
const BUSY_BACKOFF: Duration = Duration::from_secs(2);
/// Least stall timeout, however fast the peer was.
pub const MIN_STALL: Duration = Duration::from_secs(2);
/// Stall timeout in multiples of the time one chunk takes at the peer's measured rate.
pub const STALL_CHUNK_TIMES: u32 = 4;

/// Penalty points a connection that ended in `e` costs the peer. Network trouble and clean
/// disconnects cost nothing (retried with backoff); a drop inside a frame costs a little, so
/// a peer that keeps doing it is banned while one that restarts once is not.
fn penalty(e: &PeerError) -> u32 {
    match e {
        PeerError::Protocol(_) => VIOLATION_PENALTY,
        PeerError::MidFrame => MID_FRAME_PENALTY,
        // A stall and bad chunks are scored where they are seen (the connection may go on).
        _ => 0,
    }
}

/// How one peer connection of a download ended.
#[derive(Debug)]
pub enum PeerEnd {
    /// The download is complete or stopping.
    Finished,
    Failed(PeerError),
    Banned(PeerError),
    /// A local write failed: the whole download must stop.
    Fatal,
    /// A relayed peer was reached another way: the relayed connection ended (its requests back
    /// in the queue) and the new one takes over. Handled inside [`run_peer`], never returned.
    Switched(Box<Dialled>),
}

/// What every peer task of one download shares: the download's state, and what the network
/// side adds to it (the identity it connects as, the pool its readers fill, whether it offers
/// to take compressed chunks, the download limit its requests are paced by).
pub struct DownloadPeers {
    pub state: Arc<DownloadState>,
    pub identity: Arc<Identity>,
    pub pool: BufferPool,
    pub compression: compression::Mode,
    pub limit: Arc<RateLimit>,
    /// How to reach peers behind a NAT (introductions, our listening port, the punches the
    /// listener hands over, our own reach).
    pub dial: Arc<dyn Fn() -> DialContext + Send + Sync>,
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
    sh: &'a DownloadState,
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
    /// The relay garbled this peer's stream in this download: reach it another way.
    pub avoid_relay: bool,
    /// How the last connection reached the peer.
    pub path: Option<Path>,
}

/// Runs one peer connection until the download ends or the peer fails. Returns how it ended
/// and what to remember of the peer.
pub async fn run_peer(
    peers: Arc<DownloadPeers>,
    peer: PeerInfo,
    mut mem: PeerMemory,
) -> (PeerEnd, PeerMemory) {
    let mut dialled = None;
    let end = loop {
        match peer_session(&peers, &peer, &mut mem, dialled.take()).await {
            Ok(PeerEnd::Switched(d)) => dialled = Some(*d),
            other => break other,
        }
    };
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            let e = relay_tampering(e, &peer, &mut mem);
            mem.penalty += penalty(&e);
            PeerEnd::Failed(e)
        }
    };
    let end = match end {
        PeerEnd::Failed(e) if mem.penalty >= BAN_THRESHOLD => PeerEnd::Banned(e),
        other => other,
    };
    (end, mem)
}

/// A relayed connection whose TLS records stopped decrypting was tampered with on the way (our
/// TLS runs end to end through the relay): a TLS error, the peer's fault no more than a
/// network's, and the relay is not used for this peer again in this download.
pub(crate) fn relay_tampering(e: PeerError, peer: &PeerInfo, mem: &mut PeerMemory) -> PeerError {
    let garbled = matches!(&e, PeerError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData);
    if mem.path != Some(Path::Relayed) || !garbled {
        return e;
    }
    mem.avoid_relay = true;
    let PeerError::Io(source) = e else {
        return e;
    };
    tracing::warn!(peer = %peer.fingerprint, error = %source, "relayed stream garbled: not using the relay for this peer again");
    PeerError::Tls {
        addr: SocketAddr::new(peer.address, peer.port),
        source,
    }
}

/// Connects to `peer` over pinned TLS and runs the handshake: our `Hello` and bitfield, then
/// theirs. Returns the peer's bitfield and the connection with its reader running.
///
/// With compression off our `Hello` is the short one, so seeders from before capabilities
/// (which refuse any other length) still serve us; otherwise it offers zstd.
async fn connect(
    peers: &DownloadPeers,
    peer: &PeerInfo,
    mem: &mut PeerMemory,
    dialled: Option<Dialled>,
) -> Result<Connected, PeerError> {
    let sh = &*peers.state;
    let addr = SocketAddr::new(peer.address, peer.port);
    let target = DialTarget {
        file: sh.file_id,
        fingerprint: peer.fingerprint,
        addr,
        reach: peer.reach,
        avoid_relay: mem.avoid_relay,
    };
    let Dialled {
        mut conn,
        path,
        tries,
        after,
    } = match dialled {
        Some(d) => d,
        None => dial(&(peers.dial)(), &target).await?,
    };
    mem.path = Some(path);
    sh.events.emit(Event::PeerConnected {
        file_id: sh.file_id,
        fingerprint: peer.fingerprint,
        address: addr,
        cipher: conn.negotiated.cipher.clone(),
        group: conn.negotiated.group.clone(),
        path,
        tries,
        after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
    });
    let n = sh.manifest.chunk_count();
    let caps = peers.compression.capabilities();
    let ours = Hello::ours(sh.file_id, n).with_capabilities((caps != 0).then_some(caps));
    conn.writer
        .send_handshake(ours, &sh.shared_file.have())
        .await?;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let hello = conn.recv_hello(&peers.pool, deadline).await?;
    if !hello.same_file(&ours) {
        let Hello {
            version,
            file_id,
            chunk_count,
            ..
        } = hello;
        return Err(Violation::BadHello {
            version,
            file_id,
            chunk_count,
        }
        .into());
    }
    conn.reader
        .set_max_frame(frame_bound(sh.manifest.chunk_size, n));
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let has = conn.recv_bitfield(&peers.pool, n, deadline).await?;
    // The reader runs in its own task (select! must never cut a read short); the small
    // channel bounds how many chunk buffers can be queued.
    let span = tracing::debug_span!("download", peer = %addr, fingerprint = %peer.fingerprint);
    let round_trip = conn.negotiated.round_trip;
    let (wr, rx, reader) = conn.spawn_reader("download-reader", span, peers.pool.clone(), 2);
    let zstd = ours.both_have(&hello, caps::ZSTD);
    tracing::debug!(peer = %addr, zstd, "peer handshake done");
    Ok(Connected {
        has,
        wr,
        rx,
        reader,
        round_trip,
        zstd,
    })
}

/// A connected peer after the handshake: its bitfield, our half of the stream, its frames
/// (the reader running), the TCP handshake's round trip, and whether both sides agreed on zstd.
struct Connected {
    has: Bitfield,
    wr: PeerWriter,
    rx: Inbox,
    reader: super::connection::ReaderGuard,
    round_trip: Option<Duration>,
    zstd: bool,
}

/// A search for a better path than the relay, polled by the request loop.
type Upgrade = Option<std::pin::Pin<Box<dyn std::future::Future<Output = Dialled> + Send>>>;

/// The better path, once found; pending forever when there is no search.
async fn poll_upgrade(u: &mut Upgrade) -> Option<Dialled> {
    match u {
        // Awaited through the box: a `select!` that drops this future loses no progress.
        Some(f) => {
            let d = f.as_mut().await;
            *u = None;
            Some(d)
        }
        None => std::future::pending().await,
    }
}

/// Per-connection state of the request loop.
struct Session<'a> {
    sh: &'a Arc<DownloadState>,
    pool: &'a BufferPool,
    fp: Fingerprint,
    g: PeerGuard<'a>,
    wr: PeerWriter,
    /// The download limit: a chunk's bytes are reserved on it before the chunk is asked for.
    limit: &'a RateLimit,
    /// A chunk picked whose request waits for its turn under the limit. Held in the picker
    /// for this peer meanwhile, but not in `inflight`: the peer is not late for it.
    paced: Option<(u32, Turn)>,
    /// Chunks cancelled after another peer delivered them; their data may still come.
    cancelled: Vec<u32>,
    /// Chunks this peer answered `Busy` for, not to be asked of it again until the instant.
    deferred: Vec<(u32, Instant)>,
    verifying: FuturesOrdered<tokio::task::JoinHandle<Verified>>,
    meter: SpeedMeter,
    /// How many requests to keep out, from the measured round trip and rate.
    window: RequestWindow,
    received: u64,
    /// Last chunk arrival, or the moment requests went out to an idle peer.
    last_progress: Instant,
    /// Lagging in the picker: not delivered yet, or overdue.
    lagging: bool,
    /// Both `Hello`s offered zstd: `ChunkZstd` frames are allowed.
    zstd: bool,
    /// A relayed connection's search for a path without the relay.
    upgrade: Upgrade,
}

async fn peer_session(
    peers: &DownloadPeers,
    peer: &PeerInfo,
    mem: &mut PeerMemory,
    dialled: Option<Dialled>,
) -> Result<PeerEnd, PeerError> {
    let sh = &peers.state;
    let Connected {
        has,
        wr,
        mut rx,
        reader: _reader,
        round_trip,
        zstd,
    } = connect(peers, peer, mem, dialled).await?;
    // Through the relay: keep looking for a better path meanwhile.
    let upgrading: Upgrade = if mem.path == Some(Path::Relayed) {
        let target = DialTarget {
            file: sh.file_id,
            fingerprint: peer.fingerprint,
            addr: SocketAddr::new(peer.address, peer.port),
            reach: peer.reach,
            avoid_relay: true,
        };
        let context = peers.dial.clone();
        Some(Box::pin(upgrade(
            move || context(),
            target,
            RELAY_UPGRADE_EVERY,
        )))
    } else {
        None
    };
    let slot = PeerSlot(sh.next_slot.fetch_add(1, Ordering::Relaxed));
    {
        let mut p = sh.picker();
        p.add_availability(&has);
        // Unproven on this connection until a chunk arrives: no end-game copies yet.
        p.set_lagging(slot, true);
    }
    let mut s = Session {
        sh,
        pool: &peers.pool,
        fp: peer.fingerprint,
        g: PeerGuard {
            sh,
            slot,
            inflight: Vec::new(),
            has,
        },
        wr,
        limit: &peers.limit,
        paced: None,
        cancelled: Vec::new(),
        deferred: Vec::new(),
        verifying: FuturesOrdered::new(),
        meter: SpeedMeter::new(0),
        window: RequestWindow::for_manifest(&sh.manifest, round_trip, Instant::now()),
        received: 0,
        last_progress: Instant::now(),
        lagging: true,
        zstd,
        upgrade: upgrading,
    };
    s.run(&mut rx, mem).await
}

impl Drop for Session<'_> {
    /// A connection that ends while its next request waits for its turn gives the turn back,
    /// so the other downloads under the limit do not wait through it.
    fn drop(&mut self) {
        if let Some((_, turn)) = self.paced.take() {
            self.limit.give_back(turn);
        }
    }
}

impl Session<'_> {
    /// Keeps the pipe full: enough requests out to cover the bandwidth-delay product to this
    /// peer (see `RequestWindow`).
    async fn fill_window(&mut self) -> Result<(), PeerError> {
        let bps = self.meter.update(self.received);
        self.sh
            .peer_rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.fp, (bps, self.received));
        let depth = self.window.depth();
        let now = Instant::now();
        // A chunk whose turn under the limit has come goes at once, batch or not: it was
        // picked with room in the window, and only requests fill the window.
        let mut wrote = false;
        if let Some((i, turn)) = self.paced
            && self.limit.is_due(turn)
        {
            self.paced = None;
            self.request(i, now).await?;
            wrote = true;
        }
        // Requests go out a quarter of the window at a time, not one per chunk received: one
        // write and one TLS record for many requests, and the seeder finds them queued together
        // (a tree of small files moves thousands of chunks a second).
        if self.paced.is_none() && self.g.inflight.len() + (depth / 4).max(1) <= depth {
            wrote |= self.request_more(depth, now).await?;
        }
        if wrote {
            self.wr.flush().await?;
        }
        Ok(())
    }

    /// Picks and asks for chunks until the window is full, the peer has nothing more we want,
    /// or the download limit makes the next one wait its turn. Whether any request was written.
    async fn request_more(&mut self, depth: usize, now: Instant) -> Result<bool, PeerError> {
        // Deferrals that ran out make their chunks askable again, before picking.
        self.deferred.retain(|(_, until)| *until > now);
        let mut wrote = false;
        while self.g.inflight.len() < depth {
            let (inflight, deferred) = (&self.g.inflight, &self.deferred);
            let pick = self.sh.picker().pick(self.g.slot, &self.g.has, |i| {
                inflight.iter().any(|(x, _)| *x == i) || deferred.iter().any(|(x, _)| *x == i)
            });
            let Some(i) = pick else { break };
            // Picked before reserving: the limit counts each chunk's own length (a tree's
            // chunks are often far shorter than the chunk size).
            let len = self.sh.manifest.chunk_len(i) as usize;
            if let Some(turn) = self.limit.reserve(len) {
                self.paced = Some((i, turn));
                break;
            }
            self.request(i, now).await?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Asks for chunk `i` (buffered: the caller flushes).
    async fn request(&mut self, i: u32, now: Instant) -> Result<(), PeerError> {
        if self.g.inflight.is_empty() {
            // The stall clock starts with the first request of a busy spell, not at the
            // last chunk of an earlier one.
            self.last_progress = now;
        }
        self.g.inflight.push((i, now));
        self.wr.send(&Frame::Request(i)).await?;
        Ok(())
    }

    /// The request loop; a write that fails because the peer closed (it said `Bye` first)
    /// ends with the peer's reason rather than the broken pipe.
    async fn run(&mut self, rx: &mut Inbox, mem: &mut PeerMemory) -> Result<PeerEnd, PeerError> {
        match self.request_loop(rx, mem).await {
            Err(PeerError::Io(e)) => match said_bye(rx, self.pool).await {
                Some(reason) => Ok(PeerEnd::Failed(PeerError::Closed { reason })),
                None => Err(PeerError::Io(e)),
            },
            other => other,
        }
    }

    async fn request_loop(
        &mut self,
        rx: &mut Inbox,
        mem: &mut PeerMemory,
    ) -> Result<PeerEnd, PeerError> {
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
            let (limit, paced) = (self.limit, self.paced.map(|(_, turn)| turn));
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
                // A path without the relay works: end this one cleanly (the guard gives its
                // requests back), the new connection takes over.
                Some(d) = poll_upgrade(&mut self.upgrade) => {
                    tracing::info!(peer = %self.fp, path = %d.path, "relayed peer reached without the relay; switching");
                    self.bye("switching to a path without the relay").await;
                    return Ok(PeerEnd::Switched(Box::new(d)));
                }
                // The paced chunk's turn came: loop round to ask for it.
                _ = wait_turn(limit, paced), if paced.is_some() => {}
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
        self.wr.bye(0, text).await;
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
        PeerEnd::Failed(PeerError::Stalled { after })
    }

    /// Another peer delivered chunk `i` first (end game): cancel ours. A paced chunk's turn
    /// goes back to the limit for the requests queued behind it.
    async fn on_completed_elsewhere(&mut self, i: u32) -> Result<(), PeerError> {
        if let Some((x, turn)) = self.paced
            && x == i
        {
            self.paced = None;
            self.limit.give_back(turn);
        }
        if let Some(pos) = self.g.inflight.iter().position(|(x, _)| *x == i) {
            self.g.inflight.swap_remove(pos);
            self.cancelled.push(i);
            self.wr.send_now(&Frame::Cancel(i)).await?;
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Option<Incoming>, WireError>>,
        mem: &mut PeerMemory,
    ) -> Result<Option<PeerEnd>, PeerError> {
        match msg {
            Some(Ok(Some(Incoming::Chunk {
                index,
                data,
                compressed,
            }))) => {
                if compressed && !self.zstd {
                    self.pool.give(data);
                    let when = "on a connection that did not agree on zstd";
                    return Err(Violation::Unexpected {
                        frame: "ChunkZstd",
                        when,
                    }
                    .into());
                }
                self.on_chunk(index, data, compressed, mem).await
            }
            Some(Ok(Some(Incoming::Control(f)))) => self.on_control(f),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(None)) | None => Err(PeerError::Disconnected),
        }
    }

    async fn on_chunk(
        &mut self,
        index: u32,
        data: Vec<u8>,
        compressed: bool,
        mem: &mut PeerMemory,
    ) -> Result<Option<PeerEnd>, PeerError> {
        let sh = self.sh;
        // What the wire carried for chunks, to set against the chunks' own bytes.
        sh.bytes_on_wire
            .fetch_add((CHUNK_HEADER_LEN + data.len()) as u64, Ordering::Relaxed);
        if let Some(pos) = self.g.inflight.iter().position(|(i, _)| *i == index) {
            let (_, asked) = self.g.inflight.swap_remove(pos);
            let now = Instant::now();
            self.last_progress = now;
            // The chunk's bytes, not the wire's: the rate sizes windows and stalls in chunks.
            self.received += u64::from(sh.manifest.chunk_len(index));
            self.window.on_round_trip(now.duration_since(asked));
            self.window.on_delivered(now, self.received);
            if compressed {
                sh.chunks_compressed.fetch_add(1, Ordering::Relaxed);
            }
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
            let pool = self.pool.clone();
            if !compressed && data.len() <= INLINE_VERIFY_MAX {
                // A small chunk (a tree of small files): hashing and writing it takes a few
                // microseconds, less than handing it to the blocking pool and back.
                let r = verify_write(sh, &pool, index, data, false);
                if let Some(end) = settle(sh, Ok(r), &mut mem.penalty, self.fp, self.g.slot) {
                    return Ok(Some(end));
                }
            } else {
                self.verifying
                    .push_back(verify_and_write(sh, pool, index, data, compressed));
            }
        } else if let Some(pos) = self.cancelled.iter().position(|i| *i == index) {
            self.cancelled.swap_remove(pos);
            self.pool.give(data);
        } else {
            self.pool.give(data);
            return Err(Violation::Unrequested(index).into());
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
            Frame::Have(i) => {
                return Err(Violation::OutOfRange {
                    index: i,
                    chunks: n,
                }
                .into());
            }
            Frame::Reject { index, reason } => self.on_reject(index, reason),
            Frame::Bye { text, .. } => {
                return Ok(Some(PeerEnd::Failed(PeerError::Closed { reason: text })));
            }
            other => {
                let frame = other.name();
                let when = "from a seeder";
                return Err(Violation::Unexpected { frame, when }.into());
            }
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

/// Waits for `turn` if there is one (a `select!` branch needs a future either way).
async fn wait_turn(limit: &RateLimit, turn: Option<Turn>) {
    match turn {
        Some(turn) => limit.wait(turn).await,
        None => std::future::pending().await,
    }
}

/// What became of a received chunk.
#[derive(Debug)]
enum Checked {
    /// Verified and written.
    Written,
    /// Its digest did not match.
    Mismatch,
    /// A compressed chunk that did not decode to exactly its length.
    Undecodable(DecompressError),
}

type Verified = (u32, Result<Checked, std::io::Error>);

/// What a peer whose connection broke under our write said before it closed: the frames its
/// reader still has, up to the end of the stream, within `BYE_GRACE`.
async fn said_bye(rx: &mut Inbox, pool: &BufferPool) -> Option<String> {
    let deadline = tokio::time::Instant::now() + BYE_GRACE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(Some(Incoming::Control(Frame::Bye { text, .. }))))) => return Some(text),
            Ok(Some(Ok(Some(Incoming::Chunk { data, .. })))) => pool.give(data),
            Ok(Some(Ok(Some(Incoming::Control(_))))) => {}
            _ => return None,
        }
    }
}

/// On the blocking pool: [`verify_write`].
fn verify_and_write(
    sh: &Arc<DownloadState>,
    pool: BufferPool,
    index: u32,
    data: Vec<u8>,
    compressed: bool,
) -> tokio::task::JoinHandle<Verified> {
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || verify_write(&sh, &pool, index, data, compressed))
}

/// Decodes chunk `index` if it came compressed, hashes it and writes it if it matches.
/// Blocking.
fn verify_write(
    sh: &DownloadState,
    pool: &BufferPool,
    index: u32,
    data: Vec<u8>,
    compressed: bool,
) -> Verified {
    let data = if compressed {
        match decompress(sh, pool, index, data) {
            Ok(d) => d,
            Err(e) => return (index, Ok(Checked::Undecodable(e))),
        }
    } else {
        data
    };
    let m = &sh.manifest;
    let ok = m.chunk_matches(index, &data);
    let r = if ok {
        sh.storage.write_chunk(index, &data).map(|_| true)
    } else {
        Ok(false)
    };
    // The same verified bytes are every identical chunk's too.
    let r = match (r, sh.copies.get(&index)) {
        (Ok(true), Some(group)) => group
            .iter()
            .filter(|j| **j != index && !sh.picker().has(**j))
            .try_for_each(|j| sh.storage.write_chunk(*j, &data))
            .map(|_| true),
        (r, _) => r,
    };
    pool.give(data);
    if matches!(r, Ok(true)) {
        // Verified and on disk: the in-order hasher reads it back from the file, so the
        // whole-file digest covers the bytes that will be renamed into place. Nothing to do
        // if it is gone (the download is ending).
        if let Some(h) = &sh.hasher {
            let _ = h.send(index);
        }
    }
    let r = r.map(|ok| {
        if ok {
            Checked::Written
        } else {
            Checked::Mismatch
        }
    });
    (index, r)
}

/// Decodes a `ChunkZstd` body of chunk `index`: its frame header is checked against the chunk's
/// length before a buffer is taken, and it is decoded into exactly that length.
fn decompress(
    sh: &DownloadState,
    pool: &BufferPool,
    index: u32,
    src: Vec<u8>,
) -> Result<Vec<u8>, DecompressError> {
    let len = sh.manifest.chunk_len(index) as usize;
    let checked = compression::check_frame(&src, len);
    let out = checked.and_then(|()| {
        let mut out = pool.take();
        out.resize(len, 0);
        match compression::decompress_chunk(&src, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                pool.give(out);
                Err(e)
            }
        }
    });
    pool.give(src);
    out
}

/// Applies a verification result. Returns how the peer ends, if it must.
/// Marks the identical copies of verified chunk `index` done: written with it, never fetched.
fn complete_copies(sh: &DownloadState, index: u32) {
    for &j in sh.copies.get(&index).into_iter().flat_map(|g| g.iter()) {
        if j != index && sh.picker().complete(j) {
            if let Some(h) = &sh.hasher {
                let _ = h.send(j);
            }
            sh.shared_file.add_chunk(j);
            let _ = sh.completions.send(j);
            let len = sh.manifest.chunk_len(j) as u64;
            sh.bytes_done.fetch_add(len, Ordering::Relaxed);
        }
    }
}

/// Hands a chunk that failed verification to the download's reporter.
fn report_bad_chunk(sh: &DownloadState, peer: Fingerprint, index: u32) {
    let kind = torrentguard_protocol::api::ReportKind::BadChunk;
    // Closed only once the download is over, when nothing is reported any more.
    let _ = sh.misbehaved.send(crate::torrent::download::Misbehaviour {
        peer,
        kind,
        chunk: Some(index),
    });
}

fn settle(
    sh: &DownloadState,
    r: Result<Verified, tokio::task::JoinError>,
    penalty: &mut u32,
    fp: Fingerprint,
    slot: PeerSlot,
) -> Option<PeerEnd> {
    let (index, r) = match r {
        Ok(x) => x,
        Err(e) => return Some(PeerEnd::Failed(std::io::Error::other(e).into())),
    };
    match r {
        Ok(Checked::Written) => {
            let new = sh.picker().complete(index);
            if new {
                sh.shared_file.add_chunk(index);
                let _ = sh.completions.send(index);
                sh.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                let since = sh.started.elapsed().as_millis();
                let _ = sh
                    .first_chunk_ms
                    .set(u64::try_from(since).unwrap_or(u64::MAX));
                let len = sh.manifest.chunk_len(index) as u64;
                sh.bytes_done.fetch_add(len, Ordering::Relaxed);
                sh.bytes_fetched.fetch_add(len, Ordering::Relaxed);
                sh.dirty.store(true, Ordering::Relaxed);
                complete_copies(sh, index);
                if sh.picker().is_done() {
                    sh.done.notify_one();
                }
            }
            None
        }
        Ok(Checked::Undecodable(source)) => {
            // Like a bad chunk, plus the connection ends: the peer broke the protocol.
            sh.picker().release(index, slot);
            sh.retries.fetch_add(1, Ordering::Relaxed);
            *penalty += VIOLATION_PENALTY;
            report_bad_chunk(sh, fp, index);
            tracing::warn!(peer = %fp, index, error = %source, "compressed chunk refused; will be fetched again");
            sh.events.emit(Event::ChunkRetry {
                file_id: sh.file_id,
                index,
                fingerprint: fp,
                reason: format!("bad compressed chunk: {source}"),
            });
            let e = PeerError::Protocol(Violation::BadCompressedChunk { index, source });
            Some(PeerEnd::Failed(e))
        }
        Ok(Checked::Mismatch) => {
            sh.picker().release(index, slot);
            sh.retries.fetch_add(1, Ordering::Relaxed);
            *penalty += BAD_CHUNK_PENALTY;
            report_bad_chunk(sh, fp, index);
            tracing::warn!(peer = %fp, index, "chunk failed verification; discarded, will be fetched again");
            sh.events.emit(Event::ChunkRetry {
                file_id: sh.file_id,
                index,
                fingerprint: fp,
                reason: "digest mismatch".into(),
            });
            (*penalty >= BAN_THRESHOLD).then_some(PeerEnd::Banned(PeerError::BadChunk { index }))
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
