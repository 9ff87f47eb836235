//! How many requests to keep out to one peer: enough to cover the bandwidth-delay product of
//! the path to it, measured, not assumed.
//!
//! The window (in bytes) is `rate × (2 × rtt + SERVE_TIME)`:
//! - `rtt` is the least round trip seen on the connection: the TCP handshake (one round trip,
//!   measured by the connecting side) or, if ever shorter, a request answered by its chunk;
//! - `rate` is the best delivery rate, each measured over one round trip, seen in the last few
//!   round trips (a max filter, so one slow moment does not shrink the window; a short
//!   horizon, so the window follows the link within round trips rather than seconds);
//! - the factor 2 is the gain that lets a window-limited connection double each round trip
//!   until the link, not the window, is the limit (as TCP's slow start and BBR's cwnd gain);
//! - `SERVE_TIME` covers the seeder's read and encryption of a chunk and our verification,
//!   which no round-trip measurement sees.
//!
//! Two chunks are added so a peer is never left idle while one chunk is being verified, and
//! the window is capped at [`MAX_REQUESTS`] (what a seeder queues by default before answering
//! `Busy`) and [`MAX_WINDOW_BYTES`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use torrentguard_protocol::Manifest;

/// Requests a seeder queues per connection by default (`Limits::max_queued_requests`).
pub const MAX_REQUESTS: usize = 128;
/// Bytes of requests out to one peer, at most.
pub const MAX_WINDOW_BYTES: u64 = 64 << 20;
/// Chunks out beyond the bandwidth-delay product, and the least window.
pub const MIN_REQUESTS: usize = 2;
/// Time a seeder and we spend on a chunk that no round trip includes.
pub const SERVE_TIME: Duration = Duration::from_millis(20);
/// A rate is measured over at least this long, so a very short round trip still averages over
/// many chunks...
const SPAN_FLOOR: Duration = Duration::from_millis(20);
/// ...and the best rate is kept for this many round trips...
const HORIZON_RTTS: u32 = 8;
/// ...and at least this long.
const MIN_HORIZON: Duration = Duration::from_millis(250);

/// The request window of one peer connection.
#[derive(Debug)]
pub struct RequestWindow {
    chunk_size: u64,
    rtt: Option<Duration>,
    /// (when, bytes received so far), back to one sample older than `horizon + span`.
    samples: VecDeque<(Instant, u64)>,
    /// (when, rate over the span ending then) within the horizon, rates decreasing from the
    /// front: the max filter.
    peaks: VecDeque<(Instant, u64)>,
}

impl RequestWindow {
    pub fn new(chunk_size: u32, rtt: Option<Duration>, now: Instant) -> Self {
        RequestWindow {
            chunk_size: u64::from(chunk_size.max(1)),
            rtt,
            samples: VecDeque::from([(now, 0)]),
            peaks: VecDeque::new(),
        }
    }

    /// The window of a download of `m`, counted in its mean chunk length: a tree of small
    /// files has chunks far shorter than its chunk size.
    pub fn for_manifest(m: &Manifest, rtt: Option<Duration>, now: Instant) -> Self {
        let n = u64::from(m.chunk_count().max(1));
        let mean = (m.size / n).clamp(1, u64::from(m.chunk_size.max(1)));
        Self::new(mean as u32, rtt, now)
    }

    /// A request answered after `latency`: a round trip plus queueing, so an upper bound.
    pub fn on_round_trip(&mut self, latency: Duration) {
        self.rtt = Some(self.rtt.map_or(latency, |r| r.min(latency)));
    }

    /// Rates are measured over one round trip (at least `SPAN_FLOOR`)...
    fn span(&self) -> Duration {
        self.rtt.unwrap_or_default().max(SPAN_FLOOR)
    }

    /// ...and the best of them is kept for a few round trips.
    fn horizon(&self) -> Duration {
        self.rtt
            .unwrap_or_default()
            .saturating_mul(HORIZON_RTTS)
            .max(MIN_HORIZON)
    }

    /// `total` bytes have arrived on the connection by `now`. O(log n) in the samples kept:
    /// called for every chunk, thousands of times a second on a tree of small files.
    pub fn on_delivered(&mut self, now: Instant, total: u64) {
        let (span, horizon) = (self.span(), self.horizon());
        // The newest sample at least a span old (samples are in time order), or the oldest
        // one while there is none.
        let older = self
            .samples
            .partition_point(|(t, _)| now.duration_since(*t) >= span);
        let base = self.samples.get(older.saturating_sub(1)).copied();
        if let Some((t0, b0)) = base {
            let dt = now.duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                let rate = (total.saturating_sub(b0) as f64 / dt) as u64;
                // A monotonic queue: a rate is dropped once a newer one is at least as high,
                // so the front is the best within the horizon.
                while self.peaks.back().is_some_and(|(_, r)| *r <= rate) {
                    self.peaks.pop_back();
                }
                self.peaks.push_back((now, rate));
            }
        }
        self.samples.push_back((now, total));
        let keep = horizon + span;
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) > keep {
            self.samples.pop_front();
        }
        while self.peaks.len() > 1 && now.duration_since(self.peaks[0].0) > horizon {
            self.peaks.pop_front();
        }
    }

    /// The least round trip measured, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Best delivery rate over the last few round trips, bytes per second.
    pub fn rate(&self) -> u64 {
        self.peaks.front().map_or(0, |(_, r)| *r)
    }

    /// Requests to keep out now.
    pub fn depth(&self) -> usize {
        let cover = self.rtt.unwrap_or_default().saturating_mul(2) + SERVE_TIME;
        let bytes = (self.rate() as f64 * cover.as_secs_f64()).min(MAX_WINDOW_BYTES as f64) as u64;
        let chunks = bytes.div_ceil(self.chunk_size) as usize + MIN_REQUESTS;
        let cap = ((MAX_WINDOW_BYTES / self.chunk_size) as usize).clamp(MIN_REQUESTS, MAX_REQUESTS);
        chunks.clamp(MIN_REQUESTS, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 256 * 1024;

    /// Feeds `secs` of delivery at `bps` in steps of one chunk.
    fn deliver(w: &mut RequestWindow, start: Instant, secs: f64, bps: f64) -> Instant {
        let per_chunk = f64::from(CHUNK) / bps;
        let steps = (secs / per_chunk) as u64;
        let mut now = start;
        for k in 1..=steps {
            now = start + Duration::from_secs_f64(per_chunk * k as f64);
            w.on_delivered(now, k * u64::from(CHUNK));
        }
        now
    }

    #[test]
    fn a_tree_of_small_files_counts_its_window_in_their_length() {
        use torrentguard_protocol::{Entry, HashAlgo};
        let entries: Vec<Entry> = (0..100)
            .map(|i| Entry::file(format!("f{i:03}"), 4096, 0o644))
            .collect();
        let chunks = (0..100)
            .map(|_| HashAlgo::Sha256.digest(&[0u8; 4096]))
            .collect();
        let m = Manifest::tree("t", CHUNK, HashAlgo::Sha256, entries, chunks);
        let w = RequestWindow::for_manifest(&m, None, Instant::now());
        assert_eq!(w.chunk_size, 4096);
        let d = HashAlgo::Sha256.digest(b"");
        let single = Manifest::single(
            "f",
            10 * u64::from(CHUNK),
            CHUNK,
            HashAlgo::Sha256,
            vec![d; 10],
            d,
        );
        assert_eq!(
            RequestWindow::for_manifest(&single, None, Instant::now()).chunk_size,
            u64::from(CHUNK)
        );
    }

    #[test]
    fn an_unmeasured_connection_starts_at_the_least_window() {
        let w = RequestWindow::new(CHUNK, None, Instant::now());
        assert_eq!(w.depth(), MIN_REQUESTS);
    }

    #[test]
    fn the_window_covers_twice_the_bandwidth_delay_product() {
        // 1 Gbit/s, 40 ms: the BDP is 5 MB (19 chunks); two round trips and the serve time
        // are 100 ms = 12.5 MB = 48 chunks, plus the two spare.
        let t0 = Instant::now();
        let mut w = RequestWindow::new(CHUNK, Some(Duration::from_millis(40)), t0);
        deliver(&mut w, t0, 2.0, 125e6);
        let bdp_chunks = (125e6 * 0.040 / f64::from(CHUNK)).ceil() as usize;
        assert!(
            w.depth() >= 2 * bdp_chunks,
            "{} < 2 × {bdp_chunks}",
            w.depth()
        );
        assert_eq!(w.depth(), 48 + MIN_REQUESTS);
    }

    #[test]
    fn a_longer_round_trip_gets_a_larger_window_at_the_same_rate() {
        let t0 = Instant::now();
        let mut near = RequestWindow::new(CHUNK, Some(Duration::from_millis(1)), t0);
        let mut far = RequestWindow::new(CHUNK, Some(Duration::from_millis(150)), t0);
        deliver(&mut near, t0, 3.0, 12.5e6);
        deliver(&mut far, t0, 3.0, 12.5e6);
        assert!(
            far.depth() > 3 * near.depth(),
            "{} vs {}",
            far.depth(),
            near.depth()
        );
        // 100 Mbit/s × (300 + 20) ms = 4 MB = 16 chunks, + 2.
        assert_eq!(far.depth(), 16 + MIN_REQUESTS);
    }

    #[test]
    fn a_window_limited_connection_doubles_each_round_trip() {
        // Each round trip delivers exactly the window; the next window is at least twice it,
        // until the cap.
        let rtt = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut w = RequestWindow::new(CHUNK, Some(rtt), t0);
        let mut total = 0u64;
        let mut depth = w.depth();
        let mut now = t0;
        for _ in 0..6 {
            now += rtt;
            total += depth as u64 * u64::from(CHUNK);
            w.on_delivered(now, total);
            let next = w.depth();
            assert!(next >= (2 * depth).min(MAX_REQUESTS), "{depth} -> {next}");
            depth = next;
        }
        assert_eq!(depth, MAX_REQUESTS);
    }

    #[test]
    fn the_window_is_capped_by_what_a_seeder_queues_and_by_bytes() {
        let t0 = Instant::now();
        let mut w = RequestWindow::new(CHUNK, Some(Duration::from_millis(500)), t0);
        deliver(&mut w, t0, 1.0, 1e9);
        assert_eq!(w.depth(), MAX_REQUESTS);
        let big = 4 << 20;
        let mut w = RequestWindow::new(big, Some(Duration::from_millis(500)), t0);
        for k in 1..=100u64 {
            w.on_delivered(t0 + Duration::from_millis(4 * k), k * u64::from(big));
        }
        assert_eq!(w.depth(), (MAX_WINDOW_BYTES / u64::from(big)) as usize);
    }

    #[test]
    fn a_chunk_answered_faster_than_the_handshake_lowers_the_round_trip() {
        let mut w = RequestWindow::new(CHUNK, Some(Duration::from_millis(30)), Instant::now());
        w.on_round_trip(Duration::from_millis(50));
        assert_eq!(w.rtt(), Some(Duration::from_millis(30)));
        w.on_round_trip(Duration::from_millis(10));
        assert_eq!(w.rtt(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn the_rate_follows_a_link_that_slows_within_the_horizon() {
        // A peer at 12.5 MB/s that drops to 125 kB/s: after a horizon at the new rate the
        // window is back at its least.
        let rtt = Duration::from_millis(10);
        let t0 = Instant::now();
        let mut w = RequestWindow::new(CHUNK, Some(rtt), t0);
        let now = deliver(&mut w, t0, 2.0, 12.5e6);
        assert!(w.depth() > MIN_REQUESTS);
        let base = w.samples.back().map(|s| s.1).unwrap_or(0);
        for k in 1..=3u64 {
            w.on_delivered(
                now + Duration::from_secs(2 * k),
                base + k * u64::from(CHUNK),
            );
        }
        assert!(w.rate() < 200_000, "rate {}", w.rate());
        assert_eq!(w.depth(), MIN_REQUESTS + 1);
    }

    #[test]
    fn the_max_filter_keeps_the_best_rate_of_the_horizon() {
        // Irregular deliveries; every step, rate() equals the best of the per-span rates
        // recorded within the horizon, computed the slow way.
        let rtt = Duration::from_millis(5);
        let t0 = Instant::now();
        let mut w = RequestWindow::new(CHUNK, Some(rtt), t0);
        let (mut now, mut total, mut x) = (t0, 0u64, 12345u64);
        let mut seen: Vec<(Instant, u64)> = Vec::new();
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += Duration::from_micros(100 + (x >> 33) % 5000);
            total += (x >> 20) % (4 * u64::from(CHUNK));
            let before: Vec<_> = w.samples.iter().copied().collect();
            w.on_delivered(now, total);
            let base = before
                .iter()
                .rev()
                .find(|(t, _)| now.duration_since(*t) >= w.span())
                .or(before.first())
                .copied()
                .unwrap();
            let dt = now.duration_since(base.0).as_secs_f64();
            seen.push((now, ((total - base.1) as f64 / dt) as u64));
            let best = seen
                .iter()
                .filter(|(t, _)| now.duration_since(*t) <= w.horizon())
                .map(|(_, r)| *r)
                .max()
                .unwrap();
            assert_eq!(w.rate(), best);
        }
    }
}
