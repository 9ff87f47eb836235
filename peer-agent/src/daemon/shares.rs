//! Turning a path into something served: hashing it (a file alone keeps its single-file id, a
//! folder is one tree), and at a restart taking the stored manifest back without hashing when
//! no source changed size or modification time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use torrentguard_protocol::{HashAlgo, Manifest};

use super::DaemonError;
use super::transfers::ShareSpec;
use crate::events::EventSink;
use crate::scan::{ScanOptions, scan_with_events};
use crate::torrent::SharedFile;
use crate::torrent::tree_store::{TreeFiles, TreeRoot};

/// What a source looked like when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStat {
    pub path: PathBuf,
    pub size: u64,
    /// Nanoseconds since the epoch; 0 when the platform gives none.
    pub mtime_ns: i128,
}

impl SourceStat {
    fn of(path: &Path) -> std::io::Result<SourceStat> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        // A folder's size says nothing; its modification time changes when entries come or go.
        let size = if meta.is_dir() { 0 } else { meta.len() };
        Ok(SourceStat {
            path: path.to_path_buf(),
            size,
            mtime_ns,
        })
    }
}

/// A share ready to serve, with what to store to skip hashing next time.
pub struct Hashed {
    pub shared: Arc<SharedFile>,
    pub manifest_json: String,
    pub sources_json: String,
}

/// Hashes `path` as `share` would: a regular file alone is one file (its single-file id);
/// a folder, or any path with a `name`, is one tree.
pub async fn hash_path(
    path: &Path,
    spec: &ShareSpec,
    chunk_size: u32,
    algo: HashAlgo,
    events: &EventSink,
) -> Result<Hashed, DaemonError> {
    let meta = std::fs::metadata(path).map_err(|e| bad_path(path, e))?;
    if meta.is_file() && spec.name.is_none() {
        let manifest = crate::agent::hash_file(path, chunk_size, algo, events)
            .await
            .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
        let sources = vec![path.to_path_buf()];
        return serve_single(Arc::new(manifest), path, &sources);
    }
    if !meta.is_dir() && !meta.is_file() {
        return Err(DaemonError::BadRequest(format!(
            "{} is neither a regular file nor a folder",
            path.display()
        )));
    }
    let opts = ScanOptions {
        chunk_size,
        hash: algo,
        follow_symlinks: spec.follow_symlinks,
        name: spec.name.clone(),
        workers: None,
    };
    let (paths, events) = (vec![path.to_path_buf()], events.clone());
    let scanned = tokio::task::spawn_blocking(move || scan_with_events(&paths, &opts, &events))
        .await
        .expect("scanning does not panic")
        .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    for w in &scanned.warnings {
        tracing::warn!(warning = %w, "skipped while scanning a share");
    }
    serve_tree(Arc::new(scanned.manifest), scanned.sources)
}

/// The share stored at the last hashing, if nothing in it changed since; `None` if it must be
/// hashed again.
pub fn from_stored(file_id: &str, manifest_json: &str, sources_json: &str) -> Option<Hashed> {
    let manifest: Manifest = serde_json::from_str(manifest_json).ok()?;
    let stats: Vec<SourceStat> = serde_json::from_str(sources_json).ok()?;
    if manifest.validate().is_err() || manifest.file_id().to_string() != file_id {
        return None;
    }
    let unchanged = stats
        .iter()
        .all(|s| SourceStat::of(&s.path).is_ok_and(|now| now == *s));
    if !unchanged || stats.is_empty() {
        return None;
    }
    let sources: Vec<PathBuf> = stats.into_iter().map(|s| s.path).collect();
    let manifest = Arc::new(manifest);
    let served = if manifest.is_tree() {
        serve_tree(manifest, sources)
    } else {
        serve_single(manifest, &sources[0].clone(), &sources)
    };
    served.ok()
}

fn serve_single(
    manifest: Arc<Manifest>,
    path: &Path,
    sources: &[PathBuf],
) -> Result<Hashed, DaemonError> {
    let sources_json = stats_json(sources)?;
    let manifest_json = serde_json::to_string(&*manifest).expect("manifests serialize");
    let file = std::fs::File::open(path).map_err(|e| bad_path(path, e))?;
    let shared =
        SharedFile::complete(manifest, path.to_path_buf(), file).map_err(|e| bad_path(path, e))?;
    if let Err(reason) = shared.check_unchanged() {
        return Err(DaemonError::BadRequest(format!(
            "changed while it was being hashed: {}",
            reason.local
        )));
    }
    Ok(Hashed {
        shared,
        manifest_json,
        sources_json,
    })
}

fn serve_tree(manifest: Arc<Manifest>, sources: Vec<PathBuf>) -> Result<Hashed, DaemonError> {
    let sources_json = stats_json(&sources)?;
    let manifest_json = serde_json::to_string(&*manifest).expect("manifests serialize");
    let first = sources.first().cloned().unwrap_or_default();
    let storage = TreeFiles::shared(manifest.clone(), TreeRoot::Listed(Arc::new(sources)))
        .map_err(|e| bad_path(&first, e))?;
    let shared = SharedFile::complete_tree(manifest, first, Arc::new(storage));
    Ok(Hashed {
        shared,
        manifest_json,
        sources_json,
    })
}

fn stats_json(sources: &[PathBuf]) -> Result<String, DaemonError> {
    let stats = sources
        .iter()
        .map(|p| SourceStat::of(p).map_err(|e| bad_path(p, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::to_string(&stats).expect("plain structs serialize"))
}

fn bad_path(path: &Path, e: std::io::Error) -> DaemonError {
    DaemonError::BadRequest(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_share_is_taken_back_until_a_source_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        std::fs::write(&f, vec![3u8; 100_000]).unwrap();
        let spec = ShareSpec::default();
        let h = hash_path(&f, &spec, 16384, HashAlgo::Sha256, &EventSink::none())
            .await
            .unwrap();
        let id = h.shared.file_id.to_string();
        let again = from_stored(&id, &h.manifest_json, &h.sources_json).expect("unchanged");
        assert_eq!(again.shared.file_id, h.shared.file_id);
        assert!(from_stored(&"0".repeat(64), &h.manifest_json, &h.sources_json).is_none());
        std::fs::write(&f, vec![4u8; 100_001]).unwrap();
        assert!(
            from_stored(&id, &h.manifest_json, &h.sources_json).is_none(),
            "a changed file is hashed again"
        );
    }

    #[tokio::test]
    async fn a_folder_is_one_tree_and_an_added_file_means_hashing_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("set");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/x.txt"), b"hello").unwrap();
        let h = hash_path(
            &root,
            &ShareSpec::default(),
            16384,
            HashAlgo::Sha256,
            &EventSink::none(),
        )
        .await
        .unwrap();
        assert!(h.shared.manifest.is_tree());
        let id = h.shared.file_id.to_string();
        assert!(from_stored(&id, &h.manifest_json, &h.sources_json).is_some());
        std::fs::write(root.join("sub/y.txt"), b"new").unwrap();
        assert!(from_stored(&id, &h.manifest_json, &h.sources_json).is_none());
    }
}
