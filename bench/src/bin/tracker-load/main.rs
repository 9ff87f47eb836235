//! `tracker-load`: drives a tracker with many simulated peers and reports announces/s and
//! latency (issue 14 §5).
//!
//! Each simulated peer is one identity: against TorrentGuard its own client certificate over
//! mutual TLS, from its own loopback source address (127.1.x.y), as a real agent would be. K
//! workers each hold one HTTP/1.1 keep-alive connection at a time, as one peer, send that
//! peer's next announces on it (`--requests-per-connection`), close it and move on to their next
//! peer, so every peer is live on the tracker while only K connections are open. The announce
//! mix follows each (peer, file)'s life: started, progress, completed, stopped (see `mix.rs`).
//!
//! ```text
//! tracker-load torrentguard --target https://127.0.0.1:PORT [--target ...] --fingerprint FP
//! tracker-load opentracker --target http://127.0.0.1:PORT/announce
//! tracker-load whitelist --files 1000 > whitelist      # opentracker's list of the same files
//! ```
//!
//! Prints one JSON report on stdout (and `--json FILE`), a summary on stderr. Exit status 1 if
//! any answer was a 5xx: under overload the tracker must refuse with 429, never fail.

mod client;
mod fleet;
mod hist;
mod load;
mod mix;
mod stats;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio::time::Instant;
use torrentguard_protocol::Fingerprint;

use crate::client::Tracker;
use crate::load::{Peer, Plan};
use crate::mix::Mix;
use crate::stats::Stats;

#[derive(Parser)]
#[command(about = "Load a tracker with many simulated peers; report announces/s and latency")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A TorrentGuard tracker (HTTPS, mutual TLS): registers the files, then announces.
    Torrentguard {
        /// Tracker URL (https://IP:PORT). Repeat for replicas: workers are spread over them.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// The tracker's certificate fingerprint (sha256:HEX), pinned; replicas share one.
        #[arg(long)]
        fingerprint: Fingerprint,
        /// Swarm token, if the tracker has one.
        #[arg(long, env = "TORRENTGUARD_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// opentracker (plain HTTP BitTorrent announces); its whitelist must list the files.
    Opentracker {
        /// Announce URL (http://IP:PORT/announce).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Prints the info hashes opentracker stands in for the files (one hex line each).
    Whitelist {
        #[arg(long, default_value_t = 1_000)]
        files: usize,
        #[arg(long, default_value_t = 64)]
        chunks: u32,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Simulated peers, each its own identity and source address.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Files, registered before the load starts.
    #[arg(long, default_value_t = 1_000)]
    files: usize,
    /// Files each peer shares or fetches.
    #[arg(long, default_value_t = 2)]
    files_per_peer: usize,
    /// Chunks of each file (256 KiB each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    chunks: u32,
    /// Connections open at once (one worker each).
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Announces a peer sends on one keep-alive connection before the worker moves on.
    #[arg(long, default_value_t = 20)]
    requests_per_connection: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds of load before measuring (peers start, connections and caches warm).
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Announces per second in total, paced (latency counted from when each was due). Without
    /// it every worker sends its next announce as soon as the last is answered (saturation).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of peers that start with the whole file.
    #[arg(long, default_value_t = 0.2)]
    seeder_share: f64,
    /// Chance that an announce of a started peer is `stopped`.
    #[arg(long, default_value_t = 0.03)]
    stop_chance: f64,
    /// Seed of the announce mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenario name carried into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Also write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let (tracker, targets, load) = match cmd {
        Cmd::Whitelist { files, chunks } => {
            let mut out = std::io::stdout().lock();
            for id in fleet::file_ids(files, chunks) {
                writeln!(out, "{}", hex::encode(&id.as_bytes()[..20]))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Torrentguard {
            targets,
            fingerprint,
            token,
            load,
        } => (Tracker::TorrentGuard { fingerprint, token }, targets, load),
        Cmd::Opentracker { targets, load } => (Tracker::OpenTracker, targets, load),
    };
    check(&load)?;
    let targets = targets
        .iter()
        .map(|t| client::parse_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stats = drive(tracker.clone(), targets.clone(), &load).await?;
    let setup = json!({
        "label": load.label,
        "tracker": match tracker { Tracker::TorrentGuard { .. } => "torrentguard", Tracker::OpenTracker => "opentracker" },
        "targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "peers": load.peers, "files": load.files, "files_per_peer": load.files_per_peer,
        "connections": load.connections, "requests_per_connection": load.requests_per_connection,
        "warmup_s": load.warmup, "rate": load.rate, "seed": load.seed,
    });
    let report = stats.report(Duration::from_secs(load.duration), setup);
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &load.json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    summary(&report);
    if stats.server_errors() > 0 {
        eprintln!(
            "FAIL: {} answers were 5xx (overload must answer 429)",
            stats.server_errors()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn check(load: &LoadArgs) -> anyhow::Result<()> {
    if load.peers == 0
        || load.files == 0
        || load.connections == 0
        || load.requests_per_connection == 0
    {
        bail!("--peers, --files, --connections and --requests-per-connection must be at least 1");
    }
    if load.files_per_peer == 0 || load.files_per_peer > load.files {
        bail!("--files-per-peer must be 1..=--files");
    }
    if load.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    Ok(())
}

/// Generates the identities, registers the files, runs the workers, merges their counts.
async fn drive(
    tracker: Tracker,
    targets: Vec<SocketAddr>,
    load: &LoadArgs,
) -> anyhow::Result<Stats> {
    let files = fleet::file_ids(load.files, load.chunks);
    let identities = match tracker {
        Tracker::TorrentGuard { .. } => {
            let started = std::time::Instant::now();
            let n = load.peers;
            let ids = tokio::task::spawn_blocking(move || fleet::identities(n)).await??;
            eprintln!(
                "{n} peer identities generated in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            register(&tracker, targets[0], &ids, load).await?;
            Some(ids)
        }
        Tracker::OpenTracker => None,
    };
    let workers = load.connections.min(load.peers);
    let mut shares: Vec<Vec<Peer>> = (0..workers).map(|_| Vec::new()).collect();
    for i in 0..load.peers {
        let id = identities.as_ref().map(|ids| ids[i].clone());
        shares[i % workers].push(Peer::new(i, load.files_per_peer, load.files, id));
    }
    let now = Instant::now();
    let measure_from = now + Duration::from_secs(load.warmup);
    let plan = Arc::new(Plan {
        tracker,
        targets,
        files,
        mix: Mix {
            chunks: load.chunks,
            seeder_share: load.seeder_share,
            stop_chance: load.stop_chance,
            step: load.chunks.div_ceil(8),
        },
        per_connection: load.requests_per_connection,
        measure_from,
        deadline: measure_from + Duration::from_secs(load.duration),
        pace: load
            .rate
            .map(|r| Duration::from_secs_f64(workers as f64 / r)),
    });
    eprintln!(
        "{} peers on {workers} connections: {} s warm-up, {} s measured",
        load.peers, load.warmup, load.duration
    );
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(w, peers)| tokio::spawn(load::worker(w, plan.clone(), peers, load.seed)))
        .collect();
    let mut total = Stats::default();
    for t in tasks {
        total.merge(t.await.context("a worker panicked")?);
    }
    Ok(total)
}

/// Registers every file, file `i` by peer `i` (its certificate and source address, as a real
/// swarm's files come from many sharers; one identity registering them all would meet the
/// tracker's per-certificate write rate). 200 for one already there, as on a re-run against the
/// same database. A few lanes at once: registration is not what is measured.
async fn register(
    tracker: &Tracker,
    target: SocketAddr,
    ids: &[Arc<torrentguard_trust::Identity>],
    load: &LoadArgs,
) -> anyhow::Result<()> {
    let Tracker::TorrentGuard { fingerprint, token } = tracker else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let lanes = 8.min(load.files);
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (token, host, fingerprint) = (token.clone(), target.to_string(), *fingerprint);
        let (files, chunks) = (load.files, load.chunks);
        let ids: Vec<_> = (lane..files)
            .step_by(lanes)
            .map(|i| (i, ids[i % ids.len()].clone(), i % ids.len()))
            .collect();
        tasks.push(tokio::spawn(async move {
            for (i, id, peer) in ids {
                let tls = client::tls_config(&id, fingerprint)?;
                let source = std::net::IpAddr::V4(fleet::source_address(peer));
                let mut sender = client::connect(target, source, Some(tls))
                    .await
                    .with_context(|| format!("connecting to {target} to register file {i}"))?;
                let body = serde_json::to_vec(&fleet::manifest(i, chunks))?;
                let req = client::post_json(&host, "/api/v1/files", token.as_deref(), body)?;
                let answer = client::send(&mut sender, req).await?;
                if !matches!(answer.status, 200 | 201) {
                    bail!("registering file {i}: HTTP {}", answer.status);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a registration task panicked")??;
    }
    eprintln!(
        "{} files registered in {:.1} s",
        load.files,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn summary(r: &serde_json::Value) {
    eprintln!(
        "{} announces/s  p50 {} ms  p99 {} ms  429: {}  other 4xx: {}  5xx: {}  transport errors: {}  connections: {}",
        r["announces_per_s"],
        r["p50_ms"],
        r["p99_ms"],
        r["rate_limited_429"],
        r["client_errors_other"],
        r["server_errors_5xx"],
        r["transport_errors"],
        r["connections"],
    );
}
