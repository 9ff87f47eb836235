//! The tracker's side of NAT traversal over the real server: `POST /reachability` dialling the
//! caller back, the reach peers announce showing in peer lists, and introductions with their
//! long-poll.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::nat::*;
use common::*;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::api::{
    AnnounceResponse, FilePeers, IntroVia, Introductions, NatMapping, Page, PeerSummary, Reach,
    ReachabilityResponse,
};
use torrentguard_trust::Identity;
use torrentguard_trust::config::peer_server_config;

/// A peer listener on loopback with `identity`'s certificate that completes handshakes until
/// `stop`: what an agent's seeding port looks like to the probe.
async fn peer_listener(identity: &Identity, stop: CancellationToken) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(peer_server_config(identity)?));
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => return },
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    Ok(port)
}

async fn probe(h: &Harness, who: &Identity, port: u16) -> Result<ReachabilityResponse> {
    let resp = h
        .as_peer(who)
        .post(h.api("/reachability"))
        .json(&json!({ "port": port }))
        .send()
        .await?;
    expect_json(resp, 200).await
}

#[tokio::test]
async fn a_peer_listening_with_its_own_identity_is_reachable_inbound() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let stop = CancellationToken::new();
        let port = peer_listener(&h.alice, stop.clone()).await?;
        let r = probe(&h, &h.alice, port).await?;
        ensure!(r.inbound, "{r:?}");
        ensure!(
            r.observed.ip().is_loopback() && r.observed.port() != 0,
            "{r:?}"
        );
        ensure!(r.relay_port.is_none());
        // The same port probed for Bob presents Alice's certificate: not Bob's port.
        let r = probe(&h, &h.bob, port).await?;
        ensure!(!r.inbound, "{r:?}");
        stop.cancel();
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_port_with_nothing_behind_it_is_not_reachable() -> Result<()> {
    within(async {
        let h = Harness::start(|c| {
            c.relay = Some(torrentguard_tracker::relay::RelayConfig::on(
                "127.0.0.1:0".parse().expect("valid"),
            ))
        })
        .await?;
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            l.local_addr()?.port()
        };
        let r = probe(&h, &h.alice, closed).await?;
        ensure!(!r.inbound, "{r:?}");
        ensure!(r.relay_port == h.tracker.relay_addr.map(|a| a.port()));
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn probes_past_the_concurrency_bound_are_429() -> Result<()> {
    use torrentguard_tracker::reach::MAX_CONCURRENT_PROBES;
    within(async {
        let h = Harness::start(|_| {}).await?;
        // Accepts TCP and never speaks TLS: each probe holds its slot until its timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await?;
        let port = silent.local_addr()?.port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while conns.len() < MAX_CONCURRENT_PROBES {
                conns.push(silent.accept().await?.0);
            }
            Ok::<_, anyhow::Error>((silent, conns))
        });
        let client = h.as_peer(&h.alice);
        let probes: Vec<_> = (0..MAX_CONCURRENT_PROBES)
            .map(|_| {
                let req = client
                    .post(h.api("/reachability"))
                    .json(&json!({ "port": port }));
                tokio::spawn(async move { req.send().await })
            })
            .collect();
        // Every slot is taken once the listener has seen every probe's connection.
        let (_silent, _conns) = held.await??;
        let resp = client
            .post(h.api("/reachability"))
            .json(&json!({ "port": port }))
            .send()
            .await?;
        expect_error(resp, 429, "rate_limited").await?;
        for p in probes {
            let r: ReachabilityResponse = expect_json(p.await??, 200).await?;
            ensure!(!r.inbound, "a silent port is not reachable");
        }
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bad_reachability_requests_are_json_errors() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let alice = h.as_peer(&h.alice);
        for body in [
            json!({"port": 0}),
            json!({}),
            json!({"port": 70000}),
            json!({"port": 7000, "address": "192.0.2.1"}),
        ] {
            let resp = alice
                .post(h.api("/reachability"))
                .json(&body)
                .send()
                .await?;
            expect_error(resp, 400, "bad_request").await?;
        }
        let resp = h
            .anonymous
            .post(h.api("/reachability"))
            .json(&json!({"port": 7000}))
            .send()
            .await?;
        expect_error(resp, 401, "unauthorized").await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn announced_reach_shows_in_every_peer_list() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let m = file_with_seeder(&h, &h.bob, 7100).await?;
        let reach = Reach {
            inbound: false,
            mapping: NatMapping::PortPreserving,
        };
        let mut body = announce_json(&m, 7200, false);
        body["reach"] = serde_json::to_value(reach)?;
        let answer: AnnounceResponse =
            serde_json::from_value(announce_body(&h, &h.alice, body).await?)?;
        ensure!(answer.observed.is_some_and(|o| o.ip().is_loopback()));
        // Bob announced without one: listed without one.
        ensure!(answer.peers.len() == 1 && answer.peers[0].reach.is_none());
        let answer: AnnounceResponse =
            serde_json::from_value(announce(&h, &h.bob, &m, 7100, true).await?)?;
        ensure!(answer.peers[0].fingerprint == h.alice.fingerprint);
        ensure!(answer.peers[0].reach == Some(reach), "{answer:?}");
        let url = h.api(&format!("/files/{}/peers", m.file_id()));
        let listed: FilePeers = expect_json(h.anonymous.get(url).send().await?, 200).await?;
        let alice = listed
            .peers
            .iter()
            .find(|p| p.fingerprint == h.alice.fingerprint);
        ensure!(alice.is_some_and(|p| p.reach == Some(reach)));
        let page: Page<PeerSummary> =
            expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
        let alice = page
            .items
            .iter()
            .find(|p| p.fingerprint == h.alice.fingerprint);
        ensure!(alice.is_some_and(|p| p.reach == Some(reach)));
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

async fn collect(h: &Harness, who: &Identity, wait: u32) -> Result<Introductions> {
    let url = h.api(&format!("/introductions?wait_secs={wait}"));
    expect_json(h.as_peer(who).get(url).send().await?, 200).await
}

async fn long_polls(h: &Harness, n: u64) -> Result<()> {
    eventually(Duration::from_secs(10), "the long-poll waits", || async {
        let text = h
            .anonymous
            .get(h.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok((metric(&text, "torrentguard_introductions_long_polls") == Some(n)).then_some(()))
    })
    .await
}

#[tokio::test]
async fn both_sides_see_the_same_introduction_crossed_and_once() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let m = file_with_seeder(&h, &h.bob, 7100).await?;
        let asked = introduce(&h, &h.alice, &m, &h.bob, 7200, "punch").await?;
        ensure!(asked.token.len() == 64 && asked.via == IntroVia::Punch);
        ensure!((asked.peer, asked.port) == (h.bob.fingerprint, 7100));
        ensure!(asked.address.is_loopback());
        ensure!(asked.start_in_ms > 0 && asked.start_in_ms <= 1000);
        ensure!(asked.relay_port.is_none());
        let got = collect(&h, &h.bob, 0).await?;
        ensure!(got.items.len() == 1, "{got:?}");
        let seen = &got.items[0];
        ensure!(seen.token == asked.token);
        ensure!((seen.peer, seen.port) == (h.alice.fingerprint, 7200));
        ensure!(seen.address.is_loopback() && seen.file_id == m.file_id());
        ensure!(seen.start_in_ms <= asked.start_in_ms);
        ensure!(
            collect(&h, &h.bob, 0).await?.items.is_empty(),
            "delivered once"
        );
        ensure!(collect(&h, &h.alice, 0).await?.items.is_empty());
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_long_poll_wakes_on_a_new_introduction_and_spares_the_concurrency_bound() -> Result<()> {
    within(async {
        let h = Harness::start(|c| c.limits.max_concurrent_requests = 1).await?;
        let m = file_with_seeder(&h, &h.bob, 7100).await?;
        let poll = tokio::spawn({
            let client = h.as_peer(&h.bob);
            let url = h.api("/introductions?wait_secs=30");
            async move { expect_json::<Introductions>(client.get(url).send().await?, 200).await }
        });
        long_polls(&h, 1).await?;
        // The long-poll holds no slot of the bound of 1: other requests still get through.
        let resp = h.anonymous.get(h.api("/files")).send().await?;
        ensure!(resp.status() == 200, "{}", resp.status());
        let asked = introduce(&h, &h.alice, &m, &h.bob, 7200, "punch").await?;
        let got = poll.await??;
        ensure!(
            got.items.len() == 1 && got.items[0].token == asked.token,
            "{got:?}"
        );
        long_polls(&h, 0).await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_long_poll_ends_at_shutdown() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let poll = tokio::spawn({
            let client = h.as_peer(&h.bob);
            let url = h.api("/introductions?wait_secs=30");
            async move { expect_json::<Introductions>(client.get(url).send().await?, 200).await }
        });
        long_polls(&h, 1).await?;
        let start = Instant::now();
        h.tracker.shutdown().await?;
        ensure!(poll.await??.items.is_empty());
        // Not held for its 30 s nor the 30 s shutdown grace.
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bad_introductions_are_json_errors() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        let m = file_with_seeder(&h, &h.bob, 7100).await?;
        let alice = h.as_peer(&h.alice);
        let ask = |peer: &Identity, port: u16, via: &str| {
            json!({"file_id": m.file_id(), "peer": peer.fingerprint, "port": port, "via": via})
        };
        let carol = Identity::generate("carol")?;
        let post = |body: serde_json::Value| alice.post(h.api("/introductions")).json(&body).send();
        expect_error(post(ask(&carol, 7200, "punch")).await?, 404, "not_in_swarm").await?;
        expect_error(post(ask(&h.alice, 7200, "punch")).await?, 400, "bad_request").await?;
        expect_error(post(ask(&h.bob, 0, "punch")).await?, 400, "bad_request").await?;
        expect_error(post(ask(&h.bob, 7200, "carrier_pigeon")).await?, 400, "bad_request")
            .await?;
        expect_error(post(ask(&h.bob, 7200, "relay")).await?, 409, "no_relay").await?;
        let unknown = json!({"file_id": "ab".repeat(32), "peer": h.bob.fingerprint, "port": 7200, "via": "punch"});
        expect_error(post(unknown).await?, 404, "not_found").await?;
        let too_long = h.api("/introductions?wait_secs=31");
        expect_error(alice.get(too_long).send().await?, 400, "bad_request").await?;
        let anon = h.anonymous.get(h.api("/introductions")).send().await?;
        expect_error(anon, 401, "unauthorized").await?;
        // A peer that left the swarm can no longer be introduced.
        let mut stopped = announce_json(&m, 7100, true);
        stopped["event"] = json!("stopped");
        announce_body(&h, &h.bob, stopped).await?;
        expect_error(post(ask(&h.bob, 7200, "punch")).await?, 404, "not_in_swarm").await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}
