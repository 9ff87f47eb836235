use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use sqlx::SqlitePool;
use tower::ServiceExt as _;

use base64::Engine as _;

use super::*;
use crate::app::{AppConfig, router};
use crate::store::SqliteStore;

async fn app(pool: SqlitePool, token: Option<&str>) -> Router {
    let store = Arc::new(SqliteStore::from_pool(pool).await.unwrap());
    let state = AppState::new(
        store,
        AppConfig {
            fingerprint: torrentguard_protocol::Fingerprint::from_bytes([1; 32]),
            peer_ttl: Duration::from_secs(60),
            announce_interval: Duration::from_secs(20),
            swarm_token: token.map(str::to_owned),
            allowlist: vec![],
            reputation: Default::default(),
        },
    );
    router(state)
}

async fn get(app: &Router, path: &str, auth: Option<String>) -> Response {
    let mut req = HttpRequest::get(path);
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let mut req = req.body(Body::empty()).unwrap();
    let local: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
    req.extensions_mut().insert(LocalAddr(local));
    app.clone().oneshot(req).await.unwrap()
}

fn basic(user_and_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_and_password)
    )
}

#[sqlx::test(migrations = false)]
async fn the_page_is_served_with_a_strict_policy_and_no_inline_script(pool: SqlitePool) {
    let app = app(pool, None).await;
    let resp = get(&app, "/", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP);
    assert!(CSP.starts_with("default-src 'self';") && !CSP.contains("unsafe"));
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let html = String::from_utf8(body.to_vec()).unwrap();
    assert!(html.contains("No files registered yet."), "{html}");
    assert!(html.contains("<script src=\"/dashboard/dashboard.js\" defer></script>"));
    // Every script is a file: no inline code, no event-handler attributes, nothing external.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(
        !html.contains(" onload=") && !html.contains(" onclick="),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in [
        "/dashboard/dashboard.js",
        "/dashboard/dashboard.css",
        "/dashboard/icon.svg",
    ] {
        let resp = get(&app, asset, None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    }
}

#[sqlx::test(migrations = false)]
async fn a_private_swarm_asks_for_its_token_as_bearer_or_basic_password(pool: SqlitePool) {
    let app = app(pool, Some("s3cret")).await;
    for path in ["/", "/dashboard/events", "/dashboard/dashboard.js"] {
        let resp = get(&app, path, None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
    }
    for wrong in [basic("admin:guess"), basic("s3cret"), "Bearer nope".into()] {
        let resp = get(&app, "/", Some(wrong.clone())).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    for right in [
        basic("anyone:s3cret"),
        basic(":s3cret"),
        "Bearer s3cret".into(),
    ] {
        let resp = get(&app, "/", Some(right.clone())).await;
        assert_eq!(resp.status(), StatusCode::OK, "{right}");
    }
}

#[sqlx::test(migrations = false)]
async fn unknown_and_malformed_files_are_refused(pool: SqlitePool) {
    let app = app(pool, None).await;
    let unknown = format!("/dashboard/files/{}", "ab".repeat(32));
    assert_eq!(
        get(&app, &unknown, None).await.status(),
        StatusCode::NOT_FOUND
    );
    let bad = "/dashboard/files/%3Cscript%3E";
    assert_eq!(get(&app, bad, None).await.status(), StatusCode::BAD_REQUEST);
    let events = "/dashboard/events?file=zz";
    assert_eq!(
        get(&app, events, None).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn route_rates_come_from_the_previous_sample() {
    let mut before = RequestCounts::new();
    before.insert(("/a".into(), "GET", 200), 10);
    before.insert(("/a".into(), "GET", 404), 2);
    let mut now = before.clone();
    now.insert(("/a".into(), "GET", 200), 30);
    now.insert(("/a".into(), "GET", 404), 6);
    now.insert(("/b".into(), "POST", 500), 1);
    let first = route_rows(&now, None);
    assert_eq!(first.len(), 2);
    assert_eq!(
        (first[0].total, first[0].errors, first[0].per_sec),
        (36, 6, None)
    );
    let rows = route_rows(&now, Some((&before, Duration::from_secs(2))));
    assert_eq!(rows[0].per_sec, Some(12.0));
    assert_eq!(rows[0].errors_per_sec, Some(2.0));
    assert_eq!((rows[1].route.as_str(), rows[1].errors), ("/b", 1));
    assert_eq!(rows[1].per_sec, Some(0.5));
}

#[sqlx::test(migrations = false)]
async fn event_streams_are_bounded_and_free_their_slot_when_closed(pool: SqlitePool) {
    let app = app(pool, None).await;
    let mut open = Vec::new();
    for _ in 0..MAX_EVENT_STREAMS {
        let resp = get(&app, "/dashboard/events", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let ctype = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        open.push(resp);
    }
    let refused = get(&app, "/dashboard/events", None).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "10");
    drop(open.pop());
    let again = get(&app, "/dashboard/events", None).await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[sqlx::test(migrations = false)]
async fn the_first_event_carries_the_overview_fragments(pool: SqlitePool) {
    use futures::StreamExt as _;
    let app = app(pool, None).await;
    let resp = get(&app, "/dashboard/events", None).await;
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = body.next().await.expect("an event").unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("event: snapshot\ndata: {"), "{text}");
    for id in ["summary", "files-body", "peers-body", "requests-body"] {
        assert!(text.contains(&format!("\"{id}\":")), "{id} in {text}");
    }
}
