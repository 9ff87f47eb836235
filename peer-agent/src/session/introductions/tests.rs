use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::TcpListener;
use torrentguard_protocol::hashing::manifest_from_reader;
use torrentguard_protocol::wire::{Frame, frame_bound};
use torrentguard_protocol::{Bitfield, Fingerprint, HashAlgo, Manifest};

use super::*;
use crate::peer::connection::Hello;
use crate::peer::{BufferPool, Incoming, PeerConnection};
use crate::torrent::{SharedFile, SwarmDirectory, SwarmLookupError};

const CHUNK: u32 = 16 * 1024;
/// A bound on each step, not a timing assertion.
const STEP: Duration = Duration::from_secs(20);

fn intro(address: &str, port: u16, via: IntroVia) -> Introduction {
    Introduction {
        token: "ab".repeat(32),
        file_id: FileId([7; 32]),
        peer: Fingerprint::from_bytes([1; 32]),
        address: address.parse().unwrap(),
        port,
        via,
        start_in_ms: 0,
        relay_port: None,
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn unspecified_multicast_broadcast_and_port_zero_are_never_dialled() {
    let lo = ip("127.0.0.1");
    for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
        let e = admissible(&intro(bad, 7000, IntroVia::Punch), lo).unwrap_err();
        assert!(matches!(e, Refused::NotDialable(_)), "{bad}: {e}");
    }
    let e = admissible(&intro("100.64.0.12", 0, IntroVia::Punch), lo).unwrap_err();
    assert_eq!(e, Refused::PortZero);
}

#[test]
fn loopback_only_from_a_loopback_tracker() {
    let to_loopback = intro("127.0.0.1", 7000, IntroVia::Punch);
    assert_eq!(admissible(&to_loopback, ip("127.0.0.1")), Ok(()));
    assert_eq!(admissible(&to_loopback, ip("::1")), Ok(()));
    for tracker in ["100.64.0.1", "192.168.1.5", "8.8.8.8"] {
        let e = admissible(&to_loopback, ip(tracker)).unwrap_err();
        assert!(matches!(e, Refused::TooLocal { .. }), "{tracker}: {e}");
    }
    // IPv4-mapped loopback is loopback.
    let mapped = intro("::ffff:127.0.0.1", 7000, IntroVia::Punch);
    assert!(admissible(&mapped, ip("100.64.0.1")).is_err());
}

#[test]
fn a_public_tracker_cannot_aim_us_at_our_lan() {
    let global = ip("8.8.8.8");
    for lan in [
        "192.168.1.20",
        "10.0.0.3",
        "172.16.0.9",
        "169.254.1.1",
        "fd00::5",
        "fe80::1",
    ] {
        let e = admissible(&intro(lan, 7000, IntroVia::Relay), global).unwrap_err();
        assert!(matches!(e, Refused::TooLocal { .. }), "{lan}: {e}");
    }
    assert_eq!(
        admissible(&intro("9.9.9.9", 7000, IntroVia::Punch), global),
        Ok(())
    );
    // A tracker whose host does not resolve is held to the strictest rule.
    assert!(admissible(&intro("192.168.1.20", 7000, IntroVia::Punch), None).is_err());
    assert_eq!(
        admissible(&intro("9.9.9.9", 7000, IntroVia::Punch), None),
        Ok(())
    );
}

#[test]
fn a_lan_tracker_may_introduce_lan_and_public_peers() {
    // The NAT lab's internet is 100.64.0.0/24 (shared address space), tracker at .1.
    let lab = ip("100.64.0.1");
    assert_eq!(
        admissible(&intro("100.64.0.12", 7000, IntroVia::Punch), lab),
        Ok(())
    );
    assert_eq!(
        admissible(&intro("9.9.9.9", 7000, IntroVia::Punch), lab),
        Ok(())
    );
    assert!(admissible(&intro("169.254.0.7", 7000, IntroVia::Punch), lab).is_err());
}

/// The swarm as the tracker would list it.
struct Members(Vec<Fingerprint>);

impl SwarmDirectory for Members {
    fn members<'a>(
        &'a self,
        _id: &'a FileId,
    ) -> BoxFuture<'a, Result<Vec<Fingerprint>, SwarmLookupError>> {
        let list = self.0.clone();
        Box::pin(async move { Ok(list) })
    }
}

struct Served {
    seeder: Arc<Seeder>,
    seeder_id: Arc<Identity>,
    manifest: Arc<Manifest>,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// A seeder on loopback serving a 4-chunk file to a swarm of `members`.
async fn serving(members: Vec<Fingerprint>, cancel: CancellationToken) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.bin");
    let data: Vec<u8> = (0..4 * CHUNK)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let m = manifest_from_reader("file.bin", &data[..], CHUNK, HashAlgo::Sha256, |_| {}).unwrap();
    let manifest = Arc::new(m);
    let file = std::fs::File::open(&path).unwrap();
    let shared = SharedFile::complete(manifest.clone(), path, file).unwrap();
    let seeder_id = Arc::new(Identity::generate("seeder").unwrap());
    let listen = "127.0.0.1:0".parse().unwrap();
    let swarm = Arc::new(Members(members));
    let seeder = Seeder::start(listen, &seeder_id, swarm, cancel)
        .await
        .unwrap();
    seeder.add(shared);
    Served {
        seeder,
        seeder_id,
        manifest,
        data,
        _dir: dir,
    }
}

/// As a downloader: TLS client over `tcp` pinned to the seeder, `Hello`, then chunk 1.
async fn fetch_chunk_1(
    me: &Identity,
    tcp: tokio::net::TcpStream,
    served: &Served,
) -> Result<Vec<u8>, PeerError> {
    let (m, n) = (&served.manifest, served.manifest.chunk_count());
    let addr = tcp.peer_addr()?;
    let pin = served.seeder_id.fingerprint;
    let mut conn = PeerConnection::connect_over(me, Transport::Tcp(tcp), addr, pin, None).await?;
    let id = served.manifest.file_id();
    conn.writer
        .send_handshake(Hello::ours(id, n), &Bitfield::new(n))
        .await?;
    let pool = BufferPool::new(CHUNK as usize);
    let deadline = Instant::now() + STEP;
    conn.recv_hello(&pool, deadline).await?;
    conn.recv_bitfield(&pool, n, deadline).await?;
    conn.reader.set_max_frame(frame_bound(m.chunk_size, n));
    conn.writer.send_now(&Frame::Request(1)).await?;
    let got = tokio::time::timeout(STEP, conn.reader.next(&pool))
        .await
        .expect("a chunk or an error within the step")
        .map_err(PeerError::from)?;
    match got {
        Some(Incoming::Chunk { index: 1, data, .. }) => Ok(data.to_vec()),
        other => Err(PeerError::NotAdmitted {
            reason: format!("{other:?}"),
        }),
    }
}

/// A loopback socket pair: (the downloader's end, the seeder's end, the downloader's address).
async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = tokio::net::TcpStream::connect(l.local_addr().unwrap());
    let (ours, theirs) = tokio::join!(ours, l.accept());
    let ours = ours.unwrap();
    let addr = ours.local_addr().unwrap();
    (ours, theirs.unwrap().0, addr)
}

#[tokio::test]
async fn an_introduced_stream_is_served_like_an_accepted_one() {
    let me = Identity::generate("downloader").unwrap();
    let served = serving(vec![me.fingerprint], CancellationToken::new()).await;
    let (ours, theirs, addr) = socket_pair().await;
    let seeder = served.seeder.clone();
    let serve = seeder.serve_introduced(Transport::Tcp(theirs), addr, me.fingerprint);
    let serve = tokio::spawn(serve);
    let chunk = fetch_chunk_1(&me, ours, &served).await.unwrap();
    assert_eq!(chunk, served.data[CHUNK as usize..2 * CHUNK as usize]);
    served.seeder.shutdown().await;
    tokio::time::timeout(STEP, serve)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_introduced_stream_from_another_certificate_is_dropped() {
    let named = Identity::generate("named").unwrap();
    let other = Identity::generate("other").unwrap();
    // Both are swarm members: only the introduction's name keeps the other out.
    let served = serving(
        vec![named.fingerprint, other.fingerprint],
        CancellationToken::new(),
    )
    .await;
    let (ours, theirs, addr) = socket_pair().await;
    let serve =
        served
            .seeder
            .clone()
            .serve_introduced(Transport::Tcp(theirs), addr, named.fingerprint);
    let serve = tokio::spawn(serve);
    let fetched = fetch_chunk_1(&other, ours, &served).await;
    assert!(
        fetched.is_err(),
        "served a chunk to a certificate not introduced"
    );
    let ended = tokio::time::timeout(STEP, serve).await.unwrap().unwrap();
    let Err(PeerError::NotAdmitted { reason }) = ended else {
        panic!("{ended:?}");
    };
    assert!(reason.contains("introduced as"), "{reason}");
}

/// Introductions from a script: the first poll answers `first`, later ones wait forever.
struct Scripted {
    first: Mutex<Option<Batch>>,
    polls: AtomicU32,
}

impl IntroductionSource for Scripted {
    fn next_batch(&self, wait_secs: u32) -> BoxFuture<'_, Result<Batch, TrackerError>> {
        assert_eq!(wait_secs, POLL_WAIT_SECS);
        self.polls.fetch_add(1, Ordering::SeqCst);
        let first = self.first.lock().unwrap().take();
        Box::pin(async move {
            match first {
                Some(batch) => Ok(batch),
                None => futures::future::pending().await,
            }
        })
    }
}

#[tokio::test]
async fn a_punch_introduction_is_answered_from_the_listening_port_and_served() {
    let me = Identity::generate("downloader").unwrap();
    let cancel = CancellationToken::new();
    let served = serving(vec![me.fingerprint], cancel.child_token()).await;
    // The downloader's side of the punch: a plain listener the seeder's SYN reaches.
    let downloader = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = downloader.local_addr().unwrap().port();
    let mut punch = intro("127.0.0.1", port, IntroVia::Punch);
    punch.file_id = served.manifest.file_id();
    punch.peer = me.fingerprint;
    // One for a file not served here, which must be left alone.
    let mut unknown = punch.clone();
    unknown.file_id = FileId([9; 32]);
    let batch = Batch {
        items: [unknown, punch]
            .into_iter()
            .map(|intro| Introduced { intro, relay: None })
            .collect(),
        tracker_ip: ip("127.0.0.1"),
    };
    let source = Arc::new(Scripted {
        first: Mutex::new(Some(batch)),
        polls: AtomicU32::new(0),
    });
    let tasks = TaskTracker::new();
    let answerer = Answerer::new(
        source.clone(),
        served.seeder.clone(),
        Arc::new(Identity::generate("unused").unwrap()),
        cancel.clone(),
        tasks.clone(),
    );
    tasks.spawn(answerer.run());
    let (tcp, from) = tokio::time::timeout(STEP, downloader.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        from.port(),
        served.seeder.local_addr().port(),
        "punched from the listening port"
    );
    let chunk = fetch_chunk_1(&me, tcp, &served).await.unwrap();
    assert_eq!(chunk, served.data[CHUNK as usize..2 * CHUNK as usize]);
    cancel.cancel();
    tasks.close();
    tokio::time::timeout(STEP, tasks.wait()).await.unwrap();
    assert!(source.polls.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn nothing_is_polled_while_nothing_is_served() {
    let cancel = CancellationToken::new();
    let served = serving(vec![], cancel.child_token()).await;
    served.seeder.remove(&served.manifest.file_id());
    let source = Arc::new(Scripted {
        first: Mutex::new(None),
        polls: AtomicU32::new(0),
    });
    let tasks = TaskTracker::new();
    let answerer = Answerer::new(
        source.clone(),
        served.seeder.clone(),
        served.seeder_id.clone(),
        cancel.clone(),
        tasks.clone(),
    );
    let run = tokio::spawn(answerer.run());
    // Paused time: the loop's idle checks run through without real waiting.
    tokio::time::pause();
    tokio::time::sleep(IDLE_CHECK * 5).await;
    assert_eq!(source.polls.load(Ordering::SeqCst), 0);
    cancel.cancel();
    tokio::time::resume();
    tokio::time::timeout(STEP, run).await.unwrap().unwrap();
}
