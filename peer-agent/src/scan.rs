//! One or several local paths into one directory ("tree") manifest, hashed on every core.
//!
//! Two passes. The walk (one thread, `std::fs`) lists every directory and regular file, skips
//! what a tree cannot hold (symbolic links unless followed, devices, fifos, sockets) with a
//! warning naming each, and checks every name against the protocol's rules, so that a name a
//! downloader would refuse is reported, with its local path, before a byte is read.
//!
//! The hash pass cuts the files into work units, runs of chunks of one file, so a big file keeps
//! every core busy and a hundred thousand small files cost no thread each. A pool of workers,
//! one per core, takes units in turn, reads them with positional reads into one buffer per
//! worker and writes each digest into its slot of the global chunk list. Memory for data is
//! `workers × BUF_SIZE`, whatever the size of the tree.

mod walk;

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use torrentguard_protocol::manifest::{
    DEFAULT_CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE, check_chunk_size,
};
use torrentguard_protocol::tree::TreeError;
use torrentguard_protocol::{Digest, Entry, HashAlgo, Manifest, ManifestError, NameError};

pub use walk::ScanWarning;

/// Bytes of one work unit (rounded to whole chunks, at least one). Small enough that a file of
/// a few of them spreads over every core, large enough that taking a unit costs nothing.
const UNIT_BYTES: u64 = 4 << 20;
/// Each worker's read buffer; a chunk larger than this is read and hashed in pieces.
pub const BUF_SIZE: usize = 1 << 20;

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub chunk_size: u32,
    pub hash: HashAlgo,
    /// Follow symbolic links whose target stays inside the shared directory (with several
    /// paths: the top-level directory the link was found under) and is not one of the link's
    /// own parents.
    pub follow_symlinks: bool,
    /// The tree's name; by default the first path's file name.
    pub name: Option<String>,
    /// Hashing threads; by default one per core.
    pub workers: Option<NonZeroUsize>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            hash: HashAlgo::Sha256,
            follow_symlinks: false,
            name: None,
            workers: None,
        }
    }
}

/// A scanned tree: its manifest, where each entry is on disk, and what was left out.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub manifest: Manifest,
    /// The local path of each of `manifest.entries()`, index for index.
    pub sources: Vec<PathBuf>,
    /// Everything skipped, in walk order.
    pub warnings: Vec<ScanWarning>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("no path to scan")]
    NoPaths,
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: only regular files and directories can be shared", .0.display())]
    NotShareable(PathBuf),
    #[error("{}: the name is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("{}: refused by the protocol: {source}", .path.display())]
    Refused {
        path: PathBuf,
        #[source]
        source: TreeError,
    },
    #[error("{}: has no file name to call the share by; give one with --name", .0.display())]
    NoName(PathBuf),
    #[error("share name {name:?}: {source}")]
    ShareName {
        name: String,
        #[source]
        source: NameError,
    },
    #[error("{} and {} would both be {name:?} at the top of the tree", .first.display(), .second.display())]
    SameName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("the tree holds {size} bytes; the limit is {MAX_FILE_SIZE}")]
    TooLarge { size: u64 },
    #[error(
        "the tree has {chunks} chunks of {chunk_size} bytes; the limit is {MAX_CHUNKS}: use a larger --chunk-size"
    )]
    TooManyChunks { chunks: u64, chunk_size: u32 },
    #[error("{}: changed while being hashed (was {expected} bytes, now {found})", .path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl ScanError {
    fn io(path: &Path, source: io::Error) -> Self {
        ScanError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How often hashing progress is reported (and once at the end).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Scans `paths` into one tree (see [`scan`]), with `hashing` events named after the tree (its
/// `--name`, else the first path's file name) at most every 200 ms and at the end.
pub fn scan_with_events(
    paths: &[PathBuf],
    opts: &ScanOptions,
    events: &crate::EventSink,
) -> Result<Scanned, ScanError> {
    let name = opts.name.clone().unwrap_or_else(|| display_name(&paths[0]));
    let progress = hashing_progress(name, events);
    scan(paths, opts, &|done, total| progress(done, total))
}

/// A progress callback for any thread: a `hashing` event at most every 200 ms, and always the
/// last one.
pub fn hashing_progress(name: String, events: &crate::EventSink) -> impl Fn(u64, u64) + Sync {
    let events = events.clone();
    let last = Mutex::new(None::<std::time::Instant>);
    move |done, total| {
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        if done < total && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        events.emit(crate::Event::Hashing {
            name: name.clone(),
            bytes_done: done,
            bytes_total: total,
        });
    }
}

/// What a path is shared as by default: its file name, else the path itself.
pub fn display_name(path: &Path) -> String {
    let name = path.file_name().map(PathBuf::from);
    name.unwrap_or_else(|| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// Scans `paths` into one tree manifest. A single directory's entries are its contents, and
/// the tree is named after it; several paths each become a top-level entry. `progress` is
/// called from the hashing threads with (bytes hashed, bytes in total).
pub fn scan(
    paths: &[PathBuf],
    opts: &ScanOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Scanned, ScanError> {
    check_chunk_size(opts.chunk_size)?;
    let walked = walk::walk(paths, opts.follow_symlinks, opts.name.as_deref())?;
    let (entries, sources): (Vec<Entry>, Vec<PathBuf>) = walked.found.into_iter().unzip();
    check_bounds(&entries, opts.chunk_size)?;
    let chunks = hash_files(&entries, &sources, opts, progress)?;
    let manifest = Manifest::tree(walked.name, opts.chunk_size, opts.hash, entries, chunks);
    manifest.validate()?;
    Ok(Scanned {
        manifest,
        sources,
        warnings: walked.warnings,
    })
}

/// Refuses, before hashing, a tree the protocol would refuse afterwards.
fn check_bounds(entries: &[Entry], chunk_size: u32) -> Result<(), ScanError> {
    let size: u64 = entries.iter().map(|e| e.size).sum();
    if size > MAX_FILE_SIZE {
        return Err(ScanError::TooLarge { size });
    }
    let chunks: u64 = entries.iter().map(|e| e.chunk_count(chunk_size)).sum();
    if chunks > MAX_CHUNKS as u64 {
        return Err(ScanError::TooManyChunks { chunks, chunk_size });
    }
    Ok(())
}

/// A run of chunks of one file, and the slots its digests go to.
struct Unit<'d> {
    entry: usize,
    /// Offset of the first chunk in the file.
    offset: u64,
    slots: &'d mut [Option<Digest>],
}

/// Cuts every file into units covering `slots` (one per chunk, in entry order).
fn plan_units<'d>(
    entries: &[Entry],
    chunk_size: u32,
    mut slots: &'d mut [Option<Digest>],
) -> Vec<Unit<'d>> {
    let per_unit = (UNIT_BYTES / chunk_size as u64).max(1);
    let mut units = Vec::new();
    for (entry, e) in entries.iter().enumerate() {
        let mut left = e.chunk_count(chunk_size);
        let mut offset = 0;
        while left > 0 {
            let n = left.min(per_unit);
            let (head, tail) = std::mem::take(&mut slots).split_at_mut(n as usize);
            slots = tail;
            units.push(Unit {
                entry,
                offset,
                slots: head,
            });
            offset += n * chunk_size as u64;
            left -= n;
        }
    }
    units
}

/// What every worker shares.
struct Work<'a> {
    entries: &'a [Entry],
    sources: &'a [PathBuf],
    chunk_size: u32,
    hash: HashAlgo,
    total: u64,
    done: AtomicU64,
    failed: AtomicBool,
    progress: &'a (dyn Fn(u64, u64) + Sync),
}

/// Every chunk digest of every file, in entry order, hashed on `opts.workers` threads.
fn hash_files(
    entries: &[Entry],
    sources: &[PathBuf],
    opts: &ScanOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<Digest>, ScanError> {
    let count: u64 = entries.iter().map(|e| e.chunk_count(opts.chunk_size)).sum();
    let mut slots: Vec<Option<Digest>> = vec![None; count as usize];
    let units = plan_units(entries, opts.chunk_size, &mut slots);
    let workers = opts
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
        .min(units.len().max(1));
    let work = Work {
        entries,
        sources,
        chunk_size: opts.chunk_size,
        hash: opts.hash,
        total: entries.iter().map(|e| e.size).sum(),
        done: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        progress,
    };
    let queue = Mutex::new(units.into_iter());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(|| work.run(&queue))).collect();
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        first_error.map_or(Ok(()), Err)
    })?;
    // Every unit succeeded (else we returned above) and the units cover every slot.
    Ok(slots
        .into_iter()
        .map(|d| d.expect("every slot is filled by its unit"))
        .collect())
}

impl Work<'_> {
    /// One worker: takes units until none is left or another worker failed.
    fn run<'d, I: Iterator<Item = Unit<'d>>>(&self, queue: &Mutex<I>) -> Result<(), ScanError> {
        let mut buf = vec![0u8; BUF_SIZE];
        // Consecutive units are often of the same file: keep it open.
        let mut open: Option<(usize, File)> = None;
        while !self.failed.load(Ordering::Relaxed) {
            let Some(unit) = queue.lock().unwrap_or_else(PoisonError::into_inner).next() else {
                break;
            };
            let entry = unit.entry;
            match self.open_and_hash(open.take(), unit, &mut buf) {
                Ok(file) => open = Some((entry, file)),
                Err(e) => {
                    // The others stop at their next unit: the scan has failed.
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Hashes `unit`, reusing `open` if it is the unit's file; returns the file, still open.
    fn open_and_hash(
        &self,
        open: Option<(usize, File)>,
        unit: Unit<'_>,
        buf: &mut [u8],
    ) -> Result<File, ScanError> {
        let path = &self.sources[unit.entry];
        let file = match open {
            Some((entry, f)) if entry == unit.entry => f,
            _ => File::open(path).map_err(|e| ScanError::io(path, e))?,
        };
        self.hash_unit(&file, unit, buf)?;
        Ok(file)
    }

    /// Hashes one unit's chunks into its slots, checking the file's size before and after.
    fn hash_unit(&self, file: &File, unit: Unit<'_>, buf: &mut [u8]) -> Result<(), ScanError> {
        let (path, size) = (&self.sources[unit.entry], self.entries[unit.entry].size);
        self.check_size(file, unit.entry)?;
        let cs = self.chunk_size as u64;
        for (k, slot) in unit.slots.iter_mut().enumerate() {
            let start = unit.offset + k as u64 * cs;
            let len = cs.min(size - start);
            let mut hasher = self.hash.hasher();
            let mut at = 0;
            while at < len {
                let n = (len - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], start + at)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => self.changed(file, unit.entry),
                        _ => ScanError::io(path, e),
                    })?;
                hasher.update(&buf[..n]);
                at += n as u64;
                let done = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                (self.progress)(done, self.total);
            }
            *slot = Some(hasher.finish());
        }
        self.check_size(file, unit.entry)
    }

    fn check_size(&self, file: &File, entry: usize) -> Result<(), ScanError> {
        let path = &self.sources[entry];
        let found = file.metadata().map_err(|e| ScanError::io(path, e))?.len();
        if found == self.entries[entry].size {
            Ok(())
        } else {
            Err(self.changed(file, entry))
        }
    }

    fn changed(&self, file: &File, entry: usize) -> ScanError {
        ScanError::Changed {
            path: self.sources[entry].clone(),
            expected: self.entries[entry].size,
            found: file.metadata().map_or(0, |m| m.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    const CS: u32 = 16 * 1024;

    fn opts() -> ScanOptions {
        ScanOptions {
            chunk_size: CS,
            ..ScanOptions::default()
        }
    }

    fn no_progress(_: u64, _: u64) {}

    fn write(path: &Path, len: usize, seed: u8, mode: u32) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        std::fs::write(path, data).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Every chunk of the manifest is the bytes of its file at its offset.
    fn assert_chunks_match(s: &Scanned) {
        let m = &s.manifest;
        m.validate().unwrap();
        for i in 0..m.chunk_count() {
            let place = m.place(i).unwrap();
            let data = std::fs::read(&s.sources[place.entry]).unwrap();
            let at = place.offset as usize;
            let chunk = &data[at..at + place.len as usize];
            assert!(m.chunk_matches(i, chunk), "chunk {i} of {:?}", place);
        }
    }

    fn paths(s: &Scanned) -> Vec<&str> {
        s.manifest
            .entries()
            .iter()
            .map(|e| e.path.as_str())
            .collect()
    }

    #[test]
    fn a_directory_becomes_its_sorted_entries_with_modes_and_empty_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("data set");
        write(&root.join("b.bin"), 40_000, 1, 0o640);
        write(&root.join("a/deep/x.txt"), 5, 2, 0o755);
        write(&root.join("a/empty-file"), 0, 3, 0o600);
        std::fs::create_dir_all(root.join("empty/dir")).unwrap();
        std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        let s = scan(std::slice::from_ref(&root), &opts(), &no_progress).unwrap();
        assert_eq!(s.manifest.name, "data set");
        assert_eq!(
            paths(&s),
            [
                "a",
                "a/deep",
                "a/deep/x.txt",
                "a/empty-file",
                "b.bin",
                "empty",
                "empty/dir"
            ]
        );
        let e = s.manifest.entries();
        assert_eq!(e[2], Entry::file("a/deep/x.txt", 5, 0o755));
        assert_eq!(e[3], Entry::file("a/empty-file", 0, 0o600));
        assert_eq!(e[4], Entry::file("b.bin", 40_000, 0o640));
        // The set-gid bit is masked away, not refused.
        assert_eq!(e[5], Entry::dir("empty", 0o750));
        assert_eq!(s.sources[4], root.join("b.bin"));
        assert_eq!(s.manifest.size, 40_005);
        assert_eq!(s.manifest.chunk_count(), 1 + 3);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_chunks_match(&s);
    }

    #[test]
    fn a_file_bigger_than_several_units_is_hashed_by_every_worker_in_place() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("d/big");
        let len = 2 * UNIT_BYTES as usize + 3 * CS as usize + 7;
        write(&big, len, 9, 0o644);
        write(&t.path().join("d/small"), 100, 4, 0o644);
        let seen = AtomicU64::new(0);
        let o = ScanOptions {
            workers: NonZeroUsize::new(3),
            ..opts()
        };
        let s = scan(&[t.path().join("d")], &o, &|done, total| {
            assert_eq!(total, len as u64 + 100);
            seen.fetch_max(done, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(seen.into_inner(), len as u64 + 100);
        assert_eq!(
            s.manifest.chunk_count() as usize,
            len.div_ceil(CS as usize) + 1
        );
        assert_chunks_match(&s);
        // The same tree on one worker has the same id.
        let one = ScanOptions {
            workers: NonZeroUsize::new(1),
            ..opts()
        };
        let again = scan(&[t.path().join("d")], &one, &no_progress).unwrap();
        assert_eq!(again.manifest.file_id(), s.manifest.file_id());
    }

    #[test]
    fn units_cover_every_chunk_once_without_crossing_files() {
        let entries = [
            Entry::file("a", UNIT_BYTES * 2 + 1, 0o644),
            Entry::dir("d", 0o755),
            Entry::file("d/e", 0, 0o644),
            Entry::file("f", 1, 0o644),
        ];
        let mut slots = vec![None; (UNIT_BYTES * 2 / CS as u64 + 2) as usize];
        let units = plan_units(&entries, CS, &mut slots);
        let shape: Vec<(usize, u64, usize)> = units
            .iter()
            .map(|u| (u.entry, u.offset, u.slots.len()))
            .collect();
        let per = (UNIT_BYTES / CS as u64) as usize;
        assert_eq!(
            shape,
            [
                (0, 0, per),
                (0, UNIT_BYTES, per),
                (0, 2 * UNIT_BYTES, 1),
                (3, 0, 1)
            ]
        );
    }

    #[test]
    fn several_paths_are_top_level_entries_named_after_the_first_or_the_option() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("one.txt"), 10, 1, 0o644);
        write(&t.path().join("two/x"), 20, 2, 0o644);
        let p = [t.path().join("two"), t.path().join("one.txt")];
        let s = scan(&p, &opts(), &no_progress).unwrap();
        assert_eq!(s.manifest.name, "two");
        assert_eq!(paths(&s), ["one.txt", "two", "two/x"]);
        assert_chunks_match(&s);
        let named = ScanOptions {
            name: Some("release".into()),
            ..opts()
        };
        let s = scan(&p, &named, &no_progress).unwrap();
        assert_eq!(s.manifest.name, "release");
        // `.` is named after the directory it is.
        let dot = t.path().join("two/.");
        assert_eq!(
            scan(&[dot], &opts(), &no_progress).unwrap().manifest.name,
            "two"
        );
    }

    #[test]
    fn two_paths_with_one_name_are_refused() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("a/x"), 1, 1, 0o644);
        write(&t.path().join("b/x"), 1, 1, 0o644);
        let e = scan(
            &[t.path().join("a/x"), t.path().join("b/x")],
            &opts(),
            &no_progress,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ScanError::SameName { name, .. } if name == "x"),
            "{e}"
        );
    }

    /// Names a downloader would refuse fail the scan, naming the local path, before hashing:
    /// the progress callback is never called.
    #[test]
    fn refused_names_are_reported_before_hashing() {
        let never = |_: u64, _: u64| panic!("hashing started");
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("case");
        write(&d.join("Read.me"), 1, 1, 0o644);
        write(&d.join("READ.ME"), 1, 1, 0o644);
        let e = scan(std::slice::from_ref(&d), &opts(), &never).unwrap_err();
        match &e {
            ScanError::Refused {
                path,
                source: TreeError::CaseCollision(..),
            } => assert!(path.starts_with(&d), "{e}"),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("READ.ME"), "{e}");

        let d = t.path().join("ctl");
        write(&d.join("sub/bad\nname"), 1, 1, 0o644);
        let e = scan(std::slice::from_ref(&d), &opts(), &never).unwrap_err();
        assert!(
            matches!(&e, ScanError::Refused { path, source: TreeError::Component { .. } }
                if *path == d.join("sub/bad\nname")),
            "{e}"
        );

        let d = t.path().join("utf8");
        use std::os::unix::ffi::OsStrExt;
        write(
            &d.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
            1,
            1,
            0o644,
        );
        let e = scan(&[d], &opts(), &never).unwrap_err();
        assert!(matches!(e, ScanError::NotUtf8(_)), "{e}");

        let e = scan(&[t.path().join("missing")], &opts(), &never).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn symlinks_and_sockets_are_skipped_with_a_warning_by_default() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        write(&d.join("f"), 3, 1, 0o644);
        symlink("f", d.join("link")).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        let s = scan(std::slice::from_ref(&d), &opts(), &no_progress).unwrap();
        assert_eq!(paths(&s), ["f"]);
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings.contains(&ScanWarning::Skipped {
            path: d.join("link"),
            what: "a symbolic link (not followed)"
        }));
        assert!(s.warnings.contains(&ScanWarning::Skipped {
            path: d.join("sock"),
            what: "a socket"
        }));
        assert!(s.warnings[0].to_string().starts_with("skipped "));
    }

    #[test]
    fn followed_links_stay_inside_the_directory_and_never_loop() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        write(&d.join("real/f"), 3, 1, 0o600);
        write(&t.path().join("outside"), 3, 1, 0o644);
        symlink("real/f", d.join("to-file")).unwrap();
        symlink("real", d.join("to-dir")).unwrap();
        symlink("..", d.join("real/up")).unwrap();
        symlink("../outside", d.join("escape")).unwrap();
        symlink("nowhere", d.join("dangling")).unwrap();
        let o = ScanOptions {
            follow_symlinks: true,
            ..opts()
        };
        let s = scan(std::slice::from_ref(&d), &o, &no_progress).unwrap();
        assert_eq!(
            paths(&s),
            ["real", "real/f", "to-dir", "to-dir/f", "to-file"]
        );
        assert_eq!(s.manifest.entries()[4], Entry::file("to-file", 3, 0o600));
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        let w = &s.warnings;
        assert!(
            w.contains(&ScanWarning::LeavesRoot {
                path: d.join("escape"),
                target: canon(&t.path().join("outside")),
            }),
            "{w:?}"
        );
        assert!(
            w.contains(&ScanWarning::Loop {
                path: d.join("real/up"),
                target: canon(&d),
            }),
            "{w:?}"
        );
        assert!(
            w.contains(&ScanWarning::Loop {
                path: d.join("to-dir/up"),
                target: canon(&d),
            }),
            "{w:?}"
        );
        assert!(
            w.iter().any(
                |w| matches!(w, ScanWarning::Broken { path, .. } if *path == d.join("dangling"))
            ),
            "{w:?}"
        );
        assert_eq!(w.len(), 4, "{w:?}");
        assert_chunks_match(&s);
    }

    /// A file that shrinks while it is hashed is an error naming it.
    #[test]
    fn a_file_changing_size_while_hashed_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("d/big");
        write(&big, 2 * UNIT_BYTES as usize + 1, 1, 0o644);
        let o = ScanOptions {
            workers: NonZeroUsize::new(1),
            ..opts()
        };
        let truncated = AtomicBool::new(false);
        let e = scan(&[t.path().join("d")], &o, &|_, _| {
            if !truncated.swap(true, Ordering::Relaxed) {
                let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
                f.set_len(UNIT_BYTES / 2).unwrap();
            }
        })
        .unwrap_err();
        assert!(
            matches!(&e, ScanError::Changed { path, expected, found }
                if *path == big && *expected == 2 * UNIT_BYTES + 1 && *found == UNIT_BYTES / 2),
            "{e}"
        );
    }

    #[test]
    fn an_empty_directory_is_an_empty_tree_and_bad_options_fail_early() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("nothing");
        std::fs::create_dir(&d).unwrap();
        let s = scan(std::slice::from_ref(&d), &opts(), &no_progress).unwrap();
        assert!(s.manifest.entries().is_empty());
        assert_eq!((s.manifest.size, s.manifest.chunk_count()), (0, 0));
        s.manifest.validate().unwrap();
        let bad = ScanOptions {
            chunk_size: 1000,
            ..opts()
        };
        assert!(matches!(
            scan(std::slice::from_ref(&d), &bad, &no_progress),
            Err(ScanError::Manifest(ManifestError::ChunkSize(1000)))
        ));
        assert!(matches!(
            scan(&[], &opts(), &no_progress),
            Err(ScanError::NoPaths)
        ));
        let named = ScanOptions {
            name: Some("a/b".into()),
            ..opts()
        };
        assert!(matches!(
            scan(&[d], &named, &no_progress),
            Err(ScanError::ShareName { .. })
        ));
    }
}
