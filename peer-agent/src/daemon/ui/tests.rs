//! The gate and the pages, driven with `oneshot` (the connection's address is supplied as the
//! server would), plus one run over a real loopback socket.

use std::net::SocketAddr;

use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;

/// Only a value carried in the request, as the server would carry it; no socket is bound.
const PORT: u16 = 38111;

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}

fn fake_api() -> Router {
    Router::new()
        .route(
            "/api/stats",
            get(|| async { Json(json!({"version": "0.1.0"})) }),
        )
        .route(
            "/api/downloads",
            post(|Json(body): Json<Value>| async move { (StatusCode::CREATED, Json(body)) }),
        )
        .route(
            "/api/leaky",
            get(|| async { ([("access-control-allow-origin", "*")], "open") }),
        )
}

fn app() -> (Router, Arc<UiAuth>) {
    let auth = UiAuth::new();
    (router(fake_api(), auth.clone()), auth)
}

fn request(method: Method, path: &str) -> axum::http::request::Builder {
    request_at(&local().to_string(), method, path)
}

fn request_at(host: &str, method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .extension(ConnectInfo(UiConnection {
            local: Some(local()),
        }))
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone()
        .oneshot(req)
        .await
        .expect("the router is infallible")
}

async fn body_text(response: Response) -> String {
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
}

/// Logs in through `/login` and returns the `Cookie` header value and the page's CSRF token.
async fn sign_in(app: &Router, auth: &UiAuth) -> (String, String) {
    let url = auth.login_url(&format!("http://{}", local()));
    let path = url.trim_start_matches(&format!("http://{}", local()));
    let response = send(app, request(Method::GET, path).body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = send(
        app,
        request(Method::GET, "/")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = body_text(page).await;
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_owned();
    (cookie, csrf)
}

fn write(path: &str, cookie: &str) -> axum::http::request::Builder {
    request(Method::POST, path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/json")
}

const BODY: &str = r#"{"code":"tg1:abc"}"#;

#[tokio::test]
async fn a_valid_login_token_sets_a_strict_http_only_cookie_and_redirects_home() {
    let (app, auth) = app();
    let url = auth.login_url(&format!("http://{}", local()));
    let path = url.trim_start_matches(&format!("http://{}", local()));
    let response = send(
        &app,
        request(Method::GET, path).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/");
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("tg_session_{PORT}=")),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    // Single use: the same URL again opens nothing.
    let again = send(
        &app,
        request(Method::GET, path).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    assert!(again.headers().get(header::SET_COOKIE).is_none());
    assert!(body_text(again).await.contains("already used"));
}

#[tokio::test]
async fn a_wrong_expired_or_missing_login_token_is_refused() {
    let auth = UiAuth::with_token_ttl(std::time::Duration::ZERO);
    let app = router(fake_api(), auth.clone());
    let expired = auth.login_url("");
    let bad = format!("/login?token={}", "0".repeat(64));
    for path in [
        expired.as_str(),
        bad.as_str(),
        "/login",
        "/login?token=short",
    ] {
        let response = send(
            &app,
            request(Method::GET, path).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            response.headers().get(header::SET_COOKIE).is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn without_a_session_pages_say_how_to_sign_in_and_the_api_answers_401_json() {
    let (app, _auth) = app();
    for path in ["/", "/app.js", "/style.css"] {
        let response = send(
            &app,
            request(Method::GET, path).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let page = body_text(response).await;
        assert!(
            page.contains("open the login URL the daemon printed"),
            "{page}"
        );
    }
    let forged = request(Method::GET, "/api/stats")
        .header(
            header::COOKIE,
            format!("tg_session_{PORT}={}", "a".repeat(64)),
        )
        .body(Body::empty())
        .unwrap();
    for req in [
        request(Method::GET, "/api/stats")
            .body(Body::empty())
            .unwrap(),
        forged,
    ] {
        let response = send(&app, req).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("login URL"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_session_reaches_the_pages_assets_and_api() {
    let (app, auth) = app();
    let (cookie, csrf) = sign_in(&app, &auth).await;
    assert_eq!(csrf.len(), 64);
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let req = request(Method::GET, path).header(header::COOKIE, &cookie);
        let response = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    let req = request(Method::GET, "/api/stats").header(header::COOKIE, &cookie);
    let response = send(&app, req.body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, r#"{"version":"0.1.0"}"#);
}

#[tokio::test]
async fn a_same_origin_write_with_the_csrf_token_passes() {
    let (app, auth) = app();
    let (cookie, csrf) = sign_in(&app, &auth).await;
    let origin = format!("http://{}", local());
    let with_origin = write("/api/downloads", &cookie)
        .header(header::ORIGIN, &origin)
        .header(CSRF_HEADER, &csrf);
    let with_fetch_site = write("/api/downloads", &cookie)
        .header("sec-fetch-site", "same-origin")
        .header(CSRF_HEADER, &csrf);
    for req in [with_origin, with_fetch_site] {
        let response = send(&app, req.body(Body::from(BODY)).unwrap()).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(body_text(response).await, BODY);
    }
}

#[tokio::test]
async fn writes_without_the_csrf_token_or_from_another_origin_are_refused() {
    let (app, auth) = app();
    let (cookie, csrf) = sign_in(&app, &auth).await;
    let origin = format!("http://{}", local());
    let refused = [
        (
            "no CSRF token",
            write("/api/downloads", &cookie).header(header::ORIGIN, &origin),
        ),
        (
            "wrong CSRF token",
            write("/api/downloads", &cookie)
                .header(header::ORIGIN, &origin)
                .header(CSRF_HEADER, "0".repeat(64)),
        ),
        (
            "cross origin",
            write("/api/downloads", &cookie)
                .header(header::ORIGIN, "http://evil.example")
                .header(CSRF_HEADER, &csrf),
        ),
        (
            "cross site",
            write("/api/downloads", &cookie)
                .header(header::ORIGIN, &origin)
                .header("sec-fetch-site", "cross-site")
                .header(CSRF_HEADER, &csrf),
        ),
        (
            "neither Origin nor Sec-Fetch-Site",
            write("/api/downloads", &cookie).header(CSRF_HEADER, &csrf),
        ),
    ];
    for (why, req) in refused {
        let response = send(&app, req.body(Body::from(BODY)).unwrap()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{why}");
        let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert!(body["error"].is_string(), "{why}: {body}");
    }
    // Every write method is checked, not only POST.
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let req = request(method.clone(), "/api/downloads/ab").header(header::COOKIE, &cookie);
        let response = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method}");
    }
}

#[tokio::test]
async fn a_host_other_than_the_listening_loopback_address_is_refused() {
    let (app, auth) = app();
    let url = auth.login_url(&format!("http://{}", local()));
    let path = url
        .trim_start_matches(&format!("http://{}", local()))
        .to_owned();
    for host in [
        "evil.example",
        &format!("evil.example:{PORT}"),
        "127.0.0.1:1",
        "[::1]:38111",
    ] {
        let req = request_at(host, Method::GET, &path);
        let response = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(
            response.headers().get(header::SET_COOKIE).is_none(),
            "{host}"
        );
    }
    // A second Host header, whichever comes first, is ambiguous: refused.
    let twice = request(Method::GET, &path).header(header::HOST, "evil.example");
    let response = send(&app, twice.body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    // `localhost:PORT` is this listener too; the token was not spent by the refusals above.
    let req = request_at(&format!("localhost:{PORT}"), Method::GET, &path);
    let response = send(&app, req.body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn without_the_listeners_address_every_request_is_refused() {
    let (app, auth) = app();
    let url = auth.login_url(&format!("http://{}", local()));
    let path = url.trim_start_matches(&format!("http://{}", local()));
    let req = Request::get(path).header(header::HOST, local().to_string());
    let response = send(&app, req.body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn every_response_is_hardened_and_never_carries_cors_headers() {
    let (app, auth) = app();
    let (cookie, _) = sign_in(&app, &auth).await;
    let requests = [
        request(Method::GET, "/").body(Body::empty()).unwrap(),
        request(Method::GET, "/")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
        request(Method::GET, "/api/leaky")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
        request(Method::OPTIONS, "/api/downloads")
            .header(header::ORIGIN, "http://evil.example")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap(),
        request(Method::GET, "/nowhere")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    ];
    for req in requests {
        let path = req.uri().to_string();
        let response = send(&app, req).await;
        let headers = response.headers();
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{path}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        let cors: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{path}: {cors:?}");
    }
}

#[tokio::test]
async fn the_page_has_no_inline_script_and_loads_only_its_own_assets() {
    let (app, auth) = app();
    let (cookie, _) = sign_in(&app, &auth).await;
    let req = request(Method::GET, "/").header(header::COOKIE, &cookie);
    let html = body_text(send(&app, req.body(Body::empty()).unwrap()).await).await;
    assert!(!html.contains(CSRF_PLACEHOLDER));
    assert!(html.contains(r#"<meta name="viewport""#));
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
    for external in ["http://", "https://", "//fonts", "@import"] {
        assert!(!html.contains(external), "{external}");
        assert!(!STYLE_CSS.contains(external), "{external}");
    }
    assert!(
        !APP_JS.contains("innerHTML"),
        "API values must reach the page as text"
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let (app, auth) = app();
    let (cookie, csrf) = sign_in(&app, &auth).await;
    let req = write("/logout", &cookie)
        .header("sec-fetch-site", "same-origin")
        .header(CSRF_HEADER, &csrf);
    let response = send(&app, req.body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let req = request(Method::GET, "/api/stats").header(header::COOKIE, &cookie);
    let response = send(&app, req.body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn only_loopback_addresses_may_serve_the_ui() {
    for ok in ["127.0.0.1:8380", "[::1]:8380"] {
        assert!(ensure_loopback(ok.parse().unwrap()).is_ok(), "{ok}");
    }
    for bad in ["0.0.0.0:8380", "192.0.2.1:8380", "[::]:8380"] {
        let err = ensure_loopback(bad.parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{bad}: {err}");
    }
}

/// Over a real socket: `serve` hands the gate the address each connection was accepted on.
#[tokio::test]
async fn served_on_loopback_the_gate_knows_its_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = UiAuth::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router(fake_api(), auth.clone()), async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let deadline = std::time::Duration::from_secs(30);
    let login = auth.login_url(&format!("http://{addr}"));
    let response = tokio::time::timeout(deadline, client.get(&login).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let rebound = client
        .get(format!("http://{addr}/"))
        .header(header::HOST, format!("rebound.example:{}", addr.port()));
    let response = tokio::time::timeout(deadline, rebound.send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    stop.send(()).unwrap();
    tokio::time::timeout(deadline, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
