//! The load itself: K workers, each one connection at a time as one simulated peer, rotating
//! through its share of the peers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use torrentguard_protocol::FileId;
use torrentguard_trust::Identity;

use crate::client::{self, Announce, Sender, Tracker};
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
        let host = self.target.to_string();
        let mut conn: Option<Sender> = None;
        for r in 0..self.plan.per_connection {
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                match self.open(peer).await {
                    Some(c) => conn = Some(c),
                    None => return false,
                }
            }
            let Some(sender) = conn.as_mut() else {
                return false;
            };
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
            let result = match client::announce_request(&self.plan.tracker, &host, &announce) {
                Ok(req) => client::send(sender, req).await,
                Err(e) => Err(e),
            };
            let measuring = Instant::now() >= self.plan.measure_from;
            match result {
                Ok(answer) => {
                    if measuring {
                        self.stats
                            .answer(answer.status, answer.refused, event, sent_at.elapsed());
                    }
                    if answer.closing {
                        conn = None;
                    }
                }
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

    async fn open(&mut self, peer: &mut Peer) -> Option<Sender> {
        let started = Instant::now();
        let opened = match peer.tls(&self.plan.tracker) {
            Ok(tls) => client::connect(self.target, peer.source, tls).await,
            Err(e) => Err(e),
        };
        let measuring = Instant::now() >= self.plan.measure_from;
        match opened {
            Ok(sender) => {
                if measuring {
                    self.stats
                        .connect
                        .record(started.elapsed().as_micros() as u64);
                }
                Some(sender)
            }
            Err(e) => {
                if measuring {
                    self.stats.transport_error(&e.context("connecting"));
                }
                None
            }
        }
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
