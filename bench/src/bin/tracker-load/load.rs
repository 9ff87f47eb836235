//! The load itself: K workers, each one connection at a time as one simulated peer, rotating
//! through its share of the peers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use torrentguard_protocol::FileId;
use torrentguard_trust::Identity;

use anyhow::{Context as _, bail};

use crate::client::{self, Announce, Answer, Sender, Tracker};
use crate::fleet;
use crate::mix::{Mix, Rng, Slot};
use crate::stats::Stats;

/// After a failed connection, the worker waits this long before its next peer, so a tracker
/// that is down is not spun against.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// What every worker shares.
pub struct Plan {
    pub tracker: Tracker,
    pub targets: Vec<SocketAddr>,
    pub files: Vec<FileId>,
    pub mix: Mix,
    /// Announces one peer sends on one connection before the worker moves to the next peer.
    pub per_connection: usize,
    /// Only answers after this instant are counted (the warm-up announces every peer once).
    pub measure_from: Instant,
    pub deadline: Instant,
    /// With `--rate`: the gap between two sends of one worker.
    pub pace: Option<Duration>,
}

/// One simulated peer, owned by one worker.
pub struct Peer {
    files: Vec<usize>,
    slots: Vec<Slot>,
    source: IpAddr,
    port: u16,
    peer_id: [u8; 20],
    identity: Option<Arc<Identity>>,
    /// Built on first use and kept, so a revisit can resume its TLS session as an agent would.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Peer {
    pub fn new(
        i: usize,
        files_per_peer: usize,
        files: usize,
        identity: Option<Arc<Identity>>,
    ) -> Self {
        let files = fleet::peer_files(i, files_per_peer, files);
        let mut peer_id = [0u8; 20];
        let tag = format!("-TG0001-{i:012}");
        peer_id.copy_from_slice(&tag.as_bytes()[..20]);
        Peer {
            slots: vec![Slot::default(); files.len()],
            files,
            source: IpAddr::V4(fleet::source_address(i)),
            port: 10_000 + (i % 50_000) as u16,
            peer_id,
            identity,
            tls: None,
        }
    }

    fn tls(&mut self, tracker: &Tracker) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let (Tracker::TorrentGuard { fingerprint, .. }, Some(id)) = (tracker, &self.identity)
        else {
            return Ok(None);
        };
        if self.tls.is_none() {
            self.tls = Some(client::tls_config(id, *fingerprint)?);
        }
        Ok(self.tls.clone())
    }
}

/// Runs worker `w` over `peers` until the plan's deadline.
pub async fn worker(w: usize, plan: Arc<Plan>, mut peers: Vec<Peer>, seed: u64) -> Stats {
    let target = plan.targets[w % plan.targets.len()];
    let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0x9e37_79b9));
    let mut stats = Stats::default();
    let mut next_send = Instant::now();
    while Instant::now() < plan.deadline && !peers.is_empty() {
        for peer in &mut peers {
            if Instant::now() >= plan.deadline {
                break;
            }
            let visit = Visit {
                plan: &plan,
                target,
                rng: &mut rng,
                stats: &mut stats,
                next_send: &mut next_send,
            };
            if !visit.run(peer).await {
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    stats
}

/// The connection of one visit.
struct Conn {
    sender: Option<Sender>,
    /// It has answered at least once (so it was kept alive, and may have been closed since).
    used: bool,
    source: IpAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The server had already closed the kept-alive connection when the request went out: hyper
/// saw the close first, or the kernel answered the write with a reset.
fn closed_under_us(e: &anyhow::Error) -> bool {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return false;
    };
    let reset = std::error::Error::source(h)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        });
    h.is_canceled() || h.is_incomplete_message() || reset
}

struct Visit<'a> {
    plan: &'a Plan,
    target: SocketAddr,
    rng: &'a mut Rng,
    stats: &'a mut Stats,
    next_send: &'a mut Instant,
}

impl Visit<'_> {
    /// One peer's turn: its announces on one connection (reopened only if the server closes it
    /// after an answer, as opentracker does). False after a transport error.
    async fn run(mut self, peer: &mut Peer) -> bool {
        let tls = match peer.tls(&self.plan.tracker) {
            Ok(tls) => tls,
            Err(e) => {
                self.stats.transport_error(&e);
                return false;
            }
        };
        let mut conn = Conn {
            sender: None,
            used: false,
            source: peer.source,
            tls,
        };
        for r in 0..self.plan.per_connection {
            let sent_at = self.pace().await;
            let slot = r % peer.files.len();
            let (event, have) = self.plan.mix.next(&mut peer.slots[slot], self.rng);
            let announce = Announce {
                file: &self.plan.files[peer.files[slot]],
                event,
                have,
                chunks: self.plan.mix.chunks,
                port: peer.port,
                peer_id: &peer.peer_id,
            };
            let result = self.exchange(&mut conn, &announce).await;
            let measuring = Instant::now() >= self.plan.measure_from;
            match result {
                Ok(answer) if measuring => {
                    self.stats
                        .answer(answer.status, answer.refused, event, sent_at.elapsed());
                }
                Ok(_) => {}
                Err(e) => {
                    if measuring {
                        self.stats.transport_error(&e);
                    }
                    return false;
                }
            }
            if Instant::now() >= self.plan.deadline {
                break;
            }
        }
        true
    }

    /// Sends one announce on `conn`, opening it first if needed. A kept-alive connection that
    /// the server closed just as the request went out (opentracker closes after every answer
    /// without saying so) is reopened and the request sent once more, as HTTP clients do; the
    /// retry is counted apart.
    async fn exchange(&mut self, conn: &mut Conn, a: &Announce<'_>) -> anyhow::Result<Answer> {
        let host = self.target.to_string();
        for attempt in 0..2 {
            if conn.sender.as_ref().is_none_or(|s| s.is_closed()) {
                conn.sender = Some(self.open(conn).await?);
                conn.used = false;
            }
            let Some(sender) = conn.sender.as_mut() else {
                bail!("no connection");
            };
            let req = client::announce_request(&self.plan.tracker, &host, a)?;
            match client::send(sender, req).await {
                Ok(answer) => {
                    conn.used = true;
                    if answer.closing {
                        conn.sender = None;
                    }
                    return Ok(answer);
                }
                Err(e) if attempt == 0 && conn.used && closed_under_us(&e) => {
                    self.stats.stale_retries += 1;
                    conn.sender = None;
                }
                Err(e) => {
                    conn.sender = None;
                    return Err(e);
                }
            }
        }
        bail!("the server closed two connections in a row before answering")
    }

    async fn open(&mut self, conn: &Conn) -> anyhow::Result<Sender> {
        let started = Instant::now();
        let sender = client::connect(self.target, conn.source, conn.tls.clone())
            .await
            .context("connecting")?;
        if Instant::now() >= self.plan.measure_from {
            self.stats
                .connect
                .record(started.elapsed().as_micros() as u64);
        }
        Ok(sender)
    }

    /// With a pace, waits for this worker's next slot and returns it, so a late answer counts
    /// from when the request was due (no coordinated omission); else now.
    async fn pace(&mut self) -> Instant {
        let Some(gap) = self.plan.pace else {
            return Instant::now();
        };
        let due = *self.next_send;
        *self.next_send = due + gap;
        tokio::time::sleep_until(due).await;
        due
    }
}
