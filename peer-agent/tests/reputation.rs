//! Reputation across downloads: a peer serving corrupt chunks is reported to the tracker, and
//! the downloading agent remembers it in its data directory, so a later download (even by a
//! restarted agent) leaves it alone while an honest peer serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use torrentguard_agent::misbehaving::{MISBEHAVING_FILE, MisbehavingPeers};
use torrentguard_agent::{Agent, DownloadOptions, Event, EventSink, TrackerTarget};
use torrentguard_protocol::api::{ReportKind, Reputation};
use torrentguard_protocol::{FileId, Fingerprint, HashAlgo};
use torrentguard_tracker::{RunningTracker, TrackerConfig};
use torrentguard_trust::Identity;

const CHUNK: u32 = 16 * 1024;
const STEP: Duration = Duration::from_secs(60);

struct Swarm {
    tracker: RunningTracker,
    dir: tempfile::TempDir,
}

impl Swarm {
    async fn new() -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            TrackerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("tracker"));
        cfg.announce_interval = Duration::from_secs(1);
        cfg.peer_ttl = Duration::from_secs(30);
        let tracker = torrentguard_tracker::start(cfg).await.unwrap();
        Swarm { tracker, dir }
    }

    /// An agent keeping its data in `<dir>/<name>` (the same directory each time).
    async fn agent(&self, name: &str) -> Agent {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        let target = TrackerTarget {
            url: self.tracker.url(),
            fingerprint: Some(self.tracker.fingerprint),
            token: None,
        };
        let identity = Arc::new(Identity::generate(name).unwrap());
        Agent::start(identity, data, &target, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    fn write(&self, name: &str, chunks: u32, seed: u64) -> PathBuf {
        let p = self.dir.path().join(name);
        let data: Vec<u8> = (0..(chunks * CHUNK) as u64)
            // Never periodic at chunk scale: identical chunks would be fetched once and copied.
            .map(|i| ((i + seed * 1_000_003).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    async fn share(&self, agent: &Agent, path: &Path) -> FileId {
        let events = EventSink::none();
        let shared = agent.share(path, CHUNK, HashAlgo::Sha256, &events);
        within(shared).await.unwrap().file_id
    }

    async fn download(&self, agent: &Agent, id: FileId, out: &str) -> (PathBuf, Vec<Event>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut o = DownloadOptions::new(self.dir.path().join(out));
        o.events = EventSink::new(tx);
        o.stall_timeout = Duration::from_secs(5);
        o.max_retry_interval = Duration::from_secs(2);
        let r = within(agent.download(id, o)).await.unwrap();
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (r.path, events)
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

fn bad_chunks_from(events: &[Event], peer: Fingerprint) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ChunkRetry { fingerprint, reason, .. } if *fingerprint == peer && reason == "digest mismatch"))
        .count()
}

fn connected_to(events: &[Event], peer: Fingerprint) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::PeerConnected { fingerprint, .. } if *fingerprint == peer))
}

/// The tracker's score of `peer` in the swarm of `id`, once some report of it has arrived.
async fn score_once(agent: &Agent, id: FileId, peer: Fingerprint) -> Reputation {
    let deadline = Instant::now() + STEP;
    loop {
        let listed = agent.tracker.file_peers(&id).await.unwrap();
        let r = listed
            .peers
            .iter()
            .find(|p| p.fingerprint == peer)
            .and_then(|p| p.reputation);
        if let Some(r) = r.filter(|r| r.reporters > 0) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no report reached the tracker: {r:?}"
        );
        // Polled against a deadline: the report goes out beside the download.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_peer_is_reported_and_avoided_by_the_next_download() {
    let s = Swarm::new().await;
    let liar = s.agent("liar").await;
    let honest = s.agent("honest").await;
    liar.seeder.set_corrupt_for_tests(true);
    let first = s.write("first.bin", 120, 1);
    let id = s.share(&liar, &first).await;
    s.share(&honest, &first).await;

    let leecher = s.agent("leecher").await;
    let (path, events) = s.download(&leecher, id, "dl1").await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&first).unwrap()
    );
    let liar_fp = liar.identity.fingerprint;
    assert!(
        bad_chunks_from(&events, liar_fp) >= 1,
        "the liar served no bad chunk"
    );

    // The report reached the tracker: one reporter, however many bad chunks it saw.
    let r = score_once(&honest, id, liar_fp).await;
    assert_eq!(
        r,
        Reputation {
            score: 50,
            reporters: 1
        }
    );
    let listed = honest.tracker.file_peers(&id).await.unwrap().peers;
    let clean = listed
        .iter()
        .find(|p| p.fingerprint == honest.identity.fingerprint);
    assert_eq!(clean.and_then(|p| p.reputation).map(|r| r.score), Some(100));

    // The leecher remembers it in its data directory, across a restart.
    leecher.shutdown().await;
    drop(leecher);
    let data = s.dir.path().join("leecher");
    let remembered = MisbehavingPeers::load(&data)
        .get(&liar_fp)
        .expect("remembered");
    assert_eq!(remembered.kind, ReportKind::BadChunk);
    assert!(data.join(MISBEHAVING_FILE).exists());

    let leecher = s.agent("leecher").await;
    let second = s.write("second.bin", 60, 2);
    let id2 = s.share(&liar, &second).await;
    s.share(&honest, &second).await;
    let (path, events) = s.download(&leecher, id2, "dl2").await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&second).unwrap()
    );
    assert!(
        !connected_to(&events, liar_fp),
        "the second download went to a peer remembered as misbehaving"
    );
    assert!(connected_to(&events, honest.identity.fingerprint));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_peer_is_still_used_when_it_is_the_only_one() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let src = s.write("only.bin", 20, 3);
    let id = s.share(&seeder, &src).await;
    let data = s.dir.path().join("leecher");
    std::fs::create_dir_all(&data).unwrap();
    MisbehavingPeers::load(&data)
        .note(seeder.identity.fingerprint, ReportKind::Stall)
        .unwrap();
    let leecher = s.agent("leecher").await;
    let (path, events) = s.download(&leecher, id, "dl").await;
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&src).unwrap());
    assert!(connected_to(&events, seeder.identity.fingerprint));
}
