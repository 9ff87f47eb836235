//! Answering introductions: the seeder's half of hole punching and relaying.
//!
//! A downloader that cannot dial this agent asks the tracker to introduce them; the tracker
//! queues the introduction for us, and this task, running while the agent serves at least one
//! file, long-polls for it (`GET /introductions?wait_secs=25`). For each one it punches from
//! the listening port to the downloader's public address at the agreed moment, or joins the
//! relay with the introduction's token, then hands the stream to the seeder, which serves it
//! as it serves an accepted connection (admission, TLS server, swarm check), and only to the
//! certificate the introduction named.
//!
//! The tracker is trusted to pair peers, not to aim this agent anywhere: an introduction to an
//! unspecified or multicast address is refused, and so is one to an address more local than
//! the tracker itself (a loopback address unless the tracker is on loopback, a LAN address
//! unless the tracker is on one); at most [`MAX_ANSWERING`] are in progress at once, each
//! waiting at most [`MAX_START_DELAY`] for its start.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrentguard_protocol::FileId;
use torrentguard_protocol::api::{IntroVia, Introduction};
use torrentguard_protocol::relay::token_bytes;
use torrentguard_trust::Identity;

use super::rendezvous::relay_target;
use super::{TrackerError, TrackerSet};
use crate::peer::dial::Introduced;
use crate::peer::punch::punch;
use crate::peer::relay_client::join;
use crate::peer::transport::Transport;
use crate::peer::{PeerError, Seeder};

/// How long one long-poll asks the tracker to wait.
pub const POLL_WAIT_SECS: u32 = 25;
/// Introductions answered at once; more in one batch are skipped (the downloader retries).
pub const MAX_ANSWERING: usize = 16;
/// Longest wait for an introduction's start: a tracker cannot park our answers for long.
pub const MAX_START_DELAY: Duration = Duration::from_secs(10);
/// While nothing is served, how often to look whether something is.
const IDLE_CHECK: Duration = Duration::from_secs(2);
/// A tracker without introductions (404) is asked again after this long.
const UNSUPPORTED_WAIT: Duration = Duration::from_secs(600);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One answer of the long-poll: the introductions, each with its relay resolved, and the
/// address of the tracker that made them (what they may point at depends on it).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub items: Vec<Introduced>,
    /// `None` when the tracker's host does not resolve: then only global addresses pass.
    pub tracker_ip: Option<IpAddr>,
}

/// Where introductions come from, behind a trait so the loop is tested without a tracker.
pub trait IntroductionSource: Send + Sync {
    /// Waits up to `wait_secs` for introductions.
    fn next_batch(&self, wait_secs: u32) -> BoxFuture<'_, Result<Batch, TrackerError>>;
}

impl IntroductionSource for TrackerSet {
    fn next_batch(&self, wait_secs: u32) -> BoxFuture<'_, Result<Batch, TrackerError>> {
        Box::pin(async move {
            // The tracker announced to, where downloaders ask for us; a tracker without
            // introductions is no reason to fail over (nor to warn every poll).
            let (client, answer) = match self.current() {
                Some(client) => {
                    let answer = client.introductions(wait_secs).await?;
                    (client, answer)
                }
                None => self.introductions(wait_secs).await?,
            };
            // The relay target is the tracker's host resolved; port 0 gives the host alone.
            let tracker_ip = relay_target(&client, 0).await.map(|t| t.addr.ip());
            let mut items = Vec::with_capacity(answer.items.len());
            for intro in answer.items {
                let relay = match intro.relay_port {
                    Some(port) => relay_target(&client, port).await,
                    None => None,
                };
                items.push(Introduced { intro, relay });
            }
            Ok(Batch { items, tracker_ip })
        })
    }
}

/// Why an introduction is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} cannot be dialled (unspecified, multicast or broadcast)")]
    NotDialable(IpAddr),
    #[error("port 0 cannot be dialled")]
    PortZero,
    #[error("{address} is more local than the tracker that introduced it ({tracker})")]
    TooLocal { address: IpAddr, tracker: String },
    #[error("file {0} is not served here")]
    NotServed(FileId),
    #[error("a relay introduction without a relay that resolves, or with a malformed token")]
    BadRelay,
}

/// How far an address reaches, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Loopback,
    LinkLocal,
    /// RFC 1918, RFC 6598 shared (carrier-grade NAT) and IPv6 unique-local addresses.
    Private,
    Global,
}

fn scope(ip: IpAddr) -> Scope {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (b & 0xc0) == 64;
            if v4.is_loopback() {
                Scope::Loopback
            } else if v4.is_link_local() {
                Scope::LinkLocal
            } else if v4.is_private() || shared {
                Scope::Private
            } else {
                Scope::Global
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Scope::Loopback
            } else if first & 0xffc0 == 0xfe80 {
                Scope::LinkLocal
            } else if first & 0xfe00 == 0xfc00 {
                Scope::Private
            } else {
                Scope::Global
            }
        }
    }
}

/// Whether `intro` may be dialled on the word of a tracker at `tracker_ip` (see the module).
pub fn admissible(intro: &Introduction, tracker_ip: Option<IpAddr>) -> Result<(), Refused> {
    let address = intro.address.to_canonical();
    let broadcast = matches!(address, IpAddr::V4(v4) if v4.is_broadcast());
    if address.is_unspecified() || address.is_multicast() || broadcast {
        return Err(Refused::NotDialable(intro.address));
    }
    if intro.port == 0 {
        return Err(Refused::PortZero);
    }
    let floor = tracker_ip.map_or(Scope::Global, scope);
    if scope(address) < floor {
        return Err(Refused::TooLocal {
            address: intro.address,
            tracker: tracker_ip.map_or("unresolved".into(), |ip| ip.to_string()),
        });
    }
    Ok(())
}

/// The task that answers introductions for one agent.
pub struct Answerer {
    pub source: Arc<dyn IntroductionSource>,
    pub seeder: Arc<Seeder>,
    pub identity: Arc<Identity>,
    pub cancel: CancellationToken,
    /// Where each answer runs (the agent's, so its stop waits for them).
    pub tasks: TaskTracker,
    answering: Arc<Semaphore>,
}

impl Answerer {
    pub fn new(
        source: Arc<dyn IntroductionSource>,
        seeder: Arc<Seeder>,
        identity: Arc<Identity>,
        cancel: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Answerer {
            source,
            seeder,
            identity,
            cancel,
            tasks,
            answering: Arc::new(Semaphore::new(MAX_ANSWERING)),
        }
    }

    /// Long-polls and answers until the stop; polls only while something is served.
    pub async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // A seeder that stopped serving (its listener closed) has nothing to offer a
            // downloader: punching for it would only end in its goodbye.
            if self.seeder.cancel.is_cancelled() {
                return;
            }
            let pause = if self.seeder.files().is_empty() {
                IDLE_CHECK
            } else {
                let polled = tokio::select! {
                    b = self.source.next_batch(POLL_WAIT_SECS) => b,
                    _ = self.cancel.cancelled() => return,
                    _ = self.seeder.cancel.cancelled() => return,
                };
                match polled {
                    Ok(batch) => {
                        backoff = FIRST_BACKOFF;
                        self.answer_all(batch, Instant::now());
                        continue;
                    }
                    Err(e) => self.pause_after(e, &mut backoff),
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// How long to wait after a failed poll.
    fn pause_after(&self, e: TrackerError, backoff: &mut Duration) -> Duration {
        match e {
            TrackerError::Api { status, .. } if status == reqwest::StatusCode::NOT_FOUND => {
                tracing::debug!("the tracker makes no introductions; asking again later");
                UNSUPPORTED_WAIT
            }
            TrackerError::RateLimited { retry_after, .. } => {
                retry_after.clamp(FIRST_BACKOFF, MAX_BACKOFF)
            }
            e => {
                tracing::warn!(error = %e, "waiting for introductions failed; retrying");
                let pause = *backoff;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                pause
            }
        }
    }

    /// Starts an answer for each acceptable introduction of `batch`, received at `received`.
    fn answer_all(&self, batch: Batch, received: Instant) {
        for introduced in batch.items {
            let intro = &introduced.intro;
            let span = tracing::debug_span!("introduction", peer = %intro.peer, via = ?intro.via,
                address = %SocketAddr::new(intro.address, intro.port));
            if let Err(why) = self.check(&introduced, batch.tracker_ip) {
                span.in_scope(|| tracing::warn!(%why, "ignoring an introduction"));
                continue;
            }
            let Ok(permit) = self.answering.clone().try_acquire_owned() else {
                span.in_scope(|| {
                    tracing::warn!(
                        max = MAX_ANSWERING,
                        "too many introductions at once; skipping one"
                    )
                });
                continue;
            };
            let (seeder, identity) = (self.seeder.clone(), self.identity.clone());
            let failure = crate::spawn::Failure::Routine;
            crate::spawn::spawn_tracked(&self.tasks, "introduction", span, failure, async move {
                let _permit = permit;
                answer(seeder, identity, introduced, received).await
            });
        }
    }

    fn check(&self, introduced: &Introduced, tracker_ip: Option<IpAddr>) -> Result<(), Refused> {
        let intro = &introduced.intro;
        admissible(intro, tracker_ip)?;
        if self.seeder.get(&intro.file_id).is_none() {
            return Err(Refused::NotServed(intro.file_id));
        }
        let relay_ok = introduced.relay.is_some() && token_bytes(&intro.token).is_some();
        if intro.via == IntroVia::Relay && !relay_ok {
            return Err(Refused::BadRelay);
        }
        Ok(())
    }
}

/// Meets the introduced downloader as the introduction says, then serves it.
async fn answer(
    seeder: Arc<Seeder>,
    identity: Arc<Identity>,
    introduced: Introduced,
    received: Instant,
) -> Result<(), PeerError> {
    let Introduced { intro, relay } = introduced;
    let remote = SocketAddr::new(intro.address, intro.port);
    let transport = match (intro.via, relay, token_bytes(&intro.token)) {
        (IntroVia::Punch, ..) => {
            let delay = Duration::from_millis(intro.start_in_ms).min(MAX_START_DELAY);
            let port = seeder.local_addr().port();
            let (tcp, tries) = punch(port, remote, received + delay, seeder.punches()).await?;
            tracing::debug!(tries, "punched through to the introduced peer");
            Transport::Tcp(tcp)
        }
        (IntroVia::Relay, Some(relay), Some(token)) => {
            let transport = join(&identity, &relay, token).await?;
            tracing::debug!(relay = %relay.addr, "met the introduced peer on the relay");
            transport
        }
        // Checked before the task started.
        (IntroVia::Relay, ..) => {
            return Err(PeerError::NotAdmitted {
                reason: Refused::BadRelay.to_string(),
            });
        }
    };
    seeder.serve_introduced(transport, remote, intro.peer).await
}

#[cfg(test)]
mod tests;
