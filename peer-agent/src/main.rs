//! `torrentguard`: share and fetch files over pinned mutual TLS.
//!
//! A thin shell over the `torrentguard_agent` library: parse flags, set up logging and output,
//! map errors to one clear line and an exit code (0 ok, 1 failure, 2 usage, 130 interrupted).

mod embedded;
mod render;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use torrentguard_agent::agent::{Agent, TrackerTarget, load_identity};
use torrentguard_agent::reach::{Advertise, AdvertiseSpec};
use torrentguard_agent::seeder::SeederLimits;
use torrentguard_agent::store::list_partials;
use torrentguard_agent::{AgentError, DownloadError, DownloadOptions, Event, EventSink};
use torrentguard_protocol::{FileId, Fingerprint, HashAlgo};
use torrentguard_signals::StopSignals;
use torrentguard_trust::Identity;

use crate::embedded::EmbeddedTracker;
use crate::render::{Mode, Renderer, cell, human, print_line, printable};

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

    /// Print one JSON event per line on stdout instead of bars and sentences (for scripts);
    /// logs on stderr become JSON lines too.
    #[arg(long, global = true)]
    json: bool,

    /// Only print results and errors: `share` prints each file id, `get` each final path.
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
    /// Run a tracker in this process (same service as `torrentguard-tracker`), keeping its
    /// identity and database in <data-dir>/tracker.
    #[cfg(feature = "embedded-tracker")]
    Tracker(torrentguard_tracker::TrackerArgs),
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

    /// The address other hosts reach us at, IP or host name, with a port if it differs from the
    /// listening one (NAT, port forwarding): announced to the tracker instead of the address
    /// it sees us connect from.
    #[arg(long, env = "TORRENTGUARD_ADVERTISE", value_name = "ADDR[:PORT]")]
    advertise: Option<AdvertiseSpec>,

    /// Without --tracker: where the embedded tracker listens. Loopback by default; use e.g.
    /// 0.0.0.0:8443 to open it to the LAN.
    #[cfg(feature = "embedded-tracker")]
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    tracker_listen: SocketAddr,

    /// Chunk size: a power of two from 16K to 16M (suffixes K, M; plain numbers are bytes).
    #[arg(long, default_value = "256K", value_parser = parse_size, value_name = "SIZE")]
    chunk_size: u32,

    /// Digest for chunks and the whole file.
    #[arg(long, default_value = "sha256", value_name = "ALGO", value_parser = hash_algo_parser())]
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

    #[command(flatten)]
    peer_limits: PeerLimitFlags,
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

    /// The address other hosts reach us at, IP or host name, with a port if it differs from the
    /// listening one (NAT, port forwarding): announced to the tracker instead of the address
    /// it sees us connect from.
    #[arg(long, env = "TORRENTGUARD_ADVERTISE", value_name = "ADDR[:PORT]")]
    advertise: Option<AdvertiseSpec>,

    /// Most peers to download from at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_peers: usize,

    /// Limit the upload rate, in bytes per second (suffixes K, M, G). 0 means no limit.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    upload_limit: u64,

    #[command(flatten)]
    peer_limits: PeerLimitFlags,

    #[command(flatten)]
    tracker: TrackerFlags,
}

/// What one peer may hold of our seeding listener.
#[derive(Args, Debug, Clone)]
struct PeerLimitFlags {
    /// Most connections one peer certificate may hold to us at once.
    #[arg(long, default_value_t = SeederLimits::default().max_per_peer, value_name = "N",
          value_parser = at_least_one)]
    max_peer_connections: usize,

    /// Most connections one IP address may hold to us at once (before TLS).
    #[arg(long, default_value_t = SeederLimits::default().max_per_address, value_name = "N",
          value_parser = at_least_one)]
    max_address_connections: usize,

    /// Close a peer connection with nothing requested for this long (e.g. 15s, 2m).
    #[arg(long, default_value = "15s", value_name = "DURATION",
          value_parser = torrentguard_agent::download::parse_duration)]
    peer_idle_timeout: std::time::Duration,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a number of at least 1")),
    }
}

impl PeerLimitFlags {
    fn limits(&self) -> SeederLimits {
        SeederLimits {
            max_per_peer: self.max_peer_connections,
            max_per_address: self.max_address_connections,
            idle_timeout: self.peer_idle_timeout,
            ..SeederLimits::default()
        }
    }
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Show one file's manifest summary and peers.
    #[arg(value_name = "FILE_ID")]
    file_id: Option<FileId>,

    /// Directory to look in for partial downloads. Without a tracker, only these are shown.
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    output: PathBuf,

    #[command(flatten)]
    tracker: TrackerFlags,
}

/// `--hash` takes exactly the algorithms `HashAlgo` knows, listed in `--help` and in errors.
fn hash_algo_parser() -> impl clap::builder::TypedValueParser<Value = HashAlgo> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["sha256", "sha1"]).try_map(|s| s.parse::<HashAlgo>())
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
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logging(cli.verbose, cli.quiet, cli.json);
    let mode = Mode::pick(cli.json, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = anyhow!(e).context("cannot start the runtime");
            return ExitCode::from(report_failure(mode, &e));
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking work still running (hashing a file when Ctrl-C came) must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => {
            if mode == Mode::Json && code == ExitCode::from(130) {
                print_line(
                    &serde_json::json!({"event": "interrupted", "exit_code": 130}).to_string(),
                );
            }
            code
        }
        Err(e) => ExitCode::from(report_failure(mode, &e)),
    }
}

/// Parses the command line. A usage error of a `--json` invocation is a JSON `error` event on
/// stdout (exit code 2), so a script reading the stream sees why it ended, and stderr holds no
/// plain text; help and version print as usual.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if e.use_stderr() && std::env::args_os().any(|a| a == "--json") => {
            let text = e.to_string();
            // The error proper is the first paragraph (usage and hints follow), on one line.
            let head = text.split("\n\n").next().unwrap_or_default();
            let head = head.strip_prefix("error: ").unwrap_or(head);
            let message = head.split_whitespace().collect::<Vec<_>>().join(" ");
            print_line(
                &serde_json::json!({"event": "error", "message": message, "exit_code": 2})
                    .to_string(),
            );
            Err(ExitCode::from(2))
        }
        Err(e) => e.exit(),
    }
}

/// Reports the error that ends the process and returns its exit code. In JSON mode it is the
/// stream's last event (`interrupted` or `error`, with the exit code), logged on stderr as JSON.
fn report_failure(mode: Mode, e: &anyhow::Error) -> u8 {
    let code = exit_code_of(e);
    let message = printable(&one_line(e)).into_owned();
    if mode == Mode::Json {
        tracing::error!("{message}");
        let event = if code == 130 { "interrupted" } else { "error" };
        print_line(
            &serde_json::json!({"event": event, "message": message, "exit_code": code}).to_string(),
        );
    } else {
        eprint_line(&format!("error: {message}"));
    }
    code
}

/// Reports an error the process goes on after (e.g. one of several downloads failed): one line
/// on stderr, or an `error` event without `exit_code` in JSON mode.
fn report_error(mode: Mode, e: &anyhow::Error) {
    let message = printable(&one_line(e)).into_owned();
    if mode == Mode::Json {
        tracing::error!("{message}");
        print_line(&serde_json::json!({"event": "error", "message": message}).to_string());
    } else {
        eprint_line(&format!("error: {message}"));
    }
}

/// `eprintln!` without its panic when stderr is closed: there is nobody left to tell.
fn eprint_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn init_logging(verbose: u8, quiet: bool, json: bool) {
    use std::io::IsTerminal as _;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        let colour = use_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        logs.with_ansi(colour).init();
    }
}

/// Colours only for a person at a terminal: never when stderr is a file or a pipe, and never
/// when `NO_COLOR` is set to anything non-empty (https://no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
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
        Command::Share(args) => share(args, &dir, mode).await,
        Command::Get(args) => get(args, &dir, mode).await,
        Command::Status(args) => status(args, &dir, mode).await,
    }
}

/// After the first Ctrl-C, how long a stop may take before the process exits regardless (the
/// stop itself is bounded at ~2 s; this also covers blocking work such as hashing).
const STOP_DEADLINE: Duration = Duration::from_secs(3);
/// The exit code of an interrupted command.
const INTERRUPTED: u8 = 130;

/// Cancels `stop` on the first SIGINT/SIGTERM; a graceful, bounded stop follows. A second
/// signal, or a stop overrunning [`STOP_DEADLINE`], exits with 130 at once.
fn watch_interrupts(stop: CancellationToken) -> anyhow::Result<()> {
    let mut signals = StopSignals::install().context("installing the Ctrl-C handler")?;
    tokio::spawn(async move {
        signals.recv().await;
        stop.cancel();
        tokio::select! {
            _ = signals.recv() => eprintln!("interrupted again: exiting now"),
            _ = tokio::time::sleep(STOP_DEADLINE) => eprintln!("stopping took too long: exiting now"),
        }
        std::process::exit(INTERRUPTED.into());
    });
    Ok(())
}

/// Cancels `to` when `from` is cancelled.
fn forward(from: &CancellationToken, to: CancellationToken) {
    let from = from.clone();
    tokio::spawn(async move {
        from.cancelled().await;
        to.cancel();
    });
}

/// `fut`'s output, or `None` if `stop` comes first.
async fn unless_stopped<T>(stop: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = stop.cancelled() => None,
    }
}

/// One `stopped` event per file served: what it uploaded, and how many requests were answered
/// `Busy` (deferred to another downloader holding the chunk).
fn report_stopped(out: &Output, files: &[Arc<torrentguard_agent::seeder::SharedFile>]) {
    let r = out.lock().unwrap_or_else(|e| e.into_inner());
    for f in files {
        let uploaded = f.uploaded.load(std::sync::atomic::Ordering::Relaxed);
        r.json(&serde_json::json!({
            "event": "stopped",
            "file_id": f.file_id,
            "name": f.manifest.name,
            "uploaded": uploaded,
            "busy_refusals": f.busy_refusals(),
        }));
        r.say(&format!(
            "stopped seeding {}: uploaded {}",
            f.manifest.name,
            human(uploaded)
        ));
    }
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

/// `--advertise`, resolved once at start (a name that does not resolve is an error now, not
/// a silent bad announce later).
async fn resolve_advertise(spec: &Option<AdvertiseSpec>) -> anyhow::Result<Option<Advertise>> {
    match spec {
        None => Ok(None),
        Some(s) => Ok(Some(s.resolve().await.context("--advertise")?)),
    }
}

/// The renderer of `share`: with `-q`, only file ids and self-download verdicts.
fn share_renderer(mode: Mode) -> (EventSink, Output) {
    let (sink, out) = renderer(mode);
    out.lock()
        .unwrap_or_else(|e| e.into_inner())
        .completed_paths_are_not_results();
    (sink, out)
}

async fn share(args: ShareArgs, dir: &Path, mode: Mode) -> anyhow::Result<ExitCode> {
    for f in &args.files {
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", f.display());
        }
        std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
    }
    let advertise = resolve_advertise(&args.advertise).await?;
    let stop = CancellationToken::new();
    watch_interrupts(stop.clone())?;
    let id = identity(dir)?;
    let (events, out) = share_renderer(mode);
    let say = |s: &str| out.lock().unwrap_or_else(|e| e.into_inner()).say(s);
    let json = |v: serde_json::Value| out.lock().unwrap_or_else(|e| e.into_inner()).json(&v);

    // Without --tracker, run one in this process.
    let (embedded, tracker) = match target(&args.tracker) {
        Some(t) => (None, t),
        None => {
            let t = EmbeddedTracker::for_share(&args, dir).await?;
            let url = t.url();
            say(&format!(
                "embedded tracker on {url}, fingerprint {}",
                t.fingerprint()
            ));
            json(
                serde_json::json!({"event": "tracker", "url": url, "fingerprint": t.fingerprint().to_string()}),
            );
            let target = TrackerTarget {
                url,
                fingerprint: Some(t.fingerprint()),
                token: None,
            };
            (Some(t), target)
        }
    };
    let (public_tracker_url, reach_note) = match &embedded {
        Some(t) => t.public_url(advertise.as_ref()),
        None => (tracker.url.clone(), None),
    };
    if let Some(note) = &reach_note {
        say(note);
    }
    let embedded_stop = |t: Option<EmbeddedTracker>| async move {
        if let Some(t) = t {
            t.stop().await;
        }
    };
    let started = Agent::start_with_limits(
        id.clone(),
        dir.to_path_buf(),
        &tracker,
        args.listen,
        args.peer_limits.limits(),
    );
    let agent = match unless_stopped(&stop, started).await {
        Some(a) => a?,
        None => {
            embedded_stop(embedded).await;
            return Ok(ExitCode::from(INTERRUPTED));
        }
    };
    agent.seeder.set_upload_limit(args.upload_limit);
    if let Some(a) = advertise.clone() {
        agent.seeder.set_advertise(a);
    }
    let served = serve_and_report(
        &agent,
        &args,
        &tracker,
        &public_tracker_url,
        &events,
        &out,
        &stop,
    )
    .await;
    if !stop.is_cancelled() && !matches!(served, Ok(Served::KeepSeeding)) {
        // Done (self-download without --seed) or failed: leave without waiting for Ctrl-C.
        agent.shutdown().await;
        embedded_stop(embedded).await;
        return served.map(Served::exit_code);
    }
    if matches!(served, Ok(Served::KeepSeeding)) {
        say("seeding; press Ctrl-C to stop");
        stop.cancelled().await;
    }
    say("stopping: telling peers and the tracker that we leave");
    agent.shutdown().await;
    report_stopped(&out, &agent.seeder.files());
    embedded_stop(embedded).await;
    match served {
        Err(e) if !is_interrupted(&e) => Err(e),
        _ => Ok(ExitCode::from(INTERRUPTED)),
    }
}

/// How sharing went before the wait for Ctrl-C.
enum Served {
    /// Seed until interrupted.
    KeepSeeding,
    /// `--self-download` without `--seed`: exit now, with this code.
    Done(ExitCode),
}

impl Served {
    fn exit_code(self) -> ExitCode {
        match self {
            Served::KeepSeeding => ExitCode::SUCCESS,
            Served::Done(code) => code,
        }
    }
}

fn is_interrupted(e: &anyhow::Error) -> bool {
    exit_code_of(e) == INTERRUPTED
}

/// Hashes, registers and serves every file, printing the `get` command for each, then runs the
/// self-download if asked. Returns early (`KeepSeeding`) if `stop` fires.
async fn serve_and_report(
    agent: &Agent,
    args: &ShareArgs,
    tracker: &TrackerTarget,
    public_tracker_url: &str,
    events: &EventSink,
    out: &Output,
    stop: &CancellationToken,
) -> anyhow::Result<Served> {
    let mut shared = Vec::new();
    for f in &args.files {
        let hashed = agent.share(f, args.chunk_size, args.hash, events);
        let Some(s) = unless_stopped(stop, hashed).await else {
            return Ok(Served::KeepSeeding);
        };
        let s = s?;
        out.lock()
            .unwrap_or_else(|e| e.into_inner())
            .quiet_result(&s.file_id.to_string());
        out.lock().unwrap_or_else(|e| e.into_inner()).say(&format!(
            "get it elsewhere with:\n  torrentguard get {} --tracker {} --tracker-fingerprint {}",
            s.file_id,
            public_tracker_url,
            agent.tracker.fingerprint()
        ));
        shared.push(s);
    }
    if !args.self_download {
        return Ok(Served::KeepSeeding);
    }
    let code = self_download(agent, tracker, args, &shared, events, stop).await?;
    Ok(if args.seed {
        Served::KeepSeeding
    } else {
        Served::Done(code)
    })
}

async fn self_download(
    agent: &Agent,
    tracker: &TrackerTarget,
    args: &ShareArgs,
    shared: &[Arc<torrentguard_agent::seeder::SharedFile>],
    events: &EventSink,
    stop: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    // A second, throw-away identity: to the tracker and the seeder it is just another peer,
    // so the whole path (announce, swarm check, pinned mutual TLS, verification) is exercised.
    let other = Arc::new(Identity::generate("torrentguard-self-download")?);
    let loopback: SocketAddr = if agent.listen_addr().is_ipv6() {
        "[::1]:0".parse()?
    } else {
        "127.0.0.1:0".parse()?
    };
    let Some(downloader) = unless_stopped(
        stop,
        Agent::start(other, agent.data_dir.clone(), tracker, loopback),
    )
    .await
    else {
        return Err(DownloadError::Interrupted.into());
    };
    let downloader = downloader?;
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
    forward(stop, downloader.cancel.clone());
    let mut all_ok = true;
    for s in shared {
        let mut opts = DownloadOptions::new(out_dir.clone());
        opts.events = events.clone();
        let started = Instant::now();
        let report = match downloader.download(s.file_id, opts).await {
            Ok(r) => r,
            Err(e) => {
                // Its `stopped` announces are owed whatever the error.
                downloader.shutdown().await;
                return Err(e.into());
            }
        };
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
    let advertise = resolve_advertise(&args.advertise).await?;
    let stop = CancellationToken::new();
    watch_interrupts(stop.clone())?;
    let id = identity(dir)?;
    let (events, out) = renderer(mode);
    let started = Agent::start_with_limits(
        id,
        dir.to_path_buf(),
        &tracker,
        args.listen,
        args.peer_limits.limits(),
    );
    let Some(agent) = unless_stopped(&stop, started).await else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    let agent = agent?;
    agent.seeder.set_upload_limit(args.upload_limit);
    if let Some(a) = advertise {
        agent.seeder.set_advertise(a);
    }
    forward(&stop, agent.cancel.clone());

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
                    report_error(mode, &e);
                }
            }
        }
    }
    if first_err.is_none() && args.seed && !stop.is_cancelled() {
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
        stop.cancelled().await;
    }
    // Every end (done, failed, interrupted) leaves the swarm: `stopped` for each file announced.
    agent.shutdown().await;
    if args.seed && first_err.is_none() {
        let served: Vec<_> = reports.iter().map(|r| r.shared.clone()).collect();
        report_stopped(&out, &served);
    }
    match first_err {
        Some(e) => Err(e),
        None if stop.is_cancelled() => Ok(ExitCode::from(INTERRUPTED)),
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
    let mut partials = list_partials(&args.output);
    if let Some(fid) = args.file_id {
        partials.retain(|p| p.file_id == fid);
    }
    let Some(tracker) = target(&args.tracker) else {
        // Local partial downloads need no tracker: show them alone and say what is skipped.
        if mode == Mode::Json {
            print_line(
                &serde_json::json!({"event": "status", "tracker": null, "file_id": args.file_id, "partials": partials})
                    .to_string(),
            );
        } else {
            print_line(
                "tracker: skipped (no --tracker given, nor TORRENTGUARD_TRACKER); local part only",
            );
            print_partials(&args.output, &partials);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let id = identity(dir)?;
    let client = torrentguard_agent::tracker_client::TrackerClient::connect(
        &tracker.url,
        tracker.fingerprint,
        &id,
        dir,
        tracker.token.clone(),
    )
    .await?;
    match args.file_id {
        Some(fid) => status_of_file(&client, fid, &partials, mode).await?,
        None => status_of_tracker(&client, &args.output, &partials, mode).await?,
    }
    Ok(ExitCode::SUCCESS)
}

type Client = torrentguard_agent::tracker_client::TrackerClient;
type Partial = torrentguard_agent::store::PartialDownload;

fn ago(t: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format!("{}s ago", (now - t).max(0))
}

async fn status_of_file(
    client: &Client,
    fid: FileId,
    partials: &[Partial],
    mode: Mode,
) -> anyhow::Result<()> {
    let m = client.manifest(&fid).await?;
    let peers = client.file_peers(&fid).await?.peers;
    if mode == Mode::Json {
        print_line(&serde_json::json!({"event": "file_status", "file_id": fid, "name": m.name, "size": m.size, "chunk_size": m.chunk_size, "chunks": m.chunk_count(), "hash": m.hash, "peers": peers, "partials": partials}).to_string());
        return Ok(());
    }
    print_line(&format!(
        "file {fid}\n  name   {}\n  size   {} ({} bytes)\n  chunks {} × {} ({})",
        printable(&m.name),
        human(m.size),
        m.size,
        m.chunk_count(),
        human(m.chunk_size as u64),
        m.hash
    ));
    print_line(&format!(
        "\n{:<20} {:<40} {:>12} {:>10}",
        "PEER", "ADDRESS", "HAVE", "LAST SEEN"
    ));
    for p in &peers {
        let have = if p.complete {
            "complete".to_string()
        } else {
            format!("{}/{}", p.have, m.chunk_count())
        };
        print_line(&format!(
            "{:<20} {:<40} {:>12} {:>10}",
            p.fingerprint.short(),
            SocketAddr::new(p.address, p.port).to_string(),
            have,
            ago(p.last_seen)
        ));
    }
    if peers.is_empty() {
        print_line("(no live peers)");
    }
    for p in partials {
        print_line(&format!(
            "\nlocal partial download: {} ({}/{} chunks verified)",
            printable(&p.part.display().to_string()),
            p.chunks_verified,
            p.chunk_count
        ));
    }
    Ok(())
}

async fn status_of_tracker(
    client: &Client,
    output: &Path,
    partials: &[Partial],
    mode: Mode,
) -> anyhow::Result<()> {
    let files = client.all_files().await?;
    let peers = client.peers().await?;
    if mode == Mode::Json {
        print_line(&serde_json::json!({"event": "status", "tracker": client.base_url().as_str(), "fingerprint": client.fingerprint().to_string(), "files": files, "peers": peers, "partials": partials}).to_string());
        return Ok(());
    }
    print_line(&format!(
        "tracker {} ({})\n",
        client.base_url(),
        client.fingerprint()
    ));
    print_line(&format!(
        "{:<64}  {} {:>11} {:>7} {:>7} {:>8}",
        "FILE ID",
        cell("NAME", NAME_COLUMNS),
        "SIZE",
        "CHUNKS",
        "SEEDERS",
        "LEECHERS"
    ));
    for f in &files {
        print_line(&format!(
            "{:<64}  {} {:>11} {:>7} {:>7} {:>8}",
            f.file_id.to_string(),
            cell(&f.name, NAME_COLUMNS),
            human(f.size),
            f.chunk_count,
            f.seeders,
            f.leechers
        ));
    }
    if files.is_empty() {
        print_line("(no files registered)");
    }
    print_line(&format!(
        "\n{:<20} {:<40} {:>6} {:>10}",
        "PEER", "ADDRESS", "FILES", "LAST SEEN"
    ));
    for p in &peers {
        print_line(&format!(
            "{:<20} {:<40} {:>6} {:>10}",
            p.fingerprint.short(),
            SocketAddr::new(p.address, p.port).to_string(),
            p.files.len(),
            ago(p.last_seen)
        ));
    }
    if peers.is_empty() {
        print_line("(no live peers)");
    }
    if !partials.is_empty() {
        print_line("");
        print_partials(output, partials);
    }
    Ok(())
}

/// Width of the NAME column of `status`, in terminal columns.
const NAME_COLUMNS: usize = 24;

fn print_partials(output: &Path, partials: &[Partial]) {
    if partials.is_empty() {
        print_line(&format!(
            "no partial downloads in {}",
            printable(&output.display().to_string())
        ));
        return;
    }
    print_line(&format!(
        "local partial downloads in {}:",
        printable(&output.display().to_string())
    ));
    for p in partials {
        print_line(&format!(
            "  {} {}/{} chunks verified ({})",
            printable(&p.part.display().to_string()),
            p.chunks_verified,
            p.chunk_count,
            p.file_id
        ));
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

    /// `torrentguard tracker` exists exactly when the embedded tracker is built in.
    #[test]
    fn tracker_subcommand_exists_only_with_the_embedded_tracker() {
        let parsed = Cli::try_parse_from(["torrentguard", "tracker"]);
        assert_eq!(
            parsed.is_ok(),
            cfg!(feature = "embedded-tracker"),
            "{parsed:?}"
        );
    }

    /// Without the embedded tracker, `share` without `--tracker` is a usage error (exit 2)
    /// naming the flag and the missing feature, before anything is started.
    #[cfg(not(feature = "embedded-tracker"))]
    #[tokio::test]
    async fn share_without_a_tracker_is_a_usage_error_without_the_embedded_tracker() {
        let Command::Share(args) = Cli::try_parse_from(["torrentguard", "share", "f"])
            .unwrap()
            .command
        else {
            panic!("not parsed as share");
        };
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = EmbeddedTracker::for_share(&args, dir.path()).await else {
            panic!("an embedded tracker started without the feature");
        };
        assert_eq!(exit_code_of(&err), 2);
        let text = err.to_string();
        assert!(
            text.contains("--tracker") && text.contains("embedded-tracker"),
            "{text}"
        );
        assert!(!dir.path().join("tracker").exists());
    }

    impl Cli {
        fn command_for_tests() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }

    /// The one placeholder style of the agent's help: every value-taking argument names its
    /// value with one of these upper-case words (the tracker's own flags are its own).
    const PLACEHOLDERS: &[&str] = &[
        "ADDR",
        "ADDR[:PORT]",
        "ALGO",
        "DIR",
        "DURATION",
        "FILE",
        "FILE_ID",
        "FP",
        "N",
        "RATE",
        "SIZE",
        "TOKEN",
        "URL",
    ];

    #[test]
    fn every_value_takes_a_placeholder_of_the_house_style() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let mut checked = 0;
        let mut commands = vec![&cli];
        commands.extend(cli.get_subcommands().filter(|c| c.get_name() != "tracker"));
        for cmd in commands {
            for arg in cmd.get_arguments() {
                if !arg.get_num_args().is_some_and(|n| n.takes_values()) {
                    continue;
                }
                let names = arg.get_value_names().unwrap_or_default();
                assert!(
                    !names.is_empty(),
                    "{} --{}: no placeholder",
                    cmd.get_name(),
                    arg.get_id()
                );
                for n in names {
                    assert!(
                        PLACEHOLDERS.contains(&n.as_str()),
                        "{} {}: placeholder <{n}> is not one of {PLACEHOLDERS:?}",
                        cmd.get_name(),
                        arg.get_id()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} value-taking arguments seen");
    }

    #[test]
    fn hash_lists_its_values() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let share = cli.find_subcommand("share").expect("share exists");
        let hash = share
            .get_arguments()
            .find(|a| a.get_id() == "hash")
            .expect("--hash exists");
        let values: Vec<String> = hash
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(values, ["sha256", "sha1"]);
        let help = share.clone().term_width(200).render_help().to_string();
        assert!(help.contains("[possible values: sha256, sha1]"), "{help}");
        let err = Cli::try_parse_from(["torrentguard", "share", "--hash", "md5", "f"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        let ok = Cli::try_parse_from(["torrentguard", "share", "--hash", "sha1", "f"]).unwrap();
        assert!(matches!(
            ok.command,
            Command::Share(ShareArgs {
                hash: HashAlgo::Sha1,
                ..
            })
        ));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn default_chunk_size_is_the_protocol_default() {
        use torrentguard_protocol::manifest::DEFAULT_CHUNK_SIZE;
        assert_eq!(parse_size("256K"), Ok(DEFAULT_CHUNK_SIZE));
    }
}
