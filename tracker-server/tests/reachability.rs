//! Every answer that lists peers gives addresses the asker can dial (issue 9, blocker 2), seen
//! through the real server: a tracker on `[::]` (which must serve IPv4 too) asked over several
//! loopback addresses, so the address each asker reached comes out of the TLS connection.

mod common;

use std::net::IpAddr;

use anyhow::{Context as _, Result, ensure};
use common::*;
use serde_json::json;
use torrentguard_protocol::api::{
    AnnounceEvent, AnnounceResponse, FilePeers, Page, PeerSummary, RegisterResponse,
};
use torrentguard_protocol::{Fingerprint, Manifest};
use torrentguard_tracker::store::AnnounceRecord;
use torrentguard_tracker::{DB_FILE, RunningTracker, TrackerError};
use torrentguard_trust::Identity;

/// A tracker on `[::]:0`, or `None` where the host has no IPv6.
async fn dual_stack_tracker(
    dir: &std::path::Path,
    backend: &Backend,
) -> Result<Option<RunningTracker>> {
    let mut config = torrentguard_tracker::TrackerConfig::new("[::]:0".parse()?, dir.into());
    backend.configure(&mut config);
    match torrentguard_tracker::start(config).await {
        Ok(t) => Ok(Some(t)),
        Err(TrackerError::Bind { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
            ) || source.raw_os_error() == Some(97) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn announce_body(m: &Manifest, port: u16) -> serde_json::Value {
    json!({"file_id": m.file_id(), "port": port, "event": "started", "bitfield": "AA=="})
}

fn address_of<'a>(
    mut listed: impl Iterator<Item = (&'a Fingerprint, IpAddr)>,
    who: &Fingerprint,
) -> Result<IpAddr> {
    listed
        .find(|(f, _)| *f == who)
        .map(|(_, a)| a)
        .with_context(|| format!("{who} not listed"))
}

for_each_store!(listed_addresses_follow_the_address_the_asker_reached);
async fn listed_addresses_follow_the_address_the_asker_reached(backend: Backend) -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let Some(tracker) = dual_stack_tracker(dir.path(), &backend).await? else {
            eprintln!("no IPv6 on this host: cannot listen on [::]; skipping");
            return Ok(());
        };
        let port = tracker.local_addr.port();
        let pin = tracker.fingerprint;
        let url = |host: &str, path: &str| format!("https://{host}:{port}/api/v1{path}");
        let (alice, bob, carol, dave) = (
            Identity::generate("alice")?,
            Identity::generate("bob")?,
            Identity::generate("carol")?,
            Identity::generate("dave")?,
        );
        let m = manifest_for("r.bin", b"reachable");
        let id = m.file_id();
        let as_alice = client(pin, Some(&alice));
        let _: RegisterResponse = expect_json(
            as_alice
                .post(url("127.0.0.1", "/files"))
                .json(&m)
                .send()
                .await?,
            201,
        )
        .await?;
        // Alice announces over loopback without naming an address: stored as loopback.
        let _: AnnounceResponse = expect_json(
            as_alice
                .post(url("127.0.0.1", "/announce"))
                .json(&announce_body(&m, 7001))
                .send()
                .await?,
            200,
        )
        .await?;
        // Dave reaches the tracker over loopback but advertises his LAN address: the embedded
        // tracker's case. It must be accepted and listed as is.
        let lan: IpAddr = "192.0.2.10".parse()?;
        let mut body = announce_body(&m, 7004);
        body["address"] = json!(lan);
        let _: AnnounceResponse = expect_json(
            client(pin, Some(&dave))
                .post(url("[::1]", "/announce"))
                .json(&body)
                .send()
                .await?,
            200,
        )
        .await?;
        // Carol is on record at an unspecified address (announces refuse it; an older database
        // may hold it), written straight into the tracker's database.
        let store =
            torrentguard_tracker::store::open(&backend.database(&dir.path().join(DB_FILE))).await?;
        store
            .announce(&AnnounceRecord {
                fingerprint: carol.fingerprint,
                file_id: id,
                address: "0.0.0.0".parse()?,
                port: 7003,
                event: AnnounceEvent::Started,
                bitfield: vec![0],
                have: 0,
                complete: false,
                now: torrentguard_tracker::app::unix_now(),
            })
            .await?;
        store.close().await;

        let as_bob = client(pin, Some(&bob));
        // 127.0.0.2 reaches the IPv6 wildcard listener as ::ffff:127.0.0.2: IPv4 is served.
        for (host, reached) in [
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.2", "127.0.0.2"),
            ("[::1]", "::1"),
        ] {
            let reached: IpAddr = reached.parse()?;
            let lo: IpAddr = "127.0.0.1".parse()?;
            let peers: FilePeers = expect_json(
                as_bob
                    .get(url(host, &format!("/files/{id}/peers")))
                    .send()
                    .await?,
                200,
            )
            .await?;
            let listed = || peers.peers.iter().map(|p| (&p.fingerprint, p.address));
            ensure!(
                address_of(listed(), &carol.fingerprint)? == reached,
                "{host}: {peers:?}"
            );
            // A loopback asker keeps seeing loopback; an advertised LAN address is kept.
            ensure!(
                address_of(listed(), &alice.fingerprint)? == lo,
                "{host}: {peers:?}"
            );
            ensure!(
                address_of(listed(), &dave.fingerprint)? == lan,
                "{host}: {peers:?}"
            );

            let page: Page<PeerSummary> =
                expect_json(as_bob.get(url(host, "/peers")).send().await?, 200).await?;
            let listed = page.items.iter().map(|p| (&p.fingerprint, p.address));
            ensure!(
                address_of(listed, &carol.fingerprint)? == reached,
                "{host}: {page:?}"
            );

            let answer: AnnounceResponse = expect_json(
                as_bob
                    .post(url(host, "/announce"))
                    .json(&announce_body(&m, 7002))
                    .send()
                    .await?,
                200,
            )
            .await?;
            let listed = answer.peers.iter().map(|p| (&p.fingerprint, p.address));
            ensure!(
                address_of(listed, &carol.fingerprint)? == reached,
                "{host}: {answer:?}"
            );
        }
        tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(an_empty_cursor_and_limit_are_the_first_page);
async fn an_empty_cursor_and_limit_are_the_first_page(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |_| {}).await?;
        let m = manifest_for("p.bin", b"paged");
        let _: RegisterResponse = expect_json(
            h.as_peer(&h.alice)
                .post(h.api("/files"))
                .json(&m)
                .send()
                .await?,
            201,
        )
        .await?;
        // Literally what a script with unset variables sends.
        let page: Page<serde_json::Value> = expect_json(
            h.anonymous
                .get(h.api("/files?cursor=&limit="))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(page.items.len() == 1, "{page:?}");
        let _: Page<serde_json::Value> =
            expect_json(h.anonymous.get(h.api("/peers?cursor=")).send().await?, 200).await?;
        expect_error(
            h.anonymous.get(h.api("/files?limit=x")).send().await?,
            400,
            "bad_request",
        )
        .await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}
