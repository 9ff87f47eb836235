//! End-to-end tests of how agents stop (issue 9): a seeder interrupted with a downloader
//! connected, claims that die with their connection, a withdrawn file, and a `get` that ends
//! without finishing. Real processes on ephemeral loopback ports; every wait has a deadline
//! that bounds a hang, never a measure of speed.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use tempfile::TempDir;

use common::api::Api;
use common::*;

/// How long a stop may take before the test calls it a hang. The product's own budget is ~2 s;
/// the bound leaves room for a loaded CI machine while failing the ~40 s hang it replaces.
const STOP_BOUND: Duration = Duration::from_secs(10);

fn tmp() -> Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("tg-shutdown-").tempdir()?)
}

/// Whether the tracker lists `fingerprint` among the peers of `file_id`.
fn listed(api: &Api, file_id: &str, fingerprint: &str) -> Result<bool> {
    Ok(api
        .peers(file_id)?
        .iter()
        .any(|p| p["fingerprint"].as_str() == Some(fingerprint)))
}

/// A tracker and a file of `size` bytes shared by an agent in `root/s` with `extra` flags.
/// Returns the tracker, the sharer and the file id.
fn sharer(root: &Path, name: &str, size: usize, extra: &[&str]) -> Result<(Tracker, Proc, String)> {
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join(name);
    write_random_file(&file, size, 41)?;
    let (seeder, id) = share("seeder", &root.join("s"), &file, &tracker, extra)?;
    Ok((tracker, seeder, id))
}

/// A file shared at 1 MB/s, so a download is still running when the test acts. 16 MB: a
/// seeder that serves the rest before stopping (as it used to) overruns [`STOP_BOUND`].
fn paced_sharer(root: &Path, name: &str) -> Result<(Tracker, Proc, String)> {
    sharer(root, name, 16_000_000, &["--upload-limit", "1M"])
}

/// The process exits with `code` within [`STOP_BOUND`].
fn exits_promptly(p: &mut Proc, code: i32) -> Result<()> {
    let status = p.wait_exit(STOP_BOUND)?;
    ensure!(
        status.code() == Some(code),
        "{}: exit status {status}, expected {code}\n{}",
        p.name,
        p.transcript()
    );
    Ok(())
}

/// The downloader was told why its peer left (a `Bye` naming `why`) and carries on.
fn told_bye(downloader: &mut Proc, why: &str) -> Result<()> {
    downloader.wait_event("peer_dropped", |e| {
        e["reason"].as_str().is_some_and(|r| r.contains(why))
    })?;
    ensure!(
        downloader.alive(),
        "the downloader gave up\n{}",
        downloader.transcript()
    );
    Ok(())
}

/// Blocker 4: Ctrl-C on a paced seeder with a downloader mid-transfer: the seeder says `Bye`,
/// announces `stopped` and exits 130 at once (it used to keep serving for ~40 s and exit 0).
#[test]
fn interrupted_seeder_says_bye_leaves_the_swarm_and_exits_130() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let (tracker, mut seeder, id) = paced_sharer(root, "big.bin")?;
    let seeder_fp = identity(&root.join("s"))?;
    let mut d = get(
        "downloader",
        &root.join("d"),
        &id,
        &root.join("out"),
        &tracker,
        &[],
    )?;
    d.wait_event("progress", |e| num(e, "chunks_done") >= 20)?;

    seeder.signal("INT")?;
    exits_promptly(&mut seeder, 130)?;
    let api = Api::new(&tracker.url, &tracker.fingerprint, &root.join("s"))?;
    ensure!(
        !listed(&api, &id, &seeder_fp)?,
        "the tracker still lists the stopped seeder\n{}",
        seeder.transcript()
    );
    told_bye(&mut d, "shutting down")?;
    // With no seeder left it waits for one instead of retrying a dead address.
    d.wait_event("waiting", |_| true)?;
    Ok(())
}

/// A second Ctrl-C (or a SIGTERM after it) ends the process at once, still with 130.
#[test]
fn second_interrupt_exits_130_at_once() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let (tracker, mut seeder, id) = paced_sharer(root, "twice.bin")?;
    let mut d = get(
        "downloader",
        &root.join("d"),
        &id,
        &root.join("out"),
        &tracker,
        &[],
    )?;
    d.wait_event("progress", |e| num(e, "chunks_done") >= 20)?;
    seeder.signal("INT")?;
    seeder.signal("INT")?;
    seeder.signal("TERM").ok(); // it may be gone already
    exits_promptly(&mut seeder, 130)
}

/// Blocker 4 for `get --seed`: a downloader that finished and seeds, interrupted while another
/// downloader fetches from it, behaves as `share` does.
#[test]
fn interrupted_get_seed_says_bye_leaves_the_swarm_and_exits_130() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let (tracker, mut original, id) = sharer(root, "reseed.bin", 16_000_000, &[])?;
    let b_dir = root.join("b");
    let b_fp = identity(&b_dir)?;
    let mut b = get(
        "reseeder",
        &b_dir,
        &id,
        &root.join("out-b"),
        &tracker,
        &["--seed", "--upload-limit", "1M"],
    )?;
    b.wait_event("completed", |_| true)?;
    b.wait_event("seeding", |_| true)?;
    // Only B is left to fetch from.
    original.kill()?;

    let mut c = get(
        "downloader",
        &root.join("c"),
        &id,
        &root.join("out-c"),
        &tracker,
        &[],
    )?;
    c.wait_event("progress", |e| num(e, "chunks_done") >= 20)?;
    b.signal("INT")?;
    exits_promptly(&mut b, 130)?;
    let api = Api::new(&tracker.url, &tracker.fingerprint, &b_dir)?;
    ensure!(
        !listed(&api, &id, &b_fp)?,
        "the tracker still lists the stopped re-seeder\n{}",
        b.transcript()
    );
    told_bye(&mut c, "shutting down")
}

/// Blocker 5: three downloads in a row from one seeder: claims die with the connection that
/// made them, so the later downloaders are never answered `Busy` (they used to wait 2 s for a
/// downloader that had left). Counted by the seeder, reported in its `stopped` event.
#[test]
fn sequential_downloaders_are_never_answered_busy() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let (tracker, mut seeder, id) = sharer(root, "seq.bin", 5_000_000, &[])?;
    let data = std::fs::read(root.join("seq.bin"))?;
    for i in 0..3 {
        let out = root.join(format!("out{i}"));
        let mut d = get(&format!("d{i}"), &root.join("d"), &id, &out, &tracker, &[])?;
        d.wait_event("completed", |_| true)?;
        d.expect_exit(0)?;
        assert_same(&out.join("seq.bin"), &data)?;
    }
    seeder.signal("INT")?;
    exits_promptly(&mut seeder, 130)?;
    let stopped = seeder.events("stopped");
    let ours = stopped
        .iter()
        .find(|e| e["file_id"] == id.as_str())
        .ok_or_else(|| anyhow::anyhow!("no stopped event\n{}", seeder.transcript()))?;
    ensure!(
        num(ours, "uploaded") >= 3 * data.len() as u64,
        "three downloads should upload the file at least three times: {ours}"
    );
    ensure!(
        num(ours, "busy_refusals") == 0,
        "a later downloader was told Busy: {ours}"
    );
    Ok(())
}

/// A shared file changed on disk is withdrawn at once: the tracker stops listing the seeder
/// (`stopped`), and a connected downloader gets a `Bye` saying why instead of looping on
/// "file withdrawn" while the tracker still points at the seeder.
#[test]
fn changed_file_is_withdrawn_from_the_tracker_and_its_downloaders() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let (tracker, mut seeder, id) =
        sharer(root, "changing.bin", 4_000_000, &["--upload-limit", "1M"])?;
    let seeder_fp = identity(&root.join("s"))?;
    let mut d = get(
        "downloader",
        &root.join("d"),
        &id,
        &root.join("out"),
        &tracker,
        &[],
    )?;
    d.wait_event("progress", |e| num(e, "chunks_done") >= 20)?;

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("changing.bin"))?;
    std::io::Write::write_all(&mut f, b"edited")?;
    drop(f);

    told_bye(&mut d, "withdrawn")?;
    let bye = d.events("peer_dropped");
    ensure!(
        bye.iter()
            .any(|e| e["reason"].as_str().is_some_and(|r| r.contains("changed"))),
        "the Bye does not say why: {bye:?}"
    );
    seeder.wait_event("withdrawn", |e| e["file_id"] == id.as_str())?;
    let api = Api::new(&tracker.url, &tracker.fingerprint, &root.join("s"))?;
    eventually(STOP_BOUND, "the withdrawn seeder unlisted", || {
        Ok((!listed(&api, &id, &seeder_fp)?).then_some(()))
    })?;
    // The downloader learns there is nobody left rather than retrying the withdrawn seeder.
    d.wait_event("waiting", |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no peer has this file"))
    })?;
    ensure!(seeder.alive(), "withdrawing one file ended the sharer");
    Ok(())
}

/// A `get` whose only seeder died, interrupted with Ctrl-C: exit 130 and the tracker no longer
/// lists it right after the exit (it used to linger as a leecher for the peer TTL).
#[test]
fn interrupted_get_without_a_seeder_announces_stopped() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let (tracker, mut seeder, id) =
        sharer(root, "orphan.bin", 4_000_000, &["--upload-limit", "1M"])?;
    let d_dir = root.join("d");
    let d_fp = identity(&d_dir)?;
    let mut d = get("downloader", &d_dir, &id, &root.join("out"), &tracker, &[])?;
    d.wait_event("progress", |e| num(e, "chunks_done") >= 10)?;
    seeder.kill()?;
    d.wait_event("peer_dropped", |_| true)?;
    d.signal("INT")?;
    exits_promptly(&mut d, 130)?;
    let api = Api::new(&tracker.url, &tracker.fingerprint, &d_dir)?;
    ensure!(
        !listed(&api, &id, &d_fp)?,
        "the interrupted downloader is still listed\n{}",
        d.transcript()
    );
    Ok(())
}

/// Ctrl-C while `share` is still hashing a large file stops it with 130 at once (the signal
/// used to kill the process outright, and a stop would have waited for the hashing thread).
#[test]
fn share_interrupted_while_hashing_exits_130() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    // Sparse: costs no disk, and hashing 64 GiB takes far longer than the test waits.
    let file = root.join("huge.bin");
    std::fs::File::create(&file)?.set_len(64 << 30)?;
    let mut cmd = agent(&root.join("s"));
    cmd.arg("share")
        .arg(&file)
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0"]);
    let mut sharer = Proc::spawn("sharer", cmd)?;
    sharer.wait_event("hashing", |e| num(e, "bytes_done") > 0)?;
    sharer.signal("INT")?;
    exits_promptly(&mut sharer, 130)
}
