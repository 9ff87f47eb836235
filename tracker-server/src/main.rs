//! `torrentguard-tracker`: runs the tracker until SIGINT/SIGTERM, or checks a running one's
//! health (`torrentguard-tracker healthcheck`, used by the container's HEALTHCHECK).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use torrentguard_protocol::Fingerprint;
use torrentguard_tracker::{TrackerArgs, dialable, healthcheck, identity};
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
        stdout gets one line with the address and fingerprint once the tracker is ready."
)]
struct Cli {
    #[command(flatten)]
    tracker: TrackerArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks that the tracker configured by the same flags and environment answers /healthz
    /// with its own fingerprint. Exit status 0 if healthy, 1 otherwise.
    Healthcheck {
        /// Address to probe. [default: the --listen address, with loopback for 0.0.0.0 or ::]
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Fingerprint to pin. [default: that of --cert, or of the identity in --data-dir]
        #[arg(long)]
        fingerprint: Option<Fingerprint>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => serve(cli.tracker).await,
            Some(Command::Healthcheck {
                addr,
                fingerprint,
                timeout,
            }) => check(cli.tracker, addr, fingerprint, timeout).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: TrackerArgs) -> anyhow::Result<()> {
    let tracker = torrentguard_tracker::start(args.into_config())
        .await
        .context("starting the tracker")?;
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
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down gracefully");
    tracker
        .shutdown()
        .await
        .context("shutting down the tracker")
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; Ok("SIGINT") }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

async fn check(
    args: TrackerArgs,
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
                .unwrap_or_else(|| args.data_dir().join(identity::CERT_FILE));
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
