//! `torrentguard-tracker healthcheck`: asks a running tracker's `/healthz` over TLS, pinning its
//! fingerprint. Slim container images have no curl, and curl could not pin a fingerprint anyway.
//!
//! A deliberately small HTTP/1.1 client: one request, `Connection: close`, the answer read to
//! EOF under a size bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::api::Health;

use torrentguard_trust::Pin;
use torrentguard_trust::config::pinned_client_config;

/// Largest `/healthz` answer read.
const MAX_RESPONSE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("unexpected answer: {0}")]
    Response(String),
}

/// Fetches `https://addr/healthz` from the tracker with fingerprint `pin`, within `timeout`.
/// Succeeds only on a 200 whose body is a `Health` reporting "ok" with that fingerprint.
pub async fn probe(
    addr: SocketAddr,
    pin: Fingerprint,
    timeout: Duration,
) -> Result<Health, HealthcheckError> {
    tokio::time::timeout(timeout, probe_inner(addr, pin))
        .await
        .map_err(|_| HealthcheckError::Timeout(timeout))?
}

async fn probe_inner(addr: SocketAddr, pin: Fingerprint) -> Result<Health, HealthcheckError> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(pinned_client_config(Pin::Exact(pin), None)?));
    let tcp = TcpStream::connect(addr).await?;
    // The verifier ignores the name; an IP name avoids sending a made-up host name as SNI.
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    (&mut tls).take(MAX_RESPONSE).read_to_end(&mut raw).await?;
    parse_response(&raw, pin)
}

fn parse_response(raw: &[u8], pin: Fingerprint) -> Result<Health, HealthcheckError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HealthcheckError::Response("no HTTP header end".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(HealthcheckError::Response(format!(
            "{status_line}: {}",
            body.trim()
        )));
    }
    let health: Health = serde_json::from_str(body.trim())
        .map_err(|e| HealthcheckError::Response(format!("body: {e}")))?;
    if health.status != "ok" || health.fingerprint != pin {
        return Err(HealthcheckError::Response(format!(
            "status {:?}, fingerprint {}",
            health.status, health.fingerprint
        )));
    }
    Ok(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_a_healthy_answer() {
        let fp = Fingerprint::from_bytes([1; 32]);
        let body = format!(r#"{{"status":"ok","version":"0.1.0","fingerprint":"{fp}"}}"#);
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{body}");
        assert_eq!(parse_response(ok.as_bytes(), fp).unwrap().fingerprint, fp);
        let other = Fingerprint::from_bytes([2; 32]);
        assert!(parse_response(ok.as_bytes(), other).is_err());
        let down = "HTTP/1.1 503 Service Unavailable\r\n\r\n{}";
        assert!(parse_response(down.as_bytes(), fp).is_err());
        assert!(parse_response(b"garbage", fp).is_err());
    }
}
