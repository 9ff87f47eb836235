//! Directory shares: the entries of a tree manifest, their rules, and where each chunk lives.
//!
//! A directory share is one manifest with one id. Its `files` list names every directory and
//! regular file under the shared root by relative, `/`-separated path, sorted by the bytes of
//! that path. Each regular file is cut into its own chunks (a chunk never spans two files, so
//! identical files and identical chunks dedupe), and the manifest's `chunks` list is every file's
//! chunk digests, file after file in entry order. A chunk's global index therefore maps to one
//! file and one offset in it; [`TreeLayout`] does that mapping.
//!
//! Everything here is checked before a byte is written: every path component is sanitised like a
//! single file's name, and a tree that would escape the output directory, collide on a
//! case-insensitive file system, put a file where a directory must be, or exceed the bounds below
//! is refused.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashAlgo};
use crate::name::{NameError, sanitize_name};

/// Most entries (files and directories) in one tree.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Deepest path, in components.
pub const MAX_DEPTH: usize = 64;
/// Longest relative path, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Permission bits a tree may carry: rwx for user, group and others. Set-id and sticky bits from
/// the network are refused.
pub const MODE_MASK: u32 = 0o777;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    #[default]
    File,
    Dir,
}

impl EntryKind {
    fn is_file(&self) -> bool {
        *self == EntryKind::File
    }

    fn code(self) -> u8 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
        }
    }
}

/// One file or directory of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative path, components joined by `/`.
    pub path: String,
    #[serde(default, skip_serializing_if = "EntryKind::is_file")]
    pub kind: EntryKind,
    /// Bytes; 0 for a directory.
    #[serde(default)]
    pub size: u64,
    /// Permission bits (`MODE_MASK`).
    pub mode: u32,
}

impl Entry {
    pub fn file(path: impl Into<String>, size: u64, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode,
        }
    }

    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            size: 0,
            mode,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    /// The path's components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/')
    }

    /// Chunks of this entry at `chunk_size`: none for a directory or an empty file.
    pub fn chunk_count(&self, chunk_size: u32) -> u64 {
        match self.kind {
            EntryKind::Dir => 0,
            EntryKind::File => self.size.div_ceil(chunk_size as u64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("the tree lists {0} entries; the limit is {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("unsafe path {path:?}: {source}")]
    Component {
        path: String,
        #[source]
        source: NameError,
    },
    #[error("path {0:?} is longer than {MAX_PATH_LEN} bytes")]
    PathTooLong(String),
    #[error("path {0:?} is deeper than {MAX_DEPTH} components")]
    TooDeep(String),
    #[error("entries are not in canonical order (sorted, no duplicates) at {0:?}")]
    Order(String),
    #[error("{0:?} and {1:?} are the same name on a case-insensitive file system")]
    CaseCollision(String, String),
    #[error("{path:?} needs {file:?} to be a directory, but the tree lists it as a file")]
    FileAsDirectory { path: String, file: String },
    #[error("entry {path:?} has mode {mode:o}; only permission bits (0..=777) are allowed")]
    Mode { path: String, mode: u32 },
    #[error("directory {0:?} has a size")]
    DirectorySize(String),
}

/// Checks every rule an entry list must meet, before anything is written.
pub fn validate_entries(entries: &[Entry]) -> Result<(), TreeError> {
    if entries.len() > MAX_ENTRIES {
        return Err(TreeError::TooManyEntries(entries.len()));
    }
    let mut folded: HashSet<String> = HashSet::with_capacity(entries.len());
    let mut files: HashSet<&str> = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        check_path(&e.path)?;
        if i > 0 && entries[i - 1].path.as_bytes() >= e.path.as_bytes() {
            return Err(TreeError::Order(e.path.clone()));
        }
        if e.mode & !MODE_MASK != 0 {
            return Err(TreeError::Mode {
                path: e.path.clone(),
                mode: e.mode,
            });
        }
        if e.is_dir() && e.size != 0 {
            return Err(TreeError::DirectorySize(e.path.clone()));
        }
        if !folded.insert(fold_case(&e.path)) {
            let other = entries[..i]
                .iter()
                .find(|o| fold_case(&o.path) == fold_case(&e.path))
                .map_or_else(String::new, |o| o.path.clone());
            return Err(TreeError::CaseCollision(other, e.path.clone()));
        }
        for ancestor in ancestors(&e.path) {
            if files.contains(ancestor) {
                return Err(TreeError::FileAsDirectory {
                    path: e.path.clone(),
                    file: ancestor.to_string(),
                });
            }
        }
        if !e.is_dir() {
            files.insert(&e.path);
        }
    }
    Ok(())
}

/// A relative path from the network: bounded, and every component a safe name. Absolute paths,
/// `..`, `.`, empty components and backslashes all fail here.
pub fn check_path(path: &str) -> Result<(), TreeError> {
    if path.len() > MAX_PATH_LEN {
        return Err(TreeError::PathTooLong(path.chars().take(64).collect()));
    }
    let mut depth = 0;
    for c in path.split('/') {
        depth += 1;
        sanitize_name(c).map_err(|source| TreeError::Component {
            path: path.to_string(),
            source,
        })?;
    }
    if depth > MAX_DEPTH {
        return Err(TreeError::TooDeep(path.to_string()));
    }
    Ok(())
}

/// The case-insensitive form two names collide under (NTFS, APFS and FAT by default).
fn fold_case(path: &str) -> String {
    path.to_lowercase()
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(at, _)| &path[..at])
}

/// The content digest of a tree: the digest of its chunk digests in order. A tree's bytes are
/// verified chunk by chunk; this value only commits the manifest to the whole list.
pub fn tree_digest(hash: HashAlgo, chunks: &[Digest]) -> Digest {
    let mut h = hash.hasher();
    for c in chunks {
        h.update(c.as_bytes());
    }
    h.finish()
}

/// Appends the entries' canonical encoding (see `Manifest::canonical_encoding`).
pub(crate) fn encode_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.push(e.kind.code());
        out.extend_from_slice(&(e.path.len() as u32).to_be_bytes());
        out.extend_from_slice(e.path.as_bytes());
        out.extend_from_slice(&e.size.to_be_bytes());
        out.extend_from_slice(&e.mode.to_be_bytes());
    }
}

/// Where one chunk of a share lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// Index of the file in the manifest's entries (0 for a single-file share).
    pub entry: usize,
    /// Byte offset of the chunk in that file.
    pub offset: u64,
    pub len: u32,
}

/// The span of global chunk indices one file owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    pub entry: usize,
    pub first_chunk: u32,
    pub chunks: u32,
}

/// Maps a tree's global chunk indices to files. Built once per manifest (O(entries)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeLayout {
    /// Files with at least one chunk, in chunk order.
    spans: Vec<FileSpan>,
    chunk_size: u32,
    sizes: Vec<u64>,
}

impl TreeLayout {
    /// The layout of `entries` at `chunk_size`. Expects validated entries.
    pub fn new(entries: &[Entry], chunk_size: u32) -> Self {
        let mut spans = Vec::new();
        let mut sizes = Vec::new();
        let mut next = 0u32;
        for (entry, e) in entries.iter().enumerate() {
            let chunks = e.chunk_count(chunk_size) as u32;
            if chunks > 0 {
                spans.push(FileSpan {
                    entry,
                    first_chunk: next,
                    chunks,
                });
                sizes.push(e.size);
                next += chunks;
            }
        }
        TreeLayout {
            spans,
            chunk_size,
            sizes,
        }
    }

    /// Total chunks.
    pub fn chunk_count(&self) -> u32 {
        self.spans.last().map_or(0, |s| s.first_chunk + s.chunks)
    }

    /// Where chunk `index` lives, or `None` past the end.
    pub fn locate(&self, index: u32) -> Option<ChunkPlace> {
        let at = self
            .spans
            .partition_point(|s| s.first_chunk + s.chunks <= index);
        let span = self.spans.get(at)?;
        let offset = (index - span.first_chunk) as u64 * self.chunk_size as u64;
        let len = (self.sizes[at] - offset).min(self.chunk_size as u64) as u32;
        Some(ChunkPlace {
            entry: span.entry,
            offset,
            len,
        })
    }

    /// The span of the file at entry index `entry`, if it has chunks.
    pub fn span_of(&self, entry: usize) -> Option<FileSpan> {
        let at = self.spans.partition_point(|s| s.entry < entry);
        self.spans.get(at).filter(|s| s.entry == entry).copied()
    }

    /// Files with chunks, in chunk order.
    pub fn spans(&self) -> &[FileSpan] {
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &str, size: u64) -> Entry {
        Entry::file(p, size, 0o644)
    }

    #[test]
    fn accepts_an_ordinary_tree() {
        let t = vec![
            f("README", 3),
            Entry::dir("data", 0o755),
            f("data/a.bin", 10),
            Entry::dir("empty", 0o700),
        ];
        validate_entries(&t).unwrap();
    }

    #[test]
    fn refuses_escapes_and_odd_components() {
        for p in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "a/./b",
            "a\\b",
            "",
            "a/",
            "a/b\u{202e}c",
        ] {
            let err = validate_entries(&[f(p, 1)]).unwrap_err();
            assert!(matches!(err, TreeError::Component { .. }), "{p:?}: {err}");
        }
    }

    #[test]
    fn refuses_case_collisions_duplicates_and_disorder() {
        let e = validate_entries(&[f("Data.txt", 1), f("data.txt", 1)]).unwrap_err();
        assert_eq!(
            e,
            TreeError::CaseCollision("Data.txt".into(), "data.txt".into())
        );
        let e = validate_entries(&[f("A", 1), Entry::dir("a", 0o755)]).unwrap_err();
        assert!(matches!(e, TreeError::CaseCollision(..)));
        assert!(matches!(
            validate_entries(&[f("a", 1), f("a", 1)]),
            Err(TreeError::Order(_))
        ));
        assert!(matches!(
            validate_entries(&[f("b", 1), f("a", 1)]),
            Err(TreeError::Order(_))
        ));
    }

    #[test]
    fn refuses_a_file_used_as_a_directory() {
        let e = validate_entries(&[f("a", 1), f("a/b", 1)]).unwrap_err();
        assert_eq!(
            e,
            TreeError::FileAsDirectory {
                path: "a/b".into(),
                file: "a".into()
            }
        );
    }

    #[test]
    fn refuses_bounds_modes_and_sized_directories() {
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(matches!(
            validate_entries(&[f(&deep, 1)]),
            Err(TreeError::TooDeep(_))
        ));
        let long = vec!["x".repeat(200); 25].join("/");
        assert!(matches!(
            validate_entries(&[f(&long, 1)]),
            Err(TreeError::PathTooLong(_))
        ));
        assert!(matches!(
            validate_entries(&[Entry::file("s", 1, 0o4755)]),
            Err(TreeError::Mode { .. })
        ));
        let mut d = Entry::dir("d", 0o755);
        d.size = 5;
        assert_eq!(
            validate_entries(&[d]),
            Err(TreeError::DirectorySize("d".into()))
        );
        let many: Vec<Entry> = (0..=MAX_ENTRIES)
            .map(|i| f(&format!("{i:08}"), 0))
            .collect();
        assert_eq!(
            validate_entries(&many),
            Err(TreeError::TooManyEntries(MAX_ENTRIES + 1))
        );
    }

    #[test]
    fn layout_maps_chunks_to_files_without_spanning() {
        let t = vec![
            f("a", 40_000),
            f("b", 0),
            Entry::dir("c", 0o755),
            f("c/d", 16_384),
            f("e", 1),
        ];
        let l = TreeLayout::new(&t, 16_384);
        assert_eq!(l.chunk_count(), 3 + 1 + 1);
        let place = |i| l.locate(i).unwrap();
        assert_eq!(
            place(0),
            ChunkPlace {
                entry: 0,
                offset: 0,
                len: 16_384
            }
        );
        assert_eq!(place(2).len, 40_000 - 2 * 16_384);
        assert_eq!(place(2).offset, 2 * 16_384);
        assert_eq!(
            place(3),
            ChunkPlace {
                entry: 3,
                offset: 0,
                len: 16_384
            }
        );
        assert_eq!(
            place(4),
            ChunkPlace {
                entry: 4,
                offset: 0,
                len: 1
            }
        );
        assert_eq!(l.locate(5), None);
        assert_eq!(l.span_of(1), None);
        assert_eq!(l.span_of(3).unwrap().first_chunk, 3);
    }

    #[test]
    fn entry_json_omits_the_default_kind() {
        let j = serde_json::to_string(&f("a", 1)).unwrap();
        assert_eq!(j, r#"{"path":"a","size":1,"mode":420}"#);
        let d: Entry = serde_json::from_str(r#"{"path":"d","kind":"dir","mode":493}"#).unwrap();
        assert_eq!(d, Entry::dir("d", 0o755));
        assert!(serde_json::from_str::<Entry>(r#"{"path":"d","mode":1,"x":1}"#).is_err());
    }
}
