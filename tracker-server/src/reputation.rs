//! Peer reputation: how the reports of downloaders become a score per peer.
//!
//! Pure: the store keeps each reporter's latest report of each peer (see
//! [`crate::store::ReportRow`]) and the handlers ask [`Reputations::score`] here.
//!
//! Each distinct reporter's latest report of a peer weighs [`ReportKind`]'s weight (a bad chunk
//! is proof, a stall may be the network), halved every `half_life` since it was made. With `T`
//! the sum of those weights, the score is `100 / (1 + T)`: 100 for a clean peer, 50 at most
//! lost to one reporter however often it reports, 25 after three fresh bad-chunk reports.
//! Because one reporter cannot push a peer below [`SINGLE_REPORTER_FLOOR`], and the withhold
//! threshold may not exceed it, one identity alone can never get a peer withheld.

use std::collections::HashMap;
use std::time::Duration;

use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::api::{ReportKind, Reputation};

/// A peer nobody reported.
pub const CLEAN_SCORE: u32 = 100;
/// The lowest score one reporter alone can cause: its weight is at most 1.
pub const SINGLE_REPORTER_FLOOR: u32 = 50;
pub const DEFAULT_HALF_LIFE: Duration = Duration::from_secs(3600);
/// Below this a peer is left out of announce answers. 30 sits between two fresh bad-chunk
/// reports (33: kept, two reporters may both be wrong or colluding) and three (25: withheld).
pub const DEFAULT_WITHHOLD_BELOW: u32 = 30;
/// Reports older than this many half-lives weigh under 0.4 % of a fresh one: ignored, then
/// pruned.
const HALF_LIVES_KEPT: u32 = 8;

/// What one report weighs when fresh.
pub fn weight(kind: ReportKind) -> f64 {
    match kind {
        ReportKind::BadChunk => 1.0,
        // A stall is attributed by timing: a slow or congested path looks the same, so three
        // stall reports (45) do not withhold a peer that no chunk of has failed.
        ReportKind::Stall => 0.4,
    }
}

/// One reporter's latest report of a peer, as the model needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub peer: Fingerprint,
    pub reporter: Fingerprint,
    pub kind: ReportKind,
    /// Unix seconds.
    pub at: i64,
}

/// The model's settings (`--reputation-half-life`, `--withhold-below`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReputationConfig {
    pub half_life: Duration,
    pub withhold_below: u32,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            half_life: DEFAULT_HALF_LIFE,
            withhold_below: DEFAULT_WITHHOLD_BELOW,
        }
    }
}

impl ReputationConfig {
    /// Unix seconds before which reports no longer count (and may be pruned).
    pub fn counted_since(&self, now: i64) -> i64 {
        let window = self.half_life.saturating_mul(HALF_LIVES_KEPT).as_secs();
        now.saturating_sub(i64::try_from(window).unwrap_or(i64::MAX))
    }

    /// Whether a peer of this standing is left out of announce answers.
    pub fn withholds(&self, r: &Reputation) -> bool {
        r.score < self.withhold_below
    }

    /// What a report made at `at` weighs at `now`.
    fn decayed(&self, kind: ReportKind, at: i64, now: i64) -> f64 {
        let age = now.saturating_sub(at).max(0) as f64;
        let half_life = self.half_life.as_secs_f64().max(1.0);
        weight(kind) * 0.5f64.powf(age / half_life)
    }

    /// Scores every peer named in `reports` at `now`. A reporter counts once per peer: if the
    /// store handed over several of its reports, only the latest is used.
    pub fn score(&self, reports: &[Report], now: i64) -> Reputations {
        let since = self.counted_since(now);
        let mut latest: HashMap<(Fingerprint, Fingerprint), &Report> = HashMap::new();
        for r in reports.iter().filter(|r| r.at >= since) {
            latest
                .entry((r.peer, r.reporter))
                .and_modify(|seen| {
                    if r.at > seen.at {
                        *seen = r;
                    }
                })
                .or_insert(r);
        }
        let mut sums: HashMap<Fingerprint, (f64, u32)> = HashMap::new();
        for r in latest.values() {
            let s = sums.entry(r.peer).or_default();
            s.0 += self.decayed(r.kind, r.at, now);
            s.1 += 1;
        }
        let scores = sums
            .into_iter()
            .map(|(peer, (total, reporters))| {
                let score = (f64::from(CLEAN_SCORE) / (1.0 + total)).round();
                // In 0..=100 by construction (total ≥ 0); the clamp keeps a NaN-free cast.
                let score = score.clamp(0.0, f64::from(CLEAN_SCORE)) as u32;
                (peer, Reputation { score, reporters })
            })
            .collect();
        Reputations(scores)
    }
}

/// Scores of the peers some report names; every other peer is clean.
#[derive(Debug, Clone, Default)]
pub struct Reputations(HashMap<Fingerprint, Reputation>);

impl Reputations {
    pub fn of(&self, peer: &Fingerprint) -> Reputation {
        self.0.get(peer).copied().unwrap_or(Reputation {
            score: CLEAN_SCORE,
            reporters: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn report(peer: u8, reporter: u8, kind: ReportKind, at: i64) -> Report {
        Report {
            peer: fp(peer),
            reporter: fp(reporter),
            kind,
            at,
        }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn an_unreported_peer_is_clean() {
        let r = ReputationConfig::default().score(&[], NOW).of(&fp(1));
        assert_eq!(
            r,
            Reputation {
                score: 100,
                reporters: 0
            }
        );
    }

    #[test]
    fn one_reporter_never_withholds_three_do() {
        let c = ReputationConfig::default();
        let bad = |reporter| report(1, reporter, ReportKind::BadChunk, NOW);
        let one = c.score(&[bad(10)], NOW).of(&fp(1));
        assert_eq!(
            one,
            Reputation {
                score: 50,
                reporters: 1
            }
        );
        assert!(!c.withholds(&one));
        let two = c.score(&[bad(10), bad(11)], NOW).of(&fp(1));
        assert_eq!(two.score, 33);
        assert!(!c.withholds(&two));
        let three = c.score(&[bad(10), bad(11), bad(12)], NOW).of(&fp(1));
        assert_eq!(
            three,
            Reputation {
                score: 25,
                reporters: 3
            }
        );
        assert!(c.withholds(&three));
    }

    #[test]
    fn a_reporter_counts_once_with_its_latest_report() {
        let c = ReputationConfig::default();
        let reports = [
            report(1, 10, ReportKind::BadChunk, NOW - 7200),
            report(1, 10, ReportKind::Stall, NOW),
            report(1, 10, ReportKind::BadChunk, NOW - 3600),
        ];
        let r = c.score(&reports, NOW).of(&fp(1));
        assert_eq!(r.reporters, 1);
        // The fresh stall (0.4) alone: 100 / 1.4.
        assert_eq!(r.score, 71);
    }

    #[test]
    fn reports_decay_by_half_lives_and_expire() {
        let c = ReputationConfig {
            half_life: Duration::from_secs(100),
            withhold_below: 30,
        };
        let at = |age| {
            let reports: Vec<_> = (10..13)
                .map(|r| report(1, r, ReportKind::BadChunk, NOW - age))
                .collect();
            c.score(&reports, NOW).of(&fp(1))
        };
        assert_eq!(at(0).score, 25);
        // One half-life: 3 × 0.5 → 100 / 2.5.
        assert_eq!(at(100).score, 40);
        assert!(!c.withholds(&at(100)));
        assert_eq!(at(200).score, 57);
        // Past the kept window they no longer count at all.
        assert_eq!(
            at(801),
            Reputation {
                score: 100,
                reporters: 0
            }
        );
        assert_eq!(c.counted_since(NOW), NOW - 800);
    }

    #[test]
    fn stalls_weigh_less_than_bad_chunks() {
        let c = ReputationConfig::default();
        let stalls: Vec<_> = (10..13)
            .map(|r| report(1, r, ReportKind::Stall, NOW))
            .collect();
        let r = c.score(&stalls, NOW).of(&fp(1));
        assert_eq!(
            r,
            Reputation {
                score: 45,
                reporters: 3
            }
        );
        assert!(!c.withholds(&r));
    }

    #[test]
    fn one_reporter_is_bounded_by_the_floor() {
        let c = ReputationConfig::default();
        let r = c
            .score(&[report(1, 10, ReportKind::BadChunk, NOW + 5)], NOW)
            .of(&fp(1));
        // Even a report dated in the future (clock skew) weighs no more than a fresh one.
        assert_eq!(r.score, SINGLE_REPORTER_FLOOR);
        let peers = c.score(&[report(1, 10, ReportKind::BadChunk, NOW)], NOW);
        assert_eq!(peers.of(&fp(2)).score, CLEAN_SCORE);
    }
}
