//! Every endpoint of a real tracker over TLS, with and without client certificates.

mod common;

use std::net::IpAddr;

use anyhow::{Result, ensure};
use common::*;
use serde_json::json;
use torrentguard_protocol::api::{
    AnnounceResponse, FilePeers, FileSummary, Health, Page, PeerSummary, RegisterResponse,
};
use torrentguard_protocol::{Bitfield, FileId, Manifest};
use torrentguard_trust::Identity;

fn bitfield(chunks: u32, held: u32) -> String {
    let mut b = Bitfield::new(chunks);
    for i in 0..held {
        b.set(i);
    }
    b.to_base64()
}

fn announce_body(m: &Manifest, event: &str, held: u32, port: u16) -> serde_json::Value {
    json!({
        "file_id": m.file_id(),
        "port": port,
        "event": event,
        "bitfield": bitfield(m.chunk_count(), held),
    })
}

async fn register(h: &Harness, who: &reqwest::Client, m: &Manifest) -> Result<RegisterResponse> {
    expect_json(who.post(h.api("/files")).json(m).send().await?, 201).await
}

async fn metric(h: &Harness, name: &str) -> Result<u64> {
    let text = h
        .anonymous
        .get(h.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .ok_or_else(|| anyhow::anyhow!("{name} missing from metrics:\n{text}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or_default().parse()?)
}

for_each_store!(health_and_public_reads_work_without_a_client_certificate);
async fn health_and_public_reads_work_without_a_client_certificate(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |_| {}).await?;
        let health: Health = expect_json(h.anonymous.get(h.url("/healthz")).send().await?, 200).await?;
        ensure!(health.status == "ok");
        ensure!(health.fingerprint == h.tracker.fingerprint);

        let files: Page<FileSummary> =
            expect_json(h.anonymous.get(h.api("/files")).send().await?, 200).await?;
        ensure!(files.items.is_empty() && files.next.is_none());
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(peers.items.is_empty());

        let resp = h.anonymous.get(h.url("/metrics")).send().await?;
        ensure!(resp.status() == 200);
        let ctype = resp.headers()[reqwest::header::CONTENT_TYPE].to_str()?.to_string();
        ensure!(ctype.starts_with("text/plain"), "{ctype}");
        let text = resp.text().await?;
        ensure!(text.contains("torrentguard_tracker_files 0"));
        ensure!(text.contains(
            r#"torrentguard_tracker_http_requests_total{route="/api/v1/files",method="GET",status="200"} 1"#
        ), "{text}");

        expect_error(h.anonymous.get(h.url("/nothing")).send().await?, 404, "not_found").await?;
        expect_error(h.anonymous.get(h.api("/nothing")).send().await?, 404, "not_found").await?;
        expect_error(
            h.anonymous.delete(h.api("/files")).send().await?,
            405,
            "method_not_allowed",
        )
        .await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn both_http_versions_are_served() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let resp = h.anonymous.get(h.url("/healthz")).send().await?;
        ensure!(
            resp.version() == reqwest::Version::HTTP_2,
            "{:?}",
            resp.version()
        );
        let mut config = tls_config(h.tracker.fingerprint, None);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let h1 = client_with(config);
        let resp = h1.get(h.url("/healthz")).send().await?;
        ensure!(
            resp.version() == reqwest::Version::HTTP_11,
            "{:?}",
            resp.version()
        );
        ensure!(resp.status() == 200);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_client_must_pin_the_right_fingerprint() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let stranger = Identity::generate("not the tracker")?;
        let wrong = client(stranger.fingerprint, None);
        ensure!(wrong.get(h.url("/healthz")).send().await.is_err());
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_certificate_without_its_key_is_refused_at_the_handshake() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        // Alice's certificate, Bob's key: the handshake signature cannot verify, so the server
        // must end the handshake rather than let this client speak as Alice.
        let forged = client_with(forged_tls_config(
            h.tracker.fingerprint,
            h.alice.cert.clone(),
            h.bob.key.clone_key(),
        ));
        ensure!(forged.get(h.url("/healthz")).send().await.is_err());
        let m = manifest_for("x", b"x");
        ensure!(forged.post(h.api("/files")).json(&m).send().await.is_err());
        let files: Page<FileSummary> =
            expect_json(h.anonymous.get(h.api("/files")).send().await?, 200).await?;
        ensure!(files.items.is_empty());
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(manifests_register_list_and_fetch);
async fn manifests_register_list_and_fetch(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |_| {}).await?;
        let alice = h.as_peer(&h.alice);
        let data = vec![7u8; 100_000]; // 7 chunks of 16 KiB
        let m = manifest_for("data.bin", &data);

        let created = register(&h, &alice, &m).await?;
        ensure!(created.created && created.file_id == m.file_id());
        // Known id: 200, created false, whoever sends it.
        let again: RegisterResponse = expect_json(
            h.as_peer(&h.bob)
                .post(h.api("/files"))
                .json(&m)
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(!again.created && again.file_id == m.file_id());

        let fetched: Manifest = expect_json(
            h.anonymous
                .get(h.api(&format!("/files/{}", m.file_id())))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(fetched == m);
        fetched.verify(&m.file_id())?;

        let list: Page<FileSummary> =
            expect_json(h.anonymous.get(h.api("/files")).send().await?, 200).await?;
        ensure!(list.items.len() == 1);
        let s = &list.items[0];
        ensure!(s.file_id == m.file_id() && s.name == "data.bin" && s.size == 100_000);
        ensure!(s.chunk_size == 16384 && s.chunk_count == 7);
        ensure!(s.seeders == 0 && s.leechers == 0 && s.registered_at > 0);

        // Pagination: 5 more files, pages of 2, every id once, in id order.
        let mut ids = vec![m.file_id()];
        for i in 0..5u8 {
            let f = manifest_for(&format!("f{i}"), &[i; 10]);
            ids.push(register(&h, &alice, &f).await?.file_id);
        }
        ids.sort();
        let mut seen: Vec<FileId> = Vec::new();
        let mut url = h.api("/files?limit=2");
        loop {
            let page: Page<FileSummary> =
                expect_json(h.anonymous.get(&url).send().await?, 200).await?;
            ensure!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|f| f.file_id));
            match page.next {
                Some(c) => url = h.api(&format!("/files?limit=2&cursor={c}")),
                None => break,
            }
        }
        ensure!(seen == ids, "{seen:?} != {ids:?}");

        ensure!(metric(&h, "torrentguard_tracker_files").await? == 6);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(announces_introduce_the_other_peers);
async fn announces_introduce_the_other_peers(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| {
            c.announce_interval = std::time::Duration::from_secs(17)
        })
        .await?;
        let alice = h.as_peer(&h.alice);
        let bob = h.as_peer(&h.bob);
        let m = manifest_for("shared.bin", &vec![1u8; 50_000]); // 4 chunks
        register(&h, &alice, &m).await?;

        let r: AnnounceResponse = expect_json(
            alice
                .post(h.api("/announce"))
                .json(&announce_body(&m, "completed", 4, 7001))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(r.interval_secs == 17);
        ensure!(
            r.peers.is_empty(),
            "the announcer is never listed to itself"
        );

        let r: AnnounceResponse = expect_json(
            bob.post(h.api("/announce"))
                .json(&announce_body(&m, "started", 1, 7002))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(r.peers.len() == 1);
        let a = &r.peers[0];
        // Identity from the TLS session, address from the connection.
        ensure!(a.fingerprint == h.alice.fingerprint);
        ensure!(a.address == IpAddr::from([127, 0, 0, 1]) && a.port == 7001);
        ensure!(a.have == 4 && a.complete && a.last_seen > 0);

        let r: AnnounceResponse = expect_json(
            alice
                .post(h.api("/announce"))
                .json(&announce_body(&m, "progress", 4, 7001))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(r.peers.len() == 1 && r.peers[0].fingerprint == h.bob.fingerprint);
        ensure!(r.peers[0].have == 1 && !r.peers[0].complete);

        let all: FilePeers = expect_json(
            h.anonymous
                .get(h.api(&format!("/files/{}/peers", m.file_id())))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(all.file_id == m.file_id() && all.peers.len() == 2);

        let files: Page<FileSummary> =
            expect_json(h.anonymous.get(h.api("/files")).send().await?, 200).await?;
        ensure!(files.items[0].seeders == 1 && files.items[0].leechers == 1);

        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(peers.items.len() == 2);
        for p in &peers.items {
            ensure!(p.files == vec![m.file_id()]);
        }
        let one: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers?limit=1")).send().await?, 200).await?;
        ensure!(one.items.len() == 1 && one.next.is_some());

        ensure!(metric(&h, "torrentguard_tracker_live_peers").await? == 2);
        ensure!(metric(&h, "torrentguard_tracker_announces_total").await? == 3);

        // Bob completes, then stops: gone from the file and from the live peers.
        let r: AnnounceResponse = expect_json(
            bob.post(h.api("/announce"))
                .json(&announce_body(&m, "completed", 4, 7002))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(r.peers.len() == 1);
        let files: Page<FileSummary> =
            expect_json(h.anonymous.get(h.api("/files")).send().await?, 200).await?;
        ensure!(files.items[0].seeders == 2 && files.items[0].leechers == 0);
        expect_json::<AnnounceResponse>(
            bob.post(h.api("/announce"))
                .json(&announce_body(&m, "stopped", 4, 7002))
                .send()
                .await?,
            200,
        )
        .await?;
        let all: FilePeers = expect_json(
            h.anonymous
                .get(h.api(&format!("/files/{}/peers", m.file_id())))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(all.peers.len() == 1 && all.peers[0].fingerprint == h.alice.fingerprint);
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(peers.items.len() == 1);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(announced_addresses_follow_the_rules);
async fn announced_addresses_follow_the_rules(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |_| {}).await?;
        let alice = h.as_peer(&h.alice);
        let m = manifest_for("a", b"abc");
        register(&h, &alice, &m).await?;
        let mut body = announce_body(&m, "started", 0, 9000);

        // From loopback, another loopback address is fine (several agents on one host).
        body["address"] = json!("127.0.0.2");
        expect_json::<AnnounceResponse>(
            alice.post(h.api("/announce")).json(&body).send().await?,
            200,
        )
        .await?;
        let all: FilePeers = expect_json(
            h.anonymous
                .get(h.api(&format!("/files/{}/peers", m.file_id())))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(all.peers[0].address == IpAddr::from([127, 0, 0, 2]));

        for bad in ["0.0.0.0", "::", "224.0.0.1", "not-an-ip"] {
            body["address"] = json!(bad);
            expect_error(
                alice.post(h.api("/announce")).json(&body).send().await?,
                400,
                "bad_request",
            )
            .await?;
        }
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(bad_input_is_refused_with_a_json_error_and_nothing_written);
async fn bad_input_is_refused_with_a_json_error_and_nothing_written(
    backend: Backend,
) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |_| {}).await?;
        let alice = h.as_peer(&h.alice);
        let files = |h: &Harness| h.api("/files");
        let post_raw = |body: String| {
            alice
                .post(files(&h))
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let good = manifest_for("good.bin", &vec![5u8; 40_000]);
        let good_json = serde_json::to_value(&good)?;

        // No client certificate: 401 before the body is even read.
        expect_error(
            h.anonymous.post(files(&h)).json(&good).send().await?,
            401,
            "unauthorized",
        )
        .await?;
        expect_error(
            h.anonymous
                .post(h.api("/announce"))
                .json(&announce_body(&good, "started", 0, 1))
                .send()
                .await?,
            401,
            "unauthorized",
        )
        .await?;

        // Malformed JSON, wrong types, unknown fields.
        expect_error(post_raw("{not json".into()).await?, 400, "bad_request").await?;
        expect_error(post_raw("[]".into()).await?, 400, "bad_request").await?;
        let mut extra = good_json.clone();
        extra["owner"] = json!("mallory");
        expect_error(post_raw(extra.to_string()).await?, 400, "bad_request").await?;

        // Bad hex in a digest, wrong digest length, digest of the wrong algorithm.
        let mut v = good_json.clone();
        v["chunks"][0] = json!("zz".repeat(32));
        expect_error(post_raw(v.to_string()).await?, 400, "bad_request").await?;
        let mut v = good_json.clone();
        v["chunks"][1] = json!("ab".repeat(31));
        expect_error(post_raw(v.to_string()).await?, 400, "bad_request").await?;
        let mut v = good_json.clone();
        v["file_hash"] = json!("ab".repeat(20)); // a SHA-1 length in a SHA-256 manifest
        expect_error(post_raw(v.to_string()).await?, 400, "invalid_manifest").await?;

        // Absurd sizes, wrong chunk counts, bad chunk sizes.
        let mut v = good_json.clone();
        v["size"] = json!(1u64 << 60);
        expect_error(post_raw(v.to_string()).await?, 400, "invalid_manifest").await?;
        let mut v = good_json.clone();
        v["size"] = json!(-1);
        expect_error(post_raw(v.to_string()).await?, 400, "bad_request").await?;
        let mut v = good_json.clone();
        v["size"] = json!(1_000_000);
        expect_error(post_raw(v.to_string()).await?, 400, "invalid_manifest").await?;
        let mut v = good_json.clone();
        v["chunk_size"] = json!(1000);
        expect_error(post_raw(v.to_string()).await?, 400, "invalid_manifest").await?;

        // Unsafe names.
        for name in [
            "../../etc/passwd",
            "a/b",
            "..",
            "",
            "nul\u{0}byte",
            "bell\u{7}",
        ] {
            let mut v = good_json.clone();
            v["name"] = json!(name);
            let msg = expect_error(post_raw(v.to_string()).await?, 400, "invalid_manifest").await?;
            ensure!(msg.contains("name"), "{msg}");
        }

        // Oversized bodies: 413 with the JSON body.
        let huge = format!(
            r#"{{"file_id":"{}","port":1,"event":"started","bitfield":"{}"}}"#,
            good.file_id(),
            "A".repeat(300 * 1024)
        );
        expect_error(
            alice
                .post(h.api("/announce"))
                .header("content-type", "application/json")
                .body(huge)
                .send()
                .await?,
            413,
            "payload_too_large",
        )
        .await?;
        let enormous = vec![b' '; torrentguard_tracker::app::MAX_MANIFEST_BODY + 1];
        expect_error(
            alice
                .post(files(&h))
                .header("content-type", "application/json")
                .body(enormous)
                .send()
                .await?,
            413,
            "payload_too_large",
        )
        .await?;

        // Bad ids in paths and cursors.
        expect_error(
            h.anonymous.get(h.api("/files/xyz")).send().await?,
            400,
            "bad_request",
        )
        .await?;
        expect_error(
            h.anonymous
                .get(h.api(&format!("/files/{}", "A".repeat(64))))
                .send()
                .await?,
            400,
            "bad_request",
        )
        .await?;
        expect_error(
            h.anonymous
                .get(h.api(&format!("/files/{}", good.file_id())))
                .send()
                .await?,
            404,
            "not_found",
        )
        .await?;
        expect_error(
            h.anonymous
                .get(h.api(&format!("/files/{}/peers", good.file_id())))
                .send()
                .await?,
            404,
            "not_found",
        )
        .await?;
        for q in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "cursor=nope",
            "colour=blue",
        ] {
            expect_error(
                h.anonymous
                    .get(h.api(&format!("/files?{q}")))
                    .send()
                    .await?,
                400,
                "bad_request",
            )
            .await?;
        }
        expect_error(
            h.anonymous
                .get(h.api("/peers?cursor=sha256:12"))
                .send()
                .await?,
            400,
            "bad_request",
        )
        .await?;

        // Announces: unknown file, wrong bitfield length, set spare bits, not base64, port 0,
        // a fingerprint in the body (refused, not trusted), a bad event, no content type.
        let announce = |body: serde_json::Value| alice.post(h.api("/announce")).json(&body).send();
        expect_error(
            announce(announce_body(&good, "started", 0, 1)).await?,
            404,
            "not_found",
        )
        .await?;
        register(&h, &alice, &good).await?; // 3 chunks: bitfield is one byte
        let mut v = announce_body(&good, "started", 0, 1);
        v["bitfield"] = json!(Bitfield::new(9).to_base64());
        expect_error(announce(v).await?, 400, "bad_request").await?;
        let mut v = announce_body(&good, "started", 0, 1);
        v["bitfield"] = json!(Bitfield::full(8).to_base64());
        expect_error(announce(v).await?, 400, "bad_request").await?;
        let mut v = announce_body(&good, "started", 0, 1);
        v["bitfield"] = json!("***");
        expect_error(announce(v).await?, 400, "bad_request").await?;
        expect_error(
            announce(announce_body(&good, "started", 0, 0)).await?,
            400,
            "bad_request",
        )
        .await?;
        let mut v = announce_body(&good, "started", 0, 1);
        v["fingerprint"] = json!(h.bob.fingerprint);
        expect_error(announce(v).await?, 400, "bad_request").await?;
        let mut v = announce_body(&good, "started", 0, 1);
        v["event"] = json!("paused");
        expect_error(announce(v).await?, 400, "bad_request").await?;
        let mut v = announce_body(&good, "started", 0, 1);
        v["file_id"] = json!("12");
        expect_error(announce(v).await?, 400, "bad_request").await?;
        expect_error(
            alice
                .post(h.api("/announce"))
                .body(announce_body(&good, "started", 0, 1).to_string())
                .send()
                .await?,
            415,
            "unsupported_media_type",
        )
        .await?;

        // Nothing of the above was written: one file (the one registered on purpose), no peer.
        let list: Page<FileSummary> =
            expect_json(h.anonymous.get(h.api("/files")).send().await?, 200).await?;
        ensure!(list.items.len() == 1 && list.items[0].file_id == good.file_id());
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(peers.items.is_empty());
        ensure!(metric(&h, "torrentguard_tracker_announces_total").await? == 0);
        // And the tracker is still healthy.
        expect_json::<Health>(h.anonymous.get(h.url("/healthz")).send().await?, 200).await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(allowlist_limits_who_may_write);
async fn allowlist_limits_who_may_write(backend: Backend) -> Result<()> {
    within(async {
        let alice = Identity::generate("alice")?;
        let fp = alice.fingerprint;
        let mut h = Harness::start_on(&backend, move |c| c.allowlist = vec![fp]).await?;
        h.alice = alice;
        let m = manifest_for("a", b"hello");
        register(&h, &h.as_peer(&h.alice), &m).await?;
        let msg = expect_error(
            h.as_peer(&h.bob)
                .post(h.api("/files"))
                .json(&manifest_for("b", b"b"))
                .send()
                .await?,
            403,
            "forbidden",
        )
        .await?;
        ensure!(msg.contains(&h.bob.fingerprint.to_string()));
        expect_error(
            h.as_peer(&h.bob)
                .post(h.api("/announce"))
                .json(&announce_body(&m, "started", 0, 5))
                .send()
                .await?,
            403,
            "forbidden",
        )
        .await?;
        expect_error(
            h.anonymous.post(h.api("/files")).json(&m).send().await?,
            401,
            "unauthorized",
        )
        .await?;
        // Reads stay open.
        let list: Page<FileSummary> =
            expect_json(h.as_peer(&h.bob).get(h.api("/files")).send().await?, 200).await?;
        ensure!(list.items.len() == 1);
        let peers: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        ensure!(peers.items.is_empty());
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(swarm_token_guards_the_api_but_not_health_or_metrics);
async fn swarm_token_guards_the_api_but_not_health_or_metrics(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| c.swarm_token = Some("s3cret".into())).await?;
        expect_error(
            h.anonymous.get(h.api("/files")).send().await?,
            401,
            "unauthorized",
        )
        .await?;
        expect_error(
            h.anonymous
                .get(h.api("/files"))
                .bearer_auth("wrong")
                .send()
                .await?,
            401,
            "unauthorized",
        )
        .await?;
        expect_error(
            h.anonymous
                .get(h.api("/peers"))
                .header("authorization", "Basic czNjcmV0")
                .send()
                .await?,
            401,
            "unauthorized",
        )
        .await?;
        let m = manifest_for("t", b"token");
        expect_error(
            h.as_peer(&h.alice)
                .post(h.api("/files"))
                .json(&m)
                .send()
                .await?,
            401,
            "unauthorized",
        )
        .await?;
        expect_json::<Page<FileSummary>>(
            h.anonymous
                .get(h.api("/files"))
                .bearer_auth("s3cret")
                .send()
                .await?,
            200,
        )
        .await?;
        expect_json::<RegisterResponse>(
            h.as_peer(&h.alice)
                .post(h.api("/files"))
                .bearer_auth("s3cret")
                .json(&m)
                .send()
                .await?,
            201,
        )
        .await?;
        expect_json::<Health>(h.anonymous.get(h.url("/healthz")).send().await?, 200).await?;
        ensure!(h.anonymous.get(h.url("/metrics")).send().await?.status() == 200);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}
