//! Connections with other peers, both directions: framing, the TLS handshake with pinned
//! identities, the upload side (serving shares) and the download side (one peer of a
//! download). Acts on `torrent/` state; never talks to the tracker.

pub mod connection;
pub mod dial;
pub mod download;
pub mod error;
pub mod frames;
pub mod punch;
pub mod relay_client;
pub mod transport;
pub mod upload;

pub use connection::{PeerConnection, PeerWriter};
pub use error::{PeerError, Violation};
pub use frames::{BufferPool, FrameReader, Incoming, write_frame};
pub use transport::{Path, Transport};
pub use upload::{Refusal, Seeder, SeederLimits};
