//! Reaching a peer: what the dial ladder needs from outside `peer/`. A peer behind a NAT is
//! reached by a hole punch or through the tracker's relay, and both start with an
//! introduction the tracker makes; [`Rendezvous`] asks for one without `peer/` knowing who
//! answers (the session implements it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use torrentguard_protocol::api::{IntroVia, Introduction, NatMapping, Reach};
use torrentguard_protocol::relay::token_bytes;
use torrentguard_protocol::{FileId, Fingerprint};
use torrentguard_trust::Identity;

use super::connection::{CONNECT_TIMEOUT, PeerConnection};
use super::error::PeerError;
use super::punch::{PendingPunches, punch};
use super::relay_client::{RelayTarget, join};
use super::transport::{Path, Transport};

/// An introduction to a peer, and the relay to meet it at when it goes through one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduced {
    pub intro: Introduction,
    /// The tracker's relay (its host, the introduction's relay port, the tracker's identity);
    /// `None` when the introduction names no relay.
    pub relay: Option<RelayTarget>,
}

/// Why no introduction was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    /// The tracker said no, in its words (the peer is not in the swarm, no relay, a limit).
    #[error("introduction refused: {message}")]
    Refused { message: String },
    /// No tracker could be asked.
    #[error("no introduction: {message}")]
    Unavailable { message: String },
}

/// Asks for introductions to a peer of a file's swarm.
pub trait Rendezvous: Send + Sync {
    /// Introduces us to `peer` of `file`'s swarm, to meet `via` a punch or the relay.
    fn introduce<'a>(
        &'a self,
        file: FileId,
        peer: Fingerprint,
        via: IntroVia,
    ) -> BoxFuture<'a, Result<Introduced, RendezvousError>>;
}

/// What the ladder needs besides the peer: who we are, how we are reached, and how to be
/// introduced (none: direct only, as before NAT traversal).
#[derive(Clone)]
pub struct DialContext {
    pub identity: Arc<Identity>,
    pub rendezvous: Option<Arc<dyn Rendezvous>>,
    /// Our listening port: punches dial from it.
    pub listen_port: u16,
    pub punches: Arc<PendingPunches>,
    /// How we are reached, as last learned.
    pub own_reach: Option<Reach>,
}

/// The peer to reach.
#[derive(Debug, Clone, Copy)]
pub struct DialTarget {
    pub file: FileId,
    pub fingerprint: Fingerprint,
    /// Its listed address and listening port.
    pub addr: SocketAddr,
    pub reach: Option<Reach>,
    /// The relay garbled this peer's stream before: not through it again.
    pub avoid_relay: bool,
}

/// A TLS session with the peer, and how it was reached: the path, the attempts of that path,
/// and the time from the start of that path's attempt to the TLS session.
pub struct Dialled {
    pub conn: PeerConnection,
    pub path: Path,
    pub tries: u32,
    pub after: Duration,
}

impl std::fmt::Debug for Dialled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialled")
            .field("peer", &self.conn.fingerprint)
            .field("path", &self.path)
            .field("tries", &self.tries)
            .field("after", &self.after)
            .finish()
    }
}

/// Connect timeout for a peer whose reach is unknown: long enough for a distant peer, short
/// enough that falling back to a punch or the relay does not wait the full bound.
pub const UNKNOWN_REACH_CONNECT: Duration = Duration::from_secs(3);

/// The rungs to try for `target`, in order.
pub fn ladder(ctx: &DialContext, target: &DialTarget) -> Vec<Path> {
    let mut rungs = Vec::with_capacity(3);
    let inbound = target.reach.map(|r| r.inbound);
    // Without introductions, the peer's address is all there is.
    if inbound != Some(false) || ctx.rendezvous.is_none() {
        rungs.push(Path::Direct);
    }
    if ctx.rendezvous.is_none() {
        return rungs;
    }
    if punch_may_work(ctx.own_reach, target.reach) {
        rungs.push(Path::Punched);
    }
    if !target.avoid_relay {
        rungs.push(Path::Relayed);
    }
    rungs
}

/// A punch needs both mappings predictable, unless one side is open (then the other's SYN
/// goes straight in).
fn punch_may_work(ours: Option<Reach>, theirs: Option<Reach>) -> bool {
    let mapping = |r: Option<Reach>| r.map_or(NatMapping::Unknown, |r| r.mapping);
    let (a, b) = (mapping(ours), mapping(theirs));
    let unpredictable = |m| m == NatMapping::Unpredictable;
    !((unpredictable(a) && b != NatMapping::Open) || (unpredictable(b) && a != NatMapping::Open))
}

/// Reaches `target` by the first rung of [`ladder`] that gives a pinned TLS session. A rung
/// that fails is the network's doing, not the peer's: the error returned is the last rung's
/// that got as far as trying (a refused introduction says less than the refused dial before
/// it), unless one failed its TLS handshake (something else answers there), the most telling.
/// A direct dial that the listed address *answers* (a reset: nothing listens there; or a TLS
/// handshake with another certificate) ends the climb: the address is live, so no NAT is in the
/// way, and punching or relaying to it would only hide what is wrong.
pub async fn dial(ctx: &DialContext, target: &DialTarget) -> Result<Dialled, PeerError> {
    let mut tls_failure = None;
    let mut last = None;
    for path in ladder(ctx, target) {
        let started = std::time::Instant::now();
        let r = match path {
            Path::Direct => direct(ctx, target).await,
            Path::Punched => punched(ctx, target).await,
            Path::Relayed => relayed(ctx, target).await,
        };
        match r {
            Ok((conn, tries)) => {
                return Ok(Dialled {
                    conn,
                    path,
                    tries,
                    after: started.elapsed(),
                });
            }
            Err(e) if path == Path::Direct && answered(&e) => return Err(e),
            Err(e) => {
                tracing::debug!(peer = %target.fingerprint, %path, error = %e, "path failed; trying the next");
                if matches!(e, PeerError::Tls { .. }) && tls_failure.is_none() {
                    tls_failure = Some(e);
                } else if !matches!(e, PeerError::Introduction { .. }) || last.is_none() {
                    // No introduction says less than how the rung before it failed.
                    last = Some(e);
                }
            }
        }
    }
    Err(tls_failure
        .or(last)
        .unwrap_or(PeerError::Unreachable { addr: target.addr }))
}

/// Whether a failed dial met something at the address: a reset, or a TLS peer.
fn answered(e: &PeerError) -> bool {
    match e {
        PeerError::Tls { .. } => true,
        PeerError::Connect { source, .. } => source.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

async fn direct(ctx: &DialContext, t: &DialTarget) -> Result<(PeerConnection, u32), PeerError> {
    let bound = match t.reach {
        Some(r) if r.inbound => CONNECT_TIMEOUT,
        // Unknown: short, when there is somewhere to fall back to.
        _ if ctx.rendezvous.is_some() => UNKNOWN_REACH_CONNECT,
        _ => CONNECT_TIMEOUT,
    };
    let conn = PeerConnection::connect_within(&ctx.identity, t.addr, t.fingerprint, bound).await?;
    Ok((conn, 1))
}

async fn punched(ctx: &DialContext, t: &DialTarget) -> Result<(PeerConnection, u32), PeerError> {
    let met = introduce(ctx, t, IntroVia::Punch).await?;
    let remote = SocketAddr::new(met.intro.address, met.intro.port);
    let start_at = Instant::now() + Duration::from_millis(met.intro.start_in_ms);
    let (tcp, tries) = punch(ctx.listen_port, remote, start_at, &ctx.punches).await?;
    let mut conn = PeerConnection::connect_over(
        &ctx.identity,
        Transport::Tcp(tcp),
        remote,
        t.fingerprint,
        None,
    )
    .await?;
    conn.negotiated.path = Path::Punched;
    Ok((conn, tries))
}

async fn relayed(ctx: &DialContext, t: &DialTarget) -> Result<(PeerConnection, u32), PeerError> {
    let met = introduce(ctx, t, IntroVia::Relay).await?;
    let relay = met.relay.ok_or_else(|| PeerError::Introduction {
        source: RendezvousError::Refused {
            message: "the introduction names no relay".into(),
        },
    })?;
    let token = token_bytes(&met.intro.token).ok_or_else(|| PeerError::Introduction {
        source: RendezvousError::Refused {
            message: "the introduction's token is not 64 hex characters".into(),
        },
    })?;
    let transport = join(&ctx.identity, &relay, token).await?;
    let conn =
        PeerConnection::connect_over(&ctx.identity, transport, t.addr, t.fingerprint, None).await?;
    Ok((conn, 1))
}

async fn introduce(
    ctx: &DialContext,
    t: &DialTarget,
    via: IntroVia,
) -> Result<Introduced, PeerError> {
    let Some(rendezvous) = &ctx.rendezvous else {
        return Err(PeerError::Unreachable { addr: t.addr });
    };
    let met = rendezvous
        .introduce(t.file, t.fingerprint, via)
        .await
        .map_err(|source| PeerError::Introduction { source })?;
    // The tracker answers for the peer we asked about; anything else is not ours to use.
    if met.intro.peer != t.fingerprint || met.intro.file_id != t.file {
        return Err(PeerError::Introduction {
            source: RendezvousError::Refused {
                message: "the introduction is for another peer or file".into(),
            },
        });
    }
    Ok(met)
}

#[cfg(test)]
mod tests;

/// How often a relayed peer is tried again without the relay.
pub const RELAY_UPGRADE_EVERY: Duration = Duration::from_secs(60);

/// Tries to reach a peer we reach through the relay some other way (direct, then a punch)
/// every `every`, until one works: the relay is the last resort, slower and capped. The
/// context is read afresh each time (our reach may have changed).
pub async fn upgrade(
    context: impl Fn() -> DialContext,
    target: DialTarget,
    every: Duration,
) -> Dialled {
    let target = DialTarget {
        avoid_relay: true,
        ..target
    };
    loop {
        tokio::time::sleep(every).await;
        match dial(&context(), &target).await {
            Ok(d) => return d,
            Err(e) => {
                tracing::debug!(peer = %target.fingerprint, error = %e, "still no path but the relay")
            }
        }
    }
}
