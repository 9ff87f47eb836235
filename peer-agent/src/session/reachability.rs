//! Reach learning: how this agent can be reached, as the tracker and its relay see it.
//!
//! Once the listener is bound, the agent asks the tracker to dial it back on its announced port
//! (`POST /reachability`). The answer says whether that worked (`inbound`), the address the
//! tracker sees us from, and where the tracker's relay listens. If there is a relay, the agent
//! then connects to it *from its listening port* and asks what source address it sees
//! (`Reflect`): a NAT that kept the port number maps the listening port the same way towards
//! everyone, so a peer dialling that port at the right moment can punch through; one that
//! renumbered it cannot be predicted, and only the relay works.
//!
//! What is learned is the agent's own claim: the tracker passes it on to downloaders to pick a
//! path, and a peer that lies only sends them down a worse path to itself. Learning never fails
//! a share or a download: a tracker without the endpoint (404) leaves the reach unknown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::api::{NatMapping, Reach, ReachabilityResponse};

use torrentguard_trust::Identity;

use super::rendezvous::relay_target;
use super::{TrackerClient, TrackerError, TrackerSet};
use crate::events::{Event, EventSink};
use crate::peer::relay_client::reflect;
use crate::peer::{PeerError, Seeder};

/// How often the reach is learned again while nothing suggests it changed.
pub const RELEARN_EVERY: Duration = Duration::from_secs(600);
/// After a failed attempt, how long before the next one.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The mapping a probe and a reflection imply. `reflected` is the address the relay saw our
/// listening port as (none: no relay, or it could not be reached).
pub fn mapping_of(inbound: bool, reflected: Option<SocketAddr>, listen_port: u16) -> NatMapping {
    match reflected {
        _ if inbound => NatMapping::Open,
        None => NatMapping::Unknown,
        Some(seen) if seen.port() == listen_port => NatMapping::PortPreserving,
        Some(_) => NatMapping::Unpredictable,
    }
}

/// What one learning found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    pub reach: Reach,
    /// Where others see our listening port: as the relay saw it, else the tracker's view of our
    /// address with the announced port.
    pub public: SocketAddr,
    /// The address the tracker saw the probe come from (its IP is watched for changes).
    pub observed: SocketAddr,
}

impl Learned {
    pub fn event(&self) -> Event {
        Event::Reach {
            inbound: self.reach.inbound,
            public: self.public,
            mapping: self.reach.mapping,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("reachability probe: {0}")]
    Tracker(#[from] TrackerError),
    #[error("reflecting through the relay: {0}")]
    Reflect(#[from] PeerError),
    #[error("the relay's host ({0}) does not resolve")]
    RelayAddress(String),
}

impl ReachError {
    /// The tracker predates reachability probes: nothing to learn from it, and nothing wrong.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, ReachError::Tracker(TrackerError::Api { status, .. })
            if *status == reqwest::StatusCode::NOT_FOUND)
    }
}

/// The two questions learning asks, behind a trait so the decision is tested without a network.
pub trait ReachProbe: Send + Sync {
    /// Asks the tracker to dial us back on `port`.
    fn reachability(&self, port: u16) -> BoxFuture<'_, Result<ReachabilityResponse, ReachError>>;
    /// Connects to the relay on `relay_port` (on the host of the tracker that answered the
    /// probe) from local port `from_port`, and returns the source address the relay saw.
    fn reflect(
        &self,
        relay_port: u16,
        from_port: u16,
    ) -> BoxFuture<'_, Result<SocketAddr, ReachError>>;
}

/// The probe over the agent's trackers and the relay of the one that answered.
pub struct TrackerProbe {
    trackers: TrackerSet,
    identity: Arc<Identity>,
    /// The tracker that answered the latest probe: its host runs the relay to reflect from.
    answered: std::sync::Mutex<Option<TrackerClient>>,
}

impl TrackerProbe {
    pub fn new(trackers: TrackerSet, identity: Arc<Identity>) -> Self {
        TrackerProbe {
            trackers,
            identity,
            answered: std::sync::Mutex::new(None),
        }
    }

    async fn probe(&self, port: u16) -> Result<ReachabilityResponse, ReachError> {
        // The tracker announced to, if there is one yet: its view is the one downloaders get,
        // and a tracker without the probe is no reason to fail over (nor to warn).
        let (client, answer) = match self.trackers.current() {
            Some(client) => {
                let answer = client.reachability(port).await?;
                (client, answer)
            }
            None => self.trackers.reachability(port).await?,
        };
        *self.answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
        Ok(answer)
    }

    async fn reflect_from(
        &self,
        relay_port: u16,
        from_port: u16,
    ) -> Result<SocketAddr, ReachError> {
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let client = answered.ok_or_else(|| ReachError::RelayAddress("no tracker".into()))?;
        let relay = relay_target(&client, relay_port)
            .await
            .ok_or_else(|| ReachError::RelayAddress(client.base_url().to_string()))?;
        Ok(reflect(&self.identity, &relay, Some(from_port)).await?)
    }
}

impl ReachProbe for TrackerProbe {
    fn reachability(&self, port: u16) -> BoxFuture<'_, Result<ReachabilityResponse, ReachError>> {
        Box::pin(self.probe(port))
    }

    fn reflect(
        &self,
        relay_port: u16,
        from_port: u16,
    ) -> BoxFuture<'_, Result<SocketAddr, ReachError>> {
        Box::pin(self.reflect_from(relay_port, from_port))
    }
}

/// Learns the reach once: probe on `port` (the announced one), reflect from `listen_port`.
pub async fn learn(
    probe: &dyn ReachProbe,
    port: u16,
    listen_port: u16,
) -> Result<Learned, ReachError> {
    let answer = probe.reachability(port).await?;
    let reflected = match answer.relay_port {
        Some(relay_port) if !answer.inbound => match probe.reflect(relay_port, listen_port).await {
            Ok(seen) => Some(seen),
            Err(e) => {
                // The probe's answer still stands; only the mapping stays unknown.
                tracing::info!(error = %e, "could not reflect through the relay; NAT mapping unknown");
                None
            }
        },
        _ => None,
    };
    let mapping = mapping_of(answer.inbound, reflected, listen_port);
    Ok(Learned {
        reach: Reach {
            inbound: answer.inbound,
            mapping,
        },
        public: reflected.unwrap_or(SocketAddr::new(answer.observed.ip(), port)),
        observed: answer.observed,
    })
}

/// Keeps the seeder's reach learned: now, every [`RELEARN_EVERY`], and whenever an announce
/// answer shows our public IP changed.
pub struct ReachLearner {
    pub probe: Arc<dyn ReachProbe>,
    pub seeder: Arc<Seeder>,
    /// The public IP the latest announce answers saw (see [`super::Session::observed_ips`]).
    pub observed: watch::Receiver<Option<IpAddr>>,
    pub events: EventSink,
    pub cancel: CancellationToken,
}

/// How one attempt at learning ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Learned(Learned),
    /// The tracker has no probe (404): nothing to learn there until much later.
    Unsupported,
    /// A passing failure: try again soon.
    Failed,
}

impl ReachLearner {
    /// Learns once and records the result on the seeder, emitting it when it differs from
    /// `last`.
    pub async fn learn_once(&self, last: Option<Learned>) -> Attempt {
        let (port, listen_port) = (
            self.seeder.announced_endpoint().1,
            self.seeder.local_addr().port(),
        );
        match learn(&*self.probe, port, listen_port).await {
            Ok(learned) => {
                self.seeder.set_reach(Some(learned.reach));
                if last != Some(learned) {
                    tracing::info!(inbound = learned.reach.inbound, public = %learned.public,
                        mapping = ?learned.reach.mapping, "reachability learned");
                    self.events.emit(learned.event());
                }
                Attempt::Learned(learned)
            }
            Err(e) if e.is_unsupported() => {
                tracing::debug!(error = %e, "the tracker has no reachability probe; reach unknown");
                Attempt::Unsupported
            }
            Err(e) => {
                // Keep what was known: a passing failure says nothing about the NAT.
                tracing::warn!(error = %e, "could not learn reachability; trying again later");
                Attempt::Failed
            }
        }
    }

    /// Learns now, then again on the schedule the type describes, until the stop.
    pub async fn run(mut self) {
        let mut last = None;
        loop {
            let attempt = tokio::select! {
                a = self.learn_once(last) => a,
                _ = self.cancel.cancelled() => return,
            };
            let wait = match attempt {
                Attempt::Learned(l) => {
                    last = Some(l);
                    RELEARN_EVERY
                }
                Attempt::Unsupported => RELEARN_EVERY,
                Attempt::Failed => RETRY_AFTER_FAILURE,
            };
            if !self.wait_for_a_reason(last, wait).await {
                return;
            }
        }
    }

    /// Waits `wait`, or less if an announce shows our public IP moved away from the one `last`
    /// was learned at. False: stopping.
    async fn wait_for_a_reason(&mut self, last: Option<Learned>, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut watching = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                changed = self.observed.changed(), if watching => {
                    // The session is gone: only the timer is left.
                    watching = changed.is_ok();
                    let now = *self.observed.borrow_and_update();
                    if watching && moved(last.map(|l| l.observed.ip()), now) {
                        tracing::info!(?now, "our public address changed; learning reachability again");
                        return true;
                    }
                }
                _ = self.cancel.cancelled() => return false,
            }
        }
    }
}

/// Whether the IP an announce saw differs from the one reach was learned at.
fn moved(learned_at: Option<IpAddr>, now: Option<IpAddr>) -> bool {
    match (learned_at, now) {
        (Some(a), Some(b)) => a.to_canonical() != b.to_canonical(),
        // Nothing learned yet: a first observed address is a good moment to try.
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

#[cfg(test)]
mod tests;
