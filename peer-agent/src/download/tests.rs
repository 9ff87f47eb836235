//! Issue 9's download rules, in one process: the real tracker and agents on ephemeral loopback
//! ports.

use std::path::Path;

use torrentguard_protocol::HashAlgo;

use super::*;
use crate::agent::{Agent, AgentError, TrackerTarget};
use crate::events::EventSink;
use crate::session::fetch_manifests;
use crate::torrent::ChunkStorage;
use crate::torrent::store::{ChunkStore, Opened};
use std::os::unix::fs::FileExt;
use tokio::sync::mpsc;

const CHUNK: u32 = 16 * 1024;
const STEP: Duration = Duration::from_secs(60);

struct Swarm {
    tracker: torrentguard_tracker::RunningTracker,
    dir: tempfile::TempDir,
}

impl Swarm {
    async fn new() -> Swarm {
        Swarm::with_interval(Duration::from_secs(1)).await
    }

    async fn with_interval(interval: Duration) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = torrentguard_tracker::TrackerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("tracker"),
        );
        cfg.announce_interval = interval;
        cfg.peer_ttl = interval * 2 + Duration::from_secs(30);
        let tracker = torrentguard_tracker::start(cfg).await.unwrap();
        Swarm { tracker, dir }
    }

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

    /// Writes `chunks` chunks of varied bytes to `name`; returns its path and bytes.
    fn write(&self, name: &str, chunks: u32) -> (PathBuf, Vec<u8>) {
        let p = self.dir.path().join(name);
        let data: Vec<u8> = (0..chunks * CHUNK - 100)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    async fn share(&self, agent: &Agent, path: &Path) -> (FileId, Arc<Manifest>) {
        let f = agent
            .share(path, CHUNK, HashAlgo::Sha256, &EventSink::none())
            .await
            .unwrap();
        (f.file_id, f.manifest.clone())
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

fn opts(out: PathBuf) -> (DownloadOptions, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut o = DownloadOptions::new(out);
    o.events = EventSink::new(tx);
    (o, rx)
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

/// Puts the first `n` chunks of `data` in a `.part` with its state file, as an interrupted
/// run leaves them.
fn leave_partial(out: &Path, m: &Arc<Manifest>, data: &[u8], n: u32) {
    let Ok(Opened::Partial(p)) = ChunkStore::open(out, m.clone(), false) else {
        panic!("no .part opened");
    };
    let mut have = p.have;
    for i in 0..n {
        let off = m.chunk_offset(i) as usize;
        let len = m.chunk_len(i) as usize;
        p.store
            .storage()
            .write_chunk(i, &data[off..off + len])
            .unwrap();
        have.set(i);
    }
    p.store.save_state(&have).unwrap();
}

/// Issue 9: the resume summary counts only what this run fetched: chunks and bytes found on
/// disk are reused, not fetched, so the reported rate is of the transfer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_report_counts_only_this_runs_bytes() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src, data) = s.write("r.bin", 64);
    let (id, m) = s.share(&seeder, &src).await;
    leave_partial(&s.out(), &m, &data, 40);
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out());
    let r = within(leecher.download(id, o)).await.unwrap();
    assert_eq!(std::fs::read(&r.path).unwrap(), data);
    assert_eq!(r.chunks_reused, 40);
    assert_eq!(r.chunks_fetched, 24);
    assert_eq!(r.bytes_fetched, data.len() as u64 - 40 * CHUNK as u64);
    let (mut completed, mut paths) = (None, Vec::new());
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::Completed {
                bytes_fetched,
                first_chunk_ms,
                ..
            } => completed = Some((bytes_fetched, first_chunk_ms)),
            Event::PeerConnected { path, tries, .. } => paths.push((path, tries)),
            _ => {}
        }
    }
    let (fetched, first_chunk_ms) = completed.expect("a completed event");
    assert_eq!(fetched, r.bytes_fetched, "the event says the same");
    assert_eq!(first_chunk_ms, r.first_chunk_ms);
    assert!(first_chunk_ms.is_some(), "chunks were fetched");
    // A seeder on loopback is reached directly, at the first try.
    assert_eq!(paths, [(crate::peer::Path::Direct, 1)]);
}

/// Issue 9: an output already complete and identical is reported done without fetching a
/// chunk; one that differs is refused without `--force`; with `--force` only the chunks that
/// differ are fetched, and the result is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_output_identical_different_and_forced() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src, data) = s.write("e.bin", 32);
    let (id, _) = s.share(&seeder, &src).await;
    let dest = s.out().join("e.bin");
    std::fs::create_dir_all(s.out()).unwrap();
    std::fs::write(&dest, &data).unwrap();
    let leecher = s.agent("leecher").await;

    let (o, _rx) = opts(s.out());
    let r = within(leecher.download(id, o)).await.unwrap();
    assert_eq!((r.chunks_fetched, r.bytes_fetched), (0, 0));
    assert_eq!(r.chunks_reused, 32);
    assert_eq!(r.path, dest);
    assert!(!s.out().join("e.bin.part").exists());

    let mut bad = data.clone();
    for i in [3usize, 17, 31] {
        bad[i * CHUNK as usize + 9] ^= 0x5a;
    }
    std::fs::write(&dest, &bad).unwrap();
    let (o, _rx) = opts(s.out());
    let err = within(leecher.download(id, o)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Download(DownloadError::Store(StoreError::Exists { .. }))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), bad, "refused, so untouched");

    let (mut o, _rx) = opts(s.out());
    o.force = true;
    let r = within(leecher.download(id, o)).await.unwrap();
    assert_eq!(r.chunks_fetched, 3, "only the corrupted chunks");
    assert_eq!(r.chunks_reused, 29);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!s.out().join("e.bin.part").exists());
    assert!(!s.out().join("e.bin.part.tgstate").exists());
}

/// Issue 9: two downloads of the same id into one directory at once: the second is refused
/// at once (the `.part` is locked), the first completes verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_download_into_the_same_part_is_refused() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    // ≈ 2 s for the file: the second download starts well before the first can finish.
    seeder.seeder.set_upload_limit(500_000);
    let (src, data) = s.write("l.bin", 64);
    let (id, _) = s.share(&seeder, &src).await;
    let first = s.agent("first").await;
    let second = s.agent("second").await;
    let (o, mut rx) = opts(s.out());
    let dl = tokio::spawn(async move {
        let r = first.download(id, o).await;
        (first, r)
    });
    // The first has opened and locked its .part once it says it started.
    while let Some(e) = within(rx.recv()).await {
        if matches!(e, Event::Started { .. }) {
            break;
        }
    }
    let (o, _rx) = opts(s.out());
    let err = within(second.download(id, o)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Download(DownloadError::Store(StoreError::Locked(_)))
        ),
        "{err}"
    );
    let (_first, r) = within(dl).await.unwrap();
    let r = r.unwrap();
    assert_eq!(std::fs::read(&r.path).unwrap(), data);
}

/// Issue 9: two different files with one name cannot share a directory; the same name as
/// another's `.part` neither.
#[test]
fn clashing_output_names_are_refused() {
    use torrentguard_protocol::hashing::manifest_from_reader;
    let m = |name: &str, data: &[u8]| {
        Arc::new(manifest_from_reader(name, data, CHUNK, HashAlgo::Sha256, |_| {}).unwrap())
    };
    let (a, b) = (m("dup.bin", b"one"), m("dup.bin", b"two"));
    let err = check_distinct_outputs(&[a.clone(), b.clone()]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&a.file_id().to_string()) && text.contains(&b.file_id().to_string()),
        "{text}"
    );
    assert!(text.contains("-o"), "{text}");
    let part = m("dup.bin.part", b"three");
    assert!(check_distinct_outputs(&[a.clone(), part]).is_err());
    check_distinct_outputs(&[a.clone(), m("other.bin", b"one")]).unwrap();
    check_distinct_outputs(&[a.clone(), a]).unwrap();
}

/// Issue 9: with its only seeder gone (listed, but refusing connections), a download says
/// why in its `waiting` events, and with a timeout gives up keeping the `.part` and state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_seeder_is_explained_and_the_timeout_gives_up() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src, _) = s.write("d.bin", 8);
    let (id, _) = s.share(&seeder, &src).await;
    // The listener closes; the tracker still lists it.
    seeder.seeder.shutdown().await;
    let leecher = s.agent("leecher").await;
    let (mut o, mut rx) = opts(s.out());
    o.timeout = Some(Duration::from_secs(2));
    let err = within(leecher.download(id, o)).await.unwrap_err();
    let AgentError::Download(DownloadError::Stalled { after, detail }) = &err else {
        panic!("{err}");
    };
    assert_eq!(*after, Duration::from_secs(2));
    assert!(detail.contains("refused"), "{detail}");
    let mut reasons = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::Waiting { peers, .. } = e {
            reasons.extend(peers.into_iter().map(|p| p.last_error));
        }
    }
    assert!(
        reasons.iter().any(|r| r.contains("connecting to")),
        "{reasons:?}"
    );
    assert!(s.out().join("d.bin.part").exists());
    assert!(s.out().join("d.bin.part.tgstate").exists());
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    for bad in ["", "0", "0s", "s", "5x", "-3", "1.5s", "99999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

/// Issue 9 (sparse): a source that is mostly holes downloads into a file that is mostly holes:
/// all-zero chunks are verified but never written into the fresh `.part`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_source_stays_sparse() {
    use std::os::unix::fs::MetadataExt;
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src, data) = s.write("s.bin", 2);
    let size = 256 * CHUNK as u64;
    {
        let f = File::options().write(true).open(&src).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&data[..100], size - 100).unwrap();
    }
    let (id, _) = s.share(&seeder, &src).await;
    let leecher = s.agent("leecher").await;
    let (o, _rx) = opts(s.out());
    let r = within(leecher.download(id, o)).await.unwrap();
    assert_eq!(
        std::fs::read(&r.path).unwrap(),
        std::fs::read(&src).unwrap()
    );
    // 253 all-zero chunks are one digest: fetched once, the others are copies of it (which a
    // fresh `.part` leaves as holes), plus the 3 chunks of data.
    assert_eq!(r.chunks_fetched, 4);
    let allocated = std::fs::metadata(&r.path).unwrap().blocks() * 512;
    assert!(
        allocated <= 8 * CHUNK as u64,
        "{allocated} bytes allocated for 3 chunks of data in {size}"
    );
}

/// The name check before a multi-id `get` does not turn one unknown id into a failure of the
/// others: its manifest is `None` and its own download reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_does_not_stop_the_name_check() {
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src, _) = s.write("k.bin", 2);
    let (id, m) = s.share(&seeder, &src).await;
    let unknown: FileId = "ab".repeat(32).parse().unwrap();
    let got = within(fetch_manifests(&seeder.tracker, &[id, unknown]))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].as_deref(), Some(&*m));
    assert!(got[1].is_none());
}

/// Issue 9: when its only seeder goes, a download asks the tracker again within ~5 s however
/// long the tracker's announce interval, so a seeder that appears meanwhile is used at once
/// (here the interval is 10 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_seeder_is_found_within_seconds_after_the_last_one_left() {
    let s = Swarm::with_interval(Duration::from_secs(600)).await;
    let a = s.agent("a").await;
    a.seeder.set_upload_limit(200_000);
    let (src, data) = s.write("n.bin", 64);
    let (id, _) = s.share(&a, &src).await;
    let leecher = s.agent("leecher").await;
    let (o, mut rx) = opts(s.out());
    let dl = tokio::spawn(async move {
        let r = leecher.download(id, o).await;
        (leecher, r)
    });
    while let Some(e) = within(rx.recv()).await {
        if matches!(e, Event::Progress { chunks_done, .. } if chunks_done >= 3) {
            break;
        }
    }
    a.seeder.shutdown().await;
    while let Some(e) = within(rx.recv()).await {
        if matches!(e, Event::Waiting { .. }) {
            break;
        }
    }
    let b = s.agent("b").await;
    s.share(&b, &src).await;
    // Two of the ~5 s retry periods, far below the tracker's 600 s interval.
    let (_leecher, r) = tokio::time::timeout(Duration::from_secs(12), dl)
        .await
        .expect("the new seeder was not used within 12 s")
        .unwrap();
    assert_eq!(std::fs::read(&r.unwrap().path).unwrap(), data);
}

/// Issue 9: by default a download without usable peers asks again at least every 5 s (it was
/// 30 s), reconnects included.
#[test]
fn waiting_retries_are_at_most_five_seconds_by_default() {
    let o = DownloadOptions::new(PathBuf::from("."));
    assert!(o.max_retry_interval <= Duration::from_secs(5));
    assert_eq!(o.timeout, None, "no timeout unless asked");
}

/// JSON-log-like text, every line distinct: compresses well, no two chunks alike.
fn write_text(s: &Swarm, name: &str, chunks: u32) -> (PathBuf, Vec<u8>) {
    let mut data = Vec::new();
    let mut i = 0u64;
    while data.len() < (chunks * CHUNK) as usize - 100 {
        let line = format!(
            "{{\"seq\":{i},\"level\":\"info\",\"path\":\"/v1/items/{}\",\"ms\":{}}}\n",
            i * 7919 % 100_003,
            i * 13 % 997
        );
        data.extend_from_slice(line.as_bytes());
        i += 1;
    }
    data.truncate((chunks * CHUNK) as usize - 100);
    let p = s.dir.path().join(name);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// Issue 12 §4: with compression forced on at the seeder (the `always` knob), a compressible
/// file arrives compressed chunk by chunk, byte-identical, in fewer bytes on the wire than it
/// has; with either side off, no chunk is compressed and the wire carries the chunks as they
/// are (each behind its 9-byte frame header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_when_both_agree_and_never_when_either_is_off() {
    use torrentguard_protocol::compression::Mode;
    const N: u32 = 48;
    for (seeder_mode, leecher_mode) in [
        (Mode::Always, Mode::Auto),
        (Mode::Always, Mode::Off),
        (Mode::Off, Mode::Always),
    ] {
        let s = Swarm::new().await;
        let seeder = s.agent("seeder").await;
        seeder.seeder.set_compression(seeder_mode);
        let (src, data) = write_text(&s, "logs.json", N);
        let (id, _) = s.share(&seeder, &src).await;
        let leecher = s.agent("leecher").await;
        let (mut o, mut rx) = opts(s.out());
        o.compression = leecher_mode;
        let r = within(leecher.download(id, o)).await.unwrap();
        let what = format!("seeder {seeder_mode:?}, leecher {leecher_mode:?}");
        assert_eq!(std::fs::read(&r.path).unwrap(), data, "{what}");
        assert_eq!(r.chunks_fetched, N, "{what}");
        let size = data.len() as u64;
        if seeder_mode == Mode::Always && leecher_mode != Mode::Off {
            assert_eq!(r.chunks_compressed, N, "{what}");
            assert!(r.bytes_on_wire < size / 2, "{what}: {}", r.bytes_on_wire);
        } else {
            assert_eq!(r.chunks_compressed, 0, "{what}");
            assert_eq!(r.bytes_on_wire, size + u64::from(N) * 9, "{what}");
        }
        let mut on_wire = None;
        while let Ok(e) = rx.try_recv() {
            if let Event::Completed { bytes_on_wire, .. } = e {
                on_wire = Some(bytes_on_wire);
            }
        }
        assert_eq!(
            on_wire,
            Some(r.bytes_on_wire),
            "{what}: the event says the same"
        );
    }
}

/// What a download limit of `rate` lets go at once beyond its rate: the bytes banked
/// ([`crate::rate::BURST`] at the limit) and one chunk going into debt.
fn burst(rate: u64) -> u64 {
    (rate as f64 * crate::rate::BURST.as_secs_f64()) as u64 + u64::from(CHUNK)
}

/// Issue 13 §1: a download under a limit of R B/s fetches its N bytes of chunks in at least
/// (N - burst) / R, the lower bound the limit guarantees (unlimited, this megabyte takes a
/// few tens of milliseconds on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_download_takes_at_least_its_bytes_over_the_limit() {
    const RATE: u64 = 500_000;
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src, data) = s.write("limited.bin", 64);
    let (id, _) = s.share(&seeder, &src).await;
    let leecher = s.agent("leecher").await;
    leecher.download_limit.set_limit(RATE);
    let (o, _rx) = opts(s.out());
    let started = Instant::now();
    let r = within(leecher.download(id, o)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(std::fs::read(&r.path).unwrap(), data);
    assert_eq!(
        r.bytes_fetched,
        data.len() as u64,
        "every byte counted once"
    );
    let floor = (r.bytes_fetched - burst(RATE)) as f64 / RATE as f64;
    assert!(
        took.as_secs_f64() >= floor,
        "{} bytes in {took:?}: faster than {RATE} B/s allows ({floor:.2} s)",
        r.bytes_fetched
    );
}

/// Issue 13 §1: two downloads of one agent at once share its one limit: together they take
/// at least (both sizes - burst) / R, where two limits of R each would let them finish in half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_share_one_limit() {
    const RATE: u64 = 500_000;
    let s = Swarm::new().await;
    let seeder = s.agent("seeder").await;
    let (src_a, data_a) = s.write("a.bin", 40);
    let (src_b, data_b) = s.write("b.bin", 40);
    let (id_a, _) = s.share(&seeder, &src_a).await;
    let (id_b, _) = s.share(&seeder, &src_b).await;
    let leecher = s.agent("leecher").await;
    leecher.download_limit.set_limit(RATE);
    let started = Instant::now();
    let (a, b) = within(async {
        tokio::join!(
            leecher.download(id_a, opts(s.out().join("a")).0),
            leecher.download(id_b, opts(s.out().join("b")).0),
        )
    })
    .await;
    let took = started.elapsed();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(std::fs::read(&a.path).unwrap(), data_a);
    assert_eq!(std::fs::read(&b.path).unwrap(), data_b);
    let both = a.bytes_fetched + b.bytes_fetched;
    assert_eq!(both, (data_a.len() + data_b.len()) as u64);
    let floor = (both - burst(RATE)) as f64 / RATE as f64;
    assert!(
        took.as_secs_f64() >= floor,
        "{both} bytes in {took:?}: faster than one limit of {RATE} B/s allows ({floor:.2} s)"
    );
}

/// Issue 13 §1: one download from two seeders (two connections taking turns under one limit)
/// completes byte-identical, no faster than the limit allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_download_from_two_seeders_takes_turns_under_one_limit() {
    const RATE: u64 = 500_000;
    let s = Swarm::new().await;
    let (a, b) = (s.agent("seeder-a").await, s.agent("seeder-b").await);
    let (src, data) = s.write("two.bin", 64);
    let (id, _) = s.share(&a, &src).await;
    s.share(&b, &src).await;
    let leecher = s.agent("leecher").await;
    leecher.download_limit.set_limit(RATE);
    let (o, mut rx) = opts(s.out());
    let started = Instant::now();
    let r = within(leecher.download(id, o)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(std::fs::read(&r.path).unwrap(), data);
    let mut peers = HashSet::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::PeerConnected { fingerprint, .. } = e {
            peers.insert(fingerprint);
        }
    }
    assert_eq!(peers.len(), 2, "both seeders were used");
    let floor = (r.bytes_fetched - burst(RATE)) as f64 / RATE as f64;
    assert!(took.as_secs_f64() >= floor, "{took:?} < {floor:.2} s");
}

#[test]
fn remembered_peers_are_avoided_only_while_another_is_usable() {
    let peer = |n: u8| PeerInfo {
        fingerprint: Fingerprint::from_bytes([n; 32]),
        address: std::net::IpAddr::from([127, 0, 0, 1]),
        port: 7000 + u16::from(n),
        have: 1,
        complete: true,
        last_seen: 0,
        reputation: None,
        reach: None,
    };
    let (own, bad, good) = (peer(0), peer(1), peer(2));
    let remembered = HashSet::from([bad.fingerprint]);
    let mut records: HashMap<Fingerprint, PeerRecord> = HashMap::new();
    let known = [own.clone(), bad.clone(), good.clone()];
    let avoid = |known: &[PeerInfo], records: &HashMap<_, _>| {
        avoid_remembered(known, records, &remembered, own.fingerprint)
    };
    assert!(avoid(&known, &records));
    // Ourselves do not count as another peer.
    assert!(!avoid(&[own.clone(), bad.clone()], &records));
    // Nor does a peer banned in this download.
    records.entry(good.fingerprint).or_default().banned = true;
    assert!(!avoid(&known, &records));
    // Nothing remembered: nothing to avoid.
    assert!(!avoid_remembered(
        &known,
        &HashMap::new(),
        &HashSet::new(),
        own.fingerprint
    ));
}
