//! Engine integration tests: the real tracker and several agents in one process, on ephemeral
//! loopback ports, moving real files over pinned mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use torrentguard_agent::download::BAN_THRESHOLD;
use torrentguard_agent::{Agent, DownloadError, DownloadOptions, Event, EventSink, TrackerTarget};
use torrentguard_protocol::api::{AnnounceEvent, AnnounceRequest};
use torrentguard_protocol::{Bitfield, FileId, HashAlgo};
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

    fn target(&self) -> TrackerTarget {
        TrackerTarget {
            url: self.tracker.url(),
            fingerprint: Some(self.tracker.fingerprint),
            token: None,
        }
    }

    async fn agent(&self, name: &str) -> Agent {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        let identity = Arc::new(Identity::generate(name).unwrap());
        Agent::start(
            identity,
            data,
            &self.target(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap()
    }

    fn write(&self, name: &str, len: usize, seed: u8) -> PathBuf {
        let p = self.dir.path().join(name);
        let data: Vec<u8> = (0..len)
            // Never periodic at chunk scale: identical chunks would be fetched once and copied.
            .map(|i| {
                ((i as u64 + seed as u64 * 1_000_003).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56)
                    as u8
            })
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    async fn share(&self, agent: &Agent, path: &Path) -> FileId {
        agent
            .share(path, CHUNK, HashAlgo::Sha256, &EventSink::none())
            .await
            .unwrap()
            .file_id
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn opts(out: PathBuf) -> (DownloadOptions, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut o = DownloadOptions::new(out);
    o.events = EventSink::new(tx);
    o.stall_timeout = Duration::from_secs(5);
    o.max_retry_interval = Duration::from_secs(2);
    (o, rx)
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

fn same(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "sizes differ");
    assert!(x == y, "contents differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seeder_various_sizes() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let leecher = s.agent("leecher").await;
    for (name, len) in [
        ("odd.bin", 5 * CHUNK as usize + 123),
        ("empty.bin", 0),
        ("one.bin", CHUNK as usize),
        ("tiny.bin", 1),
    ] {
        let src = s.write(name, len, 1);
        let id = s.share(&seeder, &src).await;
        let (o, _rx) = opts(s.out("dl1"));
        let r = within(leecher.download(id, o)).await.unwrap();
        same(&src, &r.path);
        assert_eq!(r.path, s.out("dl1").join(name));
        assert!(!s.out("dl1").join(format!("{name}.part")).exists());
        assert!(!s.out("dl1").join(format!("{name}.part.tgstate")).exists());
    }
    // An existing output is not overwritten without force.
    let src = s.write("keep.bin", 1000, 2);
    let id = s.share(&seeder, &src).await;
    std::fs::write(s.out("dl1").join("keep.bin"), b"precious").unwrap();
    let (o, _rx) = opts(s.out("dl1"));
    let err = leecher.download(id, o).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(s.out("dl1").join("keep.bin")).unwrap(),
        b"precious"
    );
    let (mut o, _rx) = opts(s.out("dl1"));
    o.force = true;
    within(leecher.download(id, o)).await.unwrap();
    same(&src, &s.out("dl1").join("keep.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_seeders_and_negotiated_tls() {
    let s = Swarm::new().await;
    let src = s.write("big.bin", 300 * CHUNK as usize + 77, 3);
    let mut seeders = Vec::new();
    let mut id = None;
    for n in 0..3 {
        let a = s.agent(&format!("seeder{n}")).await;
        id = Some(s.share(&a, &src).await);
        seeders.push(a);
    }
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out("dl"));
    let r = within(leecher.download(id.unwrap(), o)).await.unwrap();
    same(&src, &r.path);
    let mut peers = std::collections::HashSet::new();
    let mut rated = 0;
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::PeerConnected {
                fingerprint,
                cipher,
                group,
                ..
            } => {
                assert_eq!(group, "X25519MLKEM768");
                assert!(cipher.contains("TLS13_AES"), "{cipher}");
                peers.insert(fingerprint);
            }
            Event::Progress { peer_rates, .. } => rated = rated.max(peer_rates.len()),
            _ => {}
        }
    }
    assert!(rated >= 1, "progress reports per-peer rates");
    assert_eq!(peers.len(), 3, "downloaded from every seeder");
    assert_eq!(r.chunks_fetched, 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeder_stopped_mid_transfer() {
    let s = Swarm::new().await;
    let src = s.write("f.bin", 400 * CHUNK as usize, 4);
    let a = s.agent("a").await;
    let b = s.agent("b").await;
    // Paced so that stopping `a` lands mid-transfer (≈ 1 s for the file with both seeders).
    a.seeder.set_upload_limit(3_000_000);
    b.seeder.set_upload_limit(3_000_000);
    let id = s.share(&a, &src).await;
    s.share(&b, &src).await;
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out("dl"));
    let dl = tokio::spawn(async move {
        let r = leecher.download(id, o).await;
        (leecher, r)
    });
    // Stop seeder a once a tenth of the file has arrived.
    while let Some(e) = within(rx.recv()).await {
        if let Event::Progress { chunks_done, .. } = e
            && chunks_done >= 40
        {
            break;
        }
    }
    a.shutdown().await;
    let (_leecher, r) = within(dl).await.unwrap();
    let r = r.unwrap();
    same(&src, &r.path);
    // The download went on after `a` left: later progress still had chunks to fetch.
    assert_eq!(r.chunks_fetched, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_seeder_is_banned_and_no_bad_byte_lands() {
    let s = Swarm::new().await;
    let src = s.write("f.bin", 200 * CHUNK as usize, 5);
    let liar = s.agent("liar").await;
    let honest = s.agent("honest").await;
    liar.seeder.set_corrupt_for_tests(true);
    let id = s.share(&liar, &src).await;
    s.share(&honest, &src).await;
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out("dl"));
    let r = within(leecher.download(id, o)).await.unwrap();
    same(&src, &r.path);
    let mut banned = Vec::new();
    let mut bad = 0;
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::PeerBanned { fingerprint, .. } => banned.push(fingerprint),
            Event::ChunkRetry { reason, .. } if reason == "digest mismatch" => bad += 1,
            _ => {}
        }
    }
    assert_eq!(banned, vec![liar.identity.fingerprint]);
    assert!(
        bad >= 1 && bad <= BAN_THRESHOLD as usize,
        "bad chunks before the ban: {bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_another_certificate_is_refused() {
    let s = Swarm::new().await;
    let src = s.write("f.bin", 50 * CHUNK as usize, 6);
    let honest = s.agent("honest").await;
    let id = s.share(&honest, &src).await;
    // An impostor announces the honest seeder's port under its own identity: a downloader
    // that connects there expecting the impostor's fingerprint meets another certificate.
    let impostor = s.agent("impostor").await;
    let m = impostor.tracker.manifest(&id).await.unwrap();
    impostor
        .tracker
        .announce(&AnnounceRequest {
            file_id: id,
            port: honest.listen_addr().port(),
            event: AnnounceEvent::Completed,
            bitfield: Bitfield::full(m.chunk_count()).to_base64(),
            address: None,
            reach: None,
        })
        .await
        .unwrap();
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out("dl"));
    let r = within(leecher.download(id, o)).await.unwrap();
    same(&src, &r.path);
    let mut refused = false;
    while let Ok(e) = rx.try_recv() {
        if let Event::PeerDropped {
            fingerprint,
            reason,
            ..
        } = &e
            && *fingerprint == impostor.identity.fingerprint
        {
            assert!(
                reason.contains("TLS handshake") || reason.contains("certificate"),
                "{reason}"
            );
            refused = true;
        }
        if let Event::PeerConnected { fingerprint, .. } = &e {
            assert_ne!(
                *fingerprint, impostor.identity.fingerprint,
                "connected to an impostor"
            );
        }
    }
    assert!(refused, "the mismatching peer was tried and refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_and_refetches_tampered_chunks() {
    let s = Swarm::new().await;
    let total = 300u32;
    let src = s.write("f.bin", (total * CHUNK) as usize - 10, 7);
    let seeder = s.agent("seeder").await;
    // Slow enough (≈ 2 s for the file) that the interruption lands mid-transfer.
    seeder.seeder.set_upload_limit(2_500_000);
    let id = s.share(&seeder, &src).await;
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out("dl"));
    let cancel = leecher.cancel.clone();
    let dl = tokio::spawn(async move {
        let r = leecher.download(id, o).await;
        (leecher, r)
    });
    while let Some(e) = within(rx.recv()).await {
        if let Event::Progress { chunks_done, .. } = e
            && chunks_done >= 60
        {
            break;
        }
    }
    cancel.cancel();
    let (_old, r) = within(dl).await.unwrap();
    assert!(
        matches!(
            r,
            Err(torrentguard_agent::AgentError::Download(
                DownloadError::Interrupted
            ))
        ),
        "{r:?}"
    );
    let part = s.out("dl").join("f.bin.part");
    assert!(part.exists() && s.out("dl").join("f.bin.part.tgstate").exists());

    // Tamper with chunk 0 in the .part: the restart must re-fetch it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(b"tampered", 100).unwrap();
    }
    seeder.seeder.set_upload_limit(0);
    let again = s.agent("leecher2").await;
    let (o, mut rx) = opts(s.out("dl"));
    let r = within(again.download(id, o)).await.unwrap();
    same(&src, &r.path);
    let mut started = None;
    while let Ok(e) = rx.try_recv() {
        if let Event::Started {
            chunks_have,
            discarded,
            ..
        } = e
        {
            started = Some((chunks_have, discarded));
        }
    }
    let (have, discarded) = started.unwrap();
    assert_eq!(discarded, 1, "the tampered chunk was caught");
    assert!(have >= 59, "verified chunks were kept: {have}");
    assert_eq!(r.chunks_reused, have);
    assert_eq!(
        r.chunks_fetched,
        total - have,
        "only missing chunks were fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leecher_serves_what_it_has_to_a_second_leecher() {
    let s = Swarm::new().await;
    let src = s.write("f.bin", 100 * CHUNK as usize, 8);
    let seeder = s.agent("seeder").await;
    let id = s.share(&seeder, &src).await;
    let first = s.agent("first").await;
    let (o, _rx) = opts(s.out("dl1"));
    let r = within(first.download(id, o)).await.unwrap();
    first.keep_announcing(r.shared.clone(), EventSink::none());
    // The original seeder leaves; the first downloader now seeds alone.
    seeder.shutdown().await;
    let second = s.agent("second").await;
    let (o, _rx) = opts(s.out("dl2"));
    let r2 = within(second.download(id, o)).await.unwrap();
    same(&src, &r2.path);
}

/// A fake tracker that serves, for any id, a manifest that hashes to something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_whose_id_does_not_match_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let tracker_id = Identity::generate("fake-tracker").unwrap();
    let data = b"some content".to_vec();
    let m = torrentguard_protocol::hashing::manifest_from_reader(
        "x.bin",
        &data[..],
        CHUNK,
        HashAlgo::Sha256,
        |_| {},
    )
    .unwrap();
    let claimed: FileId = "ab".repeat(32).parse().unwrap();
    assert_ne!(m.file_id(), claimed);
    let cfg = rustls::ServerConfig::builder_with_provider(torrentguard_trust::config::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![tracker_id.cert.clone()], tracker_id.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = serde_json::json!({"status":"ok","version":"fake","fingerprint": tracker_id.fingerprint.to_string()}).to_string();
    let manifest = serde_json::to_string(&m).unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, health, manifest) = (acceptor.clone(), health.clone(), manifest.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let body = if req.starts_with("GET /healthz") {
                    &health
                } else {
                    &manifest
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let identity = Arc::new(Identity::generate("leecher").unwrap());
    let target = TrackerTarget {
        url: format!("https://{addr}"),
        fingerprint: Some(tracker_id.fingerprint),
        token: None,
    };
    let agent = within(Agent::start(
        identity,
        dir.path().to_path_buf(),
        &target,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let (o, _rx) = opts(dir.path().join("out"));
    let err = within(agent.download(claimed, o)).await.unwrap_err();
    assert!(err.to_string().contains("file id mismatch"), "{err}");
    assert!(
        !dir.path().join("out").join("x.bin.part").exists(),
        "nothing written"
    );
}

/// Downloaders that arrive together are all admitted on the first try: the seeder refreshes
/// its view of the swarm for them rather than refusing the ones it has not heard of yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_downloaders_are_admitted_at_once() {
    let s = Swarm::new().await;
    let src = s.write("f.bin", 40 * CHUNK as usize, 9);
    let seeder = s.agent("seeder").await;
    let id = s.share(&seeder, &src).await;
    let mut jobs = Vec::new();
    for n in 0..4 {
        let leecher = s.agent(&format!("leecher{n}")).await;
        let (o, rx) = opts(s.out(&format!("dl{n}")));
        jobs.push(tokio::spawn(async move {
            let r = leecher.download(id, o).await;
            (leecher, r, rx)
        }));
    }
    for j in jobs {
        let (_l, r, mut rx) = within(j).await.unwrap();
        same(&src, &r.unwrap().path);
        while let Ok(e) = rx.try_recv() {
            if let Event::PeerDropped { reason, .. } = e {
                panic!("a downloader was dropped: {reason}");
            }
        }
    }
}

/// Without a pin the tracker is trusted on first use and recorded; a tracker that later shows
/// another certificate for the same address is a hard error that names the file to edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_trusted_on_first_use_then_pinned() {
    use torrentguard_agent::session::{KNOWN_TRACKERS_FILE, TrackerClient, TrackerError};
    let s = Swarm::new().await;
    let data = s.dir.path().join("tofu");
    std::fs::create_dir_all(&data).unwrap();
    let me = Identity::generate("tofu").unwrap();
    let url = s.tracker.url();
    let c = within(TrackerClient::connect(&url, None, &me, &data, None))
        .await
        .unwrap();
    assert_eq!(c.fingerprint(), s.tracker.fingerprint);
    let known = std::fs::read_to_string(data.join(KNOWN_TRACKERS_FILE)).unwrap();
    assert!(
        known.contains(&s.tracker.fingerprint.to_string()),
        "{known}"
    );
    // Second time: the recorded fingerprint is used as the pin.
    within(TrackerClient::connect(&url, None, &me, &data, None))
        .await
        .unwrap();

    // The record now says another certificate: refused, naming the file.
    let other = Identity::generate("not-the-tracker").unwrap().fingerprint;
    let host = url.trim_start_matches("https://");
    std::fs::write(data.join(KNOWN_TRACKERS_FILE), format!("{host} {other}\n")).unwrap();
    let err = within(TrackerClient::connect(&url, None, &me, &data, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TrackerError::FingerprintChanged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(KNOWN_TRACKERS_FILE), "{err}");
    // An explicit pin that is wrong is refused too.
    let err = within(TrackerClient::connect(&url, Some(other), &me, &data, None))
        .await
        .unwrap_err();
    assert!(matches!(err, TrackerError::PinMismatch { .. }), "{err}");
}
