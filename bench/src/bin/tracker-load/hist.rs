//! A latency histogram with bounded relative error, cheap to record into and to merge.
//!
//! Log-linear buckets (as HdrHistogram with two significant binary digits of precision more):
//! values below 128 µs are exact, above that every power of two is split into 64 buckets, so a
//! reported percentile is at most 1/64 (1.6 %) above the true value. Each worker owns one and
//! the totals are merged at the end, so recording takes no lock.

/// Buckets per power of two above the exact range.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Largest recordable value: 2^40 µs (about 12 days); longer values are clamped.
const MAX_BITS: u32 = 40;
const BUCKETS: usize = ((MAX_BITS - SUB_BITS + 1) as usize) * SUB as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index_of(v: u64) -> usize {
    let v = v.min((1 << MAX_BITS) - 1);
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as u64 + 1) * SUB + (v >> shift) - SUB) as usize
}

/// The largest value that lands in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (i % SUB + SUB) << shift;
    low + (1 << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.counts[index_of(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1) in µs: the smallest bucket bound at or under which at
    /// least `q` of the values fall. None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        let mut last = 0;
        for v in 0..200_000u64 {
            let i = index_of(v);
            assert!(i == last || i == last + 1, "gap at {v}");
            last = i;
            assert!(upper_bound(i) >= v, "{v} above its bucket's bound");
            // The relative error promised in the module comment.
            assert!(upper_bound(i) - v <= v / SUB, "bucket of {v} too wide");
        }
        assert!(index_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3, 1, 2, 5, 4] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.quantile(1.0), Some(5));
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn percentiles_of_a_uniform_spread_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                got >= want && got <= want * (1.0 + 1.0 / 64.0),
                "q{q}: {got}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(100_000));
    }

    #[test]
    fn a_tail_shows_in_p99_not_in_p50() {
        let mut h = Histogram::default();
        for _ in 0..980 {
            h.record(1_000);
        }
        for _ in 0..20 {
            h.record(80_000);
        }
        assert!(h.quantile(0.5).unwrap() < 1_020);
        assert!(h.quantile(0.99).unwrap() >= 80_000);
        assert_eq!(h.max(), 80_000);
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in 0..5_000u64 {
            let v = v * v % 70_001;
            if v % 3 == 0 { &mut a } else { &mut b }.record(v);
            all.record(v);
        }
        a.merge(&b);
        for q in [0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert_eq!(a.count(), all.count());
    }

    #[test]
    fn an_empty_histogram_has_no_percentiles() {
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
