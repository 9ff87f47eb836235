//! Two hosts, for real: network namespaces the test creates (two public hosts of the NAT lab,
//! `torrentguard-netlab`, on one bridge), each with its own loopback, addresses and ports. The
//! README's LAN flow runs across them exactly as a user would type it: host A shares (with the
//! embedded tracker, then with a standalone tracker that A's seeder reaches over loopback), host
//! B runs the `get` command A printed.
//!
//! Namespaces need root, iproute2 and iptables. Where they cannot be made the tests say so and
//! skip, unless `TORRENTGUARD_REQUIRE_NETNS` is set (`.ci/run` sets it after probing that they
//! work), in which case that is a failure.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use common::*;
use tempfile::TempDir;
use torrentguard_netlab::{Host, Lab};

/// Host A and host B: two public hosts of the NAT lab, on one bridge without NAT, each its own
/// namespace with its own loopback, addresses and ports. Nothing touches the machine's own
/// network, and everything is deleted when it drops.
struct Lan {
    lab: Lab,
}

impl Lan {
    /// The two hosts, or `None` (after saying why) where namespaces cannot be made here.
    fn create() -> Result<Option<Lan>> {
        Ok(Lab::create(&[], 2)?.map(|lab| Lan { lab }))
    }

    fn a(&self) -> &Host {
        self.lab.public_host(0)
    }

    fn b(&self) -> &Host {
        self.lab.public_host(1)
    }

    fn a_ip(&self) -> Ipv4Addr {
        self.a().ip()
    }
}

/// The `torrentguard get …` lines that `share` printed for other hosts, as arguments: the one
/// with the share code, then the one spelled out in flags.
fn printed_get_commands(share: &mut Proc) -> Result<(Vec<String>, Vec<String>)> {
    let mut next = || -> Result<Vec<String>> {
        let line = share.wait_line(WAIT, |l| l.trim_start().starts_with("torrentguard get "))?;
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        Ok(words[1..].to_vec())
    };
    let with_code = next()?;
    let spelled_out = next()?;
    ensure!(
        with_code.len() == 2 && with_code[1].starts_with("tg1:"),
        "the first get command is not `get CODE`: {with_code:?}"
    );
    Ok((with_code, spelled_out))
}

/// Runs on host B the `get` command printed on host A, with B's own identity and output
/// directory, and checks the bytes it wrote.
fn get_on_b(lan: &Lan, dir: &Path, get_args: &[String], expected: &[u8]) -> Result<()> {
    let out = dir.join("b-out");
    let mut cmd = lan.b().command(agent_bin());
    cmd.arg("--data-dir")
        .arg(dir.join("b-id"))
        .args(get_args)
        .arg("-o")
        .arg(&out);
    let mut get = Proc::spawn("get on host B", cmd)?;
    get.expect_exit(0)
        .with_context(|| format!("host B: {}", get.transcript()))?;
    assert_same(&out.join("dataset.bin"), expected)
}

/// The README's LAN flow with the embedded tracker: `share X --tracker-listen 0.0.0.0:…` on A
/// prints a `get` command naming an address B can reach, and B's `get` completes. On main
/// before issue 9 the seeder was listed as 127.0.0.1 and B looped on "connection refused".
#[test]
fn readme_lan_flow_with_the_embedded_tracker() -> Result<()> {
    let Some(lan) = Lan::create()? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let file = dir.path().join("dataset.bin");
    let data = write_random_file(&file, 2_000_000 + 77, 9)?;

    let mut cmd = lan.a().command(agent_bin());
    cmd.arg("--data-dir")
        .arg(dir.path().join("a-id"))
        .arg("share")
        .arg(&file)
        .args(["--tracker-listen", "0.0.0.0:0", "--chunk-size", CHUNK]);
    let mut share = Proc::spawn("share on host A", cmd)?;
    let (get_code, get_args) = printed_get_commands(&mut share)?;
    let url = get_args
        .iter()
        .find(|w| w.starts_with("https://"))
        .context("no tracker URL in the printed get command")?;
    ensure!(
        url.starts_with(&format!("https://{}:", lan.a_ip())),
        "the printed command must name an address host B can reach, not {url}"
    );
    // The README's command: the share code alone carries that address and the pin.
    get_on_b(&lan, dir.path(), &get_code, &data)?;
    share.signal("INT")?;
    share.wait_exit(WAIT)?;
    Ok(())
}

/// The same with a standalone tracker on host A that A's seeder reaches over loopback (so the
/// tracker sees it as 127.0.0.1): B, asking through A's LAN address, must be told that address.
#[test]
fn standalone_tracker_reached_over_loopback_by_the_seeder() -> Result<()> {
    standalone_flow(|_| Vec::new())
}

/// The same, with the seeder stating its reachable address itself (`--advertise`), as it must
/// behind NAT: the tracker lists what it advertised.
#[test]
fn standalone_tracker_with_an_advertised_address() -> Result<()> {
    standalone_flow(|lan| vec!["--advertise".into(), lan.a_ip().to_string()])
}

fn standalone_flow(share_extra: impl Fn(&Lan) -> Vec<String>) -> Result<()> {
    let Some(lan) = Lan::create()? else {
        return Ok(());
    };
    let dir = TempDir::new()?;
    let file = dir.path().join("dataset.bin");
    let data = write_random_file(&file, 1_500_000 + 5, 11)?;

    let mut cmd = lan.a().command(tracker_bin());
    cmd.args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("tracker"));
    let mut tracker = Proc::spawn("tracker on host A", cmd)?;
    let ready = tracker.wait_line(WAIT, |l| l.contains(" listening on "))?;
    let word = |prefix: &str| {
        ready
            .split_whitespace()
            .find(|w| w.starts_with(prefix))
            .map(str::to_string)
            .with_context(|| format!("no {prefix} in {ready:?}"))
    };
    let (printed_url, fingerprint) = (word("https://")?, word("sha256:")?);
    let port = printed_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .context("tracker port")?;
    // The seeder on host A reaches its tracker over loopback: the case that failed.
    let local_url = format!("https://127.0.0.1:{port}");

    let mut cmd = lan.a().command(agent_bin());
    cmd.arg("--data-dir")
        .arg(dir.path().join("a-id"))
        .arg("--json")
        .arg("share")
        .arg(&file)
        .args([
            "--tracker",
            &local_url,
            "--tracker-fingerprint",
            &fingerprint,
        ])
        .args(["--chunk-size", CHUNK])
        .args(share_extra(&lan));
    let mut share = Proc::spawn("share on host A", cmd)?;
    let seeding = share.wait_event("seeding", |_| true)?;
    let file_id = seeding["file_id"].as_str().context("file_id")?.to_string();

    let remote_url = format!("https://{}:{port}", lan.a_ip());
    let get_args: Vec<String> = [
        "get",
        &file_id,
        "--tracker",
        &remote_url,
        "--tracker-fingerprint",
        &fingerprint,
    ]
    .map(str::to_string)
    .to_vec();
    get_on_b(&lan, dir.path(), &get_args, &data)?;
    Ok(())
}
