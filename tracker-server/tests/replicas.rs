//! Several `torrentguard-tracker` processes on one PostgreSQL database are one tracker: a peer
//! announced to one is listed by the others, a manifest registered on two at once is stored
//! once (201 from one, 200 from the other), expiry run by all is safe, and all serve one
//! certificate. Then the same behind HAProxy in TCP (TLS passthrough) mode, so client
//! certificates still reach the trackers.
//!
//! Needs a PostgreSQL server (`TORRENTGUARD_TEST_POSTGRES`, see tests/common); skips without one
//! unless `TORRENTGUARD_REQUIRE_POSTGRES=1`. The load balancer half needs `haproxy`; it skips
//! without it unless `TORRENTGUARD_REQUIRE_HAPROXY=1`.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use common::*;
use serde_json::json;
use torrentguard_protocol::api::{AnnounceResponse, FilePeers, Page, PeerSummary};
use torrentguard_protocol::{Bitfield, Fingerprint, Manifest};
use torrentguard_trust::Identity;

const REQUIRE_HAPROXY_ENV: &str = "TORRENTGUARD_REQUIRE_HAPROXY";

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One tracker process.
struct Replica {
    _child: Child,
    url: String,
    fingerprint: Fingerprint,
    log: PathBuf,
}

impl Replica {
    fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }
}

/// Starts the tracker binary on `database` with `extra` flags; returns once it has printed its
/// ready line. Its logs go to `log`.
fn spawn_replica(
    database: &str,
    data_dir: &Path,
    log: PathBuf,
    extra: &[&str],
) -> Result<(Child, PathBuf)> {
    let child = Command::new(env!("CARGO_BIN_EXE_torrentguard-tracker"))
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .args(["--peer-ttl", "3", "--announce-interval", "1", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    Ok((Child(child), log))
}

/// Waits for the ready line "torrentguard-tracker listening on https://ADDR fingerprint FP".
async fn ready(mut child: Child, log: PathBuf) -> Result<Replica> {
    let stdout = child.0.stdout.take().context("stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(i), Some(j)) = (
        words.iter().position(|w| *w == "on"),
        words.iter().position(|w| *w == "fingerprint"),
    ) else {
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("the replica did not start: {line:?}\n{logs}");
    };
    Ok(Replica {
        url: words[i + 1].to_string(),
        fingerprint: words[j + 1].parse()?,
        _child: child,
        log,
    })
}

/// Starts one replica per data directory at once (so they race through migrations and identity
/// creation), replica `i` on `database(i)`.
async fn replicas(
    database: &dyn Fn(usize) -> String,
    data_dirs: &[&Path],
    dir: &Path,
    extra: &[&str],
) -> Result<Vec<Replica>> {
    let mut spawned = Vec::new();
    for (i, data_dir) in data_dirs.iter().enumerate() {
        let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
        let log = dir.join(format!("replica-{name}-{i}.log"));
        spawned.push(spawn_replica(&database(i), data_dir, log, extra)?);
    }
    let mut started = Vec::new();
    for (child, log) in spawned {
        started.push(ready(child, log).await?);
    }
    Ok(started)
}

fn announce_body(m: &Manifest, port: u16) -> serde_json::Value {
    json!({
        "file_id": m.file_id(),
        "port": port,
        "event": "started",
        "bitfield": Bitfield::new(m.chunk_count()).to_base64(),
    })
}

async fn peers_of(client: &reqwest::Client, r: &Replica, m: &Manifest) -> Result<Vec<Fingerprint>> {
    let listed: FilePeers = expect_json(
        client
            .get(r.api(&format!("/files/{}/peers", m.file_id())))
            .send()
            .await?,
        200,
    )
    .await?;
    Ok(listed.peers.iter().map(|p| p.fingerprint).collect())
}

/// Registers `m` on every replica at the same moment; returns the statuses, sorted.
async fn register_everywhere(who: &Identity, rs: &[Replica], m: &Manifest) -> Result<Vec<u16>> {
    let sends = rs.iter().map(|r| {
        // A client of its own each, so no request waits for another's connection.
        let c = client(r.fingerprint, Some(who));
        let url = r.api("/files");
        async move { Ok::<_, anyhow::Error>(c.post(url).json(m).send().await?.status().as_u16()) }
    });
    let mut statuses = futures::future::try_join_all(sends).await?;
    statuses.sort();
    Ok(statuses)
}

/// Writes `identity` as PEM files in `dir`; returns their paths.
fn write_pem(identity: &Identity, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use base64::Engine as _;
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, pem("CERTIFICATE", identity.cert.as_ref()))?;
    std::fs::write(&key, pem("PRIVATE KEY", identity.key.secret_der()))?;
    Ok((cert, key))
}

/// No replica logged a failed expiry (or any error) while they all ran it.
fn expiry_was_clean(rs: &[Replica]) -> Result<()> {
    for r in rs {
        let logs = std::fs::read_to_string(&r.log)?;
        ensure!(
            !logs.contains("expiring peers failed") && !logs.contains("ERROR"),
            "{}:\n{logs}",
            r.log.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn replicas_on_one_postgres_are_one_tracker() -> Result<()> {
    let Some(backend) = Backend::postgres().await? else {
        return Ok(());
    };
    let Backend::Postgres(db) = &backend else {
        bail!("not a PostgreSQL backend");
    };
    within(async {
        let dir = tempfile::tempdir()?;
        // One data volume, no --cert: the first start generates the identity, the others load it.
        let shared = dir.path().join("data");
        let rs = replicas(&|_| db.url.clone(), &[&shared, &shared], dir.path(), &[]).await?;
        ensure!(
            rs[0].fingerprint == rs[1].fingerprint,
            "one certificate for all replicas"
        );
        let (alice, bob, carol) = (
            Identity::generate("alice")?,
            Identity::generate("bob")?,
            Identity::generate("carol")?,
        );

        // Several rounds: each has its own moment of contention, and each must end the same.
        let mut files = Vec::new();
        for round in 0..8u8 {
            let m = manifest_for(&format!("race-{round}.bin"), &[round; 40_000]);
            let statuses = register_everywhere(&alice, &rs, &m).await?;
            ensure!(statuses == [200, 201], "round {round}: {statuses:?}");
            files.push(m);
        }
        let anonymous = client(rs[0].fingerprint, None);
        for r in &rs {
            let page: Page<serde_json::Value> =
                expect_json(anonymous.get(r.api("/files")).send().await?, 200).await?;
            ensure!(page.items.len() == files.len(), "one row per manifest");
        }

        // A peer announced to one replica is listed by the other, and answers cross over.
        let m = &files[0];
        let _: AnnounceResponse = expect_json(
            client(rs[0].fingerprint, Some(&alice))
                .post(rs[0].api("/announce"))
                .json(&announce_body(m, 7001))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(peers_of(&anonymous, &rs[1], m).await? == [alice.fingerprint]);
        let answer: AnnounceResponse = expect_json(
            client(rs[1].fingerprint, Some(&bob))
                .post(rs[1].api("/announce"))
                .json(&announce_body(m, 7002))
                .send()
                .await?,
            200,
        )
        .await?;
        ensure!(
            answer
                .peers
                .iter()
                .any(|p| p.fingerprint == alice.fingerprint)
        );

        // Expiry, run by both every 750 ms: carol (and the others) leave both replicas' lists
        // once silent for the TTL, while announces keep arriving, and no run fails.
        for (i, r) in rs.iter().enumerate() {
            let _: AnnounceResponse = expect_json(
                client(r.fingerprint, Some(&carol))
                    .post(r.api("/announce"))
                    .json(&announce_body(&files[i + 1], 7003))
                    .send()
                    .await?,
                200,
            )
            .await?;
        }
        eventually(
            Duration::from_secs(20),
            "expiry on both replicas",
            || async {
                for r in &rs {
                    let peers: Page<PeerSummary> =
                        expect_json(anonymous.get(r.api("/peers")).send().await?, 200).await?;
                    if !peers.items.is_empty() {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await?;
        expiry_was_clean(&rs)?;
        Ok(())
    })
    .await
}

/// A free loopback port for a program that cannot be told to pick one (HAProxy): bound, read,
/// released. Another process could take it in between; the test would then fail, not hang.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn haproxy_config(port: u16, rs: &[Replica]) -> String {
    let servers: String = rs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let addr = r.url.trim_start_matches("https://");
            format!("    server replica{i} {addr}\n")
        })
        .collect();
    // The shape of contrib/haproxy/haproxy.cfg: TCP mode passes TLS through untouched.
    format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend tracker\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
         backend replicas\n    balance roundrobin\n{servers}"
    )
}

#[tokio::test]
async fn replicas_behind_a_tls_passthrough_load_balancer() -> Result<()> {
    let haproxy = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let Some(haproxy) = haproxy else {
        if std::env::var(REQUIRE_HAPROXY_ENV).as_deref() == Ok("1") {
            bail!("{REQUIRE_HAPROXY_ENV}=1 but haproxy is not installed");
        }
        eprintln!("haproxy is not installed: skipping the load balancer test");
        return Ok(());
    };
    let Some(backend) = Backend::postgres().await? else {
        return Ok(());
    };
    let Backend::Postgres(db) = &backend else {
        bail!("not a PostgreSQL backend");
    };
    within(async {
        let dir = tempfile::tempdir()?;
        // The operator's certificate, given to each replica (each has a data dir of its own).
        let own = Identity::generate("tracker.example")?;
        let (cert, key) = write_pem(&own, dir.path())?;
        let (cert, key) = (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        );
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let rs = replicas(
            &|_| db.url.clone(),
            &[&a, &b],
            dir.path(),
            &["--cert", &cert, "--key", &key],
        )
        .await?;
        ensure!(rs.iter().all(|r| r.fingerprint == own.fingerprint));

        let port = free_port()?;
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(port, &rs))?;
        let _lb = Child(
            Command::new(haproxy)
                .arg("-db") // foreground, logs to stderr
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("haproxy.log"))?)
                .spawn()?,
        );
        let lb = format!("https://127.0.0.1:{port}");
        let anonymous = client(own.fingerprint, None);
        eventually(Duration::from_secs(20), "haproxy answering", || async {
            Ok(anonymous
                .get(format!("{lb}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ()))
        })
        .await?;

        // Through the balancer, with a client certificate: register, then announce on fresh
        // connections (round robin sends them to both replicas). The identity the tracker
        // records is the client's own, so TLS really ran end to end.
        let alice = Identity::generate("alice")?;
        let m = manifest_for("through-lb.bin", &[5u8; 30_000]);
        let status = client(own.fingerprint, Some(&alice))
            .post(format!("{lb}/api/v1/files"))
            .json(&m)
            .send()
            .await?
            .status();
        ensure!(status == 201, "register through the balancer: {status}");
        for _ in 0..4 {
            let _: AnnounceResponse = expect_json(
                client(own.fingerprint, Some(&alice))
                    .post(format!("{lb}/api/v1/announce"))
                    .json(&announce_body(&m, 7100))
                    .send()
                    .await?,
                200,
            )
            .await?;
        }
        for r in &rs {
            ensure!(
                peers_of(&anonymous, r, &m).await? == [alice.fingerprint],
                "alice, as announced through the balancer, listed by {}",
                r.url
            );
        }
        // Without a client certificate, writes through the balancer are refused by the
        // tracker itself: the balancer adds no identity of its own.
        let refused = anonymous
            .post(format!("{lb}/api/v1/announce"))
            .json(&announce_body(&m, 7101))
            .send()
            .await?
            .status();
        ensure!(
            refused == 401,
            "an anonymous announce through the balancer: {refused}"
        );
        Ok(())
    })
    .await
}

/// Without PostgreSQL too: trackers started together on one fresh data volume serve the one
/// identity the first of them generated, and trackers given one `--cert/--key` serve it. (Each
/// has a SQLite file of its own: one SQLite file is not for several processes starting at once,
/// as sqlx does not lock SQLite migrations; replicas share PostgreSQL.)
#[tokio::test]
async fn replicas_serve_one_certificate_from_a_shared_volume_or_cert_and_key() -> Result<()> {
    within(async {
        let dir = tempfile::tempdir()?;
        let shared = dir.path().join("volume");
        let own_file = |i| format!("sqlite://{}/replica-{i}.db", dir.path().display());
        let rs = replicas(&own_file, &[&shared, &shared, &shared], dir.path(), &[]).await?;
        let generated =
            Identity::from_pem_files(&shared.join("cert.pem"), &shared.join("key.pem"))?;
        ensure!(
            rs.iter().all(|r| r.fingerprint == generated.fingerprint),
            "one identity on the volume, served by all"
        );

        let own = Identity::generate("tracker.example")?;
        let (cert, key) = write_pem(&own, dir.path())?;
        let (cert, key) = (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        );
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let rs = replicas(
            &own_file,
            &[&a, &b],
            dir.path(),
            &["--cert", &cert, "--key", &key],
        )
        .await?;
        for r in &rs {
            ensure!(r.fingerprint == own.fingerprint);
            let health: torrentguard_protocol::api::Health = expect_json(
                client(own.fingerprint, None)
                    .get(format!("{}/healthz", r.url))
                    .send()
                    .await?,
                200,
            )
            .await?;
            ensure!(health.fingerprint == own.fingerprint);
        }
        Ok(())
    })
    .await
}
