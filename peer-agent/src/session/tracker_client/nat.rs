//! The tracker calls of NAT traversal on the seeder's side: the reachability probe and the
//! introductions long-poll. A child module of the client, so it shares its request plumbing
//! (pin, token, error mapping) without widening it.

use std::time::Duration;

use torrentguard_protocol::api::{Introductions, ReachabilityRequest, ReachabilityResponse};

use super::{TrackerClient, TrackerError};

/// Longest wait a long-poll may ask for; the tracker caps it there too.
pub const MAX_INTRODUCTIONS_WAIT: u32 = 30;
/// Time beyond the long-poll's wait given to the answer to arrive: the tracker answers at the
/// end of the wait, and the round trip must not be mistaken for a dead tracker.
const LONG_POLL_SLACK: Duration = Duration::from_secs(10);
/// Bound on a reachability probe: the tracker dials us back within its own probe timeout.
pub const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(20);

impl TrackerClient {
    /// `POST /reachability`: the tracker says where it sees us from, whether it could complete
    /// a TLS handshake with us at that address on `port`, and where its relay listens.
    pub async fn reachability(&self, port: u16) -> Result<ReachabilityResponse, TrackerError> {
        let http = self
            .http
            .post(self.api("reachability"))
            .json(&ReachabilityRequest { port })
            .timeout(REACHABILITY_TIMEOUT);
        self.send(http).await
    }

    /// `GET /introductions?wait_secs=N`: the introductions waiting for us, waiting up to
    /// `wait_secs` (at most [`MAX_INTRODUCTIONS_WAIT`]) for one to come.
    pub async fn introductions(&self, wait_secs: u32) -> Result<Introductions, TrackerError> {
        let wait = wait_secs.min(MAX_INTRODUCTIONS_WAIT);
        let mut url = self.api("introductions");
        url.query_pairs_mut()
            .append_pair("wait_secs", &wait.to_string());
        let timeout = Duration::from_secs(wait.into()) + LONG_POLL_SLACK;
        self.send(self.http.get(url).timeout(timeout)).await
    }
}
