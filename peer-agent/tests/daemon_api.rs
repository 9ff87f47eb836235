//! The daemon's control API, driven in-process through its router (no socket), against a real
//! tracker and real daemons on loopback: every endpoint, good input and bad.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use torrentguard_agent::TrackerTarget;
use torrentguard_agent::daemon::{Daemon, DaemonConfig, SeedPolicy, api};
use torrentguard_protocol::HashAlgo;
use torrentguard_tracker::{RunningTracker, TrackerConfig};
use torrentguard_trust::Identity;
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_secs(60);

struct World {
    tracker: RunningTracker,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            TrackerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("tracker"));
        cfg.announce_interval = Duration::from_secs(1);
        let tracker = torrentguard_tracker::start(cfg).await.unwrap();
        World { tracker, dir }
    }

    fn config(&self, name: &str, with_tracker: bool) -> DaemonConfig {
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        DaemonConfig {
            tracker: with_tracker.then(|| TrackerTarget {
                url: self.tracker.url(),
                fingerprint: Some(self.tracker.fingerprint),
                token: None,
            }),
            public_tracker_url: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            peer_limits: Default::default(),
            upload_limit: 0,
            download_limit: 0,
            compression: Default::default(),
            max_active_downloads: 4,
            seed: SeedPolicy::default(),
            download_dir: data_dir.join("downloads"),
            chunk_size: 16384,
            hash: HashAlgo::Sha256,
            data_dir,
        }
    }

    async fn daemon(&self, config: DaemonConfig) -> (Arc<Daemon>, Router) {
        let id = Arc::new(Identity::generate("daemon-test").unwrap());
        let d = Daemon::start(id, config).await.unwrap();
        let app = api::router(d.clone());
        (d, app)
    }

    fn write(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let p = self.dir.path().join(name);
        let data: Vec<u8> = (0..len as u64)
            .map(|i| ((i + seed * 1_000_003).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    }
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    (status, v)
}

async fn raw(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls `uri` until `pred` holds, failing after [`DEADLINE`] with the last answer.
async fn until(app: &Router, uri: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, v) = call(app, Method::GET, uri, None).await;
        if pred(&v) {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "{uri} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_error(v: &Value) -> bool {
    v["error"].as_str().is_some_and(|s| !s.is_empty())
}

async fn share(app: &Router, path: &Path) -> Value {
    let (s, v) = call(
        app,
        Method::POST,
        "/api/shares",
        Some(json!({"path": path})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

#[tokio::test]
async fn a_share_code_added_on_one_daemon_is_fetched_from_another() {
    let w = World::new().await;
    let (_a, seeder) = w.daemon(w.config("a", true)).await;
    let (b, getter) = w.daemon(w.config("b", false)).await;
    let file = w.write("data.bin", 300_000, 1);
    let shared = share(&seeder, &file).await;
    assert_eq!(shared["status"], "seeding");
    assert_eq!(shared["kind"], "share");
    let id = shared["id"].as_str().unwrap().to_string();
    let code = shared["share_code"].as_str().unwrap().to_string();
    assert!(code.starts_with("tg1:"), "{code}");

    let mut events = b.subscribe();
    let out = w.dir.path().join("out");
    let body = json!({"code": code, "out_dir": out});
    let (s, v) = call(&getter, Method::POST, "/api/downloads", Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["size"].as_u64()),
        (Some("data.bin"), Some(300_000))
    );
    let (s, v) = call(&getter, Method::POST, "/api/downloads", Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "the same download twice: {v}");
    assert!(is_error(&v));

    let uri = format!("/api/downloads/{id}");
    let done = until(&getter, &uri, |v| v["status"] == "seeding").await;
    assert_eq!(done["percent"], 100.0);
    assert_eq!(
        std::fs::read(out.join("data.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert_eq!(done["path"], out.join("data.bin").display().to_string());

    // The same events as `--json`, for every transfer.
    let mut kinds = Vec::new();
    while let Ok(line) = events.try_recv() {
        let e: Value = serde_json::from_str(&line).unwrap();
        kinds.push(e["event"].as_str().unwrap().to_string());
    }
    for k in ["started", "peer_connected", "completed", "seeding"] {
        assert!(kinds.iter().any(|e| e == k), "no {k} event in {kinds:?}");
    }

    let (s, peers) = call(&getter, Method::GET, &format!("{uri}/peers"), None).await;
    assert_eq!(s, StatusCode::OK);
    let fp = _a.identity.fingerprint.to_string();
    let p = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["fingerprint"] == fp.as_str());
    let p = p.unwrap_or_else(|| panic!("the seeder is not among {peers}"));
    assert_eq!(p["reputation"]["bans"], 0);

    let (_, list) = call(&getter, Method::GET, "/api/transfers", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, stats) = call(&getter, Method::GET, "/api/stats", None).await;
    assert_eq!(stats["fingerprint"], b.identity.fingerprint.to_string());
    assert_eq!(stats["peer_port"], b.seeder.local_addr().port());
    let (_, stats) = call(&seeder, Method::GET, "/api/stats", None).await;
    assert_eq!(stats["shares_seeding"], 1);

    // One file is served from one place on a daemon: no download of its own share, and no
    // share of a file it downloads.
    let own = json!({"code": shared["share_code"]});
    let (s, v) = call(&seeder, Method::POST, "/api/downloads", Some(own)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let copy = json!({"path": out.join("data.bin")});
    let (s, v) = call(&getter, Method::POST, "/api/shares", Some(copy)).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "this daemon has no tracker: {v}"
    );
}

#[tokio::test]
async fn pause_resume_and_remove_a_share() {
    let w = World::new().await;
    let (a, app) = w.daemon(w.config("a", true)).await;
    let file = w.write("s.bin", 50_000, 2);
    let id = share(&app, &file).await["id"].as_str().unwrap().to_string();
    let fid = id.parse().unwrap();
    assert!(a.seeder.get(&fid).is_some());

    let (s, v) = call(&app, Method::POST, &format!("/api/shares/{id}/pause"), None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paused")));
    assert!(a.seeder.get(&fid).is_none(), "a paused share is not served");

    let (s, v) = call(
        &app,
        Method::POST,
        &format!("/api/shares/{id}/resume"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until(&app, &format!("/api/shares/{id}"), |v| {
        v["status"] == "seeding"
    })
    .await;
    assert!(a.seeder.get(&fid).is_some());

    let (s, _) = call(&app, Method::DELETE, &format!("/api/shares/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(a.seeder.get(&fid).is_none());
    let (s, v) = call(&app, Method::GET, &format!("/api/shares/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(is_error(&v));
    let (s, _) = call(&app, Method::DELETE, &format!("/api/shares/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "removing twice");
    assert!(file.exists(), "removing a share never touches the file");
}

#[tokio::test]
async fn downloads_beyond_the_limit_queue_until_a_slot_frees() {
    let w = World::new().await;
    let (_a, seeder) = w.daemon(w.config("a", true)).await;
    let mut cfg = w.config("b", false);
    cfg.max_active_downloads = 1;
    let (b, getter) = w.daemon(cfg).await;
    let x = share(&seeder, &w.write("x.bin", 40_000, 3)).await;
    let y = share(&seeder, &w.write("y.bin", 40_000, 4)).await;
    let x_id = x["id"].as_str().unwrap();
    // With x not served, its download holds the one slot without finishing.
    call(
        &seeder,
        Method::POST,
        &format!("/api/shares/{x_id}/pause"),
        None,
    )
    .await;

    let add = |code: &Value| json!({"code": code, "out_dir": w.dir.path().join("q")});
    let (s, v) = call(
        &getter,
        Method::POST,
        "/api/downloads",
        Some(add(&x["share_code"])),
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::CREATED, Some("downloading")),
        "{v}"
    );
    let (s, v) = call(
        &getter,
        Method::POST,
        "/api/downloads",
        Some(add(&y["share_code"])),
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::CREATED, Some("queued")),
        "{v}"
    );
    let (_, stats) = call(&getter, Method::GET, "/api/stats", None).await;
    assert_eq!(
        (
            stats["downloads_active"].as_u64(),
            stats["downloads_queued"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Pausing the stuck one frees its slot: y runs and completes.
    let (s, _) = call(
        &getter,
        Method::POST,
        &format!("/api/downloads/{x_id}/pause"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let x_fid = x_id.parse().unwrap();
    assert!(
        b.seeder.get(&x_fid).is_none(),
        "a paused download serves nothing"
    );
    let y_id = y["id"].as_str().unwrap();
    until(&getter, &format!("/api/downloads/{y_id}"), |v| {
        v["status"] == "seeding"
    })
    .await;
    // x resumes once it is served again.
    call(
        &seeder,
        Method::POST,
        &format!("/api/shares/{x_id}/resume"),
        None,
    )
    .await;
    call(
        &getter,
        Method::POST,
        &format!("/api/downloads/{x_id}/resume"),
        None,
    )
    .await;
    until(&getter, &format!("/api/downloads/{x_id}"), |v| {
        v["status"] == "seeding"
    })
    .await;
}

#[tokio::test]
async fn a_seed_ratio_of_zero_stops_seeding_when_done() {
    let w = World::new().await;
    let (_a, seeder) = w.daemon(w.config("a", true)).await;
    let mut cfg = w.config("b", false);
    cfg.seed = SeedPolicy {
        ratio: Some(0.0),
        time: None,
    };
    let (b, getter) = w.daemon(cfg).await;
    let x = share(&seeder, &w.write("r.bin", 40_000, 5)).await;
    let body = json!({"code": x["share_code"]});
    let (s, v) = call(&getter, Method::POST, "/api/downloads", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = x["id"].as_str().unwrap();
    let v = until(&getter, &format!("/api/downloads/{id}"), |v| {
        v["status"] == "completed"
    })
    .await;
    assert!(v["error"].is_null(), "{v}");
    assert!(
        b.seeder.get(&id.parse().unwrap()).is_none(),
        "no longer served"
    );
    assert!(
        b.config.download_dir.join("r.bin").exists(),
        "without out_dir it lands in the daemon's download dir"
    );
}

#[tokio::test]
async fn bad_requests_get_a_clear_json_error() {
    let w = World::new().await;
    let (_a, app) = w.daemon(w.config("a", true)).await;
    let (_b, no_tracker) = w.daemon(w.config("b", false)).await;
    let unknown = format!("/api/downloads/{}", "a".repeat(64));
    let dl = "/api/downloads";
    let cases: Vec<(Method, &str, Option<Value>, StatusCode)> = vec![
        (Method::GET, "/api/nope", None, StatusCode::NOT_FOUND),
        (
            Method::GET,
            "/api/shares/xyz",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, &unknown, None, StatusCode::NOT_FOUND),
        (
            Method::PUT,
            "/api/stats",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/api/shares",
            Some(json!({"path": "/no/such/file"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/shares",
            Some(json!({"path": "x", "colour": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/shares",
            Some(json!([1, 2])),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            dl,
            Some(json!({"code": "tg1:abc"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            dl,
            Some(json!({"code": "hello"})),
            StatusCode::BAD_REQUEST,
        ),
        (Method::POST, dl, Some(json!({})), StatusCode::BAD_REQUEST),
        (
            Method::POST,
            dl,
            Some(json!({"file_id": "12"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            dl,
            Some(json!({"file_id": "b".repeat(64)})),
            StatusCode::BAD_GATEWAY,
        ),
    ];
    for (method, uri, body, want) in cases {
        let (s, v) = call(&app, method.clone(), uri, body.clone()).await;
        assert_eq!(s, want, "{method} {uri} {body:?}: {v}");
        assert!(is_error(&v), "{method} {uri}: no JSON error in {v}");
    }
    // A body without a JSON content type.
    let req = Request::post("/api/shares").body(Body::from("{}")).unwrap();
    let (s, v) = raw(&app, req).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(is_error(&v));
    // A daemon with no tracker cannot share, and says how to fix it.
    let file = w.write("t.bin", 1000, 6);
    let (s, v) = call(
        &no_tracker,
        Method::POST,
        "/api/shares",
        Some(json!({"path": file})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("--tracker"), "{v}");
    // A changed character in a share code is caught by its checksum.
    let good = share(&app, &file).await["share_code"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bad: Vec<char> = good.chars().collect();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == 'a' { 'b' } else { 'a' };
    let bad: String = bad.into_iter().collect();
    let (s, v) = call(
        &no_tracker,
        Method::POST,
        "/api/downloads",
        Some(json!({"code": bad})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let w = World::new().await;
    let (_d, app) = w.daemon(w.config("a", true)).await;
    let (s, doc) = call(&app, Method::GET, "/api/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/stats",
        "/api/transfers",
        "/api/shares",
        "/api/downloads",
        "/api/{kinds}/{id}",
        "/api/{kinds}/{id}/pause",
        "/api/{kinds}/{id}/resume",
        "/api/downloads/{id}/peers",
        "/api/events",
        "/api/ui/login",
        "/api/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    for schema in [
        "TransferView",
        "PeerView",
        "Stats",
        "AddDownload",
        "AddShare",
        "ErrorView",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[tokio::test]
async fn the_event_stream_is_server_sent_events() {
    let w = World::new().await;
    let (_d, app) = w.daemon(w.config("a", true)).await;
    let req = Request::get("/api/events").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    // A share made now shows up on the open stream.
    let file = w.write("e.bin", 20_000, 7);
    let app2 = app.clone();
    tokio::spawn(async move { share(&app2, &file).await });
    let mut body = resp.into_body().into_data_stream();
    let mut seen = String::new();
    let start = Instant::now();
    use futures::StreamExt;
    while !seen.contains("\"event\":\"seeding\"") {
        assert!(start.elapsed() < DEADLINE, "no seeding event in {seen}");
        let chunk = tokio::time::timeout(DEADLINE, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("data: {"), "{seen}");
}

/// `--download-limit` holds every download of the daemon together: two files of 600 kB at
/// 400 kB/s cannot both arrive in less than (1.2 MB − burst) / 400 kB/s, whatever the machine.
#[tokio::test]
async fn the_download_limit_holds_all_downloads_together() {
    let w = World::new().await;
    let (_a, seeder) = w.daemon(w.config("a", true)).await;
    let mut cfg = w.config("b", false);
    let limit = 400_000u64;
    cfg.download_limit = limit;
    let (_b, getter) = w.daemon(cfg).await;
    let x = share(&seeder, &w.write("lx.bin", 600_000, 8)).await;
    let y = share(&seeder, &w.write("ly.bin", 600_000, 9)).await;
    let start = Instant::now();
    for s in [&x, &y] {
        let (st, v) = call(
            &getter,
            Method::POST,
            "/api/downloads",
            Some(json!({"code": s["share_code"]})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    for s in [&x, &y] {
        let uri = format!("/api/downloads/{}", s["id"].as_str().unwrap());
        until(&getter, &uri, |v| v["status"] == "seeding").await;
    }
    // The bucket lets 100 ms of the rate and one 16 KiB chunk go at once.
    let burst = limit / 10 + 16_384;
    let floor = Duration::from_secs_f64((1_200_000 - burst) as f64 / limit as f64);
    assert!(
        start.elapsed() >= floor,
        "{:?} < {floor:?}",
        start.elapsed()
    );
    let (_, stats) = call(&getter, Method::GET, "/api/stats", None).await;
    assert_eq!(stats["download_limit"], limit);
}

#[tokio::test]
async fn a_fresh_ui_login_url_is_minted_only_when_the_ui_is_served() {
    let w = World::new().await;
    let (d, app) = w.daemon(w.config("a", true)).await;
    let (s, v) = call(&app, Method::POST, "/api/ui/login", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--ui"), "{v}");
    let auth = torrentguard_agent::daemon::ui::UiAuth::new();
    d.attach_ui(auth, "http://127.0.0.1:9".into());
    let (s, first) = call(&app, Method::POST, "/api/ui/login", None).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (_, second) = call(&app, Method::POST, "/api/ui/login", None).await;
    let url = first["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:9/login?token="), "{url}");
    assert_ne!(first["url"], second["url"], "each one is new");
}

/// On loopback TCP every request needs the bearer token; without it, or with another, a 401
/// with a JSON error and `WWW-Authenticate: Bearer`.
#[tokio::test]
async fn the_tcp_api_needs_the_bearer_token() {
    use torrentguard_agent::daemon::server;
    let w = World::new().await;
    let cfg = w.config("a", true);
    let token = server::api_token(&cfg.data_dir).unwrap();
    let (d, app) = w.daemon(cfg).await;
    let listener = server::bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/api/stats", listener.local_addr().unwrap());
    server::serve_tcp(listener, app, token.clone(), d.cancel.clone());
    let http = reqwest::Client::new();
    for bad in [None, Some("Bearer nope"), Some(&*format!("Basic {token}"))] {
        let mut req = http.get(&url);
        if let Some(h) = bad {
            req = req.header("authorization", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{bad:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert!(is_error(&v), "{v}");
    }
    let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["fingerprint"], d.identity.fingerprint.to_string());
}
