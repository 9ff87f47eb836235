//! `torrentguard-tracker`: runs the tracker until SIGINT/SIGTERM, or checks a running one's
//! health (`torrentguard-tracker healthcheck`, used by the container's HEALTHCHECK).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use torrentguard_protocol::Fingerprint;
use torrentguard_signals::StopSignals;
use torrentguard_tracker::{TrackerArgs, TrackerConfig, dialable, healthcheck};
use torrentguard_trust::identity;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "torrentguard-tracker",
    version,
    about = "TorrentGuard tracker: registers file manifests and introduces peers, over HTTPS",
    long_about = "TorrentGuard tracker: registers file manifests and introduces peers, over HTTPS.\n\n\
        On first start it creates its identity (a self-signed certificate) in the data directory \
        and prints its fingerprint; clients pin that fingerprint. Every flag can also be set by \
        the environment variable shown with it. Logs go to stderr (RUST_LOG, default info); \
        stdout gets one line with the address and fingerprint once the tracker is ready. Flags may \
        come before or after the subcommand."
)]
struct Cli {
    /// Directory for the SQLite database and the generated identity (cert.pem, key.pem with
    /// mode 0600). Created if missing. [default: the platform data directory, e.g.
    /// ~/.local/share/torrentguard/tracker]
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_TRACKER_DATA_DIR",
        value_name = "DIR"
    )]
    data_dir: Option<PathBuf>,

    /// Log format on stderr: text (coloured only on a terminal) or json (one object a line).
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_TRACKER_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(flatten)]
    tracker: TrackerArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks that the tracker configured by the same flags and environment answers /healthz
    /// with its own fingerprint. Exit status 0 if healthy, 1 otherwise.
    Healthcheck {
        /// Address to probe. [default: the --listen address, with 127.0.0.1 for 0.0.0.0 or ::]
        #[arg(long, value_name = "ADDR")]
        addr: Option<SocketAddr>,
        /// Fingerprint to pin. [default: that of --cert, or of the identity in --data-dir]
        #[arg(long, value_name = "FP")]
        fingerprint: Option<Fingerprint>,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        timeout: u64,
    },
}

fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a file or a log collector.
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(torrentguard_tracker::default_data_dir);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => serve(cli.tracker.into_config(data_dir)).await,
            Some(Command::Healthcheck {
                addr,
                fingerprint,
                timeout,
            }) => check(cli.tracker, &data_dir, addr, fingerprint, timeout).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr: a log line as well would say it twice.
            if cli.log_format == LogFormat::Json {
                eprintln!(
                    "{}",
                    serde_json::json!({"level": "ERROR", "message": format!("{e:#}")})
                );
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: TrackerConfig) -> anyhow::Result<()> {
    let tracker = torrentguard_tracker::start(config)
        .await
        .context("starting the tracker")?;
    // Before the ready line: a SIGTERM right after it must find the handler in place.
    let mut signals = StopSignals::install().context("installing the signal handlers")?;
    {
        // End-to-end tests and scripts read this line; keep its words.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "torrentguard-tracker listening on https://{} fingerprint {}",
            tracker.local_addr, tracker.fingerprint
        )?;
        out.flush()?;
    }
    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down gracefully");
    tracker
        .shutdown()
        .await
        .context("shutting down the tracker")
}

async fn check(
    args: TrackerArgs,
    data_dir: &Path,
    addr: Option<SocketAddr>,
    fingerprint: Option<Fingerprint>,
    timeout: u64,
) -> anyhow::Result<()> {
    let addr = addr.unwrap_or_else(|| dialable(args.listen));
    let pin = match fingerprint {
        Some(f) => f,
        None => {
            let cert_path = args
                .cert
                .clone()
                .unwrap_or_else(|| data_dir.join(identity::CERT_FILE));
            fingerprint_of(&cert_path)?
        }
    };
    let health = healthcheck::probe(addr, pin, Duration::from_secs(timeout))
        .await
        .with_context(|| format!("tracker at {addr} is not healthy"))?;
    println!(
        "healthy: {} version {} fingerprint {}",
        addr, health.version, health.fingerprint
    );
    Ok(())
}

fn fingerprint_of(cert_path: &Path) -> anyhow::Result<Fingerprint> {
    let cert = CertificateDer::from_pem_file(cert_path)
        .with_context(|| format!("reading the certificate {}", cert_path.display()))?;
    Ok(Fingerprint::of_der(&cert))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every flag that takes a value shows one of the placeholders the agent uses too.
    #[test]
    fn every_value_flag_has_a_house_style_placeholder() {
        const PLACEHOLDERS: &[&str] = &[
            "ADDR", "DIR", "FP", "FORMAT", "N", "PEM", "RATE", "SECS", "TOKEN", "URL",
        ];
        let cli = Cli::command();
        let commands = std::iter::once(&cli).chain(cli.get_subcommands());
        for command in commands {
            for arg in command.get_arguments() {
                if !arg.get_action().takes_values() || arg.is_positional() {
                    continue;
                }
                let names = arg.get_value_names().unwrap_or_default();
                assert!(
                    names.len() == 1 && PLACEHOLDERS.contains(&names[0].as_str()),
                    "--{} of {} shows {names:?}",
                    arg.get_id(),
                    command.get_name()
                );
            }
        }
    }

    #[test]
    fn global_flags_follow_the_subcommand() {
        let cli = Cli::try_parse_from([
            "torrentguard-tracker",
            "healthcheck",
            "--data-dir",
            "/x",
            "--listen",
            "[::1]:9",
            "--log-format",
            "json",
        ])
        .expect("flags after the subcommand parse");
        assert_eq!(cli.data_dir, Some(PathBuf::from("/x")));
        assert_eq!(cli.tracker.listen, "[::1]:9".parse().unwrap());
        assert_eq!(cli.log_format, LogFormat::Json);
    }
}
