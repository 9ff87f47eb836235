//! The agent's own memory of peers that misbehaved in its downloads (a chunk that failed
//! verification, or stalls enough to ban them), kept across downloads and restarts in
//! [`MISBEHAVING_FILE`] in the data directory.
//!
//! Bounded ([`MAX_REMEMBERED`] peers, the oldest forgotten first) and forgetful
//! ([`REMEMBER_FOR`]): a fingerprint is a certificate, which a peer may replace, and an honest
//! peer that once had a bad disk should get another chance. Later downloads connect to a
//! remembered peer only when no other peer is usable, and with half the ban already counted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::api::ReportKind;
use torrentguard_trust::identity::write_atomically;

/// The memory's file in the agent's data directory.
pub const MISBEHAVING_FILE: &str = "misbehaving_peers.json";
/// Most peers remembered; past it the one seen misbehaving longest ago is forgotten.
pub const MAX_REMEMBERED: usize = 1024;
/// How long a peer is remembered after it last misbehaved.
pub const REMEMBER_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum MisbehavingError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: torrentguard_trust::IdentityError,
    },
    #[error("encoding the misbehaving peers: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What is remembered of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub fingerprint: Fingerprint,
    /// What it did last.
    pub kind: ReportKind,
    /// Downloads it misbehaved in.
    pub times: u32,
    /// Unix seconds it last misbehaved.
    pub last: i64,
}

/// The memory, loaded once per agent and written through on every change.
#[derive(Debug)]
pub struct MisbehavingPeers {
    path: PathBuf,
    peers: Mutex<HashMap<Fingerprint, Remembered>>,
    /// [`MAX_REMEMBERED`]; tests lower it.
    capacity: usize,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        // A clock before 1970: everything looks fresh, which only keeps peers remembered.
        .unwrap_or(0)
}

fn forget_before(now: i64) -> i64 {
    now.saturating_sub(REMEMBER_FOR.as_secs() as i64)
}

impl MisbehavingPeers {
    /// The memory kept in `data_dir`. A missing file is an empty memory; an unreadable one is
    /// too (with a warning): it only ever makes downloads more careful, so losing it costs
    /// little, and it must never stop the agent.
    pub fn load(data_dir: &Path) -> Self {
        let path = data_dir.join(MISBEHAVING_FILE);
        let peers = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Remembered>>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable list of misbehaving peers");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the list of misbehaving peers");
                Vec::new()
            }
        };
        let peers = peers.into_iter().map(|r| (r.fingerprint, r)).collect();
        MisbehavingPeers {
            path,
            peers: Mutex::new(peers),
            capacity: MAX_REMEMBERED,
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Remembered>> {
        // Every change is whole before the lock is released, so a poisoned map is consistent.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peers remembered now.
    pub fn remembered(&self) -> HashSet<Fingerprint> {
        let since = forget_before(unix_now());
        self.peers()
            .values()
            .filter(|r| r.last >= since)
            .map(|r| r.fingerprint)
            .collect()
    }

    /// What is remembered of `peer`, if anything.
    pub fn get(&self, peer: &Fingerprint) -> Option<Remembered> {
        let since = forget_before(unix_now());
        self.peers().get(peer).filter(|r| r.last >= since).cloned()
    }

    /// Remembers that `peer` did `kind` in one more download, and writes the file (blocking
    /// I/O: call it off the async workers).
    pub fn note(&self, peer: Fingerprint, kind: ReportKind) -> Result<(), MisbehavingError> {
        self.note_at(peer, kind, unix_now())
    }

    fn note_at(
        &self,
        peer: Fingerprint,
        kind: ReportKind,
        now: i64,
    ) -> Result<(), MisbehavingError> {
        let snapshot = {
            let mut peers = self.peers();
            let since = forget_before(now);
            peers.retain(|_, r| r.last >= since);
            let r = peers.entry(peer).or_insert(Remembered {
                fingerprint: peer,
                kind,
                times: 0,
                last: now,
            });
            r.kind = kind;
            r.times = r.times.saturating_add(1);
            r.last = now;
            while peers.len() > self.capacity {
                let oldest = peers.values().min_by_key(|r| r.last).map(|r| r.fingerprint);
                match oldest {
                    Some(fp) => peers.remove(&fp),
                    None => break,
                };
            }
            let mut list: Vec<_> = peers.values().cloned().collect();
            list.sort_by_key(|r| r.fingerprint);
            list
        };
        let bytes = serde_json::to_vec_pretty(&snapshot)?;
        write_atomically(&self.path, &bytes, 0o600).map_err(|source| MisbehavingError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u16) -> Fingerprint {
        let mut b = [7u8; 32];
        b[..2].copy_from_slice(&n.to_be_bytes());
        Fingerprint::from_bytes(b)
    }

    #[test]
    fn notes_persist_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let m = MisbehavingPeers::load(dir.path());
        assert!(m.remembered().is_empty());
        m.note(fp(1), ReportKind::BadChunk).unwrap();
        m.note(fp(1), ReportKind::Stall).unwrap();
        let again = MisbehavingPeers::load(dir.path());
        assert_eq!(again.remembered(), HashSet::from([fp(1)]));
        let r = again.get(&fp(1)).unwrap();
        assert_eq!((r.kind, r.times), (ReportKind::Stall, 2));
        assert!(again.get(&fp(2)).is_none());
    }

    #[test]
    fn old_notes_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let m = MisbehavingPeers::load(dir.path());
        let long_ago = unix_now() - REMEMBER_FOR.as_secs() as i64 - 10;
        m.note_at(fp(1), ReportKind::BadChunk, long_ago).unwrap();
        assert!(m.remembered().is_empty());
        assert!(m.get(&fp(1)).is_none());
        // The next note drops it from the file too.
        m.note(fp(2), ReportKind::BadChunk).unwrap();
        let text = std::fs::read_to_string(dir.path().join(MISBEHAVING_FILE)).unwrap();
        assert!(!text.contains(&fp(1).to_string()), "{text}");
    }

    #[test]
    fn the_memory_is_bounded_forgetting_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MisbehavingPeers::load(dir.path());
        m.capacity = 5;
        let now = unix_now();
        for n in 0..=5 {
            m.note_at(fp(n), ReportKind::BadChunk, now - 1000 + i64::from(n))
                .unwrap();
        }
        let kept = MisbehavingPeers::load(dir.path()).remembered();
        assert_eq!(kept.len(), 5);
        assert!(!kept.contains(&fp(0)));
        assert!(kept.contains(&fp(5)));
    }

    #[test]
    fn a_damaged_file_is_an_empty_memory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MISBEHAVING_FILE), b"{not json").unwrap();
        let m = MisbehavingPeers::load(dir.path());
        assert!(m.remembered().is_empty());
        m.note(fp(3), ReportKind::BadChunk).unwrap();
        assert_eq!(MisbehavingPeers::load(dir.path()).remembered().len(), 1);
    }
}
