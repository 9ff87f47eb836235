//! The `torrentguard` CLI, by concern.

mod args;
#[cfg(feature = "daemon")]
mod client;
mod codes;
mod config;
#[cfg(feature = "daemon")]
mod daemon;
mod embedded;
mod exit;
mod generate;
mod get;
mod hash;
mod interrupt;
mod logging;
mod output;
mod render;
mod share;
mod show_config;
mod status;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use torrentguard_agent::agent::{TrackerTarget, load_identity};
use torrentguard_agent::reach::{Advertise, AdvertiseSpec};
use torrentguard_trust::Identity;

pub(crate) use args::parse_cli;
use args::{Cli, Command, TrackerFlags};
use exit::UsageError;
pub(crate) use exit::report_failure;
pub(crate) use logging::init_logging;
pub(crate) use render::{Mode, print_line};

fn data_dir(cli_dir: &Option<PathBuf>) -> PathBuf {
    cli_dir.clone().unwrap_or_else(|| {
        directories::ProjectDirs::from("", "", "torrentguard")
            .map(|d| d.data_dir().to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".torrentguard"))
    })
}

fn identity(dir: &Path) -> anyhow::Result<Arc<Identity>> {
    let (id, created) = load_identity(dir)
        .with_context(|| format!("loading the agent identity from {}", dir.display()))?;
    if created {
        tracing::info!(fingerprint = %id.fingerprint, dir = %dir.display(), "created a new agent identity");
    }
    Ok(Arc::new(id))
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = data_dir(&cli.data_dir);
    let mode = Mode::pick(cli.json, cli.quiet);
    match cli.command {
        Command::Id => {
            let id = identity(&dir)?;
            if cli.json {
                print_line(
                    &serde_json::json!({"event": "identity", "fingerprint": id.fingerprint.to_string(), "data_dir": dir})
                        .to_string(),
                );
            } else {
                print_line(&id.fingerprint.to_string());
            }
            Ok(ExitCode::SUCCESS)
        }
        // The same place the embedded tracker of `share` uses, never the agent's own identity.
        #[cfg(feature = "embedded-tracker")]
        Command::Tracker(args) => {
            embedded::run_tracker(args.into_config(dir.join("tracker")), cli.json).await
        }
        Command::Share(args) => share::share(args, &dir, mode).await,
        Command::Get(args) => get::get(args, &dir, mode).await,
        Command::Hash(args) => hash::hash(args, mode).await,
        Command::Status(args) => status::status(args, &dir, mode).await,
        Command::Verify(args) => verify::verify(args, &dir, mode).await,
        #[cfg(feature = "daemon")]
        Command::Daemon(args) => daemon::run(args, &dir, mode).await,
        #[cfg(feature = "daemon")]
        Command::Pause(args) => client::control(args, &dir, client::Action::Pause, mode).await,
        #[cfg(feature = "daemon")]
        Command::Resume(args) => client::control(args, &dir, client::Action::Resume, mode).await,
        #[cfg(feature = "daemon")]
        Command::Rm(args) => client::control(args, &dir, client::Action::Remove, mode).await,
        #[cfg(feature = "daemon")]
        Command::Ui => client::ui_login(&dir, mode).await,
        Command::Config => Ok(show_config::show(&cli.settings, &dir, mode)),
        Command::Completions(args) => generate::completions(args.shell),
        Command::Man(args) => generate::man(args.dir.as_deref()),
    }
}

/// The trackers of `--tracker`, in order, each pinned to its own `#sha256:…` or else to
/// `--tracker-fingerprint`.
fn targets(flags: &TrackerFlags) -> Vec<TrackerTarget> {
    let one = |t: &torrentguard_agent::PinnedUrl| TrackerTarget {
        url: t.url.clone(),
        fingerprint: t.fingerprint.or(flags.tracker_fingerprint),
        token: flags.swarm_token.clone(),
    };
    flags.tracker.iter().map(one).collect()
}

/// A client of `tracker` with this agent's identity (for `status` and `verify`, which need no
/// agent around it).
async fn tracker_client(
    tracker: &TrackerTarget,
    dir: &Path,
) -> anyhow::Result<torrentguard_agent::session::TrackerClient> {
    let id = identity(dir)?;
    Ok(torrentguard_agent::session::TrackerClient::connect(
        &tracker.url,
        tracker.fingerprint,
        &id,
        dir,
        tracker.token.clone(),
    )
    .await?)
}

/// A client of the first of `trackers` that answers (a share code may name several).
async fn first_tracker_client(
    trackers: &[TrackerTarget],
    dir: &Path,
) -> anyhow::Result<torrentguard_agent::session::TrackerClient> {
    let connected = codes::first_that_connects(
        trackers,
        |t| async move { tracker_client(&t, dir).await },
        |e: &anyhow::Error| {
            e.downcast_ref::<torrentguard_agent::session::TrackerError>()
                .is_some()
        },
    )
    .await;
    connected.unwrap_or_else(|| Err(no_tracker()))
}

/// The trackers of `refs` and `flags` (see [`codes::trackers_for`]); at least one.
fn require_trackers(
    refs: &[codes::FileRef],
    flags: &TrackerFlags,
) -> anyhow::Result<Vec<TrackerTarget>> {
    let trackers = codes::trackers_for(refs, flags)?;
    if trackers.is_empty() {
        return Err(no_tracker());
    }
    Ok(trackers)
}

fn no_tracker() -> anyhow::Error {
    anyhow!(UsageError(
        "no tracker given: pass a share code (tg1:…), or --tracker URL#sha256:… (or --tracker URL \
         --tracker-fingerprint sha256:…), \
         or set TORRENTGUARD_TRACKER or `tracker` in the config file; `torrentguard share` prints them"
            .into()
    ))
}

/// `--port-map upnp`: maps a router port to the agent's listener; a line to tell the user
/// either way. Never fatal: without a mapping, peers reach the agent as they would have.
async fn map_port(agent: &torrentguard_agent::agent::Agent, how: args::PortMap) -> Option<String> {
    if how == args::PortMap::Off {
        return None;
    }
    Some(match agent.map_port().await {
        Ok(m) => {
            tracing::info!(external = %m, local = %m.local, gateway = %m.gateway, "UPnP port mapping in place");
            format!(
                "port mapping: the router at {} forwards {m} to this agent ({}), renewed while it runs",
                m.gateway.ip(),
                m.local
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "no UPnP port mapping");
            format!("port mapping: none ({e})")
        }
    })
}

/// `--advertise`, resolved once at start (a name that does not resolve is an error now, not
/// a silent bad announce later).
async fn resolve_advertise(spec: &Option<AdvertiseSpec>) -> anyhow::Result<Option<Advertise>> {
    match spec {
        None => Ok(None),
        Some(s) => Ok(Some(s.resolve().await.context("--advertise")?)),
    }
}
