//! End-to-end tests of issue 13 §4: share codes (`share` prints one, `get CODE` needs nothing
//! else, a damaged one is refused with exit code 2), the config file and its precedence
//! (flag > env > config > default), `torrentguard config`, completions and man pages. The real
//! binaries run as processes on ephemeral loopback ports.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use tempfile::TempDir;

use common::*;

fn tmp() -> Result<TempDir> {
    Ok(tempfile::Builder::new().prefix("tg-codes-").tempdir()?)
}

/// `torrentguard --data-dir DIR ARGS…`, human output, reading `config` as its config file (an
/// empty path: the platform default, in a config home of its own) and no tracker from the
/// environment, whatever the machine has.
fn tg(data_dir: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--data-dir").arg(data_dir).args(args);
    if config.as_os_str().is_empty() {
        cmd.env_remove("TORRENTGUARD_CONFIG")
            .env("XDG_CONFIG_HOME", data_dir.join("config-home"));
    } else {
        cmd.env("TORRENTGUARD_CONFIG", config);
    }
    for var in [
        "TORRENTGUARD_TRACKER",
        "TORRENTGUARD_TRACKER_FINGERPRINT",
        "TORRENTGUARD_SWARM_TOKEN",
        "TORRENTGUARD_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(mut cmd: Command) -> Result<Output> {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .context("running torrentguard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Shares `file` against `tracker` with `--qr` in human mode; returns the process and the code
/// from its "share code: …" line, once it is seeding.
fn share_with_code(root: &Path, file: &Path, tracker: &Tracker) -> Result<(Proc, String)> {
    let mut cmd = tg(&root.join("s"), Path::new(""), &["share", "--qr"]);
    cmd.arg(file)
        .args(tracker.args())
        .args(["--listen", "127.0.0.1:0", "--chunk-size", CHUNK]);
    let mut proc = Proc::spawn("share", cmd)?;
    let line = proc.wait_line(WAIT, |l| l.starts_with("share code: "))?;
    let code = line["share code: ".len()..].trim().to_string();
    proc.wait_line(WAIT, |l| l.contains(&format!("torrentguard get {code}")))?;
    proc.wait_line(WAIT, |l| l.starts_with("seeding"))?;
    ensure!(
        proc.seen.iter().any(|l| l.contains('▀') || l.contains('▄')),
        "no QR code printed with --qr\n{}",
        proc.transcript()
    );
    Ok((proc, code))
}

/// `share` prints a code; `get CODE -o DIR` fetches the file with no other flag (the code brings
/// tracker URL and fingerprint, pinned from the first connection).
#[test]
fn get_with_only_the_share_code_fetches_the_file() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("coded.bin");
    let data = write_random_file(&file, 200_000, 31)?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (_seeder, code) = share_with_code(root, &file, &tracker)?;
    ensure!(code.starts_with("tg1:"), "{code}");

    let out = root.join("out");
    let mut cmd = tg(&root.join("d"), Path::new(""), &["get", &code, "-o"]);
    cmd.arg(&out).args(["--listen", "127.0.0.1:0"]);
    let got = run(cmd)?;
    ensure!(
        got.status.success(),
        "get CODE failed: {}\n{}",
        text(&got.stderr),
        text(&got.stdout)
    );
    assert_same(&out.join("coded.bin"), &data)?;
    // The pin came from the code: nothing was trusted on first use.
    ensure!(
        !text(&got.stderr).contains("trusting the tracker's fingerprint on first use"),
        "{}",
        text(&got.stderr)
    );
    Ok(())
}

/// `share --json` emits one `share_code` event per share, with its id and code.
#[test]
fn share_json_has_a_share_code_event() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("j.bin");
    write_random_file(&file, 50_000, 32)?;
    let tracker = Tracker::start(&root.join("tracker"))?;
    let (mut seeder, id) = share("seeder", &root.join("s"), &file, &tracker, &[])?;
    let ev = seeder.wait_event("share_code", |_| true)?;
    ensure!(ev["file_id"].as_str() == Some(id.as_str()), "{ev}");
    let code = ev["code"].as_str().unwrap_or_default();
    ensure!(code.starts_with("tg1:"), "{ev}");
    Ok(())
}

/// A cut or altered code is a usage error (exit 2) saying which, before anything connects.
#[test]
fn a_damaged_code_exits_2_with_a_clear_message() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let file = root.join("d.bin");
    write_random_file(&file, 20_000, 33)?;
    let code = {
        let tracker = Tracker::start(&root.join("tracker"))?;
        let (_seeder, code) = share_with_code(root, &file, &tracker)?;
        code
    };
    let cut = &code[..code.len() - 7];
    let got = run(tg(root, Path::new(""), &["get", cut, "-o", "out"]))?;
    ensure!(got.status.code() == Some(2), "{:?}", got.status);
    let err = text(&got.stderr);
    ensure!(
        err.contains("the share code is incomplete: was it cut when copied?"),
        "{err}"
    );

    let mut altered = code.clone();
    let at = code.len() / 2;
    let swap = if &code[at..=at] == "q" { "r" } else { "q" };
    altered.replace_range(at..=at, swap);
    let got = run(tg(root, Path::new(""), &["--json", "get", &altered]))?;
    ensure!(got.status.code() == Some(2), "{:?}", got.status);
    let ev: Value = serde_json::from_str(text(&got.stdout).trim())?;
    let msg = ev["message"].as_str().unwrap_or_default();
    ensure!(
        msg.contains("checksum does not match: a character was changed or lost"),
        "{ev}"
    );
    Ok(())
}

/// The `status` JSON event's tracker URL.
fn status_tracker(mut cmd: Command) -> Result<String> {
    cmd.arg("--json");
    let got = run(cmd)?;
    ensure!(
        got.status.success(),
        "status failed: {}{}",
        text(&got.stderr),
        text(&got.stdout)
    );
    let ev: Value = serde_json::from_str(text(&got.stdout).trim())?;
    Ok(ev["tracker"].as_str().unwrap_or_default().to_string())
}

/// `status` with no flags uses the config file's tracker; the environment beats the file and a
/// flag beats the environment. Two real trackers tell which one was used.
#[test]
fn config_supplies_the_tracker_env_beats_it_and_a_flag_beats_env() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let a = Tracker::start(&root.join("ta"))?;
    let b = Tracker::start(&root.join("tb"))?;
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tracker = \"{}\"\ntracker_fingerprint = \"{}\"\n",
            a.url, a.fingerprint
        ),
    )?;
    let data = root.join("agent");
    let same = |u: &str, t: &Tracker| u.trim_end_matches('/') == t.url.trim_end_matches('/');

    let used = status_tracker(tg(&data, &config, &["status"]))?;
    ensure!(same(&used, &a), "config: {used} is not {}", a.url);

    let with_env = || {
        let mut c = tg(&data, &config, &["status"]);
        c.env("TORRENTGUARD_TRACKER", &b.url)
            .env("TORRENTGUARD_TRACKER_FINGERPRINT", &b.fingerprint);
        c
    };
    let used = status_tracker(with_env())?;
    ensure!(same(&used, &b), "env: {used} is not {}", b.url);

    let mut flagged = with_env();
    flagged.args(a.args());
    let used = status_tracker(flagged)?;
    ensure!(same(&used, &a), "flag: {used} is not {}", a.url);
    Ok(())
}

/// `torrentguard config` names each setting's source; unknown keys are refused naming the key
/// and the file.
#[test]
fn config_shows_where_each_setting_comes_from() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    let config = root.join("config.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nupload_limit = \"2M\"\n")?;
    let mut cmd = tg(root, &config, &["config"]);
    cmd.env("TORRENTGUARD_TRACKER", "https://127.0.0.1:1");
    let got = run(cmd)?;
    ensure!(got.status.success(), "{}", text(&got.stderr));
    let out = text(&got.stdout);
    let line = |key: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_default()
            .to_string()
    };
    ensure!(
        line("listen").ends_with(&format!("config {}", config.display())),
        "{out}"
    );
    ensure!(
        line("tracker").ends_with("env TORRENTGUARD_TRACKER"),
        "{out}"
    );
    ensure!(line("max_peers").ends_with("default"), "{out}");
    ensure!(
        out.starts_with(&format!("config file: {}", config.display())),
        "{out}"
    );

    let got = run(tg(root, &config, &["--json", "config"]))?;
    let ev: Value = serde_json::from_str(text(&got.stdout).trim())?;
    ensure!(ev["settings"]["upload_limit"]["value"] == "2M", "{ev}");
    ensure!(
        ev["settings"]["upload_limit"]["source"].as_str()
            == Some(&format!("config {}", config.display())),
        "{ev}"
    );

    std::fs::write(&config, "trackers = \"https://x\"\n")?;
    let got = run(tg(root, &config, &["status"]))?;
    ensure!(got.status.code() == Some(2), "{:?}", got.status);
    let err = text(&got.stderr);
    ensure!(
        err.contains("unknown key \"trackers\"") && err.contains(&config.display().to_string()),
        "{err}"
    );
    Ok(())
}

#[test]
fn completions_and_man_pages_are_generated() -> Result<()> {
    let dir = tmp()?;
    let root = dir.path();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let got = run(tg(root, Path::new(""), &["completions", shell]))?;
        ensure!(got.status.success(), "{shell}: {}", text(&got.stderr));
        let script = text(&got.stdout);
        ensure!(
            script.contains("torrentguard") && script.contains("share"),
            "{shell}: {script}"
        );
    }
    let got = run(tg(root, Path::new(""), &["man"]))?;
    ensure!(got.status.success(), "{}", text(&got.stderr));
    ensure!(
        text(&got.stdout).starts_with(".ie") || text(&got.stdout).contains(".TH torrentguard"),
        "{}",
        text(&got.stdout)
    );
    let man = root.join("man1");
    let got = run(tg(
        root,
        Path::new(""),
        &["man", &man.display().to_string()],
    ))?;
    ensure!(got.status.success(), "{}", text(&got.stderr));
    for page in [
        "torrentguard.1",
        "torrentguard-get.1",
        "torrentguard-share.1",
    ] {
        let body = std::fs::read_to_string(man.join(page)).with_context(|| page.to_string())?;
        ensure!(body.contains(".TH"), "{page}: {body}");
    }
    Ok(())
}
