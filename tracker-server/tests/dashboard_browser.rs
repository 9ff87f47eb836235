//! The dashboard in a real browser: a tracker (through the harness), Debian's Chromium driven by
//! `tests/browser/dashboard.mjs` (Playwright). The page is loaded first; only then is a file
//! registered and announced by a seeder and a leecher, and the page must show it with its
//! seeder through its live updates (no reload), then lead to the file's peers.
//!
//! Needs /usr/bin/chromium, node and `npm ci` in tests/browser. Where one is missing the test
//! says so and skips, unless `TORRENTGUARD_REQUIRE_BROWSER` is set (`.ci/run` sets it once it
//! has installed them), in which case that is a failure.
//! `TORRENTGUARD_DASHBOARD_SCREENSHOT=/path.png` keeps the screenshot (docs/dashboard.png).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use common::{Harness, expect_json, manifest_for, within};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use torrentguard_protocol::api::RegisterResponse;
use torrentguard_protocol::{Bitfield, Manifest};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on each step of the browser (start and load, live update, following the link).
const STEP: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !Path::new(CHROMIUM).is_file() {
        return Some(format!("{CHROMIUM} is missing (Debian package chromium)"));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is missing".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (run `npm ci` in tests/browser)".into());
    }
    None
}

/// The next JSON line of the script's output whose `event` is `event`, within [`STEP`].
async fn wait_event(lines: &mut Lines<BufReader<ChildStdout>>, event: &str) -> Result<Value> {
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            eprintln!("dashboard.mjs: {line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == event
            {
                return Ok(v);
            }
        }
        bail!("dashboard.mjs ended before {event} (its stderr above says why)")
    };
    tokio::time::timeout(STEP, wait)
        .await
        .with_context(|| format!("no {event} within {STEP:?}"))?
}

fn announce_body(m: &Manifest, event: &str, held: u32, port: u16) -> Value {
    let mut b = Bitfield::new(m.chunk_count());
    for i in 0..held {
        b.set(i);
    }
    json!({ "file_id": m.file_id(), "port": port, "event": event, "bitfield": b.to_base64() })
}

#[tokio::test]
async fn a_file_shared_while_the_dashboard_is_open_appears_live_and_leads_to_its_peers()
-> Result<()> {
    if let Some(why) = missing_prerequisite() {
        if std::env::var_os("TORRENTGUARD_REQUIRE_BROWSER").is_some() {
            bail!("TORRENTGUARD_REQUIRE_BROWSER is set but {why}");
        }
        eprintln!("SKIPPED: the browser test cannot run here: {why} (.ci/run installs them)");
        return Ok(());
    }
    within(async {
        let h = Harness::start(|_| {}).await?;
        // Markup in the name: the page must show it as text.
        let name = "field <notes> & \"raw\" data.tar";
        let m = manifest_for(name, &vec![7u8; 70_000]); // 5 chunks
        let tmp = tempfile::tempdir()?;
        let screenshot = std::env::var_os("TORRENTGUARD_DASHBOARD_SCREENSHOT")
            .map_or_else(|| tmp.path().join("dashboard.png"), PathBuf::from);
        let mut browser = Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
            .env("TG_TRACKER_URL", &h.base)
            .env("TG_FILE_ID", m.file_id().to_string())
            .env("TG_FILE_NAME", name)
            .env("TG_SEEDER_FP", h.alice.fingerprint.to_string())
            .env("TG_SCREENSHOT", &screenshot)
            .env("TG_CHROMIUM", CHROMIUM)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting node")?;
        let stdout = browser.stdout.take().context("the script's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        wait_event(&mut lines, "dashboard_loaded").await?;

        let (alice, bob) = (h.as_peer(&h.alice), h.as_peer(&h.bob));
        let r: RegisterResponse =
            expect_json(alice.post(h.api("/files")).json(&m).send().await?, 201).await?;
        ensure!(r.file_id == m.file_id());
        for (who, event, held, port) in [(&alice, "completed", 5, 7001), (&bob, "started", 2, 7002)]
        {
            let resp = who
                .post(h.api("/announce"))
                .json(&announce_body(&m, event, held, port))
                .send()
                .await?;
            ensure!(resp.status() == 200, "announce: {}", resp.status());
        }

        let done = wait_event(&mut lines, "dashboard_done").await?;
        let status = tokio::time::timeout(STEP, browser.wait()).await??;
        ensure!(status.success(), "dashboard.mjs exited with {status}");
        ensure!(done["name"] == name, "{done}");
        ensure!(done["seeders"] == "1" && done["leechers"] == "1", "{done}");
        // (5 + 2) of 2 × 5 chunks.
        ensure!(done["completion"] == "70 %", "{done}");
        ensure!(done["reputation"] == "100 (0 reporters)", "{done}");
        ensure!(done["role"] == "seeder", "{done}");
        ensure!(done["address"] == "127.0.0.1:7001", "{done}");
        let png = std::fs::read(&screenshot)?;
        ensure!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}
