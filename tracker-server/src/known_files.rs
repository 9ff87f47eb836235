//! The chunk counts of files the tracker has seen, kept in memory.
//!
//! A file's id is the hash of its manifest, so its chunk count never changes and files are
//! never deleted: an answer read once stays true on every replica. Every announce and report
//! needs it (to decode and check the bitfield or chunk index); asking the database each time
//! cost a pooled connection per request under load. Bounded: past the cap the map is emptied
//! and refills from the database.

use std::collections::HashMap;
use std::sync::Mutex;

use torrentguard_protocol::FileId;

/// Files remembered before the map starts over (a few MiB at most).
pub const MAX_KNOWN_FILES: usize = 100_000;

#[derive(Debug)]
pub struct KnownFiles {
    max: usize,
    chunks: Mutex<HashMap<FileId, u32>>,
}

impl KnownFiles {
    pub fn new(max: usize) -> Self {
        KnownFiles {
            max,
            chunks: Mutex::new(HashMap::new()),
        }
    }

    /// The chunk count of `id`, if it was seen.
    pub fn chunk_count(&self, id: &FileId) -> Option<u32> {
        self.lock().get(id).copied()
    }

    /// Remembers the chunk count of a registered file.
    pub fn remember(&self, id: FileId, chunks: u32) {
        let mut map = self.lock();
        if map.len() >= self.max && !map.contains_key(&id) {
            map.clear();
        }
        map.insert(id, chunks);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, u32>> {
        // The map holds plain values: one left by a panicking holder is still consistent.
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> FileId {
        FileId([n; 32])
    }

    #[test]
    fn counts_are_remembered_and_the_map_is_bounded() {
        let known = KnownFiles::new(2);
        assert_eq!(known.chunk_count(&id(1)), None);
        known.remember(id(1), 10);
        known.remember(id(2), 20);
        assert_eq!(known.chunk_count(&id(1)), Some(10));
        known.remember(id(2), 20);
        assert_eq!(
            known.chunk_count(&id(1)),
            Some(10),
            "a known id does not evict"
        );
        known.remember(id(3), 30);
        assert_eq!(known.chunk_count(&id(3)), Some(30));
        assert_eq!(
            known.chunk_count(&id(1)),
            None,
            "past the cap the map starts over"
        );
    }
}
