//! The ladder's order against a fake rendezvous and real loopback peers: a direct dial that is
//! refused falls back to a punch, a punch that fails to the relay, and a peer that says it
//! takes no inbound connection is not dialled directly.

use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use torrentguard_trust::config::peer_server_config;

use super::*;
use crate::peer::punch::reusable_socket;
use crate::peer::relay_client::testing::relay;

const FILE: FileId = FileId([5; 32]);
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

fn id(name: &str) -> Identity {
    Identity::generate(name).unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind(SocketAddr::from((LOOPBACK, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The peer's listener: TLS server as `peer` for every connection, kept open.
async fn peer_listener(peer: &Identity) -> SocketAddr {
    let socket = reusable_socket(SocketAddr::from((LOOPBACK, 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener: TcpListener = socket.listen(16).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(peer_server_config(peer).unwrap()));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, from)) = listener.accept().await {
            let deadline = Instant::now() + Duration::from_secs(10);
            let t = Transport::Tcp(tcp);
            if let Ok(c) = PeerConnection::accept(&acceptor, t, from, deadline).await {
                held.push(c);
            }
        }
    });
    addr
}

/// Introduces to a punch endpoint and/or through a relay, where the peer joins and serves TLS.
struct FakeRendezvous {
    punch_to: Option<SocketAddr>,
    relay: Option<(RelayTarget, Arc<Identity>)>,
    peer: Fingerprint,
    asked: Mutex<Vec<IntroVia>>,
}

impl FakeRendezvous {
    fn intro(&self, via: IntroVia, to: SocketAddr, relay_port: Option<u16>) -> Introduction {
        Introduction {
            token: "ab".repeat(32),
            file_id: FILE,
            peer: self.peer,
            address: to.ip(),
            port: to.port(),
            via,
            start_in_ms: 0,
            relay_port,
        }
    }
}

impl Rendezvous for FakeRendezvous {
    fn introduce<'a>(
        &'a self,
        file: FileId,
        peer: Fingerprint,
        via: IntroVia,
    ) -> BoxFuture<'a, Result<Introduced, RendezvousError>> {
        assert_eq!((file, peer), (FILE, self.peer));
        self.asked.lock().unwrap().push(via);
        let refused = || RendezvousError::Refused {
            message: "not offered".into(),
        };
        let answer = match (via, self.punch_to, &self.relay) {
            (IntroVia::Punch, Some(to), _) => Ok(Introduced {
                intro: self.intro(via, to, None),
                relay: None,
            }),
            (IntroVia::Relay, _, Some((target, seeder))) => {
                let (target, seeder) = (*target, seeder.clone());
                // The other side answers the introduction: joins, then serves TLS.
                tokio::spawn(async move {
                    let t = crate::peer::relay_client::join(&seeder, &target, [0xab; 32])
                        .await
                        .unwrap();
                    let acceptor =
                        TlsAcceptor::from(Arc::new(peer_server_config(&seeder).unwrap()));
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let conn = PeerConnection::accept(&acceptor, t, target.addr, deadline).await;
                    let conn = conn.unwrap();
                    assert_eq!(conn.negotiated.path, Path::Relayed);
                    // Held until the downloader is done with it.
                    let mut conn = conn;
                    let pool = crate::peer::BufferPool::new(64);
                    let _ = conn
                        .recv_hello(&pool, Instant::now() + Duration::from_secs(30))
                        .await;
                });
                Ok(Introduced {
                    intro: self.intro(via, target.addr, Some(target.addr.port())),
                    relay: Some(target),
                })
            }
            _ => Err(refused()),
        };
        Box::pin(async move { answer })
    }
}

fn context(me: &Identity, rendezvous: Option<Arc<dyn Rendezvous>>) -> DialContext {
    DialContext {
        identity: Arc::new(me.clone()),
        rendezvous,
        listen_port: closed_port().port(),
        punches: PendingPunches::new(),
        own_reach: None,
    }
}

fn target(peer: &Identity, addr: SocketAddr, reach: Option<Reach>) -> DialTarget {
    DialTarget {
        file: FILE,
        fingerprint: peer.fingerprint,
        addr,
        reach,
        avoid_relay: false,
    }
}

/// A reset from the listed address means nothing listens there and no NAT is in the way: the
/// ladder ends with that error, and no introduction is asked for.
#[tokio::test]
async fn a_refused_direct_dial_ends_the_ladder() {
    let (me, peer) = (id("me"), id("peer"));
    let public = peer_listener(&peer).await;
    let rendezvous = Arc::new(FakeRendezvous {
        punch_to: Some(public),
        relay: None,
        peer: peer.fingerprint,
        asked: Mutex::new(Vec::new()),
    });
    let ctx = context(&me, Some(rendezvous.clone()));
    let Err(e) = dial(&ctx, &target(&peer, closed_port(), None)).await else {
        panic!("a refused address was dialled through");
    };
    assert!(matches!(e, PeerError::Connect { .. }), "{e}");
    assert!(rendezvous.asked.lock().unwrap().is_empty());
}

/// A peer that takes no inbound connection is not dialled directly: it is punched.
#[tokio::test]
async fn a_peer_without_inbound_is_reached_by_a_punch() {
    let (me, peer) = (id("me"), id("peer"));
    let public = peer_listener(&peer).await;
    let rendezvous = Arc::new(FakeRendezvous {
        punch_to: Some(public),
        relay: None,
        peer: peer.fingerprint,
        asked: Mutex::new(Vec::new()),
    });
    let ctx = context(&me, Some(rendezvous.clone()));
    let reach = Reach {
        inbound: false,
        mapping: NatMapping::PortPreserving,
    };
    let d = dial(&ctx, &target(&peer, closed_port(), Some(reach)))
        .await
        .unwrap();
    assert_eq!(d.path, Path::Punched);
    assert_eq!(d.conn.negotiated.path, Path::Punched);
    assert_eq!(d.conn.fingerprint, peer.fingerprint);
    assert!(d.tries >= 1);
    assert_eq!(*rendezvous.asked.lock().unwrap(), [IntroVia::Punch]);
}

/// The peer says it takes no inbound connection: its (working) address is not dialled; the
/// punch fails, and the relay carries the peers' own TLS, pinned as always.
#[tokio::test]
async fn a_failed_punch_falls_back_to_the_relay_and_no_inbound_skips_direct() {
    let (me, peer, tracker) = (id("me"), id("peer"), id("tracker"));
    let listed = peer_listener(&peer).await;
    let relay_target = relay(tracker, None).await;
    let rendezvous = Arc::new(FakeRendezvous {
        punch_to: Some(closed_port()),
        relay: Some((relay_target, Arc::new(peer.clone()))),
        peer: peer.fingerprint,
        asked: Mutex::new(Vec::new()),
    });
    let ctx = context(&me, Some(rendezvous.clone()));
    let reach = Reach {
        inbound: false,
        mapping: NatMapping::PortPreserving,
    };
    let d = dial(&ctx, &target(&peer, listed, Some(reach)))
        .await
        .unwrap();
    assert_eq!((d.path, d.tries), (Path::Relayed, 1));
    assert_eq!(d.conn.fingerprint, peer.fingerprint);
    assert_eq!(
        *rendezvous.asked.lock().unwrap(),
        [IntroVia::Punch, IntroVia::Relay]
    );
}

/// Every rung failing: the refused dial is told, not the introductions the tracker would not
/// make after it; nobody's fault.
#[tokio::test]
async fn when_no_rung_works_the_error_is_the_networks() {
    let (me, peer) = (id("me"), id("peer"));
    let rendezvous = Arc::new(FakeRendezvous {
        punch_to: None,
        relay: None,
        peer: peer.fingerprint,
        asked: Mutex::new(Vec::new()),
    });
    let ctx = context(&me, Some(rendezvous));
    let Err(e) = dial(&ctx, &target(&peer, closed_port(), None)).await else {
        panic!("reached a peer that is not there");
    };
    assert!(matches!(e, PeerError::Connect { .. }), "{e:?}");
    assert!(!e.is_peer_fault());
}

#[test]
fn the_ladder_skips_what_cannot_work() {
    let (me, peer) = (id("me"), id("peer"));
    let rendezvous: Arc<dyn Rendezvous> = Arc::new(FakeRendezvous {
        punch_to: None,
        relay: None,
        peer: peer.fingerprint,
        asked: Mutex::new(Vec::new()),
    });
    let reach = |inbound, mapping| Some(Reach { inbound, mapping });
    let addr = closed_port();
    let mut ctx = context(&me, None);
    // Without introductions: the address is all there is, whatever the peer says.
    let closed = target(&peer, addr, reach(false, NatMapping::Unpredictable));
    assert_eq!(ladder(&ctx, &closed), [Path::Direct]);
    ctx.rendezvous = Some(rendezvous);
    assert_eq!(
        ladder(&ctx, &target(&peer, addr, None)),
        [Path::Direct, Path::Punched, Path::Relayed]
    );
    assert_eq!(ladder(&ctx, &closed), [Path::Relayed]);
    // An open side lets the other's SYN in, whatever its NAT.
    ctx.own_reach = reach(true, NatMapping::Open);
    assert_eq!(ladder(&ctx, &closed), [Path::Punched, Path::Relayed]);
    ctx.own_reach = reach(false, NatMapping::Unpredictable);
    let predictable = target(&peer, addr, reach(false, NatMapping::PortPreserving));
    assert_eq!(ladder(&ctx, &predictable), [Path::Relayed]);
    let mut garbled = target(&peer, addr, reach(true, NatMapping::Open));
    garbled.avoid_relay = true;
    assert_eq!(ladder(&ctx, &garbled), [Path::Direct, Path::Punched]);
}

/// A relayed peer is tried again without the relay, and the path found is not the relay.
#[tokio::test]
async fn a_relayed_peer_is_upgraded_to_a_direct_path_when_one_works() {
    let (me, peer, tracker) = (id("me"), id("peer"), id("tracker"));
    let listed = peer_listener(&peer).await;
    let relay_target = relay(tracker, None).await;
    let rendezvous: Arc<dyn Rendezvous> = Arc::new(FakeRendezvous {
        punch_to: None,
        relay: Some((relay_target, Arc::new(peer.clone()))),
        peer: peer.fingerprint,
        asked: Mutex::new(Vec::new()),
    });
    let ctx = context(&me, Some(rendezvous));
    let t = target(&peer, listed, None);
    let d = upgrade(|| ctx.clone(), t, Duration::from_millis(10)).await;
    assert_eq!(d.path, Path::Direct);
    assert_eq!(d.conn.fingerprint, peer.fingerprint);
}

/// A relay that flips a byte of the peers' stream cannot pass it off: the inner TLS refuses
/// the record, and the download side turns that into a TLS error and stops using the relay for
/// that peer (`relay_tampering`).
#[tokio::test]
async fn a_relay_that_garbles_the_stream_is_a_tls_error() {
    use crate::peer::download::{PeerMemory, relay_tampering};
    use torrentguard_protocol::wire::Frame;
    let (me, peer, tracker) = (id("me"), id("peer"), id("tracker"));
    let target = crate::peer::relay_client::testing::relay_with(tracker, None, true).await;
    let (pin, server) = (peer.fingerprint, peer.clone());
    tokio::spawn(async move {
        let t = crate::peer::relay_client::join(&server, &target, [3; 32])
            .await
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(peer_server_config(&server).unwrap()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = PeerConnection::accept(&acceptor, t, target.addr, deadline)
            .await
            .unwrap();
        let chunk = Frame::Chunk {
            index: 0,
            data: vec![7u8; 200 * 1024].into(),
        };
        let _ = conn.writer.send_now(&chunk).await;
        let _ = conn
            .recv_hello(&crate::peer::BufferPool::new(64), deadline)
            .await;
    });
    let t = crate::peer::relay_client::join(&me, &target, [3; 32])
        .await
        .unwrap();
    let mut conn = PeerConnection::connect_over(&me, t, target.addr, pin, None)
        .await
        .unwrap();
    conn.reader.set_max_frame(1 << 20);
    let pool = crate::peer::BufferPool::new(300 * 1024);
    let e = PeerError::from(conn.reader.next(&pool).await.unwrap_err());
    let mut mem = PeerMemory {
        penalty: 0,
        rate: 0,
        avoid_relay: false,
        path: Some(Path::Relayed),
    };
    let info = torrentguard_protocol::api::PeerInfo {
        fingerprint: pin,
        address: target.addr.ip(),
        port: target.addr.port(),
        have: 0,
        complete: true,
        last_seen: 0,
        reputation: None,
        reach: None,
    };
    let e = relay_tampering(e, &info, &mut mem);
    assert!(matches!(e, PeerError::Tls { .. }), "{e:?}");
    assert!(mem.avoid_relay && !e.is_peer_fault());
}
