//! A client for the tracker's REST API: pins the tracker's fingerprint and presents the
//! certificate of a `torrentguard` identity directory (cert.pem, key.pem) as its own, exactly as
//! a peer does. Its verifier is the test's own code, not the binaries'.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use torrentguard_protocol::Fingerprint;

#[derive(Debug)]
struct PinnedServer {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of_der(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
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

/// A blocking façade over an async reqwest client (the tests themselves are synchronous).
pub struct Api {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for the tracker at `url` pinned to `tracker_fp`, presenting the identity stored
    /// in the agent data directory `identity_dir`.
    pub fn new(url: &str, tracker_fp: &str, identity_dir: &Path) -> Result<Api> {
        let pin: Fingerprint = tracker_fp
            .parse()
            .map_err(|e| anyhow::anyhow!("bad fingerprint {tracker_fp:?}: {e:?}"))?;
        let cert = CertificateDer::from_pem_file(identity_dir.join("cert.pem"))
            .context("reading cert.pem")?;
        let key = PrivateKeyDer::from_pem_file(identity_dir.join("key.pem"))
            .context("reading key.pem")?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(PinnedServer {
            pin,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config =
            rustls::ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(vec![cert], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Api {
            runtime,
            client,
            base: format!("{}/api/v1", url.trim_end_matches('/')),
        })
    }

    /// GET `path` (under /api/v1): status and JSON body.
    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let req = self.client.get(format!("{}{path}", self.base));
        self.send(req)
    }

    /// POST `body` as JSON to `path` (under /api/v1): status and JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let req = self.client.post(format!("{}{path}", self.base)).json(body);
        self.send(req)
    }

    fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        self.runtime.block_on(async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            let body = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("status {status}, body not JSON: {text:?}"))?
            };
            Ok((status, body))
        })
    }

    /// The peers the tracker lists for `file_id`.
    pub fn peers(&self, file_id: &str) -> Result<Vec<Value>> {
        let (status, body) = self.get(&format!("/files/{file_id}/peers"))?;
        anyhow::ensure!(status == 200, "GET peers: {status} {body}");
        Ok(body["peers"].as_array().cloned().unwrap_or_default())
    }
}
