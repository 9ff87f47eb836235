//! `torrentguard daemon`: its flags, its start (lock, identity, database, peer port, control
//! socket, optional TCP API and web UI) and its stop on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use torrentguard_agent::daemon::{Daemon, DaemonConfig, SeedPolicy, api, server, ui};

use super::args::{
    EndpointFlags, HashFlags, PeerLimitFlags, TrackerFlags, WireFlags, parse_size_u64,
};
use super::embedded::EmbeddedTracker;
use super::exit::UsageError;
use super::interrupt::watch_interrupts;
use super::render::{Mode, print_line};
use super::{identity, resolve_advertise, targets};
use torrentguard_agent::TrackerTarget;

#[derive(Args, Debug)]
pub(crate) struct DaemonArgs {
    #[command(flatten)]
    pub(crate) tracker: TrackerFlags,

    /// Without --tracker: run a tracker in this daemon on ADDR (e.g. 0.0.0.0:8443 for the LAN)
    /// and register shares there; its identity and database live in <data-dir>/tracker. Give a
    /// fixed port: shares are stored with the tracker's URL, and port 0 changes it each start.
    #[cfg(feature = "embedded-tracker")]
    #[arg(long, value_name = "ADDR", conflicts_with = "tracker")]
    pub(crate) tracker_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub(crate) endpoint: EndpointFlags,

    /// Limit the upload rate of all shares together, in bytes per second (K, M, G). 0: none.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    pub(crate) upload_limit: u64,

    /// Limit the download rate of all downloads together, in bytes per second. 0: none.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    pub(crate) download_limit: u64,

    /// Downloads running at once; more wait in a queue, oldest first.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub(crate) max_active_downloads: usize,

    /// Stop seeding a finished download once it uploaded RATIO × its size (e.g. 1.5).
    /// Without --seed-ratio and --seed-time, downloads seed for as long as the daemon runs.
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub(crate) seed_ratio: Option<f64>,

    /// Stop seeding a finished download after this long (e.g. 30m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = torrentguard_agent::download::parse_duration)]
    pub(crate) seed_time: Option<std::time::Duration>,

    /// Where downloads go when the request names no directory
    /// [default: <data-dir>/downloads].
    #[arg(long, env = "TORRENTGUARD_DOWNLOAD_DIR", value_name = "DIR")]
    pub(crate) download_dir: Option<PathBuf>,

    /// Also serve the control API on this loopback TCP address, each request needing the
    /// bearer token in <data-dir>/api-token.
    #[arg(long, value_name = "ADDR")]
    pub(crate) api_listen: Option<SocketAddr>,

    /// Serve the web UI on this loopback address (e.g. 127.0.0.1:8080); its one-time login URL
    /// is printed at start (`torrentguard ui` prints a fresh one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) ui: Option<SocketAddr>,

    /// How new shares are cut and hashed.
    #[command(flatten)]
    pub(crate) hashing: HashFlags,

    #[command(flatten)]
    pub(crate) wire: WireFlags,

    #[command(flatten)]
    pub(crate) peer_limits: PeerLimitFlags,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a ratio (a number ≥ 0, e.g. 1.5)")),
    }
}

/// The daemon's default tracker: it keeps one tracker per transfer, so it takes one.
fn one_tracker(flags: &super::args::TrackerFlags) -> anyhow::Result<Option<TrackerTarget>> {
    let mut all = targets(flags);
    if all.len() > 1 {
        anyhow::bail!(UsageError(
            "the daemon takes one --tracker; `share` and `get` without the daemon (--no-daemon) \
             fail over between several"
                .into()
        ));
    }
    Ok(all.pop())
}

impl DaemonArgs {
    async fn config(&self, dir: &Path) -> anyhow::Result<DaemonConfig> {
        Ok(DaemonConfig {
            data_dir: dir.to_path_buf(),
            tracker: one_tracker(&self.tracker)?,
            public_tracker_url: None,
            listen: self.endpoint.listen,
            advertise: resolve_advertise(&self.endpoint.advertise).await?,
            peer_limits: self.peer_limits.limits(),
            upload_limit: self.upload_limit,
            download_limit: self.download_limit,
            compression: self.wire.compression.into(),
            max_active_downloads: self.max_active_downloads.max(1),
            seed: SeedPolicy {
                ratio: self.seed_ratio,
                time: self.seed_time,
            },
            download_dir: match &self.download_dir {
                Some(d) => std::path::absolute(d)?,
                None => dir.join("downloads"),
            },
            chunk_size: self.hashing.chunk_size,
            hash: self.hashing.hash,
        })
    }
}

/// Runs the daemon until SIGINT/SIGTERM.
pub(crate) async fn run(args: DaemonArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    watch_interrupts(stop.clone())?;
    let _lock = server::lock_data_dir(dir)?;
    let socket = server::bind_socket(dir)?;
    let id = identity(dir)?;
    let mut config = args.config(dir).await?;
    let embedded = start_embedded(&args, dir, &mut config).await?;
    let daemon = Daemon::start(id, config)
        .await
        .context("starting the daemon")?;
    let app = api::router(daemon.clone());
    server::serve_socket(socket, app.clone(), daemon.cancel.clone());
    let tcp = match args.api_listen {
        Some(addr) => Some(serve_tcp(addr, dir, app.clone(), &daemon).await?),
        None => None,
    };
    let ui_login = match args.ui {
        Some(addr) => Some(serve_ui(addr, app, &daemon).await?),
        None => None,
    };
    announce_ready(&daemon, dir, tcp, ui_login.as_deref(), mode);
    stop.cancelled().await;
    if mode != Mode::Json {
        eprintln!("stopping: downloads keep their state, peers and trackers hear that we leave");
    }
    daemon.shutdown().await;
    if let Some(t) = embedded {
        t.stop().await;
    }
    let _ = std::fs::remove_file(dir.join(server::SOCKET_FILE));
    // A stop asked for is the daemon's normal end (systemd's `stop`), not an interruption.
    Ok(ExitCode::SUCCESS)
}

/// `--tracker-listen`: the daemon's own tracker, made the tracker of its shares, with the URL
/// other hosts reach it at in share codes.
#[cfg(feature = "embedded-tracker")]
async fn start_embedded(
    args: &DaemonArgs,
    dir: &Path,
    config: &mut DaemonConfig,
) -> anyhow::Result<Option<EmbeddedTracker>> {
    let Some(listen) = args.tracker_listen else {
        return Ok(None);
    };
    let t = EmbeddedTracker::start(listen, dir).await?;
    let (public, note) = t.public_url(config.advertise.as_ref());
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    config.tracker = Some(torrentguard_agent::TrackerTarget {
        url: t.url(),
        fingerprint: Some(t.fingerprint()),
        token: None,
    });
    config.public_tracker_url = Some(public);
    Ok(Some(t))
}

#[cfg(not(feature = "embedded-tracker"))]
async fn start_embedded(
    _args: &DaemonArgs,
    _dir: &Path,
    _config: &mut DaemonConfig,
) -> anyhow::Result<Option<EmbeddedTracker>> {
    Ok(None)
}

async fn serve_tcp(
    addr: SocketAddr,
    dir: &Path,
    app: axum::Router,
    daemon: &Arc<Daemon>,
) -> anyhow::Result<SocketAddr> {
    let listener = server::bind_tcp(addr).await?;
    let bound = listener.local_addr()?;
    let token = server::api_token(dir)?;
    server::serve_tcp(listener, app, token, daemon.cancel.clone());
    Ok(bound)
}

/// Serves the web UI (the same API behind its login, session and CSRF gate) and returns its
/// first one-time login URL.
async fn serve_ui(
    addr: SocketAddr,
    app: axum::Router,
    daemon: &Arc<Daemon>,
) -> anyhow::Result<String> {
    let listener = server::bind_tcp(addr).await?;
    let bound = listener.local_addr()?;
    let auth = ui::UiAuth::new();
    let base = format!("http://{bound}");
    let login = auth.login_url(&base);
    daemon.attach_ui(auth.clone(), base);
    let stop = daemon.cancel.clone();
    let served = ui::serve(listener, ui::router(app, auth), stop.cancelled_owned());
    tokio::spawn(async move {
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the web UI stopped");
        }
    });
    Ok(login)
}

fn announce_ready(
    daemon: &Daemon,
    dir: &Path,
    tcp: Option<SocketAddr>,
    ui_login: Option<&str>,
    mode: Mode,
) {
    let socket = dir.join(server::SOCKET_FILE);
    let peer = daemon.seeder.local_addr();
    if mode == Mode::Json {
        let v = serde_json::json!({
            "event": "daemon",
            "fingerprint": daemon.identity.fingerprint.to_string(),
            "peer_listen": peer,
            "socket": socket,
            "api_listen": tcp,
            "tracker": daemon.config.tracker.as_ref().map(|t| &t.url),
            "ui_login_url": ui_login,
            "data_dir": dir,
        });
        print_line(&v.to_string());
        return;
    }
    print_line(&format!(
        "daemon running: identity {}, peers on {peer}",
        daemon.identity.fingerprint
    ));
    print_line(&format!("control socket: {}", socket.display()));
    if let Some(a) = tcp {
        print_line(&format!(
            "control API on http://{a}/api (bearer token in {})",
            dir.join(server::TOKEN_FILE).display()
        ));
    }
    if let Some(url) = ui_login {
        print_line(&format!(
            "web UI: open {url} (a one-time link, valid 10 minutes)"
        ));
    }
    if let Some(t) = &daemon.config.tracker {
        print_line(&format!("tracker of its shares: {}", t.url));
    } else {
        print_line(
            "no tracker configured: downloads by share code work; to share, restart with --tracker URL \
             (or --tracker-listen ADDR to run its own)",
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::args::{Cli, Command};

    /// The systemd units in contrib/ start a daemon this very CLI accepts.
    #[test]
    fn the_systemd_units_start_a_daemon_the_cli_accepts() {
        for unit in [
            include_str!("../../../contrib/systemd/torrentguard.service"),
            include_str!("../../../contrib/systemd/torrentguard-user.service"),
        ] {
            let exec = unit
                .lines()
                .find_map(|l| l.strip_prefix("ExecStart="))
                .expect("an ExecStart line");
            let words: Vec<&str> = exec.split_whitespace().collect();
            assert!(words[0].ends_with("/torrentguard"), "{exec}");
            let cli = Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{exec}: {e}"));
            assert!(matches!(cli.command, Command::Daemon(_)), "{exec}");
            assert!(unit.contains("KillSignal=SIGTERM"));
        }
    }

    #[test]
    fn ratios_are_non_negative_numbers() {
        assert_eq!(super::parse_ratio("1.5"), Ok(1.5));
        assert_eq!(super::parse_ratio("0"), Ok(0.0));
        assert!(super::parse_ratio("-1").is_err());
        assert!(super::parse_ratio("NaN").is_err());
        assert!(super::parse_ratio("lots").is_err());
    }
}
