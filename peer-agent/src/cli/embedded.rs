//! The tracker this binary can run in its own process: `share`'s embedded tracker (when no
//! `--tracker` is given) and the `torrentguard tracker` subcommand.
//!
//! Both sit behind the `embedded-tracker` cargo feature (on by default) because they are the
//! only reason the agent links the tracker service (axum, hyper, sqlx). Without the feature
//! there is no `tracker` subcommand, and `share` without `--tracker` is a usage error saying
//! why; everything else works the same against a separate `torrentguard-tracker`.

use std::path::Path;

use torrentguard_agent::reach::Advertise;
use torrentguard_protocol::Fingerprint;

use super::args::ShareArgs;

/// Bound on stopping the embedded tracker.
#[cfg(feature = "embedded-tracker")]
const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A tracker serving in this process. Without the feature none can exist (the type is empty),
/// so code holding one compiles either way and the compiler proves it unreachable.
pub struct EmbeddedTracker {
    #[cfg(feature = "embedded-tracker")]
    running: torrentguard_tracker::RunningTracker,
    #[cfg(not(feature = "embedded-tracker"))]
    never: std::convert::Infallible,
}

#[cfg(feature = "embedded-tracker")]
impl EmbeddedTracker {
    /// Starts `share`'s tracker on `--tracker-listen`, with its identity and database in
    /// `<data-dir>/tracker` (never the agent's own identity).
    pub async fn for_share(args: &ShareArgs, dir: &Path) -> anyhow::Result<Self> {
        Self::start(args.tracker_listen, dir).await
    }

    /// Starts a tracker on `listen`, with its identity and database in `<dir>/tracker`.
    pub async fn start(listen: std::net::SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let cfg = torrentguard_tracker::TrackerConfig::new(listen, dir.join("tracker"));
        let running = torrentguard_tracker::start(cfg)
            .await
            .context("starting the embedded tracker")?;
        Ok(EmbeddedTracker { running })
    }

    pub fn url(&self) -> String {
        self.running.url()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.running.fingerprint
    }

    /// The tracker's URL for other hosts, or its loopback URL and a note on how to open it to
    /// the LAN when it listens on loopback only.
    pub fn public_url(&self, advertise: Option<&Advertise>) -> (String, Option<String>) {
        let bound = self.running.local_addr;
        match torrentguard_agent::reach::public_host(bound, advertise) {
            Some(host) => (format!("https://{host}:{}", bound.port()), None),
            None => (
                format!("https://{}", torrentguard_tracker::dialable(bound)),
                Some(
                    "(the tracker listens on loopback only: other hosts need --tracker-listen 0.0.0.0:8443, \
                     and --advertise ADDR if the address printed then is not the one they reach)"
                        .into(),
                ),
            ),
        }
    }

    /// Stops it, waiting at most [`STOP_WITHIN`]: the agent is leaving anyway.
    pub async fn stop(self) {
        let _ = tokio::time::timeout(STOP_WITHIN, self.running.shutdown()).await;
    }
}

#[cfg(not(feature = "embedded-tracker"))]
impl EmbeddedTracker {
    /// Without the feature `share` needs `--tracker`: a usage error (exit 2) that says so.
    pub async fn for_share(_args: &ShareArgs, _dir: &Path) -> anyhow::Result<Self> {
        Err(anyhow::anyhow!(super::exit::UsageError(
            NO_EMBEDDED_TRACKER.into()
        )))
    }

    pub fn url(&self) -> String {
        match self.never {}
    }

    pub fn fingerprint(&self) -> Fingerprint {
        match self.never {}
    }

    pub fn public_url(&self, _advertise: Option<&Advertise>) -> (String, Option<String>) {
        match self.never {}
    }

    pub async fn stop(self) {
        match self.never {}
    }
}

/// Why `share` without `--tracker` fails in a build without the embedded tracker.
#[cfg(not(feature = "embedded-tracker"))]
pub const NO_EMBEDDED_TRACKER: &str = "no tracker given: pass --tracker URL (and --tracker-fingerprint) or set \
     TORRENTGUARD_TRACKER; this torrentguard was built without an embedded tracker \
     (cargo feature `embedded-tracker`)";

/// `torrentguard tracker`: serves until SIGINT or SIGTERM. The ready line is
/// `torrentguard-tracker`'s, or with `--json` the `tracker` event that `share` prints for its
/// embedded tracker, plus `data_dir`.
#[cfg(feature = "embedded-tracker")]
pub async fn run_tracker(
    config: torrentguard_tracker::TrackerConfig,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;

    use super::render::print_line;
    let data_dir = config.data_dir.clone();
    let t = torrentguard_tracker::start(config)
        .await
        .context("starting the tracker")?;
    // Before the ready line: a SIGTERM right after it must find the handler in place.
    let mut signals =
        torrentguard_signals::StopSignals::install().context("installing the signal handlers")?;
    if json {
        print_line(
            &serde_json::json!({"event": "tracker", "url": t.url(), "fingerprint": t.fingerprint.to_string(), "data_dir": data_dir})
                .to_string(),
        );
    } else {
        print_line(&format!(
            "torrentguard-tracker listening on {} fingerprint {}",
            t.url(),
            t.fingerprint
        ));
    }
    let signal = signals.recv().await;
    tracing::info!(signal, "stopping the tracker");
    t.shutdown().await.context("shutting the tracker down")?;
    Ok(std::process::ExitCode::SUCCESS)
}

// Only the build without the embedded tracker has something to check here.
#[cfg(all(test, not(feature = "embedded-tracker")))]
mod tests {
    use super::super::args::{Cli, Command};
    use super::super::exit::exit_code_of;
    use super::*;
    use clap::Parser as _;

    /// Without the embedded tracker, `share` without `--tracker` is a usage error (exit 2)
    /// naming the flag and the missing feature, before anything is started.
    #[tokio::test]
    async fn share_without_a_tracker_is_a_usage_error_without_the_embedded_tracker() {
        let Command::Share(args) = Cli::try_parse_from(["torrentguard", "share", "f"])
            .unwrap()
            .command
        else {
            panic!("not parsed as share");
        };
        let dir = tempfile::tempdir().unwrap();
        // `EmbeddedTracker` is uninhabited here, so `Ok` cannot happen: `let Err(..) = .. else`
        // would be an irrefutable pattern.
        let err = EmbeddedTracker::for_share(&args, dir.path())
            .await
            .err()
            .expect("an embedded tracker started without the feature");
        assert_eq!(exit_code_of(&err), 2);
        let text = err.to_string();
        assert!(
            text.contains("--tracker") && text.contains("embedded-tracker"),
            "{text}"
        );
        assert!(!dir.path().join("tracker").exists());
    }
}
