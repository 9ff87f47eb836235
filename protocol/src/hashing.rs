//! One-pass streaming hashing of a file: every chunk digest and the whole-file digest, with
//! constant memory, with reading and both hashes overlapped.
//!
//! Each byte must go through two hashes (its chunk's and the whole file's), which on one core
//! would halve the speed of a plain `sha256sum`. So the caller's thread only reads, into a small
//! pool of blocks, and two threads hash the same blocks side by side: one the chunk digests, one
//! the whole-file digest. Reading never waits on hashing until the pool is exhausted, and hashing
//! never waits on reading while blocks are queued. Memory is `POOL_BLOCKS × BLOCK_SIZE` whatever
//! the file size.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc;

use crate::digest::{Digest, HashAlgo, Hasher};
use crate::manifest::{Manifest, ManifestError, check_chunk_size};

/// Read granularity. Chunk sizes are powers of two ≥ 16 KiB, so either a chunk is a whole
/// number of blocks or a block a whole number of chunks.
pub const BLOCK_SIZE: usize = 256 * 1024;
/// Blocks in flight between the reader and the hashers: 8 × 256 KiB = 2 MiB.
pub const POOL_BLOCKS: usize = 8;

/// Result of hashing a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigests {
    pub size: u64,
    pub chunks: Vec<Digest>,
    pub file_hash: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("reading the file: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Hashes everything `reader` yields, in chunks of `chunk_size`. `progress` is called with the
/// number of bytes read so far, once per block.
pub fn hash_stream<R: Read>(
    mut reader: R,
    chunk_size: u32,
    algo: HashAlgo,
    mut progress: impl FnMut(u64),
) -> Result<StreamDigests, HashError> {
    check_chunk_size(chunk_size)?;
    let chunk_size = chunk_size as usize;

    std::thread::scope(|scope| {
        let (to_chunks, chunk_rx) = mpsc::sync_channel::<Arc<Block>>(POOL_BLOCKS);
        let (to_file, file_rx) = mpsc::sync_channel::<Arc<Block>>(POOL_BLOCKS);
        let (give_back, returned) = mpsc::channel::<Arc<Block>>();

        let give_back_c = give_back.clone();
        let chunk_thread = scope.spawn(move || {
            let mut digests = Vec::new();
            let mut hasher: Option<Hasher> = None;
            let mut in_chunk = 0usize;
            for block in chunk_rx {
                let mut data = &block.data[..block.len];
                while !data.is_empty() {
                    let take = (chunk_size - in_chunk).min(data.len());
                    hasher
                        .get_or_insert_with(|| algo.hasher())
                        .update(&data[..take]);
                    in_chunk += take;
                    data = &data[take..];
                    if in_chunk == chunk_size {
                        digests.push(hasher.take().expect("hasher exists mid-chunk").finish());
                        in_chunk = 0;
                    }
                }
                // The reader may have gone on error; a closed return channel is fine then.
                let _ = give_back_c.send(block);
            }
            if let Some(h) = hasher {
                digests.push(h.finish());
            }
            digests
        });
        let file_thread = scope.spawn(move || {
            let mut hasher = algo.hasher();
            for block in file_rx {
                hasher.update(&block.data[..block.len]);
                let _ = give_back.send(block);
            }
            hasher.finish()
        });

        let mut allocated = 0usize;
        let mut size = 0u64;
        let read_result = (|| -> io::Result<()> {
            loop {
                let mut block = if allocated < POOL_BLOCKS {
                    allocated += 1;
                    Arc::new(Block {
                        data: vec![0u8; BLOCK_SIZE].into_boxed_slice(),
                        len: 0,
                    })
                } else {
                    // Each block comes back twice (once per hasher); the second return is the
                    // one that finds it unshared.
                    loop {
                        let b = returned
                            .recv()
                            .map_err(|_| io::Error::other("hashing thread stopped"))?;
                        if Arc::strong_count(&b) == 1 {
                            break b;
                        }
                    }
                };
                let buf = Arc::get_mut(&mut block).expect("block is unshared");
                buf.len = fill(&mut reader, &mut buf.data)?;
                if buf.len == 0 {
                    return Ok(());
                }
                size += buf.len as u64;
                let last = buf.len < BLOCK_SIZE;
                progress(size);
                // A send fails only if a hasher panicked; its join below reports that.
                if to_file.send(block.clone()).is_err() || to_chunks.send(block).is_err() {
                    return Ok(());
                }
                if last {
                    return Ok(());
                }
            }
        })();
        drop(to_chunks);
        drop(to_file);
        let chunks = chunk_thread.join().expect("chunk hasher panicked");
        let file_hash = file_thread.join().expect("file hasher panicked");
        read_result?;
        Ok(StreamDigests {
            size,
            chunks,
            file_hash,
        })
    })
}

/// Builds and validates the manifest of the content `reader` yields.
pub fn manifest_from_reader<R: Read>(
    name: &str,
    reader: R,
    chunk_size: u32,
    algo: HashAlgo,
    progress: impl FnMut(u64),
) -> Result<Manifest, HashError> {
    let d = hash_stream(reader, chunk_size, algo, progress)?;
    let m = Manifest::single(name, d.size, chunk_size, algo, d.chunks, d.file_hash);
    m.validate()?;
    Ok(m)
}

struct Block {
    data: Box<[u8]>,
    len: usize,
}

/// Reads until `buf` is full or the reader is at its end.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::manifest_for;
    use proptest::prelude::*;

    /// A reader that returns short reads, to exercise block filling.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn matches_the_one_shot_manifest_for_edge_sizes() {
        for &(len, cs) in &[
            (0usize, 16384u32),
            (1, 16384),
            (16384, 16384),
            (16385, 16384),
            (BLOCK_SIZE * 3 + 5, 16384),
            (BLOCK_SIZE * 2, 1 << 20),
            (BLOCK_SIZE * 5 + 77, 1 << 20),
            (BLOCK_SIZE * 10, 262144),
        ] {
            let d = data(len);
            for algo in [HashAlgo::Sha256, HashAlgo::Sha1] {
                let m = manifest_from_reader("x", Trickle(&d, 70_001), cs, algo, |_| {}).unwrap();
                assert_eq!(m, manifest_for("x", &d, cs, algo), "len {len} cs {cs}");
            }
        }
    }

    #[test]
    fn reports_progress_and_errors() {
        let d = data(BLOCK_SIZE * 2 + 1);
        let mut seen = Vec::new();
        hash_stream(&d[..], 16384, HashAlgo::Sha256, |n| seen.push(n)).unwrap();
        assert_eq!(seen.last(), Some(&(d.len() as u64)));

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        assert!(matches!(
            hash_stream(Failing, 16384, HashAlgo::Sha256, |_| {}),
            Err(HashError::Io(_))
        ));
        assert!(matches!(
            hash_stream(&d[..], 1000, HashAlgo::Sha256, |_| {}),
            Err(HashError::Manifest(ManifestError::ChunkSize(1000)))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn streaming_equals_one_shot(len in 0usize..600_000, step in 1usize..300_000, shift in 0u32..3) {
            let d = data(len);
            let cs = 16384u32 << (shift * 3);
            let m = manifest_from_reader("p", Trickle(&d, step), cs, HashAlgo::Sha256, |_| {}).unwrap();
            prop_assert_eq!(m, manifest_for("p", &d, cs, HashAlgo::Sha256));
        }
    }
}
