//! Reusing chunks already on this host before fetching them: an old version of the file or
//! folder (`get --reuse PATH`, [`reuse_local`]), and the shares this agent serves
//! ([`reuse_shared`], found through their manifests without hashing anything).
//!
//! Every candidate file is read at chunk-aligned offsets (chunks start at offset 0 of each file,
//! so a file edited in place keeps its unchanged chunks where they were) and each window is
//! hashed; a window whose digest is one the download still needs is written into the download's
//! storage for every chunk index with that digest. Matching the digest *is* the verification a
//! fetched chunk gets, done on the very bytes written. The reading is spread over every core and
//! bounded in memory (one chunk buffer per worker), and stops as soon as nothing is missing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use torrentguard_protocol::{Bitfield, Digest, Manifest};

use super::share::SharedFile;

/// Chunks one work unit covers: big enough to amortise a file open, small enough that one big
/// file keeps every worker busy.
const UNIT_CHUNKS: u64 = 32;

/// What a reuse pass found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReuseReport {
    /// Chunks written from local files.
    pub chunks: u32,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes read and hashed to find them.
    pub scanned: u64,
    /// Candidate files looked at.
    pub files: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ReuseError {
    #[error("--reuse {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing a reused chunk into the download: {0}")]
    Write(#[source] io::Error),
}

/// The chunks still needed, by digest.
struct Needed {
    by_digest: HashMap<Digest, Vec<u32>>,
    remaining: AtomicUsize,
}

impl Needed {
    fn new(m: &Manifest, need: &Bitfield) -> Self {
        let mut by_digest: HashMap<Digest, Vec<u32>> = HashMap::new();
        for i in need.iter_set() {
            by_digest.entry(m.chunks[i as usize]).or_default().push(i);
        }
        let remaining = AtomicUsize::new(by_digest.len());
        Needed {
            by_digest,
            remaining,
        }
    }

    fn done(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) == 0
    }
}

/// One run of chunk-aligned windows of one candidate file.
struct Unit {
    file: usize,
    first: u64,
    count: u64,
}

/// Fills `need` (chunks of `m` not yet had) from the regular files under `sources` (files or
/// directories, walked without following links). `write(index, bytes)` stores a chunk whose
/// digest matched; `skip` names files never to read (the download's own output). Returns what
/// was reused and the chunks now had.
pub fn reuse_local(
    m: &Manifest,
    need: &Bitfield,
    sources: &[PathBuf],
    skip: &[PathBuf],
    write: &(dyn Fn(u32, &[u8]) -> io::Result<()> + Sync),
) -> Result<(ReuseReport, Bitfield), ReuseError> {
    let mut found = Bitfield::new(m.chunk_count());
    if need.count() == 0 || sources.is_empty() {
        return Ok((ReuseReport::default(), found));
    }
    let files = candidates(sources, skip)?;
    let needed = Needed::new(m, need);
    let units = units(&files, m.chunk_size as u64);
    let next = AtomicUsize::new(0);
    let scanned = AtomicU64::new(0);
    let hits: Mutex<Vec<(Digest, Vec<u32>)>> = Mutex::new(Vec::new());
    let taken: Mutex<HashMap<Digest, ()>> = Mutex::new(HashMap::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let result: Result<(), ReuseError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; m.chunk_size as usize];
                    while let Some(u) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if needed.done() {
                            break;
                        }
                        let ctx = Scan {
                            m,
                            needed: &needed,
                            taken: &taken,
                            write,
                        };
                        let (read, hit) = ctx.unit(&files[u.file], u, &mut buf)?;
                        scanned.fetch_add(read, Ordering::Relaxed);
                        hits.lock().expect("hits lock").extend(hit);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("reuse worker panicked"))
    });
    result?;
    let mut report = ReuseReport {
        scanned: scanned.into_inner(),
        files: files.len() as u32,
        ..Default::default()
    };
    for (_, indices) in hits.into_inner().expect("hits lock") {
        for i in indices {
            found.set(i);
            report.chunks += 1;
            report.bytes += m.chunk_len(i) as u64;
        }
    }
    Ok((report, found))
}

/// A candidate file and its length when listed.
struct Candidate {
    path: PathBuf,
    len: u64,
}

struct Scan<'a> {
    m: &'a Manifest,
    needed: &'a Needed,
    taken: &'a Mutex<HashMap<Digest, ()>>,
    write: &'a (dyn Fn(u32, &[u8]) -> io::Result<()> + Sync),
}

impl Scan<'_> {
    /// Hashes the windows of one unit; writes every needed chunk found. Returns the bytes read
    /// and the digests taken with the indices they filled. A file that cannot be read (gone,
    /// permissions) is skipped: reuse is an optimisation, the network still has every chunk.
    #[allow(clippy::type_complexity)]
    fn unit(
        &self,
        c: &Candidate,
        u: &Unit,
        buf: &mut [u8],
    ) -> Result<(u64, Vec<(Digest, Vec<u32>)>), ReuseError> {
        let Ok(file) = File::open(&c.path) else {
            return Ok((0, Vec::new()));
        };
        let cs = self.m.chunk_size as u64;
        let mut read = 0;
        let mut hits = Vec::new();
        for w in u.first..u.first + u.count {
            if self.needed.done() {
                break;
            }
            let off = w * cs;
            let len = (c.len - off).min(cs) as usize;
            if file.read_exact_at(&mut buf[..len], off).is_err() {
                break;
            }
            read += len as u64;
            let d = self.m.hash.digest(&buf[..len]);
            let Some(indices) = self.needed.by_digest.get(&d) else {
                continue;
            };
            // Same digest, same bytes, same length; a window cut short by the end of its file
            // only stands for a chunk of exactly that length.
            let fits: Vec<u32> = indices
                .iter()
                .copied()
                .filter(|i| self.m.chunk_len(*i) as usize == len)
                .collect();
            // One worker takes a digest; the others skip it.
            if fits.is_empty()
                || self
                    .taken
                    .lock()
                    .expect("taken lock")
                    .insert(d, ())
                    .is_some()
            {
                continue;
            }
            for &i in &fits {
                (self.write)(i, &buf[..len]).map_err(ReuseError::Write)?;
            }
            self.needed.remaining.fetch_sub(1, Ordering::Relaxed);
            hits.push((d, fits));
        }
        Ok((read, hits))
    }
}

/// Fills `need` from the shares this agent already serves: their manifests list the digest of
/// every chunk they hold, so a match costs no hashing until it is found; the chunk is then read
/// from that share's storage and verified against `m` before `write`. Returns what was reused
/// and the chunks now had.
pub fn reuse_shared(
    m: &Manifest,
    need: &Bitfield,
    shares: &[Arc<SharedFile>],
    write: &dyn Fn(u32, &[u8]) -> io::Result<()>,
) -> Result<(ReuseReport, Bitfield), ReuseError> {
    let mut found = Bitfield::new(m.chunk_count());
    let mut report = ReuseReport::default();
    let shares: Vec<_> = shares
        .iter()
        .filter(|s| s.manifest.hash == m.hash && !s.is_withdrawn())
        .collect();
    if need.count() == 0 || shares.is_empty() {
        return Ok((report, found));
    }
    let needed = Needed::new(m, need);
    let mut buf = vec![0u8; m.chunk_size as usize];
    for share in shares
        .iter()
        .filter(|s| s.manifest.hash == m.hash && !s.is_withdrawn())
    {
        report.files += 1;
        for (j, d) in share.manifest.chunks.iter().enumerate() {
            let j = j as u32;
            let Some(indices) = needed.by_digest.get(d) else {
                continue;
            };
            if found.get(indices[0]) || !share.holds(j) {
                continue;
            }
            let len = share.manifest.chunk_len(j) as usize;
            if len != m.chunk_len(indices[0]) as usize
                || share.storage().read_chunk(j, &mut buf[..len]).is_err()
                || !m.chunk_matches(indices[0], &buf[..len])
            {
                continue;
            }
            report.scanned += len as u64;
            for &i in indices {
                write(i, &buf[..len]).map_err(ReuseError::Write)?;
                found.set(i);
                report.chunks += 1;
                report.bytes += len as u64;
            }
        }
    }
    Ok((report, found))
}

/// Regular files under `sources`, skipping links, special files and `skip`.
fn candidates(sources: &[PathBuf], skip: &[PathBuf]) -> Result<Vec<Candidate>, ReuseError> {
    let skip: Vec<PathBuf> = skip
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    let mut out = Vec::new();
    for src in sources {
        let meta = fs::symlink_metadata(src).map_err(|source| ReuseError::Source {
            path: src.clone(),
            source,
        })?;
        walk(src, meta, &skip, &mut out);
    }
    Ok(out)
}

fn walk(path: &Path, meta: fs::Metadata, skip: &[PathBuf], out: &mut Vec<Candidate>) {
    if meta.is_file() {
        let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if meta.len() > 0 && !skip.contains(&canon) {
            out.push(Candidate {
                path: path.to_path_buf(),
                len: meta.len(),
            });
        }
    } else if meta.is_dir()
        && let Ok(rd) = fs::read_dir(path)
    {
        for entry in rd.flatten() {
            if let Ok(m) = entry.metadata() {
                walk(&entry.path(), m, skip, out);
            }
        }
    }
}

fn units(files: &[Candidate], cs: u64) -> Vec<Unit> {
    let mut out = Vec::new();
    for (file, c) in files.iter().enumerate() {
        let windows = c.len.div_ceil(cs);
        let mut first = 0;
        while first < windows {
            let count = UNIT_CHUNKS.min(windows - first);
            out.push(Unit { file, first, count });
            first += count;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::HashAlgo;

    const CS: u32 = 16 * 1024;

    fn manifest(data: &[u8]) -> Manifest {
        Manifest::single(
            "f",
            data.len() as u64,
            CS,
            HashAlgo::Sha256,
            data.chunks(CS as usize)
                .map(|c| HashAlgo::Sha256.digest(c))
                .collect(),
            HashAlgo::Sha256.digest(data),
        )
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 14) as u8)
            .collect()
    }

    /// Runs a reuse pass into an in-memory copy; returns the report, the found set, the copy.
    fn run(
        m: &Manifest,
        sources: &[PathBuf],
        skip: &[PathBuf],
    ) -> (ReuseReport, Bitfield, Vec<u8>) {
        let out = Mutex::new(vec![0u8; m.size as usize]);
        let write = |i: u32, bytes: &[u8]| {
            let off = m.chunk_offset(i) as usize;
            out.lock().unwrap()[off..off + bytes.len()].copy_from_slice(bytes);
            Ok(())
        };
        let need = Bitfield::full(m.chunk_count());
        let (r, found) = reuse_local(m, &need, sources, skip, &write).unwrap();
        (r, found, out.into_inner().unwrap())
    }

    #[test]
    fn an_old_version_gives_every_unchanged_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let new = data(100 * CS as usize + 123, 1);
        let mut old = new.clone();
        // Change chunks 3 and 50 in place.
        old[3 * CS as usize + 7] ^= 0xff;
        old[50 * CS as usize] ^= 0xff;
        let old_path = dir.path().join("old.bin");
        fs::write(&old_path, &old).unwrap();
        let m = manifest(&new);
        let (r, found, copy) = run(&m, std::slice::from_ref(&old_path), &[]);
        assert_eq!(r.chunks, m.chunk_count() - 2);
        assert!(!found.get(3) && !found.get(50) && found.get(100));
        assert_eq!(r.bytes, new.len() as u64 - 2 * CS as u64);
        for i in found.iter_set() {
            let (o, l) = (m.chunk_offset(i) as usize, m.chunk_len(i) as usize);
            assert_eq!(&copy[o..o + l], &new[o..o + l], "chunk {i}");
        }
    }

    #[test]
    fn identical_chunks_fill_every_index_and_folders_are_walked() {
        let dir = tempfile::tempdir().unwrap();
        let block = data(CS as usize, 9);
        let new: Vec<u8> = [block.clone(), block.clone(), data(CS as usize, 2)].concat();
        fs::create_dir_all(dir.path().join("v1/sub")).unwrap();
        fs::write(dir.path().join("v1/sub/x"), &block).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("v1/link")).unwrap();
        let m = manifest(&new);
        let (r, found, _) = run(&m, &[dir.path().join("v1")], &[]);
        assert_eq!(found.iter_set().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(r.files, 1, "the link is not a candidate");
    }

    #[test]
    fn skipped_files_and_missing_sources() {
        let dir = tempfile::tempdir().unwrap();
        let new = data(3 * CS as usize, 4);
        let p = dir.path().join("same");
        fs::write(&p, &new).unwrap();
        let m = manifest(&new);
        let (r, found, _) = run(&m, std::slice::from_ref(&p), std::slice::from_ref(&p));
        assert_eq!((r.chunks, found.count()), (0, 0));
        let need = Bitfield::full(m.chunk_count());
        let err =
            reuse_local(&m, &need, &[dir.path().join("nope")], &[], &|_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_short_tail_window_only_fills_a_chunk_of_its_length() {
        let dir = tempfile::tempdir().unwrap();
        // The old file's last window is the first 100 bytes of a block that the new file has as
        // a whole chunk: lengths differ, nothing is reused for it.
        let new = data(2 * CS as usize, 5);
        let old = new[..CS as usize + 100].to_vec();
        let p = dir.path().join("old");
        fs::write(&p, &old).unwrap();
        let m = manifest(&new);
        let (_, found, _) = run(&m, &[p], &[]);
        assert_eq!(found.iter_set().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn a_share_of_this_agent_gives_its_chunks_without_hashing_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = data(10 * CS as usize, 6);
        let mut new = old.clone();
        new[4 * CS as usize] ^= 1;
        let p = dir.path().join("served");
        fs::write(&p, &old).unwrap();
        let served =
            SharedFile::complete(Arc::new(manifest(&old)), p.clone(), File::open(&p).unwrap())
                .unwrap();
        let m = manifest(&new);
        let out = Mutex::new(vec![0u8; new.len()]);
        let write = |i: u32, bytes: &[u8]| {
            let off = m.chunk_offset(i) as usize;
            out.lock().unwrap()[off..off + bytes.len()].copy_from_slice(bytes);
            Ok(())
        };
        let need = Bitfield::full(m.chunk_count());
        let (r, found) = reuse_shared(&m, &need, std::slice::from_ref(&served), &write).unwrap();
        assert_eq!(r.chunks, 9);
        assert!(!found.get(4));
        let copy = out.into_inner().unwrap();
        assert_eq!(copy[..4 * CS as usize], new[..4 * CS as usize]);
        // A share whose file changed since is read, fails verification, and gives nothing.
        fs::write(&p, vec![0u8; old.len()]).unwrap();
        let (r, _) = reuse_shared(&m, &need, &[served], &|_, _| Ok(())).unwrap();
        assert_eq!(r.chunks, 0);
    }
}
