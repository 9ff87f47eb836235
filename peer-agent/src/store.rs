//! The chunk store of one download: `<name>.part`, written with positional writes, and a
//! sidecar state file listing the verified chunks, replaced atomically.
//!
//! The state file is a hint, not a truth: on open, every chunk it claims is hashed again and
//! only the ones that still match the manifest are kept, so a crash, a torn write or a tampered
//! `.part` costs re-fetching, never a bad byte in the result.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use torrentguard_protocol::{Bitfield, FileId, Manifest, sanitize_name};
use torrentguard_tracker::identity::write_atomically;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} already exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("unsafe file name in manifest: {0}")]
    Name(#[from] torrentguard_protocol::NameError),
    #[error("output directory {0} is not a directory")]
    NotADir(PathBuf),
    #[error(
        "not enough space for {path} ({needed} bytes): {source}; free some space and run the same command again"
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        #[source]
        source: io::Error,
    },
}

/// Checks that the file system holding `file` has room for the rest of it. A check rather than
/// a reservation (`fallocate`): on tmpfs a reservation allocates every page up front, a serial
/// cost of ~0.3 s per GiB before the first byte is fetched. A disk that fills up later anyway
/// stops the download cleanly with the `.part` kept.
#[cfg(target_os = "linux")]
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let allocated = file.metadata()?.blocks() * 512;
    let needed = size.saturating_sub(allocated);
    if needed == 0 {
        return Ok(());
    }
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs fills the struct on success; we read it only then.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        // No answer (unusual file system): let the writes find out.
        return Ok(());
    }
    // SAFETY: rc == 0 means the kernel initialised it.
    let st = unsafe { st.assume_init() };
    // The field types vary by platform (u32 on some 32-bit targets).
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    if free < needed {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{free} bytes free, {needed} more needed"),
        ));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _size: u64) -> io::Result<()> {
    Ok(())
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the sidecar records.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    file_id: FileId,
    chunk_size: u32,
    chunk_count: u32,
    /// Base64 bitfield of chunks verified and written.
    verified: String,
}

/// Paths of a download's files in the output directory.
#[derive(Debug, Clone)]
pub struct DownloadPaths {
    pub dest: PathBuf,
    pub part: PathBuf,
    pub state: PathBuf,
}

impl DownloadPaths {
    /// Paths for `manifest` in `out_dir`; the name goes through the sanitiser, so it cannot
    /// escape the directory.
    pub fn new(out_dir: &Path, manifest: &Manifest) -> Result<Self, StoreError> {
        let name = sanitize_name(&manifest.name)?;
        Ok(DownloadPaths {
            dest: out_dir.join(name),
            part: out_dir.join(format!("{name}.part")),
            state: out_dir.join(format!("{name}.part.tgstate")),
        })
    }
}

/// An open `.part` file and the chunks verified in it.
pub struct ChunkStore {
    pub paths: DownloadPaths,
    file: Arc<File>,
    manifest: Arc<Manifest>,
    file_id: FileId,
}

/// Result of opening a store: the chunks found verified on disk.
pub struct Opened {
    pub store: ChunkStore,
    pub have: Bitfield,
    /// Chunks the state file claimed that failed re-verification.
    pub discarded: u32,
}

impl ChunkStore {
    /// Opens (or creates) the `.part` of `manifest` in `out_dir` and re-verifies what its state
    /// file claims. Refuses if the destination exists and `force` is not set.
    pub fn open(
        out_dir: &Path,
        manifest: Arc<Manifest>,
        force: bool,
    ) -> Result<Opened, StoreError> {
        if !out_dir.exists() {
            fs::create_dir_all(out_dir).map_err(io_at(out_dir))?;
        }
        if !out_dir.is_dir() {
            return Err(StoreError::NotADir(out_dir.into()));
        }
        let paths = DownloadPaths::new(out_dir, &manifest)?;
        if !force && fs::symlink_metadata(&paths.dest).is_ok() {
            return Err(StoreError::Exists(paths.dest));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&paths.part)
            .map_err(io_at(&paths.part))?;
        let len = file.metadata().map_err(io_at(&paths.part))?.len();
        if len != manifest.size {
            file.set_len(manifest.size).map_err(io_at(&paths.part))?;
        }
        // Reserve the blocks now, so a full disk is reported before anything is fetched rather
        // than half-way through.
        reserve(&file, manifest.size).map_err(|source| StoreError::NoSpace {
            path: paths.part.clone(),
            needed: manifest.size,
            source,
        })?;
        let file_id = manifest.file_id();
        let claimed = read_state(&paths.state, &file_id, &manifest);
        let store = ChunkStore {
            paths,
            file: Arc::new(file),
            manifest: manifest.clone(),
            file_id,
        };
        let mut have = Bitfield::new(manifest.chunk_count());
        let mut discarded = 0;
        if let Some(claimed) = claimed {
            let mut buf = vec![0u8; manifest.chunk_size as usize];
            for i in claimed.iter_set() {
                let len = manifest.chunk_len(i) as usize;
                let ok = store
                    .file
                    .read_exact_at(&mut buf[..len], manifest.chunk_offset(i))
                    .is_ok()
                    && manifest.chunk_matches(i, &buf[..len]);
                if ok {
                    have.set(i);
                } else {
                    discarded += 1;
                }
            }
        }
        Ok(Opened {
            store,
            have,
            discarded,
        })
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// Records `have` in the state file: data first made durable, then the state replaced
    /// atomically, so the state never claims bytes that are not on disk.
    pub fn save_state(&self, have: &Bitfield) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_at(&self.paths.part))?;
        let state = StateFile {
            version: 1,
            file_id: self.file_id,
            chunk_size: self.manifest.chunk_size,
            chunk_count: self.manifest.chunk_count(),
            verified: have.to_base64(),
        };
        let json = serde_json::to_vec(&state).expect("state serialises");
        write_atomically(&self.paths.state, &json, 0o644).map_err(|e| StoreError::Io {
            path: self.paths.state.clone(),
            source: io::Error::other(e.to_string()),
        })
    }

    /// Makes the finished file durable and moves it into place; removes the state file.
    pub fn finish(&self, force: bool) -> Result<(), StoreError> {
        self.file.sync_all().map_err(io_at(&self.paths.part))?;
        if !force && fs::symlink_metadata(&self.paths.dest).is_ok() {
            return Err(StoreError::Exists(self.paths.dest.clone()));
        }
        fs::rename(&self.paths.part, &self.paths.dest).map_err(io_at(&self.paths.dest))?;
        if let Some(dir) = self.paths.dest.parent()
            && let Ok(d) = File::open(dir)
        {
            // Persist the rename itself.
            let _ = d.sync_all();
        }
        match fs::remove_file(&self.paths.state) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&self.paths.state)(e)),
        }
    }
}

fn read_state(path: &Path, id: &FileId, m: &Manifest) -> Option<Bitfield> {
    let bytes = fs::read(path).ok()?;
    let s: StateFile = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file; every chunk will be fetched");
            return None;
        }
    };
    if s.version != 1
        || s.file_id != *id
        || s.chunk_count != m.chunk_count()
        || s.chunk_size != m.chunk_size
    {
        tracing::warn!(path = %path.display(), "state file belongs to another file; ignoring it");
        return None;
    }
    Bitfield::from_base64(&s.verified, m.chunk_count()).ok()
}

/// Summary of a partial download found in a directory, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct PartialDownload {
    pub file_id: FileId,
    pub part: PathBuf,
    pub chunks_verified: u32,
    pub chunk_count: u32,
}

/// Lists the partial downloads (state files) in `dir`.
pub fn list_partials(dir: &Path) -> Vec<PartialDownload> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let part = name.strip_suffix(".tgstate")?;
            let s: StateFile = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            let bf = Bitfield::from_base64(&s.verified, s.chunk_count).ok()?;
            Some(PartialDownload {
                file_id: s.file_id,
                part: dir.join(part),
                chunks_verified: bf.count(),
                chunk_count: s.chunk_count,
            })
        })
        .collect();
    out.sort_by(|a, b| a.part.cmp(&b.part));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::HashAlgo;
    use torrentguard_protocol::hashing::manifest_from_reader;

    fn manifest(data: &[u8]) -> Arc<Manifest> {
        Arc::new(manifest_from_reader("f.bin", data, 16384, HashAlgo::Sha256, |_| {}).unwrap())
    }

    #[test]
    fn state_survives_reopen_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let m = manifest(&data);
        let o = ChunkStore::open(dir.path(), m.clone(), false).unwrap();
        assert_eq!(o.have.count(), 0);
        let mut have = o.have;
        for i in [0u32, 2, 6] {
            let off = m.chunk_offset(i) as usize;
            let len = m.chunk_len(i) as usize;
            o.store
                .file
                .write_all_at(&data[off..off + len], off as u64)
                .unwrap();
            have.set(i);
        }
        o.store.save_state(&have).unwrap();
        drop(o.store);
        assert_eq!(list_partials(dir.path())[0].chunks_verified, 3);

        let o = ChunkStore::open(dir.path(), m.clone(), false).unwrap();
        assert_eq!(o.have, have);
        // Tamper with chunk 2 on disk: reopening drops it.
        o.store
            .file
            .write_all_at(b"evil", m.chunk_offset(2) + 10)
            .unwrap();
        drop(o.store);
        let o = ChunkStore::open(dir.path(), m.clone(), false).unwrap();
        assert_eq!(o.discarded, 1);
        assert!(o.have.get(0) && !o.have.get(2) && o.have.get(6));
    }

    #[test]
    fn existing_destination_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(b"hello");
        fs::write(dir.path().join("f.bin"), b"precious").unwrap();
        assert!(matches!(
            ChunkStore::open(dir.path(), m.clone(), false),
            Err(StoreError::Exists(_))
        ));
        let o = ChunkStore::open(dir.path(), m.clone(), true).unwrap();
        o.store.file.write_all_at(b"hello", 0).unwrap();
        o.store.finish(true).unwrap();
        assert_eq!(fs::read(dir.path().join("f.bin")).unwrap(), b"hello");
        assert!(!dir.path().join("f.bin.part").exists());
    }

    /// A full disk is reported up front, with a message that says what to do. Needs root to
    /// mount a tiny tmpfs; elsewhere it says so and checks nothing.
    #[test]
    fn full_disk_is_reported_before_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs here (not root?)");
            return;
        }
        let data = vec![3u8; 1 << 20];
        let r = ChunkStore::open(&mnt, manifest(&data), false);
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        let err = r.err().expect("a 1 MiB file cannot fit in 256 KiB");
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
        assert!(err.to_string().contains("free some space"), "{err}");
    }

    #[test]
    fn hostile_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = (*manifest(b"x")).clone();
        m.name = "../../etc/passwd".into();
        assert!(matches!(
            ChunkStore::open(dir.path(), Arc::new(m), false),
            Err(StoreError::Name(_))
        ));
    }
}
