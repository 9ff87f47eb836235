//! A client for the tracker's REST API: pins the tracker's fingerprint and presents the
//! certificate of a `torrentguard` identity directory (cert.pem, key.pem) as its own, exactly as
//! a peer does, with the same TLS configuration ([`tracker_client_config`] of
//! `torrentguard-trust`, whose verifier is tested on its own in that crate).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;
use torrentguard_protocol::Fingerprint;
use torrentguard_trust::config::tracker_client_config;
use torrentguard_trust::identity::{CERT_FILE, KEY_FILE};
use torrentguard_trust::{Identity, Pin};

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
        let identity =
            Identity::from_pem_files(&identity_dir.join(CERT_FILE), &identity_dir.join(KEY_FILE))
                .context("reading the agent identity")?;
        let config = tracker_client_config(&identity, Pin::Exact(pin))?;
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
