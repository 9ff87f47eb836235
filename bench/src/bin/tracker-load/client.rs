//! One HTTP/1.1 keep-alive connection of one simulated peer: to the TorrentGuard tracker over
//! mutual TLS as that peer's certificate, or to opentracker in plain HTTP.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use torrentguard_protocol::{Bitfield, FileId, Fingerprint};
use torrentguard_trust::{Identity, Pin};

use crate::mix::Event;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request that takes longer counts as a transport error (the tracker's own bound is 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which tracker the load goes to.
#[derive(Debug, Clone)]
pub enum Tracker {
    TorrentGuard {
        fingerprint: Fingerprint,
        token: Option<String>,
    },
    OpenTracker,
}

/// What one simulated peer sends in one announce.
pub struct Announce<'a> {
    pub file: &'a FileId,
    pub event: Event,
    pub have: u32,
    pub chunks: u32,
    pub port: u16,
    /// The peer's id for opentracker (its fingerprint's first 20 bytes).
    pub peer_id: &'a [u8; 20],
}

pub type Sender = SendRequest<Full<Bytes>>;

/// The peer's rustls configuration: TLS 1.3 or 1.2 pinned to the tracker, presenting the
/// peer's certificate, HTTP/1.1 only (each simulated connection is one agent's keep-alive
/// connection; h2 would not change what the tracker does per announce).
pub fn tls_config(
    identity: &Identity,
    tracker: Fingerprint,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut cfg =
        torrentguard_trust::config::pinned_client_config(Pin::Exact(tracker), Some(identity))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Opens a connection from `source` (when the tracker is on loopback too) to `addr`.
pub async fn connect(
    addr: SocketAddr,
    source: IpAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Sender> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    if addr.ip().is_loopback() && source.is_ipv4() == addr.is_ipv4() {
        socket
            .bind(SocketAddr::new(source, 0))
            .context("binding the source address")?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    match tls {
        None => handshake(stream).await,
        Some(cfg) => {
            let name = torrentguard_trust::config::peer_server_name();
            let tls = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_rustls::TlsConnector::from(cfg).connect(name, stream),
            )
            .await
            .context("TLS handshake timed out")??;
            handshake(tls).await
        }
    }
}

async fn handshake<S>(io: S) -> anyhow::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection's errors come back through the sender; nothing to do with them here.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A request's answer as the load tool judges it.
pub struct Answer {
    pub status: u16,
    /// opentracker answers refusals with 200 and a `failure reason`.
    pub refused: bool,
    /// The server will close the connection after this answer.
    pub closing: bool,
}

/// Sends `req` and reads the whole answer.
pub async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
    let exchange = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let closing = resp
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = resp.into_body().collect().await?.to_bytes();
        let refused = body.windows(14).any(|w| w == b"failure reason");
        anyhow::Ok(Answer {
            status,
            refused,
            closing,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .context("request timed out")?
}

/// The announce request for `tracker`.
pub fn announce_request(
    tracker: &Tracker,
    host: &str,
    a: &Announce<'_>,
) -> anyhow::Result<Request<Full<Bytes>>> {
    match tracker {
        Tracker::TorrentGuard { token, .. } => {
            let mut bits = Bitfield::new(a.chunks);
            (0..a.have).for_each(|i| bits.set(i));
            let body = serde_json::json!({
                "file_id": a.file.to_string(),
                "port": a.port,
                "event": a.event.as_str(),
                "bitfield": bits.to_base64(),
            });
            post_json(
                host,
                "/api/v1/announce",
                token.as_deref(),
                serde_json::to_vec(&body)?,
            )
        }
        Tracker::OpenTracker => Ok(Request::get(opentracker_path(a))
            .header(HOST, host)
            .body(Full::new(Bytes::new()))?),
    }
}

/// The BitTorrent announce of the same state: the file id's first 20 bytes stand for the info
/// hash (what the whitelist lists), `left` is what the peer still lacks; a re-announce has no
/// event.
pub fn opentracker_path(a: &Announce<'_>) -> String {
    let left = u64::from(a.chunks - a.have.min(a.chunks)) * u64::from(crate::fleet::CHUNK_SIZE);
    let mut path = String::with_capacity(256);
    path.push_str("/announce?info_hash=");
    percent_encode(&mut path, &a.file.as_bytes()[..20]);
    path.push_str("&peer_id=");
    percent_encode(&mut path, a.peer_id);
    let _ = write!(
        path,
        "&port={}&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50",
        a.port
    );
    let event = match a.event {
        Event::Progress => None,
        e => Some(e.as_str()),
    };
    if let Some(e) = event {
        let _ = write!(path, "&event={e}");
    }
    path
}

fn percent_encode(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "%{b:02X}");
    }
}

pub fn post_json(
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    Ok(req.body(Full::new(Bytes::from(body)))?)
}

/// `https://HOST:PORT` or `http://HOST:PORT/...` as a socket address (numeric hosts only: the
/// bench runs against addresses it started).
pub fn parse_target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.parse() {
        Ok(addr) => Ok(addr),
        Err(_) => bail!("{url}: expected http(s)://IP:PORT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opentracker_announces_carry_the_state() {
        let file = FileId([0xab; 32]);
        let a = Announce {
            file: &file,
            event: Event::Progress,
            have: 16,
            chunks: 64,
            port: 7000,
            peer_id: &[b'-'; 20],
        };
        let path = opentracker_path(&a);
        assert!(path.starts_with(&format!(
            "/announce?info_hash={}&peer_id=",
            "%AB".repeat(20)
        )));
        assert!(path.contains(&format!("&left={}", 48 * 256 * 1024)));
        assert!(!path.contains("event="), "a re-announce has no event");
        let done = Announce {
            event: Event::Completed,
            have: 64,
            ..a
        };
        let path = opentracker_path(&done);
        assert!(path.contains("&left=0&") && path.ends_with("&event=completed"));
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("https://127.0.0.1:8443").unwrap(),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            parse_target("http://127.0.0.1:6969/announce").unwrap(),
            "127.0.0.1:6969".parse().unwrap()
        );
        assert!(parse_target("https://tracker.example:1").is_err());
    }
}
