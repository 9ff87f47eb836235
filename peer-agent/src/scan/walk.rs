//! The walk: which entries a tree has, under which names, from which local paths, and what is
//! left out. Nothing is read here, only listed and checked.

use std::fmt;
use std::fs::{self, FileType, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use torrentguard_protocol::Entry;
use torrentguard_protocol::sanitize_name;
use torrentguard_protocol::tree::{
    MAX_ENTRIES, MODE_MASK, TreeError, check_path, validate_entries,
};

use super::ScanError;

/// Something the walk left out of the tree, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanWarning {
    /// Not a regular file or directory, or a symbolic link that is not followed.
    Skipped { path: PathBuf, what: &'static str },
    /// A followed link whose target is outside the shared directory.
    LeavesRoot { path: PathBuf, target: PathBuf },
    /// A followed link to a directory it is itself inside of.
    Loop { path: PathBuf, target: PathBuf },
    /// A link that cannot be followed (dangling, or unreadable).
    Broken { path: PathBuf, error: String },
}

impl fmt::Display for ScanWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanWarning::Skipped { path, what } => write!(f, "skipped {}: {what}", path.display()),
            ScanWarning::LeavesRoot { path, target } => write!(
                f,
                "skipped {}: a symbolic link to {}, which leaves the shared directory",
                path.display(),
                target.display()
            ),
            ScanWarning::Loop { path, target } => write!(
                f,
                "skipped {}: a symbolic link to {}, a directory it is inside of (it would loop)",
                path.display(),
                target.display()
            ),
            ScanWarning::Broken { path, error } => write!(
                f,
                "skipped {}: a symbolic link that cannot be followed ({error})",
                path.display()
            ),
        }
    }
}

/// The walk's result: entries sorted as the protocol wants them, each with its local path.
pub(super) struct Walked {
    pub name: String,
    pub found: Vec<(Entry, PathBuf)>,
    pub warnings: Vec<ScanWarning>,
}

struct Walker {
    follow_symlinks: bool,
    found: Vec<(Entry, PathBuf)>,
    warnings: Vec<ScanWarning>,
    /// (device, inode) of the directories being walked, outermost first: a followed link back
    /// to one of them would loop.
    ancestors: Vec<(u64, u64)>,
}

/// Lists `paths` (see [`super::scan`]) and checks every name and the whole list.
pub(super) fn walk(
    paths: &[PathBuf],
    follow_symlinks: bool,
    name: Option<&str>,
) -> Result<Walked, ScanError> {
    let first = paths.first().ok_or(ScanError::NoPaths)?;
    let name = match name {
        Some(n) => n.to_string(),
        None => file_name(first)?,
    };
    sanitize_name(&name).map_err(|source| ScanError::ShareName {
        name: name.clone(),
        source,
    })?;
    let mut w = Walker {
        follow_symlinks,
        found: Vec::new(),
        warnings: Vec::new(),
        ancestors: Vec::new(),
    };
    // Paths given by the user are followed whatever the option, as `cp -r` and `find -H` do.
    let metas = paths
        .iter()
        .map(|p| fs::metadata(p).map_err(|e| ScanError::io(p, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if let ([dir], [meta]) = (paths, metas.as_slice())
        && meta.is_dir()
    {
        w.walk_root(dir, "", meta)?;
    } else {
        for (p, meta) in paths.iter().zip(&metas) {
            w.add_top(p, meta)?;
        }
    }
    w.finish(name, first)
}

impl Walker {
    /// One of several paths: a top-level entry named after its file name.
    fn add_top(&mut self, path: &Path, meta: &Metadata) -> Result<(), ScanError> {
        let rel = file_name(path)?;
        self.check(path, &rel)?;
        if meta.is_dir() {
            self.push(Entry::dir(rel.clone(), mode(meta)), path)?;
            self.walk_root(path, &rel, meta)
        } else if meta.is_file() {
            self.push(Entry::file(rel, meta.len(), mode(meta)), path)
        } else {
            Err(ScanError::NotShareable(path.to_path_buf()))
        }
    }

    /// Walks a shared directory: links are followed only to targets inside `dir`.
    fn walk_root(&mut self, dir: &Path, rel: &str, meta: &Metadata) -> Result<(), ScanError> {
        let root = fs::canonicalize(dir).map_err(|e| ScanError::io(dir, e))?;
        self.ancestors.clear();
        self.ancestors.push((meta.dev(), meta.ino()));
        self.walk_dir(dir, rel, &root)
    }

    fn walk_dir(&mut self, dir: &Path, rel: &str, root: &Path) -> Result<(), ScanError> {
        let io = |e| ScanError::io(dir, e);
        for item in fs::read_dir(dir).map_err(io)? {
            let item = item.map_err(io)?;
            let path = item.path();
            let file_name = item.file_name();
            let Some(name) = file_name.to_str() else {
                return Err(ScanError::NotUtf8(path));
            };
            let rel = match rel {
                "" => name.to_string(),
                _ => format!("{rel}/{name}"),
            };
            // A directory entry's metadata does not follow links (lstat).
            let meta = item.metadata().map_err(|e| ScanError::io(&path, e))?;
            self.add(path, rel, meta, root)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        path: PathBuf,
        rel: String,
        meta: Metadata,
        root: &Path,
    ) -> Result<(), ScanError> {
        let meta = if meta.file_type().is_symlink() {
            match self.follow(&path, root) {
                Some(target) => target,
                None => return Ok(()),
            }
        } else {
            meta
        };
        if meta.is_dir() {
            let key = (meta.dev(), meta.ino());
            if self.ancestors.contains(&key) {
                let target = fs::canonicalize(&path).unwrap_or_default();
                self.warnings.push(ScanWarning::Loop { path, target });
                return Ok(());
            }
            self.check(&path, &rel)?;
            self.push(Entry::dir(rel.clone(), mode(&meta)), &path)?;
            self.ancestors.push(key);
            self.walk_dir(&path, &rel, root)?;
            self.ancestors.pop();
        } else if meta.is_file() {
            self.check(&path, &rel)?;
            self.push(Entry::file(rel, meta.len(), mode(&meta)), &path)?;
        } else {
            let what = kind_name(meta.file_type());
            self.warnings.push(ScanWarning::Skipped { path, what });
        }
        Ok(())
    }

    /// The target's metadata of a link to follow, or `None` (with a warning) to skip it.
    fn follow(&mut self, path: &Path, root: &Path) -> Option<Metadata> {
        let path = path.to_path_buf();
        if !self.follow_symlinks {
            self.warnings.push(ScanWarning::Skipped {
                path,
                what: "a symbolic link (not followed)",
            });
            return None;
        }
        let broken = |e: std::io::Error| ScanWarning::Broken {
            path: path.clone(),
            error: e.to_string(),
        };
        let target = match fs::canonicalize(&path) {
            Ok(t) => t,
            Err(e) => {
                self.warnings.push(broken(e));
                return None;
            }
        };
        if !target.starts_with(root) {
            self.warnings.push(ScanWarning::LeavesRoot { path, target });
            return None;
        }
        fs::metadata(&target)
            .map_err(|e| self.warnings.push(broken(e)))
            .ok()
    }

    /// A name the protocol refuses is an error naming the local path, before any hashing.
    fn check(&self, path: &Path, rel: &str) -> Result<(), ScanError> {
        check_path(rel).map_err(|source| ScanError::Refused {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Adds an entry; stops the walk as soon as the tree has more than the protocol allows,
    /// which also bounds a tree that links multiply inside itself.
    fn push(&mut self, entry: Entry, path: &Path) -> Result<(), ScanError> {
        if self.found.len() >= MAX_ENTRIES {
            return Err(ScanError::Refused {
                path: path.to_path_buf(),
                source: TreeError::TooManyEntries(self.found.len() + 1),
            });
        }
        self.found.push((entry, path.to_path_buf()));
        Ok(())
    }

    /// Sorts the entries and checks the whole list (duplicates, case collisions).
    fn finish(mut self, name: String, first: &Path) -> Result<Walked, ScanError> {
        self.found
            .sort_unstable_by(|a, b| a.0.path.as_bytes().cmp(b.0.path.as_bytes()));
        // Only top-level names can repeat: two paths given with the same file name.
        if let Some(w) = self.found.windows(2).find(|w| w[0].0.path == w[1].0.path) {
            return Err(ScanError::SameName {
                name: w[0].0.path.clone(),
                first: w[0].1.clone(),
                second: w[1].1.clone(),
            });
        }
        let entries: Vec<Entry> = self.found.iter().map(|(e, _)| e.clone()).collect();
        if let Err(source) = validate_entries(&entries) {
            let path = match &source {
                TreeError::CaseCollision(_, second) => self.local_path(second),
                _ => None,
            };
            return Err(ScanError::Refused {
                path: path.unwrap_or_else(|| first.to_path_buf()),
                source,
            });
        }
        Ok(Walked {
            name,
            found: self.found,
            warnings: self.warnings,
        })
    }

    fn local_path(&self, rel: &str) -> Option<PathBuf> {
        let at = self
            .found
            .binary_search_by(|(e, _)| e.path.as_bytes().cmp(rel.as_bytes()))
            .ok()?;
        Some(self.found[at].1.clone())
    }
}

/// A path's file name, resolving `.` and `..` to the directory they name.
fn file_name(path: &Path) -> Result<String, ScanError> {
    let canonical;
    let name = match path.file_name() {
        Some(n) => n,
        None => {
            canonical = fs::canonicalize(path).map_err(|e| ScanError::io(path, e))?;
            canonical
                .file_name()
                .ok_or_else(|| ScanError::NoName(path.to_path_buf()))?
        }
    };
    name.to_str()
        .map(str::to_string)
        .ok_or_else(|| ScanError::NotUtf8(path.to_path_buf()))
}

/// Permission bits only: set-id and sticky bits are not part of a tree.
fn mode(meta: &Metadata) -> u32 {
    meta.mode() & MODE_MASK
}

fn kind_name(t: FileType) -> &'static str {
    if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file or directory"
    }
}
