//! Where a share's chunks live: the one place that reads and writes them at their offsets.
//!
//! Everything else (serving, writing verified chunks, re-verifying a `.part` or an existing
//! destination, the in-order whole-file digest) goes through [`ChunkStorage`], modelled on
//! rqbit's `TorrentStorage`. The trait speaks only of global chunk indices: an implementation
//! for a directory share maps an index to (file, offset) — chunks never span two files — so
//! nothing here assumes one file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use torrentguard_protocol::{Bitfield, Manifest};

/// The chunks of one share, addressed by their global index.
pub trait ChunkStorage: Send + Sync {
    /// How many chunks the share has.
    fn chunk_count(&self) -> u32;

    /// The length of chunk `index` (the last one of a file may be short).
    fn chunk_len(&self, index: u32) -> u32;

    /// Reads chunk `index` into `buf`, which must be exactly [`ChunkStorage::chunk_len`] long.
    fn read_chunk(&self, index: u32, buf: &mut [u8]) -> io::Result<()>;

    /// Writes chunk `index` (already verified by the caller).
    fn write_chunk(&self, index: u32, data: &[u8]) -> io::Result<()>;

    /// Makes every chunk written so far durable.
    fn flush(&self) -> io::Result<()>;
}

/// A share that is one regular file: chunk `i` at `i × chunk_size`.
pub struct SingleFile {
    file: Arc<File>,
    manifest: Arc<Manifest>,
    /// The file was created empty: every byte not written since is a hole that reads as
    /// zeros, so an all-zero chunk need not be written at all (sparse sources stay sparse).
    skip_zero_chunks: bool,
}

impl SingleFile {
    /// The chunks of `manifest` in `file`.
    pub fn new(file: Arc<File>, manifest: Arc<Manifest>) -> Self {
        SingleFile {
            file,
            manifest,
            skip_zero_chunks: false,
        }
    }

    /// As [`SingleFile::new`], for a file created empty (all holes): all-zero chunks are not
    /// written.
    pub fn fresh(file: Arc<File>, manifest: Arc<Manifest>) -> Self {
        SingleFile {
            skip_zero_chunks: true,
            ..Self::new(file, manifest)
        }
    }

    fn check(&self, index: u32, len: usize) -> io::Result<u64> {
        if index >= self.manifest.chunk_count() || len != self.chunk_len(index) as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk {index} of {len} bytes does not fit this file"),
            ));
        }
        Ok(self.manifest.chunk_offset(index))
    }
}

impl ChunkStorage for SingleFile {
    fn chunk_count(&self) -> u32 {
        self.manifest.chunk_count()
    }

    fn chunk_len(&self, index: u32) -> u32 {
        self.manifest.chunk_len(index)
    }

    fn read_chunk(&self, index: u32, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.check(index, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_chunk(&self, index: u32, data: &[u8]) -> io::Result<()> {
        let offset = self.check(index, data.len())?;
        if self.skip_zero_chunks && data.iter().all(|b| *b == 0) {
            return Ok(());
        }
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Copies into `to` every chunk of `from` among `candidates` that is not in `have` and still
/// verifies (read and hashed again: the source may have changed since it was compared); marks
/// each in `have` and returns how many. An existing output's matching chunks, file or tree.
pub fn copy_verified(
    from: &dyn ChunkStorage,
    to: &dyn ChunkStorage,
    manifest: &Manifest,
    candidates: &Bitfield,
    have: &mut Bitfield,
) -> io::Result<u32> {
    let mut buf = vec![0u8; manifest.chunk_size as usize];
    let mut taken = 0;
    for i in candidates.iter_set() {
        if have.get(i) || !chunk_verifies(from, manifest, i, &mut buf) {
            continue;
        }
        to.write_chunk(i, &buf[..manifest.chunk_len(i) as usize])?;
        have.set(i);
        taken += 1;
    }
    Ok(taken)
}

/// Reads chunk `index` of `storage` into `buf` and checks it against `manifest`: the one way a
/// chunk already on disk is trusted. `buf` holds at least one chunk.
pub fn chunk_verifies(
    storage: &dyn ChunkStorage,
    manifest: &Manifest,
    index: u32,
    buf: &mut [u8],
) -> bool {
    let len = storage.chunk_len(index) as usize;
    let Some(buf) = buf.get_mut(..len) else {
        return false;
    };
    storage.read_chunk(index, buf).is_ok() && manifest.chunk_matches(index, buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::HashAlgo;
    use torrentguard_protocol::hashing::manifest_from_reader;

    fn setup(data: &[u8]) -> (tempfile::NamedTempFile, Arc<Manifest>) {
        let m = manifest_from_reader("f", data, 16384, HashAlgo::Sha256, |_| {}).unwrap();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        (tmp, Arc::new(m))
    }

    #[test]
    fn chunks_round_trip_at_their_offsets_and_misfits_are_refused() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let (tmp, m) = setup(&data);
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .open(tmp.path())
                .unwrap(),
        );
        file.set_len(m.size).unwrap();
        let s = SingleFile::new(file, m.clone());
        assert_eq!(s.chunk_count(), 3);
        for i in (0..3).rev() {
            let at = m.chunk_offset(i) as usize;
            s.write_chunk(i, &data[at..at + s.chunk_len(i) as usize])
                .unwrap();
        }
        assert_eq!(std::fs::read(tmp.path()).unwrap(), data);
        let mut buf = vec![0u8; 16384];
        assert!(chunk_verifies(&s, &m, 2, &mut buf));
        // The last chunk is short: a full-size buffer, or an index past the end, is refused.
        assert!(s.read_chunk(2, &mut buf).is_err());
        assert!(s.read_chunk(3, &mut buf[..1]).is_err());
        assert!(s.write_chunk(0, &data[..10]).is_err());
    }

    #[test]
    fn a_fresh_file_leaves_zero_chunks_as_holes() {
        let data = vec![0u8; 32768];
        let (tmp, m) = setup(&data);
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .open(tmp.path())
                .unwrap(),
        );
        SingleFile::fresh(file.clone(), m.clone())
            .write_chunk(0, &data[..16384])
            .unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0, "nothing written");
        SingleFile::new(file.clone(), m)
            .write_chunk(1, &data[..16384])
            .unwrap();
        assert_eq!(file.metadata().unwrap().len(), 32768);
    }
}
