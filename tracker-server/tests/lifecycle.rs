//! The tracker over time: peer expiry, restarts, graceful shutdown, and the binary itself.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use torrentguard_protocol::api::{AnnounceResponse, FilePeers, Health, Page, PeerSummary};
use torrentguard_protocol::{Bitfield, Fingerprint, Manifest};
use torrentguard_trust::Identity;

fn full_announce(m: &Manifest, port: u16) -> serde_json::Value {
    json!({
        "file_id": m.file_id(),
        "port": port,
        "event": "completed",
        "bitfield": Bitfield::full(m.chunk_count()).to_base64(),
    })
}

for_each_store!(silent_peers_expire_after_the_ttl);
async fn silent_peers_expire_after_the_ttl(backend: Backend) -> Result<()> {
    within(async {
        let h = Harness::start_on(&backend, |c| {
            c.peer_ttl = Duration::from_secs(1);
            c.announce_interval = Duration::from_secs(1);
        })
        .await?;
        let alice = h.as_peer(&h.alice);
        let m = manifest_for("ttl.bin", &[9u8; 20_000]);
        expect_json::<serde_json::Value>(alice.post(h.api("/files")).json(&m).send().await?, 201)
            .await?;
        expect_json::<AnnounceResponse>(
            alice
                .post(h.api("/announce"))
                .json(&full_announce(&m, 4000))
                .send()
                .await?,
            200,
        )
        .await?;
        let peers_url = h.api(&format!("/files/{}/peers", m.file_id()));
        let listed: FilePeers = expect_json(h.anonymous.get(&peers_url).send().await?, 200).await?;
        ensure!(listed.peers.len() == 1);

        eventually(Duration::from_secs(15), "peer expiry", || async {
            let listed: FilePeers =
                expect_json(h.anonymous.get(&peers_url).send().await?, 200).await?;
            let all: Page<PeerSummary> =
                expect_json(h.anonymous.get(h.api("/peers")).send().await?, 200).await?;
            Ok((listed.peers.is_empty() && all.items.is_empty()).then_some(()))
        })
        .await?;
        // The manifest stays; only the peer went.
        ensure!(
            h.anonymous
                .get(h.api(&format!("/files/{}", m.file_id())))
                .send()
                .await?
                .status()
                == 200
        );
        // A peer that comes back is listed again.
        expect_json::<AnnounceResponse>(
            alice
                .post(h.api("/announce"))
                .json(&full_announce(&m, 4000))
                .send()
                .await?,
            200,
        )
        .await?;
        let listed: FilePeers = expect_json(h.anonymous.get(&peers_url).send().await?, 200).await?;
        ensure!(listed.peers.len() == 1);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

for_each_store!(identity_and_files_survive_a_restart);
async fn identity_and_files_survive_a_restart(backend: Backend) -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let first = start_in_on(dir.path(), &backend, |_| {}).await?;
        let fingerprint = first.fingerprint;
        let h = Harness::around(first, dir);
        let m = manifest_for("keep.bin", &[3u8; 70_000]);
        expect_json::<serde_json::Value>(
            h.as_peer(&h.alice)
                .post(h.api("/files"))
                .json(&m)
                .send()
                .await?,
            201,
        )
        .await?;
        expect_json::<AnnounceResponse>(
            h.as_peer(&h.alice)
                .post(h.api("/announce"))
                .json(&full_announce(&m, 4100))
                .send()
                .await?,
            200,
        )
        .await?;
        let Harness { tracker, dir, .. } = h;
        tracker.shutdown().await?;

        let second = start_in_on(dir.path(), &backend, |_| {}).await?;
        ensure!(
            second.fingerprint == fingerprint,
            "the identity must be reused"
        );
        let h = Harness::around(second, dir);
        let health: Health =
            expect_json(h.anonymous.get(h.url("/healthz")).send().await?, 200).await?;
        ensure!(health.fingerprint == fingerprint);
        let fetched: Manifest = expect_json(
            h.anonymous
                .get(h.api(&format!("/files/{}", m.file_id())))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(fetched == m);
        // The peer is still within its TTL, so still listed.
        let listed: FilePeers = expect_json(
            h.anonymous
                .get(h.api(&format!("/files/{}/peers", m.file_id())))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(listed.peers.len() == 1 && listed.peers[0].port == 4100);
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn operator_certificate_is_served_instead_of_a_generated_one() -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let own = Identity::generate("tracker.example")?;
        let cert = dir.path().join("op-cert.pem");
        let key = dir.path().join("op-key.pem");
        std::fs::write(&cert, pem("CERTIFICATE", own.cert.as_ref()))?;
        std::fs::write(&key, pem("PRIVATE KEY", own.key.secret_der()))?;
        let data = dir.path().join("data");
        let tracker = start_in(&data, |c| {
            c.cert = Some(cert.clone());
            c.key = Some(key.clone());
        })
        .await?;
        ensure!(tracker.fingerprint == own.fingerprint);
        ensure!(!data.join("cert.pem").exists(), "no identity generated");
        let health: Health = expect_json(
            client(own.fingerprint, None)
                .get(format!("{}/healthz", tracker.url()))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(health.fingerprint == own.fingerprint);
        tracker.shutdown().await?;

        let half = start_in(&data, |c| c.cert = Some(cert.clone())).await;
        ensure!(half.is_err(), "--cert without --key must be refused");
        Ok(())
    })
    .await
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A raw HTTP/1.1 exchange over pinned TLS, so the test can stop half-way through a request.
async fn raw_tls(
    addr: std::net::SocketAddr,
    pin: Fingerprint,
    identity: &Identity,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = tls_config(pin, Some((identity.cert.clone(), identity.key.clone_key())));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(connector
        .connect(
            rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await?)
}

for_each_store!(shutdown_lets_an_in_flight_request_finish);
async fn shutdown_lets_an_in_flight_request_finish(backend: Backend) -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = start_in_on(dir.path(), &backend, |_| {}).await?;
        let addr = tracker.local_addr;
        let pin = tracker.fingerprint;
        let alice = Identity::generate("alice")?;
        let m = manifest_for("late.bin", &[1u8; 30_000]);
        let body = serde_json::to_vec(&m)?;

        let mut tls = raw_tls(addr, pin, &alice).await?;
        let head = format!(
            "POST /api/v1/files HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.flush().await?;
        // hyper answers 100 Continue when the handler starts reading the body: from here on
        // the request is in flight inside the tracker.
        let mut buf = vec![0u8; 256];
        let n = tls.read(&mut buf).await?;
        let interim = String::from_utf8_lossy(&buf[..n]).to_string();
        ensure!(interim.starts_with("HTTP/1.1 100"), "{interim}");

        let shutdown = tokio::spawn(tracker.shutdown());
        // The tracker stops accepting: new connections are refused or reset.
        eventually(Duration::from_secs(10), "listener closed", || async {
            Ok(tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(()))
        })
        .await?;
        ensure!(
            !shutdown.is_finished(),
            "shutdown must wait for the in-flight request"
        );

        tls.write_all(&body).await?;
        tls.flush().await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer);
        ensure!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        ensure!(answer.contains(&m.file_id().to_string()));
        shutdown.await??;

        // It was really written: a restart finds it.
        let again = start_in_on(dir.path(), &backend, |_| {}).await?;
        let status = client(again.fingerprint, None)
            .get(format!("{}/api/v1/files/{}", again.url(), m.file_id()))
            .send()
            .await?
            .status();
        ensure!(status == 200);
        again.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn listens_on_ipv6_loopback() -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let mut config =
            torrentguard_tracker::TrackerConfig::new("[::1]:0".parse()?, dir.path().into());
        config.peer_ttl = Duration::from_secs(60);
        let tracker = match torrentguard_tracker::start(config).await {
            Ok(t) => t,
            Err(torrentguard_tracker::TrackerError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                eprintln!("no IPv6 loopback on this host; skipping");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        ensure!(tracker.local_addr.is_ipv6());
        let health: Health = expect_json(
            client(tracker.fingerprint, None)
                .get(format!("{}/healthz", tracker.url()))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(health.fingerprint == tracker.fingerprint);
        tracker.shutdown().await?;
        Ok(())
    })
    .await
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_prints_its_address_checks_health_and_stops_on_sigterm() -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let exe = env!("CARGO_BIN_EXE_torrentguard-tracker");
        let mut child = Child(
            Command::new(exe)
                .args(["--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let stdout = child.0.stdout.take().context("stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        // "torrentguard-tracker listening on https://127.0.0.1:PORT fingerprint sha256:HEX"
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(i), Some(j)) = (
            words.iter().position(|w| *w == "on"),
            words.iter().position(|w| *w == "fingerprint"),
        ) else {
            bail!("unexpected start-up line {line:?}");
        };
        ensure!(line.contains("listening on"));
        let url = words[i + 1].to_string();
        let fingerprint: Fingerprint = words[j + 1].parse()?;
        let addr = url.trim_start_matches("https://").to_string();

        let health: Health = expect_json(
            client(fingerprint, None)
                .get(format!("{url}/healthz"))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(health.fingerprint == fingerprint);

        // The container's health check: the fingerprint comes from the data directory.
        let probe = |extra: Vec<String>| {
            let dir = dir.path().to_path_buf();
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || {
                Command::new(exe)
                    .arg("--data-dir")
                    .arg(dir)
                    .args(["healthcheck", "--timeout", "10", "--addr", &addr])
                    .args(extra)
                    .env("RUST_LOG", "off")
                    .output()
            })
        };
        let ok = probe(vec![]).await??;
        ensure!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        // Global flags after the subcommand too (issue 9): once "unexpected argument".
        let after = tokio::task::spawn_blocking({
            let dir = dir.path().to_path_buf();
            let addr = addr.clone();
            move || {
                Command::new(exe)
                    .args([
                        "healthcheck",
                        "--timeout",
                        "10",
                        "--addr",
                        &addr,
                        "--data-dir",
                    ])
                    .arg(dir)
                    .args(["--log-format", "json"])
                    .env("RUST_LOG", "off")
                    .output()
            }
        })
        .await??;
        ensure!(
            after.status.success(),
            "--data-dir after healthcheck: {}",
            String::from_utf8_lossy(&after.stderr)
        );
        let wrong_pin = probe(vec![
            "--fingerprint".into(),
            Identity::generate("x")?.fingerprint.to_string(),
        ])
        .await??;
        ensure!(
            !wrong_pin.status.success(),
            "a wrong pin must fail the health check"
        );

        let pid = child.0.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(killed.success());
        let mut proc = child;
        let status = tokio::task::spawn_blocking(move || {
            let s = proc.0.wait();
            (s, proc)
        })
        .await?
        .0?;
        ensure!(
            status.success(),
            "graceful exit after SIGTERM, got {status}"
        );
        Ok(())
    })
    .await
}

/// Runs the tracker binary on `args` until it exits (it must, within the test's bound).
async fn run_to_exit(args: Vec<String>) -> Result<std::process::Output> {
    let exe = env!("CARGO_BIN_EXE_torrentguard-tracker");
    Ok(tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
    })
    .await??)
}

#[tokio::test]
async fn a_busy_port_is_one_error_line_and_leaves_no_identity() -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = busy.local_addr()?.to_string();
        let data = dir.path().join("data");
        for format in ["text", "json"] {
            let out = run_to_exit(vec![
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--log-format".into(),
                format.into(),
            ])
            .await?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(1),
                "{format}: {:?}: {stderr}",
                out.status
            );
            let mentions: Vec<&str> = stderr.lines().filter(|l| l.contains(&addr)).collect();
            ensure!(
                mentions.len() == 1 && mentions[0].contains("binding"),
                "{format}: the error once, naming the address: {stderr}"
            );
            ensure!(out.stdout.is_empty(), "{format}: nothing on stdout");
            for file in ["cert.pem", "key.pem", "tracker.db"] {
                ensure!(
                    !data.join(file).exists(),
                    "{format}: {file} created before the bind failed"
                );
            }
        }
        drop(busy);
        Ok(())
    })
    .await
}

/// Starts the tracker binary with stderr into a file (not a terminal), stops it with SIGTERM,
/// and returns what it logged.
async fn logs_of_a_run(extra: &[&str]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("stderr.log");
    let exe = env!("CARGO_BIN_EXE_torrentguard-tracker");
    let mut child = Child(
        Command::new(exe)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    let stdout = child.0.stdout.take().context("stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    ensure!(line.contains("listening on"), "ready line {line:?}");
    ensure!(
        Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()?
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = child.0.wait();
        (s, child)
    })
    .await?
    .0?;
    ensure!(status.success(), "exit after SIGTERM: {status}");
    Ok(std::fs::read_to_string(log_path)?)
}

#[tokio::test]
async fn logs_are_plain_text_or_json_and_never_coloured_into_a_file() -> Result<()> {
    within(async {
        let text = logs_of_a_run(&[]).await?;
        ensure!(text.contains("tracker listening"), "{text}");
        ensure!(
            !text.contains('\x1b'),
            "colour codes in a log file: {text:?}"
        );

        let json = logs_of_a_run(&["--log-format", "json"]).await?;
        ensure!(
            !json.contains('\x1b'),
            "colour codes in a log file: {json:?}"
        );
        let events: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
            .collect::<Result<_>>()?;
        ensure!(
            events
                .iter()
                .any(|e| e["message"] == "tracker listening" && e["level"] == "INFO"),
            "{json}"
        );
        Ok(())
    })
    .await
}
