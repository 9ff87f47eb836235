//! Serves the web UI in front of an in-memory imitation of the daemon's API (the JSON of its
//! contract, with downloads that progress by themselves), to work on the page without a swarm:
//!
//!     cargo run -p torrentguard-agent --example ui_preview [-- 127.0.0.1:8380]
//!
//! It prints the one-time login URL, as the daemon does. Nothing is shared or downloaded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use torrentguard_agent::daemon::ui;

type Transfers = Arc<Mutex<Vec<Value>>>;

/// Bytes a preview download gains per tick, and the tick.
const STEP: u64 = 3 << 20;
const TICK: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let transfers: Transfers = Arc::new(Mutex::new(vec![share(
        "/srv/data/dataset-2026.tar",
        734_003_200,
    )]));
    tokio::spawn(advance(transfers.clone()));
    let auth = ui::UiAuth::new();
    println!("ui: {}", auth.login_url(&format!("http://{addr}")));
    let app = ui::router(api(transfers), auth);
    ui::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

fn api(transfers: Transfers) -> Router {
    Router::new()
        .route("/api/stats", get(stats))
        .route("/api/transfers", get(list))
        .route("/api/downloads", post(add_download))
        .route("/api/shares", post(add_share))
        .route("/api/downloads/{id}/peers", get(peers))
        .route("/api/{kind}/{id}/{verb}", post(pause_or_resume))
        .route("/api/{kind}/{id}", axum::routing::delete(remove))
        .with_state(transfers)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fake_id(seed: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn share(path: &str, size: u64) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    let id = fake_id(path);
    json!({"id": id, "kind": "share", "name": name, "size": size, "path": path,
           "status": "seeding", "error": null, "bytes_done": size, "percent": 100.0,
           "download_bps": 0, "upload_bps": 1_250_000, "eta_secs": null, "peers": 2,
           "bytes_reused": 0, "bytes_fetched": 0, "uploaded": 96_468_992,
           "share_code": format!("tg1:{}", &id[..52]), "added_at": now()})
}

fn download(code: &str, out_dir: &str) -> Value {
    let id = fake_id(code);
    let size: u64 = 48 << 20;
    json!({"id": id, "kind": "download", "name": "ubuntu-mirror-snapshot.tar", "size": size,
           "path": format!("{out_dir}/ubuntu-mirror-snapshot.tar"), "status": "downloading",
           "error": null, "bytes_done": 0, "percent": 0.0, "download_bps": 0, "upload_bps": 0,
           "eta_secs": null, "peers": 2, "bytes_reused": 4_194_304, "bytes_fetched": 0,
           "uploaded": 0, "share_code": null, "added_at": now()})
}

async fn advance(transfers: Transfers) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let mut all = transfers.lock().unwrap_or_else(|e| e.into_inner());
        for t in all.iter_mut().filter(|t| t["status"] == "downloading") {
            let size = t["size"].as_u64().unwrap_or(0);
            let done = (t["bytes_done"].as_u64().unwrap_or(0) + STEP).min(size);
            let bps = STEP * 1000 / TICK.as_millis() as u64;
            t["bytes_done"] = json!(done);
            t["bytes_fetched"] = json!(done.saturating_sub(4_194_304));
            t["percent"] = json!(done as f64 * 100.0 / size.max(1) as f64);
            t["download_bps"] = json!(if done == size { 0 } else { bps });
            t["eta_secs"] = json!((size - done) / bps);
            if done == size {
                t["status"] = json!("completed");
                t["peers"] = json!(0);
            }
        }
    }
}

async fn stats(State(transfers): State<Transfers>) -> Json<Value> {
    let all = transfers.lock().unwrap_or_else(|e| e.into_inner());
    let count = |s: &str| all.iter().filter(|t| t["status"] == s).count();
    let sum = |k: &str| all.iter().filter_map(|t| t[k].as_u64()).sum::<u64>();
    Json(
        json!({"fingerprint": format!("sha256:{}", fake_id("agent")), "peer_port": 4000,
        "download_bps": sum("download_bps"), "upload_bps": sum("upload_bps"),
        "download_limit": 0, "upload_limit": 0, "downloads_active": count("downloading"),
        "downloads_queued": count("queued"), "shares_seeding": count("seeding"),
        "uploaded_total": sum("uploaded"), "downloaded_total": sum("bytes_fetched"),
        "version": env!("CARGO_PKG_VERSION")}),
    )
}

async fn list(State(transfers): State<Transfers>) -> Json<Value> {
    let all = transfers.lock().unwrap_or_else(|e| e.into_inner());
    Json(Value::Array(all.iter().rev().cloned().collect()))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn add_download(State(transfers): State<Transfers>, Json(body): Json<Value>) -> Response {
    let Some(code) = body["code"].as_str().filter(|c| c.starts_with("tg1:")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Not a share code: it should start with tg1:.",
        );
    };
    let out_dir = body["out_dir"].as_str().unwrap_or("/home/me/Downloads");
    let new = download(code, out_dir);
    let mut all = transfers.lock().unwrap_or_else(|e| e.into_inner());
    if all
        .iter()
        .any(|t| t["id"] == new["id"] && t["kind"] == "download")
    {
        return error(StatusCode::CONFLICT, "Already downloading that file.");
    }
    all.push(new.clone());
    (StatusCode::CREATED, Json(new)).into_response()
}

async fn add_share(State(transfers): State<Transfers>, Json(body): Json<Value>) -> Response {
    let Some(path) = body["path"].as_str().filter(|p| p.starts_with('/')) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The preview shares absolute paths only.",
        );
    };
    let new = share(path, 12 << 20);
    transfers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(new.clone());
    (StatusCode::ACCEPTED, Json(new)).into_response()
}

async fn peers(Path(_id): Path<String>) -> Json<Value> {
    let peer = |seed: &str, bps: u64, verified: u64| {
        json!({"fingerprint": format!("sha256:{}", fake_id(seed)), "address": null,
               "download_bps": bps, "state": "connected",
               "reputation": {"bytes_verified": verified, "chunks_failed": 0, "bans": 0,
                              "last_error": null}})
    };
    Json(json!([
        peer("a", 7_340_032, 25 << 20),
        peer("b", 5_242_880, 19 << 20)
    ]))
}

async fn pause_or_resume(
    State(transfers): State<Transfers>,
    Path((kind, id, verb)): Path<(String, String, String)>,
) -> Response {
    let mut all = transfers.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = all.iter_mut().find(|t| {
        t["id"] == id.as_str() && format!("{}s", t["kind"].as_str().unwrap_or("")) == kind
    }) else {
        return error(StatusCode::NOT_FOUND, "No such transfer.");
    };
    let resumed = if t["kind"] == "share" {
        "seeding"
    } else {
        "downloading"
    };
    t["status"] = match verb.as_str() {
        "pause" => json!("paused"),
        "resume" => json!(resumed),
        _ => return error(StatusCode::NOT_FOUND, "No such action."),
    };
    Json(t.clone()).into_response()
}

async fn remove(
    State(transfers): State<Transfers>,
    Path((kind, id)): Path<(String, String)>,
) -> StatusCode {
    let mut all = transfers.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|t| {
        !(t["id"] == id.as_str() && format!("{}s", t["kind"].as_str().unwrap_or("")) == kind)
    });
    StatusCode::NO_CONTENT
}
