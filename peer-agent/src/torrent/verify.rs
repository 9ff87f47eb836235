//! Checking a file or folder on disk against a manifest, chunk by chunk and, for a single file,
//! against its whole-content digest too: `torrentguard verify PATH ID` and `get --verify-full`'s
//! standalone form. Reads every byte once; memory is one chunk.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use torrentguard_protocol::Manifest;

use super::storage::{ChunkStorage, SingleFile, chunk_verifies};
use super::store::{StoreError, io_at};
use super::tree_store::{TreeFiles, TreeRoot, entry_differences};

/// Most differing chunks listed by index (the count is always exact).
const LISTED: usize = 16;

/// What a check of a path against a manifest found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub chunks: u32,
    /// Chunks whose bytes do not hash to the manifest's digest (or cannot be read).
    pub bad_chunks: u32,
    /// The first few of them.
    pub bad: Vec<u32>,
    /// Entries of a tree that are missing or of the wrong kind or size.
    pub wrong_entries: Vec<String>,
    /// A single file: whether its whole content hashes to `file_hash` (the digest `sha256sum`
    /// prints). `None` for a tree, whose content digest is its chunk digests'.
    pub content_digest_ok: Option<bool>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.bad_chunks == 0
            && self.wrong_entries.is_empty()
            && self.content_digest_ok != Some(false)
    }
}

/// Checks `path` (the file, or the folder that holds the tree) against `m`.
pub fn verify_path(m: &Arc<Manifest>, path: &Path) -> Result<VerifyReport, StoreError> {
    let meta = fs::metadata(path).map_err(io_at(path))?;
    let mut report = VerifyReport {
        chunks: m.chunk_count(),
        ..Default::default()
    };
    let storage: Arc<dyn ChunkStorage> = if m.is_tree() {
        if !meta.is_dir() {
            return Err(StoreError::NotADir(path.into()));
        }
        let files = TreeFiles::new(m.clone(), TreeRoot::Dir(path.into()), false);
        let all = vec![true; m.entries().len()];
        report.wrong_entries = entry_differences(&files, &all).collect();
        Arc::new(files)
    } else {
        if meta.len() != m.size {
            report.wrong_entries = vec![format!(
                "{} has {} bytes, the file has {}",
                path.display(),
                meta.len(),
                m.size
            )];
            return Ok(report);
        }
        let file = File::open(path).map_err(io_at(path))?;
        Arc::new(SingleFile::new(Arc::new(file), m.clone()))
    };
    let mut whole = (!m.is_tree()).then(|| m.hash.hasher());
    let mut buf = vec![0u8; m.chunk_size as usize];
    for i in 0..m.chunk_count() {
        let ok = chunk_verifies(&*storage, m, i, &mut buf);
        if let Some(h) = whole.as_mut() {
            h.update(&buf[..m.chunk_len(i) as usize]);
        }
        if !ok {
            report.bad_chunks += 1;
            if report.bad.len() < LISTED {
                report.bad.push(i);
            }
        }
    }
    report.content_digest_ok = whole.map(|h| h.finish() == m.file_hash);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use torrentguard_protocol::hashing::manifest_from_reader;
    use torrentguard_protocol::{Entry, HashAlgo};

    const CS: u32 = 16 * 1024;

    #[test]
    fn a_file_is_checked_by_chunk_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let p = dir.path().join("f");
        fs::write(&p, &data).unwrap();
        let m =
            Arc::new(manifest_from_reader("f", &data[..], CS, HashAlgo::Sha256, |_| {}).unwrap());
        let r = verify_path(&m, &p).unwrap();
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.content_digest_ok, Some(true));
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all_at(b"x", 40_000)
            .unwrap();
        let r = verify_path(&m, &p).unwrap();
        assert_eq!((r.bad_chunks, r.bad.as_slice()), (1, &[2][..]));
        assert_eq!(r.content_digest_ok, Some(false));
        fs::write(&p, &data[..10]).unwrap();
        assert!(!verify_path(&m, &p).unwrap().wrong_entries.is_empty());
    }

    #[test]
    fn a_tree_is_checked_entry_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/a"), b"hello").unwrap();
        let entries = vec![
            Entry::dir("d", 0o755),
            Entry::file("d/a", 5, 0o644),
            Entry::dir("empty", 0o755),
        ];
        let m = Arc::new(Manifest::tree(
            "t",
            CS,
            HashAlgo::Sha256,
            entries,
            vec![HashAlgo::Sha256.digest(b"hello")],
        ));
        let r = verify_path(&m, &root).unwrap();
        assert_eq!(r.wrong_entries, ["empty is missing"]);
        assert_eq!(r.content_digest_ok, None);
        fs::create_dir(root.join("empty")).unwrap();
        assert!(verify_path(&m, &root).unwrap().ok());
        fs::write(root.join("d/a"), b"jello").unwrap();
        assert_eq!(verify_path(&m, &root).unwrap().bad_chunks, 1);
    }
}
