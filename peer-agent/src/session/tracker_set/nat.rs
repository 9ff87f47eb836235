//! The NAT-traversal calls over several trackers: each goes to the first that answers, and
//! says which one it was, because the relay to use is the one on that tracker's host.

use torrentguard_protocol::api::{Introductions, ReachabilityResponse};

use super::TrackerSet;
use crate::session::{TrackerClient, TrackerError};

impl TrackerSet {
    /// [`TrackerClient::reachability`] on the first tracker that answers, with that tracker.
    pub async fn reachability(
        &self,
        port: u16,
    ) -> Result<(TrackerClient, ReachabilityResponse), TrackerError> {
        self.call(|c| async move {
            let r = c.reachability(port).await?;
            Ok((c, r))
        })
        .await
    }

    /// [`TrackerClient::introductions`] on the first tracker that answers, with that tracker:
    /// the one this agent announces to, where downloaders ask to be introduced.
    pub async fn introductions(
        &self,
        wait_secs: u32,
    ) -> Result<(TrackerClient, Introductions), TrackerError> {
        self.call(|c| async move {
            let r = c.introductions(wait_secs).await?;
            Ok((c, r))
        })
        .await
    }
}
