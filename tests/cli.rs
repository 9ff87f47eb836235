//! End-to-end tests of the `torrentguard` command line itself (issue 9): what it prints, where,
//! and how it ends. The real binaries run as processes on ephemeral loopback ports; every wait
//! is on what a process prints or on its exit, under a deadline.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tempfile::TempDir;

use common::*;

fn tmp() -> Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("tg-cli-").tempdir()?)
}

/// `torrentguard --data-dir DIR ARGS…` without `--json` (the harness's `agent` adds it).
fn plain(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--data-dir").arg(data_dir).args(args);
    cmd
}

/// Checks that `line` is a JSON object with an `event` key; returns it.
fn event_line(line: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("not JSON on stdout: {line:?}"))?;
    ensure!(v["event"].is_string(), "no \"event\" key: {line}");
    Ok(v)
}

/// Issue 9: `… | head -1`. The reader is gone before the first line is written (the read end of
/// the pipe is closed at once, so the write fails for sure, whatever the pipe's buffer): the
/// process ends silently, as coreutils tools do, by SIGPIPE, not with a panic and status 101.
#[test]
fn closed_stdout_ends_quietly_on_every_printing_path() -> Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("pipe.bin");
    write_random_file(&file, 100_000, 11)?;
    let out = root.join("out");
    std::fs::create_dir_all(&out)?;
    let cases: Vec<(&str, Command)> = vec![
        ("id", plain(&root.join("a"), &["id"])),
        ("id --json", plain(&root.join("a"), &["--json", "id"])),
        (
            "status -o DIR",
            plain(&root.join("a"), &["status", "-o", out.to_str().unwrap()]),
        ),
        // The renderer's path: the embedded tracker's line is the first thing share prints.
        ("share", {
            let mut c = plain(&root.join("a"), &["share", "--listen", "127.0.0.1:0"]);
            c.arg(&file);
            c
        }),
        ("share --json", {
            let mut c = plain(
                &root.join("a"),
                &["--json", "share", "--listen", "127.0.0.1:0"],
            );
            c.arg(&file);
            c
        }),
    ];
    for (what, cmd) in cases {
        let (status, stderr) = run_with_closed_stdout(what, cmd)?;
        ensure!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{what}: noisy end on a closed pipe: {stderr}"
        );
        ensure!(
            status.signal() == Some(libc_sigpipe()) || status.success(),
            "{what}: ended with {status} instead of SIGPIPE: {stderr}"
        );
    }
    Ok(())
}

/// Runs `cmd` with the read end of its stdout closed from the start; returns how it ended and
/// its stderr. A process that does not end within [`WAIT`] is killed and reported.
fn run_with_closed_stdout(what: &str, mut cmd: Command) -> Result<(ExitStatus, String)> {
    use std::io::Read as _;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    drop(child.stdout.take()); // the reader leaves at once
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("{what}: still running {WAIT:?} after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(10)); // polling try_wait, not synchronisation
    };
    let stderr = reader.join().unwrap_or_default();
    Ok((status, stderr))
}

/// SIGPIPE's number on every unix this runs on.
fn libc_sigpipe() -> i32 {
    13
}

/// Issue 9: logs carry no ANSI colour codes when stderr is not a terminal (even without
/// NO_COLOR), and with `--json` every log line on stderr is JSON.
#[test]
fn logs_are_plain_off_a_terminal_and_json_with_json() -> Result<()> {
    let dir = tmp()?;
    // A fresh identity logs "created a new agent identity" at info level (-v).
    let output = plain(&dir.path().join("a"), &["-v", "id"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "id failed: {stderr}");
    ensure!(
        stderr.contains("created a new agent identity"),
        "no log line: {stderr}"
    );
    ensure!(
        !stderr.contains('\x1b'),
        "ANSI codes in a piped log: {stderr:?}"
    );

    let output = plain(&dir.path().join("b"), &["-v", "--json", "id"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "id --json failed: {stderr}");
    ensure!(!stderr.trim().is_empty(), "no log line with -v --json");
    for line in stderr.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("a log line that is not JSON: {line:?}"))?;
        ensure!(v["level"].is_string(), "log line without level: {line}");
    }
    Ok(())
}

/// Issue 9: `-q` prints results only: `share -q` each file id (and, with --self-download, the
/// verdict), `get -q` the final path; no "downloading…", "seeding…" or "get it elsewhere".
#[test]
fn quiet_prints_results_only() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("quiet.bin");
    let data = write_random_file(&file, 300_000, 12)?;

    let mut cmd = plain(
        &root.join("s"),
        &["-q", "share", "--self-download", "--listen", "127.0.0.1:0"],
    );
    cmd.arg(&file);
    let mut share_q = Proc::spawn("share -q", cmd)?;
    share_q.expect_exit(0)?;
    let lines = &share_q.seen;
    ensure!(
        lines.len() == 2,
        "share -q: expected the id and the verdict\n{}",
        share_q.transcript()
    );
    ensure!(
        lines[0].len() == 64 && lines[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "share -q: first line is not a file id: {:?}",
        lines[0]
    );
    ensure!(lines[1].starts_with("self-download OK"), "{:?}", lines[1]);

    let tracker = Tracker::start(&root.join("tracker"))?;
    let (_seeder, id) = share("seeder", &root.join("s"), &file, &tracker, &[])?;
    let out = root.join("out");
    let mut cmd = plain(&root.join("d"), &["-q", "get", &id, "-o"]);
    cmd.arg(&out)
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0"]);
    let mut get_q = Proc::spawn("get -q", cmd)?;
    get_q.expect_exit(0)?;
    let path = out.join("quiet.bin");
    ensure!(
        get_q.seen == vec![path.display().to_string()],
        "get -q: expected only the final path\n{}",
        get_q.transcript()
    );
    assert_same(&path, &data)
}

/// Issue 9: with `--json`, every stdout line is a JSON object with an `event` key, on the
/// success path (`share --self-download`, `id`, `status`) and the failure path, where the last
/// event is `error` with the exit code.
#[test]
fn json_output_is_events_to_the_last_line() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("json.bin");
    write_random_file(&file, 200_000, 13)?;

    let mut cmd = agent(&root.join("s"));
    cmd.args(["share", "--self-download", "--listen", "127.0.0.1:0"])
        .arg(&file);
    let mut sharer = Proc::spawn("share --json", cmd)?;
    sharer.expect_exit(0)?;
    for line in &sharer.seen {
        event_line(line)?;
    }
    ensure!(
        !sharer.events("self_download").is_empty(),
        "{}",
        sharer.transcript()
    );

    let mut id = Proc::spawn("id --json", {
        let mut c = agent(&root.join("s"));
        c.arg("id");
        c
    })?;
    id.expect_exit(0)?;
    ensure!(id.seen.len() == 1, "{}", id.transcript());
    let v = event_line(&id.seen[0])?;
    ensure!(
        v["event"] == "identity" && v["fingerprint"].is_string(),
        "{v}"
    );

    let tracker = Tracker::start(&root.join("tracker"))?;
    let mut status = Proc::spawn("status --json", {
        let mut c = agent(&root.join("s"));
        c.arg("status").args(tracker.args());
        c
    })?;
    status.expect_exit(0)?;
    ensure!(status.seen.len() == 1, "{}", status.transcript());
    ensure!(event_line(&status.seen[0])?["event"] == "status");

    // Failure: an id the tracker does not know.
    let unknown = "ab".repeat(32);
    let mut failing = get(
        "get --json unknown",
        &root.join("d"),
        &unknown,
        &root.join("out"),
        &tracker,
        &[],
    )?;
    failing.expect_exit(1)?;
    ensure!(!failing.seen.is_empty(), "{}", failing.transcript());
    for line in &failing.seen {
        event_line(line)?;
    }
    let last = event_line(failing.seen.last().expect("checked non-empty"))?;
    ensure!(
        last["event"] == "error" && last["exit_code"] == 1 && last["message"].is_string(),
        "last event: {last}"
    );
    // A usage error ends a --json stream the same way, with exit code 2.
    let mut usage = Proc::spawn("get --json without ids", {
        let mut c = agent(&root.join("d"));
        c.arg("get");
        c
    })?;
    usage.expect_exit(2)?;
    ensure!(usage.seen.len() == 1, "{}", usage.transcript());
    let v = event_line(&usage.seen[0])?;
    ensure!(
        v["event"] == "error" && v["exit_code"] == 2 && v["message"].is_string(),
        "{v}"
    );
    ensure!(usage.stderr().is_empty(), "{}", usage.transcript());
    for line in failing.stderr().lines() {
        serde_json::from_str::<Value>(line)
            .with_context(|| format!("stderr line not JSON with --json: {line:?}"))?;
    }
    Ok(())
}

/// Issue 9: an interrupted `get --json` ends its stream with an `interrupted` event (exit 130),
/// and `status -o DIR` without any tracker shows the partial download it left, saying that the
/// tracker part is skipped.
#[test]
fn interrupted_json_stream_and_status_without_tracker() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("partial.bin");
    write_random_file(&file, 4_000_000, 14)?;
    let (_seeder, id) = share(
        "seeder",
        &root.join("s"),
        &file,
        &tracker,
        &["--upload-limit", "1M"],
    )?;
    let out = root.join("out");
    let mut first = get("downloader", &root.join("d"), &id, &out, &tracker, &[])?;
    first.wait_event("progress", |e| num(e, "chunks_done") >= 80)?;
    first.signal("INT")?;
    first.expect_exit(130)?;
    let last = event_line(first.seen.last().expect("events were seen"))?;
    ensure!(
        last["event"] == "interrupted" && last["exit_code"] == 130,
        "last event: {last}\n{}",
        first.transcript()
    );

    let mut status = Proc::spawn("status -o", {
        let mut c = plain(&root.join("d"), &["status", "-o"]);
        c.arg(&out).env_remove("TORRENTGUARD_TRACKER");
        c
    })?;
    status.expect_exit(0)?;
    let text = status.seen.join("\n");
    ensure!(
        text.contains("skipped") && text.contains("partial.bin.part") && text.contains(&id),
        "{}",
        status.transcript()
    );

    let mut json = Proc::spawn("status -o --json", {
        let mut c = agent(&root.join("d"));
        c.arg("status")
            .arg(&id)
            .arg("-o")
            .arg(&out)
            .env_remove("TORRENTGUARD_TRACKER");
        c
    })?;
    json.expect_exit(0)?;
    let v = event_line(json.seen.first().map(String::as_str).unwrap_or(""))?;
    ensure!(
        v["event"] == "status" && v["tracker"].is_null() && v["partials"][0]["file_id"] == id,
        "{v}"
    );
    Ok(())
}

/// Issue 9: `torrentguard --json tracker` logs JSON lines on stderr, like every other command.
#[test]
fn json_tracker_logs_json() -> Result<()> {
    let dir = tmp()?;
    let mut tracker = Proc::spawn("tracker --json", {
        let mut c = plain(
            &dir.path().join("a"),
            &[
                "--json",
                "-v",
                "tracker",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ],
        );
        c.arg(dir.path().join("t"));
        c
    })?;
    tracker.wait_line(WAIT, |l| l.contains("https://127.0.0.1:"))?;
    // An open swarm is announced at start-up (info on loopback, shown by -v): a log line.
    let stderr = eventually(WAIT, "the open-swarm log line", || {
        let s = tracker.stderr();
        Ok(s.contains("open swarm").then_some(s))
    })?;
    for line in stderr.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("tracker log line not JSON: {line:?}"))?;
        ensure!(v["level"].is_string(), "{line}");
    }
    Ok(())
}

/// Issue 9: a name with a newline never breaks the error line: it is escaped.
#[test]
fn control_characters_in_names_are_escaped_in_errors() -> Result<()> {
    let dir = tmp()?;
    let file = dir.path().join("bad\nname.bin");
    std::fs::write(&file, b"x")?;
    let mut cmd = plain(
        &dir.path().join("a"),
        &[
            "share",
            "--listen",
            "127.0.0.1:0",
            "--tracker-listen",
            "127.0.0.1:0",
        ],
    );
    cmd.arg(&file);
    let output = cmd.stdin(Stdio::null()).output()?;
    ensure!(output.status.code() == Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    ensure!(
        error.len() == 1
            && error[0].contains("bad\\nname.bin")
            && !stderr.lines().any(|l| l.starts_with("name.bin")),
        "the error is not one escaped line: {stderr:?}"
    );
    Ok(())
}

/// Display columns of `s` for the characters these tests use: CJK ideographs and kana take
/// two, the rest (ASCII, box drawing) one.
fn columns(s: &str) -> usize {
    s.chars()
        .map(|c| {
            if ('\u{3000}'..='\u{9fff}').contains(&c) {
                2
            } else {
                1
            }
        })
        .sum()
}

/// Issue 9: the `status` table stays aligned with a wide (CJK) file name: the row ends at the
/// same terminal column as the header.
#[test]
fn status_table_aligns_wide_names() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let tracker = Tracker::start(&root.join("tracker"))?;
    let file = root.join("データセット.bin");
    write_random_file(&file, 50_000, 15)?;
    let (_seeder, id) = share("seeder", &root.join("s"), &file, &tracker, &[])?;
    let mut status = Proc::spawn("status", {
        let mut c = plain(&root.join("s"), &["status"]);
        c.args(tracker.args());
        c
    })?;
    status.expect_exit(0)?;
    let header = status.seen.iter().find(|l| l.starts_with("FILE ID"));
    let row = status.seen.iter().find(|l| l.starts_with(&id));
    let (Some(header), Some(row)) = (header, row) else {
        bail!("no header or row\n{}", status.transcript());
    };
    ensure!(row.contains("データセット.bin"), "{row}");
    ensure!(
        columns(header) == columns(row),
        "misaligned ({} vs {} columns):\n{header}\n{row}",
        columns(header),
        columns(row)
    );
    Ok(())
}

/// `torrentguard --json hash ARGS…` run to its end: the `hashed` event and every line seen.
fn hash_json(data_dir: &Path, args: &[&Path], extra: &[&str]) -> Result<(Value, Proc)> {
    let mut cmd = agent(data_dir);
    cmd.arg("hash")
        .args(args)
        .args(["--chunk-size", CHUNK])
        .args(extra);
    let mut proc = Proc::spawn("hash", cmd)?;
    let hashed = proc.wait_event("hashed", |_| true)?;
    proc.expect_exit(0)?;
    Ok((hashed, proc))
}

/// Issue 11: `hash FILE` computes offline, without a tracker, the very id `share FILE`
/// announces (a single file keeps its single-file manifest).
#[test]
fn hash_of_one_file_is_the_id_share_announces() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("one.bin");
    write_random_file(&file, 70_000, 21)?;
    let (hashed, _) = hash_json(&root.join("h"), &[&file], &[])?;
    ensure!(
        hashed["kind"] == "file" && hashed["files"] == 1 && hashed["size"] == 70_000,
        "{hashed}"
    );
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (_seeder, id) = share("seeder", &root.join("s"), &file, &tracker, &[])?;
    ensure!(
        hashed["file_id"] == id.as_str(),
        "hash {hashed}, share {id}"
    );
    Ok(())
}

/// The tree id of `entries` (path, contents; `None` for a directory), computed here from the
/// protocol's types alone: modes 0o644 for files and 0o755 for directories.
fn expected_tree_id(name: &str, entries: &[(&str, Option<&[u8]>)]) -> String {
    use torrentguard_protocol::{Entry, HashAlgo, Manifest};
    let mut list = Vec::new();
    let mut chunks = Vec::new();
    for (path, data) in entries {
        match data {
            None => list.push(Entry::dir(*path, 0o755)),
            Some(d) => {
                list.push(Entry::file(*path, d.len() as u64, 0o644));
                chunks.extend(
                    d.chunks(CHUNK_BYTES as usize)
                        .map(|c| HashAlgo::Sha256.digest(c)),
                );
            }
        }
    }
    let m = Manifest::tree(name, CHUNK_BYTES as u32, HashAlgo::Sha256, list, chunks);
    m.file_id().to_string()
}

/// Issue 11: `hash DIR` is one tree id over every file and directory (empty ones too), prints
/// files count and size, and names each symlink it skips; `--follow-symlinks` takes a link
/// that stays inside; `-q` prints the id alone.
#[test]
fn hash_of_a_directory_is_one_tree_id_and_names_what_it_skips() -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tmp()?;
    let d = dir.path().join("release");
    std::fs::create_dir_all(d.join("docs/empty"))?;
    let big = write_random_file(&d.join("data.bin"), 3 * CHUNK_BYTES as usize + 5, 1)?;
    let small = write_random_file(&d.join("docs/a.txt"), 100, 2)?;
    for (p, mode) in [
        ("", 0o755),
        ("docs", 0o755),
        ("docs/empty", 0o755),
        ("data.bin", 0o644),
        ("docs/a.txt", 0o644),
    ] {
        std::fs::set_permissions(d.join(p), std::fs::Permissions::from_mode(mode))?;
    }
    symlink("docs/a.txt", d.join("link"))?;
    let data = dir.path().join("data");

    let (hashed, proc) = hash_json(&data, &[&d], &[])?;
    let want = expected_tree_id(
        "release",
        &[
            ("data.bin", Some(&big)),
            ("docs", None),
            ("docs/a.txt", Some(&small)),
            ("docs/empty", None),
        ],
    );
    ensure!(
        hashed["file_id"] == want.as_str()
            && hashed["kind"] == "tree"
            && hashed["files"] == 2
            && hashed["dirs"] == 2
            && hashed["size"] == (big.len() + small.len()) as u64,
        "{hashed}, want {want}"
    );
    let warnings = proc.events("warning");
    ensure!(
        warnings.len() == 1
            && warnings[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("link")),
        "{warnings:?}"
    );

    let (followed, proc) = hash_json(&data, &[&d], &["--follow-symlinks"])?;
    ensure!(followed["files"] == 3, "{followed}");
    ensure!(proc.events("warning").is_empty(), "{}", proc.transcript());
    ensure!(followed["file_id"] != want.as_str(), "{followed}");

    let output = plain(&data, &["-q", "hash", "--chunk-size", CHUNK])
        .arg(&d)
        .stdin(Stdio::null())
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    ensure!(
        String::from_utf8(output.stdout)? == format!("{want}\n"),
        "-q prints the id alone"
    );
    let stderr = String::from_utf8(output.stderr)?;
    ensure!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: skipped") && l.contains("link")),
        "{stderr}"
    );
    Ok(())
}

/// Issue 11: names a downloader would refuse stop `hash` with one error naming the path, exit 1.
#[test]
fn hash_refuses_case_colliding_names_naming_the_path() -> Result<()> {
    let dir = tmp()?;
    let d = dir.path().join("tree");
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join("Notes.txt"), b"1")?;
    std::fs::write(d.join("notes.txt"), b"2")?;
    let output = plain(&dir.path().join("data"), &["hash"])
        .arg(&d)
        .stdin(Stdio::null())
        .output()?;
    ensure!(output.status.code() == Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr)?;
    ensure!(
        stderr.contains("error: ")
            && stderr.contains("case-insensitive")
            && stderr.contains(&*d.to_string_lossy()),
        "{stderr}"
    );
    ensure!(
        output.stdout.is_empty(),
        "printed a result: {:?}",
        output.stdout
    );
    Ok(())
}
