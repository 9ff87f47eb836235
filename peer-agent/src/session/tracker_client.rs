//! HTTPS client for the tracker: presents the agent's certificate, pins the tracker's.
//!
//! The tracker's fingerprint is given by the user or trusted on first use and recorded in the
//! data directory's `known_trackers` file, as ssh does with `known_hosts`; a tracker that later
//! presents another certificate is refused with a message naming the file to edit. A record is
//! kept under the host text of the URL *and* under every `ip:port` it resolved to, and a lookup
//! consults both: another name for a known address (`localhost` for `127.0.0.1`) can therefore
//! never bring a new identity in silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::api::{
    API_PREFIX, AnnounceEvent, AnnounceRequest, AnnounceResponse, ErrorBody, FilePeers,
    FileSummary, Health, Page, PeerSummary, RegisterResponse, ReportRequest,
};
use torrentguard_protocol::{FileId, Manifest, ManifestError};
use torrentguard_trust::Pin;
use torrentguard_trust::config::tracker_client_config;
use torrentguard_trust::identity::{Identity, write_atomically};

mod nat;
pub use nat::{MAX_INTRODUCTIONS_WAIT, REACHABILITY_TIMEOUT};

pub const KNOWN_TRACKERS_FILE: &str = "known_trackers";
/// Bound on one `POST /reports`.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("tracker URL {0:?} is not a valid https:// URL")]
    BadUrl(String),
    #[error("cannot reach the tracker at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the tracker at {url} presents fingerprint {presented}, but {known} was recorded for {recorded_as} in {file}; \
         if the tracker's identity really changed, edit or remove that line (or pass --tracker-fingerprint)"
    )]
    FingerprintChanged {
        // Boxed strings keep `TrackerError` under clippy's large-error bound.
        url: Box<str>,
        presented: Fingerprint,
        known: Fingerprint,
        /// The `known_trackers` key that matched: the URL's host or an address it resolves to.
        recorded_as: Box<str>,
        file: PathBuf,
    },
    #[error(
        "{file} records different identities for the tracker at {url} ({records}); remove the stale \
         line, or pass --tracker-fingerprint"
    )]
    ConflictingRecords {
        url: String,
        records: String,
        file: PathBuf,
    },
    #[error(
        "the tracker at {url} does not present the pinned fingerprint {pinned}; check --tracker-fingerprint \
         against the one the tracker prints at start-up"
    )]
    PinMismatch { url: String, pinned: Fingerprint },
    #[error("tracker answered {status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("tracker sent an unreadable answer: {0}")]
    BadAnswer(String),
    #[error("the tracker's manifest for {id} is not valid: {source}")]
    BadManifest {
        id: FileId,
        #[source]
        source: ManifestError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the tracker at {url} is busy (429): it asks to retry in {} s", retry_after.as_secs())]
    RateLimited { url: String, retry_after: Duration },
    #[error("no tracker answered: {}", list_failures(.0))]
    NoneAnswered(Vec<(String, TrackerError)>),
    #[error("no tracker given")]
    NoTracker,
}

fn list_failures(failures: &[(String, TrackerError)]) -> String {
    failures
        .iter()
        .map(|(url, e)| format!("{url}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl TrackerError {
    /// Whether retrying later may help (network trouble, 5xx), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            TrackerError::Unreachable { .. } => true,
            TrackerError::Api { status, .. } => status.is_server_error(),
            TrackerError::RateLimited { .. } => true,
            TrackerError::NoneAnswered(all) => all.iter().any(|(_, e)| e.is_transient()),
            _ => false,
        }
    }
}

/// A connected, pinned tracker client.
#[derive(Clone)]
pub struct TrackerClient {
    http: reqwest::Client,
    base: Url,
    fingerprint: Fingerprint,
    token: Option<String>,
    /// The re-announce interval from the tracker's latest answer, in seconds.
    interval_secs: Arc<std::sync::atomic::AtomicU64>,
    /// Every file this client announced and has not yet announced `stopped` for, with the last
    /// request sent: whatever way an agent ends, it owes the tracker a `stopped` for each.
    announced: Arc<Mutex<HashMap<FileId, AnnounceRequest>>>,
}

/// Longest wait for a `stopped` announce: it is sent while stopping, and the tracker may be
/// unreachable.
pub const STOPPED_ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Re-announce interval assumed until the tracker has said otherwise.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);

impl std::fmt::Debug for TrackerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrackerClient({} {})", self.base, self.fingerprint)
    }
}

fn build_http(identity: &Identity, pin: Pin) -> Result<reqwest::Client, TrackerError> {
    let tls = tracker_client_config(identity, pin)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .map_err(|e| TrackerError::BadAnswer(format!("building HTTP client: {e}")))
}

impl TrackerClient {
    /// Connects to the tracker at `url` as `identity`. With `pinned`, only that fingerprint is
    /// accepted; without, the `known_trackers` file in `data_dir` decides (trust on first use).
    pub async fn connect(
        url: &str,
        pinned: Option<Fingerprint>,
        identity: &Identity,
        data_dir: &Path,
        token: Option<String>,
    ) -> Result<Self, TrackerError> {
        let base = parse_url(url)?;
        let key = host_key(&base);
        let endpoints = resolve(&base).await;
        let known_path = data_dir.join(KNOWN_TRACKERS_FILE);
        let records = read_known(&known_path)?;
        let recorded = recorded_identity(&records, &key, &endpoints);
        let (recorded_as, known) = match (pinned, recorded) {
            // An explicit pin decides; the records are only compared with it below.
            (Some(_), Err(_)) => (None, None),
            (None, Err(records)) => {
                return Err(TrackerError::ConflictingRecords {
                    url: base.to_string(),
                    records,
                    file: known_path,
                });
            }
            (_, Ok(found)) => found.map_or((None, None), |(k, fp)| (Some(k), Some(fp))),
        };

        let fingerprint = match (pinned, known) {
            (Some(fp), _) => fp,
            (None, Some(fp)) => fp,
            (None, None) => {
                // Trust on first use: learn what the tracker presents, then record it.
                let seen = Arc::new(Mutex::new(None));
                let probe = build_http(identity, Pin::Record(seen.clone()))?;
                probe
                    .get(base.join("healthz").expect("static path joins"))
                    .send()
                    .await
                    .map_err(|source| TrackerError::Unreachable {
                        url: base.to_string(),
                        source,
                    })?;
                let fp = seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ok_or_else(|| TrackerError::BadAnswer("no certificate presented".into()))?;
                let keys: Vec<&str> = std::iter::once(key.as_str())
                    .chain(endpoints.iter().map(String::as_str))
                    .collect();
                append_known(&known_path, &keys, fp)?;
                tracing::warn!(tracker = %base, fingerprint = %fp, file = %known_path.display(),
                    "trusting the tracker's fingerprint on first use; check it out of band");
                fp
            }
        };
        if let (Some(pinned), Some(known)) = (pinned, known)
            && pinned != known
        {
            tracing::info!(tracker = %base, %pinned, %known, "using the fingerprint given on the command line, not the recorded one");
        }
        let http = build_http(identity, Pin::Exact(fingerprint))?;
        let client = TrackerClient {
            http,
            base,
            fingerprint,
            token,
            interval_secs: Arc::new(std::sync::atomic::AtomicU64::new(
                DEFAULT_ANNOUNCE_INTERVAL.as_secs(),
            )),
            announced: Arc::new(Mutex::new(HashMap::new())),
        };
        // Prove the pin now, so a wrong tracker fails with a clear message up front.
        if let Err(e) = client.health().await {
            if let TrackerError::Unreachable { source, .. } = &e
                && is_cert_error(source)
            {
                return Err(match (pinned, known) {
                    (None, Some(known)) => {
                        let seen = Arc::new(Mutex::new(None));
                        let probe = build_http(identity, Pin::Record(seen.clone()))?;
                        let _ = probe.get(client.url("healthz")).send().await;
                        let presented = seen
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .unwrap_or(known);
                        TrackerError::FingerprintChanged {
                            url: client.base.as_str().into(),
                            presented,
                            known,
                            recorded_as: recorded_as.unwrap_or(key).into(),
                            file: known_path,
                        }
                    }
                    _ => TrackerError::PinMismatch {
                        url: client.base.to_string(),
                        pinned: fingerprint,
                    },
                });
            }
            return Err(e);
        }
        Ok(client)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The private swarm's token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("relative API paths join onto an https base")
    }

    fn api(&self, path: &str) -> Url {
        self.url(&format!("{}/{}", API_PREFIX.trim_start_matches('/'), path))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, TrackerError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|source| TrackerError::Unreachable {
                url: self.base.to_string(),
                source,
            })?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(TrackerError::RateLimited {
                url: self.base.to_string(),
                retry_after: retry_after(resp.headers()),
            });
        }
        let body = resp
            .bytes()
            .await
            .map_err(|source| TrackerError::Unreachable {
                url: self.base.to_string(),
                source,
            })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => TrackerError::Api {
                    status,
                    code: e.error.code,
                    message: e.error.message,
                },
                Err(_) => TrackerError::Api {
                    status,
                    code: "http".into(),
                    message: String::from_utf8_lossy(&body).chars().take(200).collect(),
                },
            });
        }
        serde_json::from_slice(&body).map_err(|e| TrackerError::BadAnswer(e.to_string()))
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, TrackerError> {
        self.send(self.http.post(self.api(path)).json(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, TrackerError> {
        self.send(self.http.get(self.api(path))).await
    }

    pub async fn health(&self) -> Result<Health, TrackerError> {
        self.send(self.http.get(self.url("healthz"))).await
    }

    pub async fn register(&self, manifest: &Manifest) -> Result<RegisterResponse, TrackerError> {
        self.post("files", manifest).await
    }

    /// Fetches a manifest and checks that it hashes to `id`. A large tree comes in pages
    /// (`GET /files/{id}/entries`), put back together before the check.
    pub async fn manifest(&self, id: &FileId) -> Result<Manifest, TrackerError> {
        use torrentguard_protocol::api::{AssembleError, ManifestResponse, TreeAssembler};
        let head: ManifestResponse = self.get(&format!("files/{id}")).await?;
        let bad = |e: AssembleError| TrackerError::BadAnswer(format!("manifest of {id}: {e}"));
        let mut tree = TreeAssembler::new(head).map_err(bad)?;
        while let Some(cursor) = tree.next_cursor().map(str::to_owned) {
            tree.push(self.entries_page(id, &cursor).await?)
                .map_err(bad)?;
        }
        tree.finish(id)
            .map_err(|source| TrackerError::BadManifest { id: *id, source })
    }

    /// One page of a tree's entries, from `cursor` on.
    async fn entries_page(
        &self,
        id: &FileId,
        cursor: &str,
    ) -> Result<Page<torrentguard_protocol::Entry>, TrackerError> {
        use torrentguard_protocol::api::MAX_ENTRIES_PAGE;
        let mut u = self.api(&format!("files/{id}/entries"));
        u.query_pairs_mut()
            .append_pair("cursor", cursor)
            .append_pair("limit", &MAX_ENTRIES_PAGE.to_string());
        self.send(self.http.get(u)).await
    }

    /// Announces `req`. Files announced are remembered until a `stopped` for them succeeds
    /// (see [`TrackerClient::announced`]); a `stopped` gives up after
    /// [`STOPPED_ANNOUNCE_TIMEOUT`].
    pub async fn announce(&self, req: &AnnounceRequest) -> Result<AnnounceResponse, TrackerError> {
        let stopping = req.event == AnnounceEvent::Stopped;
        let mut http = self.http.post(self.api("announce")).json(req);
        if stopping {
            http = http.timeout(STOPPED_ANNOUNCE_TIMEOUT);
        } else {
            // Noted before sending: a request that times out here may still reach the tracker.
            self.announced_files().insert(req.file_id, req.clone());
        }
        let resp: AnnounceResponse = self.send(http).await?;
        if stopping {
            self.announced_files().remove(&req.file_id);
        }
        self.interval_secs.store(
            resp.interval_secs.clamp(1, 3600),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(resp)
    }

    fn announced_files(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, AnnounceRequest>> {
        self.announced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last announce of every file announced and not yet `stopped`.
    pub fn announced(&self) -> Vec<AnnounceRequest> {
        self.announced_files().values().cloned().collect()
    }

    /// How often the tracker wants to hear from us, as of its latest answer.
    pub fn announce_interval(&self) -> Duration {
        Duration::from_secs(
            self.interval_secs
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Reports a peer that served a bad chunk or stalled (`POST /reports`). Bounded by
    /// [`REPORT_TIMEOUT`]: a report is worth little next to the download it came from.
    pub async fn report(&self, req: &ReportRequest) -> Result<(), TrackerError> {
        let http = self
            .http
            .post(self.api("reports"))
            .json(req)
            .timeout(REPORT_TIMEOUT);
        // The answer (the peer's new score) is for people looking with curl; the agent keeps
        // its own memory of the peer.
        let _: serde::de::IgnoredAny = self.send(http).await?;
        Ok(())
    }

    /// Asks the tracker to introduce us to a peer of a file's swarm, for a hole punch or the
    /// relay (`POST /introductions`); the answer names the peer's endpoint and when to start.
    pub async fn introduce(
        &self,
        req: &torrentguard_protocol::api::IntroduceRequest,
    ) -> Result<torrentguard_protocol::api::Introduction, TrackerError> {
        self.post("introductions", req).await
    }

    pub async fn file_peers(&self, id: &FileId) -> Result<FilePeers, TrackerError> {
        self.get(&format!("files/{id}/peers")).await
    }

    pub async fn files(&self, cursor: Option<&str>) -> Result<Page<FileSummary>, TrackerError> {
        match cursor {
            Some(c) => {
                let mut u = self.api("files");
                u.query_pairs_mut().append_pair("cursor", c);
                self.send(self.http.get(u)).await
            }
            None => self.get("files").await,
        }
    }

    pub async fn all_files(&self) -> Result<Vec<FileSummary>, TrackerError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.files(cursor.as_deref()).await?;
            out.extend(page.items);
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    pub async fn peers(&self) -> Result<Vec<PeerSummary>, TrackerError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut u = self.api("peers");
            if let Some(c) = &cursor {
                u.query_pairs_mut().append_pair("cursor", c);
            }
            let page: Page<PeerSummary> = self.send(self.http.get(u)).await?;
            out.extend(page.items);
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// Wait asked for when a 429 carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A 429's `Retry-After` in delay-seconds, the form trackers send for rate limits. The
/// HTTP-date form (or none) falls back to [`DEFAULT_RETRY_AFTER`]: comparing it with our
/// clock would trust two clocks to agree, for a wait that is bounded by the caller anyway.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
}

fn is_cert_error(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return matches!(r, rustls::Error::InvalidCertificate(_));
        }
        // io::Error's source() skips the error it wraps, so look inside it explicitly.
        if let Some(r) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return matches!(r, rustls::Error::InvalidCertificate(_));
        }
        if s.to_string().contains("invalid peer certificate") {
            return true;
        }
        src = s.source();
    }
    false
}

fn parse_url(url: &str) -> Result<Url, TrackerError> {
    let mut u = Url::parse(url).map_err(|_| TrackerError::BadUrl(url.into()))?;
    if u.scheme() != "https" || u.host().is_none() {
        return Err(TrackerError::BadUrl(url.into()));
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

/// `host:port` as recorded in `known_trackers`.
fn host_key(u: &Url) -> String {
    format!(
        "{}:{}",
        u.host_str().unwrap_or_default(),
        u.port_or_known_default().unwrap_or(443)
    )
}

/// Every `ip:port` the URL's host resolves to, as recorded in `known_trackers`. Empty when it
/// does not resolve: connecting then fails with its own clear error.
async fn resolve(u: &Url) -> Vec<String> {
    let port = u.port_or_known_default().unwrap_or(443);
    let host = u.host_str().unwrap_or_default();
    let mut out: Vec<String> = match tokio::net::lookup_host(format!("{host}:{port}")).await {
        Ok(addrs) => addrs.map(|a| a.to_string()).collect(),
        Err(e) => {
            tracing::debug!(host, error = %e, "cannot resolve the tracker's host");
            Vec::new()
        }
    };
    out.sort();
    out.dedup();
    out
}

/// The identity recorded for a tracker known as `key` (host:port) and reached at `endpoints`:
/// the record of the host text first, else of any endpoint. `Err` lists the records when they
/// disagree, which must be settled by a person, never by picking one.
fn recorded_identity(
    records: &[(String, Fingerprint)],
    key: &str,
    endpoints: &[String],
) -> Result<Option<(String, Fingerprint)>, String> {
    let matching: Vec<&(String, Fingerprint)> = records
        .iter()
        .filter(|(k, _)| k == key || endpoints.contains(k))
        .collect();
    let Some(first) = matching
        .iter()
        .find(|(k, _)| k == key)
        .or_else(|| matching.first())
    else {
        return Ok(None);
    };
    if matching.iter().any(|(_, fp)| *fp != first.1) {
        return Err(matching
            .iter()
            .map(|(k, fp)| format!("{k} {fp}"))
            .collect::<Vec<_>>()
            .join(", "));
    }
    Ok(Some((first.0.clone(), first.1)))
}

fn read_known(path: &Path) -> Result<Vec<(String, Fingerprint)>, TrackerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TrackerError::Io {
                path: path.into(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let host = parts.next()?;
            let fp = parts.next()?.parse().ok()?;
            Some((host.to_string(), fp))
        })
        .collect())
}

/// Records `fp` under each of `keys` (the host text and the addresses it resolved to) that is
/// not recorded yet.
fn append_known(path: &Path, keys: &[&str], fp: Fingerprint) -> Result<(), TrackerError> {
    let present = read_known(path)?;
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    if text.is_empty() {
        text.push_str("# TorrentGuard trackers trusted on first use: host:port fingerprint\n");
    }
    let mut added = Vec::new();
    for key in keys {
        if !present.iter().any(|(k, _)| k == key) && !added.contains(key) {
            text.push_str(&format!("{key} {fp}\n"));
            added.push(*key);
        }
    }
    write_atomically(path, text.as_bytes(), 0o600).map_err(|e| TrackerError::Io {
        path: path.into(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_known_file() {
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("not a url").is_err());
        let u = parse_url("https://127.0.0.1:8443").unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:8443/");
        assert_eq!(host_key(&u), "127.0.0.1:8443");
        assert_eq!(
            host_key(&parse_url("https://example.org/t").unwrap()),
            "example.org:443"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(KNOWN_TRACKERS_FILE);
        assert!(read_known(&p).unwrap().is_empty());
        let fp = Fingerprint::of_der(b"x");
        append_known(&p, &["h:1"], fp).unwrap();
        assert_eq!(read_known(&p).unwrap(), vec![("h:1".to_string(), fp)]);
    }

    #[test]
    fn records_match_by_host_text_or_resolved_address() {
        let (a, b) = (Fingerprint::of_der(b"a"), Fingerprint::of_der(b"b"));
        let records = vec![("127.0.0.1:9".to_string(), a)];
        let ep = vec!["127.0.0.1:9".to_string()];
        assert_eq!(
            recorded_identity(&records, "localhost:9", &ep),
            Ok(Some(("127.0.0.1:9".to_string(), a)))
        );
        assert_eq!(recorded_identity(&records, "localhost:9", &[]), Ok(None));
        let mut both = records.clone();
        both.push(("localhost:9".to_string(), b));
        let err = recorded_identity(&both, "localhost:9", &ep).unwrap_err();
        assert!(
            err.contains("127.0.0.1:9") && err.contains("localhost:9"),
            "{err}"
        );
    }

    async fn tracker_on(
        addr: std::net::SocketAddr,
        dir: &Path,
    ) -> torrentguard_tracker::RunningTracker {
        let cfg = torrentguard_tracker::TrackerConfig::new(addr, dir.to_path_buf());
        torrentguard_tracker::start(cfg).await.unwrap()
    }

    /// Issue 9: a tracker pinned as 127.0.0.1:P, replaced by another identity on the same
    /// port, reached as localhost:P: refused, not trusted on first use under the new name.
    #[tokio::test]
    async fn another_name_for_a_known_address_cannot_bring_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let agent_dir = dir.path().join("agent");
        std::fs::create_dir_all(&agent_dir).unwrap();
        let me = Identity::generate("agent").unwrap();

        let first = tracker_on("127.0.0.1:0".parse().unwrap(), &dir.path().join("a")).await;
        let port = first.local_addr.port();
        let pinned_fp = first.fingerprint;
        let c = TrackerClient::connect(
            &format!("https://127.0.0.1:{port}"),
            None,
            &me,
            &agent_dir,
            None,
        )
        .await
        .unwrap();
        assert_eq!(c.fingerprint(), pinned_fp);
        drop(c);
        first.shutdown().await.unwrap();

        // Another tracker (another identity) on the very same address.
        let second = tracker_on(([127, 0, 0, 1], port).into(), &dir.path().join("b")).await;
        assert_ne!(second.fingerprint, pinned_fp);
        let err = TrackerClient::connect(
            &format!("https://localhost:{port}"),
            None,
            &me,
            &agent_dir,
            None,
        )
        .await
        .unwrap_err();
        match &err {
            TrackerError::FingerprintChanged {
                presented,
                known,
                recorded_as,
                ..
            } => {
                assert_eq!((*presented, *known), (second.fingerprint, pinned_fp));
                assert_eq!(&**recorded_as, format!("127.0.0.1:{port}"));
            }
            other => panic!("expected FingerprintChanged, got {other}"),
        }
        let records = read_known(&agent_dir.join(KNOWN_TRACKERS_FILE)).unwrap();
        assert!(
            records.iter().all(|(_, fp)| *fp == pinned_fp),
            "the new identity was recorded: {records:?}"
        );
        second.shutdown().await.unwrap();
    }

    /// A tree of more than one response's worth of entries comes back whole and verified.
    #[tokio::test]
    async fn a_paged_tree_is_reassembled_and_verified() {
        use torrentguard_protocol::api::MAX_INLINE_ENTRIES;
        use torrentguard_protocol::{Entry, HashAlgo};
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::generate("agent").unwrap();
        let t = tracker_on("127.0.0.1:0".parse().unwrap(), &dir.path().join("t")).await;
        let url = format!("https://127.0.0.1:{}", t.local_addr.port());
        let c = TrackerClient::connect(&url, Some(t.fingerprint), &me, dir.path(), None)
            .await
            .unwrap();
        let n = MAX_INLINE_ENTRIES as usize * 2 + 1; // three pieces: head and two pages
        let entries = (0..n)
            .map(|i| Entry::file(format!("f{i:06}"), 1, 0o644))
            .collect();
        let chunks = (0..n)
            .map(|i| HashAlgo::Sha256.digest(&i.to_be_bytes()))
            .collect();
        let m = Manifest::tree("big", 16 * 1024, HashAlgo::Sha256, entries, chunks);
        c.register(&m).await.unwrap();
        assert_eq!(c.manifest(&m.file_id()).await.unwrap(), m);
        t.shutdown().await.unwrap();
    }

    /// Trusting `localhost:P` on first use records its addresses too, so a later
    /// `127.0.0.1:P` with another identity is refused as well.
    #[tokio::test]
    async fn first_use_records_the_resolved_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::generate("agent").unwrap();
        let t = tracker_on("127.0.0.1:0".parse().unwrap(), &dir.path().join("t")).await;
        let port = t.local_addr.port();
        TrackerClient::connect(
            &format!("https://localhost:{port}"),
            None,
            &me,
            dir.path(),
            None,
        )
        .await
        .unwrap();
        let records = read_known(&dir.path().join(KNOWN_TRACKERS_FILE)).unwrap();
        assert!(
            records.contains(&(format!("localhost:{port}"), t.fingerprint)),
            "{records:?}"
        );
        assert!(
            records.contains(&(format!("127.0.0.1:{port}"), t.fingerprint)),
            "{records:?}"
        );
        // Same identity under the other name: accepted, nothing new to record.
        TrackerClient::connect(
            &format!("https://127.0.0.1:{port}"),
            None,
            &me,
            dir.path(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            read_known(&dir.path().join(KNOWN_TRACKERS_FILE)).unwrap(),
            records
        );
        t.shutdown().await.unwrap();
    }
}
