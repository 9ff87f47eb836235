//! The whole-file digest, computed in file order while the download runs.

use std::sync::Arc;

use torrentguard_protocol::{Bitfield, Digest, Manifest};

use super::storage::ChunkStorage;

/// Hashes the file in order, reading it back from disk as contiguous verified chunks become
/// available, on its own thread. Reading the file (not the buffers that were written) makes the
/// digest cover exactly the bytes that will be renamed into place; right after the write they
/// come from the page cache.
pub struct OrderedHasher {
    /// Indices of chunks verified and written (or found on disk).
    pub tx: std::sync::mpsc::SyncSender<u32>,
    handle: std::thread::JoinHandle<std::io::Result<Digest>>,
}

impl OrderedHasher {
    pub fn start(storage: Arc<dyn ChunkStorage>, m: Arc<Manifest>) -> Self {
        // Indices are small: a deep queue keeps writers from waiting on the hasher, which
        // only falls behind while it reads and hashes a long contiguous run.
        let (tx, rx) = std::sync::mpsc::sync_channel::<u32>(4096);
        let handle = std::thread::Builder::new()
            .name("file-hasher".into())
            .spawn(move || {
                let n = m.chunk_count();
                let mut ready = Bitfield::new(n);
                let mut next = 0u32;
                let mut hasher = m.hash.hasher();
                let mut buf = vec![0u8; m.chunk_size as usize];
                while next < n {
                    let Ok(i) = rx.recv() else {
                        return Err(std::io::Error::other(
                            "download ended before every chunk arrived",
                        ));
                    };
                    if i < n {
                        ready.set(i);
                    }
                    while next < n && ready.get(next) {
                        let len = storage.chunk_len(next) as usize;
                        storage.read_chunk(next, &mut buf[..len])?;
                        hasher.update(&buf[..len]);
                        next += 1;
                    }
                }
                Ok(hasher.finish())
            })
            .expect("spawning the file hasher thread");
        OrderedHasher { tx, handle }
    }

    pub async fn finish(self) -> std::io::Result<Digest> {
        drop(self.tx);
        tokio::task::spawn_blocking(move || {
            self.handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("file hasher panicked")))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::storage::SingleFile;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use torrentguard_protocol::HashAlgo;
    use torrentguard_protocol::hashing::manifest_from_reader;

    /// Issue 9: the whole-file digest is of the bytes on disk. A chunk verified in memory and
    /// then overwritten in the file by another writer fails the final check.
    #[tokio::test]
    async fn digest_is_of_the_file_on_disk() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let m = Arc::new(
            manifest_from_reader("f.bin", &data[..], 16384, HashAlgo::Sha256, |_| {}).unwrap(),
        );
        for tamper in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.bin.part");
            std::fs::write(&path, &data).unwrap();
            let file = Arc::new(File::options().read(true).write(true).open(&path).unwrap());
            if tamper {
                file.write_all_at(b"other download's bytes", 20_000)
                    .unwrap();
            }
            let h = OrderedHasher::start(Arc::new(SingleFile::new(file, m.clone())), m.clone());
            for i in (0..m.chunk_count()).rev() {
                h.tx.send(i).unwrap();
            }
            let digest = h.finish().await.unwrap();
            assert_eq!(digest == m.file_hash, !tamper, "tampered: {tamper}");
        }
    }
}
