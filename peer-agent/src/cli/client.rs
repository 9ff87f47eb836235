//! The CLI as a client of a running daemon: `share`, `get` and `status` hand their work to it
//! when its control socket answers (they run in the foreground otherwise, or with
//! `--no-daemon`), and `pause`, `resume` and `rm` need it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::de::DeserializeOwned;
use torrentguard_agent::daemon::model::{Kind, Stats, Status, TransferView};
use torrentguard_agent::daemon::server::SOCKET_FILE;

use super::codes::FileRef;
use super::exit::UsageError;
use super::render::{Mode, human, print_line};

/// How `share`, `get` and `status` pick between a running daemon and the foreground.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ClientFlags {
    /// Run in the foreground even when a daemon runs for this data dir.
    #[arg(long)]
    pub(crate) no_daemon: bool,

    /// With a daemon: follow progress until every transfer is done (or fails) instead of
    /// returning at once.
    #[arg(long, conflicts_with = "no_daemon")]
    pub(crate) wait: bool,
}

/// `pause`, `resume`, `rm`: which transfers.
#[derive(Args, Debug)]
pub(crate) struct ControlArgs {
    /// File ids (or unique prefixes of them, at least 4 digits) of shares or downloads, as
    /// `status` lists them.
    #[arg(required = true, value_name = "FILE_ID")]
    pub(crate) ids: Vec<String>,
}

/// A connection to the daemon's control socket.
pub(crate) struct DaemonClient {
    http: reqwest::Client,
    socket: PathBuf,
}

const BASE: &str = "http://daemon";

impl DaemonClient {
    /// The daemon of `dir`, if one answers on its socket.
    pub(crate) async fn find(dir: &Path) -> Option<DaemonClient> {
        let socket = dir.join(SOCKET_FILE);
        if !socket.exists() {
            return None;
        }
        let http = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .build()
            .ok()?;
        let c = DaemonClient { http, socket };
        let alive = c.http.get(format!("{BASE}/api/stats")).send().await;
        alive.is_ok_and(|r| r.status().is_success()).then_some(c)
    }

    /// The daemon of `dir`, or a usage error saying how to start one.
    pub(crate) async fn require(dir: &Path) -> anyhow::Result<DaemonClient> {
        Self::find(dir).await.ok_or_else(|| {
            anyhow!(UsageError(format!(
                "no daemon runs for {} (no answer on {}): start one with `torrentguard daemon`",
                dir.display(),
                dir.join(SOCKET_FILE).display()
            )))
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self.http.get(format!("{BASE}{path}")).send().await;
        self.answer(r).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let r = self
            .http
            .post(format!("{BASE}{path}"))
            .json(body)
            .send()
            .await;
        self.answer(r).await
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let r = self.http.delete(format!("{BASE}{path}")).send().await;
        let r = r.with_context(|| format!("the daemon at {}", self.socket.display()))?;
        if r.status().is_success() {
            return Ok(());
        }
        Err(error_of(r).await)
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        r: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<T> {
        let r = r.with_context(|| format!("the daemon at {}", self.socket.display()))?;
        if !r.status().is_success() {
            return Err(error_of(r).await);
        }
        r.json().await.context("the daemon's answer")
    }
}

/// The daemon's `{"error": …}` as an error (a 4xx is the user's to fix: a usage error).
async fn error_of(r: reqwest::Response) -> anyhow::Error {
    let status = r.status();
    let text = match r.json::<serde_json::Value>().await {
        Ok(v) => v["error"].as_str().unwrap_or("no reason given").to_string(),
        Err(_) => format!("answered {status}"),
    };
    if status.is_client_error() && status != reqwest::StatusCode::CONFLICT {
        anyhow!(UsageError(format!("the daemon refused: {text}")))
    } else {
        anyhow!("the daemon: {text}")
    }
}

/// Prints what the daemon took on, one line (or JSON object) per transfer.
pub(crate) fn report_added(v: &TransferView, mode: Mode) {
    match mode {
        Mode::Json => {
            let mut j = serde_json::to_value(v).expect("views serialize");
            j["event"] = serde_json::json!("added");
            print_line(&j.to_string());
        }
        Mode::Quiet => print_line(&v.id),
        _ => {
            let what = match v.kind {
                Kind::Share => "sharing",
                Kind::Download => "downloading",
            };
            print_line(&format!(
                "{what} {} ({}, {}) in the daemon: {}",
                v.name,
                human(v.size),
                v.id,
                v.status.as_str()
            ));
            if let (Kind::Share, Some(code)) = (v.kind, &v.share_code) {
                print_line(&format!("share code: {code}"));
                print_line(&format!(
                    "get it elsewhere with:\n  torrentguard get {code}"
                ));
            }
        }
    }
}

/// `--wait`: follows `ids` until each is done (seeding or completed) or failed; exit 1 if any
/// failed.
pub(crate) async fn wait_for(
    client: &DaemonClient,
    keys: &[(Kind, String)],
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    let mut shown = WaitDisplay::new(keys.len(), mode);
    loop {
        let mut views = Vec::with_capacity(keys.len());
        for (i, (kind, id)) in keys.iter().enumerate() {
            let v: TransferView = client.get(&format!("/api/{}s/{id}", kind.as_str())).await?;
            shown.show(i, &v);
            views.push(v);
        }
        if views.iter().all(|v| ended(v.status)) {
            shown.finish();
            return finish_wait(views, mode);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether `--wait` is over for a transfer: done (seeding or completed), or stopped (failed
/// or paused, which `--wait` reports as a failure).
fn ended(s: Status) -> bool {
    matches!(
        s,
        Status::Seeding | Status::Completed | Status::Failed | Status::Paused
    )
}

/// How `--wait` shows progress: a bar per transfer on a terminal; without one, a line when a
/// status changes and at most one every [`LINE_EVERY`] in between; nothing with -q or --json.
struct WaitDisplay {
    mode: Mode,
    bars: Vec<indicatif::ProgressBar>,
    last: Vec<(Status, std::time::Instant)>,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl WaitDisplay {
    fn new(n: usize, mode: Mode) -> WaitDisplay {
        let bars = if mode == Mode::Bars {
            let multi = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{msg:30!} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("static template is valid")
            .progress_chars("=> ");
            (0..n)
                .map(|_| multi.add(indicatif::ProgressBar::new(0).with_style(style.clone())))
                .collect()
        } else {
            Vec::new()
        };
        let long_ago = std::time::Instant::now() - LINE_EVERY;
        WaitDisplay {
            mode,
            bars,
            last: vec![(Status::Queued, long_ago); n],
        }
    }

    fn show(&mut self, i: usize, v: &TransferView) {
        match self.mode {
            Mode::Bars => {
                let bar = &self.bars[i];
                bar.set_length(v.size);
                bar.set_position(v.bytes_done);
                bar.set_message(format!("{} ({})", v.name, v.status.as_str()));
            }
            Mode::Lines => {
                let (status, at) = self.last[i];
                if status != v.status || at.elapsed() >= LINE_EVERY {
                    print_line(&progress_line(v));
                    self.last[i] = (v.status, std::time::Instant::now());
                }
            }
            Mode::Json | Mode::Quiet => {}
        }
    }

    fn finish(&self) {
        for b in &self.bars {
            b.finish();
        }
    }
}

fn finish_wait(views: Vec<TransferView>, mode: Mode) -> anyhow::Result<ExitCode> {
    for v in &views {
        match mode {
            Mode::Json => {
                let mut j = serde_json::to_value(v).expect("views serialize");
                j["event"] = serde_json::json!("done");
                print_line(&j.to_string());
            }
            Mode::Quiet if v.kind == Kind::Download => print_line(&v.path),
            // Only bytes in place and verified are said to be verified.
            Mode::Bars | Mode::Lines
                if v.kind == Kind::Download
                    && matches!(v.status, Status::Seeding | Status::Completed) =>
            {
                print_line(&format!("verified {} → {}", v.name, v.path))
            }
            _ => {}
        }
    }
    let failed = views
        .into_iter()
        .find(|v| matches!(v.status, Status::Failed | Status::Paused));
    match failed {
        Some(v) => bail!(
            "{} {}: {}",
            v.name,
            v.status.as_str(),
            v.error.unwrap_or_else(|| "paused in the daemon".into())
        ),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn progress_line(v: &TransferView) -> String {
    let eta = v
        .eta_secs
        .map(|s| format!(", {s}s left"))
        .unwrap_or_default();
    format!(
        "{} {}: {:.1} % of {} at {}/s, peers: {}{eta}",
        v.name,
        v.status.as_str(),
        v.percent,
        human(v.size),
        human(v.download_bps),
        v.peers
    )
}

/// `status` with a daemon: every transfer, then the daemon's totals.
pub(crate) async fn status(client: &DaemonClient, mode: Mode) -> anyhow::Result<ExitCode> {
    let list: Vec<TransferView> = client.get("/api/transfers").await?;
    let stats: Stats = client.get("/api/stats").await?;
    if mode == Mode::Json {
        let v = serde_json::json!({"event": "daemon_status", "stats": stats, "transfers": list});
        print_line(&v.to_string());
        return Ok(ExitCode::SUCCESS);
    }
    print_line(&format!(
        "daemon {} on peer port {}: ↓ {}/s ↑ {}/s",
        stats.fingerprint,
        stats.peer_port,
        human(stats.download_bps),
        human(stats.upload_bps),
    ));
    if list.is_empty() {
        print_line("no shares or downloads");
    }
    for v in &list {
        print_line(&format!(
            "{:<8} {:<11} {:>6.1}%  {:>10}  {}  {}",
            v.kind.as_str(),
            v.status.as_str(),
            v.percent,
            human(v.size),
            &v.id[..16],
            v.name
        ));
        if let Some(e) = &v.error {
            print_line(&format!("         {e}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pause`, `resume`, `rm`: `action` on every transfer each id (or unique prefix) names.
pub(crate) async fn control(
    args: ControlArgs,
    dir: &Path,
    action: Action,
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    let client = DaemonClient::require(dir).await?;
    let list: Vec<TransferView> = client.get("/api/transfers").await?;
    let mut keys = Vec::new();
    for given in &args.ids {
        keys.extend(resolve(&list, given)?);
    }
    for (kind, id) in keys {
        let base = format!("/api/{}s/{id}", kind.as_str());
        match action {
            Action::Remove => client.delete(&base).await?,
            Action::Pause | Action::Resume => {
                let verb = if action == Action::Pause {
                    "pause"
                } else {
                    "resume"
                };
                let _: TransferView = client
                    .post(&format!("{base}/{verb}"), &serde_json::json!({}))
                    .await?;
            }
        }
        let done = action.past();
        match mode {
            Mode::Json => print_line(
                &serde_json::json!({"event": done, "kind": kind, "file_id": id}).to_string(),
            ),
            Mode::Quiet => {}
            _ => print_line(&format!("{done} {} {id}", kind.as_str())),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pause,
    Resume,
    Remove,
}

impl Action {
    fn past(self) -> &'static str {
        match self {
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Remove => "removed",
        }
    }
}

/// The transfers `given` names: a whole id, or a prefix of at least 4 digits that only one
/// file id starts with (a share and a download of that one file are both named).
fn resolve(list: &[TransferView], given: &str) -> anyhow::Result<Vec<(Kind, String)>> {
    let g = given.trim().to_ascii_lowercase();
    if g.len() < 4 {
        bail!(UsageError(format!(
            "{given:?}: give a file id or at least its first 4 digits"
        )));
    }
    let hits: Vec<&TransferView> = list.iter().filter(|v| v.id.starts_with(&g)).collect();
    let mut ids: Vec<&str> = hits.iter().map(|v| v.id.as_str()).collect();
    ids.dedup();
    match ids.len() {
        0 => bail!(UsageError(format!(
            "no share or download of the daemon has an id starting with {given}"
        ))),
        1 => Ok(hits.iter().map(|v| (v.kind, v.id.clone())).collect()),
        _ => bail!(UsageError(format!(
            "{given} could be any of {}: give more digits",
            ids.join(", ")
        ))),
    }
}

/// `share` through the daemon: each PATH (or all of them with --name, one at a time here)
/// becomes one of its shares.
pub(crate) async fn share(
    client: &DaemonClient,
    args: &super::args::ShareArgs,
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    if args.name.is_some() && args.files.len() > 1 {
        bail!(UsageError(
            "the daemon shares one path per share: pass one PATH with --name, or --no-daemon"
                .into()
        ));
    }
    let mut keys = Vec::new();
    for path in &args.files {
        let path = std::path::absolute(path)
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let body = serde_json::json!({
            "path": path,
            "name": args.name,
            "follow_symlinks": args.follow_symlinks,
        });
        let v: TransferView = client.post("/api/shares", &body).await?;
        report_added(&v, mode);
        keys.push((v.kind, v.id));
    }
    if args.client.wait {
        return wait_for(client, &keys, mode).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `get` through the daemon: each id becomes one of its downloads, into `-o` (made absolute
/// here, so it means what it means in this shell).
pub(crate) async fn get(
    client: &DaemonClient,
    args: &super::args::GetArgs,
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    let out_dir = std::path::absolute(&args.output)
        .with_context(|| format!("cannot resolve {}", args.output.display()))?;
    let mut keys = Vec::new();
    for given in &args.ids {
        let mut body = serde_json::json!({
            "out_dir": out_dir,
            "force": args.force,
            "only": args.only,
        });
        match given {
            // The code goes whole: the daemon checks it and takes its tracker from it.
            FileRef::Code(code) => body["code"] = serde_json::json!(code.to_string()),
            FileRef::Id(id) => {
                body["file_id"] = serde_json::json!(id.to_string());
                let given = super::targets(&args.tracker);
                if given.len() > 1 {
                    // The daemon keeps one tracker per transfer.
                    anyhow::bail!(super::exit::UsageError(
                        "the daemon takes one --tracker per download; add --no-daemon to fail \
                         over between several"
                            .into()
                    ));
                }
                if let Some(t) = given.first() {
                    body["tracker"] = serde_json::json!(t.url);
                    let fp = t.fingerprint.map(|f| f.to_string());
                    body["tracker_fingerprint"] = serde_json::json!(fp);
                }
            }
        }
        let v: TransferView = client.post("/api/downloads", &body).await?;
        report_added(&v, mode);
        keys.push((v.kind, v.id));
    }
    if args.client.wait {
        return wait_for(client, &keys, mode).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `torrentguard ui`: a fresh one-time login URL of the daemon's web UI.
pub(crate) async fn ui_login(dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    let client = DaemonClient::require(dir).await?;
    let v: serde_json::Value = client.post("/api/ui/login", &serde_json::json!({})).await?;
    let url = v["url"]
        .as_str()
        .context("the daemon's answer has no url")?;
    match mode {
        Mode::Json => print_line(&serde_json::json!({"event": "ui", "url": url}).to_string()),
        Mode::Quiet => print_line(url),
        _ => print_line(&format!("open {url} (a one-time link, valid 10 minutes)")),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(kind: Kind, id: &str) -> TransferView {
        TransferView {
            id: id.into(),
            kind,
            name: "n".into(),
            size: 0,
            path: String::new(),
            status: Status::Seeding,
            error: None,
            bytes_done: 0,
            percent: 0.0,
            download_bps: 0,
            upload_bps: 0,
            eta_secs: None,
            peers: 0,
            bytes_reused: 0,
            bytes_fetched: 0,
            uploaded: 0,
            share_code: None,
            added_at: 0,
        }
    }

    #[test]
    fn prefixes_name_one_file() {
        let a = "ab".repeat(32);
        let b = "ac".repeat(32);
        let list = [
            view(Kind::Share, &a),
            view(Kind::Download, &a),
            view(Kind::Download, &b),
        ];
        assert_eq!(
            resolve(&list, "abab").unwrap().len(),
            2,
            "share and download"
        );
        assert_eq!(resolve(&list, &b.to_uppercase()).unwrap().len(), 1);
        assert!(resolve(&list, "ab").is_err(), "too short");
        assert!(resolve(&list, "a").is_err());
        let err = resolve(&list, "ffff").unwrap_err().to_string();
        assert!(err.contains("no share or download"), "{err}");
        let both = resolve(
            &[
                view(Kind::Share, &a),
                view(Kind::Share, &("abac".to_string() + &"0".repeat(60))),
            ],
            "abab",
        );
        assert_eq!(both.unwrap().len(), 1);
    }
}
