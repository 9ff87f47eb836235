//! The output shared by a command and the engine's events.

use std::sync::Arc;

use torrentguard_agent::EventSink;

use super::render::{Mode, Renderer, human};

/// The renderer, shared by the engine's events and the CLI's own lines, so everything reaches
/// stdout in the order it happened.
pub(crate) type Output = Arc<std::sync::Mutex<Renderer>>;

pub(crate) fn renderer(mode: Mode) -> (EventSink, Output) {
    let r: Output = Arc::new(std::sync::Mutex::new(Renderer::new(mode)));
    let r2 = r.clone();
    let sink = EventSink::from_fn(move |e| r2.lock().unwrap_or_else(|e| e.into_inner()).event(&e));
    (sink, r)
}

/// One `stopped` event per file served: what it uploaded, and how many requests were answered
/// `Busy` (deferred to another downloader holding the chunk).
pub(crate) fn report_stopped(out: &Output, files: &[Arc<torrentguard_agent::torrent::SharedFile>]) {
    let r = out.lock().unwrap_or_else(|e| e.into_inner());
    for f in files {
        let uploaded = f.uploaded.load(std::sync::atomic::Ordering::Relaxed);
        r.json(&serde_json::json!({
            "event": "stopped",
            "file_id": f.file_id,
            "name": f.manifest.name,
            "uploaded": uploaded,
            "busy_refusals": f.busy_refusals(),
        }));
        r.say(&format!(
            "stopped seeding {}: uploaded {}",
            f.manifest.name,
            human(uploaded)
        ));
    }
}
