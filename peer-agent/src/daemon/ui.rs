//! The web UI: a page, one hand-written script and a stylesheet, embedded in the binary, served
//! on loopback beside the daemon's API, which it reaches at `/api` behind its own gate
//! (`guard`): one-time login URL → session cookie → CSRF token on every write.

mod auth;
mod guard;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Extension, Router, middleware};
use serde::Deserialize;
use tokio::net::TcpListener;

pub use auth::{LOGIN_TOKEN_TTL, UiAuth};
pub use guard::{CSRF_HEADER, SIGN_IN, cookie_name};
use guard::{SessionContext, message_page};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
const FAVICON_SVG: &str = include_str!("ui/favicon.svg");
/// Where `index.html` takes its session's CSRF token.
const CSRF_PLACEHOLDER: &str = "{{csrf_token}}";

/// Why the UI could not be served.
#[derive(Debug, thiserror::Error)]
pub enum UiServeError {
    #[error("the web UI listens on loopback only, not on {0} (use e.g. --ui 127.0.0.1:8380)")]
    NotLoopback(SocketAddr),
    #[error("serving the web UI: {0}")]
    Io(#[from] std::io::Error),
}

/// What the gate needs to know of each connection: the address it was accepted on, which the
/// Host header must name. `None` if the socket could not say, and then every request is refused.
#[derive(Clone, Copy, Debug)]
pub struct UiConnection {
    pub local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, TcpListener>> for UiConnection {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        UiConnection {
            local: stream.io().local_addr().ok(),
        }
    }
}

/// The whole UI app: pages, assets, login, and `api` (whose routes start with `/api`, as the
/// contract has them) behind the session and CSRF gate.
pub fn router(api: Router, auth: Arc<UiAuth>) -> Router {
    let pages = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/favicon.svg", get(favicon))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .with_state(auth.clone());
    pages
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(auth, guard::guard))
}

/// Serves `app` (from `router`) on `listener` until `shutdown` completes. Refuses a
/// non-loopback listener: the UI is for the machine's own user.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UiServeError> {
    ensure_loopback(listener.local_addr()?)?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<UiConnection>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

/// The UI holds a session that can share any file of the host: it is never offered off-host.
pub fn ensure_loopback(addr: SocketAddr) -> Result<(), UiServeError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(UiServeError::NotLoopback(addr))
    }
}

async fn index(Extension(session): Extension<SessionContext>) -> Html<String> {
    Html(INDEX_HTML.replace(CSRF_PLACEHOLDER, &session.csrf))
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], FAVICON_SVG).into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// Spends a one-time token: a good one sets the session cookie and goes to the UI, leaving the
/// token out of the address bar.
async fn login(
    State(auth): State<Arc<UiAuth>>,
    ConnectInfo(conn): ConnectInfo<UiConnection>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let session = query.token.as_deref().and_then(|t| auth.redeem(t));
    let (Some(session), Some(local)) = (session, conn.local) else {
        let page = message_page(
            "TorrentGuard: login link not valid",
            "This login link is unknown, expired (links last 10 minutes) or already used. \
             Open the newest login URL the daemon printed, or run `torrentguard ui` for a new one.",
        );
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    };
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/",
        cookie_name(local.port()),
        session.id
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// Ends the session and clears its cookie.
async fn logout(
    State(auth): State<Arc<UiAuth>>,
    ConnectInfo(conn): ConnectInfo<UiConnection>,
    Extension(session): Extension<SessionContext>,
) -> Response {
    auth.close_session(&session.id);
    let port = conn.local.map_or(0, |a| a.port());
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        cookie_name(port)
    );
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "No such page or endpoint." })),
    )
        .into_response()
}
