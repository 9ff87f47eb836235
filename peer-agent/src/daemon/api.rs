//! The control API: HTTP/JSON over the daemon's Unix socket (and loopback TCP with a bearer
//! token, and the web UI's origin), described by an OpenAPI document generated from the same
//! types (`GET /api/openapi.json`). Every error is a 4xx/5xx with `{"error": "…"}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::OpenApi;

use super::model::{
    AddDownload, AddShare, ErrorView, Kind, PeerState, PeerView, Reputation, Stats, Status,
    TransferView,
};
use super::{Daemon, DaemonError, parse_id};

type D = State<Arc<Daemon>>;

/// Every route, under `/api`, with `daemon` as state.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/api/stats", get(stats))
        .route("/api/transfers", get(list_transfers))
        .route("/api/shares", get(list_shares).post(add_share))
        .route("/api/downloads", get(list_downloads).post(add_download))
        .route("/api/{kinds}/{id}", get(one).delete(remove))
        .route("/api/{kinds}/{id}/pause", post(pause))
        .route("/api/{kinds}/{id}/resume", post(resume))
        .route("/api/downloads/{id}/peers", get(peers))
        .route("/api/events", get(events))
        .route("/api/ui/login", post(ui_login))
        .route("/api/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(daemon)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "TorrentGuard daemon control API",
        description = "Drives a running `torrentguard daemon`: shares, downloads, their peers, progress events. Served on the daemon's Unix socket (mode 0600), optionally on loopback TCP with a bearer token, and to the web UI."
    ),
    paths(
        stats,
        list_transfers,
        list_shares,
        add_share,
        list_downloads,
        add_download,
        one,
        remove,
        pause,
        resume,
        peers,
        events,
        ui_login,
        openapi
    ),
    components(schemas(
        TransferView,
        PeerView,
        PeerState,
        Reputation,
        Stats,
        Status,
        Kind,
        AddShare,
        AddDownload,
        ErrorView,
        UiLogin
    ))
)]
pub struct ApiDoc;

/// An error answer.
pub struct ApiError(StatusCode, String);

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let status = match &e {
            DaemonError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Tracker(_) => StatusCode::BAD_GATEWAY,
            DaemonError::Db(_) | DaemonError::Listen { .. } => {
                tracing::error!(error = %e, "control request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorView { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// `shares` or `downloads` in a path, and the file id after it.
fn key_of(kinds: &str, id: &str) -> Result<(Kind, torrentguard_protocol::FileId), ApiError> {
    let kind = match kinds {
        "shares" => Kind::Share,
        "downloads" => Kind::Download,
        _ => return Err(not_found_error()),
    };
    Ok((kind, parse_id(id)?))
}

fn not_found_error() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /api/openapi.json".into(),
    )
}

async fn not_found() -> ApiError {
    not_found_error()
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here; see /api/openapi.json".into(),
    )
}

/// The daemon as a whole: identity, peer port, rates, limits, counts.
#[utoipa::path(get, path = "/api/stats", responses((status = 200, body = Stats)))]
async fn stats(State(d): D) -> Json<Stats> {
    Json(d.stats())
}

/// Every share and download, newest first.
#[utoipa::path(get, path = "/api/transfers", responses((status = 200, body = Vec<TransferView>)))]
async fn list_transfers(State(d): D) -> Json<Vec<TransferView>> {
    Json(d.list(None))
}

/// Every share.
#[utoipa::path(get, path = "/api/shares", responses((status = 200, body = Vec<TransferView>)))]
async fn list_shares(State(d): D) -> Json<Vec<TransferView>> {
    Json(d.list(Some(Kind::Share)))
}

/// Shares a file or folder on the daemon's host: answers once it is hashed, registered and
/// served (hashing progress goes out on `/api/events`).
#[utoipa::path(post, path = "/api/shares", request_body = AddShare, responses(
    (status = 201, body = TransferView),
    (status = 400, body = ErrorView, description = "bad body, or a path that cannot be shared"),
    (status = 409, body = ErrorView, description = "already shared"),
    (status = 502, body = ErrorView, description = "the tracker cannot be reached"),
))]
async fn add_share(
    State(d): D,
    body: Result<Json<AddShare>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<TransferView>)> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(d.add_share(req).await?)))
}

/// Every download.
#[utoipa::path(get, path = "/api/downloads", responses((status = 200, body = Vec<TransferView>)))]
async fn list_downloads(State(d): D) -> Json<Vec<TransferView>> {
    Json(d.list(Some(Kind::Download)))
}

/// Adds a download by share code (or file id and tracker); it starts at once or queues.
#[utoipa::path(post, path = "/api/downloads", request_body = AddDownload, responses(
    (status = 201, body = TransferView),
    (status = 400, body = ErrorView, description = "bad body, code or id"),
    (status = 409, body = ErrorView, description = "already a download here"),
    (status = 502, body = ErrorView, description = "the tracker cannot be reached or does not know the file"),
))]
async fn add_download(
    State(d): D,
    body: Result<Json<AddDownload>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<TransferView>)> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(d.add_download(req).await?)))
}

/// One share or download.
#[utoipa::path(get, path = "/api/{kinds}/{id}", params(
    ("kinds" = String, Path, description = "`shares` or `downloads`"),
    ("id" = String, Path, description = "the file id"),
), responses((status = 200, body = TransferView), (status = 404, body = ErrorView)))]
async fn one(
    State(d): D,
    Path((kinds, id)): Path<(String, String)>,
) -> ApiResult<Json<TransferView>> {
    Ok(Json(d.view(key_of(&kinds, &id)?)?))
}

/// Stops and forgets a share or download; files on disk stay.
#[utoipa::path(delete, path = "/api/{kinds}/{id}", params(
    ("kinds" = String, Path, description = "`shares` or `downloads`"),
    ("id" = String, Path, description = "the file id"),
), responses((status = 204), (status = 404, body = ErrorView)))]
async fn remove(State(d): D, Path((kinds, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    d.remove(key_of(&kinds, &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a share (no longer served or announced) or a download (its state is kept).
#[utoipa::path(post, path = "/api/{kinds}/{id}/pause", params(
    ("kinds" = String, Path, description = "`shares` or `downloads`"),
    ("id" = String, Path, description = "the file id"),
), responses((status = 200, body = TransferView), (status = 404, body = ErrorView)))]
async fn pause(
    State(d): D,
    Path((kinds, id)): Path<(String, String)>,
) -> ApiResult<Json<TransferView>> {
    Ok(Json(d.pause(key_of(&kinds, &id)?).await?))
}

/// Resumes a paused or failed share or download.
#[utoipa::path(post, path = "/api/{kinds}/{id}/resume", params(
    ("kinds" = String, Path, description = "`shares` or `downloads`"),
    ("id" = String, Path, description = "the file id"),
), responses((status = 200, body = TransferView), (status = 404, body = ErrorView)))]
async fn resume(
    State(d): D,
    Path((kinds, id)): Path<(String, String)>,
) -> ApiResult<Json<TransferView>> {
    Ok(Json(d.resume(key_of(&kinds, &id)?).await?))
}

/// The peers of a download, with their rate now and their record on this daemon.
#[utoipa::path(get, path = "/api/downloads/{id}/peers", params(
    ("id" = String, Path, description = "the file id"),
), responses((status = 200, body = Vec<PeerView>), (status = 404, body = ErrorView)))]
async fn peers(State(d): D, Path(id): Path<String>) -> ApiResult<Json<Vec<PeerView>>> {
    Ok(Json(d.peers((Kind::Download, parse_id(&id)?)).await?))
}

/// Server-sent events: every event of every transfer, each `data:` line one JSON object as
/// `--json` prints it (hashing, seeding, started, progress, completed, peer_connected, …).
#[utoipa::path(get, path = "/api/events", responses((status = 200, content_type = "text/event-stream", description = "one JSON event per message")))]
async fn events(State(d): D) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(d.subscribe()).filter_map(|r| match r {
        Ok(line) => Some(Ok(SseEvent::default().data(&*line))),
        // A reader too slow for the stream misses some; the next progress event catches up.
        Err(_) => Some(Ok(SseEvent::default().comment("lagged"))),
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A fresh one-time login URL of the web UI.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UiLogin {
    pub url: String,
}

/// Mints a fresh one-time login URL of the web UI (`torrentguard ui` asks here).
#[utoipa::path(post, path = "/api/ui/login", responses(
    (status = 200, body = UiLogin),
    (status = 409, body = ErrorView, description = "the daemon serves no web UI"),
))]
async fn ui_login(State(d): D) -> ApiResult<Json<UiLogin>> {
    Ok(Json(UiLogin {
        url: d.ui_login_url()?,
    }))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "the OpenAPI description")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
