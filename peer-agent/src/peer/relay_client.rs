//! The agent's side of a tracker's relay: TLS to the relay (pinned to the tracker's identity,
//! with our certificate), then the relay handshake of `protocol::relay`. `reflect` asks which
//! address and port the relay sees us at (how our NAT maps a port); `join` pairs us with the
//! other side of an introduction and returns the relayed stream, over which the two peers then
//! run their own mutual TLS as on a direct connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::relay::{
    MAX_MESSAGE, RelayAnswer, RelayRequest, RelayStatus, RelayWireError,
};
use torrentguard_trust::Identity;
use torrentguard_trust::config::{peer_client_config, peer_server_name};

use super::connection::CONNECT_TIMEOUT;
use super::error::PeerError;
use super::punch::reusable_socket;
use super::transport::Transport;

/// How long the relay may take to pair us: it waits up to ~15 s for the other side.
pub const JOIN_WAIT: Duration = Duration::from_secs(20);
/// Bound on the answer to a `Reflect`, which the relay gives at once.
const REFLECT_WAIT: Duration = Duration::from_secs(10);

/// A tracker's relay: where it listens and the tracker identity it must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayTarget {
    pub addr: SocketAddr,
    pub pin: Fingerprint,
}

/// Why the relay did not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay said no (unknown token, over a limit, the other side never came...).
    #[error("relay {addr} refused ({status:?}): {message}")]
    Refused {
        addr: SocketAddr,
        status: RelayStatus,
        message: String,
    },
    /// The relay's answer does not parse.
    #[error("relay {addr} answered garbage: {source}")]
    Wire {
        addr: SocketAddr,
        #[source]
        source: RelayWireError,
    },
    /// A `Reflect` answered `Ok` without the address.
    #[error("relay {addr} did not say which address it sees")]
    NoAddress { addr: SocketAddr },
}

impl RelayError {
    /// The relay's verdict, when it gave one.
    pub fn status(&self) -> Option<RelayStatus> {
        match self {
            RelayError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The address and port the relay sees us connect from, from our local port `from_port` (the
/// listening port, to learn how the NAT maps it), or any port.
pub async fn reflect(
    identity: &Identity,
    relay: &RelayTarget,
    from_port: Option<u16>,
) -> Result<SocketAddr, PeerError> {
    let local = from_port.map(|port| SocketAddr::new(unspecified_like(relay.addr.ip()), port));
    reflect_from(identity, relay, local).await
}

/// As [`reflect`], from the bound address `local` if given.
pub async fn reflect_from(
    identity: &Identity,
    relay: &RelayTarget,
    local: Option<SocketAddr>,
) -> Result<SocketAddr, PeerError> {
    let mut tls = open(identity, relay, local).await?;
    let answer = exchange(&mut tls, relay, RelayRequest::Reflect, REFLECT_WAIT).await?;
    // Done with it; the relay needs no goodbye, but a clean close costs little.
    let _ = tokio::time::timeout(Duration::from_millis(200), tls.shutdown()).await;
    answer
        .observed
        .ok_or(PeerError::Relay(RelayError::NoAddress { addr: relay.addr }))
}

/// Joins the relay session of an introduction by its `token`; once the other side is there
/// too, the stream carries the two peers' own TLS.
pub async fn join(
    identity: &Identity,
    relay: &RelayTarget,
    token: [u8; 32],
) -> Result<Transport, PeerError> {
    let mut tls = open(identity, relay, None).await?;
    exchange(&mut tls, relay, RelayRequest::Join { token }, JOIN_WAIT).await?;
    Ok(Transport::Relayed(Box::new(tls)))
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    if ip.to_canonical().is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    }
}

/// TCP (from `local` if given) and TLS to the relay, which must present the tracker's pin.
async fn open(
    identity: &Identity,
    relay: &RelayTarget,
    local: Option<SocketAddr>,
) -> Result<TlsStream<TcpStream>, PeerError> {
    let addr = relay.addr;
    let connect = async {
        match local {
            Some(local) => reusable_socket(local)?.connect(addr).await,
            None => TcpStream::connect(addr).await,
        }
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| PeerError::Timeout {
            step: format!("connecting to the relay at {addr}"),
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|source| PeerError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let config = peer_client_config(identity, relay.pin).map_err(|e| PeerError::Tls {
        addr,
        source: std::io::Error::other(e),
    })?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(peer_server_name(), tcp);
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| PeerError::Timeout {
            step: format!("TLS handshake with the relay at {addr}"),
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|source| PeerError::Tls { addr, source })
}

/// Sends `request` and reads the answer within `wait`; anything but `Ok` is an error.
async fn exchange(
    tls: &mut TlsStream<TcpStream>,
    relay: &RelayTarget,
    request: RelayRequest,
    wait: Duration,
) -> Result<RelayAnswer, PeerError> {
    let addr = relay.addr;
    tls.write_all(&request.encode()).await?;
    tls.flush().await?;
    let reflect = request == RelayRequest::Reflect;
    let answer = tokio::time::timeout(wait, read_answer(tls, reflect))
        .await
        .map_err(|_| PeerError::Timeout {
            step: format!("waiting for the relay at {addr}"),
            after: wait,
        })?
        .map_err(|e| match e {
            AnswerError::Io(e) => PeerError::Io(e),
            AnswerError::Wire(source) => PeerError::Relay(RelayError::Wire { addr, source }),
        })?;
    if answer.status != RelayStatus::Ok {
        return Err(PeerError::Relay(RelayError::Refused {
            addr,
            status: answer.status,
            message: answer.message,
        }));
    }
    Ok(answer)
}

enum AnswerError {
    Io(std::io::Error),
    Wire(RelayWireError),
}

/// Reads exactly one answer: after a `Join`, the next byte is the other peer's, so nothing
/// past the answer may be taken from the stream.
async fn read_answer(
    tls: &mut TlsStream<TcpStream>,
    reflect: bool,
) -> Result<RelayAnswer, AnswerError> {
    let mut bytes = vec![0u8; 3];
    tls.read_exact(&mut bytes).await.map_err(AnswerError::Io)?;
    let n = u16::from_be_bytes([bytes[1], bytes[2]]) as usize;
    if n > MAX_MESSAGE {
        return Err(AnswerError::Wire(RelayWireError::BadMessage));
    }
    loop {
        match RelayAnswer::decode(&bytes, reflect).map_err(AnswerError::Wire)? {
            Some((answer, _)) => return Ok(answer),
            None => {
                // Ask for the least that can complete it: the message, then the family byte,
                // then the address it announces.
                let want = missing(&bytes, n, reflect);
                let start = bytes.len();
                bytes.resize(start + want, 0);
                tls.read_exact(&mut bytes[start..])
                    .await
                    .map_err(AnswerError::Io)?;
            }
        }
    }
}

/// Bytes still needed by a partial answer `bytes` whose message is `n` bytes long.
fn missing(bytes: &[u8], n: usize, reflect: bool) -> usize {
    let head = 3 + n;
    if bytes.len() < head {
        return head - bytes.len();
    }
    debug_assert!(reflect, "a Join answer is complete after its message");
    match bytes.get(head) {
        None => 1,
        // The family byte is there: its address (4 or 16 bytes; anything else fails to
        // decode before we get here) and the port.
        Some(&4) => head + 1 + 4 + 2 - bytes.len(),
        Some(_) => head + 1 + 16 + 2 - bytes.len(),
    }
}

/// A relay for tests of this module and the dial ladder's.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use torrentguard_protocol::relay::JOIN_LEN;
    use torrentguard_trust::config::peer_server_config;

    /// A small relay on loopback, as the tracker's behaves: TLS with the tracker's identity,
    /// the handshake, `Reflect` answered at once, two `Join`s of one token paired and then
    /// copied both ways; `refuse` answers every `Join` with that status instead.
    pub(crate) async fn relay(tracker: Identity, refuse: Option<RelayStatus>) -> RelayTarget {
        relay_with(tracker, refuse, false).await
    }

    /// Copies `from` to `to`, flipping the byte at 64 KiB.
    async fn garble(
        mut from: impl tokio::io::AsyncRead + Unpin,
        mut to: impl tokio::io::AsyncWrite + Unpin,
    ) {
        let (mut seen, mut buf) = (0usize, vec![0u8; 16 * 1024]);
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                return;
            }
            let at = 64 * 1024;
            if (seen..seen + n).contains(&at) {
                buf[at - seen] ^= 0x01;
            }
            seen += n;
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// As [`relay`]; `tamper` flips one byte of each direction after its first 64 KiB, as the
    /// tracker's `--relay-tamper-for-tests` does.
    pub(crate) async fn relay_with(
        tracker: Identity,
        refuse: Option<RelayStatus>,
        tamper: bool,
    ) -> RelayTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pin = tracker.fingerprint;
        let acceptor = TlsAcceptor::from(Arc::new(peer_server_config(&tracker).unwrap()));
        let waiting = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        tokio::spawn(async move {
            loop {
                let (tcp, from) = listener.accept().await.unwrap();
                let (acceptor, waiting) = (acceptor.clone(), waiting.clone());
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut head = [0u8; 6];
                    tls.read_exact(&mut head).await.unwrap();
                    let mut req = head.to_vec();
                    req.resize(6 + RelayRequest::body_len(&head).unwrap(), 0);
                    tls.read_exact(&mut req[6..]).await.unwrap();
                    assert!(req.len() <= JOIN_LEN);
                    let answer = |status, observed| RelayAnswer {
                        status,
                        message: format!("{status:?}"),
                        observed,
                    };
                    match RelayRequest::decode(&req).unwrap() {
                        RelayRequest::Reflect => {
                            let a = answer(RelayStatus::Ok, Some(from));
                            tls.write_all(&a.encode()).await.unwrap();
                        }
                        RelayRequest::Join { .. } if refuse.is_some() => {
                            let a = answer(refuse.unwrap(), None);
                            tls.write_all(&a.encode()).await.unwrap();
                        }
                        RelayRequest::Join { token } => {
                            let mut w = waiting.lock().await;
                            let other = w.iter().position(|(t, _)| *t == token);
                            let Some(i) = other else {
                                w.push((token, tls));
                                return;
                            };
                            let (_, mut first) = w.remove(i);
                            drop(w);
                            let ok = answer(RelayStatus::Ok, None).encode();
                            first.write_all(&ok).await.unwrap();
                            tls.write_all(&ok).await.unwrap();
                            if !tamper {
                                let _ = tokio::io::copy_bidirectional(&mut first, &mut tls).await;
                                return;
                            }
                            let (r1, w1) = tokio::io::split(first);
                            let (r2, w2) = tokio::io::split(tls);
                            tokio::join!(garble(r1, w2), garble(r2, w1));
                        }
                    }
                });
            }
        });
        RelayTarget { addr, pin }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::relay;
    use super::*;

    fn id(name: &str) -> Identity {
        Identity::generate(name).unwrap()
    }

    #[tokio::test]
    async fn reflect_says_where_the_relay_sees_us_from_our_port() {
        let tracker = id("tracker");
        let me = id("me");
        let target = relay(tracker, None).await;
        let seen = reflect(&me, &target, None).await.unwrap();
        assert!(seen.ip().is_loopback());
        // From a given local port: the relay sees that port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        let seen = reflect_from(&me, &target, Some(local)).await.unwrap();
        assert_eq!(seen, local);
    }

    #[tokio::test]
    async fn a_relay_that_is_not_the_tracker_is_refused() {
        let (tracker, impostor, me) = (id("tracker"), id("impostor"), id("me"));
        let mut target = relay(impostor, None).await;
        target.pin = tracker.fingerprint;
        let e = reflect(&me, &target, None).await.unwrap_err();
        assert!(matches!(e, PeerError::Tls { .. }), "{e:?}");
    }

    /// Two joins of one token are paired, and each side's bytes reach the other: the stream
    /// the peers' TLS will run over.
    #[tokio::test]
    async fn two_joins_of_one_token_are_joined_end_to_end() {
        let tracker = id("tracker");
        let (a, b) = (id("a"), id("b"));
        let target = relay(tracker, None).await;
        let (ra, rb) = tokio::join!(join(&a, &target, [9; 32]), join(&b, &target, [9; 32]));
        let (mut ta, mut tb) = (ra.unwrap(), rb.unwrap());
        assert!(ta.is_relayed() && tb.is_relayed());
        ta.write_all(b"from a").await.unwrap();
        ta.flush().await.unwrap();
        tb.write_all(b"from b").await.unwrap();
        tb.flush().await.unwrap();
        let (mut x, mut y) = ([0u8; 6], [0u8; 6]);
        tb.read_exact(&mut x).await.unwrap();
        ta.read_exact(&mut y).await.unwrap();
        assert_eq!((&x, &y), (b"from a", b"from b"));
    }

    /// The relay's refusal comes back typed, with its message.
    #[tokio::test]
    async fn a_refused_join_carries_the_relays_verdict() {
        let target = relay(id("tracker"), Some(RelayStatus::OverLimit)).await;
        let e = join(&id("me"), &target, [1; 32]).await.unwrap_err();
        let PeerError::Relay(r) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(r.status(), Some(RelayStatus::OverLimit));
        assert!(e.to_string().contains("OverLimit"), "{e}");
        assert!(!e.is_peer_fault());
    }

    #[test]
    fn partial_answers_ask_for_what_they_lack() {
        assert_eq!(missing(&[0, 0, 2], 2, false), 2);
        assert_eq!(missing(&[0, 0, 0], 0, true), 1);
        assert_eq!(missing(&[0, 0, 0, 4], 0, true), 6);
        assert_eq!(missing(&[0, 0, 0, 6], 0, true), 18);
    }
}
