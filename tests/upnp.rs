//! `--port-map upnp` against a real UPnP-IGD router: Debian's miniupnpd in a router namespace of
//! the NAT lab ([`NatKind::Upnp`]). The seeder asks its router for a mapping, the tracker's probe
//! then reaches it from outside, a downloader behind a Symmetric NAT (which can neither punch
//! nor be reached) dials it directly, and the mapping is gone once the seeder stops.
//!
//! Needs root, iproute2, iptables, nft and miniupnpd (`.ci/run` installs them); skips with
//! "SKIPPED: …" elsewhere, unless `TORRENTGUARD_REQUIRE_NETNS` is set.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::*;
use tempfile::TempDir;
use torrentguard_netlab::{INTERNET_IP, Lab, NatKind};

const TRACKER_PORT: u16 = 7443;
const SEED_PORT: u16 = 7000;

/// The tracker (with its relay, which this test must not need) in the internet namespace.
fn tracker_in(lab: &Lab, dir: &Path) -> Result<(Proc, String)> {
    let mut cmd = lab.internet().command(tracker_bin());
    cmd.arg("--listen")
        .arg(format!("{INTERNET_IP}:{TRACKER_PORT}"))
        .arg("--relay-listen")
        .arg(format!("{INTERNET_IP}:7444"))
        .arg("--data-dir")
        .arg(dir.join("tracker"))
        .args(["--announce-interval", "1"]);
    let mut proc = Proc::spawn("tracker", cmd)?;
    let ready = proc.wait_line(WAIT, |l| l.contains(" listening on "))?;
    let fingerprint = ready
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .with_context(|| format!("no fingerprint in {ready:?}"))?;
    let url = format!("https://{INTERNET_IP}:{TRACKER_PORT}#{fingerprint}");
    Ok((proc, url))
}

#[test]
fn a_upnp_mapping_makes_a_seeder_behind_nat_directly_reachable() -> Result<()> {
    if std::process::Command::new("miniupnpd")
        .arg("--version")
        .output()
        .is_err()
        && std::env::var_os(torrentguard_netlab::REQUIRE_ENV).is_none()
    {
        eprintln!(
            "SKIPPED: miniupnpd is not installed (apt package miniupnpd; .ci/run installs it)"
        );
        return Ok(());
    }
    let Some(lab) = Lab::create(&[NatKind::Upnp, NatKind::Symmetric], 0)? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let file = dir.path().join("image.bin");
    let data = write_random_file(&file, 2 * 1024 * 1024 + 7, 21)?;
    let (_tracker, url) = tracker_in(&lab, dir.path())?;

    let mut cmd = lab.home(0).command(agent_bin());
    cmd.arg("--data-dir")
        .arg(dir.path().join("seeder"))
        .arg("--json")
        .arg("share")
        .arg(&file)
        .args(["--tracker", &url, "--port-map", "upnp"])
        .args(["--listen", &format!("0.0.0.0:{SEED_PORT}")])
        .args(["--chunk-size", CHUNK]);
    let mut share = Proc::spawn("seeder", cmd)?;
    let seeding = share.wait_event("seeding", |_| true)?;
    let id = seeding["file_id"]
        .as_str()
        .context("no file_id")?
        .to_string();
    // The tracker's probe reaches the listener through the router's mapping (learned while
    // the file is hashed, so possibly said before `seeding`).
    let reach = match share.events("reach").pop() {
        Some(reach) => reach,
        None => share.wait_event("reach", |_| true)?,
    };
    ensure!(
        reach["inbound"] == true,
        "not reachable through UPnP: {reach}"
    );
    ensure!(reach["mapping"] == "open", "{reach}");
    let public = format!("{}:{SEED_PORT}", lab.home(0).public_ip());
    ensure!(
        reach["public"] == public.as_str(),
        "{reach} (expected {public})"
    );
    let mappings = lab.home(0).upnp_mappings()?;
    ensure!(
        mappings
            .iter()
            .any(|m| m.contains(&format!("{}:{SEED_PORT}", lab.home(0).ip()))),
        "the router holds no mapping to the seeder: {mappings:?}"
    );

    let out = dir.path().join("out");
    let mut cmd = lab.home(1).command(agent_bin());
    cmd.arg("--data-dir")
        .arg(dir.path().join("downloader"))
        .arg("--json")
        .arg("get")
        .arg(&id)
        .args(["--tracker", &url, "-o"])
        .arg(&out)
        .args(["--listen", "0.0.0.0:7001"]);
    let mut get = Proc::spawn("downloader", cmd)?;
    get.wait_event("completed", |_| true)?;
    get.expect_exit(0)?;
    assert_same(&out.join("image.bin"), &data)?;
    let connected = get.events("peer_connected");
    ensure!(!connected.is_empty(), "no peer_connected");
    for c in &connected {
        ensure!(c["path"] == "direct", "expected a direct dial: {c}");
    }

    // Stopping removes the mapping from the router.
    share.signal("INT")?;
    share.wait_exit(Duration::from_secs(20))?;
    let left = lab.home(0).upnp_mappings()?;
    ensure!(left.is_empty(), "the mapping outlived the seeder: {left:?}");
    Ok(())
}
