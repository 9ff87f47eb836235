//! The rustls configurations of the workspace, all on one provider and the verifiers of
//! [`crate::verify`]:
//!
//! - peer links: TLS 1.3 only, a client certificate required both ways, ALPN [`PEER_ALPN`];
//! - HTTPS (the tracker and its clients): TLS 1.3 or 1.2, client certificate optional on the
//!   server, ALPN h2 and http/1.1.

use std::sync::Arc;

use rustls::Error;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use torrentguard_protocol::Fingerprint;

use crate::identity::Identity;
use crate::verify::{AnyProvenClientCert, Pin, PinnedServerCert};

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

/// ALPN of the HTTPS endpoints: HTTP/2 first, HTTP/1.1 for simple clients.
pub const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Server config for an HTTPS endpoint (the tracker): TLS 1.3 and 1.2 (1.2 for older HTTP
/// clients; peers use 1.3), ALPN h2 and http/1.1, client certificates offered but optional so
/// curl and browsers can read the public endpoints.
pub fn https_server_config(identity: &Identity) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(AnyProvenClientCert::new(&provider)))
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client config for an HTTPS server (the tracker) pinned (or recorded) by `pin`: TLS 1.3 or
/// 1.2, with `identity` as client certificate if given, and no ALPN (the caller sets the
/// protocols its HTTP client speaks).
pub fn pinned_client_config(
    pin: Pin,
    identity: Option<&Identity>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(pin, &provider)));
    match identity {
        Some(id) => builder.with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key()),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Client config for the tracker's REST API: [`pinned_client_config`] presenting `identity`,
/// ALPN h2 and http/1.1.
pub fn tracker_client_config(identity: &Identity, pin: Pin) -> Result<rustls::ClientConfig, Error> {
    let mut cfg = pinned_client_config(pin, Some(identity))?;
    cfg.alpn_protocols = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
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

    #[test]
    fn https_right_pin_passes_wrong_pin_fails() {
        let tracker = Identity::generate("tracker").unwrap();
        let agent = Identity::generate("agent").unwrap();
        let other = Identity::generate("other").unwrap();
        let pin = Pin::Exact(tracker.fingerprint);
        handshake(
            tracker_client_config(&agent, pin).unwrap(),
            https_server_config(&tracker).unwrap(),
        )
        .unwrap();
        let err = handshake(
            tracker_client_config(&agent, Pin::Exact(other.fingerprint)).unwrap(),
            https_server_config(&tracker).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn https_client_certificate_is_optional_and_recording_pin_records() {
        let tracker = Identity::generate("tracker").unwrap();
        let seen = Arc::new(std::sync::Mutex::new(None));
        // Anonymous (curl, healthcheck) and trust-on-first-use: accepted, fingerprint noted.
        handshake(
            pinned_client_config(Pin::Record(seen.clone()), None).unwrap(),
            https_server_config(&tracker).unwrap(),
        )
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(tracker.fingerprint));
    }

    #[test]
    fn https_certificate_without_its_key_fails() {
        let tracker = Identity::generate("tracker").unwrap();
        let impostor = Identity::generate("impostor").unwrap();
        let forged = Identity {
            cert: tracker.cert.clone(),
            key: impostor.key.clone_key(),
            fingerprint: tracker.fingerprint,
        };
        // rustls may refuse the mismatched pair up front; if not, the handshake must fail.
        if let Ok(server) = https_server_config(&forged) {
            let client = pinned_client_config(Pin::Exact(tracker.fingerprint), None).unwrap();
            assert!(handshake(client, server).is_err());
        }
    }

    #[test]
    fn peer_fingerprint_is_the_leaf_certificates() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        let chain = [a.cert.clone(), b.cert.clone()];
        assert_eq!(crate::peer_fingerprint(Some(&chain)), Some(a.fingerprint));
        assert_eq!(crate::peer_fingerprint(Some(&[])), None);
        assert_eq!(crate::peer_fingerprint(None), None);
    }
}
