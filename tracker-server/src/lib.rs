//! The TorrentGuard tracker: an HTTPS/JSON service (axum over rustls) that stores manifests and
//! peer lists in SQLite, or in PostgreSQL shared by several tracker processes ([`Database`]).
//!
//! [`start`] binds, opens the database, and serves in the background until
//! [`RunningTracker::shutdown`]. The `torrentguard-tracker` binary and the peer agent's
//! embedded tracker (`torrentguard tracker`) both run it, configured by [`TrackerArgs`].

pub mod app;
pub mod bare_errors;
pub mod connections;
pub mod dashboard;
pub mod error;
pub mod fd_limit;
pub mod healthcheck;
pub mod introductions;
pub mod known_files;
pub mod limits;
pub mod metrics;
pub mod process;
pub mod reach;
pub mod relay;
pub mod reputation;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::Fingerprint;
use torrentguard_trust::config::{https_server_config, peer_server_config};
use torrentguard_trust::identity::create_private_dir;
use torrentguard_trust::{Identity, IdentityError};

pub use app::PeerIdentity;
pub use store::{Database, DatabaseUrlError, PostgresStore, SqliteStore, Store, StoreError};

use crate::app::{AppConfig, AppState, TraversalConfig};
use crate::connections::{ConnectionLimits, ConnectionTable};
use crate::limits::{LimitsConfig, Rate};
use crate::relay::{Relay, RelayConfig};
use crate::reputation::ReputationConfig;
use crate::server::Server;

/// The database file inside the data directory.
pub const DB_FILE: &str = "tracker.db";
/// Common name of a generated tracker certificate (identity is the fingerprint, not the name).
pub const CERT_COMMON_NAME: &str = "torrentguard-tracker";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_PEER_TTL: Duration = Duration::from_secs(120);
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("tracker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Everything [`start`] needs.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub listen: SocketAddr,
    /// Holds the SQLite database and, unless `cert`/`key` are given, the identity.
    pub data_dir: PathBuf,
    /// Operator-provided PEM certificate and key, used instead of the generated identity.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Peers that have not announced for this long are dropped.
    pub peer_ttl: Duration,
    /// How often peers are told to re-announce.
    pub announce_interval: Duration,
    /// If set, every `/api/v1` request must carry `Authorization: Bearer <token>`.
    pub swarm_token: Option<String>,
    /// If not empty, only these client certificates may register files and announce.
    pub allowlist: Vec<Fingerprint>,
    /// Connection caps and idle timeouts.
    pub connection_limits: ConnectionLimits,
    /// Where manifests and peers are kept; `None`: SQLite, [`DB_FILE`] in `data_dir`.
    pub database: Option<Database>,
    /// Write rates, the concurrency bound, and bounds on what clients can store.
    pub limits: LimitsConfig,
    /// How peer reports decay and when a peer is withheld from announce answers.
    pub reputation: ReputationConfig,
    /// The relay, if one runs in this process (`--relay-listen`); off by default.
    pub relay: Option<RelayConfig>,
}

impl TrackerConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        TrackerConfig {
            listen,
            data_dir,
            cert: None,
            key: None,
            peer_ttl: DEFAULT_PEER_TTL,
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            swarm_token: None,
            allowlist: Vec::new(),
            connection_limits: ConnectionLimits::default(),
            database: None,
            limits: LimitsConfig::default(),
            reputation: ReputationConfig::default(),
            relay: None,
        }
    }

    /// The configured database, or the SQLite file in the data directory.
    pub fn database(&self) -> Database {
        self.database
            .clone()
            .unwrap_or_else(|| Database::Sqlite(self.data_dir.join(DB_FILE)))
    }
}

/// The data directory used when none is given: the platform's data directory
/// (`~/.local/share/torrentguard/tracker` on Linux), or `./tracker-data` without a home.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "torrentguard")
        .map(|d| d.data_dir().join("tracker"))
        .unwrap_or_else(|| PathBuf::from("tracker-data"))
}

/// The tracker's serving flags, each also readable from the environment. Shared by the
/// `torrentguard-tracker` binary and `torrentguard tracker` (flattened there). The data
/// directory is not among them: each binary places it its own way (`--data-dir` of the
/// tracker binary; `<agent data dir>/tracker` for the agent, as its embedded tracker does).
///
/// Every flag is global, so it may also follow a subcommand (`healthcheck --listen …`).
#[derive(Debug, Clone, clap::Args)]
pub struct TrackerArgs {
    /// Address and port to listen on, IPv4 or IPv6 (`[::]:8443` listens on both families).
    /// Port 0 picks a free port; the start-up line shows which.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// PEM certificate to serve instead of the generated identity (needs --key). Clients pin
    /// its SHA-256 fingerprint, printed at start-up.
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_TRACKER_CERT",
        value_name = "PEM",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_TRACKER_KEY",
        value_name = "PEM",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,

    /// Seconds after its last announce before a peer is dropped from the swarm.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_PEER_TTL", value_name = "SECS", default_value_t = DEFAULT_PEER_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub peer_ttl: u64,

    /// Seconds between announces that peers are asked to keep; keep it well under --peer-ttl.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_ANNOUNCE_INTERVAL", value_name = "SECS", default_value_t = DEFAULT_ANNOUNCE_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub announce_interval: u64,

    /// Shared secret of a private swarm: every /api/v1 request must then send
    /// `Authorization: Bearer <token>` (/healthz and /metrics stay open). Prefer the
    /// environment variable: flags are visible in the process list.
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_SWARM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub swarm_token: Option<String>,

    /// Client certificate fingerprint (sha256:<64 hex>) allowed to register files and
    /// announce. Repeat the flag, or comma-separate in the environment variable. Without any,
    /// every client certificate may.
    #[arg(
        long = "allow-fingerprint",
        global = true,
        env = "TORRENTGUARD_TRACKER_ALLOW_FINGERPRINTS",
        value_name = "FP",
        value_delimiter = ','
    )]
    pub allow_fingerprints: Vec<Fingerprint>,

    /// TLS connections open at once. At the cap a new client takes the place of the oldest idle
    /// connection of the address holding the most; it is refused only if all are busy. Keep it
    /// under the open-file limit (`ulimit -n`).
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_CONNECTIONS", value_name = "N", default_value_t = connections::DEFAULT_MAX_CONNECTIONS, value_parser = parse_positive)]
    pub max_connections: usize,

    /// TLS connections open at once from one IPv4 address or IPv6 /64. Past it a new one
    /// replaces that address's oldest idle connection.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N", default_value_t = connections::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, value_parser = parse_positive)]
    pub max_connections_per_address: usize,

    /// Seconds a new connection may take to start its first request (TLS handshake included)
    /// before it is closed.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_FIRST_REQUEST_TIMEOUT", value_name = "SECS", default_value_t = connections::DEFAULT_FIRST_REQUEST_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub first_request_timeout: u64,

    /// Seconds a kept-alive connection (HTTP/1.1 or HTTP/2) may sit without a request before it
    /// is closed.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_IDLE_TIMEOUT", value_name = "SECS", default_value_t = connections::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,

    /// Where manifests and peers are kept: `sqlite://PATH` (a file, created if missing) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (an existing database; several trackers on
    /// one PostgreSQL database act as one tracker). [default: sqlite://<data dir>/tracker.db]
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database: Option<Database>,
    /// Writes (registering files, announcing) per second one client certificate may make on
    /// average; past it, 429 with Retry-After. 0 turns the limit off.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_WRITE_RATE", value_name = "N", default_value_t = limits::DEFAULT_WRITE_RATE_PER_IDENTITY, value_parser = parse_rate)]
    pub write_rate: f64,

    /// Writes one client certificate may make in a burst above --write-rate.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_WRITE_BURST", value_name = "N", default_value_t = limits::DEFAULT_WRITE_BURST_PER_IDENTITY, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_burst: u32,

    /// Writes per second from one IPv4 address or IPv6 /64, whatever certificates it uses
    /// (many agents behind one NAT share it). 0 turns the limit off.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_WRITE_RATE_PER_ADDRESS", value_name = "N", default_value_t = limits::DEFAULT_WRITE_RATE_PER_ADDRESS, value_parser = parse_rate)]
    pub write_rate_per_address: f64,

    /// Writes one address may make in a burst above --write-rate-per-address.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_WRITE_BURST_PER_ADDRESS", value_name = "N", default_value_t = limits::DEFAULT_WRITE_BURST_PER_ADDRESS, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_burst_per_address: u32,

    /// API requests handled at once; past it a request waits briefly, then gets 429 with
    /// Retry-After (/healthz and /metrics are not counted).
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_CONCURRENT_REQUESTS", value_name = "N", default_value_t = limits::DEFAULT_MAX_CONCURRENT_REQUESTS, value_parser = parse_positive)]
    pub max_concurrent_requests: usize,

    /// Files one client certificate may register; past it registering a new file is 409
    /// `too_many_files`.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_FILES_PER_IDENTITY", value_name = "N", default_value_t = limits::DEFAULT_MAX_FILES_PER_IDENTITY, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_files_per_identity: u64,

    /// Chunks one manifest may list; more is 413 `manifest_too_large`.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_MANIFEST_CHUNKS", value_name = "N", default_value_t = torrentguard_protocol::manifest::MAX_CHUNKS, value_parser = clap::value_parser!(u32).range(1..=i64::from(torrentguard_protocol::manifest::MAX_CHUNKS)))]
    pub max_manifest_chunks: u32,

    /// Entries (files and directories) one directory manifest may list; more is 413
    /// `manifest_too_large`.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_MANIFEST_ENTRIES", value_name = "N", default_value_t = torrentguard_protocol::tree::MAX_ENTRIES as u32, value_parser = clap::value_parser!(u32).range(1..=torrentguard_protocol::tree::MAX_ENTRIES as i64))]
    pub max_manifest_entries: u32,

    /// Live peers one file may have; a new peer past it is 409 `swarm_full` (peers already
    /// in the swarm keep announcing).
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_MAX_PEERS_PER_FILE", value_name = "N", default_value_t = limits::DEFAULT_MAX_PEERS_PER_FILE, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_peers_per_file: u64,

    /// Seconds after which a peer report weighs half as much; reports older than 8 half-lives
    /// no longer count and are deleted.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_REPUTATION_HALF_LIFE", value_name = "SECS", default_value_t = reputation::DEFAULT_HALF_LIFE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub reputation_half_life: u64,

    /// Reputation score (0-100) below which a peer is left out of announce answers. At most 50,
    /// the lowest score one reporter alone can cause, so one identity can never get a peer
    /// withheld; 0 withholds nobody.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_WITHHOLD_BELOW", value_name = "N", default_value_t = reputation::DEFAULT_WITHHOLD_BELOW, value_parser = clap::value_parser!(u32).range(0..=i64::from(reputation::SINGLE_REPORTER_FLOOR)))]
    pub withhold_below: u32,

    /// Run the relay on this address and port (e.g. `0.0.0.0:8444`): a TLS listener with the
    /// tracker's certificate where peers that cannot reach each other meet by an
    /// introduction's token. Off without it.
    #[arg(
        long,
        global = true,
        env = "TORRENTGUARD_TRACKER_RELAY_LISTEN",
        value_name = "ADDR"
    )]
    pub relay_listen: Option<SocketAddr>,

    /// Bytes per second the relay forwards per session and direction (K, M, G suffixes: ×1024).
    /// 0 means unlimited.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_RELAY_SESSION_RATE", value_name = "RATE", default_value = "0", value_parser = parse_byte_rate)]
    pub relay_session_rate: u64,

    /// Bytes per second the relay forwards over all sessions (K, M, G suffixes: ×1024). 0 means
    /// unlimited.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_RELAY_TOTAL_RATE", value_name = "RATE", default_value = "0", value_parser = parse_byte_rate)]
    pub relay_total_rate: u64,

    /// Relay connections (waiting or in a session) one client certificate may hold; past it the
    /// relay answers OverLimit.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_RELAY_SESSIONS_PER_IDENTITY", value_name = "N", default_value_t = relay::DEFAULT_SESSIONS_PER_IDENTITY, value_parser = parse_positive)]
    pub relay_sessions_per_identity: usize,

    /// Relay sessions at once, in all; past it the relay answers OverLimit.
    #[arg(long, global = true, env = "TORRENTGUARD_TRACKER_RELAY_MAX_SESSIONS", value_name = "N", default_value_t = relay::DEFAULT_MAX_SESSIONS, value_parser = parse_positive)]
    pub relay_max_sessions: usize,

    /// Tests only: flip one byte of each relayed session's seeder-to-downloader stream once
    /// 64 KiB have passed, so tests can check that the peers' TLS catches it.
    #[arg(long, global = true, hide = true)]
    pub relay_tamper_for_tests: bool,
}

/// A byte rate as the agent's rate flags take it: digits with an optional K, M or G (powers of
/// 1024), optionally followed by B or iB (`10M`, `10MB`, `10MiB`).
fn parse_byte_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, factor) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let factor: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("unknown unit in {s:?} (use K, M or G)")),
            };
            (&s[..i], factor)
        }
        None => (s, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate"))?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A rate in requests per second: 0 (off) or a positive finite number.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        Ok(_) => Err("must be 0 (off) or a positive number".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl TrackerArgs {
    /// The configuration of a tracker keeping its database and identity in `data_dir`.
    pub fn into_config(self, data_dir: PathBuf) -> TrackerConfig {
        TrackerConfig {
            listen: self.listen,
            data_dir,
            cert: self.cert,
            key: self.key,
            peer_ttl: Duration::from_secs(self.peer_ttl),
            announce_interval: Duration::from_secs(self.announce_interval),
            // An empty token (e.g. `TORRENTGUARD_SWARM_TOKEN=` in a compose file) means none.
            swarm_token: self.swarm_token.filter(|t| !t.is_empty()),
            allowlist: self.allow_fingerprints,
            connection_limits: ConnectionLimits {
                max_connections: self.max_connections,
                max_per_address: self.max_connections_per_address,
                first_request_timeout: Duration::from_secs(self.first_request_timeout),
                idle_timeout: Duration::from_secs(self.idle_timeout),
            },
            database: self.database,
            limits: LimitsConfig {
                per_identity: Rate {
                    per_sec: self.write_rate,
                    burst: self.write_burst,
                },
                per_address: Rate {
                    per_sec: self.write_rate_per_address,
                    burst: self.write_burst_per_address,
                },
                max_concurrent_requests: self.max_concurrent_requests,
                max_files_per_identity: self.max_files_per_identity,
                max_manifest_chunks: self.max_manifest_chunks,
                max_manifest_entries: self.max_manifest_entries,
                max_peers_per_file: self.max_peers_per_file,
            },
            reputation: ReputationConfig {
                half_life: Duration::from_secs(self.reputation_half_life),
                withhold_below: self.withhold_below,
            },
            relay: self.relay_listen.map(|listen| RelayConfig {
                listen,
                session_rate: self.relay_session_rate,
                total_rate: self.relay_total_rate,
                sessions_per_identity: self.relay_sessions_per_identity,
                max_sessions: self.relay_max_sessions,
                tamper_for_tests: self.relay_tamper_for_tests,
            }),
        }
    }
}

/// A tracker serving in the background. Dropping it does not stop the tracker (the task is
/// detached, as with any tokio task): call [`Self::shutdown`], or cancel
/// [`Self::shutdown_token`] and [`Self::wait`].
#[derive(Debug)]
pub struct RunningTracker {
    /// The bound address (with the real port when the configured one was 0).
    pub local_addr: SocketAddr,
    /// The fingerprint of the certificate it serves: what clients pin.
    pub fingerprint: Fingerprint,
    /// The relay's bound address, when it runs one.
    pub relay_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), TrackerError>>,
}

impl RunningTracker {
    /// Stops accepting connections, lets in-flight requests finish, closes the database.
    pub async fn shutdown(self) -> Result<(), TrackerError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the tracker stops (after [`Self::shutdown_token`] is cancelled).
    pub async fn wait(self) -> Result<(), TrackerError> {
        self.task.await?
    }

    /// Cancelling it starts a graceful shutdown, as [`Self::shutdown`] does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// `https://addr:port`, with a loopback address in place of an unspecified one, so it can
    /// be dialled from this host.
    pub fn url(&self) -> String {
        format!("https://{}", dialable(self.local_addr))
    }
}

/// `addr` with an unspecified IP (0.0.0.0, ::) replaced by 127.0.0.1. IPv4 loopback for `::`
/// too: the tracker's `[::]` listener also serves IPv4 (see `bind`), and `::1` is missing where
/// IPv6 is disabled (containers on an IPv4-only network), while 127.0.0.1 always exists.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

fn load_identity(config: &TrackerConfig) -> Result<Identity, TrackerError> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Ok(Identity::from_pem_files(cert, key)?),
        (None, None) => {
            let (identity, created) = Identity::load_or_create(&config.data_dir, CERT_COMMON_NAME)?;
            if created {
                tracing::info!(dir = %config.data_dir.display(), fingerprint = %identity.fingerprint, "generated a new tracker identity");
            }
            Ok(identity)
        }
        _ => Err(TrackerError::Config(
            "a certificate and its key go together: give both --cert and --key, or neither".into(),
        )),
    }
}

/// Binds, loads or creates the identity, opens and migrates the database, and starts serving.
/// Returns once the listener is bound, so the tracker is ready when this returns. Binding
/// comes first so that a busy port leaves nothing behind (no data directory, no identity).
pub async fn start(config: TrackerConfig) -> Result<RunningTracker, TrackerError> {
    if config.announce_interval >= config.peer_ttl {
        tracing::warn!(
            announce_interval_secs = config.announce_interval.as_secs(),
            peer_ttl_secs = config.peer_ttl.as_secs(),
            "the announce interval is not shorter than the peer TTL: peers will drop out between announces"
        );
    }
    let listener = bind(config.listen).map_err(|source| TrackerError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener.local_addr()?;
    let relay_listener = match &config.relay {
        Some(relay) => Some(bind(relay.listen).map_err(|source| TrackerError::Bind {
            addr: relay.listen,
            source,
        })?),
        None => None,
    };
    let relay_addr = relay_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    let data_dir = config.data_dir.clone();
    let identity = {
        let config = config.clone();
        // File I/O and key generation: keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            create_private_dir(&config.data_dir)?;
            load_identity(&config)
        })
        .await??
    };
    let tls = https_server_config(&identity)?;

    let database = config.database();
    let store = store::open(&database).await?;
    let token_set = config.swarm_token.is_some();
    let open_swarm = !token_set && config.allowlist.is_empty();
    let identity = Arc::new(identity);
    let state = AppState::with_traversal(
        store.clone(),
        AppConfig {
            fingerprint: identity.fingerprint,
            peer_ttl: config.peer_ttl,
            announce_interval: config.announce_interval,
            swarm_token: config.swarm_token,
            allowlist: config.allowlist.clone(),
            reputation: config.reputation,
        },
        config.limits,
        TraversalConfig {
            identity: Some(identity.clone()),
            relay_port: relay_addr.map(|a| a.port()),
        },
    );
    let relay = match (relay_listener, config.relay) {
        (Some(listener), Some(relay_config)) => Some(Relay {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(peer_server_config(&identity)?)),
            config: relay_config,
            introductions: state.traversal().introductions.clone(),
            stats: state.metrics().traversal().clone(),
        }),
        _ => None,
    };
    let stats = state.connection_stats();
    let closing = state.closing().clone();
    let connection_limits = ConnectionLimits {
        max_connections: fd_limit::fit_connection_cap(config.connection_limits.max_connections),
        ..config.connection_limits
    };
    let server = Server {
        listener,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        router: app::router(state),
        connections: ConnectionTable::new(connection_limits, stats.clone()),
    };

    if open_swarm && !local_addr.ip().is_loopback() {
        tracing::warn!(
            "open swarm: no swarm token and no fingerprint allowlist, so any client with a certificate can register files and announce"
        );
    } else if open_swarm {
        // On loopback only this host can reach it (share's default embedded tracker): no alarm.
        tracing::info!("open swarm on loopback: no swarm token and no fingerprint allowlist");
    } else {
        tracing::info!(
            token = token_set,
            allowlisted = config.allowlist.len(),
            "private swarm"
        );
    }
    if let Some(addr) = relay_addr {
        tracing::info!(address = %addr, "relay listening");
    }
    tracing::info!(address = %local_addr, fingerprint = %identity.fingerprint, data_dir = %data_dir.display(), %database, "tracker listening");

    let shutdown = CancellationToken::new();
    let task = {
        let shutdown = shutdown.clone();
        let (ttl, reputation) = (config.peer_ttl, config.reputation);
        tokio::spawn(async move {
            let expiry = tokio::spawn(expire_peers(
                store.clone(),
                ttl,
                reputation,
                shutdown.clone(),
            ));
            // Ends the dashboard's event streams as the graceful shutdown begins.
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    shutdown.cancelled().await;
                    closing.cancel()
                }
            });
            let relay = relay.map(|r| tokio::spawn(r.run(shutdown.clone())));
            server.run(shutdown.clone(), stats).await;
            // The server stops only when shutdown was cancelled, which stops expiry too.
            shutdown.cancel();
            if let Some(relay) = relay {
                // The relay ends its sessions at shutdown; it returns nothing to report.
                let _ = relay.await;
            }
            let expiry_result = expiry.await;
            store.close().await;
            tracing::info!("tracker stopped; database closed");
            expiry_result.map_err(TrackerError::from)
        })
    };
    Ok(RunningTracker {
        local_addr,
        fingerprint: identity.fingerprint,
        relay_addr,
        shutdown,
        task,
    })
}

/// Connections the kernel queues before the accept loop takes them (it takes every one at once,
/// and the connection table decides).
const LISTEN_BACKLOG: i32 = 1024;

/// A listener on `addr`. An IPv6 one accepts IPv4 too (IPV6_V6ONLY off, whatever the host's
/// `net.ipv6.bindv6only` default), so `[::]:8443` serves both families; SO_REUSEADDR as tokio
/// sets it, so a restart does not wait out TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let error = match bind_exactly(addr) {
        Ok(listener) => return Ok(listener),
        Err(e) => e,
    };
    match ipv4_fallback(addr, &error) {
        Some(v4) => {
            tracing::warn!(%error, fallback = %v4, "no IPv6 here; listening on IPv4 only");
            bind_exactly(v4)
        }
        None => Err(error),
    }
}

/// `[::]` on a host without IPv6 (a kernel without it, or a container on an IPv4-only
/// network) can only mean "every address there is": the IPv4 wildcard. A specific IPv6
/// address has no such stand-in.
fn ipv4_fallback(addr: SocketAddr, error: &std::io::Error) -> Option<SocketAddr> {
    const EAFNOSUPPORT: i32 = 97;
    let no_ipv6 = error.kind() == std::io::ErrorKind::AddrNotAvailable
        || error.raw_os_error() == Some(EAFNOSUPPORT);
    (addr.is_ipv6() && addr.ip().is_unspecified() && no_ipv6)
        .then(|| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port()))
}

fn bind_exactly(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Deletes peers silent for longer than the TTL, and reports too old to count, a few times per
/// TTL, until shutdown. The handlers already ignore stale rows, so this only keeps the tables
/// small.
async fn expire_peers(
    store: Arc<dyn Store>,
    ttl: Duration,
    reputation: ReputationConfig,
    shutdown: CancellationToken,
) {
    let period = (ttl / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = app::unix_now().saturating_sub(app::ttl_secs(ttl));
        match store.expunge(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "expired silent peers"),
            Err(e) => tracing::warn!(error = %e, "expiring peers failed"),
        }
        match store
            .prune_reports(reputation.counted_since(app::unix_now()))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(reports = n, "pruned reports too old to count"),
            Err(e) => tracing::warn!(error = %e, "pruning reports failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ipv6_wildcard_falls_back_to_ipv4_and_only_without_ipv6() {
        let no_family = std::io::Error::from_raw_os_error(97);
        let no_addr = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        let busy = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let any6: SocketAddr = "[::]:8443".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert_eq!(ipv4_fallback(any6, &no_family), Some(any4));
        assert_eq!(ipv4_fallback(any6, &no_addr), Some(any4));
        assert_eq!(ipv4_fallback(any6, &busy), None);
        assert_eq!(ipv4_fallback("[::1]:8443".parse().unwrap(), &no_addr), None);
        assert_eq!(ipv4_fallback(any4, &no_addr), None);
    }

    #[test]
    fn byte_rates_take_binary_suffixes() {
        assert_eq!(parse_byte_rate("0"), Ok(0));
        assert_eq!(parse_byte_rate("1500"), Ok(1500));
        assert_eq!(parse_byte_rate("10k"), Ok(10 * 1024));
        assert_eq!(parse_byte_rate("5M"), Ok(5 << 20));
        assert_eq!(parse_byte_rate("2G"), Ok(2 << 30));
        assert_eq!(parse_byte_rate("3MiB"), Ok(3 << 20));
        assert_eq!(parse_byte_rate("4KB"), Ok(4 << 10));
        assert!(parse_byte_rate("3T").is_err());
        assert!(parse_byte_rate("-1").is_err());
        assert!(parse_byte_rate("M").is_err());
        assert!(parse_byte_rate("99999999999999999999G").is_err());
    }

    #[test]
    fn the_relay_is_off_unless_asked_for() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: TrackerArgs,
        }
        let off = Cli::try_parse_from(["t"])
            .unwrap()
            .args
            .into_config(".".into());
        assert_eq!(off.relay, None);
        assert_eq!(TrackerConfig::new(off.listen, ".".into()).relay, None);
        let on = Cli::try_parse_from([
            "t",
            "--relay-listen",
            "127.0.0.1:0",
            "--relay-session-rate",
            "1M",
            "--relay-sessions-per-identity",
            "2",
        ])
        .unwrap()
        .args
        .into_config(".".into());
        let relay = on.relay.unwrap();
        assert_eq!(relay.session_rate, 1 << 20);
        assert_eq!(relay.total_rate, 0);
        assert_eq!(relay.sessions_per_identity, 2);
        assert_eq!(relay.max_sessions, relay::DEFAULT_MAX_SESSIONS);
        assert!(!relay.tamper_for_tests);
    }

    #[test]
    fn wildcards_are_dialled_on_ipv4_loopback() {
        let lo: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(dialable("[::]:8443".parse().unwrap()), lo);
        assert_eq!(dialable("0.0.0.0:8443".parse().unwrap()), lo);
        let v6: SocketAddr = "[::1]:8443".parse().unwrap();
        assert_eq!(dialable(v6), v6);
    }
}
