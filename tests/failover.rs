//! End-to-end tests of issue 14's agent failover, with the real binaries as processes on
//! ephemeral loopback ports: an agent given several trackers (flags or a share code) uses the
//! first that answers, skipping a dead one and one whose pin is wrong, and says why.

mod common;

use std::path::Path;

use anyhow::{Result, anyhow, ensure};
use tempfile::TempDir;

use common::*;

fn tmp() -> Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("tg-failover-").tempdir()?)
}

/// A loopback URL nothing listens on: its port was bound, then closed.
fn dead_tracker_url() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(format!("https://127.0.0.1:{}", l.local_addr()?.port()))
}

/// `tracker`'s URL with its pin, as one `--tracker` value.
fn pinned(tracker: &Tracker) -> String {
    format!(
        "{}#{}",
        tracker.url.trim_end_matches('/'),
        tracker.fingerprint
    )
}

/// `share FILE` with `trackers` (each a `--tracker`), waiting for its share code (printed once
/// the file is registered and seeding).
fn share_to(dir: &Path, file: &Path, trackers: &[String]) -> Result<(Proc, String)> {
    let mut cmd = agent(dir);
    cmd.arg("share").arg(file);
    for t in trackers {
        cmd.args(["--tracker", t]);
    }
    cmd.args(["--listen", "127.0.0.1:0", "--chunk-size", CHUNK]);
    let mut p = Proc::spawn("share", cmd)?;
    let code = p.wait_event("share_code", |_| true)?;
    let code = code["code"]
        .as_str()
        .ok_or_else(|| anyhow!("share_code event without code: {code}"))?
        .to_string();
    Ok((p, code))
}

/// A share to a dead tracker and a live one still registers and seeds; its code names both,
/// and `get CODE` fails over from the dead one to the live one and downloads.
#[test]
fn a_code_whose_first_tracker_is_dead_downloads_from_the_second() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("failover.bin");
    let data = write_random_file(&file, 200_000, 141)?;
    let dead = dead_tracker_url()?;
    let (_seeder, code) = share_to(&root.join("s"), &file, &[dead.clone(), pinned(&tracker)])?;

    let out = root.join("out");
    let mut cmd = agent(&root.join("d"));
    cmd.arg("get").arg(&code).arg("-o").arg(&out);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let mut get = Proc::spawn("get", cmd)?;
    get.wait_event("completed", |_| true)?;
    get.expect_exit(0)?;
    assert_same(&out.join("failover.bin"), &data)?;
    let stderr = get.stderr();
    ensure!(
        stderr.contains(&dead) && stderr.contains("trying the next one"),
        "the failover was not reported: {stderr}"
    );
    Ok(())
}

/// A tracker whose pin is wrong is skipped, with the reason on stderr; the next one serves.
#[test]
fn a_tracker_with_a_wrong_pin_is_skipped_with_a_clear_message() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("pinned.bin");
    let data = write_random_file(&file, 100_000, 142)?;
    let (_seeder, id) = share("seeder", &root.join("s"), &file, &tracker, &[])?;

    let wrong = format!(
        "{}#sha256:{}",
        tracker.url.trim_end_matches('/'),
        "ab".repeat(32)
    );
    let out = root.join("out");
    let mut cmd = agent(&root.join("d"));
    cmd.arg("get").arg(&id).arg("-o").arg(&out);
    cmd.args(["--tracker", &wrong, "--tracker", &pinned(&tracker)]);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let mut get = Proc::spawn("get", cmd)?;
    get.wait_event("completed", |_| true)?;
    get.expect_exit(0)?;
    assert_same(&out.join("pinned.bin"), &data)?;
    let stderr = get.stderr();
    ensure!(
        stderr.contains(&format!(
            "does not present the pinned fingerprint sha256:{}",
            "ab".repeat(32)
        )),
        "the wrong pin was not named: {stderr}"
    );
    Ok(())
}
