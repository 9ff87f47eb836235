//! `torrentguard`: share and fetch files over pinned mutual TLS.
//!
//! A thin shell over the `torrentguard_agent` library: parse flags, set up logging and output,
//! map errors to one clear line and an exit code (0 ok, 1 failure, 2 usage, 130 interrupted).

mod render;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use torrentguard_agent::agent::{Agent, TrackerTarget, load_identity};
use torrentguard_agent::store::list_partials;
use torrentguard_agent::{AgentError, DownloadError, DownloadOptions, Event, EventSink};
use torrentguard_protocol::{FileId, Fingerprint, HashAlgo};
use torrentguard_tracker::identity::Identity;
use torrentguard_tracker::{TrackerArgs, TrackerConfig};

use crate::render::{Mode, Renderer, human};

const EXAMPLES: &str = "\
Examples:
  # Share a file; without --tracker an embedded tracker starts on loopback, and the exact
  # `get` command for other hosts is printed:
  torrentguard share dataset.tar.zst --tracker-listen 0.0.0.0:8443

  # Prove a share end to end: download it back from this very seeder over TLS, then exit:
  torrentguard share --self-download ./image.iso

  # Fetch from a deployed tracker, pinning its fingerprint, and keep seeding afterwards:
  torrentguard get 3f2a…c9 -o ~/Downloads --seed \\
      --tracker https://tracker.lan:8443 --tracker-fingerprint sha256:…

Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted (state saved; rerun to resume).";

#[derive(Parser, Debug)]
#[command(name = "torrentguard", version, about = "Secure peer-to-peer file sharing: chunked, verified, resumable, over pinned mutual TLS", after_help = EXAMPLES)]
struct Cli {
    /// Where this agent keeps its identity (cert.pem, key.pem) and known_trackers.
    /// [default: the platform data directory, e.g. ~/.local/share/torrentguard]
    #[arg(long, global = true, env = "TORRENTGUARD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Print one JSON event per line on stdout instead of bars and sentences (for scripts).
    #[arg(long, global = true)]
    json: bool,

    /// Only print results and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// More log detail on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hash files, register them with the tracker and seed them until interrupted.
    Share(ShareArgs),
    /// Download files by id from every peer the tracker lists, verifying every chunk.
    Get(GetArgs),
    /// Show what the tracker knows (files, seeders, peers) and local partial downloads.
    Status(StatusArgs),
    /// Print this agent's identity: the SHA-256 fingerprint of its certificate.
    Id,
    /// Run a tracker in this process (same service as `torrentguard-tracker`).
    Tracker(TrackerArgs),
}

#[derive(Args, Debug, Clone)]
struct TrackerFlags {
    /// Tracker URL, e.g. https://tracker.lan:8443.
    #[arg(long, env = "TORRENTGUARD_TRACKER", value_name = "URL")]
    tracker: Option<String>,

    /// The tracker's certificate fingerprint (sha256:<64 hex>, printed by the tracker at start).
    /// Without it the fingerprint is trusted on first use and recorded in known_trackers.
    #[arg(long, env = "TORRENTGUARD_TRACKER_FINGERPRINT", value_name = "FP")]
    tracker_fingerprint: Option<Fingerprint>,

    /// Token of a private swarm (sent as a bearer token to the tracker).
    #[arg(
        long,
        env = "TORRENTGUARD_SWARM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    swarm_token: Option<String>,
}

#[derive(Args, Debug)]
struct ShareArgs {
    /// Files to share.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    #[command(flatten)]
    tracker: TrackerFlags,

    /// Address for peer connections (IPv6 wildcard also accepts IPv4). Port 0 picks a free one.
    #[arg(
        long,
        env = "TORRENTGUARD_LISTEN",
        default_value = "[::]:0",
        value_name = "ADDR"
    )]
    listen: SocketAddr,

    /// Without --tracker: where the embedded tracker listens. Loopback by default; use e.g.
    /// 0.0.0.0:8443 to open it to the LAN.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    tracker_listen: SocketAddr,

    /// Chunk size: a power of two from 16K to 16M (suffixes K, M; plain numbers are bytes).
    #[arg(long, default_value = "256K", value_parser = parse_size, value_name = "SIZE")]
    chunk_size: u32,

    /// Digest for chunks and the whole file.
    #[arg(long, default_value = "sha256", value_name = "ALGO")]
    hash: HashAlgo,

    /// After sharing, download each file back from this very seeder over the real TLS path
    /// (as a separate peer identity), compare it with the original, report, and exit.
    #[arg(long)]
    self_download: bool,

    /// Directory for --self-download output [default: a temporary directory, removed after].
    #[arg(short, long, value_name = "DIR", requires = "self_download")]
    output: Option<PathBuf>,

    /// With --self-download: keep seeding afterwards instead of exiting.
    #[arg(long, requires = "self_download")]
    seed: bool,

    /// Limit the upload rate, in bytes per second (suffixes K, M, G). 0 means no limit.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    upload_limit: u64,
}

#[derive(Args, Debug)]
struct GetArgs {
    /// File ids (64 hex digits), as printed by `share`.
    #[arg(required = true, value_name = "FILE_ID")]
    ids: Vec<FileId>,

    /// Output directory.
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    output: PathBuf,

    /// Keep seeding after the download completes, until interrupted.
    #[arg(long)]
    seed: bool,

    /// Replace an existing output file that differs (its matching chunks are kept, only the
    /// others are fetched). An identical one is reported done without it.
    #[arg(long)]
    force: bool,

    /// Give up (exit 1, partial download kept) when no verified data has arrived for this
    /// long, e.g. 30s, 5m, 1h, or plain seconds. Without it, wait for peers indefinitely.
    #[arg(long, value_parser = torrentguard_agent::download::parse_duration, value_name = "DURATION")]
    timeout: Option<std::time::Duration>,

    /// Address for peer connections (others fetch verified chunks from us while we download).
    #[arg(
        long,
        env = "TORRENTGUARD_LISTEN",
        default_value = "[::]:0",
        value_name = "ADDR"
    )]
    listen: SocketAddr,

    /// Most peers to download from at once.
    #[arg(long, default_value_t = 32)]
    max_peers: usize,

    /// Limit the upload rate, in bytes per second (suffixes K, M, G). 0 means no limit.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    upload_limit: u64,

    #[command(flatten)]
    tracker: TrackerFlags,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Show one file's manifest summary and peers.
    file_id: Option<FileId>,

    /// Directory to look in for partial downloads.
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    output: PathBuf,

    #[command(flatten)]
    tracker: TrackerFlags,
}

fn parse_size_u64(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("unknown unit in {s:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        None => (s, 1u64),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_size(s: &str) -> Result<u32, String> {
    let n = parse_size_u64(s)?;
    let n = u32::try_from(n).map_err(|_| format!("{s:?} is too large"))?;
    torrentguard_protocol::manifest::check_chunk_size(n).map_err(|e| e.to_string())?;
    Ok(n)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit_code_of(&e))
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(AgentError::Download(DownloadError::Interrupted)) =
            cause.downcast_ref::<AgentError>()
        {
            return 130;
        }
        if let Some(DownloadError::Interrupted) = cause.downcast_ref::<DownloadError>() {
            return 130;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return 2;
        }
    }
    1
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = data_dir(&cli.data_dir);
    let mode = Mode::pick(cli.json, cli.quiet);
    match cli.command {
        Command::Id => {
            let id = identity(&dir)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"fingerprint": id.fingerprint.to_string(), "data_dir": dir})
                );
            } else {
                println!("{}", id.fingerprint);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tracker(args) => run_tracker(args.into_config()).await,
        Command::Share(args) => share(args, &dir, mode).await,
        Command::Get(args) => get(args, &dir, mode).await,
        Command::Status(args) => status(args, &dir, mode).await,
    }
}

async fn run_tracker(config: TrackerConfig) -> anyhow::Result<ExitCode> {
    let t = torrentguard_tracker::start(config)
        .await
        .context("starting the tracker")?;
    println!(
        "torrentguard-tracker listening on {} fingerprint {}",
        t.url(),
        t.fingerprint
    );
    shutdown_signal().await;
    t.shutdown().await.context("shutting the tracker down")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn target(flags: &TrackerFlags) -> Option<TrackerTarget> {
    flags.tracker.as_ref().map(|url| TrackerTarget {
        url: url.clone(),
        fingerprint: flags.tracker_fingerprint,
        token: flags.swarm_token.clone(),
    })
}

fn require_tracker(flags: &TrackerFlags) -> anyhow::Result<TrackerTarget> {
    target(flags).ok_or_else(|| {
        anyhow!(UsageError(
            "no tracker given: pass --tracker URL (and --tracker-fingerprint) or set TORRENTGUARD_TRACKER; \
             `torrentguard share` prints both"
                .into()
        ))
    })
}

/// The renderer, shared by the engine's events and the CLI's own lines, so everything reaches
/// stdout in the order it happened.
type Output = Arc<std::sync::Mutex<Renderer>>;

fn renderer(mode: Mode) -> (EventSink, Output) {
    let r: Output = Arc::new(std::sync::Mutex::new(Renderer::new(mode)));
    let r2 = r.clone();
    let sink = EventSink::from_fn(move |e| r2.lock().unwrap_or_else(|e| e.into_inner()).event(&e));
    (sink, r)
}

fn host_for(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if !host.is_empty() {
            return format!("{host}:{}", addr.port());
        }
    }
    torrentguard_tracker::dialable(addr).to_string()
}

async fn share(args: ShareArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    for f in &args.files {
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", f.display());
        }
        std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
    }
    let id = identity(dir)?;
    let (events, out) = renderer(mode);
    let say = |s: &str| out.lock().unwrap_or_else(|e| e.into_inner()).say(s);
    let json = |v: serde_json::Value| out.lock().unwrap_or_else(|e| e.into_inner()).json(&v);

    // Without --tracker, run one in this process.
    let (embedded, tracker) = match target(&args.tracker) {
        Some(t) => (None, t),
        None => {
            let cfg = TrackerConfig::new(args.tracker_listen, dir.join("tracker"));
            let t = torrentguard_tracker::start(cfg)
                .await
                .context("starting the embedded tracker")?;
            let url = t.url();
            say(&format!(
                "embedded tracker on {url}, fingerprint {}",
                t.fingerprint
            ));
            json(
                serde_json::json!({"event": "tracker", "url": url, "fingerprint": t.fingerprint.to_string()}),
            );
            let target = TrackerTarget {
                url,
                fingerprint: Some(t.fingerprint),
                token: None,
            };
            (Some(t), target)
        }
    };
    let public_tracker_url = match &embedded {
        Some(t) => format!("https://{}", host_for(t.local_addr)),
        None => tracker.url.clone(),
    };
    let agent = Agent::start(id.clone(), dir.to_path_buf(), &tracker, args.listen).await?;
    agent.seeder.set_upload_limit(args.upload_limit);

    let mut shared = Vec::new();
    for f in &args.files {
        let s = agent.share(f, args.chunk_size, args.hash, &events).await?;
        say(&format!(
            "get it elsewhere with:\n  torrentguard get {} --tracker {} --tracker-fingerprint {}",
            s.file_id,
            public_tracker_url,
            agent.tracker.fingerprint()
        ));
        shared.push(s);
    }

    let mut code = ExitCode::SUCCESS;
    if args.self_download {
        code = self_download(&agent, &tracker, &args, &shared, &events).await?;
        if !args.seed {
            agent.shutdown().await;
            if let Some(t) = embedded {
                t.shutdown().await.ok();
            }
            return Ok(code);
        }
    }
    say("seeding; press Ctrl-C to stop");
    shutdown_signal().await;
    say("stopping: announcing to the tracker that we leave");
    agent.shutdown().await;
    if let Some(t) = embedded {
        t.shutdown().await.ok();
    }
    Ok(code)
}

async fn self_download(
    agent: &Agent,
    tracker: &TrackerTarget,
    args: &ShareArgs,
    shared: &[Arc<torrentguard_agent::seeder::SharedFile>],
    events: &EventSink,
) -> anyhow::Result<ExitCode> {
    // A second, throw-away identity: to the tracker and the seeder it is just another peer,
    // so the whole path (announce, swarm check, pinned mutual TLS, verification) is exercised.
    let other = Arc::new(Identity::generate("torrentguard-self-download")?);
    let loopback: SocketAddr = if agent.listen_addr().is_ipv6() {
        "[::1]:0".parse()?
    } else {
        "127.0.0.1:0".parse()?
    };
    let downloader = Agent::start(other, agent.data_dir.clone(), tracker, loopback).await?;
    let tmp;
    let out_dir = match &args.output {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("torrentguard-self-download")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let interrupt = downloader.cancel.clone();
    let watcher = tokio::spawn(async move {
        shutdown_signal().await;
        interrupt.cancel();
    });
    let mut all_ok = true;
    for s in shared {
        let mut opts = DownloadOptions::new(out_dir.clone());
        opts.events = events.clone();
        let started = Instant::now();
        let report = downloader.download(s.file_id, opts).await?;
        let secs = started.elapsed().as_secs_f64();
        let identical = same_content(&s.path(), &report.path)?;
        all_ok &= identical;
        events.emit(Event::SelfDownload {
            file_id: s.file_id,
            ok: identical,
            bytes: report.bytes,
            secs,
            path: report.path.clone(),
            seeder: agent.listen_addr(),
        });
    }
    watcher.abort();
    downloader.shutdown().await;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut fa = std::fs::File::open(a)?;
    let mut fb = std::fs::File::open(b)?;
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

async fn get(args: GetArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    let tracker = require_tracker(&args.tracker)?;
    if args.output.exists() && !args.output.is_dir() {
        bail!(UsageError(format!(
            "-o {}: is a file, not a directory; name a directory to download into (it is created if missing)",
            args.output.display()
        )));
    }
    std::fs::create_dir_all(&args.output).with_context(|| {
        format!(
            "cannot create the output directory {}",
            args.output.display()
        )
    })?;
    check_writable(&args.output)?;
    let id = identity(dir)?;
    let (events, out) = renderer(mode);
    let agent = Agent::start(id, dir.to_path_buf(), &tracker, args.listen).await?;
    agent.seeder.set_upload_limit(args.upload_limit);
    let interrupt = agent.cancel.clone();
    let watcher = tokio::spawn(async move {
        shutdown_signal().await;
        interrupt.cancel();
    });

    // The same id twice is one download; two ids that would write the same file name are
    // refused before anything is fetched (they would share one `.part`).
    let mut ids = args.ids.clone();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    if ids.len() < args.ids.len() && mode != Mode::Quiet {
        eprintln!("note: a file id was given more than once; each is downloaded once");
    }
    let manifests = match torrentguard_agent::download::fetch_manifests(&agent.tracker, &ids).await
    {
        Ok(m) => m,
        Err(e) => {
            watcher.abort();
            agent.shutdown().await;
            return Err(match e {
                DownloadError::NameClash { .. } => anyhow!(UsageError(e.to_string())),
                e => e.into(),
            });
        }
    };
    let downloads = ids.iter().zip(manifests).map(|(fid, manifest)| {
        let mut opts = DownloadOptions::new(args.output.clone());
        opts.force = args.force;
        opts.max_peers = args.max_peers;
        opts.timeout = args.timeout;
        opts.manifest = manifest;
        opts.events = events.clone();
        agent.download(*fid, opts)
    });
    let results = futures::future::join_all(downloads).await;
    let mut first_err = None;
    let mut reports = Vec::new();
    for (fid, r) in ids.iter().zip(results) {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("download of {fid} failed"));
                if first_err.is_none() {
                    first_err = Some(e);
                } else {
                    eprintln!("error: {}", one_line(&e));
                }
            }
        }
    }
    let interrupted = agent.cancel.is_cancelled();
    if first_err.is_none() && args.seed && !interrupted {
        for r in &reports {
            agent.keep_announcing(r.shared.clone(), events.clone());
            events.emit(Event::Seeding {
                file_id: r.file_id,
                name: r.shared.manifest.name.clone(),
                size: r.bytes,
                listen: agent.listen_addr(),
            });
        }
        out.lock()
            .unwrap_or_else(|e| e.into_inner())
            .say("seeding; press Ctrl-C to stop");
        while !agent.cancel.is_cancelled() {
            agent.cancel.cancelled().await;
        }
    }
    watcher.abort();
    agent.shutdown().await;
    match first_err {
        Some(e) => Err(e),
        None if interrupted && !args.seed => Ok(ExitCode::from(130)),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = tempfile::Builder::new()
        .prefix(".torrentguard-write-test")
        .tempfile_in(dir);
    probe
        .map(|_| ())
        .with_context(|| format!("the output directory {} is not writable", dir.display()))
}

async fn status(args: StatusArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    let tracker = require_tracker(&args.tracker)?;
    let id = identity(dir)?;
    let client = torrentguard_agent::tracker_client::TrackerClient::connect(
        &tracker.url,
        tracker.fingerprint,
        &id,
        dir,
        tracker.token.clone(),
    )
    .await?;
    let partials = list_partials(&args.output);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let ago = |t: i64| format!("{}s ago", (now - t).max(0));

    if let Some(fid) = args.file_id {
        let m = client.manifest(&fid).await?;
        let peers = client.file_peers(&fid).await?.peers;
        if mode == Mode::Json {
            println!(
                "{}",
                serde_json::json!({"file_id": fid, "name": m.name, "size": m.size, "chunk_size": m.chunk_size, "chunks": m.chunk_count(), "hash": m.hash, "peers": peers, "partials": partials.iter().filter(|p| p.file_id == fid).collect::<Vec<_>>()})
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "file {fid}\n  name   {}\n  size   {} ({} bytes)\n  chunks {} × {} ({})",
            m.name,
            human(m.size),
            m.size,
            m.chunk_count(),
            human(m.chunk_size as u64),
            m.hash
        );
        println!(
            "\n{:<20} {:<40} {:>12} {:>10}",
            "PEER", "ADDRESS", "HAVE", "LAST SEEN"
        );
        for p in &peers {
            let have = if p.complete {
                "complete".to_string()
            } else {
                format!("{}/{}", p.have, m.chunk_count())
            };
            println!(
                "{:<20} {:<40} {:>12} {:>10}",
                p.fingerprint.short(),
                SocketAddr::new(p.address, p.port),
                have,
                ago(p.last_seen)
            );
        }
        if peers.is_empty() {
            println!("(no live peers)");
        }
        for p in partials.iter().filter(|p| p.file_id == fid) {
            println!(
                "\nlocal partial download: {} ({}/{} chunks verified)",
                p.part.display(),
                p.chunks_verified,
                p.chunk_count
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    let files = client.all_files().await?;
    let peers = client.peers().await?;
    if mode == Mode::Json {
        println!(
            "{}",
            serde_json::json!({"tracker": client.base_url().as_str(), "fingerprint": client.fingerprint().to_string(), "files": files, "peers": peers, "partials": partials})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("tracker {} ({})\n", client.base_url(), client.fingerprint());
    println!(
        "{:<64}  {:<24} {:>11} {:>7} {:>7} {:>8}",
        "FILE ID", "NAME", "SIZE", "CHUNKS", "SEEDERS", "LEECHERS"
    );
    for f in &files {
        println!(
            "{:<64}  {:<24} {:>11} {:>7} {:>7} {:>8}",
            f.file_id,
            truncate(&f.name, 24),
            human(f.size),
            f.chunk_count,
            f.seeders,
            f.leechers
        );
    }
    if files.is_empty() {
        println!("(no files registered)");
    }
    println!(
        "\n{:<20} {:<40} {:>6} {:>10}",
        "PEER", "ADDRESS", "FILES", "LAST SEEN"
    );
    for p in &peers {
        println!(
            "{:<20} {:<40} {:>6} {:>10}",
            p.fingerprint.short(),
            SocketAddr::new(p.address, p.port),
            p.files.len(),
            ago(p.last_seen)
        );
    }
    if peers.is_empty() {
        println!("(no live peers)");
    }
    if !partials.is_empty() {
        println!("\nlocal partial downloads in {}:", args.output.display());
        for p in &partials {
            println!(
                "  {} {}/{} chunks verified ({})",
                p.part.display(),
                p.chunks_verified,
                p.chunk_count,
                p.file_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256K"), Ok(262144));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("100K").is_err(), "not a power of two");
        assert!(parse_size("32M").is_err(), "too large");
        assert!(parse_size("8K").is_err(), "too small");
        assert!(parse_size("x").is_err());
        assert_eq!(parse_size_u64("10M"), Ok(10 << 20));
        assert_eq!(parse_size_u64("0"), Ok(0));
        Cli::command_for_tests();
    }

    impl Cli {
        fn command_for_tests() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }

    #[test]
    fn default_chunk_size_is_the_protocol_default() {
        use torrentguard_protocol::manifest::DEFAULT_CHUNK_SIZE;
        assert_eq!(parse_size("256K"), Ok(DEFAULT_CHUNK_SIZE));
    }
}
