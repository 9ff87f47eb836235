//! `torrentguard tracker` as a process (issue 9): its data lives in `<data-dir>/tracker`, as the
//! embedded tracker's does; `--json` makes its stdout JSON events; a busy port is one error.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use torrentguard_protocol::Fingerprint;

const WAIT: Duration = Duration::from_secs(60);

/// Kills the child on drop, so a failing test leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torrentguard"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env_remove("TORRENTGUARD_TRACKER_DATA_DIR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Starts `torrentguard [--json] --data-dir D tracker --listen 127.0.0.1:0`, returns the child
/// and its stdout lines (a reader thread feeds them in).
fn start(data_dir: &Path, json: bool) -> Result<(Guard, mpsc::Receiver<String>)> {
    let mut cmd = agent(data_dir);
    if json {
        cmd.arg("--json");
    }
    let mut child = Guard(
        cmd.args(["tracker", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

fn stop(child: Guard) -> Result<()> {
    let pid = child.0.id().to_string();
    ensure!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let (tx, rx) = mpsc::channel();
    let mut child = child;
    std::thread::spawn(move || {
        let _ = tx.send(child.0.wait());
        drop(child);
    });
    let status = rx.recv_timeout(WAIT).context("no exit after SIGTERM")??;
    ensure!(status.success(), "exit after SIGTERM: {status}");
    Ok(())
}

fn fingerprint_of(cert: &Path) -> Result<Fingerprint> {
    Ok(Fingerprint::of_der(&CertificateDer::from_pem_file(cert)?))
}

#[test]
fn the_tracker_keeps_its_identity_and_database_under_data_dir_tracker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("agent");
    let (child, lines) = start(&d, false)?;
    let ready = lines.recv_timeout(WAIT).context("no ready line")?;
    let words: Vec<&str> = ready.split_whitespace().collect();
    let Some(i) = words.iter().position(|w| *w == "fingerprint") else {
        bail!("unexpected ready line {ready:?}");
    };
    let printed: Fingerprint = words[i + 1].parse()?;
    let tracker_dir = d.join("tracker");
    ensure!(
        tracker_dir.join("tracker.db").is_file(),
        "no D/tracker/tracker.db"
    );
    ensure!(
        fingerprint_of(&tracker_dir.join("cert.pem"))? == printed,
        "the tracker does not serve the identity in D/tracker"
    );
    for stray in ["tracker.db", "cert.pem", "key.pem"] {
        ensure!(!d.join(stray).exists(), "D/{stray} written by the tracker");
    }
    stop(child)
}

#[test]
fn json_mode_prints_only_json_events_on_stdout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (child, lines) = start(&dir.path().join("agent"), true)?;
    let ready = lines.recv_timeout(WAIT).context("no ready line")?;
    let event: serde_json::Value =
        serde_json::from_str(&ready).with_context(|| format!("not JSON: {ready:?}"))?;
    ensure!(event["event"] == "tracker", "{event}");
    ensure!(
        event["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "{event}"
    );
    event["fingerprint"]
        .as_str()
        .context("fingerprint")?
        .parse::<Fingerprint>()?;
    stop(child)?;
    // Whatever else came on stdout before the exit is JSON with an `event` too.
    for line in lines.try_iter() {
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("not JSON: {line:?}"))?;
        ensure!(v.get("event").is_some(), "{line}");
    }
    Ok(())
}

#[test]
fn a_busy_port_is_one_error_line_and_creates_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("agent");
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = busy.local_addr()?.to_string();
    let out = agent(&d).args(["tracker", "--listen", &addr]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{:?}: {stderr}", out.status);
    let mentions = stderr.lines().filter(|l| l.contains(&addr)).count();
    ensure!(mentions == 1, "the error once: {stderr}");
    for file in [
        "tracker/cert.pem",
        "tracker/key.pem",
        "tracker/tracker.db",
        "cert.pem",
    ] {
        ensure!(
            !d.join(file).exists(),
            "{file} created before the bind failed"
        );
    }
    drop(busy);
    Ok(())
}
