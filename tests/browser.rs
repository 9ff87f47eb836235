//! The web UI in a real browser: a tracker and two daemons; the seeding daemon shares a file
//! through its control API, the other daemon's UI is driven by Debian's Chromium
//! (`tests/browser/ui.mjs`, Playwright) — sign in through the one-time URL, paste the share
//! code, wait for 100 % — and the downloaded bytes must equal the original.
//!
//! Needs /usr/bin/chromium, node and `npm ci` in tests/browser. Where one is missing the test
//! says so and skips, unless `TORRENTGUARD_REQUIRE_BROWSER` is set (`.ci/run` sets it once it
//! has installed them), in which case that is a failure.
//! `TORRENTGUARD_UI_SCREENSHOT=/path.png` keeps the page's screenshot (docs/ui.png comes so).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use common::{
    Proc, Tracker, assert_same, cli_events, daemon, eventually, parse_event, write_random_file,
};

/// Bound on the browser's whole run (start, sign in, download, screenshot).
const BROWSER_WAIT: Duration = Duration::from_secs(120);
const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !Path::new(CHROMIUM).is_file() {
        return Some(format!("{CHROMIUM} is missing (Debian package chromium)"));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is missing".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (run `npm ci` in tests/browser)".into());
    }
    None
}

fn share_status(dir: &Path, id: &str) -> Result<Option<String>> {
    let status = cli_events(dir, &["status"])?;
    let transfers = status
        .first()
        .and_then(|s| s["transfers"].as_array().cloned());
    Ok(transfers
        .unwrap_or_default()
        .into_iter()
        .find(|t| t["id"] == id && t["kind"] == "share")
        .and_then(|t| t["status"].as_str().map(str::to_owned)))
}

#[test]
fn a_download_added_in_the_web_ui_completes_with_the_original_bytes() -> Result<()> {
    if let Some(why) = missing_prerequisite() {
        if std::env::var_os("TORRENTGUARD_REQUIRE_BROWSER").is_some() {
            bail!("TORRENTGUARD_REQUIRE_BROWSER is set but {why}");
        }
        eprintln!("SKIPPED: the browser test cannot run here: {why} (.ci/run installs them)");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let tracker = Tracker::start(&tmp.path().join("tracker"))?;
    let (a, b) = (tmp.path().join("seeder"), tmp.path().join("getter"));
    let file = tmp.path().join("dataset-2026.tar");
    let data = write_random_file(&file, 3 << 20, 29)?;

    let (_seeder, _) = daemon("daemon-seeder", &a, &tracker.args())?;
    let added = cli_events(&a, &["share", file.to_str().context("UTF-8 path")?])?;
    let id = added[0]["id"]
        .as_str()
        .context("the share's id")?
        .to_owned();
    let code = added[0]["share_code"]
        .as_str()
        .context("a share code")?
        .to_owned();
    eventually(common::WAIT, "the share seeding", || {
        Ok((share_status(&a, &id)?.as_deref() == Some("seeding")).then_some(()))
    })?;

    let ui = ["--ui".to_owned(), "127.0.0.1:0".to_owned()];
    let (getter, ready) = daemon("daemon-ui", &b, &ui)?;
    let login = ready["ui_login_url"]
        .as_str()
        .context("the UI's login URL")?;
    ensure!(login.starts_with("http://127.0.0.1:"), "{login}");

    let out = tmp.path().join("out");
    let screenshot = std::env::var_os("TORRENTGUARD_UI_SCREENSHOT")
        .map_or_else(|| tmp.path().join("ui.png"), PathBuf::from);
    let mut browser = Proc::spawn("ui.mjs", {
        let mut c = Command::new("node");
        c.arg(browser_dir().join("ui.mjs"))
            .env("TG_UI_LOGIN_URL", login)
            .env("TG_SHARE_CODE", &code)
            .env("TG_OUT_DIR", &out)
            .env("TG_SCREENSHOT", &screenshot)
            .env("TG_CHROMIUM", CHROMIUM);
        c
    })?;
    let done = browser
        .wait_line(BROWSER_WAIT, |l| {
            parse_event(l).is_some_and(|v| v["event"] == "ui_completed")
        })
        .with_context(|| getter.transcript())?;
    browser.expect_exit(0)?;
    let done = parse_event(&done).context("ui_completed is JSON")?;
    assert_eq!(done["id"], id.as_str(), "{done}");
    assert_eq!(done["percent"], "100 %", "{done}");
    assert_same(&out.join("dataset-2026.tar"), &data)?;
    let png = std::fs::read(&screenshot)?;
    ensure!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    Ok(())
}
