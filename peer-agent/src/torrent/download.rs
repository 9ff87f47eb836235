//! The bookkeeping of one download, shared by its peer tasks: the picker, the counters, the
//! rates, the signals between tasks. No networking here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::{Bitfield, FileId, Fingerprint, Manifest};

use super::picker::Picker;
use super::share::SharedFile;
use super::storage::ChunkStorage;
use crate::events::{Event, EventSink, PeerRate};

/// State every peer task of one download shares: what is had, fetched and in flight, and the
/// signals between the tasks. No sockets: the peer tasks in `peer/` act on it.
pub struct DownloadState {
    pub file_id: FileId,
    pub manifest: Arc<Manifest>,
    /// Where verified chunks are written.
    pub storage: Arc<dyn ChunkStorage>,
    pub part_path: PathBuf,
    pub shared_file: Arc<SharedFile>,
    pub picker: Mutex<Picker>,
    pub completions: broadcast::Sender<u32>,
    /// The in-order whole-file hasher of a single file (a tree has none).
    pub hasher: Option<std::sync::mpsc::SyncSender<u32>>,
    pub bytes_done: AtomicU64,
    /// Bytes and chunks this download wants (the `--only` selection, or everything).
    pub bytes_total: u64,
    pub chunks_total: u32,
    pub wanted: Bitfield,
    /// For a chunk whose digest other wanted chunks share (identical files, repeated blocks):
    /// its group, itself included. One fetch fills them all.
    pub copies: HashMap<u32, Arc<[u32]>>,
    pub bytes_fetched: AtomicU64,
    /// Bytes of chunk frames received (headers included; compressed ones as sent, duplicates
    /// and refused ones too): set against `bytes_fetched`, what compression saved.
    pub bytes_on_wire: AtomicU64,
    /// Chunks that arrived compressed.
    pub chunks_compressed: AtomicU32,
    pub chunks_fetched: AtomicU32,
    /// When the download started, and the first chunk fetched from a peer was verified
    /// (milliseconds after): the time to first byte, however the peer was reached.
    pub started: std::time::Instant,
    pub first_chunk_ms: std::sync::OnceLock<u64>,
    pub retries: AtomicU32,
    pub dirty: AtomicBool,
    pub done: Notify,
    pub fatal: Mutex<Option<std::io::Error>>,
    /// Latest download rate of each connected peer, bytes per second.
    /// Each connected peer's rate and the chunk bytes received over its connection.
    pub peer_rates: Mutex<HashMap<Fingerprint, (u64, u64)>>,
    pub events: EventSink,
    pub stall_timeout: Duration,
    pub cancel: CancellationToken,
    /// Next picker identity of a peer connection.
    pub next_slot: AtomicU32,
    /// Where peer tasks tell of a peer's misbehaviour, to be reported and remembered.
    pub misbehaved: tokio::sync::mpsc::UnboundedSender<Misbehaviour>,
}

/// A peer seen misbehaving in a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Misbehaviour {
    pub peer: Fingerprint,
    pub kind: torrentguard_protocol::api::ReportKind,
    /// The chunk concerned (a bad chunk's index).
    pub chunk: Option<u32>,
}

impl DownloadState {
    pub fn picker(&self) -> std::sync::MutexGuard<'_, Picker> {
        // A panic while holding the lock cannot leave the picker half-updated: every method
        // finishes its state change before returning.
        self.picker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunks verified and written (the picker's view, without the unwanted ones it
    /// treats as done).
    pub fn verified(&self) -> Bitfield {
        let mut have = self.picker().have_bitfield();
        for i in 0..have.len() {
            if !self.wanted.get(i) {
                have.clear(i);
            }
        }
        have
    }

    /// Emits a `Progress` event: bytes, chunks, speed over `speed`, `peers` connected.
    pub fn emit_progress(&self, speed: &mut SpeedMeter, peers: usize, bans: u32) {
        let sh = self;
        let done = sh.bytes_done.load(Ordering::Relaxed);
        let rate = speed.update(done);
        let chunks_done = sh.chunks_total - sh.picker().remaining();
        let left = sh.bytes_total.saturating_sub(done);
        let files = self.files_progress();
        let peer_rates = sh
            .peer_rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(fp, (bps, bytes))| PeerRate {
                fingerprint: *fp,
                bps: *bps,
                bytes: *bytes,
            })
            .collect();
        sh.events.emit(Event::Progress {
            file_id: sh.file_id,
            bytes_done: done,
            bytes_total: sh.bytes_total,
            chunks_done,
            chunks_total: sh.chunks_total,
            files_done: files.as_ref().map(|f| f.0),
            files_total: files.as_ref().map(|f| f.1),
            current_file: files.and_then(|f| f.2),
            speed_bps: rate,
            eta_secs: (rate > 0).then(|| left / rate),
            peers: peers as u32,
            peer_rates,
            retries: sh.retries.load(Ordering::Relaxed),
            bans,
        });
    }
}

/// The wanted chunks that share a digest, each mapped to its group (itself included, shared by
/// the whole group, so a file of a million identical chunks costs a million indices, not a
/// million squared). Sorting indices by digest costs 4 bytes a chunk.
pub fn identical_chunks(m: &Manifest, wanted: &Bitfield) -> HashMap<u32, Arc<[u32]>> {
    let mut order: Vec<u32> = wanted.iter_set().collect();
    order.sort_unstable_by(|a, b| {
        m.chunks[*a as usize]
            .as_bytes()
            .cmp(m.chunks[*b as usize].as_bytes())
    });
    let mut copies = HashMap::new();
    for group in order.chunk_by(|a, b| m.chunks[*a as usize] == m.chunks[*b as usize]) {
        if group.len() > 1 {
            let shared: Arc<[u32]> = group.into();
            for &i in group {
                copies.insert(i, shared.clone());
            }
        }
    }
    copies
}

impl DownloadState {
    /// For a tree: files complete, files wanted, and the first one still incomplete.
    fn files_progress(&self) -> Option<(u32, u32, Option<String>)> {
        let layout = self.manifest.tree_layout()?;
        let entries = self.manifest.entries();
        let picker = self.picker();
        let (mut done, mut total, mut current) = (0, 0, None);
        for span in layout.spans() {
            let range = span.first_chunk..span.first_chunk + span.chunks;
            if !self.wanted.get(span.first_chunk) {
                continue;
            }
            total += 1;
            if range.clone().all(|i| picker.has(i)) {
                done += 1;
            } else if current.is_none() {
                current = Some(entries[span.entry].path.clone());
            }
        }
        Some((done, total, current))
    }
}

/// Bytes-per-second over a sliding few seconds.
pub struct SpeedMeter {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl SpeedMeter {
    pub fn new(start: u64) -> Self {
        let mut samples = std::collections::VecDeque::new();
        samples.push_back((Instant::now(), start));
        SpeedMeter { samples }
    }

    pub fn update(&mut self, bytes: u64) -> u64 {
        let now = Instant::now();
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Duration::from_secs(3)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            0
        } else {
            ((bytes - b0) as f64 / dt) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::HashAlgo;

    #[test]
    fn identical_chunks_share_one_group_each() {
        // 1000 zero chunks, then two distinct ones, then one more zero chunk unwanted.
        let cs = 16 * 1024;
        let data: Vec<u8> = [
            vec![0u8; 1000 * cs],
            vec![1u8; cs],
            vec![2u8; cs],
            vec![0u8; cs],
        ]
        .concat();
        let m = Manifest::single(
            "z",
            data.len() as u64,
            cs as u32,
            HashAlgo::Sha256,
            data.chunks(cs)
                .map(|c| HashAlgo::Sha256.digest(c))
                .collect(),
            HashAlgo::Sha256.digest(&data),
        );
        let mut wanted = Bitfield::full(m.chunk_count());
        wanted.clear(1002);
        let copies = identical_chunks(&m, &wanted);
        assert_eq!(copies.len(), 1000, "only the zero chunks have copies");
        assert!(!copies.contains_key(&1000) && !copies.contains_key(&1002));
        let g = &copies[&0];
        assert_eq!(g.len(), 1000);
        assert!(Arc::ptr_eq(g, &copies[&999]), "one group, shared");
    }
}
