use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU32;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use torrentguard_protocol::HashAlgo;

use super::*;

/// Every await in these tests is bounded: a hang fails the test instead of blocking the run.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

async fn tracker_in(dir: &Path) -> torrentguard_tracker::RunningTracker {
    let cfg = torrentguard_tracker::TrackerConfig::new("127.0.0.1:0".parse().unwrap(), dir.into());
    torrentguard_tracker::start(cfg).await.unwrap()
}

/// A loopback port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn target(port: u16, fingerprint: Option<Fingerprint>) -> TrackerTarget {
    TrackerTarget {
        url: format!("https://127.0.0.1:{port}"),
        fingerprint,
        token: None,
    }
}

fn set_of(targets: Vec<TrackerTarget>, dir: &Path) -> TrackerSet {
    let me = Arc::new(Identity::generate("agent").unwrap());
    TrackerSet::new(targets, me, dir.into()).unwrap()
}

fn manifest() -> Manifest {
    torrentguard_protocol::hashing::manifest_from_reader(
        "f.bin",
        &b"failover"[..],
        16 * 1024,
        HashAlgo::Sha256,
        |_| {},
    )
    .unwrap()
}

#[tokio::test]
async fn a_dead_first_tracker_is_skipped_and_rested() {
    let dir = tempfile::tempdir().unwrap();
    let live = tracker_in(&dir.path().join("t")).await;
    let dead = target(closed_port(), None);
    let set = set_of(
        vec![
            dead.clone(),
            target(live.local_addr.port(), Some(live.fingerprint)),
        ],
        dir.path(),
    );
    let client = within(set.connect_first()).await.unwrap();
    assert_eq!(client.fingerprint(), live.fingerprint);
    // The dead one rests: the live one is asked first now, and answers.
    assert_eq!(set.order(), [1, 0]);
    let m = manifest();
    within(set.register(&m)).await.unwrap();
    assert_eq!(within(set.manifest(&m.file_id())).await.unwrap(), m);
    assert_eq!(set.current().unwrap().fingerprint(), live.fingerprint);
    live.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tracker_with_a_wrong_pin_is_skipped_and_said_why() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker_in(&dir.path().join("t")).await;
    let port = t.local_addr.port();
    let wrong = Fingerprint::from_bytes([7; 32]);
    let set = set_of(
        vec![target(port, Some(wrong)), target(port, Some(t.fingerprint))],
        dir.path(),
    );
    let client = within(set.connect_first()).await.unwrap();
    assert_eq!(client.fingerprint(), t.fingerprint);
    assert_eq!(set.order(), [1, 0]);

    // Alone, the wrong pin is the error, named as such.
    let alone = set_of(vec![target(port, Some(wrong))], dir.path());
    let err = within(alone.connect_first()).await.unwrap_err();
    assert!(matches!(err, TrackerError::PinMismatch { .. }), "{err}");
    // With a dead tracker too, both reasons are listed.
    let both = set_of(
        vec![target(closed_port(), None), target(port, Some(wrong))],
        dir.path(),
    );
    let err = within(both.connect_first()).await.unwrap_err().to_string();
    assert!(err.starts_with("no tracker answered: "), "{err}");
    assert!(
        err.contains("cannot reach") && err.contains("does not present the pinned"),
        "{err}"
    );
    t.shutdown().await.unwrap();
}

/// A tracker that does not know a file (it was down when the file was registered) is given
/// the manifest by the announce, so a downloader failing over to it finds the swarm.
#[tokio::test]
async fn an_announce_registers_the_manifest_where_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker_in(&dir.path().join("t")).await;
    let set = set_of(
        vec![target(t.local_addr.port(), Some(t.fingerprint))],
        dir.path(),
    );
    let m = manifest();
    let req = AnnounceRequest {
        file_id: m.file_id(),
        port: 9,
        event: AnnounceEvent::Started,
        bitfield: torrentguard_protocol::Bitfield::full(m.chunk_count()).to_base64(),
        address: None,
        reach: None,
    };
    within(set.announce(&req, &m)).await.unwrap();
    assert_eq!(within(set.manifest(&m.file_id())).await.unwrap(), m);
    t.shutdown().await.unwrap();
}

/// A TLS server on loopback that answers `GET /healthz` with 200, except the `busy_at`-th
/// request, which gets 429 with `Retry-After: 1`. Returns its address, fingerprint and count
/// of requests.
async fn busy_once_server(busy_at: u32) -> (SocketAddr, Fingerprint, Arc<AtomicU32>) {
    let id = Identity::generate("busy-tracker").unwrap();
    let fingerprint = id.fingerprint;
    let mut cfg = torrentguard_trust::config::https_server_config(&id).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let health = serde_json::json!({
                    "status": "ok", "version": "test", "fingerprint": fingerprint.to_string()
                })
                .to_string();
                // One request per connection, then close: enough for a client that reconnects.
                while read_request(&mut tls).await {
                    let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                    let answer = if n == busy_at {
                        "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n"
                            .to_string()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{health}",
                            health.len()
                        )
                    };
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, fingerprint, count)
}

/// Reads one bodiless request's head; false at the end of the connection.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

#[tokio::test]
async fn a_429_is_waited_out_as_retry_after_says_and_not_counted_as_failure() {
    let dir = tempfile::tempdir().unwrap();
    // Request 1 is the connect's health check; request 2, the call below, is refused once.
    let (addr, fp, count) = busy_once_server(2).await;
    let set = set_of(vec![target(addr.port(), Some(fp))], dir.path());
    within(set.connect_first()).await.unwrap();
    let started = Instant::now();
    let health = within(set.call(|c| async move { c.health().await }))
        .await
        .unwrap();
    assert_eq!(health.fingerprint, fp);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered before the Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let member = set.inner.members[0].health();
    assert_eq!(member.failures, 0);
    assert!(member.rest_until.is_none());
}

#[test]
fn a_429_is_not_a_failure_and_a_404_asks_the_next_tracker() {
    let busy = TrackerError::RateLimited {
        url: "https://t/".into(),
        retry_after: Duration::from_secs(1),
    };
    assert_eq!(verdict(&busy), Verdict::AskNext);
    let api = |status| TrackerError::Api {
        status,
        code: "x".into(),
        message: "y".into(),
    };
    assert_eq!(verdict(&api(StatusCode::NOT_FOUND)), Verdict::AskNext);
    assert_eq!(verdict(&api(StatusCode::BAD_GATEWAY)), Verdict::Failing);
    assert_eq!(verdict(&api(StatusCode::FORBIDDEN)), Verdict::Final);
}
