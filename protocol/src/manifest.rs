//! The manifest of a shared file, its canonical encoding and the file id derived from it.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashAlgo};
use crate::name::{NameError, sanitize_name};
use crate::tree::{
    ChunkPlace, Entry, TreeError, TreeLayout, encode_entries, tree_digest, validate_entries,
};

/// Default chunk size: 256 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest file a manifest may describe: 16 TiB.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// Most chunks a manifest may list. Bounds the manifest (≈ 70 MB of JSON at the limit) and the
/// bitfield (128 KiB); at the default chunk size it allows 256 GiB files.
pub const MAX_CHUNKS: u32 = 1 << 20;

/// A share's description: what a downloader needs to fetch and verify it.
///
/// A single file has no `files`; `file_hash` is its SHA-256 as `sha256sum` prints it. A
/// directory share (a tree) lists its entries in `files`; `size` is the sum of its files,
/// `chunks` every file's chunk digests in entry order, and `file_hash` the digest of those chunk
/// digests (`tree::tree_digest`). Build manifests with [`Manifest::single`] or
/// [`Manifest::tree`]; treat one as read-only once its geometry has been asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub hash: HashAlgo,
    pub chunks: Vec<Digest>,
    pub file_hash: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<Entry>>,
    #[serde(skip)]
    layout: LayoutCache,
}

/// A tree's chunk layout, computed on first use. Never part of equality or of the encoding.
#[derive(Debug, Clone, Default)]
struct LayoutCache(OnceLock<Arc<TreeLayout>>);

impl PartialEq for LayoutCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LayoutCache {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("unsafe file name: {0}")]
    Name(#[from] NameError),
    #[error("chunk size {0} is not a power of two between 16 KiB and 16 MiB")]
    ChunkSize(u32),
    #[error("file size {0} exceeds the limit of {MAX_FILE_SIZE} bytes")]
    FileSize(u64),
    #[error(
        "{got} chunk digests listed; a {size}-byte file in {chunk_size}-byte chunks has {expected}"
    )]
    ChunkCount {
        got: usize,
        expected: u64,
        size: u64,
        chunk_size: u32,
    },
    #[error("a {algo} digest is {expected} bytes, but {what} is {got}")]
    DigestLength {
        algo: HashAlgo,
        what: String,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("the tree's sizes add up to {sum} bytes, but the manifest says {size}")]
    TreeSize { sum: u64, size: u64 },
    #[error("the tree's content digest does not match its chunk digests")]
    TreeDigest,
    #[error("file id mismatch: the manifest hashes to {computed}, not {claimed}")]
    IdMismatch { claimed: FileId, computed: FileId },
}

impl Manifest {
    /// A single file's manifest.
    pub fn single(
        name: impl Into<String>,
        size: u64,
        chunk_size: u32,
        hash: HashAlgo,
        chunks: Vec<Digest>,
        file_hash: Digest,
    ) -> Self {
        Manifest {
            name: name.into(),
            size,
            chunk_size,
            hash,
            chunks,
            file_hash,
            files: None,
            layout: LayoutCache::default(),
        }
    }

    /// A directory share's manifest: `entries` in canonical order, `chunks` every file's chunk
    /// digests in entry order. Size and content digest are derived.
    pub fn tree(
        name: impl Into<String>,
        chunk_size: u32,
        hash: HashAlgo,
        entries: Vec<Entry>,
        chunks: Vec<Digest>,
    ) -> Self {
        let size = entries.iter().map(|e| e.size).sum();
        Manifest {
            name: name.into(),
            size,
            chunk_size,
            hash,
            file_hash: tree_digest(hash, &chunks),
            chunks,
            files: Some(entries),
            layout: LayoutCache::default(),
        }
    }

    /// Checks every field: safe name, chunk size, size bound, chunk count, digest lengths.
    pub fn validate(&self) -> Result<(), ManifestError> {
        sanitize_name(&self.name)?;
        check_chunk_size(self.chunk_size)?;
        if self.size > MAX_FILE_SIZE {
            return Err(ManifestError::FileSize(self.size));
        }
        let expected = match &self.files {
            None => self.size.div_ceil(self.chunk_size as u64),
            Some(entries) => self.validate_tree(entries)?,
        };
        if expected > MAX_CHUNKS as u64 || self.chunks.len() as u64 != expected {
            return Err(ManifestError::ChunkCount {
                got: self.chunks.len(),
                expected,
                size: self.size,
                chunk_size: self.chunk_size,
            });
        }
        let want = self.hash.digest_len();
        let bad = |what: String, got: usize| ManifestError::DigestLength {
            algo: self.hash,
            what,
            expected: want,
            got,
        };
        if self.file_hash.len() != want {
            return Err(bad("file_hash".into(), self.file_hash.len()));
        }
        if let Some((i, d)) = self
            .chunks
            .iter()
            .enumerate()
            .find(|(_, d)| d.len() != want)
        {
            return Err(bad(format!("chunks[{i}]"), d.len()));
        }
        if self.is_tree() && self.file_hash != tree_digest(self.hash, &self.chunks) {
            return Err(ManifestError::TreeDigest);
        }
        Ok(())
    }

    /// A tree's entry rules and sizes; returns how many chunks it must list.
    fn validate_tree(&self, entries: &[Entry]) -> Result<u64, ManifestError> {
        validate_entries(entries)?;
        let mut sum = 0u64;
        let mut chunks = 0u64;
        for e in entries {
            sum = sum.saturating_add(e.size);
            chunks += e.chunk_count(self.chunk_size);
        }
        if sum != self.size {
            return Err(ManifestError::TreeSize {
                sum,
                size: self.size,
            });
        }
        Ok(chunks)
    }

    /// Validates the manifest and checks that it hashes to `claimed`.
    pub fn verify(&self, claimed: &FileId) -> Result<(), ManifestError> {
        self.validate()?;
        let computed = self.file_id();
        if &computed != claimed {
            return Err(ManifestError::IdMismatch {
                claimed: *claimed,
                computed,
            });
        }
        Ok(())
    }

    /// The canonical encoding the file id is computed from. Binary and unambiguous: every
    /// variable-length field is length-prefixed, integers are big-endian.
    ///
    /// A single file's encoding is unchanged since the first release, so its id is too. A tree
    /// has its own tag and adds its entries (kind, path, size, mode) before the chunk digests.
    pub fn canonical_encoding(&self) -> Vec<u8> {
        let dl = self.hash.digest_len();
        let mut out = Vec::with_capacity(64 + self.name.len() + (self.chunks.len() + 1) * dl);
        let tag: &[u8] = match self.files {
            None => b"torrentguard-manifest-v1\0",
            Some(_) => b"torrentguard-tree-v1\0",
        };
        out.extend_from_slice(tag);
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.push(self.hash.code());
        if let Some(entries) = &self.files {
            encode_entries(&mut out, entries);
        }
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for c in &self.chunks {
            out.push(c.len() as u8);
            out.extend_from_slice(c.as_bytes());
        }
        out.push(self.file_hash.len() as u8);
        out.extend_from_slice(self.file_hash.as_bytes());
        out
    }

    /// `file_id` = SHA-256 of the canonical encoding.
    pub fn file_id(&self) -> FileId {
        let d = HashAlgo::Sha256.digest(&self.canonical_encoding());
        let mut id = [0u8; 32];
        id.copy_from_slice(d.as_bytes());
        FileId(id)
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Byte offset of chunk `index` in its file.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        match self.tree_layout() {
            None => index as u64 * self.chunk_size as u64,
            Some(l) => l.locate(index).map_or(0, |p| p.offset),
        }
    }

    /// Length of chunk `index`: the chunk size, except for a shorter last chunk of a file; 0
    /// past the end.
    pub fn chunk_len(&self, index: u32) -> u32 {
        match self.tree_layout() {
            None => {
                let start = index as u64 * self.chunk_size as u64;
                (self.size.saturating_sub(start)).min(self.chunk_size as u64) as u32
            }
            Some(l) => l.locate(index).map_or(0, |p| p.len),
        }
    }

    /// Which file chunk `index` belongs to, where in it, and how long it is.
    pub fn place(&self, index: u32) -> Option<ChunkPlace> {
        match self.tree_layout() {
            None => (index < self.chunk_count()).then(|| ChunkPlace {
                entry: 0,
                offset: self.chunk_offset(index),
                len: self.chunk_len(index),
            }),
            Some(l) => l.locate(index),
        }
    }

    /// Whether this is a directory share.
    pub fn is_tree(&self) -> bool {
        self.files.is_some()
    }

    /// A tree's entries (empty for a single file).
    pub fn entries(&self) -> &[Entry] {
        self.files.as_deref().unwrap_or(&[])
    }

    /// Number of regular files the share holds.
    pub fn file_count(&self) -> usize {
        match &self.files {
            None => 1,
            Some(e) => e.iter().filter(|e| !e.is_dir()).count(),
        }
    }

    /// A tree's chunk layout (computed once), `None` for a single file.
    pub fn tree_layout(&self) -> Option<&TreeLayout> {
        let entries = self.files.as_ref()?;
        Some(
            self.layout
                .0
                .get_or_init(|| Arc::new(TreeLayout::new(entries, self.chunk_size))),
        )
    }

    /// Whether `data` is chunk `index`.
    pub fn chunk_matches(&self, index: u32, data: &[u8]) -> bool {
        self.chunks.get(index as usize).is_some_and(|want| {
            data.len() == self.chunk_len(index) as usize && self.hash.digest(data) == *want
        })
    }
}

pub fn check_chunk_size(chunk_size: u32) -> Result<(), ManifestError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(ManifestError::ChunkSize(chunk_size))
    }
}

/// A file's id: SHA-256 of its manifest's canonical encoding, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a file id is 64 lowercase hex digits")]
pub struct FileIdError;

impl FileId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl FromStr for FileId {
    type Err = FileIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(FileIdError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| FileIdError)?;
        Ok(FileId(out))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

impl Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::EntryKind;
    use proptest::prelude::*;

    /// A valid manifest for `data`, built without the streaming hasher.
    pub fn manifest_for(name: &str, data: &[u8], chunk_size: u32, hash: HashAlgo) -> Manifest {
        Manifest::single(
            name,
            data.len() as u64,
            chunk_size,
            hash,
            data.chunks(chunk_size as usize)
                .map(|c| hash.digest(c))
                .collect(),
            hash.digest(data),
        )
    }

    #[test]
    fn valid_manifest_and_geometry() {
        let data = vec![7u8; 40_000];
        let m = manifest_for("f.bin", &data, 16384, HashAlgo::Sha256);
        m.validate().unwrap();
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_len(0), 16384);
        assert_eq!(m.chunk_len(2), 40_000 - 2 * 16384);
        assert!(m.chunk_matches(2, &data[32768..]));
        assert!(!m.chunk_matches(2, &data[32767..]));
        assert!(!m.chunk_matches(3, &[]));
        m.verify(&m.file_id()).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        let id = m.file_id();
        assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let m = manifest_for("empty", &[], DEFAULT_CHUNK_SIZE, HashAlgo::Sha256);
        m.validate().unwrap();
        assert_eq!(m.chunk_count(), 0);
    }

    #[test]
    fn refusals() {
        let data = vec![1u8; 20_000];
        let good = manifest_for("f", &data, 16384, HashAlgo::Sha256);
        let mut m = good.clone();
        m.name = "../x".into();
        assert!(matches!(m.validate(), Err(ManifestError::Name(_))));
        let mut m = good.clone();
        m.chunk_size = 20_000;
        assert_eq!(m.validate(), Err(ManifestError::ChunkSize(20_000)));
        let mut m = good.clone();
        m.chunk_size = 8192;
        assert_eq!(m.validate(), Err(ManifestError::ChunkSize(8192)));
        let mut m = good.clone();
        m.size = MAX_FILE_SIZE + 1;
        assert!(matches!(m.validate(), Err(ManifestError::FileSize(_))));
        let mut m = good.clone();
        m.chunks.pop();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ChunkCount { .. })
        ));
        let mut m = good.clone();
        m.chunks[1] = HashAlgo::Sha1.digest(b"");
        assert!(matches!(
            m.validate(),
            Err(ManifestError::DigestLength { .. })
        ));
        let mut m = good.clone();
        m.hash = HashAlgo::Sha1;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::DigestLength { .. })
        ));
        let other = manifest_for("g", &data, 16384, HashAlgo::Sha256).file_id();
        assert!(matches!(
            good.verify(&other),
            Err(ManifestError::IdMismatch { .. })
        ));
        assert!(serde_json::from_str::<Manifest>(r#"{"name":"f","size":0,"chunk_size":16384,"hash":"sha256","chunks":[],"file_hash":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","extra":1}"#).is_err());
        assert!("ABCD".repeat(16).parse::<FileId>().is_err());
    }

    /// A small tree: two files (one spanning two chunks), an empty file and an empty directory.
    pub fn tree_for(files: &[(&str, &[u8])], dirs: &[&str], chunk_size: u32) -> Manifest {
        let mut entries: Vec<Entry> = files
            .iter()
            .map(|(p, d)| Entry::file(*p, d.len() as u64, 0o644))
            .chain(dirs.iter().map(|p| Entry::dir(*p, 0o755)))
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let data = |p: &str| files.iter().find(|(q, _)| *q == p).map(|(_, d)| *d);
        let chunks = entries
            .iter()
            .filter_map(|e| data(&e.path))
            .flat_map(|d| d.chunks(chunk_size as usize))
            .map(|c| HashAlgo::Sha256.digest(c))
            .collect();
        Manifest::tree("set", chunk_size, HashAlgo::Sha256, entries, chunks)
    }

    #[test]
    fn single_file_ids_are_unchanged_by_trees() {
        // The v1 encoding computed independently (Python: tag, lengths, big-endian fields): the id of
        // a single file must never move.
        let m = manifest_for("hello.txt", b"hello world\n", 16384, HashAlgo::Sha256);
        assert_eq!(
            m.file_id().to_string(),
            "2569196964a9feb3fbda03f7e6f583e29f1ba510f737700e276b76d196149587"
        );
        assert!(!serde_json::to_string(&m).unwrap().contains("files"));
    }

    #[test]
    fn tree_manifest_geometry_validation_and_id() {
        let a = vec![1u8; 40_000];
        let m = tree_for(
            &[("a.bin", &a), ("d/b", b"bb"), ("z", b"")],
            &["d", "e"],
            16384,
        );
        m.validate().unwrap();
        assert!(m.is_tree());
        assert_eq!(m.size, 40_002);
        assert_eq!(m.file_count(), 3);
        assert_eq!(m.chunk_count(), 4);
        assert_eq!(m.chunk_len(2), 40_000 - 2 * 16384);
        assert_eq!(m.chunk_len(3), 2);
        assert_eq!(m.chunk_offset(3), 0);
        assert_eq!(
            m.place(3).unwrap().entry,
            2,
            "entries sort as a.bin, d, d/b, e, z"
        );
        assert!(m.chunk_matches(3, b"bb"));
        let json = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.file_id(), m.file_id());
        back.verify(&m.file_id()).unwrap();

        let single = manifest_for("set", &a, 16384, HashAlgo::Sha256);
        assert_ne!(
            single.file_id(),
            tree_for(&[("set", &a)], &[], 16384).file_id()
        );

        let mut e = m.clone();
        e.size += 1;
        assert!(matches!(e.validate(), Err(ManifestError::TreeSize { .. })));
        let mut e = m.clone();
        e.file_hash = HashAlgo::Sha256.digest(b"x");
        assert_eq!(e.validate(), Err(ManifestError::TreeDigest));
        let mut e = m.clone();
        e.chunks.pop();
        assert!(matches!(
            e.validate(),
            Err(ManifestError::ChunkCount { .. })
        ));
        let mut e = tree_for(&[("x", b"1")], &[], 16384);
        e.files.as_mut().unwrap()[0].path = "../x".into();
        assert!(matches!(e.validate(), Err(ManifestError::Tree(_))));
    }

    #[test]
    fn any_entry_edit_changes_a_tree_id() {
        let m = tree_for(&[("a", b"1"), ("b", b"22")], &["c"], 16384);
        let edits: [fn(&mut Entry); 4] = [
            |e| e.path.push('x'),
            |e| e.mode ^= 1,
            |e| e.kind = EntryKind::Dir,
            |e| e.size += 1,
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut e = m.clone();
            edit(&mut e.files.as_mut().unwrap()[1]);
            assert_ne!(e.file_id(), m.file_id(), "edit {i}");
        }
    }

    proptest! {
        /// Any single edit to any field changes the id.
        #[test]
        fn any_edit_changes_id(
            data in proptest::collection::vec(any::<u8>(), 0..50_000),
            field in 0usize..7,
            byte in any::<u8>(),
            pos in any::<prop::sample::Index>(),
        ) {
            let m = manifest_for("data.bin", &data, 16384, HashAlgo::Sha256);
            let mut e = m.clone();
            match field {
                0 => e.name.push(char::from(b'a' + byte % 26)),
                1 => e.size = e.size.wrapping_add(1 + byte as u64),
                2 => e.chunk_size = if e.chunk_size == 16384 { 32768 } else { 16384 },
                3 => e.hash = HashAlgo::Sha1,
                4 => {
                    if e.chunks.is_empty() { e.chunks.push(e.file_hash) } else {
                        let i = pos.index(e.chunks.len());
                        let mut b = e.chunks[i].as_bytes().to_vec();
                        let at = pos.index(b.len());
                        b[at] ^= byte | 1;
                        e.chunks[i] = Digest::from_slice(&b).unwrap();
                    }
                }
                5 => {
                    let mut b = e.file_hash.as_bytes().to_vec();
                    let at = pos.index(b.len());
                        b[at] ^= byte | 1;
                    e.file_hash = Digest::from_slice(&b).unwrap();
                }
                _ => { e.chunks.reverse(); if e.chunks.len() < 2 || e.chunks == m.chunks { e.chunks.push(e.file_hash) } }
            }
            prop_assert_ne!(e.file_id(), m.file_id());
        }
    }
}
