//! Where a download writes: one file's `<name>.part`, or a tree's `.<name>.part/`. The engine
//! talks to either through this one type, and to their chunks through [`ChunkStorage`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use torrentguard_protocol::{Bitfield, Manifest};

use super::storage::ChunkStorage;
use super::store::{ChunkStore, Opened, StoreError};
use super::tree_store::{Selection, TreeFiles, TreeOpened, TreeRoot, TreeStore};

/// An open, locked download output.
pub enum Output {
    File(ChunkStore),
    Tree(TreeStore),
}

/// What opening a download's output found.
pub enum OutputOpened {
    /// The destination already holds the share (every wanted chunk verified); nothing was
    /// created. `file` is the open file of a single-file share.
    Complete {
        path: PathBuf,
        storage: Arc<dyn ChunkStorage>,
        file: Option<Arc<File>>,
    },
    Partial(Box<PartialOutput>),
}

/// A locked output and what it holds.
pub struct PartialOutput {
    pub output: Output,
    /// Chunks verified in it.
    pub have: Bitfield,
    /// Chunks this download wants (all of them, or those of the `--only` selection).
    pub wanted: Bitfield,
    /// Chunks the state file claimed that failed re-verification.
    pub discarded: u32,
    /// Chunks taken from an existing destination (`--force`).
    pub from_existing: u32,
}

impl Output {
    /// Opens the output of `m` in `out_dir` (see [`ChunkStore::open`] and [`TreeStore::open`]).
    /// `only` selects files of a tree (`--only GLOB`); it is refused for a single file.
    pub fn open(
        out_dir: &Path,
        m: Arc<Manifest>,
        only: &[String],
        force: bool,
    ) -> Result<OutputOpened, StoreError> {
        // Whoever handed us the manifest, nothing is created for one that breaks a rule
        // (a path escaping the directory, a case collision, bounds).
        m.validate()?;
        if !m.is_tree() {
            if !only.is_empty() {
                return Err(StoreError::OnlyForTrees(m.name.clone()));
            }
            return Ok(match ChunkStore::open(out_dir, m.clone(), force)? {
                Opened::Complete { path, file } => OutputOpened::Complete {
                    path,
                    storage: Arc::new(super::storage::SingleFile::new(file.clone(), m)),
                    file: Some(file),
                },
                Opened::Partial(p) => OutputOpened::Partial(Box::new(PartialOutput {
                    wanted: Bitfield::full(m.chunk_count()),
                    output: Output::File(p.store),
                    have: p.have,
                    discarded: p.discarded,
                    from_existing: p.from_existing,
                })),
            });
        }
        let selection = Selection::only(only)?;
        let keep = selection.entries(&m, only)?;
        let wanted = selection.wanted_chunks(&m, &keep);
        Ok(
            match TreeStore::open(out_dir, m.clone(), keep, wanted, force)? {
                TreeOpened::Complete { path } => OutputOpened::Complete {
                    storage: Arc::new(TreeFiles::new(m, TreeRoot::Dir(path.clone()), false)),
                    path,
                    file: None,
                },
                TreeOpened::Partial(p) => {
                    let p = *p;
                    OutputOpened::Partial(Box::new(PartialOutput {
                        output: Output::Tree(p.store),
                        have: p.have,
                        wanted: p.wanted,
                        discarded: p.discarded,
                        from_existing: p.from_existing,
                    }))
                }
            },
        )
    }

    /// Where verified chunks are written.
    pub fn storage(&self) -> Arc<dyn ChunkStorage> {
        match self {
            Output::File(s) => s.storage(),
            Output::Tree(t) => t.files.clone(),
        }
    }

    /// The `.part` file or directory.
    pub fn part(&self) -> &Path {
        match self {
            Output::File(s) => &s.paths.part,
            Output::Tree(t) => &t.paths.part,
        }
    }

    /// Where the finished share goes.
    pub fn dest(&self) -> &Path {
        match self {
            Output::File(s) => &s.paths.dest,
            Output::Tree(t) => &t.paths.dest,
        }
    }

    /// Records the verified chunks (data made durable first).
    pub fn save_state(&self, have: &Bitfield) -> Result<(), StoreError> {
        match self {
            Output::File(s) => s.save_state(have),
            Output::Tree(t) => t.save_state(have),
        }
    }

    /// Moves the finished share into place (see the stores' `finish`).
    pub fn finish(&self, force: bool) -> Result<(), StoreError> {
        match self {
            Output::File(s) => s.finish(force),
            Output::Tree(t) => t.finish(force),
        }
    }

    /// Releases the output's lock.
    pub fn unlock(&self) {
        match self {
            Output::File(s) => s.unlock(),
            Output::Tree(t) => t.unlock(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::{Entry, HashAlgo};

    const CS: u32 = 16 * 1024;

    /// A tree of empty files at `paths` (no chunks), unchecked.
    fn tree(paths: &[&str]) -> Arc<Manifest> {
        let entries = paths.iter().map(|p| Entry::file(*p, 0, 0o644)).collect();
        Arc::new(Manifest::tree(
            "set",
            CS,
            HashAlgo::Sha256,
            entries,
            Vec::new(),
        ))
    }

    #[test]
    fn hostile_trees_are_refused_with_nothing_written() {
        let many: Vec<String> = (0..=torrentguard_protocol::tree::MAX_ENTRIES)
            .map(|i| format!("{i:08}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases: [(&str, Vec<&str>); 5] = [
            ("dot-dot", vec!["../escape"]),
            ("absolute", vec!["/etc/passwd"]),
            ("nested dot-dot", vec!["a/../../b"]),
            ("case collision", vec!["README", "readme"]),
            ("huge count", many),
        ];
        for (what, paths) in cases {
            let parent = tempfile::tempdir().unwrap();
            let out = parent.path().join("out");
            let err = Output::open(&out, tree(&paths), &[], false)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(matches!(err, StoreError::Manifest(_)), "{what}: {err}");
            assert!(!out.exists(), "{what}: the output directory was created");
            assert_eq!(
                std::fs::read_dir(parent.path()).unwrap().count(),
                0,
                "{what}"
            );
        }
    }

    #[test]
    fn only_is_for_trees() {
        let out = tempfile::tempdir().unwrap();
        let data = b"abc";
        let m = Manifest::single(
            "f",
            3,
            CS,
            HashAlgo::Sha256,
            vec![HashAlgo::Sha256.digest(data)],
            HashAlgo::Sha256.digest(data),
        );
        let err = Output::open(out.path(), Arc::new(m), &["*".into()], false)
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::OnlyForTrees(_)), "{err}");
    }
}
