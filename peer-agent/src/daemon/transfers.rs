//! The live table of transfers: what each share and download is doing now, kept current by the
//! engine's events and by the daemon's flows, shown by the API and written through to the
//! database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::{FileId, Fingerprint};

use super::db::{PeerDelta, TransferRow};
use super::model::{Kind, PeerState, Status, TransferView};
use crate::agent::TrackerTarget;
use crate::events::Event;
use crate::torrent::SharedFile;

pub type Key = (Kind, FileId);

/// What the user asked for a share (`share` flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShareSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub follow_symlinks: bool,
}

/// What the user asked for a download (`get` flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownloadSpec {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub only: Vec<String>,
}

/// A peer seen by a download in this run.
#[derive(Debug, Clone)]
pub struct LivePeer {
    pub address: Option<String>,
    pub download_bps: u64,
    pub state: PeerState,
    /// Bytes its current connection had delivered at the last progress event.
    pub bytes_seen: u64,
}

/// One transfer.
pub struct Entry {
    pub kind: Kind,
    pub file_id: FileId,
    pub name: String,
    pub size: u64,
    /// A share: the path shared. A download: the output directory, then the output path.
    pub path: PathBuf,
    pub out_dir: PathBuf,
    pub paused: bool,
    pub status: Status,
    pub error: Option<String>,
    pub tracker: TrackerTarget,
    pub share_spec: ShareSpec,
    pub download_spec: DownloadSpec,
    /// A share's manifest and source stats as last hashed (JSON, as stored).
    pub manifest: Option<String>,
    pub sources: Option<String>,
    pub added_at: i64,
    pub completed_at: Option<i64>,
    pub bytes_done: u64,
    pub bytes_reused: u64,
    pub bytes_fetched: u64,
    pub download_bps: u64,
    pub eta_secs: Option<u64>,
    pub peers: HashMap<Fingerprint, LivePeer>,
    /// Bytes uploaded in earlier runs; this run's are `shared.uploaded`.
    pub uploaded_before: u64,
    pub upload_bps: u64,
    pub last_uploaded: u64,
    /// What is served while seeding (or downloading).
    pub shared: Option<Arc<SharedFile>>,
    pub seeding_since: Option<Instant>,
    /// Stops what runs for this transfer (its download, its announces).
    pub cancel: Option<CancellationToken>,
    /// Cancelled when its download task has ended (it has then left the seeder and the swarm).
    pub finished: Option<CancellationToken>,
    pub share_code: Option<String>,
}

impl Entry {
    pub fn new(kind: Kind, file_id: FileId, tracker: TrackerTarget, path: PathBuf) -> Entry {
        Entry {
            kind,
            file_id,
            name: String::new(),
            size: 0,
            out_dir: path.clone(),
            path,
            paused: false,
            status: Status::Queued,
            error: None,
            tracker,
            share_spec: ShareSpec::default(),
            download_spec: DownloadSpec::default(),
            manifest: None,
            sources: None,
            added_at: now_secs(),
            completed_at: None,
            bytes_done: 0,
            bytes_reused: 0,
            bytes_fetched: 0,
            download_bps: 0,
            eta_secs: None,
            peers: HashMap::new(),
            uploaded_before: 0,
            upload_bps: 0,
            last_uploaded: 0,
            shared: None,
            seeding_since: None,
            cancel: None,
            finished: None,
            share_code: None,
        }
    }

    pub fn key(&self) -> Key {
        (self.kind, self.file_id)
    }

    pub fn uploaded(&self) -> u64 {
        self.uploaded_before
            + self
                .shared
                .as_ref()
                .map_or(0, |s| s.uploaded.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether it holds one of the download slots of `--max-active-downloads`.
    pub fn holds_slot(&self) -> bool {
        self.kind == Kind::Download && self.status == Status::Downloading
    }

    pub fn view(&self) -> TransferView {
        let percent = if self.size == 0 {
            if self.bytes_done > 0 || self.completed_at.is_some() {
                100.0
            } else {
                0.0
            }
        } else {
            (self.bytes_done as f64 * 100.0 / self.size as f64).min(100.0)
        };
        let connected = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Connected)
            .count();
        TransferView {
            id: self.file_id.to_string(),
            kind: self.kind,
            name: self.name.clone(),
            size: self.size,
            path: self.path.display().to_string(),
            status: self.status,
            error: self.error.clone(),
            bytes_done: self.bytes_done,
            percent,
            download_bps: self.download_bps,
            upload_bps: self.upload_bps,
            eta_secs: self.eta_secs,
            peers: connected as u32,
            bytes_reused: self.bytes_reused,
            bytes_fetched: self.bytes_fetched,
            uploaded: self.uploaded(),
            share_code: self.share_code.clone(),
            added_at: self.added_at,
        }
    }

    pub fn row(&self) -> TransferRow {
        let options = match self.kind {
            Kind::Share => serde_json::to_string(&self.share_spec),
            Kind::Download => serde_json::to_string(&self.download_spec),
        }
        .expect("plain structs serialize");
        TransferRow {
            kind: self.kind.as_str().into(),
            file_id: self.file_id.to_string(),
            name: self.name.clone(),
            size: self.size as i64,
            path: match self.kind {
                Kind::Share => self.path.display().to_string(),
                Kind::Download => self.out_dir.display().to_string(),
            },
            wanted: if self.paused { "paused" } else { "active" }.into(),
            state: self.status.as_str().into(),
            error: self.error.clone(),
            bytes_done: self.bytes_done as i64,
            uploaded: self.uploaded() as i64,
            tracker_url: self.tracker.url.clone(),
            tracker_fp: self.tracker.fingerprint.map(|f| f.to_string()),
            swarm_token: self.tracker.token.clone(),
            options,
            manifest: self.manifest.clone(),
            sources: self.sources.clone(),
            added_at: self.added_at,
            completed_at: self.completed_at,
        }
    }

    /// Rebuilds an entry from its row (at start). The status is where it got; the daemon then
    /// decides what to run.
    pub fn from_row(r: TransferRow) -> Result<Entry, String> {
        let kind = Kind::parse(&r.kind).ok_or_else(|| format!("kind {:?}", r.kind))?;
        let file_id: FileId = r
            .file_id
            .parse()
            .map_err(|e| format!("file id {:?}: {e}", r.file_id))?;
        let fingerprint = match &r.tracker_fp {
            Some(f) => Some(f.parse().map_err(|e| format!("fingerprint {f:?}: {e}"))?),
            None => None,
        };
        let tracker = TrackerTarget {
            url: r.tracker_url.clone(),
            fingerprint,
            token: r.swarm_token.clone(),
        };
        let mut e = Entry::new(kind, file_id, tracker, PathBuf::from(&r.path));
        e.name = r.name;
        e.size = r.size.max(0) as u64;
        e.paused = r.wanted == "paused";
        e.status = Status::parse(&r.state).ok_or_else(|| format!("state {:?}", r.state))?;
        e.error = r.error;
        e.bytes_done = r.bytes_done.max(0) as u64;
        e.uploaded_before = r.uploaded.max(0) as u64;
        match kind {
            Kind::Share => e.share_spec = serde_json::from_str(&r.options).unwrap_or_default(),
            Kind::Download => {
                e.download_spec = serde_json::from_str(&r.options).unwrap_or_default();
                if r.completed_at.is_some() {
                    e.path = e.out_dir.join(&e.name);
                }
            }
        }
        e.manifest = r.manifest;
        e.sources = r.sources;
        e.added_at = r.added_at;
        e.completed_at = r.completed_at;
        Ok(e)
    }

    /// Folds one engine event into the entry. Returns what it says about a peer's conduct, for
    /// the database.
    pub fn apply(&mut self, event: &Event) -> Vec<(Fingerprint, PeerDelta)> {
        match event {
            Event::Started {
                name,
                size,
                bytes_reused,
                ..
            } => {
                self.name = name.clone();
                self.size = *size;
                self.bytes_reused = *bytes_reused;
                Vec::new()
            }
            Event::Progress {
                bytes_done,
                speed_bps,
                eta_secs,
                peer_rates,
                ..
            } => self.progress(*bytes_done, *speed_bps, *eta_secs, peer_rates),
            Event::PeerConnected {
                fingerprint,
                address,
                ..
            } => {
                let address = Some(address.to_string());
                self.peers.insert(
                    *fingerprint,
                    LivePeer {
                        address: address.clone(),
                        download_bps: 0,
                        state: PeerState::Connected,
                        bytes_seen: 0,
                    },
                );
                let d = PeerDelta {
                    address,
                    ..Default::default()
                };
                vec![(*fingerprint, d)]
            }
            Event::PeerDropped {
                fingerprint,
                reason,
                ..
            } => {
                self.set_peer_state(fingerprint, PeerState::Dropped);
                let d = PeerDelta {
                    last_error: Some(reason.clone()),
                    ..Default::default()
                };
                vec![(*fingerprint, d)]
            }
            Event::PeerBanned {
                fingerprint,
                reason,
                ..
            } => {
                self.set_peer_state(fingerprint, PeerState::Banned);
                let d = PeerDelta {
                    bans: 1,
                    last_error: Some(reason.clone()),
                    ..Default::default()
                };
                vec![(*fingerprint, d)]
            }
            Event::ChunkRetry {
                fingerprint,
                reason,
                ..
            } => {
                let d = PeerDelta {
                    chunks_failed: 1,
                    last_error: Some(reason.clone()),
                    ..Default::default()
                };
                vec![(*fingerprint, d)]
            }
            Event::Completed {
                path,
                bytes,
                bytes_fetched,
                bytes_reused,
                ..
            } => {
                self.path = path.clone();
                self.bytes_done = *bytes;
                self.bytes_fetched = *bytes_fetched;
                self.bytes_reused = *bytes_reused;
                self.download_bps = 0;
                self.eta_secs = None;
                // The download's connections end with it.
                for p in self.peers.values_mut() {
                    p.download_bps = 0;
                    if p.state == PeerState::Connected {
                        p.state = PeerState::Dropped;
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn progress(
        &mut self,
        bytes_done: u64,
        speed_bps: u64,
        eta_secs: Option<u64>,
        rates: &[crate::events::PeerRate],
    ) -> Vec<(Fingerprint, PeerDelta)> {
        self.bytes_fetched = self
            .bytes_fetched
            .max(bytes_done.saturating_sub(self.bytes_reused));
        self.bytes_done = bytes_done;
        self.download_bps = speed_bps;
        self.eta_secs = eta_secs;
        for p in self.peers.values_mut() {
            p.download_bps = 0;
        }
        let mut deltas = Vec::new();
        for r in rates {
            let Some(p) = self.peers.get_mut(&r.fingerprint) else {
                continue;
            };
            p.download_bps = r.bps;
            // A count below the last one is a new connection, counting from 0.
            let new = if r.bytes >= p.bytes_seen {
                r.bytes - p.bytes_seen
            } else {
                r.bytes
            };
            p.bytes_seen = r.bytes;
            if new > 0 {
                let d = PeerDelta {
                    bytes_received: new as i64,
                    ..Default::default()
                };
                deltas.push((r.fingerprint, d));
            }
        }
        deltas
    }

    fn set_peer_state(&mut self, fp: &Fingerprint, state: PeerState) {
        let p = self.peers.entry(*fp).or_insert(LivePeer {
            address: None,
            download_bps: 0,
            state,
            bytes_seen: 0,
        });
        p.state = state;
        p.download_bps = 0;
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let t = TrackerTarget {
            url: "https://127.0.0.1:1".into(),
            fingerprint: None,
            token: Some("t".into()),
        };
        Entry::new(Kind::Download, FileId([7; 32]), t, "/tmp/out".into())
    }

    #[test]
    fn a_row_round_trips() {
        let mut e = entry();
        e.name = "a.bin".into();
        e.size = 100;
        e.paused = true;
        e.status = Status::Paused;
        e.download_spec.only = vec!["*.txt".into()];
        let back = Entry::from_row(e.row()).unwrap();
        assert_eq!(back.row(), e.row());
        assert_eq!(back.tracker.token.as_deref(), Some("t"));
        let mut bad = e.row();
        bad.state = "dancing".into();
        assert!(Entry::from_row(bad).is_err());
    }

    #[test]
    fn events_move_progress_and_peer_records() {
        let mut e = entry();
        let fp = Fingerprint::from_bytes([1; 32]);
        let started = Event::Started {
            file_id: e.file_id,
            name: "a.bin".into(),
            size: 1000,
            chunks_total: 4,
            chunks_have: 1,
            discarded: 0,
            bytes_reused: 250,
        };
        e.apply(&started);
        let connected = Event::PeerConnected {
            file_id: e.file_id,
            fingerprint: fp,
            address: "127.0.0.1:5".parse().unwrap(),
            cipher: String::new(),
            group: String::new(),
            path: crate::peer::Path::Direct,
            tries: 1,
            after_ms: 1,
        };
        assert_eq!(e.apply(&connected).len(), 1);
        assert_eq!(e.view().peers, 1);
        let banned = Event::PeerBanned {
            file_id: e.file_id,
            fingerprint: fp,
            reason: "corrupt".into(),
        };
        let d = e.apply(&banned);
        assert_eq!(d[0].1.bans, 1);
        assert_eq!(
            e.view().peers,
            0,
            "a banned peer is not counted as connected"
        );
        assert_eq!(e.view().bytes_reused, 250);
        assert_eq!(e.view().name, "a.bin");
    }

    /// A peer's bytes are what its connection delivered since the last progress event; a
    /// reconnection counts from 0 again and is not lost.
    #[test]
    fn peer_bytes_add_up_across_progress_events_and_reconnections() {
        let mut e = entry();
        let fp = Fingerprint::from_bytes([2; 32]);
        let connect = |e: &mut Entry| {
            e.apply(&Event::PeerConnected {
                file_id: e.file_id,
                fingerprint: fp,
                address: "127.0.0.1:6".parse().unwrap(),
                cipher: String::new(),
                group: String::new(),
                path: crate::peer::Path::Direct,
                tries: 1,
                after_ms: 1,
            })
        };
        let progress = |e: &mut Entry, bytes: u64| {
            let rates = vec![crate::events::PeerRate {
                fingerprint: fp,
                bps: 10,
                bytes,
            }];
            e.progress(0, 0, None, &rates)
                .iter()
                .map(|(_, d)| d.bytes_received)
                .sum::<i64>()
        };
        connect(&mut e);
        assert_eq!(progress(&mut e, 100), 100);
        assert_eq!(progress(&mut e, 250), 150);
        assert_eq!(progress(&mut e, 250), 0);
        connect(&mut e);
        assert_eq!(progress(&mut e, 40), 40, "a new connection counts from 0");
        assert_eq!(
            progress(&mut e, 30),
            30,
            "a count going down is one more new connection"
        );
    }
}
