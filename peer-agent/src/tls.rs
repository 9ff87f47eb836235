//! Pinned mutual TLS: who we accept is decided by certificate fingerprints, not by a CA.
//!
//! - [`PinnedServerCert`]: the client side accepts a server only if its leaf certificate's
//!   fingerprint is the pin (the one the tracker listed for that peer, or the tracker's own).
//! - [`AnyProvenClientCert::mandatory`]: the server side requires a client certificate and
//!   checks its handshake signature (so the peer holds the key); *which* fingerprints are
//!   welcome is decided after the handshake, once the `Hello` says which file's swarm to check.
//!
//! Both live in the tracker crate (which the agent embeds), so the workspace has one
//! implementation of identity-by-fingerprint; this module builds the configurations.
//!
//! Signatures are always verified: skipping that would let anyone who has seen a certificate
//! (they are public) impersonate its owner.

use std::sync::Arc;

use rustls::Error;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use torrentguard_protocol::Fingerprint;
use torrentguard_tracker::identity::Identity;
pub use torrentguard_tracker::tls::{AnyProvenClientCert, Pin, PinnedServerCert};

/// The crypto provider of the whole workspace: rustls's aws-lc-rs provider, whose key-exchange
/// groups put the hybrid post-quantum X25519MLKEM768 first and X25519 next.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server name sent in peer handshakes; verifiers ignore it (identity is the fingerprint).
pub fn peer_server_name() -> ServerName<'static> {
    ServerName::try_from("torrentguard-peer").expect("static DNS name is valid")
}

/// Client config for connecting to a peer whose fingerprint must be `pin`: TLS 1.3 only.
pub fn peer_client_config(
    identity: &Identity,
    pin: Fingerprint,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(
            Pin::Exact(pin),
            &provider,
        )))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(cfg)
}

/// Server config for the seeding listener: TLS 1.3 only, client certificate mandatory.
pub fn peer_server_config(identity: &Identity) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyProvenClientCert::mandatory(&provider)))
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = vec![PEER_ALPN.to_vec()];
    // Chunks are 256 KiB: let rustls fill records and keep a few in flight.
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// ALPN of the peer protocol, so a stray HTTPS client is refused in the handshake.
pub const PEER_ALPN: &[u8] = b"torrentguard/1";

/// Client config for the tracker (HTTPS): TLS 1.3 or 1.2, pinned or recording, with our
/// certificate as client identity.
pub fn tracker_client_config(identity: &Identity, pin: Pin) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(pin, &provider)))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The fingerprint of the certificate a TLS connection's peer presented.
pub fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
    certs
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of_der(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// Runs a handshake in memory; returns the client's error, if any.
    fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<(), Error> {
        let mut c = ClientConnection::new(Arc::new(client), peer_server_name())?;
        let mut s = ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                assert_eq!(
                    c.negotiated_key_exchange_group().map(|g| g.name()),
                    Some(rustls::NamedGroup::X25519MLKEM768)
                );
                assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn right_pin_passes_wrong_pin_fails() {
        let seeder = Identity::generate("seeder").unwrap();
        let leecher = Identity::generate("leecher").unwrap();
        let other = Identity::generate("other").unwrap();
        handshake(
            peer_client_config(&leecher, seeder.fingerprint).unwrap(),
            peer_server_config(&seeder).unwrap(),
        )
        .unwrap();
        let err = handshake(
            peer_client_config(&leecher, other.fingerprint).unwrap(),
            peer_server_config(&seeder).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn certificate_without_its_key_fails() {
        let seeder = Identity::generate("seeder").unwrap();
        let impostor_key = Identity::generate("impostor").unwrap();
        // The seeder's (public) certificate with someone else's key: the signature check fails.
        let forged = Identity {
            cert: seeder.cert.clone(),
            key: impostor_key.key.clone_key(),
            fingerprint: seeder.fingerprint,
        };
        let leecher = Identity::generate("leecher").unwrap();
        let cfg = peer_server_config(&forged);
        // rustls may refuse the mismatched pair up front; if not, the handshake must fail.
        if let Ok(server) = cfg {
            assert!(
                handshake(
                    peer_client_config(&leecher, seeder.fingerprint).unwrap(),
                    server
                )
                .is_err()
            );
        }
    }

    #[test]
    fn server_requires_a_client_certificate() {
        let seeder = Identity::generate("seeder").unwrap();
        let provider = provider();
        let anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(
                Pin::Exact(seeder.fingerprint),
                &provider,
            )))
            .with_no_client_auth();
        assert!(handshake(anonymous, peer_server_config(&seeder).unwrap()).is_err());
    }
}
