//! How a peer connection fails, in either direction, typed so the caller can tell a bad chunk
//! from a broken protocol, a stall, a refusal, a failed identity check or the network.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use torrentguard_protocol::FileId;
use torrentguard_protocol::bitfield::BitfieldError;
use torrentguard_protocol::compression::DecompressError;
use torrentguard_protocol::wire::WireError;

/// Why one peer connection ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A chunk the peer sent does not match the manifest's digest.
    #[error("sent chunks that fail verification (chunk {index})")]
    BadChunk { index: u32 },
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] Violation),
    /// Requests out and nothing arriving for that long.
    #[error("stalled: no data for {after:?}")]
    Stalled { after: Duration },
    /// Nothing requested for that long (the upload side's idle close).
    #[error("idle with nothing requested for {after:?}")]
    Idle { after: Duration },
    /// A step that did not finish in time: connecting, the handshakes.
    #[error("{step}: no answer within {after:?}")]
    Timeout { step: String, after: Duration },
    /// The peer said why it will not serve us (busy, cool-down, withdrawn, not in the swarm).
    #[error("peer refused: {reason}")]
    Refused { reason: String },
    /// We did not take the connection (a limit, or not the peer an introduction named).
    #[error("not admitted: {reason}")]
    NotAdmitted { reason: String },
    /// The peer said `Bye` in the middle of a session.
    #[error("peer closed: {reason}")]
    Closed { reason: String },
    /// The TCP connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: a certificate that is not the pinned one, no certificate, a
    /// signature that does not verify.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// TLS passed but the peer presented no certificate to identify it by.
    #[error("no client certificate")]
    NoCertificate,
    /// The connection ended inside a frame (typically mid-chunk).
    #[error("connection dropped in the middle of a frame")]
    MidFrame,
    /// The connection ended between frames without a `Bye`.
    #[error("connection closed")]
    Disconnected,
    /// We ended it: the share was withdrawn (it changed on disk).
    #[error("file withdrawn: {reason}")]
    Withdrawn { reason: String },
    /// No introduction to a peer behind a NAT.
    #[error("{source}")]
    Introduction {
        #[source]
        source: super::dial::RendezvousError,
    },
    /// No way to reach the peer was left to try.
    #[error("no way to reach {addr}")]
    Unreachable { addr: SocketAddr },
    /// A tracker's relay did not serve us (refused, or answered garbage).
    #[error(transparent)]
    Relay(#[from] super::relay_client::RelayError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A broken rule of the peer wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// A frame that does not decode (oversize, unknown type, malformed body).
    #[error("{0}")]
    Frame(WireError),
    #[error("no Hello from the peer")]
    NoHello,
    #[error("bad Hello: protocol version {version}, file {file_id}, {chunk_count} chunks")]
    BadHello {
        version: u16,
        file_id: FileId,
        chunk_count: u32,
    },
    #[error("bad Bitfield: {0}")]
    BadBitfield(#[from] BitfieldError),
    #[error("unexpected {frame} frame {when}")]
    Unexpected {
        frame: &'static str,
        when: &'static str,
    },
    #[error("sent chunk {0}, which was not requested")]
    Unrequested(u32),
    #[error("chunk index {index} beyond the {chunks} chunks")]
    OutOfRange { index: u32, chunks: u32 },
    /// A `ChunkZstd` frame that does not decode to exactly its chunk (a bomb, garbage).
    #[error("compressed chunk {index} refused: {source}")]
    BadCompressedChunk {
        index: u32,
        #[source]
        source: DecompressError,
    },
}

impl From<WireError> for PeerError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => PeerError::MidFrame,
            // A peer killed between frames: rustls reports the missing close_notify with a
            // link to its manual; the user needs only to know the connection dropped.
            WireError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                PeerError::Io(io::Error::new(
                    e.kind(),
                    "connection dropped by the peer (no orderly close)",
                ))
            }
            WireError::Io(e) => PeerError::Io(e),
            other => PeerError::Protocol(Violation::Frame(other)),
        }
    }
}

impl PeerError {
    /// Whether the peer is at fault: a broken protocol, a bad chunk, or holding a connection
    /// for nothing. Network trouble and refusals are nobody's fault.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            PeerError::Protocol(_) | PeerError::BadChunk { .. } | PeerError::Idle { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_are_told_apart() {
        assert!(matches!(
            PeerError::from(WireError::Truncated),
            PeerError::MidFrame
        ));
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tls: peer closed without close_notify",
        );
        let e = PeerError::from(WireError::Io(eof));
        assert!(matches!(e, PeerError::Io(_)), "{e:?}");
        assert!(e.to_string().contains("no orderly close"), "{e}");
        assert!(!e.is_peer_fault());
        let e = PeerError::from(WireError::UnknownType(0x7f));
        assert!(
            matches!(e, PeerError::Protocol(Violation::Frame(_))),
            "{e:?}"
        );
        assert!(e.is_peer_fault());
        assert!(
            PeerError::BadChunk { index: 3 }
                .to_string()
                .contains("chunk 3")
        );
        let refused = PeerError::Refused {
            reason: "busy".into(),
        };
        assert!(!refused.is_peer_fault());
    }
}
