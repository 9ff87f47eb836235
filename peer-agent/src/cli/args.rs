//! The command line: clap structs and value parsers.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use torrentguard_agent::PinnedUrl;
use torrentguard_agent::peer::SeederLimits;
use torrentguard_agent::reach::AdvertiseSpec;
use torrentguard_protocol::{Fingerprint, HashAlgo};

use super::codes::FileRef;
use super::config;
use super::render::print_line;

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

/// `--compression`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    Auto,
    Off,
    /// Every chunk, whether it pays or not: a test and bench knob
    /// (`TORRENTGUARD_COMPRESSION=always`), hidden from the help.
    #[value(hide = true)]
    Always,
}

impl From<Compression> for torrentguard_protocol::compression::Mode {
    fn from(c: Compression) -> Self {
        use torrentguard_protocol::compression::Mode;
        match c {
            Compression::Auto => Mode::Auto,
            Compression::Off => Mode::Off,
            Compression::Always => Mode::Always,
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "torrentguard", version, about = "Secure peer-to-peer file sharing: chunked, verified, resumable, over pinned mutual TLS", after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// Where this agent keeps its identity (cert.pem, key.pem) and known_trackers.
    /// [default: the platform data directory, e.g. ~/.local/share/torrentguard]
    #[arg(long, global = true, env = "TORRENTGUARD_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// The config file: TOML whose keys are long flag names in snake_case (tracker, listen,
    /// upload_limit, ...), each the default of that flag in every command; flags and their
    /// environment variables override it. `torrentguard config` shows what applies.
    /// [default: the platform config directory, e.g. ~/.config/torrentguard/config.toml]
    #[arg(long, global = true, env = config::CONFIG_ENV, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// The config file read before parsing (set by [`parse_cli`], not by clap).
    #[arg(skip)]
    pub(crate) settings: config::Settings,

    /// Print one JSON event per line on stdout instead of bars and sentences (for scripts);
    /// logs on stderr become JSON lines too.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Only print results and errors: `share` prints each file id, `get` each final path.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,

    /// More log detail on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Hash files, register them with the tracker and seed them until interrupted.
    Share(ShareArgs),
    /// Download files by share code (or id) from every peer the tracker lists, verifying every
    /// chunk.
    Get(GetArgs),
    /// Show what the tracker knows (files, seeders, peers) and local partial downloads.
    Status(StatusArgs),
    /// Print the id a file, a directory or several paths would be shared as, without a
    /// tracker: one file keeps the id `share FILE` announces, a directory makes one tree, and
    /// several paths make one tree with --name.
    Hash(HashArgs),
    /// Check a file or folder on disk against a share's manifest from the tracker: every chunk,
    /// and a file's whole-content digest (what `sha256sum` prints).
    Verify(VerifyArgs),
    /// Print this agent's identity: the SHA-256 fingerprint of its certificate.
    Id,
    /// Print the effective settings (flags aside) and where each comes from: an environment
    /// variable, the config file, or the built-in default.
    Config,
    /// Print a shell completion script, e.g.
    /// `torrentguard completions bash > ~/.local/share/bash-completion/completions/torrentguard`.
    Completions(CompletionsArgs),
    /// Write the man pages (torrentguard.1 and one per command) to DIR, e.g.
    /// ~/.local/share/man/man1; without DIR, print the main page.
    Man(ManArgs),
    /// Run a tracker in this process (same service as `torrentguard-tracker`), keeping its
    /// identity and database in <data-dir>/tracker.
    #[cfg(feature = "embedded-tracker")]
    Tracker(torrentguard_tracker::TrackerArgs),
    /// Run one long-running agent for every share and download: one peer port, a control API
    /// on a Unix socket (and optionally loopback TCP and a web UI); `share`, `get`, `status`,
    /// `pause`, `resume` and `rm` then talk to it.
    #[cfg(feature = "daemon")]
    Daemon(super::daemon::DaemonArgs),
    /// Pause shares or downloads of the running daemon (a download keeps its state).
    #[cfg(feature = "daemon")]
    Pause(super::client::ControlArgs),
    /// Resume paused (or failed) shares or downloads of the running daemon.
    #[cfg(feature = "daemon")]
    Resume(super::client::ControlArgs),
    /// Stop and forget shares or downloads of the running daemon; files on disk stay.
    #[cfg(feature = "daemon")]
    Rm(super::client::ControlArgs),
    /// Print a fresh one-time login URL of the running daemon's web UI (`daemon --ui`).
    #[cfg(feature = "daemon")]
    Ui,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct TrackerFlags {
    /// Tracker URL, e.g. https://tracker.lan:8443, optionally with the tracker's fingerprint
    /// after '#': https://tracker.lan:8443#sha256:<64 hex>. Repeat it (or separate URLs by
    /// commas) for several trackers: the first that answers is used, the next on failure.
    #[arg(
        long,
        env = "TORRENTGUARD_TRACKER",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) tracker: Vec<PinnedUrl>,

    /// The tracker's certificate fingerprint (sha256:<64 hex>, printed by the tracker at start),
    /// for every --tracker without its own '#sha256:…' (replicas share one certificate).
    /// Without either, the fingerprint is trusted on first use and recorded in known_trackers.
    #[arg(long, env = "TORRENTGUARD_TRACKER_FINGERPRINT", value_name = "FP")]
    pub(crate) tracker_fingerprint: Option<Fingerprint>,

    /// Token of a private swarm (sent as a bearer token to the tracker).
    #[arg(
        long,
        env = "TORRENTGUARD_SWARM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) swarm_token: Option<String>,

    /// Which of the above came from the config file (no flag, no env): a share code's
    /// tracker replaces those, never a flag's.
    #[arg(skip)]
    pub(crate) from_config: BTreeSet<String>,
}

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ShareArgs {
    #[cfg(feature = "daemon")]
    #[command(flatten)]
    pub(crate) client: super::client::ClientFlags,

    /// Files or folders to share: each is one share (a folder is one tree with one id), or all
    /// of them one tree with --name.
    #[arg(required = true, value_name = "PATH")]
    pub(crate) files: Vec<PathBuf>,

    /// Share every PATH as one tree named NAME (each PATH a top-level entry of it).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// In a shared folder, follow symbolic links whose target stays inside it (others are
    /// skipped with a warning naming each). Without it every link is skipped so.
    #[arg(long)]
    pub(crate) follow_symlinks: bool,

    #[command(flatten)]
    pub(crate) tracker: TrackerFlags,

    /// Also print each share code as a QR code (for a phone's camera).
    #[arg(long)]
    pub(crate) qr: bool,

    #[command(flatten)]
    pub(crate) endpoint: EndpointFlags,

    /// Without --tracker: where the embedded tracker listens. Loopback by default; use e.g.
    /// 0.0.0.0:8443 to open it to the LAN.
    #[cfg(feature = "embedded-tracker")]
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub(crate) tracker_listen: SocketAddr,

    #[command(flatten)]
    pub(crate) hashing: HashFlags,

    /// After sharing, download each file back from this very seeder over the real TLS path
    /// (as a separate peer identity), compare it with the original, report, and exit.
    #[arg(long)]
    pub(crate) self_download: bool,

    /// Directory for --self-download output [default: a temporary directory, removed after].
    #[arg(short, long, value_name = "DIR", requires = "self_download")]
    pub(crate) output: Option<PathBuf>,

    /// With --self-download: keep seeding afterwards instead of exiting.
    #[arg(long, requires = "self_download")]
    pub(crate) seed: bool,

    /// Limit the upload rate, in bytes per second (suffixes K, M, G). 0 means no limit.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    pub(crate) upload_limit: u64,

    #[command(flatten)]
    pub(crate) wire: WireFlags,

    #[command(flatten)]
    pub(crate) peer_limits: PeerLimitFlags,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct HashArgs {
    /// Files or directories, as `share` takes them: each one id (a directory's contents make
    /// its tree), or all of them one tree with --name.
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,

    /// Hash every PATH as one tree named NAME, each a top-level entry of it (with one file: a
    /// tree of that file under this name).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    #[command(flatten)]
    pub(crate) hashing: HashFlags,

    /// Follow symbolic links whose target stays inside the directory; links that leave it,
    /// and every link without this flag, are skipped with a warning.
    #[arg(long)]
    pub(crate) follow_symlinks: bool,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    #[cfg(feature = "daemon")]
    #[command(flatten)]
    pub(crate) client: super::client::ClientFlags,

    /// Share codes (tg1:…) or file ids (64 hex digits), as printed by `share`. A share code
    /// brings its tracker, fingerprint and token; --tracker, --tracker-fingerprint and
    /// --swarm-token (or their environment variables) override it.
    #[arg(required = true, value_name = "CODE")]
    pub(crate) ids: Vec<FileRef>,

    /// Output directory.
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub(crate) output: PathBuf,

    /// Keep seeding after the download completes, until interrupted.
    #[arg(long)]
    pub(crate) seed: bool,

    /// Replace an existing output file that differs (its matching chunks are kept, only the
    /// others are fetched). An identical one is reported done without it.
    #[arg(long)]
    pub(crate) force: bool,

    /// Give up (exit 1, partial download kept) when no verified data has arrived for this
    /// long, e.g. 30s, 5m, 1h, or plain seconds. Without it, wait for peers indefinitely.
    #[arg(long, value_parser = torrentguard_agent::download::parse_duration, value_name = "DURATION")]
    pub(crate) timeout: Option<std::time::Duration>,

    /// Of a directory share, fetch only the files whose relative path matches GLOB (repeatable;
    /// `*` stays within one folder, `**` crosses folders, a folder's name selects all under it).
    #[arg(long, value_name = "GLOB")]
    pub(crate) only: Vec<String>,

    /// Before fetching, take every chunk that matches from PATH, an old version of the file or
    /// folder (repeatable; each chunk is verified by its digest like a fetched one).
    #[arg(long, value_name = "PATH")]
    pub(crate) reuse: Vec<PathBuf>,

    /// Besides every chunk (always checked before it is written), hash a downloaded file whole
    /// as it lies on disk and compare with the digest `sha256sum` would print: one more SHA-256
    /// pass over the file.
    #[arg(long)]
    pub(crate) verify_full: bool,

    #[command(flatten)]
    pub(crate) endpoint: EndpointFlags,

    /// Most peers to download from at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) max_peers: usize,

    /// Limit the upload rate, in bytes per second (suffixes K, M, G). 0 means no limit.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    pub(crate) upload_limit: u64,

    /// Limit the download rate of all the ids together, in bytes of chunks per second
    /// (suffixes K, M, G). 0 means no limit.
    #[arg(long, default_value = "0", value_parser = parse_size_u64, value_name = "RATE")]
    pub(crate) download_limit: u64,

    #[command(flatten)]
    pub(crate) wire: WireFlags,

    #[command(flatten)]
    pub(crate) peer_limits: PeerLimitFlags,

    #[command(flatten)]
    pub(crate) tracker: TrackerFlags,
}

/// How a share is cut and hashed (`share`, `hash`, the daemon's new shares).
#[derive(Args, Debug, Clone)]
pub(crate) struct HashFlags {
    /// Chunk size: a power of two from 16K to 16M (suffixes K, M; plain numbers are bytes).
    #[arg(long, default_value = "256K", value_parser = parse_size, value_name = "SIZE")]
    pub(crate) chunk_size: u32,

    /// Digest for chunks and the whole file.
    #[arg(long, default_value = "sha256", value_name = "ALGO", value_parser = hash_algo_parser())]
    pub(crate) hash: HashAlgo,
}

/// Where peers reach this agent: the one port of every share and download (others fetch
/// verified chunks from a download too).
#[derive(Args, Debug, Clone)]
pub(crate) struct EndpointFlags {
    /// Address for peer connections (IPv6 wildcard also accepts IPv4). Port 0 picks a free one;
    /// set a port to keep it across restarts (firewalls, port forwarding).
    #[arg(
        long,
        env = "TORRENTGUARD_LISTEN",
        default_value = "[::]:0",
        value_name = "ADDR"
    )]
    pub(crate) listen: SocketAddr,

    /// The address other hosts reach us at, IP or host name, with a port if it differs from the
    /// listening one (NAT, port forwarding): announced to the tracker instead of the address
    /// it sees us connect from.
    #[arg(long, env = "TORRENTGUARD_ADVERTISE", value_name = "ADDR[:PORT]")]
    pub(crate) advertise: Option<AdvertiseSpec>,

    /// Ask the home router to forward a public port to the listening port (UPnP-IGD), so peers
    /// behind other NATs can dial this agent directly. Off unless asked: it multicasts a search
    /// on the local network and opens a port on the router while the agent runs.
    #[arg(
        long,
        value_enum,
        default_value = "off",
        env = "TORRENTGUARD_PORT_MAP",
        value_name = "MODE"
    )]
    pub(crate) port_map: PortMap,
}

/// `--port-map`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortMap {
    /// No port mapping.
    Off,
    /// UPnP-IGD (the router's Internet Gateway Device service).
    Upnp,
}

/// How chunks travel between peers.
#[derive(Args, Debug, Clone)]
pub(crate) struct WireFlags {
    /// zstd-compress chunks on the wire when it pays (auto: measured per connection, on only
    /// when the link is slower than compression saves), or never (off: not even offered, so
    /// peers from before compression interoperate).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "TORRENTGUARD_COMPRESSION",
        value_name = "MODE"
    )]
    pub(crate) compression: Compression,
}

/// What one peer may hold of our seeding listener.
#[derive(Args, Debug, Clone)]
pub(crate) struct PeerLimitFlags {
    /// Most connections one peer certificate may hold to us at once.
    #[arg(long, default_value_t = SeederLimits::default().max_per_peer, value_name = "N",
          value_parser = at_least_one)]
    pub(crate) max_peer_connections: usize,

    /// Most connections one IP address may hold to us at once (before TLS).
    #[arg(long, default_value_t = SeederLimits::default().max_per_address, value_name = "N",
          value_parser = at_least_one)]
    pub(crate) max_address_connections: usize,

    /// Close a peer connection with nothing requested for this long (e.g. 15s, 2m).
    #[arg(long, default_value = "15s", value_name = "DURATION",
          value_parser = torrentguard_agent::download::parse_duration)]
    pub(crate) peer_idle_timeout: std::time::Duration,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a number of at least 1")),
    }
}

impl PeerLimitFlags {
    pub(crate) fn limits(&self) -> SeederLimits {
        SeederLimits {
            max_per_peer: self.max_peer_connections,
            max_per_address: self.max_address_connections,
            idle_timeout: self.peer_idle_timeout,
            ..SeederLimits::default()
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    #[cfg(feature = "daemon")]
    #[command(flatten)]
    pub(crate) client: super::client::ClientFlags,

    /// Show one file's manifest summary and peers: its share code (which brings its tracker)
    /// or file id.
    #[arg(value_name = "CODE")]
    pub(crate) file_id: Option<FileRef>,

    /// Directory to look in for partial downloads. Without a tracker, only these are shown.
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub(crate) output: PathBuf,

    #[command(flatten)]
    pub(crate) tracker: TrackerFlags,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The downloaded file, or the folder a directory share was downloaded as.
    #[arg(value_name = "PATH")]
    pub(crate) path: PathBuf,

    /// The share's code (which brings its tracker) or file id.
    #[arg(value_name = "CODE")]
    pub(crate) file_id: FileRef,

    #[command(flatten)]
    pub(crate) tracker: TrackerFlags,
}

/// `--hash` takes exactly the algorithms `HashAlgo` knows, listed in `--help` and in errors.
fn hash_algo_parser() -> impl clap::builder::TypedValueParser<Value = HashAlgo> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["sha256", "sha1"]).try_map(|s| s.parse::<HashAlgo>())
}

pub(crate) fn parse_size_u64(s: &str) -> Result<u64, String> {
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

/// Parses the command line, with the config file's values as defaults. A usage error (or a
/// bad config file) of a `--json` invocation is a JSON `error` event on stdout (exit code 2),
/// so a script reading the stream sees why it ended, and stderr holds no plain text; help and
/// version print as usual.
pub(crate) fn parse_cli() -> Result<Cli, ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let json = argv.iter().any(|a| a == "--json");
    let settings = match config::load(&argv) {
        Ok(s) => s,
        Err(e) => return Err(usage_failure(json, &e.to_string())),
    };
    match parse_with(argv, settings) {
        Ok(cli) => Ok(cli),
        Err(Unparsed::Config(e)) => Err(usage_failure(json, &e.to_string())),
        Err(Unparsed::Clap(e)) if e.use_stderr() && json => {
            let text = e.to_string();
            // The error proper is the first paragraph (usage and hints follow), on one line.
            let head = text.split("\n\n").next().unwrap_or_default();
            let head = head.strip_prefix("error: ").unwrap_or(head);
            Err(usage_failure(json, head))
        }
        Err(Unparsed::Clap(e)) => e.exit(),
    }
}

/// Why a command line was not parsed.
#[derive(Debug)]
pub(crate) enum Unparsed {
    Config(config::ConfigError),
    Clap(clap::Error),
}

/// `argv` parsed with `settings` (the config file) as defaults.
pub(crate) fn parse_with(argv: Vec<OsString>, settings: config::Settings) -> Result<Cli, Unparsed> {
    let cmd = config::apply(Cli::command(), &settings).map_err(Unparsed::Config)?;
    let matches = cmd.clone().try_get_matches_from(argv).map_err(|e| {
        match config::blame(&e, &cmd, &settings) {
            Some(c) => Unparsed::Config(c),
            None => Unparsed::Clap(e),
        }
    })?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(Unparsed::Clap)?;
    let configured = config::from_config(&matches, &settings);
    if let Some(flags) = cli.command.tracker_flags() {
        flags.from_config = configured;
    }
    cli.settings = settings;
    Ok(cli)
}

impl Command {
    fn tracker_flags(&mut self) -> Option<&mut TrackerFlags> {
        match self {
            Command::Share(a) => Some(&mut a.tracker),
            Command::Get(a) => Some(&mut a.tracker),
            Command::Status(a) => Some(&mut a.tracker),
            Command::Verify(a) => Some(&mut a.tracker),
            _ => None,
        }
    }
}

/// Reports a usage error (exit code 2): a JSON `error` event with `--json`, else a line on
/// stderr.
fn usage_failure(json: bool, message: &str) -> ExitCode {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if json {
        print_line(
            &serde_json::json!({"event": "error", "message": message, "exit_code": 2}).to_string(),
        );
    } else {
        use std::io::Write as _;
        // Nobody to tell if stderr is closed.
        let _ = writeln!(std::io::stderr(), "error: {message}");
    }
    ExitCode::from(2)
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

    /// `get --download-limit` takes a rate as `--upload-limit` does; none by default.
    #[test]
    fn get_download_limit_parses_like_the_upload_limit() {
        let id = "a".repeat(64);
        let get = |extra: &[&str]| {
            let argv = [
                "torrentguard",
                "get",
                &id,
                "--tracker",
                "https://127.0.0.1:1",
            ];
            match Cli::try_parse_from(argv.iter().chain(extra)).map(|c| c.command) {
                Ok(Command::Get(g)) => Ok((g.download_limit, g.upload_limit)),
                other => Err(format!("{other:?}")),
            }
        };
        assert_eq!(get(&[]), Ok((0, 0)));
        assert_eq!(
            get(&["--download-limit", "2M", "--upload-limit", "512K"]),
            Ok((2 << 20, 512 << 10))
        );
        assert!(get(&["--download-limit", "fast"]).is_err());
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
        "CODE",
        "DIR",
        "DURATION",
        "FILE",
        "FILE_ID",
        "FP",
        "GLOB",
        "MODE",
        "N",
        "NAME",
        "PATH",
        "RATE",
        "RATIO",
        "SHELL",
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
                hashing: HashFlags {
                    hash: HashAlgo::Sha1,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn hash_takes_several_paths_and_its_options() {
        let cli = Cli::try_parse_from([
            "torrentguard",
            "hash",
            "a",
            "b/",
            "--name",
            "rel",
            "--follow-symlinks",
            "--chunk-size",
            "1M",
        ])
        .unwrap();
        let Command::Hash(h) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(h.paths, [PathBuf::from("a"), PathBuf::from("b/")]);
        assert_eq!(h.name.as_deref(), Some("rel"));
        assert!(h.follow_symlinks);
        assert_eq!(h.hashing.chunk_size, 1 << 20);
        assert!(Cli::try_parse_from(["torrentguard", "hash"]).is_err());
    }

    #[test]
    fn default_chunk_size_is_the_protocol_default() {
        use torrentguard_protocol::manifest::DEFAULT_CHUNK_SIZE;
        assert_eq!(parse_size("256K"), Ok(DEFAULT_CHUNK_SIZE));
    }
}
