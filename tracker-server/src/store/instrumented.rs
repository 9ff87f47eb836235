//! A [`Store`] that times every call of the one it wraps, for `/metrics`: the handlers keep
//! talking to a `dyn Store` and every database gets the same figures.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use torrentguard_protocol::api::{FileSummary, Page, PeerInfo, PeerSummary};
use torrentguard_protocol::{FileId, Fingerprint, Manifest};

use super::{
    AnnounceRecord, Counts, EntrySlice, ManifestHead, PoolStatus, Registration, ReportRecord,
    ReportRow, Store, StoreError, SwarmSize,
};
use crate::metrics::Metrics;

pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        InstrumentedStore { inner, metrics }
    }

    /// Runs `call`, recording its time and outcome under `method`.
    fn timed<'a, T: Send + 'a>(
        &'a self,
        method: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move {
            let start = Instant::now();
            let result = call.await;
            self.metrics
                .record_store_call(method, start.elapsed(), result.is_ok());
            result
        })
    }
}

impl Store for InstrumentedStore {
    fn register_file<'a>(
        &'a self,
        id: FileId,
        manifest: &'a Manifest,
        now: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("register_file", self.inner.register_file(id, manifest, now))
    }

    fn manifest(&self, id: FileId) -> BoxFuture<'_, Result<Option<Manifest>, StoreError>> {
        self.timed("manifest", self.inner.manifest(id))
    }

    fn manifest_head(
        &self,
        id: FileId,
        max_entries: u32,
    ) -> BoxFuture<'_, Result<Option<ManifestHead>, StoreError>> {
        self.timed("manifest_head", self.inner.manifest_head(id, max_entries))
    }

    fn entries(
        &self,
        id: FileId,
        start: u32,
        limit: u32,
    ) -> BoxFuture<'_, Result<Option<EntrySlice>, StoreError>> {
        self.timed("entries", self.inner.entries(id, start, limit))
    }

    fn chunk_count(&self, id: FileId) -> BoxFuture<'_, Result<Option<u32>, StoreError>> {
        self.timed("chunk_count", self.inner.chunk_count(id))
    }

    fn list_files(
        &self,
        after: Option<FileId>,
        limit: u32,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Page<FileSummary>, StoreError>> {
        self.timed(
            "list_files",
            self.inner.list_files(after, limit, live_since),
        )
    }

    fn announce<'a>(&'a self, record: &'a AnnounceRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        self.timed("announce", self.inner.announce(record))
    }

    fn file_peers(
        &self,
        id: FileId,
        live_since: i64,
        exclude: Option<Fingerprint>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PeerInfo>, StoreError>> {
        self.timed(
            "file_peers",
            self.inner.file_peers(id, live_since, exclude, limit),
        )
    }

    fn list_peers(
        &self,
        after: Option<Fingerprint>,
        limit: u32,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Page<PeerSummary>, StoreError>> {
        self.timed(
            "list_peers",
            self.inner.list_peers(after, limit, live_since),
        )
    }

    fn expunge(&self, cutoff: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.timed("expunge", self.inner.expunge(cutoff))
    }

    fn counts(&self, live_since: i64) -> BoxFuture<'_, Result<Counts, StoreError>> {
        self.timed("counts", self.inner.counts(live_since))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.timed("ping", self.inner.ping())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }

    fn chunks_held(
        &self,
        first: FileId,
        last: FileId,
        live_since: i64,
    ) -> BoxFuture<'_, Result<Vec<(FileId, u64)>, StoreError>> {
        self.timed(
            "chunks_held",
            self.inner.chunks_held(first, last, live_since),
        )
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        self.inner.pool_status()
    }

    fn register_file_by<'a>(
        &'a self,
        id: FileId,
        manifest: &'a Manifest,
        now: i64,
        registrant: Fingerprint,
        max_files: u64,
    ) -> BoxFuture<'a, Result<Registration, StoreError>> {
        self.timed(
            "register_file_by",
            self.inner
                .register_file_by(id, manifest, now, registrant, max_files),
        )
    }

    fn swarm_size(
        &self,
        id: FileId,
        live_since: i64,
        peer: Fingerprint,
    ) -> BoxFuture<'_, Result<SwarmSize, StoreError>> {
        self.timed("swarm_size", self.inner.swarm_size(id, live_since, peer))
    }

    fn record_report<'a>(&'a self, r: &'a ReportRecord) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.timed("record_report", self.inner.record_report(r))
    }

    fn reports_about<'a>(
        &'a self,
        peers: &'a [Fingerprint],
        since: i64,
    ) -> BoxFuture<'a, Result<Vec<ReportRow>, StoreError>> {
        self.timed("reports_about", self.inner.reports_about(peers, since))
    }

    fn prune_reports(&self, cutoff: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.timed("prune_reports", self.inner.prune_reports(cutoff))
    }
}
