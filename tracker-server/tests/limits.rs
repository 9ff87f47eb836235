//! Overload protection of a real tracker: write rates per identity and per address, the
//! concurrency bound, the announce cache, and the bounds on what one client can store.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use common::*;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use torrentguard_protocol::api::{ErrorBody, Page, PeerSummary};
use torrentguard_protocol::{Bitfield, Entry, HashAlgo, Manifest};
use torrentguard_tracker::limits::Rate;
use torrentguard_trust::Identity;

const OFF: Rate = Rate {
    per_sec: 0.0,
    burst: 0,
};

/// A bucket that does not refill within a test: exactly `burst` writes, then 429s.
fn burst_only(burst: u32) -> Rate {
    Rate {
        per_sec: 0.01,
        burst,
    }
}

fn announce_body(m: &Manifest, event: &str, held: u32) -> serde_json::Value {
    let mut b = Bitfield::new(m.chunk_count());
    for i in 0..held {
        b.set(i);
    }
    json!({
        "file_id": m.file_id(),
        "port": 6881,
        "event": event,
        "bitfield": b.to_base64(),
    })
}

fn data(n: u8, chunks: usize) -> Vec<u8> {
    vec![n; chunks * 16 * 1024]
}

/// Checks a 429: the JSON error, a whole-second `Retry-After`, and the limit named.
async fn expect_429(resp: reqwest::Response, scope: &str) -> Result<u64> {
    let retry = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .context("a 429 without Retry-After")?
        .to_str()?
        .parse::<u64>()
        .context("Retry-After is not whole seconds")?;
    ensure!(retry >= 1, "Retry-After {retry}");
    let message = expect_error(resp, 429, "rate_limited").await?;
    ensure!(message.contains(scope), "{message:?} does not name {scope}");
    Ok(retry)
}

async fn metrics(h: &Harness) -> Result<String> {
    Ok(h.anonymous
        .get(h.url("/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

fn rate_limited(text: &str, scope: &str) -> Option<u64> {
    metric(
        text,
        &format!("torrentguard_tracker_rate_limited_total{{scope=\"{scope}\"}}"),
    )
}

/// A client of `identity` that speaks only `alpn`.
fn peer_over(h: &Harness, identity: &Identity, alpn: &[u8]) -> reqwest::Client {
    let mut config = tls_config(
        h.tracker.fingerprint,
        Some((identity.cert.clone(), identity.key.clone_key())),
    );
    config.alpn_protocols = vec![alpn.to_vec()];
    client_with(config)
}

for_each_store!(a_flood_from_one_identity_gets_429_while_another_still_announces);
async fn a_flood_from_one_identity_gets_429_while_another_still_announces(
    backend: Backend,
) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| {
            c.limits.per_identity = burst_only(5);
            c.limits.per_address = OFF;
        })
        .await?;
        let m = manifest_for("flood.bin", &data(1, 2));
        let (alice, bob) = (h.as_peer(&h.alice), h.as_peer(&h.bob));
        expect_json::<serde_json::Value>(alice.post(h.api("/files")).json(&m).send().await?, 201)
            .await?;
        // Four more writes fit alice's burst of five; the sixth is refused, over HTTP/2.
        for held in 0..4 {
            let resp = alice
                .post(h.api("/announce"))
                .json(&announce_body(&m, "progress", held % 3))
                .send()
                .await?;
            expect_json::<serde_json::Value>(resp, 200).await?;
        }
        let resp = alice
            .post(h.api("/announce"))
            .json(&announce_body(&m, "progress", 2))
            .send()
            .await?;
        ensure!(
            resp.version() == reqwest::Version::HTTP_2,
            "{:?}",
            resp.version()
        );
        let retry = expect_429(resp, "identity").await?;
        ensure!(
            retry > 1,
            "0.01 writes/s should ask for a long wait, not {retry}"
        );
        // The same over HTTP/1.1, and for registering as much as for announcing.
        let alice_h1 = peer_over(&h, &h.alice, b"http/1.1");
        let resp = alice_h1.post(h.api("/files")).json(&m).send().await?;
        ensure!(resp.version() == reqwest::Version::HTTP_11);
        expect_429(resp, "identity").await?;
        // Bob's honest announces still go through.
        for held in 0..3 {
            let resp = bob
                .post(h.api("/announce"))
                .json(&announce_body(&m, "progress", held))
                .send()
                .await?;
            expect_json::<serde_json::Value>(resp, 200).await?;
        }
        // Reads are not writes: alice can still look.
        ensure!(alice.get(h.api("/files")).send().await?.status() == 200);
        let text = metrics(&h).await?;
        ensure!(rate_limited(&text, "identity") == Some(2), "{text}");
        ensure!(rate_limited(&text, "address") == Some(0), "{text}");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

/// A client of `identity` whose connections come from `local`.
fn peer_from(h: &Harness, identity: &Identity, local: IpAddr) -> Result<reqwest::Client> {
    let config = tls_config(
        h.tracker.fingerprint,
        Some((identity.cert.clone(), identity.key.clone_key())),
    );
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .local_address(local)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

for_each_store!(a_flood_from_one_address_is_limited_whatever_certificates_it_uses);
async fn a_flood_from_one_address_is_limited_whatever_certificates_it_uses(
    backend: Backend,
) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| {
            c.limits.per_identity = OFF;
            c.limits.per_address = burst_only(4);
        })
        .await?;
        let m = manifest_for("nat.bin", &data(2, 1));
        let here: IpAddr = "127.0.0.1".parse()?;
        let carol = Identity::generate("carol")?;
        let register = |who: reqwest::Client| {
            let req = who.post(h.api("/files")).json(&m);
            async move { Ok::<_, anyhow::Error>(req.send().await?) }
        };
        ensure!(register(peer_from(&h, &h.alice, here)?).await?.status() == 201);
        for who in [&h.alice, &h.bob, &h.bob] {
            ensure!(register(peer_from(&h, who, here)?).await?.status() == 200);
        }
        // A fresh certificate from the same address does not get a fresh allowance.
        expect_429(register(peer_from(&h, &carol, here)?).await?, "address").await?;
        // Another address does.
        let there: IpAddr = "127.0.0.2".parse()?;
        ensure!(register(peer_from(&h, &carol, there)?).await?.status() == 200);
        // Without a certificate too, and the 429 is JSON with Retry-After over both HTTP
        // versions as curl sees it.
        if curl_available() {
            let dir = tempfile::tempdir()?;
            for (flag, want) in [("--http2", "429 2"), ("--http1.1", "429 1.1")] {
                let headers = dir.path().join(format!("headers{flag}"));
                let headers_arg = headers.display().to_string();
                let url = h.api("/announce");
                let args = [
                    flag,
                    "-D",
                    &headers_arg,
                    "-H",
                    "content-type: application/json",
                    "-d",
                    "{}",
                    &url,
                ];
                let (_, status, body) = curl(&args).await?;
                ensure!(status == want, "curl {flag}: {status} {body}");
                let error: ErrorBody = serde_json::from_str(body.trim())
                    .with_context(|| format!("curl {flag}: body {body:?}"))?;
                ensure!(error.error.code == "rate_limited", "{body}");
                let head = std::fs::read_to_string(&headers)?.to_ascii_lowercase();
                ensure!(head.contains("retry-after: "), "curl {flag}: {head}");
            }
        }
        let text = metrics(&h).await?;
        ensure!(rate_limited(&text, "identity") == Some(0), "{text}");
        ensure!(rate_limited(&text, "address") >= Some(1), "{text}");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

async fn last_seen(h: &Harness) -> Result<i64> {
    let page: Page<PeerSummary> =
        expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
    match page.items.as_slice() {
        [one] => Ok(one.last_seen),
        other => bail!("expected one peer, got {other:?}"),
    }
}

/// Waits until the Unix clock (the store's resolution) has passed `t`.
async fn clock_past(t: i64) -> Result<()> {
    eventually(Duration::from_secs(5), "the clock to tick", || async move {
        Ok((torrentguard_tracker::app::unix_now() > t).then_some(()))
    })
    .await
}

for_each_store!(a_repeat_announce_within_the_interval_is_answered_without_a_write);
async fn a_repeat_announce_within_the_interval_is_answered_without_a_write(
    backend: Backend,
) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |_| {}).await?;
        let m = manifest_for("repeat.bin", &data(3, 3));
        let alice = h.as_peer(&h.alice);
        let bob = h.as_peer(&h.bob);
        expect_json::<serde_json::Value>(alice.post(h.api("/files")).json(&m).send().await?, 201)
            .await?;
        let announce = |who: &reqwest::Client, event: &str, held: u32| {
            who.post(h.api("/announce"))
                .json(&announce_body(&m, event, held))
                .send()
        };
        expect_json::<serde_json::Value>(announce(&alice, "started", 1).await?, 200).await?;
        let first = last_seen(&h).await?;
        clock_past(first).await?;
        // The same state again, before the interval: answered (with the other peers), not
        // written, so last_seen stays.
        expect_json::<serde_json::Value>(announce(&bob, "started", 3).await?, 200).await?;
        let resp: serde_json::Value =
            expect_json(announce(&alice, "progress", 1).await?, 200).await?;
        ensure!(resp["peers"].as_array().map(Vec::len) == Some(1), "{resp}");
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        let alice_row = peers
            .items
            .iter()
            .find(|p| p.fingerprint == h.alice.fingerprint)
            .context("alice is listed")?;
        ensure!(
            alice_row.last_seen == first,
            "a repeat was written: {alice_row:?}"
        );
        // A changed bitfield is written.
        expect_json::<serde_json::Value>(announce(&alice, "progress", 2).await?, 200).await?;
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        let alice_row = peers
            .items
            .iter()
            .find(|p| p.fingerprint == h.alice.fingerprint)
            .context("alice is listed")?;
        ensure!(
            alice_row.last_seen > first,
            "a change was not written: {alice_row:?}"
        );
        // Stopped always writes: alice leaves the swarm at once.
        expect_json::<serde_json::Value>(announce(&alice, "stopped", 2).await?, 200).await?;
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(
            peers
                .items
                .iter()
                .all(|p| p.fingerprint != h.alice.fingerprint),
            "{peers:?}"
        );
        // And announcing the old state again after stopping is written again.
        expect_json::<serde_json::Value>(announce(&alice, "started", 2).await?, 200).await?;
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(peers.items.len() == 2, "{peers:?}");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(each_bound_on_what_a_client_stores_has_its_own_4xx);
async fn each_bound_on_what_a_client_stores_has_its_own_4xx(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| {
            c.limits.max_files_per_identity = 2;
            c.limits.max_manifest_chunks = 3;
            c.limits.max_manifest_entries = 2;
            c.limits.max_peers_per_file = 2;
        })
        .await?;
        let (alice, bob) = (h.as_peer(&h.alice), h.as_peer(&h.bob));
        let carol = h.as_peer(&Identity::generate("carol")?);
        let files: Vec<Manifest> = (0..3u8)
            .map(|n| manifest_for(&format!("f{n}.bin"), &data(n, 1)))
            .collect();
        let register =
            |who: &reqwest::Client, m: &Manifest| who.post(h.api("/files")).json(m).send();
        // Files per identity: the third new one is refused; known ones still answer 200, and
        // another identity has its own count.
        ensure!(register(&alice, &files[0]).await?.status() == 201);
        ensure!(register(&alice, &files[1]).await?.status() == 201);
        expect_error(register(&alice, &files[2]).await?, 409, "too_many_files").await?;
        ensure!(register(&alice, &files[0]).await?.status() == 200);
        ensure!(register(&bob, &files[2]).await?.status() == 201);
        // Manifest size: chunks, then entries.
        let big = manifest_for("big.bin", &data(9, 4));
        expect_error(register(&bob, &big).await?, 413, "manifest_too_large").await?;
        let dirs = ["a", "b", "c"].map(|d| Entry::dir(d, 0o755)).to_vec();
        let wide = Manifest::tree("wide", 16 * 1024, HashAlgo::Sha256, dirs, vec![]);
        expect_error(register(&bob, &wide).await?, 413, "manifest_too_large").await?;
        // Peers per file: a third peer is refused, the two in the swarm keep announcing, and
        // once one leaves there is room.
        let m = &files[0];
        let announce = |who: &reqwest::Client, event: &str, held: u32| {
            who.post(h.api("/announce"))
                .json(&announce_body(m, event, held))
                .send()
        };
        ensure!(announce(&alice, "started", 0).await?.status() == 200);
        ensure!(announce(&bob, "started", 0).await?.status() == 200);
        expect_error(announce(&carol, "started", 0).await?, 409, "swarm_full").await?;
        ensure!(announce(&alice, "completed", 1).await?.status() == 200);
        ensure!(announce(&bob, "stopped", 0).await?.status() == 200);
        ensure!(announce(&carol, "started", 0).await?.status() == 200);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

/// A TLS connection as `identity` that has sent a request head promising a body it never
/// sends: a request in flight for as long as the connection is held.
async fn stuck_upload(
    h: &Harness,
    identity: &Identity,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = tls_config(
        h.tracker.fingerprint,
        Some((identity.cert.clone(), identity.key.clone_key())),
    );
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.tracker.local_addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from("torrentguard-tracker")?, tcp)
        .await?;
    tls.write_all(
        b"POST /api/v1/files HTTP/1.1\r\nhost: tracker\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .await?;
    tls.flush().await?;
    Ok(tls)
}

#[tokio::test]
async fn past_the_concurrency_bound_requests_get_429_over_h2_and_http1() -> Result<()> {
    within(async {
        let h = Harness::start(|c| c.limits.max_concurrent_requests = 1).await?;
        let stuck = stuck_upload(&h, &h.alice).await?;
        // Once the upload holds the only slot, everything else in the API is refused.
        let h2 = &h.as_peer(&h.bob);
        let files = &h.api("/files");
        eventually(
            Duration::from_secs(20),
            "a 429 while the upload is stuck",
            || async move {
                let resp = h2.get(files).send().await?;
                Ok((resp.status() == 429).then_some(()))
            },
        )
        .await?;
        let resp = h2.get(h.api("/peers")).send().await?;
        ensure!(resp.version() == reqwest::Version::HTTP_2);
        ensure!(expect_429(resp, "concurrency").await? == 1);
        let h1 = peer_over(&h, &h.bob, b"http/1.1");
        let resp = h1.get(h.api("/files")).send().await?;
        ensure!(resp.version() == reqwest::Version::HTTP_11);
        expect_429(resp, "concurrency").await?;
        // Health and metrics are outside the bound, so an overloaded tracker still looks alive.
        ensure!(h.anonymous.get(h.url("/healthz")).send().await?.status() == 200);
        ensure!(rate_limited(&metrics(&h).await?, "concurrency") >= Some(2));
        // Once the upload is given up the slot is free again.
        drop(stuck);
        eventually(
            Duration::from_secs(20),
            "the slot to free up",
            || async move { Ok((h2.get(files).send().await?.status() == 200).then_some(())) },
        )
        .await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}
