//! The one gate every UI request passes: the Host must be this listener's loopback address
//! (DNS rebinding), a session is needed for all but `/login`, every write must be same-origin
//! and carry the session's CSRF token, and every response gets the hardening headers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse as _, Response};

use super::UiConnection;
use super::auth::{UiAuth, tokens_match};

/// The header a page sends its CSRF token back in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session a request was let in with, for the handlers behind the gate.
#[derive(Clone)]
pub struct SessionContext {
    pub id: String,
    pub csrf: String,
}

/// The session cookie's name. Cookies are not separated by port, so two daemons on one host
/// would overwrite each other's session under a shared name.
pub fn cookie_name(port: u16) -> String {
    format!("tg_session_{port}")
}

pub async fn guard(State(auth): State<Arc<UiAuth>>, mut req: Request, next: Next) -> Response {
    let mut response = match admit(&auth, &mut req) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    };
    harden(response.headers_mut());
    response
}

/// Why a request is not let through, answered as JSON for the API and writes, else as a page.
struct Refusal {
    status: StatusCode,
    json: bool,
    message: &'static str,
}

impl Refusal {
    fn into_response(self) -> Response {
        if self.json {
            let body = Json(serde_json::json!({ "error": self.message }));
            return (self.status, body).into_response();
        }
        let page = message_page("TorrentGuard", self.message);
        (self.status, Html(page)).into_response()
    }
}

/// Lets the request through (adding its `SessionContext`) or says why not.
fn admit(auth: &UiAuth, req: &mut Request) -> Result<(), Refusal> {
    let wants_json = req.uri().path().starts_with("/api") || !is_read(req.method());
    let local = req
        .extensions()
        .get::<ConnectInfo<UiConnection>>()
        .and_then(|c| c.0.local)
        .ok_or_else(|| {
            // Fail closed: without the listener's address the Host cannot be checked.
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                wants_json,
                "The UI is served without its listener's address; serve it with daemon::ui::serve.",
            )
        })?;
    let host = checked_host(req, local)
        .ok_or_else(|| refuse(StatusCode::MISDIRECTED_REQUEST, wants_json, "This UI answers only at its own loopback address; open the login URL the daemon printed."))?;
    if req.uri().path() == "/login" && is_read(req.method()) {
        return Ok(());
    }
    let session = session_of(auth, req.headers(), local.port())
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, wants_json, SIGN_IN))?;
    if !is_read(req.method()) {
        check_write(req.headers(), &host, &session.csrf)
            .map_err(|why| refuse(StatusCode::FORBIDDEN, true, why))?;
    }
    req.extensions_mut().insert(session);
    Ok(())
}

pub const SIGN_IN: &str = "Not signed in: open the login URL the daemon printed (or run `torrentguard ui` for a new one).";

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The request's Host when it names the listening address itself (`127.0.0.1:PORT`,
/// `[::1]:PORT`) or `localhost:PORT`; a rebound DNS name never passes.
fn checked_host(req: &Request, local: SocketAddr) -> Option<String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(value), None) => value.to_str().ok()?.to_owned(),
        // HTTP/2 carries it in the :authority pseudo-header, i.e. the URI.
        (None, _) => req.uri().authority()?.as_str().to_owned(),
        // Two Host headers: which one a proxy or the browser meant is unknowable.
        (Some(_), Some(_)) => return None,
    };
    let listening = local.to_string();
    let localhost = format!("localhost:{}", local.port());
    (host == listening || host.eq_ignore_ascii_case(&localhost)).then_some(host)
}

fn session_of(auth: &UiAuth, headers: &HeaderMap, port: u16) -> Option<SessionContext> {
    let name = cookie_name(port);
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())?;
    let csrf = auth.session_csrf(&id)?;
    Some(SessionContext { id, csrf })
}

/// A write must come from this UI's own pages: same origin by the browser's own word (Origin,
/// Sec-Fetch-Site; at least one present, none cross) and the session's CSRF token echoed back.
fn check_write(headers: &HeaderMap, host: &str, csrf: &str) -> Result<(), &'static str> {
    let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if origin.is_none() && fetch_site.is_none() {
        return Err(
            "Refused: a write must come from this UI's page (no Origin or Sec-Fetch-Site).",
        );
    }
    if origin.is_some_and(|o| o != format!("http://{host}").as_bytes()) {
        return Err("Refused: a write from another origin.");
    }
    if fetch_site.is_some_and(|s| s != b"same-origin") {
        return Err("Refused: a write from another site.");
    }
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !tokens_match(csrf, presented) {
        return Err("Refused: missing or wrong CSRF token; reload the page.");
    }
    Ok(())
}

fn refuse(status: StatusCode, json: bool, message: &'static str) -> Refusal {
    Refusal {
        status,
        json,
        message,
    }
}

/// A minimal page for refusals and login errors (no script, no style: nothing to load).
pub fn message_page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head><body><h1>{title}</h1><p id=\"message\">{}</p></body></html>",
        escape_html(message)
    )
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Headers every response carries. No CORS header ever leaves: even if a handler added one,
/// it is removed here, so no other origin may read the UI's answers.
fn harden(headers: &mut HeaderMap) {
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}
