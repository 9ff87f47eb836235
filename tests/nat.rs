//! Peers behind NAT, for real (issue 15's "Done when"), in the NAT lab of `torrentguard-netlab`:
//! the tracker and its relay run in the lab's internet namespace, seeders and downloaders in
//! homes behind NAT routers (or on a public host), all as the real binaries a user runs.
//!
//! - two Symmetric homes cannot punch: the download goes through the relay;
//! - two PortRestricted homes punch a hole: no relay byte is spent;
//! - a relay that tampers with the stream is caught by the peers' own TLS, and the download
//!   finishes from another seeder.
//!
//! Needs root, iproute2, iptables and curl (for /metrics inside the lab); skips with
//! "SKIPPED: …" elsewhere, unless `TORRENTGUARD_REQUIRE_NETNS` is set.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::*;
use serde_json::Value;
use tempfile::TempDir;
use torrentguard_netlab::swarm::{Agents, LabTracker, Proc, connections, parse_event};
use torrentguard_netlab::{Host, Lab, NatKind};

/// A few MiB: many chunks, and well past the 64 KiB after which the tampering relay strikes.
const SIZE: usize = 3 * 1024 * 1024 + 123;
/// A download that has to find its path (direct attempts time out first) may take longer than
/// one ordinary wait.
const DOWNLOAD_WAIT: Duration = Duration::from_secs(180);

/// The tracker with its relay in the lab's internet namespace.
fn start_tracker(lab: &Lab, dir: &Path, extra: &[&str]) -> Result<LabTracker> {
    Ok(LabTracker::start(lab, &tracker_bin(), dir, extra, WAIT)?)
}

/// How this file's agents start: the e2e build's binary, data under `dir`.
fn agents<'a>(bin: &'a Path, dir: &'a Path, tracker: &'a LabTracker) -> Agents<'a> {
    Agents {
        bin,
        dir,
        tracker,
        timeout: WAIT,
    }
}

/// `torrentguard --json share FILE` on `host` with the suite's small chunks; waits for
/// `seeding`.
fn share_on(host: &Host, agents: &Agents, name: &str, file: &Path) -> Result<(Proc, String)> {
    Ok(agents.share_on(host, name, file, &["--chunk-size", CHUNK])?)
}

/// Waits up to DOWNLOAD_WAIT (not the ordinary WAIT: a peer behind NAT is reached only after
/// the direct attempt has timed out) for an event named `event` for which `pred` holds.
fn wait_long(proc: &mut Proc, event: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    Ok(proc.wait_event(DOWNLOAD_WAIT, event, pred)?)
}

/// Waits for the `completed` event, then for a clean exit.
fn wait_completed(get: &mut Proc) -> Result<Value> {
    let completed = wait_long(get, "completed", |_| true)?;
    get.expect_exit(0, WAIT)?;
    Ok(completed)
}

/// Every `peer_connected` event's `path` (the contract's other new fields checked by
/// `connections`).
fn paths(get: &Proc) -> Result<Vec<String>> {
    Ok(connections(get)?.into_iter().map(|c| c.path).collect())
}

/// A file of SIZE bytes in `dir`, its bytes returned.
fn dataset(dir: &Path) -> Result<(std::path::PathBuf, Vec<u8>)> {
    let file = dir.join("dataset.bin");
    let data = write_random_file(&file, SIZE, 15)?;
    Ok((file, data))
}

#[test]
fn symmetric_homes_complete_through_the_relay() -> Result<()> {
    let Some(lab) = Lab::create(&[NatKind::Symmetric, NatKind::Symmetric], 0)? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let (file, data) = dataset(dir.path())?;
    let tracker = start_tracker(&lab, dir.path(), &[])?;
    let agent = agent_bin();
    let agents = agents(&agent, dir.path(), &tracker);
    let relayed_before = tracker
        .metric(&lab, "torrentguard_relay_bytes_total")?
        .unwrap_or(0.0);
    let (_seeder, id) = share_on(lab.home(0).host(), &agents, "seeder", &file)?;
    let out = dir.path().join("out");
    let mut get = agents.get_on(lab.home(1).host(), &id, &out, &[])?;
    let completed = wait_completed(&mut get)?;
    assert_same(&out.join("dataset.bin"), &data)?;
    ensure!(num(&completed, "bytes") == SIZE as u64, "{completed}");
    for path in paths(&get)? {
        ensure!(path == "relayed", "a Symmetric pair connected by {path}");
    }
    let relayed = tracker
        .metric(&lab, "torrentguard_relay_bytes_total")?
        .context("no torrentguard_relay_bytes_total")?;
    ensure!(
        relayed - relayed_before >= SIZE as f64,
        "the relay forwarded {relayed} bytes (before: {relayed_before}) for a {SIZE}-byte file"
    );
    Ok(())
}

#[test]
fn port_restricted_homes_complete_through_a_punched_hole() -> Result<()> {
    let kinds = [NatKind::PortRestricted, NatKind::PortRestricted];
    let Some(lab) = Lab::create(&kinds, 0)? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let (file, data) = dataset(dir.path())?;
    let tracker = start_tracker(&lab, dir.path(), &[])?;
    let agent = agent_bin();
    let agents = agents(&agent, dir.path(), &tracker);
    let (_seeder, id) = share_on(lab.home(0).host(), &agents, "seeder", &file)?;
    let out = dir.path().join("out");
    let mut get = agents.get_on(lab.home(1).host(), &id, &out, &[])?;
    let completed = wait_completed(&mut get)?;
    assert_same(&out.join("dataset.bin"), &data)?;
    ensure!(
        completed["first_chunk_ms"].is_u64(),
        "completed without first_chunk_ms: {completed}"
    );
    for path in paths(&get)? {
        ensure!(
            path == "punched",
            "a PortRestricted pair connected by {path}"
        );
    }
    let relayed = tracker
        .metric(&lab, "torrentguard_relay_bytes_total")?
        .context("no torrentguard_relay_bytes_total")?;
    ensure!(relayed == 0.0, "the relay forwarded {relayed} bytes");
    Ok(())
}

/// Whether `v` is an event of the downloader reporting a failure with peer `fp`, and the text
/// it gives.
fn failure_with(v: &Value, fp: &str) -> Option<String> {
    let is = |f: &Value| f.as_str() == Some(fp);
    match v["event"].as_str()? {
        "peer_dropped" | "peer_banned" | "chunk_retry" if is(&v["fingerprint"]) => {
            Some(v["reason"].as_str().unwrap_or_default().to_string())
        }
        "waiting" => v["peers"].as_array()?.iter().find_map(|p| {
            is(&p["fingerprint"]).then(|| p["last_error"].as_str().unwrap_or_default().into())
        }),
        _ => None,
    }
}

/// Seeder A is only reachable through the relay, which flips a byte of every session: the
/// downloader's TLS must refuse the stream (the relay cannot forge it), and the download must
/// finish from seeder B, on a public host, once B appears.
#[test]
fn a_tampering_relay_is_detected_and_the_download_finishes_elsewhere() -> Result<()> {
    let Some(lab) = Lab::create(&[NatKind::Symmetric, NatKind::Symmetric], 1)? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let (file, data) = dataset(dir.path())?;
    let tracker = start_tracker(&lab, dir.path(), &["--relay-tamper-for-tests"])?;
    let agent = agent_bin();
    let agents = agents(&agent, dir.path(), &tracker);
    let a_fp = identity(&dir.path().join("seeder-a"))?;
    let (_a, id) = share_on(lab.home(0).host(), &agents, "seeder-a", &file)?;
    let out = dir.path().join("out");
    let mut get = agents.get_on(lab.home(1).host(), &id, &out, &[])?;
    // Only A exists yet: its relayed session connects, then breaks on the flipped byte.
    wait_long(&mut get, "peer_connected", |v| {
        v["fingerprint"] == a_fp.as_str() && v["path"] == "relayed"
    })?;
    let line = get.wait_line(DOWNLOAD_WAIT, |l| {
        parse_event(l).is_some_and(|v| failure_with(&v, &a_fp).is_some())
    })?;
    let reason = failure_with(&parse_event(&line).expect("an event"), &a_fp).unwrap_or_default();
    let tls_words = ["tls", "decrypt", "bad record", "bad_record_mac"];
    let tls_error = |text: &str| tls_words.iter().any(|w| text.to_lowercase().contains(w));
    // The event's reason, or else a log line about that session, must name the TLS failure.
    let logged = get
        .stderr()
        .lines()
        .any(|l| tls_error(l) && (l.contains(a_fp.as_str()) || l.to_lowercase().contains("relay")));
    ensure!(
        tls_error(&reason) || logged,
        "A's relayed session did not end on a TLS error: {reason}\n{}",
        get.transcript()
    );
    let b_fp = identity(&dir.path().join("seeder-b"))?;
    let (_b, b_id) = share_on(lab.public_host(0), &agents, "seeder-b", &file)?;
    ensure!(b_id == id, "the same file has another id: {b_id} vs {id}");
    wait_completed(&mut get)?;
    assert_same(&out.join("dataset.bin"), &data)?;
    let from_b = get
        .events("peer_connected")
        .into_iter()
        .any(|v| v["fingerprint"] == b_fp.as_str() && v["path"] == "direct");
    ensure!(from_b, "no direct connection to B:\n{}", get.transcript());
    Ok(())
}

/// `--port-map upnp` against a real UPnP-IGD router (Debian's miniupnpd in the router
/// namespace, [`NatKind::Upnp`]): the seeder's router forwards its port, the tracker's probe
/// then finds it open, a downloader behind a Symmetric NAT (which can neither punch nor be
/// reached) dials it directly, and the mapping is gone once the seeder stops.
#[test]
fn a_upnp_mapping_makes_a_seeder_behind_nat_directly_reachable() -> Result<()> {
    let installed = std::process::Command::new("miniupnpd")
        .arg("--version")
        .output()
        .is_ok();
    if !installed && std::env::var_os(torrentguard_netlab::REQUIRE_ENV).is_none() {
        eprintln!(
            "SKIPPED: miniupnpd is not installed (apt package miniupnpd; .ci/run installs it)"
        );
        return Ok(());
    }
    let Some(lab) = Lab::create(&[NatKind::Upnp, NatKind::Symmetric], 0)? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let (file, data) = dataset(dir.path())?;
    let tracker = start_tracker(&lab, dir.path(), &[])?;
    let bin = agent_bin();
    let agents = agents(&bin, dir.path(), &tracker);
    let seeder_home = lab.home(0);
    let extra = ["--chunk-size", CHUNK, "--port-map", "upnp"];
    let (mut share, id) = agents.share_on(seeder_home.host(), "seeder", &file, &extra)?;
    // Learned while the file is hashed, so possibly said before `seeding`.
    let reach = match share.events("reach").pop() {
        Some(reach) => reach,
        None => share.wait_event(WAIT, "reach", |_| true)?,
    };
    ensure!(
        reach["inbound"] == true,
        "not reachable through UPnP: {reach}"
    );
    ensure!(reach["mapping"] == "open", "{reach}");
    let public = format!("{}:7000", seeder_home.public_ip());
    ensure!(
        reach["public"] == public.as_str(),
        "{reach} (expected {public})"
    );
    let to_seeder = format!("{}:7000", seeder_home.ip());
    let mappings = seeder_home.upnp_mappings()?;
    ensure!(
        mappings.iter().any(|m| m.contains(&to_seeder)),
        "the router holds no mapping to the seeder: {mappings:?}"
    );

    let out = dir.path().join("out");
    let mut get = agents.get_on(lab.home(1).host(), &id, &out, &[])?;
    wait_completed(&mut get)?;
    assert_same(&out.join("dataset.bin"), &data)?;
    for path in paths(&get)? {
        ensure!(
            path == "direct",
            "expected a direct dial through the mapping, got {path}"
        );
    }

    share.signal("INT")?;
    share.wait_exit(WAIT)?;
    let left = seeder_home.upnp_mappings()?;
    ensure!(left.is_empty(), "the mapping outlived the seeder: {left:?}");
    Ok(())
}

/// The daemon answers introductions too: a file shared through a daemon behind a
/// PortRestricted NAT is fetched through a punched hole by a `get` behind another.
#[test]
fn a_daemon_behind_nat_is_reached_through_a_punched_hole() -> Result<()> {
    let kinds = [NatKind::PortRestricted, NatKind::PortRestricted];
    let Some(lab) = Lab::create(&kinds, 0)? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let (file, data) = dataset(dir.path())?;
    let tracker = start_tracker(&lab, dir.path(), &[])?;
    let daemon_dir = dir.path().join("daemon");
    let mut cmd = lab.home(0).command(agent_bin());
    cmd.arg("--data-dir")
        .arg(&daemon_dir)
        .args(["--json", "daemon", "--listen", "0.0.0.0:7000"])
        .args(["--tracker", tracker.pinned_url()]);
    let mut daemon = Proc::spawn("daemon", cmd)?;
    daemon.wait_event(WAIT, "daemon", |_| true)?;
    // The CLI reaches the daemon through its control socket in the data directory.
    let added = cli_events(
        &daemon_dir,
        &[
            "share",
            file.to_str().context("utf-8 path")?,
            "--tracker",
            tracker.pinned_url(),
        ],
    )?;
    let id = added
        .iter()
        .find_map(|e| e["id"].as_str())
        .with_context(|| format!("no file_id in {added:?}"))?
        .to_string();

    let bin = agent_bin();
    let agents = agents(&bin, dir.path(), &tracker);
    let out = dir.path().join("out");
    let mut get = agents.get_on(lab.home(1).host(), &id, &out, &[])?;
    wait_completed(&mut get)?;
    assert_same(&out.join("dataset.bin"), &data)?;
    for path in paths(&get)? {
        ensure!(
            path == "punched",
            "a daemon behind a PortRestricted NAT reached by {path}"
        );
    }
    Ok(())
}
