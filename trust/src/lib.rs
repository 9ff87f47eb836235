//! Identity and trust for TorrentGuard: who a tracker or peer *is* (the SHA-256 fingerprint of
//! a long-lived self-signed certificate) and how a TLS handshake proves it.
//!
//! - [`identity`]: the key pair and certificate kept in a data directory, made on first use.
//! - [`verify`]: the rustls verifiers that pin fingerprints instead of trusting a CA:
//!   [`PinnedServerCert`] on the client side, [`AnyProvenClientCert`] on the server side.
//! - [`config`]: the rustls configurations built on them for peer links and HTTPS.
//!
//! The tracker, the agent, the tests and the bench all use this one implementation, so a
//! change to how identity is checked is made (and tested) once.

pub mod config;
pub mod identity;
pub mod verify;

pub use identity::{Identity, IdentityError};
pub use verify::{AnyProvenClientCert, Pin, PinnedServerCert, peer_fingerprint};
