//! The whole-file digest, computed in file order while the download runs.

use super::*;

/// A verified chunk, announced to the in-order hasher.
pub(super) enum Piece {
    /// On disk only (found there when resuming).
    OnDisk(u32),
    /// On disk, and here is its data, which the hasher gives back to the pool.
    InMemory(u32, Vec<u8>),
}

/// Hashes the file in order as contiguous chunks become available, on its own thread.
pub(super) struct OrderedHasher {
    pub(super) tx: std::sync::mpsc::SyncSender<Piece>,
    handle: std::thread::JoinHandle<std::io::Result<Digest>>,
}

impl OrderedHasher {
    pub(super) fn start(file: Arc<File>, m: Arc<Manifest>, pool: BufferPool) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(8);
        let handle = std::thread::Builder::new()
            .name("file-hasher".into())
            .spawn(move || {
                let n = m.chunk_count();
                let mut ready = Bitfield::new(n);
                let mut next = 0u32;
                let mut hasher = m.hash.hasher();
                let mut buf = vec![0u8; m.chunk_size as usize];
                while next < n {
                    let Ok(piece) = rx.recv() else {
                        return Err(std::io::Error::other(
                            "download ended before every chunk arrived",
                        ));
                    };
                    match piece {
                        Piece::InMemory(i, data) => {
                            if i == next {
                                hasher.update(&data);
                                next += 1;
                            } else if i < n {
                                ready.set(i);
                            }
                            pool.give(data);
                        }
                        Piece::OnDisk(i) if i < n => ready.set(i),
                        Piece::OnDisk(_) => {}
                    }
                    while next < n && ready.get(next) {
                        let len = m.chunk_len(next) as usize;
                        file.read_exact_at(&mut buf[..len], m.chunk_offset(next))?;
                        hasher.update(&buf[..len]);
                        next += 1;
                    }
                }
                Ok(hasher.finish())
            })
            .expect("spawning the file hasher thread");
        OrderedHasher { tx, handle }
    }

    pub(super) async fn finish(self) -> std::io::Result<Digest> {
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
