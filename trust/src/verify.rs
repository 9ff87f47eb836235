//! Pinned verification: who is accepted is decided by certificate fingerprints, not by a CA.
//!
//! - [`PinnedServerCert`]: a client accepts a server only if its leaf certificate's fingerprint
//!   is the pin (the one the tracker listed for that peer, or the tracker's own).
//! - [`AnyProvenClientCert`]: a server accepts any client certificate whose handshake signature
//!   checks (so the client holds the key); *which* fingerprints are welcome is decided by the
//!   application after the handshake (the tracker's allowlist, a seeder's swarm).
//!
//! Signatures are always verified: skipping that would let anyone who has seen a certificate
//! (they are public) impersonate its owner.

use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use torrentguard_protocol::Fingerprint;

/// Accepts any client certificate whose holder proves, by the handshake signature, that it has
/// the private key. Who that is (the fingerprint) is decided by the application, which then
/// applies the allowlist. Client authentication is offered but optional, so curl and browsers
/// can read the public endpoints.
#[derive(Debug)]
pub struct AnyProvenClientCert {
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl AnyProvenClientCert {
    /// Optional client certificates (the tracker: anyone may read).
    pub fn new(provider: &CryptoProvider) -> Self {
        AnyProvenClientCert {
            algorithms: provider.signature_verification_algorithms,
            mandatory: false,
        }
    }

    /// A client certificate is required (between peers).
    pub fn mandatory(provider: &CryptoProvider) -> Self {
        AnyProvenClientCert {
            algorithms: provider.signature_verification_algorithms,
            mandatory: true,
        }
    }
}

impl ClientCertVerifier for AnyProvenClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA: hinting none lets the client send whichever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Self-signed identities have no chain to check and are long-lived by design; the
        // proof of key possession is the handshake signature below.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a [`PinnedServerCert`] accepts.
#[derive(Debug, Clone)]
pub enum Pin {
    /// Exactly this fingerprint.
    Exact(Fingerprint),
    /// Any certificate, whose fingerprint is recorded (trust on first use).
    Record(Arc<Mutex<Option<Fingerprint>>>),
}

/// The client side of identity-by-fingerprint: the server's leaf certificate must have the
/// pinned fingerprint. No CA, no host name; the handshake signature is still verified, which
/// proves the server holds that certificate's key (certificates are public, keys are not).
#[derive(Debug)]
pub struct PinnedServerCert {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerCert {
    pub fn new(pin: Pin, provider: &CryptoProvider) -> Self {
        PinnedServerCert {
            pin,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_der(end_entity);
        match &self.pin {
            Pin::Exact(want) if *want == got => Ok(ServerCertVerified::assertion()),
            Pin::Exact(want) => {
                tracing::warn!(expected = %want, presented = %got, "refusing server: certificate fingerprint does not match the pin");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            Pin::Record(slot) => {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The fingerprint of the certificate a TLS connection's peer presented.
pub fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
    certs
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of_der(c))
}
