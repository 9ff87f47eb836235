//! However a download ends, the agent leaves the swarm: `Agent::shutdown` announces `stopped`
//! for every file it announced, including one whose download failed (issue 9). In one process:
//! the real tracker and two agents on ephemeral loopback ports.

use std::sync::Arc;
use std::time::Duration;

use torrentguard_agent::session::announce;
use torrentguard_agent::torrent::SharedFile;
use torrentguard_agent::{Agent, DownloadError, DownloadOptions, TrackerTarget};
use torrentguard_protocol::api::AnnounceEvent;
use torrentguard_protocol::hashing::manifest_from_reader;
use torrentguard_protocol::{Digest, HashAlgo};
use torrentguard_tracker::TrackerConfig;
use torrentguard_trust::Identity;

const STEP: Duration = Duration::from_secs(60);

async fn agent(target: &TrackerTarget, dir: &std::path::Path, name: &str) -> Agent {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let identity = Arc::new(Identity::generate(name).unwrap());
    Agent::start(identity, data, target, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Every chunk verifies but the whole-file digest in the manifest is wrong, so the download
/// fails at its very end. It had announced itself: after `shutdown` the tracker no longer
/// lists it (it used to linger as a peer until its TTL ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_download_leaves_the_swarm_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TrackerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("tracker"));
    cfg.announce_interval = Duration::from_secs(1);
    cfg.peer_ttl = Duration::from_secs(120);
    let tracker = torrentguard_tracker::start(cfg).await.unwrap();
    let target = TrackerTarget {
        url: tracker.url(),
        fingerprint: Some(tracker.fingerprint),
        token: None,
    };
    let seeder = agent(&target, dir.path(), "seeder").await;
    let leecher = agent(&target, dir.path(), "leecher").await;

    let path = dir.path().join("inconsistent.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut manifest = manifest_from_reader(
        "inconsistent.bin",
        &data[..],
        16384,
        HashAlgo::Sha256,
        |_| {},
    )
    .unwrap();
    manifest.file_hash = Digest::from_slice(&[0u8; 32]).unwrap();
    let id = manifest.file_id();
    seeder.tracker.register(&manifest).await.unwrap();
    let shared = SharedFile::complete(
        Arc::new(manifest),
        path.clone(),
        std::fs::File::open(&path).unwrap(),
    )
    .unwrap();
    seeder.seeder.add(shared.clone());
    announce(
        &seeder.tracker,
        &seeder.seeder,
        &shared,
        AnnounceEvent::Started,
    )
    .await
    .unwrap();

    let mut opts = DownloadOptions::new(dir.path().join("out"));
    // Every chunk matches: only the whole-file check sees the lie.
    opts.verify_full = true;
    let failed = tokio::time::timeout(STEP, leecher.download(id, opts))
        .await
        .expect("the download ends");
    assert!(
        matches!(
            failed,
            Err(torrentguard_agent::AgentError::Download(
                DownloadError::FileHashMismatch
            ))
        ),
        "{failed:?}"
    );
    tokio::time::timeout(STEP, leecher.shutdown())
        .await
        .expect("shutdown is bounded");

    let peers = seeder.tracker.file_peers(&id).await.unwrap().peers;
    let listed: Vec<_> = peers.iter().map(|p| p.fingerprint).collect();
    assert!(
        !listed.contains(&leecher.identity.fingerprint),
        "the failed downloader is still listed: {listed:?}"
    );
    assert!(listed.contains(&seeder.identity.fingerprint));
    seeder.shutdown().await;
    tracker.shutdown().await.unwrap();
}
