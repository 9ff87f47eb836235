//! A share: one file (or, later, one tree) this agent holds, complete or partial, and what
//! its connections share about it: which chunks are verified, who the tracker lists in its
//! swarm, which chunk was just given to whom (claims), whether it was withdrawn. No sockets:
//! the upload side in `peer/` reads this state, and `session` feeds it the swarm.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use torrentguard_protocol::{Bitfield, FileId, Fingerprint, Manifest};

use super::storage::{ChunkStorage, SingleFile};

/// How long a chunk given to one downloader is refused (`Busy`) to the others.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(2);

/// Who the tracker lists in a share's swarm, asked when an unknown certificate connects. The
/// session implements it over its tracker client, so nothing that serves peers holds one.
pub trait SwarmDirectory: Send + Sync {
    fn members<'a>(
        &'a self,
        id: &'a FileId,
    ) -> BoxFuture<'a, Result<Vec<Fingerprint>, SwarmLookupError>>;
}

/// Why the swarm could not be looked up (the tracker unreachable, an error answer).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SwarmLookupError(Box<dyn std::error::Error + Send + Sync>);

impl SwarmLookupError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        SwarmLookupError(Box::new(e))
    }
}

/// A file this agent serves, complete or partial.
pub struct SharedFile {
    pub file_id: FileId,
    pub manifest: Arc<Manifest>,
    storage: Arc<dyn ChunkStorage>,
    path: Mutex<PathBuf>,
    have: RwLock<Bitfield>,
    /// Size and modification time when shared; a complete file that no longer matches is
    /// withdrawn rather than served.
    on_disk: Mutex<Option<(u64, SystemTime)>>,
    haves: broadcast::Sender<u32>,
    /// Cancelled when the file is withdrawn, so the connections serving it and its announcer
    /// react at once; `withdraw_reason` says why.
    withdrawn: CancellationToken,
    withdraw_reason: Mutex<Option<WithdrawReason>>,
    swarm: Mutex<SwarmCache>,
    swarm_refresh: tokio::sync::Mutex<()>,
    /// Signalled when a refresh finds members we did not know (a download of this file may
    /// want to fetch from them).
    swarm_grew: tokio::sync::Notify,
    /// Which connection was last given each recently requested chunk, and when. A connection's
    /// claims are removed when it ends ([`ClaimsGuard`]).
    claims: Mutex<Claims>,
    pub uploaded: AtomicU64,
    /// Requests answered `Busy` because another connection held a claim.
    busy_refusals: AtomicU64,
}

/// Most claims one certificate holds at once (see `SharedFile::claim`).
pub const CLAIMS_PER_PEER: usize = 16;

#[derive(Default)]
struct Claims {
    by_chunk: HashMap<u32, Claim>,
    /// When each certificate's live claims were made, oldest first.
    recent_by_peer: HashMap<Fingerprint, VecDeque<Instant>>,
}

impl Claims {
    /// Records a new claim of `fp` unless it holds [`CLAIMS_PER_PEER`] live ones already.
    fn note_claim_of(&mut self, fp: Fingerprint, now: Instant) -> bool {
        if self.recent_by_peer.len() > 1024 {
            self.recent_by_peer.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < CLAIM_WINDOW)
            });
        }
        let times = self.recent_by_peer.entry(fp).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= CLAIM_WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= CLAIMS_PER_PEER {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// Which connection (of which certificate) was given a chunk first, and when.
struct Claim {
    conn: u64,
    fp: Fingerprint,
    at: Instant,
}

/// Why a shared file was withdrawn: in full for the local user, and without local paths for
/// the peers it is told to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawReason {
    pub local: String,
    pub remote: String,
}

impl std::fmt::Debug for SharedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFile")
            .field("file_id", &self.file_id)
            .field("path", &self.path())
            .field("withdrawn", &self.is_withdrawn())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct SwarmCache {
    members: HashSet<Fingerprint>,
    refreshed: Option<Instant>,
}

impl SharedFile {
    /// A complete file on disk (already verified against `manifest` by hashing it).
    pub fn complete(
        manifest: Arc<Manifest>,
        path: PathBuf,
        file: impl Into<Arc<File>>,
    ) -> std::io::Result<Arc<Self>> {
        let file = file.into();
        let meta = file.metadata()?;
        let on_disk = Some((meta.len(), meta.modified()?));
        let have = Bitfield::full(manifest.chunk_count());
        let storage = Arc::new(SingleFile::new(file, manifest.clone()));
        Ok(Self::build(manifest, path, storage, have, on_disk))
    }

    /// A complete directory share, read through `storage` (its files under `path`).
    pub fn complete_tree(
        manifest: Arc<Manifest>,
        path: PathBuf,
        storage: Arc<dyn ChunkStorage>,
    ) -> Arc<Self> {
        let have = Bitfield::full(manifest.chunk_count());
        Self::build(manifest, path, storage, have, None)
    }

    /// A partial download: serves the chunks in `have` as they are verified.
    pub fn partial(
        manifest: Arc<Manifest>,
        path: PathBuf,
        storage: Arc<dyn ChunkStorage>,
        have: Bitfield,
    ) -> Arc<Self> {
        Self::build(manifest, path, storage, have, None)
    }

    fn build(
        manifest: Arc<Manifest>,
        path: PathBuf,
        storage: Arc<dyn ChunkStorage>,
        have: Bitfield,
        on_disk: Option<(u64, SystemTime)>,
    ) -> Arc<Self> {
        Arc::new(SharedFile {
            file_id: manifest.file_id(),
            manifest,
            storage,
            path: Mutex::new(path),
            have: RwLock::new(have),
            on_disk: Mutex::new(on_disk),
            haves: broadcast::channel(1024).0,
            withdrawn: CancellationToken::new(),
            withdraw_reason: Mutex::new(None),
            swarm: Mutex::new(SwarmCache::default()),
            swarm_refresh: tokio::sync::Mutex::new(()),
            swarm_grew: tokio::sync::Notify::new(),
            claims: Mutex::new(Claims::default()),
            uploaded: AtomicU64::new(0),
            busy_refusals: AtomicU64::new(0),
        })
    }

    /// Where its chunks are read from.
    pub fn storage(&self) -> &Arc<dyn ChunkStorage> {
        &self.storage
    }

    /// Announcements of chunks verified from now on (a partial file being downloaded).
    pub fn subscribe_haves(&self) -> broadcast::Receiver<u32> {
        self.haves.subscribe()
    }

    pub fn path(&self) -> PathBuf {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The download finished and was renamed into place: serve it as a complete file now.
    pub fn promote(&self, path: PathBuf) {
        // A tree's directory changes as its files do; only a single file is watched.
        let meta = std::fs::metadata(&path)
            .ok()
            .filter(|_| !self.manifest.is_tree());
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
        *self.on_disk.lock().unwrap_or_else(|e| e.into_inner()) =
            meta.and_then(|m| Some((m.len(), m.modified().ok()?)));
    }

    pub fn have(&self) -> Bitfield {
        self.have.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn holds(&self, i: u32) -> bool {
        self.have.read().unwrap_or_else(|e| e.into_inner()).get(i)
    }

    /// Marks chunk `i` verified and on disk, and tells connected peers.
    pub fn add_chunk(&self, i: u32) {
        self.have.write().unwrap_or_else(|e| e.into_inner()).set(i);
        let _ = self.haves.send(i);
    }

    /// One file of a shared tree changed on disk: its chunks are no longer held (announced
    /// with the next bitfield, refused `NotHeld` meanwhile); the rest of the tree is served.
    pub fn forget_file(&self, entry: usize) {
        let Some(span) = self.manifest.tree_layout().and_then(|l| l.span_of(entry)) else {
            return;
        };
        let mut have = self.have.write().unwrap_or_else(|e| e.into_inner());
        for i in span.first_chunk..span.first_chunk + span.chunks {
            have.clear(i);
        }
    }

    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.is_cancelled()
    }

    /// Resolves once the file is withdrawn.
    pub async fn withdrawal(&self) {
        self.withdrawn.cancelled().await
    }

    /// Why the file was withdrawn, once it is.
    pub fn withdraw_reason(&self) -> Option<WithdrawReason> {
        self.withdraw_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests were answered `Busy` (another downloader held a claim on the chunk).
    pub fn busy_refusals(&self) -> u64 {
        self.busy_refusals.load(Ordering::Relaxed)
    }

    /// Checks that a complete file still has the size and modification time it was shared
    /// with; withdraws it (and says why) if not.
    pub fn check_unchanged(&self) -> Result<(), WithdrawReason> {
        if let Some(reason) = self.withdraw_reason() {
            return Err(reason);
        }
        let Some((len, mtime)) = *self.on_disk.lock().unwrap_or_else(|e| e.into_inner()) else {
            return Ok(());
        };
        let path = self.path();
        let now = std::fs::metadata(&path).map(|m| (m.len(), m.modified().ok()));
        let (local, remote) = match now {
            Ok((l, Some(t))) if l == len && t == mtime => return Ok(()),
            Ok((l, _)) if l != len => (
                format!("{} changed size ({len} → {l} bytes)", path.display()),
                format!("it changed size on the seeder's disk ({len} → {l} bytes)"),
            ),
            Ok(_) => (
                format!("{} was modified after it was shared", path.display()),
                "it changed on the seeder's disk after it was shared".to_string(),
            ),
            Err(e) => (
                format!("{}: {e}", path.display()),
                "it changed on the seeder's disk and can no longer be read".to_string(),
            ),
        };
        Err(self.withdraw(WithdrawReason { local, remote }))
    }

    /// Withdraws the file (the first reason given wins) and returns the reason in force.
    fn withdraw(&self, reason: WithdrawReason) -> WithdrawReason {
        let mut slot = self
            .withdraw_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let reason = slot.get_or_insert(reason).clone();
        if !self.withdrawn.is_cancelled() {
            tracing::warn!(file_id = %self.file_id, reason = %reason.local, "withdrawing shared file: it no longer matches its manifest");
            self.withdrawn.cancel();
        }
        reason
    }

    /// Whether connection `conn` may be sent chunk `i` now. Not if another connection was
    /// given it within [`CLAIM_WINDOW`]: that downloader will have it in a moment and passes it
    /// on to the others, so answering `Busy` saves this seeder's upload for chunks nobody has.
    /// A downloader alone never meets a claim.
    ///
    /// A certificate claims a chunk once: asking again (on any of its connections) is served
    /// but does not renew the claim, or a peer that re-requests every chunk every second would
    /// keep them all `Busy` for everyone else.
    ///
    /// And a certificate holds at most [`CLAIMS_PER_PEER`] claims at once: beyond, it is served
    /// without claiming. A downloader passes chunks on; one that only takes (it cannot be told
    /// apart up front) would otherwise keep whatever it sweeps through `Busy` for the others.
    ///
    /// `distrusted` names certificates whose claims make nobody wait (those in a cool-down).
    pub fn claim(
        &self,
        i: u32,
        conn: u64,
        fp: Fingerprint,
        distrusted: impl Fn(&Fingerprint) -> bool,
    ) -> bool {
        let now = Instant::now();
        let mut guard = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let claims = &mut *guard;
        if claims.by_chunk.len() > 8192 {
            claims
                .by_chunk
                .retain(|_, c| now.duration_since(c.at) < CLAIM_WINDOW);
        }
        match claims.by_chunk.get(&i) {
            Some(c) if c.fp == fp => true,
            Some(c) if now.duration_since(c.at) < CLAIM_WINDOW && !distrusted(&c.fp) => {
                self.busy_refusals.fetch_add(1, Ordering::Relaxed);
                false
            }
            _ => {
                if claims.note_claim_of(fp, now) {
                    claims.by_chunk.insert(i, Claim { conn, fp, at: now });
                }
                true
            }
        }
    }

    /// Drops every claim of connection `conn`: a downloader that left passes nothing on, so
    /// nobody may be told to wait for it.
    pub fn release_claims(&self, conn: u64) {
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_chunk
            .retain(|_, c| c.conn != conn);
    }

    /// Resolves when the swarm is found to have grown (see `admits`).
    pub async fn swarm_changed(&self) {
        self.swarm_grew.notified().await
    }

    /// Adds fingerprints the tracker listed in this file's swarm.
    pub fn note_swarm(&self, members: impl IntoIterator<Item = Fingerprint>) {
        self.swarm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .extend(members);
    }

    /// Whether the tracker lists `fp` in this file's swarm. An unknown fingerprint triggers one
    /// refresh from the tracker; peers arriving together share it, and a peer is refused only by
    /// a list fetched after it arrived (a downloader announces before it connects).
    pub async fn admits(&self, fp: &Fingerprint, directory: &dyn SwarmDirectory) -> bool {
        let arrived = Instant::now();
        if self
            .swarm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .contains(fp)
        {
            return true;
        }
        let _one_refresh_at_a_time = self.swarm_refresh.lock().await;
        {
            let s = self.swarm.lock().unwrap_or_else(|e| e.into_inner());
            if s.members.contains(fp) {
                return true;
            }
            if s.refreshed.is_some_and(|t| t >= arrived) {
                return false;
            }
        }
        // Stamped with when it was asked, not when it answered: a peer that arrives while a
        // refresh is under way may have announced after the tracker read its list, and must
        // get a refresh of its own.
        let asked = Instant::now();
        match directory.members(&self.file_id).await {
            Ok(list) => {
                let mut s = self.swarm.lock().unwrap_or_else(|e| e.into_inner());
                s.refreshed = Some(asked);
                let members: HashSet<Fingerprint> = list.into_iter().collect();
                if !members.is_subset(&s.members) {
                    self.swarm_grew.notify_one();
                }
                s.members = members;
                s.members.contains(fp)
            }
            Err(e) => {
                tracing::warn!(file_id = %self.file_id, error = %e, "cannot ask the tracker who is in the swarm; refusing the peer");
                false
            }
        }
    }
}

/// Removes a connection's claims when it ends, however it ends.
pub struct ClaimsGuard {
    file: Arc<SharedFile>,
    conn: u64,
}

impl ClaimsGuard {
    pub fn new(file: Arc<SharedFile>, conn: u64) -> Self {
        ClaimsGuard { file, conn }
    }
}

impl Drop for ClaimsGuard {
    fn drop(&mut self) {
        self.file.release_claims(self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use torrentguard_protocol::HashAlgo;
    use torrentguard_protocol::hashing::manifest_from_reader;

    #[test]
    fn a_chunk_given_to_one_downloader_is_busy_for_the_others_for_a_while() {
        let shared = small_shared();
        assert!(claim(&shared, 3, 1), "first asker gets it");
        assert!(
            claim(&shared, 3, 1),
            "and may ask again (a failed verification)"
        );
        assert!(!claim(&shared, 3, 2), "another downloader is told to wait");
        assert!(claim(&shared, 4, 2), "other chunks are free");
        // Once the window has passed, the chunk is served again.
        shared.claims.lock().unwrap().by_chunk.insert(
            3,
            Claim {
                conn: 1,
                fp: who(1),
                at: Instant::now() - CLAIM_WINDOW,
            },
        );
        assert!(claim(&shared, 3, 2));
        assert_eq!(shared.busy_refusals(), 1);
    }

    /// A directory whose first answer (the list as it was before the late peer announced) is
    /// held back until the test releases it; later answers list everyone.
    struct SlowDirectory {
        first: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
        calls: std::sync::atomic::AtomicU32,
        everyone: Vec<Fingerprint>,
    }

    impl SwarmDirectory for SlowDirectory {
        fn members<'a>(
            &'a self,
            _id: &'a FileId,
        ) -> BoxFuture<'a, Result<Vec<Fingerprint>, SwarmLookupError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(rx) = self.first.lock().await.take() {
                    let _ = rx.await;
                    return Ok(self.everyone[..1].to_vec());
                }
                assert!(n > 0);
                Ok(self.everyone.clone())
            })
        }
    }

    /// A peer that connects while a refresh it is not in is under way is not refused by that
    /// refresh's stale list: it gets one of its own (a race seen as a flaky engine test).
    #[tokio::test]
    async fn a_peer_arriving_during_a_refresh_gets_its_own() {
        let shared = Arc::new(small_shared());
        let (release, held) = tokio::sync::oneshot::channel();
        let dir = Arc::new(SlowDirectory {
            first: tokio::sync::Mutex::new(Some(held)),
            calls: std::sync::atomic::AtomicU32::new(0),
            everyone: vec![who(1), who(2)],
        });
        let early = {
            let (shared, dir) = (shared.clone(), dir.clone());
            tokio::spawn(async move { shared.admits(&who(1), &*dir).await })
        };
        while dir.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Peer 2 announced after the tracker answered that first refresh, and arrives now.
        let late = {
            let (shared, dir) = (shared.clone(), dir.clone());
            tokio::spawn(async move { shared.admits(&who(2), &*dir).await })
        };
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        assert!(early.await.unwrap());
        assert!(
            late.await.unwrap(),
            "refused by a list read before it arrived"
        );
        assert_eq!(dir.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// Test connections: connection `c` of certificate `c`.
    fn who(c: u64) -> Fingerprint {
        Fingerprint::of_der(&c.to_be_bytes())
    }

    fn claim(shared: &SharedFile, i: u32, c: u64) -> bool {
        shared.claim(i, c, who(c), |_| false)
    }

    /// A peer that re-requests every chunk on and on must not keep them `Busy` for the others.
    #[test]
    fn asking_again_does_not_renew_a_claim() {
        let shared = small_shared();
        assert!(claim(&shared, 5, 1));
        let first = shared.claims.lock().unwrap().by_chunk[&5].at;
        // Again, and on another connection of the same certificate: served, claim unchanged.
        assert!(claim(&shared, 5, 1));
        assert!(shared.claim(5, 7, who(1), |_| false));
        assert_eq!(shared.claims.lock().unwrap().by_chunk[&5].at, first);
        assert_eq!(shared.claims.lock().unwrap().by_chunk[&5].conn, 1);
        // Once its window is over, another downloader gets the chunk at once.
        shared
            .claims
            .lock()
            .unwrap()
            .by_chunk
            .get_mut(&5)
            .unwrap()
            .at = first - CLAIM_WINDOW;
        assert!(
            shared.claim(5, 7, who(1), |_| false),
            "the holder is still served"
        );
        assert!(claim(&shared, 5, 2));
        assert!(!claim(&shared, 5, 3));
        // Unless the holder is distrusted (cooling down): then nobody waits for it.
        assert!(shared.claim(5, 3, who(3), |fp| *fp == who(2)));
    }

    /// One certificate sweeping through the file makes at most `CLAIMS_PER_PEER` chunks wait.
    #[test]
    fn one_certificate_holds_a_bounded_number_of_claims() {
        let data = vec![5u8; 40 * 16384];
        let m = Arc::new(
            manifest_from_reader("f", &data[..], 16384, HashAlgo::Sha256, |_| {}).unwrap(),
        );
        let n = m.chunk_count();
        let shared =
            SharedFile::partial(m.clone(), PathBuf::from("f"), storage(m), Bitfield::new(n));
        for i in 0..n {
            assert!(claim(&shared, i, 1), "the sweeper is served every chunk");
        }
        let busy = (0..n).filter(|i| !claim(&shared, *i, 2)).count();
        assert!(n as usize > CLAIMS_PER_PEER);
        assert_eq!(busy, CLAIMS_PER_PEER);
    }

    fn small_shared() -> Arc<SharedFile> {
        let data = vec![5u8; 100_000];
        let m = Arc::new(
            manifest_from_reader("f", &data[..], 16384, HashAlgo::Sha256, |_| {}).unwrap(),
        );
        SharedFile::partial(m.clone(), PathBuf::from("f"), storage(m), Bitfield::new(7))
    }

    fn storage(m: Arc<Manifest>) -> Arc<dyn ChunkStorage> {
        Arc::new(SingleFile::new(Arc::new(tempfile::tempfile().unwrap()), m))
    }

    #[test]
    fn claims_die_with_their_connection() {
        let shared = small_shared();
        assert!(claim(&shared, 0, 1));
        assert!(claim(&shared, 1, 1));
        assert!(claim(&shared, 2, 3));
        {
            let _gone = ClaimsGuard {
                file: shared.clone(),
                conn: 1,
            };
        }
        // Connection 1 left: its chunks are served to the next downloader at once.
        assert!(claim(&shared, 0, 2));
        assert!(claim(&shared, 1, 2));
        // Another live connection's claim still stands.
        assert!(!claim(&shared, 2, 2));
        assert_eq!(shared.busy_refusals(), 1);
    }

    #[tokio::test]
    async fn a_changed_file_is_withdrawn_with_a_reason_free_of_local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.bin");
        let data = vec![9u8; 50_000];
        std::fs::write(&path, &data).unwrap();
        let m = Arc::new(
            manifest_from_reader("shared.bin", &data[..], 16384, HashAlgo::Sha256, |_| {}).unwrap(),
        );
        let f = SharedFile::complete(m, path.clone(), File::open(&path).unwrap()).unwrap();
        assert!(f.check_unchanged().is_ok());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut h| std::io::Write::write_all(&mut h, b"x"))
            .unwrap();
        let reason = f.check_unchanged().unwrap_err();
        assert!(reason.local.contains("shared.bin"), "{reason:?}");
        assert!(
            !reason.remote.contains(dir.path().to_str().unwrap()),
            "{reason:?}"
        );
        assert!(reason.remote.contains("changed size"), "{reason:?}");
        // Whoever waits on the withdrawal wakes, and the first reason stays.
        tokio::time::timeout(Duration::from_secs(5), f.withdrawal())
            .await
            .unwrap();
        assert_eq!(f.withdraw_reason(), Some(reason));
    }

    #[test]
    fn a_changed_file_of_a_tree_is_no_longer_held() {
        use torrentguard_protocol::{Entry, HashAlgo};
        let d = |b: &[u8]| HashAlgo::Sha256.digest(b);
        let entries = vec![Entry::file("a", 20_000, 0o644), Entry::file("b", 1, 0o644)];
        let chunks = vec![d(b"a0"), d(b"a1"), d(b"b")];
        let m = Arc::new(Manifest::tree(
            "t",
            16384,
            HashAlgo::Sha256,
            entries,
            chunks,
        ));
        let storage = Arc::new(crate::torrent::tree_store::TreeFiles::new(
            m.clone(),
            crate::torrent::tree_store::TreeRoot::Dir("/nonexistent".into()),
            false,
        ));
        let f = SharedFile::complete_tree(m, "/nonexistent".into(), storage);
        f.forget_file(0);
        assert_eq!(f.have().iter_set().collect::<Vec<_>>(), vec![2]);
        f.forget_file(7);
        assert_eq!(f.have().count(), 1);
    }
}
