//! The bookkeeping of one download, shared by its peer tasks: the picker, the counters, the
//! rates, the signals between tasks. No networking here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::{FileId, Fingerprint, Manifest};

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
    pub hasher: std::sync::mpsc::SyncSender<u32>,
    pub bytes_done: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub chunks_fetched: AtomicU32,
    pub retries: AtomicU32,
    pub dirty: AtomicBool,
    pub done: Notify,
    pub fatal: Mutex<Option<std::io::Error>>,
    /// Latest download rate of each connected peer, bytes per second.
    pub peer_rates: Mutex<HashMap<Fingerprint, u64>>,
    pub events: EventSink,
    pub stall_timeout: Duration,
    pub cancel: CancellationToken,
    /// Next picker identity of a peer connection.
    pub next_slot: AtomicU32,
}

impl DownloadState {
    pub fn picker(&self) -> std::sync::MutexGuard<'_, Picker> {
        // A panic while holding the lock cannot leave the picker half-updated: every method
        // finishes its state change before returning.
        self.picker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Emits a `Progress` event: bytes, chunks, speed over `speed`, `peers` connected.
    pub fn emit_progress(&self, speed: &mut SpeedMeter, peers: usize, bans: u32) {
        let sh = self;
        let done = sh.bytes_done.load(Ordering::Relaxed);
        let rate = speed.update(done);
        let chunks_done = sh.manifest.chunk_count() - sh.picker().remaining();
        let left = sh.manifest.size.saturating_sub(done);
        let peer_rates = sh
            .peer_rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(fp, bps)| PeerRate {
                fingerprint: *fp,
                bps: *bps,
            })
            .collect();
        sh.events.emit(Event::Progress {
            file_id: sh.file_id,
            bytes_done: done,
            bytes_total: sh.manifest.size,
            chunks_done,
            chunks_total: sh.manifest.chunk_count(),
            speed_bps: rate,
            eta_secs: (rate > 0).then(|| left / rate),
            peers: peers as u32,
            peer_rates,
            retries: sh.retries.load(Ordering::Relaxed),
            bans,
        });
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
