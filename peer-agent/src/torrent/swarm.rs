//! A download's view of its swarm, across reconnects: what each peer cost and when it may be
//! tried again, and how to say why none is usable. Bookkeeping only; the connections are
//! `peer/`'s and the tracker's answers the session's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use torrentguard_protocol::Fingerprint;
use torrentguard_protocol::api::PeerInfo;

use crate::events::PeerProblem;

/// Per-peer bookkeeping across reconnects.
#[derive(Default)]
pub struct PeerRecord {
    pub penalty: u32,
    /// Last measured rate, bytes per second: a reconnection is held to its stall timeout.
    pub rate: u64,
    pub failures: u32,
    pub retry_at: Option<Instant>,
    pub banned: bool,
    /// Why its last connection ended, shown while no peer is usable.
    pub last_error: Option<String>,
    /// The relay garbled its stream in this download: reach it another way.
    pub avoid_relay: bool,
}

/// Watches for verified data arriving; `get --timeout` gives up when none has for its length.
pub struct StallClock {
    bytes: u64,
    since: Instant,
    limit: Option<Duration>,
}

impl StallClock {
    pub fn new(bytes: u64, limit: Option<Duration>) -> Self {
        StallClock {
            bytes,
            since: Instant::now(),
            limit,
        }
    }

    /// Notes the verified byte count now; returns the limit if it has passed without any.
    pub fn expired(&mut self, bytes: u64) -> Option<Duration> {
        if bytes != self.bytes {
            self.bytes = bytes;
            self.since = Instant::now();
        }
        self.limit.filter(|l| self.since.elapsed() >= *l)
    }
}

/// Each known peer with why it cannot be used right now.
pub fn peer_problems(
    known: &[PeerInfo],
    records: &HashMap<Fingerprint, PeerRecord>,
    own: Fingerprint,
) -> Vec<PeerProblem> {
    let now = Instant::now();
    known
        .iter()
        .filter(|p| p.fingerprint != own)
        .map(|p| {
            let rec = records.get(&p.fingerprint);
            let error = match rec {
                Some(r) if r.banned => "banned for this download".to_string(),
                Some(PeerRecord {
                    last_error: Some(e),
                    ..
                }) => e.clone(),
                _ => "not tried yet".to_string(),
            };
            PeerProblem {
                fingerprint: p.fingerprint,
                address: SocketAddr::new(p.address, p.port),
                last_error: error,
                retry_in_secs: rec
                    .and_then(|r| r.retry_at)
                    .map_or(0, |t| t.saturating_duration_since(now).as_secs()),
            }
        })
        .collect()
}

/// One line saying why no peer is usable: the count and each peer's last error.
pub fn waiting_reason(problems: &[PeerProblem]) -> String {
    if problems.is_empty() {
        return "no peer has this file right now".to_string();
    }
    let each: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{} at {}: {}",
                p.fingerprint.short(),
                p.address,
                p.last_error
            )
        })
        .collect();
    format!(
        "{} known peer(s), none usable right now ({})",
        problems.len(),
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerInfo {
        PeerInfo {
            fingerprint: Fingerprint::of_der(&[n]),
            address: [127, 0, 0, 1].into(),
            port: 7000 + u16::from(n),
            have: 0,
            complete: true,
            last_seen: 0,
            reputation: None,
            reach: None,
        }
    }

    #[test]
    fn each_known_peer_is_explained_and_ourselves_left_out() {
        assert_eq!(waiting_reason(&[]), "no peer has this file right now");
        let (own, banned, failed, new) = (peer(0), peer(1), peer(2), peer(3));
        let mut records = HashMap::new();
        records.insert(
            banned.fingerprint,
            PeerRecord {
                banned: true,
                ..PeerRecord::default()
            },
        );
        let failing = PeerRecord {
            last_error: Some("connecting to x: refused".into()),
            retry_at: Some(Instant::now() + Duration::from_secs(30)),
            ..PeerRecord::default()
        };
        records.insert(failed.fingerprint, failing);
        let known = [own.clone(), banned, failed, new];
        let problems = peer_problems(&known, &records, own.fingerprint);
        let errors: Vec<&str> = problems.iter().map(|p| p.last_error.as_str()).collect();
        assert_eq!(
            errors,
            [
                "banned for this download",
                "connecting to x: refused",
                "not tried yet"
            ]
        );
        assert!(
            (28..=30).contains(&problems[1].retry_in_secs),
            "{problems:?}"
        );
        let line = waiting_reason(&problems);
        assert!(
            line.starts_with("3 known peer(s), none usable right now"),
            "{line}"
        );
    }

    #[test]
    fn the_stall_clock_runs_only_while_nothing_verified_arrives() {
        let mut clock = StallClock::new(0, Some(Duration::ZERO));
        assert_eq!(clock.expired(0), Some(Duration::ZERO));
        let mut off = StallClock::new(0, None);
        assert_eq!(off.expired(0), None);
        let mut long = StallClock::new(0, Some(Duration::from_secs(3600)));
        assert_eq!(long.expired(10), None);
    }
}
