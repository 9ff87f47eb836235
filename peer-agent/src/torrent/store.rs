//! The output of one download: `<name>.part`, whose chunks are read and written through its
//! [`SingleFile`] storage, and a sidecar state file listing the verified chunks, replaced
//! atomically; then the final verify and rename.
//!
//! The state file is a hint, not a truth: on open, every chunk it claims is hashed again and
//! only the ones that still match the manifest are kept, so a crash, a torn write or a tampered
//! `.part` costs re-fetching, never a bad byte in the result.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use torrentguard_protocol::{Bitfield, FileId, Manifest, sanitize_name};
use torrentguard_trust::identity::write_atomically;

use super::storage::{ChunkStorage, SingleFile, chunk_verifies, copy_verified};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} already exists and is not this file ({detail}); pass --force to replace it (chunks that already match are kept, only the others are fetched)"
    )]
    Exists { path: PathBuf, detail: String },
    #[error(
        "{part} holds a partial download of another file of the same name ({other}); download into another -o directory, or pass --force to discard it"
    )]
    OtherPartial { part: PathBuf, other: FileId },
    #[error(
        "{0} is being written by another download (it is locked); wait for that one to finish, or download into another -o directory"
    )]
    Locked(PathBuf),
    #[error(
        "{0} no longer names the file that was downloaded and verified (replaced by something else meanwhile); nothing was put in place as verified"
    )]
    Replaced(PathBuf),
    #[error("unsafe file name in manifest: {0}")]
    Name(#[from] torrentguard_protocol::NameError),
    #[error(transparent)]
    Selection(#[from] super::tree_store::SelectionError),
    #[error("refusing the manifest before writing anything: {0}")]
    Manifest(#[from] torrentguard_protocol::ManifestError),
    #[error("--only selects files of a directory share; {0} is a single file")]
    OnlyForTrees(String),
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

/// An open `.part` file and the chunks verified in it. The `.part` is locked (`flock`,
/// exclusive) from open until the store is dropped, so a second download of the same name into
/// the same directory, in this process or another, is refused at once instead of writing into
/// the same file.
pub struct ChunkStore {
    pub paths: DownloadPaths,
    /// The `.part` itself: its lock, its durability, its identity (device and inode).
    file: Arc<File>,
    /// Its chunks: every read and write at an offset goes through here.
    storage: Arc<SingleFile>,
    manifest: Arc<Manifest>,
    file_id: FileId,
}

impl Drop for ChunkStore {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// What opening a download's output found.
pub enum Opened {
    /// The destination already holds exactly this file: every chunk and the whole-file digest
    /// were verified against the manifest. Nothing was created.
    Complete { path: PathBuf, file: Arc<File> },
    /// A `.part` to download into, with the chunks already verified in it.
    Partial(PartialStore),
}

/// A locked `.part` and what it holds.
pub struct PartialStore {
    pub store: ChunkStore,
    pub have: Bitfield,
    /// Chunks the state file claimed that failed re-verification.
    pub discarded: u32,
    /// Chunks taken from an existing destination (`--force`) because they already matched.
    pub from_existing: u32,
}

/// An existing destination compared with the manifest, chunk by chunk and as a whole.
struct Existing {
    file: Arc<File>,
    storage: SingleFile,
    /// Chunks that match the manifest (all of them only if the scan was not cut short).
    matching: Bitfield,
    /// Why it is not this file, if it is not.
    differs: Option<String>,
}

impl ChunkStore {
    /// Opens the output of `manifest` in `out_dir`. A destination that already holds exactly
    /// this file is reported [`Opened::Complete`]; one that differs is refused unless `force`,
    /// and with `force` its matching chunks seed the `.part`. Otherwise opens (or creates) and
    /// locks `<name>.part` and re-verifies what its state file claims.
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
        let existing = match fs::symlink_metadata(&paths.dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_at(&paths.dest)(e)),
            Ok(meta) if !meta.is_file() => {
                if !force {
                    return Err(StoreError::Exists {
                        path: paths.dest,
                        detail: "not a regular file".into(),
                    });
                }
                None
            }
            Ok(_) => {
                // Without force a first difference settles it; with force every chunk counts.
                let e = check_existing(&paths.dest, &manifest, !force)?;
                match &e.differs {
                    None => {
                        return Ok(Opened::Complete {
                            path: paths.dest,
                            file: e.file,
                        });
                    }
                    Some(why) if !force => {
                        return Err(StoreError::Exists {
                            path: paths.dest,
                            detail: why.clone(),
                        });
                    }
                    Some(_) => Some(e),
                }
            }
        };
        // A partial download of another file of this name is not lost silently.
        if let Claimed::Other(other) = read_state(&paths.state, &manifest.file_id(), &manifest)
            && !force
        {
            return Err(StoreError::OtherPartial {
                part: paths.part,
                other,
            });
        }
        let (store, mut have, discarded) = Self::open_part(paths, manifest.clone())?;
        let mut from_existing = 0;
        if let Some(e) = existing {
            from_existing = store.take_matching(&e, &mut have)?;
        }
        Ok(Opened::Partial(PartialStore {
            store,
            have,
            discarded,
            from_existing,
        }))
    }

    /// Opens, locks and sizes the `.part`, and re-verifies the chunks its state file claims.
    fn open_part(
        paths: DownloadPaths,
        manifest: Arc<Manifest>,
    ) -> Result<(ChunkStore, Bitfield, u32), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&paths.part)
            .map_err(io_at(&paths.part))?;
        // Locked before anything is read or written: the state file and the `.part` belong to
        // whoever holds the lock.
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(paths.part)),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&paths.part)(e)),
        }
        let len = file.metadata().map_err(io_at(&paths.part))?.len();
        if len != manifest.size {
            // Growing by set_len leaves holes, not written zeros: the file takes space only as
            // chunks land.
            file.set_len(manifest.size).map_err(io_at(&paths.part))?;
        }
        // Check for room now, so a full disk is reported before anything is fetched rather
        // than half-way through.
        reserve(&file, manifest.size).map_err(|source| StoreError::NoSpace {
            path: paths.part.clone(),
            needed: manifest.size,
            source,
        })?;
        let file_id = manifest.file_id();
        let claimed = match read_state(&paths.state, &file_id, &manifest) {
            Claimed::Chunks(c) => Some(c),
            Claimed::Nothing => None,
            Claimed::Other(other) => {
                tracing::warn!(path = %paths.part.display(), %other, "--force: discarding the partial download of another file");
                None
            }
        };
        let file = Arc::new(file);
        // Created empty by this open: every byte not written since is a hole.
        let storage = match len {
            0 => SingleFile::fresh(file.clone(), manifest.clone()),
            _ => SingleFile::new(file.clone(), manifest.clone()),
        };
        let store = ChunkStore {
            paths,
            file,
            storage: Arc::new(storage),
            manifest: manifest.clone(),
            file_id,
        };
        let mut have = Bitfield::new(manifest.chunk_count());
        let mut discarded = 0;
        if let Some(claimed) = claimed {
            let mut buf = vec![0u8; manifest.chunk_size as usize];
            for i in claimed.iter_set() {
                if chunk_verifies(&*store.storage, &manifest, i, &mut buf) {
                    have.set(i);
                } else {
                    discarded += 1;
                }
            }
        }
        Ok((store, have, discarded))
    }

    /// Copies into the `.part` the chunks of an existing destination that match the manifest
    /// and are not already had; returns how many.
    fn take_matching(&self, e: &Existing, have: &mut Bitfield) -> Result<u32, StoreError> {
        let taken = copy_verified(
            &e.storage,
            &*self.storage,
            &self.manifest,
            &e.matching,
            have,
        )
        .map_err(io_at(&self.paths.part))?;
        if taken > 0 {
            self.save_state(have)?;
        }
        Ok(taken)
    }

    /// The chunks of the `.part`.
    pub fn storage(&self) -> Arc<SingleFile> {
        self.storage.clone()
    }

    /// Releases the `.part` lock. Other holders of the same descriptor (a seeder connection
    /// still serving a chunk, a verification finishing) only read it or write verified bytes
    /// where they belong; the next download may take the file over now.
    pub fn unlock(&self) {
        let _ = self.file.unlock();
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// Records `have` in the state file: data first made durable, then the state replaced
    /// atomically, so the state never claims bytes that are not on disk.
    pub fn save_state(&self, have: &Bitfield) -> Result<(), StoreError> {
        self.storage.flush().map_err(io_at(&self.paths.part))?;
        write_state(&self.paths.state, &self.file_id, &self.manifest, have)
    }

    /// Makes the finished file durable and moves it into place; removes the state file. The
    /// file renamed is checked to be the very file written and verified through this store,
    /// before and after the rename.
    pub fn finish(&self, force: bool) -> Result<(), StoreError> {
        self.file.sync_all().map_err(io_at(&self.paths.part))?;
        if !self.is_our_file(&self.paths.part)? {
            return Err(StoreError::Replaced(self.paths.part.clone()));
        }
        if !force && fs::symlink_metadata(&self.paths.dest).is_ok() {
            return Err(StoreError::Exists {
                path: self.paths.dest.clone(),
                detail: "it appeared while downloading".into(),
            });
        }
        fs::rename(&self.paths.part, &self.paths.dest).map_err(io_at(&self.paths.dest))?;
        if !self.is_our_file(&self.paths.dest)? {
            return Err(StoreError::Replaced(self.paths.dest.clone()));
        }
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

    /// Whether `path` names the file this store wrote (same device and inode).
    fn is_our_file(&self, path: &Path) -> Result<bool, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.file.metadata().map_err(io_at(path))?;
        match fs::symlink_metadata(path) {
            Ok(m) => Ok(m.dev() == ours.dev() && m.ino() == ours.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(path)(e)),
        }
    }
}

/// Compares the regular file at `path` with `manifest`: every chunk, then the whole-file
/// digest. With `stop_early`, the first difference ends the scan.
fn check_existing(
    path: &Path,
    m: &Arc<Manifest>,
    stop_early: bool,
) -> Result<Existing, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    let n = m.chunk_count();
    let file = Arc::new(file);
    let mut existing = Existing {
        storage: SingleFile::new(file.clone(), m.clone()),
        file,
        matching: Bitfield::new(n),
        differs: None,
    };
    if len != m.size {
        existing.differs = Some(format!("{len} bytes, the file has {}", m.size));
        if stop_early {
            return Ok(existing);
        }
    }
    let mut whole = m.hash.hasher();
    let mut buf = vec![0u8; m.chunk_size as usize];
    let mut differing = 0u32;
    for i in 0..n {
        let clen = m.chunk_len(i) as usize;
        if chunk_verifies(&existing.storage, m, i, &mut buf) {
            existing.matching.set(i);
            whole.update(&buf[..clen]);
            continue;
        }
        differing += 1;
        if stop_early {
            existing.differs = Some(format!("differs from it at chunk {i} of {n}"));
            return Ok(existing);
        }
    }
    if existing.differs.is_none() {
        if differing > 0 {
            existing.differs = Some(format!("{differing} of {n} chunks differ"));
        } else if whole.finish() != m.file_hash {
            existing.differs = Some("its whole-file digest differs".into());
        }
    }
    Ok(existing)
}

/// Replaces the state file at `path` atomically with `have` (a file's or a tree's: the same
/// shape, so `status` lists both). The caller made the data durable first.
pub(crate) fn write_state(
    path: &Path,
    id: &FileId,
    m: &Manifest,
    have: &Bitfield,
) -> Result<(), StoreError> {
    let state = StateFile {
        version: 1,
        file_id: *id,
        chunk_size: m.chunk_size,
        chunk_count: m.chunk_count(),
        verified: have.to_base64(),
    };
    let json = serde_json::to_vec(&state).expect("state serialises");
    write_atomically(path, &json, 0o644).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })
}

/// What a state file says.
pub(crate) enum Claimed {
    /// No usable state: every chunk is fetched.
    Nothing,
    Chunks(Bitfield),
    /// The state of a partial download of another file with the same name.
    Other(FileId),
}

pub(crate) fn read_state(path: &Path, id: &FileId, m: &Manifest) -> Claimed {
    let Ok(bytes) = fs::read(path) else {
        return Claimed::Nothing;
    };
    let s: StateFile = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file; every chunk will be fetched");
            return Claimed::Nothing;
        }
    };
    if s.file_id != *id {
        return Claimed::Other(s.file_id);
    }
    if s.version != 1 || s.chunk_count != m.chunk_count() || s.chunk_size != m.chunk_size {
        tracing::warn!(path = %path.display(), "state file does not fit the manifest; ignoring it");
        return Claimed::Nothing;
    }
    Bitfield::from_base64(&s.verified, m.chunk_count()).map_or(Claimed::Nothing, Claimed::Chunks)
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
    // Tests tamper with the `.part` behind the store's back, at offsets of their own.
    use std::os::unix::fs::FileExt;
    use torrentguard_protocol::HashAlgo;
    use torrentguard_protocol::hashing::manifest_from_reader;

    fn manifest(data: &[u8]) -> Arc<Manifest> {
        Arc::new(manifest_from_reader("f.bin", data, 16384, HashAlgo::Sha256, |_| {}).unwrap())
    }

    fn partial(r: Result<Opened, StoreError>) -> PartialStore {
        match r {
            Ok(Opened::Partial(p)) => p,
            Ok(Opened::Complete { path, .. }) => panic!("unexpectedly complete: {path:?}"),
            Err(e) => panic!("open failed: {e}"),
        }
    }

    fn data(len: u32) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn state_survives_reopen_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let m = manifest(&data);
        let o = partial(ChunkStore::open(dir.path(), m.clone(), false));
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

        let o = partial(ChunkStore::open(dir.path(), m.clone(), false));
        assert_eq!(o.have, have);
        // Tamper with chunk 2 on disk: reopening drops it.
        o.store
            .file
            .write_all_at(b"evil", m.chunk_offset(2) + 10)
            .unwrap();
        drop(o.store);
        let o = partial(ChunkStore::open(dir.path(), m.clone(), false));
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
            Err(StoreError::Exists { .. })
        ));
        let o = partial(ChunkStore::open(dir.path(), m.clone(), true));
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
        let Err(err) = r else {
            panic!("a 1 MiB file cannot fit in 256 KiB")
        };
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

    /// Issue 9: a second writer of the same `.part` (another download of the same name into
    /// the same directory) is refused at once, and may proceed once the first is gone.
    #[test]
    fn a_locked_part_refuses_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(&data(50_000));
        let first = partial(ChunkStore::open(dir.path(), m.clone(), false));
        let second = ChunkStore::open(dir.path(), m.clone(), false);
        let Err(err) = second else {
            panic!("second writer was let in")
        };
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        assert!(err.to_string().contains("another download"), "{err}");
        // A handle to the file outliving the store (a seeder connection) keeps no lock.
        let lingering = first.store.storage();
        drop(first);
        partial(ChunkStore::open(dir.path(), m, false));
        drop(lingering);
    }

    /// Issue 9: "verified" is only for the file renamed into place: if the `.part` path was
    /// replaced by another file meanwhile, finishing refuses instead of renaming it.
    #[test]
    fn finish_refuses_a_part_that_is_not_the_verified_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(40_000);
        let m = manifest(&bytes);
        let o = partial(ChunkStore::open(dir.path(), m.clone(), false));
        o.store.file.write_all_at(&bytes, 0).unwrap();
        let part = dir.path().join("f.bin.part");
        fs::remove_file(&part).unwrap();
        fs::write(&part, b"someone else's bytes").unwrap();
        let err = o.store.finish(false).unwrap_err();
        assert!(matches!(err, StoreError::Replaced(_)), "{err}");
        assert!(!dir.path().join("f.bin").exists());
    }

    /// Issue 9: an identical destination is complete (nothing created), a different one is
    /// refused without force and says why, and with force its matching chunks are kept.
    #[test]
    fn existing_destination_is_verified_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(100_000); // 7 chunks of 16 KiB
        let m = manifest(&bytes);
        let dest = dir.path().join("f.bin");
        fs::write(&dest, &bytes).unwrap();
        for force in [false, true] {
            let r = ChunkStore::open(dir.path(), m.clone(), force);
            assert!(matches!(r, Ok(Opened::Complete { .. })), "force {force}");
        }
        assert!(!dir.path().join("f.bin.part").exists());

        let mut bad = bytes.clone();
        bad[16384 * 2 + 5] ^= 1;
        bad[16384 * 5] ^= 1;
        fs::write(&dest, &bad).unwrap();
        let Err(err) = ChunkStore::open(dir.path(), m.clone(), false) else {
            panic!("a different file was taken as complete")
        };
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(!dir.path().join("f.bin.part").exists());

        let o = partial(ChunkStore::open(dir.path(), m.clone(), true));
        assert_eq!(o.from_existing, 5);
        let missing: Vec<u32> = (0..7).filter(|i| !o.have.get(*i)).collect();
        assert_eq!(missing, [2, 5]);
        // The kept chunks are in the .part, saved in its state.
        assert_eq!(list_partials(dir.path())[0].chunks_verified, 5);
        assert_eq!(
            fs::read(&dest).unwrap(),
            bad,
            "the original is untouched until done"
        );
    }

    /// Issue 9: a shorter or longer destination is not complete even if a prefix matches.
    #[test]
    fn existing_destination_of_another_size_is_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(40_000);
        let m = manifest(&bytes);
        let mut longer = bytes.clone();
        longer.push(0);
        fs::write(dir.path().join("f.bin"), &longer).unwrap();
        let Err(err) = ChunkStore::open(dir.path(), m.clone(), false) else {
            panic!("a longer file was taken as complete")
        };
        assert!(err.to_string().contains("40001 bytes"), "{err}");
    }

    /// Issue 9 (sparse): in a fresh `.part`, all-zero chunks stay holes.
    #[test]
    fn zero_chunks_stay_holes_in_a_fresh_part() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 64 * 16384];
        bytes[..16384].copy_from_slice(&data(16384));
        let m = manifest(&bytes);
        let o = partial(ChunkStore::open(dir.path(), m.clone(), false));
        for i in 0..m.chunk_count() {
            let off = m.chunk_offset(i) as usize;
            o.store
                .storage()
                .write_chunk(i, &bytes[off..off + m.chunk_len(i) as usize])
                .unwrap();
        }
        let meta = o.store.file.metadata().unwrap();
        assert_eq!(meta.len(), bytes.len() as u64);
        assert!(
            meta.blocks() * 512 <= 4 * 16384,
            "{} bytes allocated for one non-zero chunk",
            meta.blocks() * 512
        );
        o.store.finish(false).unwrap();
        assert_eq!(fs::read(dir.path().join("f.bin")).unwrap(), bytes);
    }

    /// Issue 9: the `.part` of another file with the same name (an interrupted download of
    /// another id) is not taken over silently: refused, nothing touched; `--force` discards it.
    #[test]
    fn a_partial_of_another_file_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (data(40_000), data(50_000));
        let (ma, mb) = (manifest(&a), manifest(&b));
        let o = partial(ChunkStore::open(dir.path(), ma.clone(), false));
        o.store.storage().write_chunk(0, &a[..16384]).unwrap();
        let mut have = o.have;
        have.set(0);
        o.store.save_state(&have).unwrap();
        drop(o.store);
        let Err(err) = ChunkStore::open(dir.path(), mb.clone(), false) else {
            panic!("another file's partial was taken over");
        };
        assert!(matches!(err, StoreError::OtherPartial { .. }), "{err}");
        assert!(err.to_string().contains(&ma.file_id().to_string()), "{err}");
        assert_eq!(list_partials(dir.path())[0].file_id, ma.file_id());
        let o = partial(ChunkStore::open(dir.path(), mb.clone(), true));
        assert_eq!(o.have.count(), 0);
    }
}
