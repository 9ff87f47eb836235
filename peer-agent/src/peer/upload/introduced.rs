//! Connections an introduction brought: a hole punch or a relay session the agent made on a
//! tracker's word, handed to the seeder to be served exactly as an accepted connection is.

use std::net::SocketAddr;
use std::sync::Arc;

use torrentguard_protocol::Fingerprint;

use super::{CONNECTION_STOP_GRACE, Seeder};
use crate::peer::connection::PeerConnection;
use crate::peer::error::PeerError;
use crate::peer::transport::Transport;

impl Seeder {
    /// Serves `transport`, a connection to the downloader an introduction named: `peer` is its
    /// fingerprint, `addr` its public address as the introduction gave it. The same path as an
    /// accepted connection: the connection limit, the cap per address (on `addr`), this seeder
    /// as the TLS server, then the certificate's caps and cool-down and the swarm check. A TLS
    /// client other than `peer` is dropped before anything else. Ends with the seeder's stop,
    /// within [`CONNECTION_STOP_GRACE`].
    pub async fn serve_introduced(
        self: Arc<Self>,
        transport: Transport,
        addr: SocketAddr,
        peer: Fingerprint,
    ) -> Result<(), PeerError> {
        let not_admitted = |reason: &str| PeerError::NotAdmitted {
            reason: reason.to_string(),
        };
        let _permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| not_admitted("connection limit reached"))?;
        let _address_slot = self
            .admission
            .admit_address(addr.ip().to_canonical())
            .ok_or_else(|| not_admitted("too many connections from this address"))?;
        let stopping = self.cancel.clone();
        let grace_over = async {
            stopping.cancelled().await;
            tokio::time::sleep(CONNECTION_STOP_GRACE).await;
        };
        let acceptor = self.acceptor.clone();
        tokio::select! {
            r = self.serve_over(transport, addr, acceptor, Some(peer)) => r,
            _ = grace_over => {
                tracing::debug!(peer = %addr, "introduced connection dropped at shutdown");
                Ok(())
            }
        }
    }

    /// `conn` if it is the introduced peer (or was not introduced); else a strike against the
    /// certificate it presented, and an error.
    pub(super) fn check_introduced(
        &self,
        conn: PeerConnection,
        introduced: Option<Fingerprint>,
    ) -> Result<PeerConnection, PeerError> {
        match introduced {
            Some(want) if conn.fingerprint != want => {
                let presented = conn.fingerprint;
                tracing::warn!(peer = %conn.addr, %presented, expected = %want,
                    "an introduced connection presented another certificate; dropping it");
                self.admission.strike(presented);
                Err(PeerError::NotAdmitted {
                    reason: format!("introduced as {want}, presented {presented}"),
                })
            }
            _ => Ok(conn),
        }
    }
}
