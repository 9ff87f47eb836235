//! The read-only HTML dashboard at `/`: files, live peers and request figures, rendered on the
//! server and kept live by server-sent events that push re-rendered fragments.
//!
//! It shows nothing the read-only API and `/metrics` do not: the same store calls with the same
//! live-peer cut-off and the same asker-relative addresses, and the request counts `/metrics`
//! serves. With a swarm token it asks for that token as the API does; a browser cannot add a
//! bearer header, so the token is also taken as the password of HTTP Basic authentication
//! (the browser's own prompt; any user name), which the event stream then reuses. The page
//! runs no inline script and loads nothing from elsewhere, which its Content-Security-Policy
//! enforces.

mod render;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use torrentguard_protocol::FileId;
use torrentguard_protocol::api::{ErrorBody, ErrorDetail};

use crate::app::{AppState, LocalAddr, address_for_asker, unix_now};
use crate::error::{ApiError, AppPath, AppQuery};
use crate::metrics::RequestCounts;
use render::{FileRow, RouteRow};

/// Files and peers listed (the first by id, as the API pages them); the API has the rest.
const LISTED: u32 = 200;
/// Peers listed on a file's page.
const FILE_PEERS_LISTED: u32 = 1000;
/// How often the event stream pushes a fresh view.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Event streams open at once. Each runs the overview's queries every [`REFRESH`], so an
/// unbounded number would let anyone who can reach the tracker multiply its database load.
pub const MAX_EVENT_STREAMS: usize = 32;
/// An event stream ends after this long (the browser reconnects at once), so a view left open
/// for days does not pin one connection forever.
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);

const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const ICON: &str = include_str!("dashboard/icon.svg");

/// `default-src 'self'` with nothing inline: the page's script and style are files of this
/// tracker; `frame-ancestors` and `form-action` shut out clickjacking and form posts.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";

/// The dashboard's routes, with its authentication and security headers.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/dashboard/files/{id}", get(file_page))
        .route(
            "/dashboard/events",
            get(events).layer(Extension(Arc::new(Semaphore::new(MAX_EVENT_STREAMS)))),
        )
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/dashboard.css", get(style))
        .route("/dashboard/icon.svg", get(icon))
        .route_layer(middleware::from_fn_with_state(state, require_swarm_token))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The token a request carries: a bearer token, or the password of Basic authentication.
fn presented_token(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

/// The swarm token rule of the API, with the browser's Basic prompt as the way to give it.
async fn require_swarm_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // An open swarm needs nothing (the API's rule), whatever was sent.
    let open = state.swarm_token_matches("").is_none();
    let refusal = match presented_token(&req).map(|t| state.swarm_token_matches(&t)) {
        _ if open => None,
        Some(Some(true)) => None,
        Some(_) => Some("wrong swarm token"),
        None => Some("this swarm's dashboard needs its swarm token (as the password)"),
    };
    let Some(why) = refusal else {
        return next.run(req).await;
    };
    let mut response = ApiError::Unauthorized(why.into()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Basic realm=\"TorrentGuard tracker dashboard\", charset=\"UTF-8\"",
        ),
    );
    response
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn icon() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON)
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// Fragment id → its HTML: what a page is built from and what each event carries.
type Fragments = HashMap<&'static str, String>;

/// Per-route figures since start and, given the previous sample, per second since it.
fn route_rows(now: &RequestCounts, previous: Option<(&RequestCounts, Duration)>) -> Vec<RouteRow> {
    // (route, method) → (requests, of which errors).
    let fold = |counts: &RequestCounts| {
        let mut sums: BTreeMap<(String, &'static str), (u64, u64)> = BTreeMap::new();
        for ((route, method, status), n) in counts {
            let entry = sums.entry((route.clone(), *method)).or_default();
            entry.0 += n;
            if *status >= 400 {
                entry.1 += n;
            }
        }
        sums
    };
    let totals = fold(now);
    let before = previous.map(|(counts, took)| (fold(counts), took.as_secs_f64().max(0.001)));
    totals
        .into_iter()
        .map(|((route, method), (total, errors))| {
            let rates = before.as_ref().map(|(sums, secs)| {
                let (t0, e0) = sums
                    .get(&(route.clone(), method))
                    .copied()
                    .unwrap_or_default();
                (
                    total.saturating_sub(t0) as f64 / secs,
                    errors.saturating_sub(e0) as f64 / secs,
                )
            });
            RouteRow {
                route,
                method,
                total,
                errors,
                per_sec: rates.map(|r| r.0),
                errors_per_sec: rates.map(|r| r.1),
            }
        })
        .collect()
}

/// Completion of each listed file's swarm from the chunks its live peers hold.
async fn file_rows(state: &AppState, live_since: i64) -> Result<(Vec<FileRow>, bool), ApiError> {
    let page = state.store().list_files(None, LISTED, live_since).await?;
    let held: HashMap<FileId, u64> = match (page.items.first(), page.items.last()) {
        (Some(first), Some(last)) => state
            .store()
            .chunks_held(first.file_id, last.file_id, live_since)
            .await?
            .into_iter()
            .collect(),
        _ => HashMap::new(),
    };
    let rows = page
        .items
        .into_iter()
        .map(|f| {
            let peers = u64::from(f.seeders) + u64::from(f.leechers);
            let possible = peers * u64::from(f.chunk_count);
            let completion = match (peers, possible) {
                (0, _) => None,
                // A file of no chunks: every peer holds all of it.
                (_, 0) => Some(1.0),
                _ => Some(held.get(&f.file_id).copied().unwrap_or(0) as f64 / possible as f64),
            };
            FileRow {
                id: f.file_id,
                name: f.name,
                size: f.size,
                chunks: f.chunk_count,
                seeders: f.seeders,
                leechers: f.leechers,
                completion,
            }
        })
        .collect();
    Ok((rows, page.next.is_some()))
}

/// The overview's fragments. `local` is the address the viewer reached the tracker by (peer
/// addresses are shown relative to it, as the API does).
async fn overview(
    state: &AppState,
    local: IpAddr,
    requests: Vec<RouteRow>,
) -> Result<Fragments, ApiError> {
    let now = unix_now();
    let live_since = state.live_since(now);
    let (files, files_more) = file_rows(state, live_since).await?;
    let mut peers = state.store().list_peers(None, LISTED, live_since).await?;
    let fingerprints: Vec<_> = peers.items.iter().map(|p| p.fingerprint).collect();
    let scores = crate::app::reputations(state, &fingerprints, now).await?;
    for p in &mut peers.items {
        p.address = address_for_asker(p.address, local);
        p.reputation = Some(scores.of(&p.fingerprint));
    }
    let peers_more = peers.next.is_some();
    let names: HashMap<FileId, &str> = files.iter().map(|f| (f.id, f.name.as_str())).collect();
    let summary = render::overview_summary(files.len(), files_more, peers.items.len(), peers_more);
    Ok(HashMap::from([
        ("summary", render::escape(&summary)),
        ("files-body", render::file_rows(&files, files_more)),
        (
            "peers-body",
            render::peer_rows(&peers.items, peers_more, now, |id| {
                names.get(&id).map(|n| n.to_string())
            }),
        ),
        ("requests-body", render::request_rows(&requests)),
    ]))
}

async fn overview_page(
    State(state): State<AppState>,
    LocalAddr(local): LocalAddr,
) -> Result<Html<String>, ApiError> {
    let requests = route_rows(&state.metrics().request_counts(), None);
    let f = overview(&state, local.ip(), requests).await?;
    let body = render::overview_body(
        &f["summary"],
        &f["files-body"],
        &f["peers-body"],
        &f["requests-body"],
    );
    Ok(Html(render::page(
        "Dashboard",
        state.fingerprint(),
        "/dashboard/events",
        &body,
    )))
}

/// One file's fragments and its name, or `None` for an unknown id.
async fn file_view(
    state: &AppState,
    id: FileId,
    local: IpAddr,
) -> Result<Option<(String, Fragments)>, ApiError> {
    let Some(head) = state.store().manifest_head(id, 0).await? else {
        return Ok(None);
    };
    let now = unix_now();
    let live_since = state.live_since(now);
    let peers = state
        .store()
        .file_peers(id, live_since, None, FILE_PEERS_LISTED)
        .await?;
    let mut peers = crate::app::with_reputations(state, peers, now).await?;
    for p in &mut peers {
        p.address = address_for_asker(p.address, local);
    }
    let chunks = head.manifest.chunk_count();
    let seeders = peers.iter().filter(|p| p.complete).count();
    let held: u64 = peers.iter().map(|p| u64::from(p.have)).sum();
    let possible = peers.len() as u64 * u64::from(chunks);
    let completion = match (peers.len(), possible) {
        (0, _) => None,
        (_, 0) => Some(1.0),
        _ => Some(held as f64 / possible as f64),
    };
    let row = FileRow {
        id,
        name: head.manifest.name.clone(),
        size: head.manifest.size,
        chunks,
        seeders: u32::try_from(seeders).unwrap_or(u32::MAX),
        leechers: u32::try_from(peers.len() - seeders).unwrap_or(u32::MAX),
        completion,
    };
    Ok(Some((
        row.name.clone(),
        HashMap::from([
            ("file-summary", render::file_summary(&row)),
            (
                "file-peers-body",
                render::file_peer_rows(&peers, chunks, now),
            ),
        ]),
    )))
}

fn parse_file_id(s: &str) -> Result<FileId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest("a file id is 64 lowercase hex digits".into()))
}

async fn file_page(
    State(state): State<AppState>,
    LocalAddr(local): LocalAddr,
    AppPath(id): AppPath<String>,
) -> Result<Html<String>, ApiError> {
    let id = parse_file_id(&id)?;
    let Some((name, f)) = file_view(&state, id, local.ip()).await? else {
        return Err(ApiError::NotFound(format!("no file {id}")));
    };
    let body = render::file_body(&name, &f["file-summary"], &f["file-peers-body"]);
    Ok(Html(render::page(
        &name,
        state.fingerprint(),
        &format!("/dashboard/events?file={id}"),
        &body,
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    file: Option<String>,
}

/// What one event stream remembers between events.
struct StreamState {
    app: AppState,
    local: IpAddr,
    file: Option<FileId>,
    previous: Option<(RequestCounts, Instant)>,
    ends: Instant,
    /// Held for the stream's life: one of [`MAX_EVENT_STREAMS`].
    _slot: OwnedSemaphorePermit,
}

impl StreamState {
    /// The next event, after [`REFRESH`] unless it is the first; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Event> {
        if self.previous.is_some() {
            tokio::select! {
                _ = self.app.closing().cancelled() => return None,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
        if Instant::now() >= self.ends {
            return None;
        }
        let fragments = match self.file {
            Some(id) => file_view(&self.app, id, self.local)
                .await
                .map(|v| v.map(|(_, f)| f).unwrap_or_default()),
            None => {
                let counts = self.app.metrics().request_counts();
                let previous = self.previous.as_ref().map(|(c, at)| (c, at.elapsed()));
                let rows = route_rows(&counts, previous);
                self.previous = Some((counts, Instant::now()));
                overview(&self.app, self.local, rows).await
            }
        };
        // The file view keeps no counts, but marks that the first event went out.
        if self.previous.is_none() {
            self.previous = Some((RequestCounts::new(), Instant::now()));
        }
        match fragments.and_then(|f| {
            Event::default()
                .event("snapshot")
                .json_data(f)
                .map_err(ApiError::internal)
        }) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard update failed");
                // The detail stays in the log, as for the API's internal errors.
                let text = "the tracker could not build this view; its log says why";
                Some(Event::default().event("problem").data(text))
            }
        }
    }
}

/// 503 with `Retry-After` when every event stream slot is taken; the browser's `EventSource`
/// retries by itself.
fn streams_busy() -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "unavailable".into(),
            message: format!("{MAX_EVENT_STREAMS} dashboard event streams are open already"),
        },
    };
    let retry = HeaderValue::from_static("10");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, retry)],
        Json(body),
    )
        .into_response()
}

async fn events(
    State(state): State<AppState>,
    Extension(slots): Extension<Arc<Semaphore>>,
    LocalAddr(local): LocalAddr,
    AppQuery(q): AppQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    let file = q
        .file
        .as_deref()
        .map(parse_file_id)
        .transpose()
        .map_err(IntoResponse::into_response)?;
    let slot = slots.try_acquire_owned().map_err(|_| streams_busy())?;
    let start = StreamState {
        app: state,
        local: local.ip(),
        file,
        previous: None,
        ends: Instant::now() + STREAM_LIFETIME,
        _slot: slot,
    };
    let stream = futures::stream::unfold(start, |mut s| async move {
        let event = s.next_event().await?;
        Some((Ok(event), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests;
