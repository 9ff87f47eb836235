//! Storage of a directory share (a tree): every chunk lives in exactly one file of the tree, at
//! an offset the manifest's layout gives.
//!
//! [`TreeFiles`] reads and writes chunks of a tree rooted somewhere (the shared folders on the
//! sharer's side, `.<name>.part/` on the downloader's). [`TreeStore`] is one tree download: it
//! creates the skeleton under `DIR/.<name>.part/`, locks it, records verified chunks in a state
//! file beside it (`DIR/.<name>.part.tgstate`, re-verified on resume), and at the end applies the
//! modes and renames the whole tree to `DIR/<name>/` in one step.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use torrentguard_protocol::{Bitfield, Entry, FileId, Manifest, sanitize_name};

use super::storage::{ChunkStorage, chunk_verifies, copy_verified};
use super::store::{Claimed, StoreError, io_at, read_state, write_state};

/// Open files kept per tree: enough for a few concurrent chunks of large files, far below the
/// descriptor limit whatever the tree holds.
const OPEN_FILES: usize = 64;

/// Where each file of a tree is on this host.
#[derive(Debug, Clone)]
pub enum TreeRoot {
    /// The tree's entries live under one directory (a download, or a shared folder).
    Dir(PathBuf),
    /// Each entry's own local path, index for index (a share scanned from one or several
    /// paths, see `scan::Scanned::sources`).
    Listed(Arc<Vec<PathBuf>>),
}

impl TreeRoot {
    /// The local path of entry number `entry`, whose relative path is `rel` (components
    /// already validated).
    pub fn path_of(&self, entry: usize, rel: &str) -> PathBuf {
        match self {
            TreeRoot::Dir(root) => rel.split('/').fold(root.clone(), |p, c| p.join(c)),
            TreeRoot::Listed(paths) => paths.get(entry).cloned().unwrap_or_default(),
        }
    }
}

/// Positional chunk reads and writes over the files of a tree.
pub struct TreeFiles {
    manifest: Arc<Manifest>,
    root: Mutex<TreeRoot>,
    writable: bool,
    /// For a share: each file's size and modification time when it was shared (`None` for a
    /// directory). Set, reads follow links (the sharer chose them) and check the file is
    /// unchanged; unset, links are never followed (a download's tree, an existing output).
    shared_as: Option<Vec<Option<(u64, SystemTime)>>>,
    open: Mutex<OpenFiles>,
}

/// The files a tree keeps open, and what was written since the last `sync`.
#[derive(Default)]
struct OpenFiles {
    files: HashMap<usize, Arc<File>>,
    /// Open files written since the last `sync`.
    written: HashSet<usize>,
    /// A file written since the last `sync` was closed (the cache was full): its data is not
    /// durable until the file system is synced. Holds one such entry, to reach that file system.
    closed_unsynced: Option<usize>,
}

impl OpenFiles {
    /// Closes every file; remembers whether one of them still had data to sync.
    fn close_all(&mut self) {
        if let Some(&e) = self.written.iter().next() {
            self.closed_unsynced = Some(e);
        }
        self.written.clear();
        self.files.clear();
    }
}

/// A file of a shared tree changed on disk after it was shared: its chunks are not served.
#[derive(Debug, thiserror::Error)]
#[error("{} changed on disk after it was shared", .path.display())]
pub struct FileChanged {
    pub path: PathBuf,
    pub entry: usize,
}

impl TreeFiles {
    pub fn new(manifest: Arc<Manifest>, root: TreeRoot, writable: bool) -> Self {
        TreeFiles {
            manifest,
            root: Mutex::new(root),
            writable,
            shared_as: None,
            open: Mutex::new(OpenFiles::default()),
        }
    }

    /// The files of a tree this agent shares, as they are now (call right after hashing):
    /// from then on a read of a file whose size or modification time moved fails with
    /// [`FileChanged`].
    pub fn shared(manifest: Arc<Manifest>, root: TreeRoot) -> io::Result<Self> {
        let mut files = Self::new(manifest, root, false);
        let seen = (0..files.manifest.entries().len())
            .map(|i| match files.manifest.entries()[i].is_dir() {
                true => Ok(None),
                false => {
                    let meta = fs::metadata(files.path_of(i))?;
                    Ok(Some((meta.len(), meta.modified()?)))
                }
            })
            .collect::<io::Result<Vec<_>>>()?;
        files.shared_as = Some(seen);
        Ok(files)
    }

    /// Whether entry `entry` still has the size and modification time it was shared with.
    fn check_unchanged(&self, entry: usize, f: &File) -> io::Result<()> {
        let Some(Some(want)) = self.shared_as.as_ref().map(|s| s[entry]) else {
            return Ok(());
        };
        let meta = f.metadata()?;
        if (meta.len(), meta.modified()?) == want {
            return Ok(());
        }
        Err(io::Error::other(FileChanged {
            path: self.path_of(entry),
            entry,
        }))
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The local path of entry `entry`.
    pub fn path_of(&self, entry: usize) -> PathBuf {
        let rel = &self.manifest.entries()[entry].path;
        self.root
            .lock()
            .expect("tree root lock")
            .path_of(entry, rel)
    }

    /// Moves the tree (after a rename): later reads open files under `root`.
    pub fn rebase(&self, root: TreeRoot) {
        *self.root.lock().expect("tree root lock") = root;
        self.open.lock().expect("open files lock").close_all();
    }

    fn file(&self, entry: usize) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().expect("open files lock");
        if let Some(f) = open.files.get(&entry) {
            return Ok(f.clone());
        }
        let path = self.path_of(entry);
        // Never through a symlink (a link planted in a download's tree must not redirect a read
        // or a write outside it), except in a share, whose links the sharer chose to follow.
        let nofollow = match self.shared_as {
            Some(_) => 0,
            None => libc::O_NOFOLLOW,
        };
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(self.writable)
                .custom_flags(nofollow)
                .open(&path)?,
        );
        if open.files.len() >= OPEN_FILES {
            open.close_all();
        }
        open.files.insert(entry, f.clone());
        Ok(f)
    }

    /// Reads chunk `index` into `buf` (exactly its length).
    pub fn read_chunk(&self, index: u32, buf: &mut [u8]) -> io::Result<()> {
        let place = self.place(index, buf.len())?;
        let f = self.file(place.entry)?;
        f.read_exact_at(buf, place.offset)?;
        // After the read: bytes changed before it show in the modification time.
        self.check_unchanged(place.entry, &f)
    }

    /// Writes verified chunk `index`.
    pub fn write_chunk(&self, index: u32, data: &[u8]) -> io::Result<()> {
        let place = self.place(index, data.len())?;
        let f = self.file(place.entry)?;
        f.write_all_at(data, place.offset)?;
        let mut open = self.open.lock().expect("open files lock");
        if open.files.contains_key(&place.entry) {
            open.written.insert(place.entry);
        } else {
            // Closed by another thread's open meanwhile, before it was marked.
            open.closed_unsynced = Some(place.entry);
        }
        Ok(())
    }

    fn place(&self, index: u32, len: usize) -> io::Result<torrentguard_protocol::ChunkPlace> {
        match self.manifest.place(index) {
            Some(p) if p.len as usize == len => Ok(p),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk {index} of {len} bytes is not in this tree"),
            )),
        }
    }

    /// Makes everything written so far durable: each open file written since the last sync,
    /// and, if a written file was closed before it was synced (a tree with more files than the
    /// cache holds), the whole file system at once (`syncfs`) rather than one fsync per file.
    pub fn sync(&self) -> io::Result<()> {
        let (written, closed) = {
            let mut guard = self.open.lock().expect("open files lock");
            let open = &mut *guard;
            let written: Vec<(usize, Arc<File>)> = open
                .written
                .drain()
                .filter_map(|e| open.files.get(&e).map(|f| (e, f.clone())))
                .collect();
            (written, open.closed_unsynced.take())
        };
        let synced = written
            .iter()
            .try_for_each(|(_, f)| f.sync_data())
            .and_then(|_| match closed {
                Some(entry) => rustix::fs::syncfs(&*self.file(entry)?).map_err(io::Error::from),
                None => Ok(()),
            });
        if synced.is_err() {
            // Not durable: the next sync tries again.
            let mut open = self.open.lock().expect("open files lock");
            open.written.extend(written.iter().map(|(e, _)| *e));
            open.closed_unsynced = open.closed_unsynced.or(closed);
        }
        synced
    }
}

impl ChunkStorage for TreeFiles {
    fn chunk_count(&self) -> u32 {
        self.manifest.chunk_count()
    }

    fn chunk_len(&self, index: u32) -> u32 {
        self.manifest.chunk_len(index)
    }

    fn read_chunk(&self, index: u32, buf: &mut [u8]) -> io::Result<()> {
        TreeFiles::read_chunk(self, index, buf)
    }

    fn write_chunk(&self, index: u32, data: &[u8]) -> io::Result<()> {
        TreeFiles::write_chunk(self, index, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.sync()
    }
}

/// Which entries of a tree a download wants (`--only GLOB`, repeatable).
#[derive(Debug, Clone)]
pub struct Selection {
    globs: Option<GlobSet>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("--only {glob:?}: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("--only {0:?} matches no file of the share")]
    NoMatch(String),
}

impl Selection {
    /// Everything.
    pub fn all() -> Self {
        Selection { globs: None }
    }

    /// Files whose relative path matches any of `globs` (`*` stays within one component, `**`
    /// crosses them; a pattern naming a directory selects everything under it).
    pub fn only(globs: &[String]) -> Result<Self, SelectionError> {
        if globs.is_empty() {
            return Ok(Self::all());
        }
        let mut b = GlobSetBuilder::new();
        for g in globs {
            let glob = |pattern: &str| {
                GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|source| SelectionError::Glob {
                        glob: g.clone(),
                        source,
                    })
            };
            let trimmed = g.trim_end_matches('/');
            b.add(glob(trimmed)?);
            b.add(glob(&format!("{trimmed}/**"))?);
        }
        let set = b.build().map_err(|source| SelectionError::Glob {
            glob: globs.join(" "),
            source,
        })?;
        Ok(Selection { globs: Some(set) })
    }

    pub fn is_all(&self) -> bool {
        self.globs.is_none()
    }

    /// Whether entry `e` is selected. Directories are kept when they are selected themselves
    /// or hold a selected file (see [`Selection::entries`]).
    fn matches(&self, e: &Entry) -> bool {
        self.globs
            .as_ref()
            .is_none_or(|g| g.is_match(e.path.as_str()))
    }

    /// Indices of the selected entries: matching files, matching directories, and every
    /// directory above them. Errors when a glob selects nothing, naming it.
    pub fn entries(&self, m: &Manifest, globs: &[String]) -> Result<Vec<bool>, SelectionError> {
        let entries = m.entries();
        let mut keep: Vec<bool> = entries.iter().map(|e| self.matches(e)).collect();
        if !self.is_all() && !keep.iter().any(|k| *k) {
            return Err(SelectionError::NoMatch(globs.join(" ")));
        }
        let index: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.as_str(), i))
            .collect();
        for i in 0..entries.len() {
            if !keep[i] {
                continue;
            }
            let p = &entries[i].path;
            for (at, _) in p.match_indices('/') {
                if let Some(&d) = index.get(&p[..at]) {
                    keep[d] = true;
                }
            }
        }
        Ok(keep)
    }

    /// The chunks of the selected files.
    pub fn wanted_chunks(&self, m: &Manifest, keep: &[bool]) -> Bitfield {
        let mut wanted = Bitfield::new(m.chunk_count());
        if let Some(layout) = m.tree_layout() {
            for span in layout.spans().iter().filter(|s| keep[s.entry]) {
                for i in span.first_chunk..span.first_chunk + span.chunks {
                    wanted.set(i);
                }
            }
        }
        wanted
    }
}

/// Paths of a tree download in its output directory.
#[derive(Debug, Clone)]
pub struct TreePaths {
    pub dest: PathBuf,
    pub part: PathBuf,
    pub state: PathBuf,
}

impl TreePaths {
    pub fn new(out_dir: &Path, m: &Manifest) -> Result<Self, StoreError> {
        let name = sanitize_name(&m.name)?;
        Ok(TreePaths {
            dest: out_dir.join(name),
            part: out_dir.join(format!(".{name}.part")),
            state: out_dir.join(format!(".{name}.part.tgstate")),
        })
    }
}

/// One tree download: a locked `.<name>.part/` and the chunks verified in it.
pub struct TreeStore {
    pub paths: TreePaths,
    pub files: Arc<TreeFiles>,
    lock: File,
    keep: Vec<bool>,
    file_id: FileId,
}

/// What opening a tree download found.
pub enum TreeOpened {
    /// `DIR/<name>/` already holds every selected file, each chunk verified. Nothing created.
    Complete {
        path: PathBuf,
    },
    Partial(Box<PartialTree>),
}

pub struct PartialTree {
    pub store: TreeStore,
    /// Chunks verified in the `.part` tree (resumed, or taken from an existing destination).
    pub have: Bitfield,
    /// The chunks of the selected files; the others are never fetched.
    pub wanted: Bitfield,
    pub discarded: u32,
    pub from_existing: u32,
}

impl TreeStore {
    /// Opens the download of tree `m` into `out_dir`. An existing `DIR/<name>` that already
    /// holds the selection is [`TreeOpened::Complete`]; one that differs is refused unless
    /// `force`, and with `force` its matching chunks seed the `.part` tree.
    pub fn open(
        out_dir: &Path,
        m: Arc<Manifest>,
        keep: Vec<bool>,
        wanted: Bitfield,
        force: bool,
    ) -> Result<TreeOpened, StoreError> {
        fs::create_dir_all(out_dir).map_err(io_at(out_dir))?;
        if !out_dir.is_dir() {
            return Err(StoreError::NotADir(out_dir.into()));
        }
        let paths = TreePaths::new(out_dir, &m)?;
        let existing = existing_tree(&paths.dest, &m, &keep, &wanted, force)?;
        if let Some(ref e) = existing
            && e.differs.is_none()
        {
            return Ok(TreeOpened::Complete {
                path: paths.dest.clone(),
            });
        }
        let file_id = m.file_id();
        if let Claimed::Other(other) = read_state(&paths.state, &file_id, &m)
            && !force
        {
            return Err(StoreError::OtherPartial {
                part: paths.part,
                other,
            });
        }
        let store = Self::create_part(paths, m.clone(), keep, file_id)?;
        let (mut have, discarded) = store.reverify_claimed(&wanted);
        let mut from_existing = 0;
        if let Some(e) = existing {
            from_existing = store.take_matching(&e.files, &e.matching, &mut have)?;
        }
        Ok(TreeOpened::Partial(Box::new(PartialTree {
            store,
            have,
            wanted,
            discarded,
            from_existing,
        })))
    }

    /// Creates (or reopens) and locks `.<name>.part/` with every selected directory and file.
    fn create_part(
        paths: TreePaths,
        m: Arc<Manifest>,
        keep: Vec<bool>,
        file_id: FileId,
    ) -> Result<Self, StoreError> {
        make_real_dir(&paths.part)?;
        let lock = File::open(&paths.part).map_err(io_at(&paths.part))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(paths.part)),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&paths.part)(e)),
        }
        let root = TreeRoot::Dir(paths.part.clone());
        for (i, (e, _)) in m
            .entries()
            .iter()
            .zip(&keep)
            .enumerate()
            .filter(|(_, (_, k))| **k)
        {
            let path = root.path_of(i, &e.path);
            if e.is_dir() {
                make_real_dir(&path)?;
            } else {
                make_sized_file(&path, e.size)?;
            }
        }
        let files = Arc::new(TreeFiles::new(m, root, true));
        Ok(TreeStore {
            paths,
            files,
            lock,
            keep,
            file_id,
        })
    }

    /// Chunks the state file claims that still match; the others are counted as discarded.
    fn reverify_claimed(&self, wanted: &Bitfield) -> (Bitfield, u32) {
        let m = self.files.manifest();
        let mut have = Bitfield::new(m.chunk_count());
        let Claimed::Chunks(claimed) = read_state(&self.paths.state, &self.file_id, m) else {
            return (have, 0);
        };
        let mut buf = vec![0u8; m.chunk_size as usize];
        let mut discarded = 0;
        for i in claimed.iter_set().filter(|i| wanted.get(*i)) {
            if chunk_verifies(&*self.files, m, i, &mut buf) {
                have.set(i);
            } else {
                discarded += 1;
            }
        }
        (have, discarded)
    }

    /// Copies chunks of an existing destination that match into the `.part` tree.
    fn take_matching(
        &self,
        from: &TreeFiles,
        matching: &Bitfield,
        have: &mut Bitfield,
    ) -> Result<u32, StoreError> {
        let m = self.files.manifest();
        let taken = copy_verified(from, &*self.files, m, matching, have)
            .map_err(io_at(&self.paths.part))?;
        if taken > 0 {
            self.save_state(have)?;
        }
        Ok(taken)
    }

    /// Records `have`: data made durable first, then the state replaced atomically.
    pub fn save_state(&self, have: &Bitfield) -> Result<(), StoreError> {
        self.files.sync().map_err(io_at(&self.paths.part))?;
        write_state(
            &self.paths.state,
            &self.file_id,
            self.files.manifest(),
            have,
        )
    }

    /// Applies the modes, makes the tree durable and renames it to `DIR/<name>/` (replacing an
    /// existing one only with `force`); removes the state file. Checks that the directory put in
    /// place is the one written here.
    pub fn finish(&self, force: bool) -> Result<(), StoreError> {
        self.files.sync().map_err(io_at(&self.paths.part))?;
        self.apply_modes()?;
        let ours = self.lock.metadata().map_err(io_at(&self.paths.part))?;
        let same = |p: &Path| {
            fs::symlink_metadata(p).is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino())
        };
        if !same(&self.paths.part) {
            return Err(StoreError::Replaced(self.paths.part.clone()));
        }
        let displaced = self.move_aside_existing(force)?;
        fs::rename(&self.paths.part, &self.paths.dest).map_err(io_at(&self.paths.dest))?;
        if !same(&self.paths.dest) {
            return Err(StoreError::Replaced(self.paths.dest.clone()));
        }
        self.files.rebase(TreeRoot::Dir(self.paths.dest.clone()));
        if let Some(dir) = self.paths.dest.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        if let Some(old) = displaced {
            fs::remove_dir_all(&old).map_err(io_at(&old))?;
        }
        match fs::remove_file(&self.paths.state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&self.paths.state)(e)),
            _ => Ok(()),
        }
    }

    /// An existing destination is refused without `force`; with it, it is renamed aside (and
    /// removed once the new tree is in place).
    fn move_aside_existing(&self, force: bool) -> Result<Option<PathBuf>, StoreError> {
        let dest = &self.paths.dest;
        match fs::symlink_metadata(dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(dest)(e)),
            Ok(_) if !force => Err(StoreError::Exists {
                path: dest.clone(),
                detail: "it appeared while downloading".into(),
            }),
            Ok(meta) => {
                let aside = self
                    .paths
                    .part
                    .with_extension(format!("old-{}", std::process::id()));
                if meta.is_dir() {
                    fs::rename(dest, &aside).map_err(io_at(dest))?;
                    Ok(Some(aside))
                } else {
                    fs::remove_file(dest).map_err(io_at(dest))?;
                    Ok(None)
                }
            }
        }
    }

    /// Files get their modes; directories last and deepest first, so a read-only directory does
    /// not stop the ones under it from being set.
    fn apply_modes(&self) -> Result<(), StoreError> {
        let entries = self.files.manifest().entries();
        let root = TreeRoot::Dir(self.paths.part.clone());
        let selected = entries.iter().enumerate().filter(|(i, _)| self.keep[*i]);
        let (dirs, files): (Vec<_>, Vec<_>) = selected.partition(|(_, e)| e.is_dir());
        for (i, e) in files.into_iter().chain(dirs.into_iter().rev()) {
            let path = root.path_of(i, &e.path);
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode)).map_err(io_at(&path))?;
        }
        Ok(())
    }

    pub fn unlock(&self) {
        let _ = self.lock.unlock();
    }
}

impl Drop for TreeStore {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// A directory that is really a directory (not a symlink to one); created when missing.
fn make_real_dir(path: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            // Inside our own `.part` tree: something else took the name (a crash mid-way, or a
            // planted link). Replace it, never follow it.
            fs::remove_file(path).map_err(io_at(path))?;
            fs::create_dir(path).map_err(io_at(path))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(path).map_err(io_at(path)),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// A regular file of `size` bytes (sparse when new), never through a symlink.
fn make_sized_file(path: &Path, size: u64) -> Result<(), StoreError> {
    if let Ok(m) = fs::symlink_metadata(path)
        && !m.is_file()
    {
        if m.is_dir() {
            fs::remove_dir_all(path).map_err(io_at(path))?;
        } else {
            fs::remove_file(path).map_err(io_at(path))?;
        }
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_at(path))?;
    if f.metadata().map_err(io_at(path))?.len() != size {
        f.set_len(size).map_err(io_at(path))?;
    }
    Ok(())
}

/// An existing destination tree compared with the selection, chunk by chunk.
struct ExistingTree {
    files: TreeFiles,
    matching: Bitfield,
    differs: Option<String>,
}

fn existing_tree(
    dest: &Path,
    m: &Arc<Manifest>,
    keep: &[bool],
    wanted: &Bitfield,
    force: bool,
) -> Result<Option<ExistingTree>, StoreError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(dest)(e)),
        Ok(meta) if !meta.is_dir() => {
            return if force {
                Ok(None)
            } else {
                Err(StoreError::Exists {
                    path: dest.into(),
                    detail: "not a directory".into(),
                })
            };
        }
        Ok(_) => {}
    }
    let files = TreeFiles::new(m.clone(), TreeRoot::Dir(dest.into()), false);
    let mut e = ExistingTree {
        matching: Bitfield::new(m.chunk_count()),
        differs: shape_difference(&files, keep),
        files,
    };
    // Without force the first difference settles it; with force every chunk counts.
    if e.differs.is_some() && !force {
        return Err(refusal(dest, e.differs));
    }
    let mut buf = vec![0u8; m.chunk_size as usize];
    for i in wanted.iter_set() {
        if chunk_verifies(&e.files, m, i, &mut buf) {
            e.matching.set(i);
        } else if e.differs.is_none() {
            e.differs = Some(format!("chunk {i} of {} differs", m.chunk_count()));
            if !force {
                return Err(refusal(dest, e.differs));
            }
        }
    }
    Ok(Some(e))
}

fn refusal(dest: &Path, differs: Option<String>) -> StoreError {
    StoreError::Exists {
        path: dest.into(),
        detail: differs.unwrap_or_default(),
    }
}

/// Why an existing tree is not the selection's shape (a missing entry, a wrong kind or size).
fn shape_difference(files: &TreeFiles, keep: &[bool]) -> Option<String> {
    entry_differences(files, keep).next()
}

/// Each selected entry of the tree under `files` that is missing, of the wrong kind, or (a
/// file) of the wrong size, said in words.
pub(crate) fn entry_differences<'a>(
    files: &'a TreeFiles,
    keep: &'a [bool],
) -> impl Iterator<Item = String> + 'a {
    let entries = files.manifest().entries();
    entries
        .iter()
        .enumerate()
        .filter(|(i, _)| keep[*i])
        .filter_map(|(i, e)| match fs::symlink_metadata(files.path_of(i)) {
            Err(_) => Some(format!("{} is missing", e.path)),
            Ok(meta) if e.is_dir() != meta.is_dir() || (!e.is_dir() && !meta.is_file()) => {
                Some(format!("{} is not a {}", e.path, kind_name(e)))
            }
            Ok(meta) if !e.is_dir() && meta.len() != e.size => Some(format!(
                "{} has {} bytes, not {}",
                e.path,
                meta.len(),
                e.size
            )),
            Ok(_) => None,
        })
}

fn kind_name(e: &Entry) -> &'static str {
    if e.is_dir() { "directory" } else { "file" }
}

#[cfg(test)]
mod tests;
