//! Reaching a peer: what the dial ladder needs from outside `peer/`. A peer behind a NAT is
//! reached by a hole punch or through the tracker's relay, and both start with an
//! introduction the tracker makes; [`Rendezvous`] asks for one without `peer/` knowing who
//! answers (the session implements it).

use futures::future::BoxFuture;
use torrentguard_protocol::api::{IntroVia, Introduction};
use torrentguard_protocol::{FileId, Fingerprint};

use super::relay_client::RelayTarget;

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
