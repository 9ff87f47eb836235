//! The axum application: routes, handlers, authentication and request accounting.
//!
//! Handlers validate everything they are given, then talk to the [`Store`]; they hold no SQL.
//! The caller's identity arrives as a [`PeerIdentity`] request extension, put there by the
//! connection loop from the TLS session (see `server.rs`), its address as a
//! `ConnectInfo<SocketAddr>` extension, and the tracker address it reached as a [`LocalAddr`].

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::api::{
    API_PREFIX, AnnounceEvent, AnnounceRequest, AnnounceResponse, FilePeers, Health,
    MAX_ENTRIES_PAGE, MAX_INLINE_ENTRIES, ManifestResponse, Page, PageQuery, PeerInfo, PeerSummary,
    RegisterResponse, ReportRequest, Reputation,
};
use torrentguard_protocol::{Bitfield, Entry, FileId, Fingerprint, HashAlgo, Manifest};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::error::{ApiError, AppBytes, AppJson, AppPath, AppQuery};
use crate::introductions::{self, Introductions};
use crate::known_files::{KnownFiles, MAX_KNOWN_FILES};
use crate::limits::{Limiter, LimitsConfig, Rate, limit_concurrency, limit_writes};
use crate::metrics::{ConnectionStats, Metrics};
use crate::reach::{self as reachability, MAX_REACH_ENTRIES, Prober, ReachTable};
use crate::reputation::{Report, ReputationConfig, Reputations};
use crate::store::{AnnounceRecord, InstrumentedStore, Registration, ReportRecord, Store};

/// The TLS client certificate's fingerprint of the connection a request came on, if the client
/// presented one. Inserted by the connection loop; never taken from anything the client wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<Fingerprint>);

/// The tracker's own address of the connection a request came on: the address the client
/// dialled, so one it can reach this host by. Inserted by the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for LocalAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<LocalAddr>()
            .copied()
            .ok_or_else(|| ApiError::Internal("local connection address missing".into()))
    }
}

/// Largest `POST /files` body: 256 MiB. The 1 Mi chunk digests at the protocol's limit take
/// about 70 MB of JSON; the rest holds a tree's entries (~35 bytes of JSON each besides the
/// path), so a tree at the 1 Mi entry limit fits with paths of ~140 bytes on average.
pub const MAX_MANIFEST_BODY: usize = 256 * 1024 * 1024;
/// Largest `POST /announce` body: the bitfield of 1M chunks is 128 KiB, 171 KiB as base64.
pub const MAX_ANNOUNCE_BODY: usize = 256 * 1024;
/// Every other body (none of the other routes reads one).
pub const MAX_OTHER_BODY: usize = 16 * 1024;
/// Manifests parsed at once. Each may hold up to 256 MiB of body plus its parsed form in memory,
/// so a burst of registrations queues here instead of exhausting memory.
const CONCURRENT_REGISTRATIONS: usize = 4;
/// Peers returned by one announce: enough to saturate a download, small enough to answer fast.
pub const MAX_ANNOUNCE_PEERS: u32 = 200;
/// Peers listed by `GET /files/{id}/peers`.
pub const MAX_FILE_PEERS: u32 = 10_000;
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Longest request target (path and query) answered; longer gets 414. The longest real one, a
/// peer listing with its query, is under 200 bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields in a request; more gets 431.
pub const MAX_HEADER_FIELDS: usize = 100;
/// Most bytes of header names and values (counted as HTTP/1.1 lines: name, `: `, value, CRLF);
/// more gets 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// A request (body upload included) that takes longer is answered 408. Generous: a 70 MB
/// manifest over a slow link must still get through.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    fingerprint: Fingerprint,
    peer_ttl: Duration,
    announce_interval: Duration,
    /// SHA-256 of the swarm token, so comparing takes the same time whatever the guess.
    swarm_token_hash: Option<[u8; 32]>,
    allowlist: HashSet<Fingerprint>,
    /// Cancelled when the tracker shuts down, so long-lived responses (the dashboard's event
    /// stream) end instead of holding the graceful shutdown for its whole grace period.
    closing: CancellationToken,
    limiter: Limiter,
    known_files: KnownFiles,
    reputation: ReputationConfig,
    traversal: Traversal,
}

/// The NAT traversal state (issue 15): what peers announced about their reach, the
/// reachability prober, the introductions, and the relay's port if one runs.
#[derive(Debug)]
pub struct Traversal {
    pub reach: ReachTable,
    pub prober: Prober,
    pub introductions: Arc<Introductions>,
    pub relay_port: Option<u16>,
}

/// What the traversal endpoints need from the process: the tracker's identity (the probe's
/// client certificate) and the relay's port.
#[derive(Debug, Clone, Default)]
pub struct TraversalConfig {
    pub identity: Option<Arc<torrentguard_trust::Identity>>,
    pub relay_port: Option<u16>,
}

/// Settings the application needs (the listener's are elsewhere).
pub struct AppConfig {
    pub fingerprint: Fingerprint,
    pub peer_ttl: Duration,
    pub announce_interval: Duration,
    pub swarm_token: Option<String>,
    pub allowlist: Vec<Fingerprint>,
    pub reputation: ReputationConfig,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(HashAlgo::Sha256.digest(data).as_bytes());
    out
}

impl AppState {
    /// A state with the default bounds but no write-rate limits: for a router driven
    /// in-process, whose requests all carry one made-up address. [`crate::start`] uses
    /// [`Self::with_limits`] with the configured ones.
    pub fn new(store: Arc<dyn Store>, config: AppConfig) -> Self {
        let off = Rate {
            per_sec: 0.0,
            burst: 0,
        };
        let limits = LimitsConfig {
            per_identity: off,
            per_address: off,
            ..LimitsConfig::default()
        };
        Self::with_limits(store, config, limits)
    }

    pub fn with_limits(store: Arc<dyn Store>, config: AppConfig, limits: LimitsConfig) -> Self {
        Self::with_traversal(store, config, limits, TraversalConfig::default())
    }

    /// [`Self::with_limits`] with the reachability probe and relay configured.
    pub fn with_traversal(
        store: Arc<dyn Store>,
        config: AppConfig,
        limits: LimitsConfig,
        traversal: TraversalConfig,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(InstrumentedStore::new(store, metrics.clone()));
        AppState(Arc::new(Shared {
            store,
            metrics,
            fingerprint: config.fingerprint,
            peer_ttl: config.peer_ttl,
            announce_interval: config.announce_interval,
            swarm_token_hash: config.swarm_token.map(|t| sha256(t.as_bytes())),
            allowlist: config.allowlist.into_iter().collect(),
            closing: CancellationToken::new(),
            limiter: Limiter::new(limits),
            reputation: config.reputation,
            known_files: KnownFiles::new(MAX_KNOWN_FILES),
            traversal: Traversal {
                reach: ReachTable::new(config.peer_ttl, MAX_REACH_ENTRIES),
                prober: Prober::new(traversal.identity),
                introductions: Arc::new(Introductions::default()),
                relay_port: traversal.relay_port,
            },
        }))
    }

    /// The fingerprint of the certificate this tracker serves.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint
    }

    pub fn traversal(&self) -> &Traversal {
        &self.0.traversal
    }

    pub fn limiter(&self) -> &Limiter {
        &self.0.limiter
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Cancel it when the tracker starts shutting down (see [`Shared::closing`]).
    pub fn closing(&self) -> &CancellationToken {
        &self.0.closing
    }

    /// `None` for an open swarm; else whether `given` is its swarm token.
    pub fn swarm_token_matches(&self, given: &str) -> Option<bool> {
        let want = self.0.swarm_token_hash.as_ref()?;
        Some(constant_time_eq(&sha256(given.as_bytes()), want))
    }

    /// The chunk count of `id`, `None` for an unknown file: from memory once seen (it never
    /// changes, see [`KnownFiles`]), else from the store.
    pub(crate) async fn chunk_count(&self, id: FileId) -> Result<Option<u32>, ApiError> {
        if let Some(n) = self.0.known_files.chunk_count(&id) {
            return Ok(Some(n));
        }
        let n = self.0.store.chunk_count(id).await?;
        if let Some(n) = n {
            self.0.known_files.remember(id, n);
        }
        Ok(n)
    }

    /// How long an announce's written state stands for repeats of it: the interval peers were
    /// told, but at most a third of the TTL, so a peer repeating itself just faster than the
    /// window still has its row refreshed well before it would expire.
    fn announce_window(&self) -> Duration {
        self.0.announce_interval.min(self.0.peer_ttl / 3)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    /// The connection figures `/metrics` shows, for the connection table to keep up to date.
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        self.0.metrics.connections().clone()
    }

    /// Unix seconds before which a peer entry counts as gone.
    pub fn live_since(&self, now: i64) -> i64 {
        now.saturating_sub(ttl_secs(self.0.peer_ttl))
    }
}

/// The TTL in whole seconds (the store's resolution), at least one.
pub fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        // A clock before 1970 is a broken host; 0 keeps the arithmetic defined.
        .unwrap_or(0)
}

/// A write route: its requests take a token of the per-address and per-identity write rates
/// (see `limits.rs`) before anything else, their body included, is looked at. Every route
/// that makes the tracker store something goes through this.
pub fn write_limited(state: &AppState, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(middleware::from_fn_with_state(state.clone(), limit_writes))
}

/// Builds the router with every route, the body limits and the middleware.
pub fn router(state: AppState) -> Router {
    let register = post(register_file)
        .layer::<_, Infallible>(GlobalConcurrencyLimitLayer::new(CONCURRENT_REGISTRATIONS))
        .layer(DefaultBodyLimit::max(MAX_MANIFEST_BODY));
    let announce_route = post(announce).layer(DefaultBodyLimit::max(MAX_ANNOUNCE_BODY));
    let api = Router::new()
        .route(
            "/files",
            get(list_files).merge(write_limited(&state, register)),
        )
        .route("/files/{id}", get(get_file))
        .route("/files/{id}/entries", get(file_entries))
        .route("/files/{id}/peers", get(file_peers))
        .route("/announce", write_limited(&state, announce_route))
        .route("/peers", get(list_peers))
        .route("/reports", write_limited(&state, post(report_peer)))
        .route(
            "/reachability",
            write_limited(&state, post(reachability::reachability)),
        )
        .route(
            "/introductions",
            write_limited(&state, post(introductions::introduce)),
        )
        // Only matched routes: an unknown path is a 404 whether or not a token came with it.
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Outermost of the API: a request over the bound costs no more than its 429. /healthz
        // and /metrics stay outside, so an overloaded tracker is still seen as alive.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_concurrency,
        ));

    // The introductions long-poll holds its request for up to 30 s: under the concurrency bound
    // a few hundred of them would starve every other request, so it is outside it, bounded by
    // its own limits instead (see `introductions.rs`). The swarm token still applies.
    let long_poll = Router::new()
        .route("/introductions", get(introductions::collect))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    Router::new()
        .nest(API_PREFIX, api.merge(long_poll))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_OTHER_BODY))
        .layer(middleware::from_fn(request_limits))
        .layer(middleware::from_fn_with_state(state.clone(), account))
        .with_state(state)
}

/// Outermost middleware: bounds the request's duration and counts it by route and status.
async fn account(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let start = Instant::now();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    };
    state.0.metrics.record_request(
        route.as_deref(),
        &method,
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

/// Refuses oversized request targets and headers with the JSON error. hyper's own limits are set
/// above these (see `server.rs`), so this is the answer a client normally gets, over HTTP/1.1 and
/// HTTP/2 alike; past hyper's, `bare_errors` gives hyper's answer the same body.
async fn request_limits(req: Request, next: Next) -> Result<Response, ApiError> {
    let target = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path().len(), |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong);
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeaderFieldsTooLarge);
    }
    Ok(next.run(req).await)
}

/// With a swarm token configured, every API request must carry `Authorization: Bearer <token>`.
async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(want) = &state.0.swarm_token_hash {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(given) = given else {
            return Err(ApiError::Unauthorized(
                "this swarm requires \"Authorization: Bearer <token>\"".into(),
            ));
        };
        if !constant_time_eq(&sha256(given.as_bytes()), want) {
            return Err(ApiError::Unauthorized("wrong swarm token".into()));
        }
    }
    Ok(next.run(req).await)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A caller that presented a client certificate allowed in this swarm. The fingerprint is the
/// TLS session's, so no peer can act on behalf of another.
pub struct AuthorizedPeer(pub Fingerprint);

impl FromRequestParts<AppState> for AuthorizedPeer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(fp) = parts.extensions.get::<PeerIdentity>().and_then(|p| p.0) else {
            return Err(ApiError::Unauthorized(
                "this endpoint requires a TLS client certificate".into(),
            ));
        };
        if !state.0.allowlist.is_empty() && !state.0.allowlist.contains(&fp) {
            return Err(ApiError::Forbidden(format!(
                "{fp} is not on this tracker's allowlist"
            )));
        }
        Ok(AuthorizedPeer(fp))
    }
}

/// The connection's remote address.
pub(crate) struct RemoteAddr(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for RemoteAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| RemoteAddr(c.0))
            .ok_or_else(|| ApiError::Internal("connection address missing".into()))
    }
}

fn parse_file_id(s: &str) -> Result<FileId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest("a file id is 64 lowercase hex digits".into()))
}

fn page_limit(q: &PageQuery) -> Result<u32, ApiError> {
    match q.limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(n @ 1..=MAX_PAGE_LIMIT) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit {n} is out of range 1..={MAX_PAGE_LIMIT}"
        ))),
    }
}

/// The page's cursor; `?cursor=` (empty) is the first page, as if absent.
fn cursor<T: std::str::FromStr>(q: &PageQuery) -> Result<Option<T>, ApiError> {
    q.cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))
        })
        .transpose()
}

async fn register_file(
    State(state): State<AppState>,
    AuthorizedPeer(peer): AuthorizedPeer,
    AppBytes(body): AppBytes,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let limits = state.0.limiter.config;
    // Parsing, validating and hashing a manifest of up to 80 MB takes long enough to stall
    // other requests on this worker, so it runs on the blocking pool.
    let (manifest, file_id) = tokio::task::spawn_blocking(move || {
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("manifest JSON: {e}")))?;
        check_manifest_size(&manifest, &limits)?;
        manifest
            .validate()
            .map_err(|e| ApiError::InvalidManifest(e.to_string()))?;
        let id = manifest.file_id();
        Ok::<_, ApiError>((manifest, id))
    })
    .await
    .map_err(ApiError::internal)??;
    let max_files = limits.max_files_per_identity;
    let created = match state
        .0
        .store
        .register_file_by(file_id, &manifest, unix_now(), peer, max_files)
        .await?
    {
        Registration::Created => true,
        Registration::Existing => false,
        Registration::OverQuota { registered } => {
            return Err(ApiError::TooManyFiles(format!(
                "{} has registered {registered} files, the most this tracker takes from one identity ({max_files})",
                peer.short()
            )));
        }
    };
    if created {
        tracing::info!(%file_id, name = %manifest.name, size = manifest.size, peer = %peer.short(), "file registered");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(RegisterResponse { file_id, created })))
}

/// The operator's bounds on one manifest, tighter than (or equal to) the protocol's own.
fn check_manifest_size(manifest: &Manifest, limits: &LimitsConfig) -> Result<(), ApiError> {
    let chunks = manifest.chunks.len();
    if chunks > limits.max_manifest_chunks as usize {
        return Err(ApiError::ManifestTooLarge(format!(
            "the manifest has {chunks} chunks; this tracker takes at most {}",
            limits.max_manifest_chunks
        )));
    }
    let entries = manifest.files.as_ref().map_or(0, Vec::len);
    if entries > limits.max_manifest_entries as usize {
        return Err(ApiError::ManifestTooLarge(format!(
            "the manifest has {entries} entries; this tracker takes at most {}",
            limits.max_manifest_entries
        )));
    }
    Ok(())
}

async fn list_files(
    State(state): State<AppState>,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Page<torrentguard_protocol::api::FileSummary>>, ApiError> {
    let limit = page_limit(&q)?;
    let after = cursor::<FileId>(&q)?;
    let live_since = state.live_since(unix_now());
    Ok(Json(
        state.0.store.list_files(after, limit, live_since).await?,
    ))
}

/// The manifest; a tree's entries past the first [`MAX_INLINE_ENTRIES`] are left to
/// [`file_entries`], with the cursor to start from.
async fn get_file(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<ManifestResponse>, ApiError> {
    let id = parse_file_id(&id)?;
    let Some(head) = state.0.store.manifest_head(id, MAX_INLINE_ENTRIES).await? else {
        return Err(ApiError::NotFound(format!("no file {id}")));
    };
    let shown = head.manifest.entries().len();
    let entries_next =
        (shown > 0 && (shown as u64) < u64::from(head.entry_count)).then(|| shown.to_string());
    Ok(Json(ManifestResponse {
        manifest: head.manifest,
        entries_next,
    }))
}

fn entries_limit(q: &PageQuery) -> Result<u32, ApiError> {
    match q.limit {
        None => Ok(MAX_ENTRIES_PAGE),
        Some(n @ 1..=MAX_ENTRIES_PAGE) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit {n} is out of range 1..={MAX_ENTRIES_PAGE}"
        ))),
    }
}

/// A page of a tree's entries. The cursor is the index of the page's first entry; a single file
/// has no entries, so it answers an empty page and refuses every cursor.
async fn file_entries(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Page<Entry>>, ApiError> {
    let id = parse_file_id(&id)?;
    let limit = entries_limit(&q)?;
    let start = cursor::<u32>(&q)?;
    let Some(slice) = state.0.store.entries(id, start.unwrap_or(0), limit).await? else {
        return Err(ApiError::NotFound(format!("no file {id}")));
    };
    if let Some(c) = start.filter(|&c| c >= slice.entry_count) {
        return Err(ApiError::BadRequest(format!(
            "cursor {c} is past the end: file {id} has {} entries",
            slice.entry_count
        )));
    }
    let end = u64::from(start.unwrap_or(0)) + slice.items.len() as u64;
    let next =
        (!slice.items.is_empty() && end < u64::from(slice.entry_count)).then(|| end.to_string());
    Ok(Json(Page {
        items: slice.items,
        next,
    }))
}

async fn file_peers(
    State(state): State<AppState>,
    LocalAddr(local): LocalAddr,
    AppPath(id): AppPath<String>,
) -> Result<Json<FilePeers>, ApiError> {
    let id = parse_file_id(&id)?;
    if state.chunk_count(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no file {id}")));
    }
    let live_since = state.live_since(unix_now());
    let peers = state
        .0
        .store
        .file_peers(id, live_since, None, MAX_FILE_PEERS)
        .await?;
    let mut peers = with_reputations(&state, peers, unix_now()).await?;
    state.0.traversal.reach.fill(&mut peers);
    Ok(Json(FilePeers {
        file_id: id,
        peers: reachable_peers(peers, local.ip()),
    }))
}

/// The address to hand an asker for a peer stored at `stored`, where `asker_reached` is the
/// tracker address the asker's connection came in on.
///
/// A peer stored at a loopback address announced over loopback, so it runs on the tracker's
/// host; an unspecified address (not accepted in announces, but possible in an older database)
/// names no host at all. Neither reaches that peer from another host, so an asker from
/// elsewhere gets the address it reached this host by instead. An asker that itself came over
/// loopback is on this host and keeps the loopback address.
pub fn address_for_asker(stored: IpAddr, asker_reached: IpAddr) -> IpAddr {
    let stored = stored.to_canonical();
    let reached = asker_reached.to_canonical();
    let useless_elsewhere = stored.is_loopback() && !reached.is_loopback();
    if useless_elsewhere || stored.is_unspecified() {
        reached
    } else {
        stored
    }
}

/// [`address_for_asker`] over a list of peers.
fn reachable_peers(mut peers: Vec<PeerInfo>, asker_reached: IpAddr) -> Vec<PeerInfo> {
    for p in &mut peers {
        p.address = address_for_asker(p.address, asker_reached);
    }
    peers
}

/// The address to record for an announcing peer: the connection's source, or the announced one
/// if that is allowed. A peer may name any routable address, from anywhere: an agent reaching
/// its own embedded tracker over loopback names its LAN address this way, and a false claim
/// only sends others to a host that fails their fingerprint pinning. It may not send others to
/// loopback (that would point them at themselves) unless it is itself on loopback, and never
/// to an unspecified, multicast or broadcast address, which cannot be dialled. What askers are
/// then shown is [`address_for_asker`]'s business.
pub fn advertised_address(source: IpAddr, announced: Option<IpAddr>) -> Result<IpAddr, ApiError> {
    let source = source.to_canonical();
    let Some(a) = announced.map(|a| a.to_canonical()) else {
        return Ok(source);
    };
    if a.is_unspecified() || a.is_multicast() || a == IpAddr::from([255, 255, 255, 255]) {
        return Err(ApiError::BadRequest(format!(
            "address {a} cannot be dialled by other peers"
        )));
    }
    if a.is_loopback() && !source.is_loopback() {
        return Err(ApiError::BadRequest(format!(
            "loopback address {a} is only accepted from a loopback connection"
        )));
    }
    Ok(a)
}

async fn announce(
    State(state): State<AppState>,
    AuthorizedPeer(peer): AuthorizedPeer,
    RemoteAddr(remote): RemoteAddr,
    LocalAddr(local): LocalAddr,
    AppJson(req): AppJson<AnnounceRequest>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    if req.port == 0 {
        return Err(ApiError::BadRequest("port must be 1..=65535".into()));
    }
    let address = advertised_address(remote.ip(), req.address)?;
    let now = unix_now();
    let cache = &state.0.limiter.announces;
    let key = (peer, req.file_id);
    let said = cache.state(address, req.port, &req.bitfield);
    let window = state.announce_window();
    // Completed and stopped change what others are told; anything else repeating the state
    // written less than an interval ago changes nothing, so it is answered without a write.
    let changes_nothing = !matches!(req.event, AnnounceEvent::Completed | AnnounceEvent::Stopped)
        && cache.is_fresh(key, said, window, Instant::now());
    if changes_nothing {
        tracing::debug!(peer = %peer.short(), file = %req.file_id.short(), "repeat announce answered without a write");
    } else {
        record_announce(&state, peer, address, &req, now).await?;
        if req.event == AnnounceEvent::Stopped {
            cache.forget(key);
        } else {
            cache.record(key, said, window, Instant::now());
        }
    }
    state.0.metrics.record_announce();
    state.0.traversal.reach.set(peer, req.reach, Instant::now());
    let peers = state
        .0
        .store
        .file_peers(
            req.file_id,
            state.live_since(now),
            Some(peer),
            MAX_ANNOUNCE_PEERS,
        )
        .await?;
    let mut peers = best_first(&state, with_reputations(&state, peers, now).await?);
    state.0.traversal.reach.fill(&mut peers);
    Ok(Json(AnnounceResponse {
        interval_secs: state.0.announce_interval.as_secs().max(1),
        peers: reachable_peers(peers, local.ip()),
        observed: Some(remote),
    }))
}

/// Validates an announce against its file and writes it, refusing a new peer of a full swarm.
async fn record_announce(
    state: &AppState,
    peer: Fingerprint,
    address: IpAddr,
    req: &AnnounceRequest,
    now: i64,
) -> Result<(), ApiError> {
    let Some(chunks) = state.chunk_count(req.file_id).await? else {
        return Err(ApiError::NotFound(format!("no file {}", req.file_id)));
    };
    let bitfield = Bitfield::from_base64(&req.bitfield, chunks)
        .map_err(|e| ApiError::BadRequest(format!("bitfield: {e}")))?;
    // A peer that wrote an announce for this file less than half a TTL ago is still a live
    // member: it takes no new room, so its swarm need not be counted.
    let member = state.0.limiter.announces.wrote_within(
        (peer, req.file_id),
        state.0.peer_ttl / 2,
        Instant::now(),
    );
    if req.event != AnnounceEvent::Stopped && !member {
        check_swarm_room(state, req.file_id, peer, now).await?;
    }
    let record = AnnounceRecord {
        fingerprint: peer,
        file_id: req.file_id,
        address,
        port: req.port,
        event: req.event,
        have: bitfield.count(),
        complete: bitfield.is_complete(),
        bitfield: bitfield.as_bytes().to_vec(),
        now,
    };
    state.0.store.announce(&record).await?;
    tracing::debug!(peer = %peer.short(), file = %req.file_id.short(), event = req.event.as_str(), have = record.have, %address, "announce");
    Ok(())
}

/// A peer already in the swarm may always stay; a new one only while the file has fewer live
/// peers than `--max-peers-per-file`.
async fn check_swarm_room(
    state: &AppState,
    file: FileId,
    peer: Fingerprint,
    now: i64,
) -> Result<(), ApiError> {
    let max = state.0.limiter.config.max_peers_per_file;
    let size = state
        .0
        .store
        .swarm_size(file, state.live_since(now), peer)
        .await?;
    if !size.includes_peer && size.live_peers >= max {
        return Err(ApiError::SwarmFull(format!(
            "file {} has {} live peers, the most this tracker keeps for one file ({max})",
            file.short(),
            size.live_peers
        )));
    }
    Ok(())
}

async fn list_peers(
    State(state): State<AppState>,
    LocalAddr(local): LocalAddr,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Page<PeerSummary>>, ApiError> {
    let limit = page_limit(&q)?;
    let after = cursor::<Fingerprint>(&q)?;
    let now = unix_now();
    let mut page = state
        .0
        .store
        .list_peers(after, limit, state.live_since(now))
        .await?;
    let fingerprints: Vec<_> = page.items.iter().map(|p| p.fingerprint).collect();
    let scores = reputations(&state, &fingerprints, now).await?;
    let at = Instant::now();
    for p in &mut page.items {
        p.address = address_for_asker(p.address, local.ip());
        p.reputation = Some(scores.of(&p.fingerprint));
        p.reach = state.0.traversal.reach.get(&p.fingerprint, at);
    }
    Ok(Json(page))
}

/// The standing of `peers` at `now`, from the reports the store still counts.
pub(crate) async fn reputations(
    state: &AppState,
    peers: &[Fingerprint],
    now: i64,
) -> Result<Reputations, ApiError> {
    let config = &state.0.reputation;
    let rows = state
        .0
        .store
        .reports_about(peers, config.counted_since(now))
        .await?;
    let reports: Vec<Report> = rows
        .into_iter()
        .map(|r| Report {
            peer: r.peer,
            reporter: r.reporter,
            kind: r.kind,
            at: r.reported_at,
        })
        .collect();
    Ok(config.score(&reports, now))
}

/// `peers` with their reputation filled in.
pub(crate) async fn with_reputations(
    state: &AppState,
    mut peers: Vec<PeerInfo>,
    now: i64,
) -> Result<Vec<PeerInfo>, ApiError> {
    let fingerprints: Vec<_> = peers.iter().map(|p| p.fingerprint).collect();
    let scores = reputations(state, &fingerprints, now).await?;
    for p in &mut peers {
        p.reputation = Some(scores.of(&p.fingerprint));
    }
    Ok(peers)
}

/// An announce answer's peers: those below the withhold threshold left out, the rest best
/// first (a stable sort, so equals keep the store's fingerprint order).
fn best_first(state: &AppState, mut peers: Vec<PeerInfo>) -> Vec<PeerInfo> {
    let score = |p: &PeerInfo| {
        p.reputation
            .map_or(crate::reputation::CLEAN_SCORE, |r| r.score)
    };
    peers.retain(|p| {
        !p.reputation
            .is_some_and(|r| state.0.reputation.withholds(&r))
    });
    peers.sort_by_key(|p| std::cmp::Reverse(score(p)));
    peers
}

/// `POST /reports` answer.
#[derive(Debug, Clone, serde::Serialize)]
struct ReportAccepted {
    peer: Fingerprint,
    /// False when this reporter had reported the peer before: its latest report replaced the
    /// earlier one, so it still counts once.
    new_reporter: bool,
    reputation: Reputation,
}

/// A downloader reports a peer that served a bad chunk or stalled. 201 for a reporter's first
/// report of that peer, 202 when it replaces the reporter's earlier one.
async fn report_peer(
    State(state): State<AppState>,
    AuthorizedPeer(reporter): AuthorizedPeer,
    AppJson(req): AppJson<ReportRequest>,
) -> Result<(StatusCode, Json<ReportAccepted>), ApiError> {
    if req.peer == reporter {
        return Err(ApiError::BadRequest("a peer cannot report itself".into()));
    }
    let Some(chunks) = state.chunk_count(req.file_id).await? else {
        return Err(ApiError::NotFound(format!("no file {}", req.file_id)));
    };
    if let Some(c) = req.chunk.filter(|&c| c >= chunks) {
        return Err(ApiError::BadRequest(format!(
            "chunk {c} is out of range: file {} has {chunks} chunks",
            req.file_id
        )));
    }
    let now = unix_now();
    let record = ReportRecord {
        reporter,
        peer: req.peer,
        file_id: req.file_id,
        kind: req.kind,
        chunk: req.chunk,
        now,
    };
    let new_reporter = state.0.store.record_report(&record).await?;
    let reputation = reputations(&state, &[req.peer], now).await?.of(&req.peer);
    tracing::info!(reporter = %reporter.short(), peer = %req.peer.short(), file = %req.file_id.short(), kind = ?req.kind, chunk = ?req.chunk, score = reputation.score, "peer reported");
    let status = if new_reporter {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(ReportAccepted {
            peer: req.peer,
            new_reporter,
            reputation,
        }),
    ))
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.0.store.ping().await.map_err(ApiError::Unavailable)?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        fingerprint: state.0.fingerprint,
    }))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.0.store.counts(state.live_since(unix_now())).await?;
    let body = state.0.metrics.render(counts, state.0.store.pool_status());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_rules() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(advertised_address(remote, None).unwrap(), remote);
        assert_eq!(advertised_address(remote, Some(other)).unwrap(), other);
        assert!(advertised_address(remote, Some(lo)).is_err());
        assert_eq!(advertised_address(lo, Some(lo)).unwrap(), lo);
        assert!(advertised_address(lo, Some("0.0.0.0".parse().unwrap())).is_err());
        assert!(advertised_address(lo, Some("::".parse().unwrap())).is_err());
        assert!(advertised_address(lo, Some("224.0.0.1".parse().unwrap())).is_err());
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(advertised_address(mapped, None).unwrap(), remote);
        let mapped_lo: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(advertised_address(mapped_lo, Some(lo)).unwrap(), lo);
    }

    #[test]
    fn a_loopback_advertisement_of_a_lan_address_is_kept() {
        // The embedded tracker: the agent reaches it over loopback but names its LAN address.
        let lan: IpAddr = "192.168.1.20".parse().unwrap();
        let lan6: IpAddr = "2001:db8::20".parse().unwrap();
        for source in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let source: IpAddr = source.parse().unwrap();
            assert_eq!(advertised_address(source, Some(lan)).unwrap(), lan);
            assert_eq!(advertised_address(source, Some(lan6)).unwrap(), lan6);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_peers_are_shown_to_remote_askers_at_the_address_they_reached() {
        let reached = ip("192.168.1.10");
        assert_eq!(address_for_asker(ip("127.0.0.1"), reached), reached);
        assert_eq!(address_for_asker(ip("127.0.0.2"), reached), reached);
        assert_eq!(address_for_asker(ip("::1"), reached), reached);
        assert_eq!(address_for_asker(ip("::ffff:127.0.0.1"), reached), reached);
        // Over IPv6 too, and with the asker's address in mapped form (dual-stack socket).
        let reached6 = ip("2001:db8::10");
        assert_eq!(address_for_asker(ip("127.0.0.1"), reached6), reached6);
        assert_eq!(
            address_for_asker(ip("::1"), ip("::ffff:192.168.1.10")),
            reached
        );
    }

    #[test]
    fn unspecified_peers_are_shown_at_the_address_the_asker_reached() {
        assert_eq!(
            address_for_asker(ip("0.0.0.0"), ip("192.168.1.10")),
            ip("192.168.1.10")
        );
        assert_eq!(
            address_for_asker(ip("::"), ip("127.0.0.1")),
            ip("127.0.0.1")
        );
        assert_eq!(
            address_for_asker(ip("::ffff:0.0.0.0"), ip("::ffff:127.0.0.2")),
            ip("127.0.0.2")
        );
    }

    #[test]
    fn loopback_askers_keep_loopback_and_routable_peers_stay_as_stored() {
        for reached in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                address_for_asker(ip("127.0.0.1"), ip(reached)),
                ip("127.0.0.1")
            );
            assert_eq!(address_for_asker(ip("::1"), ip(reached)), ip("::1"));
        }
        for reached in ["127.0.0.1", "192.168.1.10", "2001:db8::10"] {
            assert_eq!(
                address_for_asker(ip("198.51.100.7"), ip(reached)),
                ip("198.51.100.7")
            );
            assert_eq!(
                address_for_asker(ip("::ffff:198.51.100.7"), ip(reached)),
                ip("198.51.100.7")
            );
        }
    }

    #[test]
    fn an_empty_cursor_is_the_first_page() {
        let q = |c: &str| PageQuery {
            cursor: Some(c.into()),
            limit: None,
        };
        assert_eq!(cursor::<FileId>(&q("")).unwrap(), None);
        assert!(cursor::<FileId>(&q("zz")).is_err());
    }

    #[test]
    fn page_limits() {
        let q = |limit| PageQuery {
            cursor: None,
            limit,
        };
        assert_eq!(page_limit(&q(None)).unwrap(), DEFAULT_PAGE_LIMIT);
        assert_eq!(page_limit(&q(Some(1000))).unwrap(), 1000);
        assert!(page_limit(&q(Some(0))).is_err());
        assert!(page_limit(&q(Some(1001))).is_err());
    }

    /// A tree at the protocol's bounds (1 Mi entries with 100-byte paths and 10-digit sizes,
    /// 1 Mi SHA-256 chunks) must fit one `POST /files` body.
    #[test]
    fn the_body_limit_fits_a_tree_at_the_protocol_bounds() {
        use torrentguard_protocol::tree::MAX_ENTRIES;
        let entry = Entry::file("p".repeat(100), 1_000_000_000, 0o644);
        let per_entry = serde_json::to_string(&entry).unwrap().len() + 1;
        let chunk = HashAlgo::Sha256.digest(b"");
        let per_chunk = serde_json::to_string(&chunk).unwrap().len() + 1;
        let chunks = torrentguard_protocol::manifest::MAX_CHUNKS as usize;
        let body = per_entry * MAX_ENTRIES + per_chunk * chunks + 1024;
        assert!(body < MAX_MANIFEST_BODY, "{body} bytes");
    }

    #[test]
    fn token_comparison() {
        let a = sha256(b"secret");
        assert!(constant_time_eq(&a, &sha256(b"secret")));
        assert!(!constant_time_eq(&a, &sha256(b"secreT")));
    }
}
