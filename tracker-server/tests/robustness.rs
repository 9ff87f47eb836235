//! Mangled input never makes a handler fail: thousands of corrupted manifests and announces go
//! straight into the router (no TLS, to make many cheap), and every answer must be a success or
//! a 4xx with the JSON error body, never a 5xx, and the tracker must stay consistent.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::*;
use torrentguard_protocol::api::ErrorBody;
use torrentguard_protocol::{Bitfield, Fingerprint};
use torrentguard_tracker::app::{AppConfig, AppState, LocalAddr, PeerIdentity, router};

use tower::ServiceExt as _;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit: flip, insert, delete, truncate, or splice in a JSON-significant token.
fn mangle(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b"-1",
        b"1e999",
        b"18446744073709551616",
        b"\"../../etc/passwd\"",
        b"\\u0000",
        b"true",
        b"\"sha1\"",
        b"0",
    ];
    let mut out = input.to_vec();
    for _ in 0..=rng.below(3) {
        let len = out.len().max(1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len);
                out.insert(i.min(out.len()), rng.next() as u8);
            }
            2 if !out.is_empty() => {
                let i = rng.below(len);
                out.remove(i);
            }
            3 => out.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len).min(out.len());
                let t = TOKENS[rng.below(TOKENS.len())];
                out.splice(i..i, t.iter().copied());
            }
        }
    }
    out
}

async fn send(
    app: &axum::Router,
    path: &str,
    body: Vec<u8>,
    who: Fingerprint,
) -> Result<StatusCode> {
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))?;
    req.extensions_mut().insert(PeerIdentity(Some(who)));
    req.extensions_mut()
        .insert(ConnectInfo("127.0.0.1:5555".parse::<SocketAddr>()?));
    req.extensions_mut()
        .insert(LocalAddr("127.0.0.1:8443".parse::<SocketAddr>()?));
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    ensure!(
        !status.is_server_error(),
        "{path} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if status.is_client_error() {
        let e: ErrorBody = serde_json::from_slice(&bytes)?;
        ensure!(!e.error.code.is_empty());
    }
    Ok(status)
}

for_each_store!(mangled_manifests_and_announces_never_fail_the_server);
async fn mangled_manifests_and_announces_never_fail_the_server(backend: Backend) -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let store =
            torrentguard_tracker::store::open(&backend.database(&dir.path().join("t.db"))).await?;
        let state = AppState::new(
            store.clone(),
            AppConfig {
                fingerprint: Fingerprint::from_bytes([9; 32]),
                peer_ttl: Duration::from_secs(60),
                announce_interval: Duration::from_secs(30),
                swarm_token: None,
                allowlist: vec![],
                reputation: Default::default(),
            },
        );
        let app = router(state);
        let who = Fingerprint::from_bytes([1; 32]);
        let m = manifest_for("fuzz.bin", &[4u8; 70_000]);
        let manifest = serde_json::to_vec(&m)?;
        let announce = serde_json::to_vec(&serde_json::json!({
            "file_id": m.file_id(),
            "port": 6881,
            "event": "progress",
            "bitfield": Bitfield::full(m.chunk_count()).to_base64(),
        }))?;
        // The real file first, so announces that survive mangling reach the store.
        send(&app, "/api/v1/files", manifest.clone(), who).await?;

        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..1500 {
            for (path, body) in [
                ("/api/v1/files", &manifest),
                ("/api/v1/announce", &announce),
            ] {
                match send(&app, path, mangle(&mut rng, body), who).await? {
                    s if s.is_success() => accepted += 1,
                    _ => refused += 1,
                }
            }
        }
        // The mangling must exercise both sides, or this test proves nothing.
        ensure!(
            accepted > 20 && refused > 1000,
            "{accepted} accepted, {refused} refused"
        );
        // Whatever got in is well-formed: every stored manifest reads back and verifies.
        let mut after = None;
        loop {
            let page = store.list_files(after, 1000, 0).await?;
            for f in &page.items {
                let stored = store.manifest(f.file_id).await?;
                ensure!(stored.is_some_and(|s| s.verify(&f.file_id).is_ok()));
            }
            match page.next {
                Some(c) => after = Some(c.parse()?),
                None => break,
            }
        }
        store.close().await;
        Ok(())
    })
    .await
}
