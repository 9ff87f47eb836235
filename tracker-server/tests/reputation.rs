//! Peer reputation over the REST API: `POST /api/v1/reports`, scores in every peer listing,
//! announce answers ordered by score with the worst withheld.

mod common;

use anyhow::{Result, ensure};
use common::*;
use serde_json::{Value, json};
use torrentguard_protocol::api::{AnnounceResponse, FilePeers, Page, PeerInfo, PeerSummary};
use torrentguard_protocol::{Bitfield, Manifest};
use torrentguard_trust::Identity;

fn announce_body(m: &Manifest, port: u16) -> Value {
    json!({
        "file_id": m.file_id(),
        "port": port,
        "event": "completed",
        "bitfield": Bitfield::full(m.chunk_count()).to_base64(),
    })
}

async fn announce(h: &Harness, who: &Identity, m: &Manifest, port: u16) -> Result<Vec<PeerInfo>> {
    let resp = h
        .as_peer(who)
        .post(h.api("/announce"))
        .json(&announce_body(m, port))
        .send()
        .await?;
    Ok(expect_json::<AnnounceResponse>(resp, 200).await?.peers)
}

async fn report(h: &Harness, reporter: &Identity, body: Value) -> Result<reqwest::Response> {
    Ok(h.as_peer(reporter)
        .post(h.api("/reports"))
        .json(&body)
        .send()
        .await?)
}

fn bad_chunk(m: &Manifest, peer: &Identity, chunk: u32) -> Value {
    json!({"file_id": m.file_id(), "peer": peer.fingerprint, "kind": "bad_chunk", "chunk": chunk})
}

/// A swarm of one file: `bad` and `good` seed it, `asker` announces to see the answer.
struct Swarm {
    h: Harness,
    m: Manifest,
    bad: Identity,
    good: Identity,
}

impl Swarm {
    async fn start(backend: &Backend) -> Result<Swarm> {
        let h = Harness::start_on(backend, |_| {}).await?;
        let m = manifest_for("r.bin", &vec![3u8; 40_000]); // 3 chunks
        let resp = h
            .as_peer(&h.alice)
            .post(h.api("/files"))
            .json(&m)
            .send()
            .await?;
        ensure!(resp.status().as_u16() == 201);
        // Fingerprints decide the store's order; name them so that `bad` would come first.
        let (mut bad, mut good) = (Identity::generate("x")?, Identity::generate("y")?);
        if bad.fingerprint > good.fingerprint {
            std::mem::swap(&mut bad, &mut good);
        }
        announce(&h, &bad, &m, 7001).await?;
        announce(&h, &good, &m, 7002).await?;
        Ok(Swarm { h, m, bad, good })
    }

    /// What a new downloader (alice) is told.
    async fn answer(&self) -> Result<Vec<PeerInfo>> {
        announce(&self.h, &self.h.alice, &self.m, 7003).await
    }

    async fn reported_by(&self, reporter: &Identity, status: u16) -> Result<Value> {
        let resp = report(&self.h, reporter, bad_chunk(&self.m, &self.bad, 1)).await?;
        expect_json(resp, status).await
    }
}

fn fingerprints(peers: &[PeerInfo]) -> Vec<torrentguard_protocol::Fingerprint> {
    peers.iter().map(|p| p.fingerprint).collect()
}

for_each_store!(a_peer_reported_by_one_identity_stays_listed_but_ranks_last);
async fn a_peer_reported_by_one_identity_stays_listed_but_ranks_last(
    backend: Backend,
) -> Result<()> {
    within(async {
        let s = Swarm::start(&backend).await?;
        let clean = s.answer().await?;
        ensure!(fingerprints(&clean) == vec![s.bad.fingerprint, s.good.fingerprint]);
        ensure!(
            clean
                .iter()
                .all(|p| p.reputation.is_some_and(|r| r.score == 100))
        );

        let first = s.reported_by(&s.h.bob, 201).await?;
        ensure!(first["new_reporter"] == true, "{first}");
        ensure!(
            first["reputation"] == json!({"score": 50, "reporters": 1}),
            "{first}"
        );

        let peers = s.answer().await?;
        ensure!(
            fingerprints(&peers) == vec![s.good.fingerprint, s.bad.fingerprint],
            "listed, best first: {peers:?}"
        );
        let r = peers[1].reputation.expect("scored");
        ensure!(r.score == 50 && r.reporters == 1, "{r:?}");
        Ok(())
    })
    .await
}

for_each_store!(repeated_reports_by_one_identity_count_once);
async fn repeated_reports_by_one_identity_count_once(backend: Backend) -> Result<()> {
    within(async {
        let s = Swarm::start(&backend).await?;
        s.reported_by(&s.h.bob, 201).await?;
        for _ in 0..5 {
            let again = s.reported_by(&s.h.bob, 202).await?;
            ensure!(again["new_reporter"] == false, "{again}");
            ensure!(again["reputation"]["reporters"] == 1, "{again}");
        }
        let peers = s.answer().await?;
        ensure!(
            peers.len() == 2,
            "one hostile reporter withheld a peer: {peers:?}"
        );
        Ok(())
    })
    .await
}

for_each_store!(a_peer_reported_by_three_identities_is_withheld_but_still_shown_with_its_score);
async fn a_peer_reported_by_three_identities_is_withheld_but_still_shown_with_its_score(
    backend: Backend,
) -> Result<()> {
    within(async {
        let s = Swarm::start(&backend).await?;
        let reporters = [
            Identity::generate("r1")?,
            Identity::generate("r2")?,
            Identity::generate("r3")?,
        ];
        for (n, r) in reporters.iter().enumerate() {
            let v = s.reported_by(r, 201).await?;
            ensure!(v["reputation"]["reporters"] == n + 1, "{v}");
        }
        let peers = s.answer().await?;
        ensure!(
            fingerprints(&peers) == vec![s.good.fingerprint],
            "withheld: {peers:?}"
        );

        // The read-only listings show everyone, with the score that explains the withholding.
        let resp =
            s.h.anonymous
                .get(s.h.api(&format!("/files/{}/peers", s.m.file_id())))
                .send()
                .await?;
        let listed: FilePeers = expect_json(resp, 200).await?;
        let bad = listed
            .peers
            .iter()
            .find(|p| p.fingerprint == s.bad.fingerprint);
        let r = bad.and_then(|p| p.reputation).expect("listed with a score");
        ensure!(r.score == 25 && r.reporters == 3, "{r:?}");

        let resp = s.h.anonymous.get(s.h.api("/peers")).send().await?;
        let page: Page<PeerSummary> = expect_json(resp, 200).await?;
        ensure!(page.items.iter().all(|p| p.reputation.is_some()));
        let bad = page
            .items
            .iter()
            .find(|p| p.fingerprint == s.bad.fingerprint);
        ensure!(
            bad.and_then(|p| p.reputation)
                .is_some_and(|r| r.score == 25)
        );
        let good = page
            .items
            .iter()
            .find(|p| p.fingerprint == s.good.fingerprint);
        ensure!(
            good.and_then(|p| p.reputation)
                .is_some_and(|r| r.score == 100 && r.reporters == 0)
        );
        Ok(())
    })
    .await
}

for_each_store!(withholding_can_be_turned_off_and_half_life_is_configurable);
async fn withholding_can_be_turned_off_and_half_life_is_configurable(
    backend: Backend,
) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| c.reputation.withhold_below = 0).await?;
        let m = manifest_for("r.bin", &vec![5u8; 20_000]);
        let resp = h
            .as_peer(&h.alice)
            .post(h.api("/files"))
            .json(&m)
            .send()
            .await?;
        ensure!(resp.status().as_u16() == 201);
        let bad = Identity::generate("bad")?;
        announce(&h, &bad, &m, 7001).await?;
        for n in 0..4 {
            let r = Identity::generate(&format!("r{n}"))?;
            expect_json::<Value>(report(&h, &r, bad_chunk(&m, &bad, 0)).await?, 201).await?;
        }
        let peers = announce(&h, &h.alice, &m, 7002).await?;
        ensure!(peers.len() == 1 && peers[0].reputation.is_some_and(|r| r.score == 20));
        Ok(())
    })
    .await
}

for_each_store!(bad_reports_are_refused_with_json_errors);
async fn bad_reports_are_refused_with_json_errors(backend: Backend) -> Result<()> {
    within(async {
        let s = Swarm::start(&backend).await?;
        let (h, m) = (&s.h, &s.m);
        let bob = &h.bob;
        // Chunk out of range (3 chunks: 0..=2).
        let resp = report(h, bob, bad_chunk(m, &s.bad, 3)).await?;
        let msg = expect_error(resp, 400, "bad_request").await?;
        ensure!(msg.contains("chunk 3"), "{msg}");
        // Reporting oneself.
        let resp = report(h, bob, bad_chunk(m, bob, 0)).await?;
        expect_error(resp, 400, "bad_request").await?;
        // An unknown file.
        let other = manifest_for("never-registered.bin", b"nothing");
        let resp = report(h, bob, bad_chunk(&other, &s.bad, 0)).await?;
        expect_error(resp, 404, "not_found").await?;
        // Unknown kind, unknown field, malformed fingerprint.
        let mut v = bad_chunk(m, &s.bad, 0);
        v["kind"] = json!("rude");
        expect_error(report(h, bob, v).await?, 400, "bad_request").await?;
        let mut v = bad_chunk(m, &s.bad, 0);
        v["reporter"] = json!(s.good.fingerprint);
        expect_error(report(h, bob, v).await?, 400, "bad_request").await?;
        let mut v = bad_chunk(m, &s.bad, 0);
        v["peer"] = json!("sha256:zz");
        expect_error(report(h, bob, v).await?, 400, "bad_request").await?;
        // No client certificate: no identity to count.
        let resp = h
            .anonymous
            .post(h.api("/reports"))
            .json(&bad_chunk(m, &s.bad, 0))
            .send()
            .await?;
        expect_error(resp, 401, "unauthorized").await?;
        // A stall without a chunk is fine.
        let stall = json!({"file_id": m.file_id(), "peer": s.bad.fingerprint, "kind": "stall"});
        let v: Value = expect_json(report(h, bob, stall).await?, 201).await?;
        ensure!(
            v["reputation"] == json!({"score": 71, "reporters": 1}),
            "{v}"
        );
        Ok(())
    })
    .await
}

for_each_store!(only_allowlisted_identities_may_report);
async fn only_allowlisted_identities_may_report(backend: Backend) -> Result<()> {
    within(async {
        let alice = Identity::generate("alice")?;
        let fp = alice.fingerprint;
        let mut h = Harness::start_on(&backend, move |c| c.allowlist = vec![fp]).await?;
        h.alice = alice;
        let m = manifest_for("r.bin", &vec![6u8; 20_000]);
        let resp = h
            .as_peer(&h.alice)
            .post(h.api("/files"))
            .json(&m)
            .send()
            .await?;
        ensure!(resp.status().as_u16() == 201);
        let outsider = Identity::generate("sybil")?;
        let resp = report(&h, &outsider, bad_chunk(&m, &h.alice, 0)).await?;
        expect_error(resp, 403, "forbidden").await?;
        Ok(())
    })
    .await
}
