use std::sync::Mutex;

use reqwest::StatusCode;

use super::*;

#[test]
fn inbound_is_open_whatever_the_relay_saw() {
    let seen: SocketAddr = "100.64.0.11:40000".parse().unwrap();
    assert_eq!(mapping_of(true, Some(seen), 7000), NatMapping::Open);
    assert_eq!(mapping_of(true, None, 7000), NatMapping::Open);
}

#[test]
fn a_kept_port_is_port_preserving_and_a_renumbered_one_unpredictable() {
    let kept: SocketAddr = "100.64.0.11:7000".parse().unwrap();
    let renumbered: SocketAddr = "100.64.0.11:40000".parse().unwrap();
    assert_eq!(
        mapping_of(false, Some(kept), 7000),
        NatMapping::PortPreserving
    );
    assert_eq!(
        mapping_of(false, Some(renumbered), 7000),
        NatMapping::Unpredictable
    );
}

#[test]
fn without_a_reflection_the_mapping_is_unknown() {
    assert_eq!(mapping_of(false, None, 7000), NatMapping::Unknown);
}

#[test]
fn an_ip_change_is_a_reason_to_learn_again() {
    let (a, b): (IpAddr, IpAddr) = (
        "100.64.0.11".parse().unwrap(),
        "100.64.0.12".parse().unwrap(),
    );
    assert!(moved(Some(a), Some(b)));
    assert!(!moved(Some(a), Some(a)));
    // The same address, once as IPv4-mapped IPv6 (a dual-stack tracker), is no move.
    assert!(!moved(Some(a), Some("::ffff:100.64.0.11".parse().unwrap())));
    assert!(moved(None, Some(a)));
    assert!(!moved(Some(a), None));
}

/// A tracker and relay as a script: what the probe answers and what the relay reflects.
struct Scripted {
    answer: Result<ReachabilityResponse, StatusCode>,
    reflected: Option<SocketAddr>,
    /// The (port, from_port) of each call, to check what was asked.
    asked: Mutex<Vec<(&'static str, u16, u16)>>,
}

impl Scripted {
    fn new(inbound: bool, relay_port: Option<u16>, reflected: Option<&str>) -> Self {
        Scripted {
            answer: Ok(ReachabilityResponse {
                observed: "100.64.0.11:51000".parse().unwrap(),
                inbound,
                relay_port,
            }),
            reflected: reflected.map(|r| r.parse().unwrap()),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl ReachProbe for Scripted {
    fn reachability(&self, port: u16) -> BoxFuture<'_, Result<ReachabilityResponse, ReachError>> {
        self.asked.lock().unwrap().push(("probe", port, 0));
        let answer = self.answer.map_err(|status| {
            ReachError::Tracker(TrackerError::Api {
                status,
                code: "not_found".into(),
                message: "no such route".into(),
            })
        });
        Box::pin(async move { answer })
    }

    fn reflect(
        &self,
        relay_port: u16,
        from_port: u16,
    ) -> BoxFuture<'_, Result<SocketAddr, ReachError>> {
        self.asked
            .lock()
            .unwrap()
            .push(("reflect", relay_port, from_port));
        let r = self
            .reflected
            .ok_or_else(|| ReachError::RelayAddress("relay.invalid".into()));
        Box::pin(async move { r })
    }
}

#[tokio::test]
async fn behind_a_port_preserving_nat_the_relay_sees_the_listening_port() {
    let probe = Scripted::new(false, Some(9000), Some("100.64.0.11:7000"));
    let learned = learn(&probe, 7000, 7000).await.unwrap();
    assert_eq!(
        learned.reach,
        Reach {
            inbound: false,
            mapping: NatMapping::PortPreserving
        }
    );
    assert_eq!(learned.public, "100.64.0.11:7000".parse().unwrap());
    assert_eq!(
        *probe.asked.lock().unwrap(),
        vec![("probe", 7000, 0), ("reflect", 9000, 7000)]
    );
}

#[tokio::test]
async fn behind_a_symmetric_nat_the_mapping_is_unpredictable() {
    let probe = Scripted::new(false, Some(9000), Some("100.64.0.11:40123"));
    let learned = learn(&probe, 7000, 7000).await.unwrap();
    assert_eq!(learned.reach.mapping, NatMapping::Unpredictable);
    assert_eq!(learned.public, "100.64.0.11:40123".parse().unwrap());
}

#[tokio::test]
async fn an_advertised_port_is_probed_and_the_listening_port_reflected() {
    // `--advertise` with a forwarded port 7000 to a listener on 6881: the claim is worth
    // `open` only because the probe reached it.
    let probe = Scripted::new(true, Some(9000), None);
    let learned = learn(&probe, 7000, 6881).await.unwrap();
    assert_eq!(learned.reach.mapping, NatMapping::Open);
    assert_eq!(learned.public, "100.64.0.11:7000".parse().unwrap());
    // And a claim the probe does not back is not open.
    let probe = Scripted::new(false, Some(9000), Some("100.64.0.11:6881"));
    let learned = learn(&probe, 7000, 6881).await.unwrap();
    assert_eq!(learned.reach.mapping, NatMapping::PortPreserving);
    assert_eq!(probe.asked.lock().unwrap()[0], ("probe", 7000, 0));
}

#[tokio::test]
async fn without_a_relay_or_when_it_fails_the_mapping_is_unknown() {
    let probe = Scripted::new(false, None, None);
    let learned = learn(&probe, 7000, 7000).await.unwrap();
    assert_eq!(learned.reach.mapping, NatMapping::Unknown);
    assert_eq!(probe.asked.lock().unwrap().len(), 1, "no relay, no reflect");
    let probe = Scripted::new(false, Some(9000), None);
    let learned = learn(&probe, 7000, 7000).await.unwrap();
    assert_eq!(learned.reach.mapping, NatMapping::Unknown);
    assert!(!learned.reach.inbound);
}

#[tokio::test]
async fn a_tracker_without_the_probe_is_unsupported_not_a_failure() {
    let mut probe = Scripted::new(false, None, None);
    probe.answer = Err(StatusCode::NOT_FOUND);
    let e = learn(&probe, 7000, 7000).await.unwrap_err();
    assert!(e.is_unsupported(), "{e}");
    probe.answer = Err(StatusCode::BAD_GATEWAY);
    let e = learn(&probe, 7000, 7000).await.unwrap_err();
    assert!(!e.is_unsupported(), "{e}");
}

/// A swarm nobody is in: these tests only look at what the seeder announces.
struct Nobody;

impl crate::torrent::SwarmDirectory for Nobody {
    fn members<'a>(
        &'a self,
        _id: &'a torrentguard_protocol::FileId,
    ) -> BoxFuture<
        'a,
        Result<Vec<torrentguard_protocol::Fingerprint>, crate::torrent::SwarmLookupError>,
    > {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A seeder on loopback, serving one small file, and that file.
async fn seeder_with_a_file(
    dir: &std::path::Path,
    cancel: CancellationToken,
) -> (Arc<Seeder>, Arc<crate::torrent::SharedFile>) {
    use torrentguard_protocol::HashAlgo;
    use torrentguard_protocol::hashing::manifest_from_reader;
    let path = dir.join("f.bin");
    let data = vec![5u8; 40_000];
    std::fs::write(&path, &data).unwrap();
    let m = manifest_from_reader("f.bin", &data[..], 16 * 1024, HashAlgo::Sha256, |_| {}).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let shared = crate::torrent::SharedFile::complete(Arc::new(m), path, file).unwrap();
    let id = torrentguard_trust::Identity::generate("s").unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let seeder = Seeder::start(listen, &id, Arc::new(Nobody), cancel)
        .await
        .unwrap();
    seeder.add(shared.clone());
    (seeder, shared)
}

#[tokio::test]
async fn what_is_learned_is_announced_and_said_once_and_a_failure_keeps_it() {
    use torrentguard_protocol::api::AnnounceEvent;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let (seeder, file) = seeder_with_a_file(dir.path(), cancel.clone()).await;
    let announced = |s: &Seeder| crate::session::announce_request(s, &file, AnnounceEvent::Started);
    assert_eq!(
        announced(&seeder).reach,
        None,
        "nothing said before it is known"
    );
    let port = seeder.local_addr().port();
    let reflected = format!("100.64.0.11:{port}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (_observed_tx, observed) = watch::channel(None);
    let mut learner = ReachLearner {
        probe: Arc::new(Scripted::new(false, Some(9000), Some(&reflected))),
        seeder: seeder.clone(),
        observed,
        events: EventSink::new(tx),
        cancel: cancel.clone(),
    };
    let Attempt::Learned(first) = learner.learn_once(None).await else {
        panic!("nothing learned");
    };
    let want = Reach {
        inbound: false,
        mapping: NatMapping::PortPreserving,
    };
    assert_eq!(seeder.reach(), Some(want));
    assert_eq!(announced(&seeder).reach, Some(want));
    let Ok(Event::Reach {
        inbound,
        public,
        mapping,
    }) = rx.try_recv()
    else {
        panic!("no reach event");
    };
    assert_eq!(
        (inbound, public.to_string(), mapping),
        (false, reflected, want.mapping)
    );
    // Learned again, unchanged: nothing more to say.
    learner.learn_once(Some(first)).await;
    assert!(rx.try_recv().is_err());
    // A passing failure keeps what was known.
    let mut failing = Scripted::new(false, None, None);
    failing.answer = Err(reqwest::StatusCode::BAD_GATEWAY);
    learner.probe = Arc::new(failing);
    assert_eq!(learner.learn_once(Some(first)).await, Attempt::Failed);
    assert_eq!(seeder.reach(), Some(want));
    seeder.shutdown().await;
}
