//! `torrentguard daemon` as processes: the CLI hands `share` and `get` to it, a crash in the
//! middle of a download is resumed at the next start (not fetched again), and a restart
//! seeds every share again without hashing what did not change.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use common::{Proc, Tracker, agent, cli_events, daemon, eventually, write_random_file};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// The daemon's view of `id` (as `status --json` lists it).
fn transfer(dir: &Path, kind: &str, id: &str) -> Result<Value> {
    let status = cli_events(dir, &["status"])?;
    let list = status
        .first()
        .and_then(|s| s["transfers"].as_array().cloned())
        .ok_or_else(|| anyhow!("no transfers in {status:?}"))?;
    list.into_iter()
        .find(|t| t["id"] == id && t["kind"] == kind)
        .ok_or_else(|| anyhow!("no {kind} {id} in the daemon"))
}

#[test]
fn a_daemon_restart_resumes_a_crashed_download_and_reseeds_shares() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tracker = Tracker::start(&tmp.path().join("tracker"))?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let file = tmp.path().join("big.bin");
    let data = write_random_file(&file, 6 << 20, 11)?;
    // A slow seeder, so the download is caught half-way.
    let mut seeder_args = tracker.args();
    seeder_args.extend([
        "--upload-limit".into(),
        "1M".into(),
        "--chunk-size".into(),
        "64K".into(),
    ]);
    let (mut seeder, _) = daemon("daemon-a", &a, &seeder_args)?;
    let added = cli_events(&a, &["share", file.to_str().unwrap()])?;
    let id = added[0]["id"].as_str().context("share added")?.to_string();
    assert!(
        added[0]["share_code"]
            .as_str()
            .is_some_and(|c| c.starts_with("tg1:"))
    );

    let (mut getter, _) = daemon("daemon-b", &b, &[])?;
    let out = tmp.path().join("out");
    let mut get = vec!["get", &id, "-o", out.to_str().unwrap()];
    let targs = tracker.args();
    get.extend(targs.iter().map(String::as_str));
    cli_events(&b, &get)?;
    // Until the state file on disk (what a crash leaves) holds 1 MiB: 16 chunks of 64 KiB.
    let part_dir = out.to_str().unwrap().to_string();
    eventually(WAIT, "a sixth of the download saved", || {
        let status = cli_events(&b, &["status", "--no-daemon", "-o", &part_dir])?;
        let saved = status[0]["partials"]
            .as_array()
            .and_then(|p| p.first())
            .and_then(|p| p["chunks_verified"].as_u64())
            .unwrap_or(0);
        Ok((saved >= 16).then_some(()))
    })?;
    getter.kill()?; // a crash: no goodbye, state as it lies on disk

    let (_getter, _) = daemon("daemon-b-again", &b, &[])?;
    let done = eventually(WAIT, "the resumed download", || {
        let t = transfer(&b, "download", &id)?;
        Ok((t["status"] == "seeding").then_some(t))
    })?;
    common::assert_same(&out.join("big.bin"), &data)?;
    let reused = done["bytes_reused"].as_u64().unwrap_or(0);
    assert!(reused >= 1 << 20, "resumed, not fetched again: {done}");

    // The seeder stops and starts: its share seeds again, taken back without hashing.
    seeder.signal("TERM")?;
    seeder.expect_exit(0)?;
    let (again, _) = daemon("daemon-a-again", &a, &seeder_args)?;
    let t = eventually(WAIT, "the share seeding again", || {
        let t = transfer(&a, "share", &id)?;
        Ok((t["status"] == "seeding").then_some(t))
    })?;
    assert_eq!(t["path"], file.display().to_string());
    assert!(
        !again.stderr().contains("hashing a share again"),
        "an unchanged share is not hashed again: {}",
        again.stderr()
    );
    Ok(())
}

#[test]
fn the_cli_pauses_resumes_and_removes_through_the_daemon() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tracker = Tracker::start(&tmp.path().join("tracker"))?;
    let a = tmp.path().join("a");
    let (_d, _) = daemon("daemon", &a, &tracker.args())?;
    let file = tmp.path().join("f.bin");
    write_random_file(&file, 100_000, 3)?;
    let id = cli_events(&a, &["share", file.to_str().unwrap()])?[0]["id"]
        .as_str()
        .context("an id")?
        .to_string();
    let prefix = &id[..8];
    let paused = cli_events(&a, &["pause", prefix])?;
    assert_eq!(paused[0]["event"], "paused", "{paused:?}");
    assert_eq!(transfer(&a, "share", &id)?["status"], "paused");
    cli_events(&a, &["resume", prefix])?;
    eventually(WAIT, "seeding again", || {
        Ok((transfer(&a, "share", &id)?["status"] == "seeding").then_some(()))
    })?;
    cli_events(&a, &["rm", &id])?;
    assert!(transfer(&a, "share", &id).is_err(), "removed");
    // An unknown id is the user's mistake: exit 2 with a reason.
    let out = agent(&a).args(["pause", "ffffffff"]).output()?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    Ok(())
}

#[test]
fn one_daemon_per_data_dir_and_control_needs_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    // No daemon: pause says how to start one (usage error).
    let out = agent(&a).args(["pause", "abcd"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("torrentguard daemon"),
        "{out:?}"
    );
    let (_first, _) = daemon("first", &a, &[])?;
    let mut second = Proc::spawn("second", {
        let mut c: Command = agent(&a);
        c.args(["daemon", "--listen", "127.0.0.1:0"]);
        c
    })?;
    second.expect_exit(1)?;
    assert!(
        second.transcript().contains("already runs"),
        "{}",
        second.transcript()
    );
    Ok(())
}

#[test]
fn the_ui_command_prints_a_fresh_login_url_that_opens_a_session() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    let (_d, _) = daemon("daemon", &a, &["--ui".into(), "127.0.0.1:0".into()])?;
    let ev = cli_events(&a, &["ui"])?;
    let url = ev[0]["url"].as_str().context("a url")?.to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/login?token="),
        "{url}"
    );
    let rt = tokio::runtime::Runtime::new()?;
    let (first, again) = rt.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let first = http.get(&url).send().await?;
        let again = http.get(&url).send().await?;
        anyhow::Ok((first, again))
    })?;
    assert_eq!(first.status(), 303, "the link opens a session");
    assert!(first.headers().contains_key("set-cookie"));
    assert!(
        again.status().is_client_error(),
        "and only once: {}",
        again.status()
    );
    Ok(())
}

/// `daemon --tracker-listen`: the daemon runs its own tracker, its shares' codes name it, and
/// another daemon fetches by code alone; `get CODE --wait` returns once the file is verified.
#[test]
fn a_daemon_with_its_own_tracker_shares_by_code() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let own = ["--tracker-listen".to_string(), "127.0.0.1:0".to_string()];
    let (_seeder, ready) = daemon("daemon-a", &a, &own)?;
    assert!(
        ready["tracker"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:"))
    );
    let file = tmp.path().join("own.bin");
    let data = write_random_file(&file, 700_000, 21)?;
    let added = cli_events(&a, &["share", file.to_str().unwrap()])?;
    let code = added[0]["share_code"]
        .as_str()
        .context("a code")?
        .to_string();

    let (_getter, _) = daemon("daemon-b", &b, &[])?;
    let out = tmp.path().join("out");
    let got = cli_events(&b, &["get", &code, "-o", out.to_str().unwrap(), "--wait"])?;
    let done = got
        .iter()
        .find(|e| e["event"] == "done")
        .context("a done event")?;
    assert_eq!(done["status"], "seeding", "{done}");
    common::assert_same(&out.join("own.bin"), &data)
}

/// A daemon that starts before its tracker (a reboot) waits for it: the share says it is
/// retrying, then seeds once the tracker is back on its address.
#[test]
fn a_share_waits_for_a_tracker_that_is_down_at_start() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tracker_dir = tmp.path().join("tracker");
    let mut tracker = Tracker::start(&tracker_dir)?;
    let port = tracker.port;
    let a = tmp.path().join("a");
    let file = tmp.path().join("w.bin");
    write_random_file(&file, 50_000, 31)?;
    let args = tracker.args();
    let (mut first, _) = daemon("daemon-a", &a, &args)?;
    let id = cli_events(&a, &["share", file.to_str().unwrap()])?[0]["id"]
        .as_str()
        .context("an id")?
        .to_string();
    first.signal("TERM")?;
    first.expect_exit(0)?;
    tracker.proc.kill()?;

    let (_again, _) = daemon("daemon-a-again", &a, &args)?;
    eventually(WAIT, "the share retrying", || {
        let t = transfer(&a, "share", &id)?;
        let retrying = t["error"].as_str().is_some_and(|e| e.contains("retrying"));
        Ok(retrying.then_some(()))
    })?;
    let _tracker = Tracker::start_on(&tracker_dir, port)?;
    eventually(WAIT, "the share seeding once the tracker is back", || {
        let t = transfer(&a, "share", &id)?;
        Ok((t["status"] == "seeding" && t["error"].is_null()).then_some(()))
    })?;
    Ok(())
}
