//! Introductions for the dial ladder: the session asks its trackers to introduce this agent to
//! a peer (`POST /introductions`) and says where the introducing tracker's relay is, so
//! `peer/` can punch or relay without holding a tracker client.

use futures::future::BoxFuture;
use reqwest::Url;
use torrentguard_protocol::api::{IntroVia, IntroduceRequest};
use torrentguard_protocol::{FileId, Fingerprint};

use super::{Session, TrackerClient, TrackerError};
use crate::peer::dial::{Introduced, Rendezvous, RendezvousError};
use crate::peer::relay_client::RelayTarget;

/// The relay of the tracker `client` talks to: the tracker URL's host, resolved, at
/// `relay_port`, pinned to the tracker's own identity. `None` if the host does not resolve.
pub async fn relay_target(client: &TrackerClient, relay_port: u16) -> Option<RelayTarget> {
    let addr = resolve(client.base_url(), relay_port).await?;
    Some(RelayTarget {
        addr,
        pin: client.fingerprint(),
    })
}

async fn resolve(url: &Url, port: u16) -> Option<std::net::SocketAddr> {
    let host = url.host_str()?;
    // An IPv6 literal comes bracketed, as in the URL.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        return Some((ip, port).into());
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::debug!(host, error = %e, "relay host does not resolve");
            None
        }
    }
}

impl From<TrackerError> for RendezvousError {
    fn from(e: TrackerError) -> Self {
        match e {
            TrackerError::Api { message, .. } => RendezvousError::Refused { message },
            e if !e.is_transient() => RendezvousError::Refused {
                message: e.to_string(),
            },
            e => RendezvousError::Unavailable {
                message: e.to_string(),
            },
        }
    }
}

impl Session {
    /// Asks the first tracker that answers to introduce us to `peer` of `file`, giving our
    /// listening port (the one we punch from).
    pub async fn introduce(
        &self,
        file: FileId,
        peer: Fingerprint,
        via: IntroVia,
    ) -> Result<Introduced, RendezvousError> {
        let req = IntroduceRequest {
            file_id: file,
            peer,
            port: self.seeder.local_addr().port(),
            via,
        };
        let (client, intro) = self.tracker.introduce(&req).await?;
        let relay = match intro.relay_port {
            Some(port) => relay_target(&client, port).await,
            None => None,
        };
        if via == IntroVia::Relay && relay.is_none() {
            return Err(RendezvousError::Refused {
                message: "the introduction names no relay that can be reached".into(),
            });
        }
        Ok(Introduced { intro, relay })
    }
}

impl Rendezvous for Session {
    fn introduce<'a>(
        &'a self,
        file: FileId,
        peer: Fingerprint,
        via: IntroVia,
    ) -> BoxFuture<'a, Result<Introduced, RendezvousError>> {
        Box::pin(Session::introduce(self, file, peer, via))
    }
}
