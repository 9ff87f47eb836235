//! End-to-end tests of issue 11: directory shares and chunk reuse, with the real binaries as
//! processes on ephemeral loopback ports. A folder shared as one id comes back byte-identical
//! (tree, modes, empty directories) by `diff -r`; `--only` fetches a subset; an interrupted tree
//! download resumes; `--reuse` of an old version moves only the changed chunks over the wire,
//! counted by the agent itself.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tempfile::TempDir;

use common::*;

fn tmp() -> Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("tg-tree-").tempdir()?)
}

/// A small dataset: nested folders, an empty file, an empty folder, an executable, a file of
/// many chunks and two identical files.
fn dataset(root: &Path) -> Result<()> {
    for d in ["set/docs/img", "set/bin", "set/empty-dir"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    write_random_file(&root.join("set/big.bin"), 700_000, 1)?;
    write_random_file(&root.join("set/docs/a.txt"), 5_000, 2)?;
    write_random_file(&root.join("set/docs/img/b.png"), 40_000, 3)?;
    write_random_file(&root.join("set/docs/img/copy.png"), 40_000, 3)?;
    std::fs::write(root.join("set/empty.txt"), b"")?;
    std::fs::write(root.join("set/bin/run.sh"), b"#!/bin/sh\necho ok\n")?;
    std::fs::set_permissions(
        root.join("set/bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::set_permissions(
        root.join("set/docs/a.txt"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    Ok(())
}

/// `get ID -o OUT` run to its end: the `completed` event, after a 0 exit.
fn fetched(
    name: &str,
    root: &Path,
    id: &str,
    out: &Path,
    tracker: &Tracker,
    extra: &[&str],
) -> Result<serde_json::Value> {
    let mut g = get(name, &root.join("d"), id, out, tracker, extra)?;
    let done = g.wait_event("completed", |_| true)?;
    g.expect_exit(0)?;
    Ok(done)
}

/// `diff -r` of two trees: empty output or the differences.
fn diff_r(a: &Path, b: &Path) -> Result<()> {
    let out = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .context("running diff -r")?;
    ensure!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

#[test]
fn a_folder_shared_as_one_id_comes_back_identical() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    dataset(root)?;
    std::os::unix::fs::symlink("/etc/hostname", root.join("set/link"))?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut seeder, id) = share("seeder", &root.join("s"), &root.join("set"), &tracker, &[])?;
    let warnings = seeder.events("warning");
    ensure!(
        warnings
            .iter()
            .any(|w| w["message"].as_str().is_some_and(|m| m.contains("link"))),
        "the skipped symlink is not named: {}",
        seeder.transcript()
    );
    let out = root.join("out");
    let done = fetched("get", root, &id, &out, &tracker, &[])?;
    ensure!(
        done["path"].as_str() == Some(out.join("set").to_str().unwrap_or_default()),
        "{done}"
    );
    // docs/img/copy.png is b.png again: its chunks are written from b.png's, never fetched.
    ensure!(
        num(&done, "bytes_fetched") == num(&done, "bytes") - 40_000,
        "identical files were fetched twice: {done}"
    );
    std::fs::remove_file(root.join("set/link"))?;
    diff_r(&root.join("set"), &out.join("set"))?;
    ensure!(mode(&out.join("set/bin/run.sh"))? == 0o755);
    ensure!(mode(&out.join("set/docs/a.txt"))? == 0o600);
    ensure!(out.join("set/empty-dir").is_dir(), "empty directory lost");
    ensure!(
        !out.join(".set.part").exists() && !out.join(".set.part.tgstate").exists(),
        "leftovers: {:?}",
        tree(&out)?
    );

    // Again into the same place: already there, nothing fetched, nothing overwritten.
    let done = fetched("again", root, &id, &out, &tracker, &[])?;
    ensure!(num(&done, "chunks_fetched") == 0, "{done}");
    seeder.kill()?;
    Ok(())
}

#[test]
fn only_fetches_the_selected_files() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    dataset(root)?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut seeder, id) = share("seeder", &root.join("s"), &root.join("set"), &tracker, &[])?;
    let out = root.join("out");
    let done = fetched(
        "get",
        root,
        &id,
        &out,
        &tracker,
        &["--only", "docs/img/**", "--only", "bin"],
    )?;
    let got: Vec<String> = tree(&out.join("set"))?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    ensure!(
        got == [
            "bin",
            "bin/run.sh",
            "docs",
            "docs/img",
            "docs/img/b.png",
            "docs/img/copy.png"
        ],
        "{got:?}"
    );
    diff_r(&root.join("set/docs/img"), &out.join("set/docs/img"))?;
    ensure!(
        num(&done, "bytes_fetched") < 100_000,
        "fetched more than the selection: {done}"
    );
    seeder.kill()?;
    Ok(())
}

#[test]
fn an_interrupted_tree_download_resumes() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    std::fs::create_dir_all(root.join("set/a"))?;
    for i in 0..8 {
        write_random_file(&root.join(format!("set/a/f{i}.bin")), 500_000, 10 + i)?;
    }
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut seeder, id) = share(
        "seeder",
        &root.join("s"),
        &root.join("set"),
        &tracker,
        &["--upload-limit", "1M"],
    )?;
    let out = root.join("out");
    let mut first = get("get-1", &root.join("d"), &id, &out, &tracker, &[])?;
    // Killed once a state file records verified chunks (saved about once a second).
    let state = out.join(".set.part.tgstate");
    eventually(Duration::from_secs(30), "a saved state", || {
        Ok(std::fs::read_to_string(&state)
            .ok()
            .filter(|s| s.contains("verified"))
            .map(|_| ()))
    })?;
    first.kill()?;
    ensure!(!out.join("set").exists(), "tree in place after a kill");
    ensure!(
        out.join(".set.part").is_dir(),
        "no .set.part/ after the kill"
    );

    let mut second = get("get-2", &root.join("d"), &id, &out, &tracker, &[])?;
    let started = second.wait_event("started", |_| true)?;
    ensure!(
        num(&started, "chunks_have") > 0,
        "did not resume: {started}"
    );
    second.wait_event("completed", |_| true)?;
    second.expect_exit(0)?;
    diff_r(&root.join("set"), &out.join("set"))?;
    seeder.kill()?;
    Ok(())
}

/// Issue 11 §3: the same 4 MiB file with 5 % of its chunks changed in place: `get --reuse OLD`
/// fetches only the changed chunks, by the agent's own byte counters.
#[test]
fn reuse_of_an_old_version_fetches_only_changed_chunks() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let old = root.join("v1.img");
    let mut data = write_random_file(&old, 4 << 20, 77)?;
    let chunks = data.len() as u64 / CHUNK_BYTES;
    let changed: Vec<u64> = (0..chunks).step_by(20).collect(); // 5 %
    for c in &changed {
        data[(c * CHUNK_BYTES) as usize] ^= 0x5a;
    }
    std::fs::create_dir_all(root.join("new"))?;
    let new = root.join("new/v2.img");
    std::fs::write(&new, &data)?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut seeder, id) = share("seeder", &root.join("s"), &new, &tracker, &[])?;
    let out = root.join("out");
    let old_arg = old.to_str().unwrap_or_default();
    let done = fetched("get", root, &id, &out, &tracker, &["--reuse", old_arg])?;
    assert_same(&out.join("v2.img"), &data)?;
    let fetched = num(&done, "bytes_fetched");
    let reused = num(&done, "bytes_reused");
    ensure!(
        fetched == changed.len() as u64 * CHUNK_BYTES,
        "fetched {fetched} bytes, expected the {} changed chunks: {done}",
        changed.len()
    );
    ensure!(fetched + reused == data.len() as u64, "{done}");
    seeder.kill()?;
    Ok(())
}

/// `share --follow-symlinks`: a link to a file inside the folder is shared (and served) as that
/// file; a link leaving the folder is skipped with a warning naming it.
#[test]
fn followed_links_inside_the_folder_are_shared_as_files() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    std::fs::create_dir_all(root.join("set/real"))?;
    let data = write_random_file(&root.join("set/real/data.bin"), 50_000, 5)?;
    std::os::unix::fs::symlink("real/data.bin", root.join("set/alias.bin"))?;
    std::os::unix::fs::symlink("/etc/hostname", root.join("set/outside"))?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut seeder, id) = share(
        "seeder",
        &root.join("s"),
        &root.join("set"),
        &tracker,
        &["--follow-symlinks"],
    )?;
    let warned = seeder.events("warning");
    ensure!(
        warned.len() == 1 && warned[0]["message"].to_string().contains("outside"),
        "{warned:?}"
    );
    let out = root.join("out");
    fetched("get", root, &id, &out, &tracker, &[])?;
    assert_same(&out.join("set/alias.bin"), &data)?;
    assert_same(&out.join("set/real/data.bin"), &data)?;
    ensure!(!out.join("set/alias.bin").is_symlink() && !out.join("set/outside").exists());
    seeder.kill()?;
    Ok(())
}

/// Issue 12 §1 (the chain of trust): a download checks every chunk before writing it and says
/// so; `--verify-full` also hashes the file whole; `torrentguard verify PATH ID` checks what is
/// on disk later, file or folder, and says what differs.
#[test]
fn verify_checks_what_is_on_disk_against_the_manifest() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    dataset(root)?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut tree_seeder, tree_id) = share(
        "seeder-tree",
        &root.join("s1"),
        &root.join("set"),
        &tracker,
        &[],
    )?;
    let (mut file_seeder, file_id) = share(
        "seeder-file",
        &root.join("s2"),
        &root.join("set/big.bin"),
        &tracker,
        &[],
    )?;
    let out = root.join("out");
    let plain = fetched("get", root, &file_id, &out, &tracker, &[])?;
    ensure!(plain["whole_file_checked"] == false, "{plain}");
    let full_out = root.join("full");
    let full = fetched(
        "get-full",
        root,
        &file_id,
        &full_out,
        &tracker,
        &["--verify-full"],
    )?;
    ensure!(full["whole_file_checked"] == true, "{full}");
    fetched("get-tree", root, &tree_id, &out, &tracker, &[])?;

    let verify = |path: &Path, id: &str| -> Result<std::process::Output> {
        let mut cmd = agent(&root.join("d"));
        cmd.arg("verify").arg(path).arg(id).args(tracker.args());
        Ok(cmd.output()?)
    };
    let ok = verify(&out.join("big.bin"), &file_id)?;
    ensure!(
        ok.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let ok = verify(&out.join("set"), &tree_id)?;
    ensure!(
        ok.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // One byte changed in each, and a file removed from the tree.
    for p in [out.join("big.bin"), out.join("set/docs/a.txt")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        let f = std::fs::OpenOptions::new().write(true).open(&p)?;
        std::os::unix::fs::FileExt::write_all_at(&f, b"!", 100)?;
    }
    std::fs::remove_file(out.join("set/empty.txt"))?;
    for (path, id, says) in [
        (out.join("big.bin"), &file_id, r#""bad":[0]"#),
        (out.join("set"), &tree_id, "empty.txt is missing"),
    ] {
        let bad = verify(&path, id)?;
        let text = String::from_utf8_lossy(&bad.stdout);
        ensure!(
            bad.status.code() == Some(1) && text.contains(r#""ok":false"#) && text.contains(says),
            "{path:?}: {text}"
        );
    }
    tree_seeder.kill()?;
    file_seeder.kill()?;
    Ok(())
}
