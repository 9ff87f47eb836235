//! End-to-end tests of issue 9's download rules, with the real binaries as processes on
//! ephemeral loopback ports: downloads never share a `.part` or an output (one `get` with two
//! ids of one name, two `get`s into one directory, the same id twice), a dead seeder is
//! explained and `--timeout` gives up, and `-o` naming a file says so.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, anyhow, ensure};
use tempfile::TempDir;

use common::*;

fn tmp() -> Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("tg-dl-").tempdir()?)
}

/// What `dir` holds, by name, sorted (missing directory: nothing).
fn names(dir: &Path) -> Result<Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// Issue 9, blocker 3: `share d1/dup.bin d2/dup.bin` then one `get ID1 ID2`: refused as a
/// usage error naming both ids before anything is fetched (nothing written, no orphan state).
/// The same id twice is downloaded once, verified, with a note.
#[test]
fn two_ids_of_one_name_are_refused_and_one_id_twice_is_one_download() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    for d in ["d1", "d2"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let one = write_random_file(&root.join("d1/dup.bin"), 300_000, 91)?;
    write_random_file(&root.join("d2/dup.bin"), 300_000, 92)?;
    let mut cmd = agent(&root.join("s"));
    cmd.arg("share")
        .arg(root.join("d1/dup.bin"))
        .arg(root.join("d2/dup.bin"))
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0", "--chunk-size", CHUNK]);
    let mut seeder = Proc::spawn("seeder", cmd)?;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let e = seeder.wait_event("seeding", |_| true)?;
        ids.push(
            e["file_id"]
                .as_str()
                .ok_or_else(|| anyhow!("no file_id: {e}"))?
                .to_string(),
        );
    }
    ensure!(ids[0] != ids[1], "different contents, one id: {ids:?}");

    let out = root.join("out");
    let mut both = get(
        "get-both",
        &root.join("d"),
        &ids[0],
        &out,
        &tracker,
        &[ids[1].as_str()],
    )?;
    both.expect_exit(2)?;
    let stderr = both.stderr();
    ensure!(
        stderr.contains(&ids[0]) && stderr.contains(&ids[1]) && stderr.contains("-o"),
        "the refusal does not name both ids and the way out: {stderr}"
    );
    ensure!(both.events("completed").is_empty(), "{}", both.transcript());
    ensure!(
        names(&out)?.is_empty(),
        "refused get left {:?}",
        names(&out)?
    );

    let mut twice = get(
        "get-twice",
        &root.join("d"),
        &ids[0],
        &out,
        &tracker,
        &[ids[0].as_str()],
    )?;
    twice.wait_event("completed", |_| true)?;
    twice.expect_exit(0)?;
    ensure!(
        twice.events("completed").len() == 1,
        "{}",
        twice.transcript()
    );
    ensure!(twice.stderr().contains("note:"), "{}", twice.transcript());
    assert_same(&out.join("dup.bin"), &one)?;
    ensure!(names(&out)? == ["dup.bin"], "left {:?}", names(&out)?);
    Ok(())
}

/// Issue 9, blocker 3: a second `get` process into the directory where a first is writing the
/// same `.part` is refused at once (the lock); the first completes and its file is verified.
#[test]
fn a_second_get_into_the_same_directory_is_refused_at_once() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("locked.bin");
    let data = write_random_file(&file, 3_000_000, 93)?;
    let (_seeder, id) = share(
        "seeder",
        &root.join("s"),
        &file,
        &tracker,
        &["--upload-limit", "1M"],
    )?;
    let out = root.join("out");
    let mut first = get("get-1", &root.join("d1"), &id, &out, &tracker, &[])?;
    first.wait_event("progress", |e| num(e, "chunks_done") >= 5)?;
    let mut second = get("get-2", &root.join("d2"), &id, &out, &tracker, &[])?;
    second.expect_exit(1)?;
    let stderr = second.stderr();
    ensure!(
        stderr.contains("locked") && stderr.contains("another download"),
        "the refusal does not say why: {stderr}"
    );
    ensure!(
        first.alive() && first.events("completed").is_empty(),
        "the first finished before the second was refused; the test proves nothing\n{}",
        first.transcript()
    );
    first.wait_event("completed", |_| true)?;
    first.expect_exit(0)?;
    assert_same(&out.join("locked.bin"), &data)?;
    ensure!(names(&out)? == ["locked.bin"], "left {:?}", names(&out)?);
    Ok(())
}

/// Issue 9: the only seeder SIGKILLed mid-transfer: the downloader's `waiting` events say why
/// (each peer's last error), and `--timeout 3s` gives up with exit 1 keeping `.part` and state.
/// A rerun waits on the dead seeder, picks up a new one as soon as it appears, and completes.
#[test]
fn dead_seeder_is_explained_timeout_gives_up_and_a_new_seeder_finishes() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("dead.bin");
    let data = write_random_file(&file, 3_000_000, 94)?;
    let limit = ["--upload-limit", "500K"];
    let (mut victim, id) = share("seeder-a", &root.join("a"), &file, &tracker, &limit)?;
    let out = root.join("out");
    let d_dir = root.join("d");
    let mut d = get("get-1", &d_dir, &id, &out, &tracker, &["--timeout", "3s"])?;
    d.wait_event("progress", |e| num(e, "chunks_done") >= 20)?;
    ensure!(d.events("completed").is_empty(), "already completed");
    victim.kill()?;
    let killed = Instant::now();
    // Each reconnect is refused; the event says so, per peer and in its one-line reason.
    let waiting = d.wait_event("waiting", |e| {
        e["peers"].as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["last_error"]
                    .as_str()
                    .is_some_and(|r| r.contains("connecting to"))
            })
        })
    })?;
    ensure!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("connecting to")),
        "no reason in the line: {waiting}"
    );
    d.expect_exit(1)?;
    let gave_up = killed.elapsed();
    ensure!(
        gave_up < WAIT / 4,
        "--timeout 3s gave up only after {gave_up:?}"
    );
    ensure!(
        d.stderr().contains("no verified data for 3s"),
        "{}",
        d.transcript()
    );
    ensure!(out.join("dead.bin.part").exists(), "no .part kept");
    ensure!(out.join("dead.bin.part.tgstate").exists(), "no state kept");

    // The rerun first finds only the dead seeder, then a new one appears.
    let mut again = get("get-2", &d_dir, &id, &out, &tracker, &[])?;
    let started = again.wait_event("started", |_| true)?;
    ensure!(
        num(&started, "chunks_have") >= 20,
        "did not resume: {started}"
    );
    again.wait_event("waiting", |_| true)?;
    let (_seeder_b, id_b) = share("seeder-b", &root.join("b"), &file, &tracker, &[])?;
    ensure!(id == id_b, "same file, another id");
    again.wait_event("completed", |_| true)?;
    again.expect_exit(0)?;
    assert_same(&out.join("dead.bin"), &data)?;
    ensure!(names(&out)? == ["dead.bin"], "left {:?}", names(&out)?);
    Ok(())
}

/// Issue 9: `-o` naming an existing regular file says it is a file (usage error), and leaves
/// it alone.
#[test]
fn output_naming_a_file_says_it_is_a_file() -> Result<()> {
    let dir = tmp()?;
    let target = dir.path().join("notes.txt");
    std::fs::write(&target, b"keep me")?;
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--data-dir")
        .arg(dir.path().join("d"))
        .arg("get")
        .arg("ab".repeat(32))
        .arg("-o")
        .arg(&target)
        // Never contacted: the output is checked first.
        .args(["--tracker", "https://127.0.0.1:9"])
        .arg("--tracker-fingerprint")
        .arg(format!("sha256:{}", "cd".repeat(32)));
    let mut p = Proc::spawn("get", cmd)?;
    p.expect_exit(2)?;
    let stderr = p.stderr();
    ensure!(
        stderr.contains("is a file, not a directory") && !stderr.contains("File exists"),
        "{stderr}"
    );
    ensure!(
        std::fs::read(&target)? == b"keep me",
        "the file was touched"
    );
    Ok(())
}

/// Issue 13 §1: `get --download-limit 1M` fetches a 3 MB file from an unlimited seeder in no
/// less than (size - burst) / limit by its own clock, the burst being 100 ms of the rate and
/// one chunk (unlimited, this takes well under a second on loopback).
#[test]
fn get_download_limit_holds_the_transfer_to_the_limit() -> Result<()> {
    const RATE: f64 = 1_048_576.0;
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("limited.bin");
    let data = write_random_file(&file, 3_000_000, 95)?;
    let (_seeder, id) = share("seeder", &root.join("s"), &file, &tracker, &[])?;
    let out = root.join("out");
    let mut d = get(
        "get",
        &root.join("d"),
        &id,
        &out,
        &tracker,
        &["--download-limit", "1M"],
    )?;
    let done = d.wait_event("completed", |_| true)?;
    d.expect_exit(0)?;
    assert_same(&out.join("limited.bin"), &data)?;
    let fetched = num(&done, "bytes_fetched") as f64;
    let secs = done["secs"]
        .as_f64()
        .ok_or_else(|| anyhow!("no secs: {done}"))?;
    ensure!(fetched == data.len() as f64, "fetched {fetched} bytes");
    let floor = (fetched - RATE / 10.0 - CHUNK_BYTES as f64) / RATE;
    ensure!(
        secs >= floor,
        "{fetched} bytes in {secs} s: faster than 1 MiB/s allows ({floor:.2} s)"
    );
    Ok(())
}
