//! Helpers for the NAT traversal tests (issue 15): a file with a live seeder, introductions,
//! relay clients built from the workspace's `trust` configurations, and peer listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use torrentguard_protocol::api::{Introduction, RegisterResponse};
use torrentguard_protocol::relay::{RelayAnswer, RelayRequest, token_bytes};
use torrentguard_protocol::{Bitfield, Manifest};
use torrentguard_trust::Identity;
use torrentguard_trust::config::{peer_client_config, peer_server_name};

use super::{Harness, expect_json, manifest_for};

/// Registers a small file (as `seeder`) and announces `seeder` complete on `port`.
pub async fn file_with_seeder(h: &Harness, seeder: &Identity, port: u16) -> Result<Manifest> {
    let m = manifest_for("nat.bin", &vec![7u8; 40_000]);
    let client = h.as_peer(seeder);
    // 201 the first time, 200 when the file is already registered.
    let resp = client.post(h.api("/files")).json(&m).send().await?;
    let status = resp.status().as_u16();
    let _: RegisterResponse = expect_json(resp, if status == 200 { 200 } else { 201 }).await?;
    announce(h, seeder, &m, port, true).await?;
    Ok(m)
}

/// Announces `who` for `m` on `port`, holding everything or nothing.
pub async fn announce(
    h: &Harness,
    who: &Identity,
    m: &Manifest,
    port: u16,
    complete: bool,
) -> Result<serde_json::Value> {
    announce_body(h, who, announce_json(m, port, complete)).await
}

pub fn announce_json(m: &Manifest, port: u16, complete: bool) -> serde_json::Value {
    let mut b = Bitfield::new(m.chunk_count());
    if complete {
        for i in 0..m.chunk_count() {
            b.set(i);
        }
    }
    json!({
        "file_id": m.file_id(),
        "port": port,
        "event": if complete { "completed" } else { "started" },
        "bitfield": b.to_base64(),
    })
}

pub async fn announce_body(
    h: &Harness,
    who: &Identity,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    expect_json(
        h.as_peer(who)
            .post(h.api("/announce"))
            .json(&body)
            .send()
            .await?,
        200,
    )
    .await
}

/// `asker` asks to meet `peer` of `m` via `via` ("punch" or "relay"), from `port`.
pub async fn introduce(
    h: &Harness,
    asker: &Identity,
    m: &Manifest,
    peer: &Identity,
    port: u16,
    via: &str,
) -> Result<Introduction> {
    let body = json!({"file_id": m.file_id(), "peer": peer.fingerprint, "port": port, "via": via});
    let resp = h
        .as_peer(asker)
        .post(h.api("/introductions"))
        .json(&body)
        .send()
        .await?;
    expect_json(resp, 201).await
}

/// A TLS connection to the relay at `relay` as `identity`, pinning the tracker.
pub async fn relay_connect(
    relay: SocketAddr,
    identity: &Identity,
    tracker: torrentguard_protocol::Fingerprint,
) -> Result<TlsStream<TcpStream>> {
    let config = peer_client_config(identity, tracker)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(relay).await?;
    Ok(connector.connect(peer_server_name(), tcp).await?)
}

/// Sends `request` and reads the answer.
pub async fn relay_ask(
    stream: &mut TlsStream<TcpStream>,
    request: RelayRequest,
) -> Result<RelayAnswer> {
    stream.write_all(&request.encode()).await?;
    stream.flush().await?;
    let reflect = request == RelayRequest::Reflect;
    let mut buf = Vec::new();
    loop {
        if let Some((answer, _)) = RelayAnswer::decode(&buf, reflect)? {
            return Ok(answer);
        }
        let mut byte = [0u8; 1];
        // One byte at a time: nothing after the answer may be consumed here.
        if stream
            .read(&mut byte)
            .await
            .context("reading the relay's answer")?
            == 0
        {
            bail!("the relay closed before answering");
        }
        buf.push(byte[0]);
    }
}

/// Connects as `identity` and joins the introduction's session.
pub async fn relay_join(
    relay: SocketAddr,
    identity: &Identity,
    tracker: torrentguard_protocol::Fingerprint,
    token: &str,
) -> Result<(TlsStream<TcpStream>, RelayAnswer)> {
    let mut s = relay_connect(relay, identity, tracker).await?;
    let token = token_bytes(token).context("the token is 64 hex characters")?;
    let answer = relay_ask(&mut s, RelayRequest::Join { token }).await?;
    Ok((s, answer))
}
