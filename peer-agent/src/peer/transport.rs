//! What a peer connection's TLS runs over: a TCP stream of our own (dialled, accepted or
//! punched), or a session through a tracker's relay, itself TLS to the relay. The peers' own
//! mutual TLS runs inside either one unchanged, so the relay sees only ciphertext.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The byte stream under a peer's TLS. An enum rather than a trait object: each read and write
/// is a match, not a boxed call, on the path every chunk takes.
#[derive(Debug)]
pub enum Transport {
    /// A TCP connection straight to the peer.
    Tcp(TcpStream),
    /// A relayed session: TLS to the relay, which copies bytes to and from the peer.
    Relayed(Box<TlsStream<TcpStream>>),
}

/// How a connection reaches the peer, for events and logs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Dialled or accepted on the peer's listening address.
    #[default]
    Direct,
    /// A TCP hole punch: both sides dialled each other at once.
    Punched,
    /// Through the tracker's relay.
    Relayed,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Transport {
    /// Disables Nagle on the TCP socket we write to (ours, or the one to the relay): frames
    /// are written whole and flushed, and a request must not wait for an ack.
    pub fn set_nodelay(&self) {
        let tcp = match self {
            Transport::Tcp(t) => t,
            Transport::Relayed(t) => t.get_ref().0,
        };
        let _ = tcp.set_nodelay(true);
    }

    pub fn is_relayed(&self) -> bool {
        matches!(self, Transport::Relayed(_))
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Transport::Relayed(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Transport::Relayed(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Transport::Relayed(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(t) => t.is_write_vectored(),
            Transport::Relayed(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(t).poll_flush(cx),
            Transport::Relayed(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Transport::Relayed(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_tcp_transport_carries_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut t = Transport::Tcp(TcpStream::connect(addr).await.unwrap());
        t.set_nodelay();
        assert!(!t.is_relayed());
        t.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        t.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        echo.await.unwrap();
    }

    #[test]
    fn paths_are_named_as_the_events_say() {
        let names: Vec<_> = [Path::Direct, Path::Punched, Path::Relayed]
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        assert_eq!(names, ["\"direct\"", "\"punched\"", "\"relayed\""]);
    }
}
