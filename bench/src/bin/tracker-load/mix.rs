//! The announce mix: what each simulated peer says about each of its files next.
//!
//! Every (peer, file) pair runs the life an agent's download runs: `started` (as a fresh
//! downloader, or as a seeder that already has the file), `progress` re-announces while chunks
//! arrive, one `completed` when the last chunk is in, `progress` re-announces while seeding, and
//! now and then `stopped` (the agent quits), after which the next announce is `started` again
//! with what it had. Most announces are therefore `progress`, as on a real tracker, where
//! periodic re-announces dominate.

/// A small, fast, seedable generator (SplitMix64), so a run's sequence of announces can be
/// replayed from its seed. Not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Progress,
    Completed,
    Stopped,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::Started,
        Event::Progress,
        Event::Completed,
        Event::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Progress => "progress",
            Event::Completed => "completed",
            Event::Stopped => "stopped",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where one peer stands with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slot {
    /// Never announced.
    #[default]
    New,
    /// Announced `stopped` holding this many chunks.
    Stopped(u32),
    Leeching(u32),
    Seeding,
}

/// The shape of the mix.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Chunks of every file.
    pub chunks: u32,
    /// Share of first announces made by a peer that already has the whole file.
    pub seeder_share: f64,
    /// Chance that an announce of a started peer is its `stopped`.
    pub stop_chance: f64,
    /// Chunks a leecher gains between two announces.
    pub step: u32,
}

impl Mix {
    /// The next announce of one (peer, file): its event and the chunks then held (always the
    /// first `have` chunks). Moves `slot` on.
    pub fn next(&self, slot: &mut Slot, rng: &mut Rng) -> (Event, u32) {
        let (event, have, then) = match *slot {
            Slot::New => {
                let have = if rng.chance(self.seeder_share) {
                    self.chunks
                } else {
                    0
                };
                (Event::Started, have, self.holding(have))
            }
            Slot::Stopped(have) => (Event::Started, have, self.holding(have)),
            Slot::Leeching(have) if rng.chance(self.stop_chance) => {
                (Event::Stopped, have, Slot::Stopped(have))
            }
            Slot::Seeding if rng.chance(self.stop_chance) => {
                (Event::Stopped, self.chunks, Slot::Stopped(self.chunks))
            }
            Slot::Leeching(have) => {
                let have = (have + self.step.max(1)).min(self.chunks);
                let event = if have == self.chunks {
                    Event::Completed
                } else {
                    Event::Progress
                };
                (event, have, self.holding(have))
            }
            Slot::Seeding => (Event::Progress, self.chunks, Slot::Seeding),
        };
        *slot = then;
        (event, have)
    }

    fn holding(&self, have: u32) -> Slot {
        if have >= self.chunks {
            Slot::Seeding
        } else {
            Slot::Leeching(have)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIX: Mix = Mix {
        chunks: 64,
        seeder_share: 0.2,
        stop_chance: 0.03,
        step: 8,
    };

    #[test]
    fn every_life_follows_the_agents_order() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let mut slot = Slot::default();
            let mut last: Option<Event> = None;
            let mut last_have = 0;
            for _ in 0..100 {
                let (event, have) = MIX.next(&mut slot, &mut rng);
                match (last, event) {
                    // The first announce, and the first after a stop, is `started`.
                    (None | Some(Event::Stopped), e) => assert_eq!(e, Event::Started),
                    (Some(_), Event::Started) => panic!("started twice without a stop"),
                    (Some(_), Event::Stopped) => assert_eq!(have, last_have),
                    (Some(_), Event::Completed) => {
                        assert_eq!(have, MIX.chunks);
                        assert!(last_have < MIX.chunks, "completed while already seeding");
                    }
                    (Some(_), Event::Progress) => assert!(have >= last_have),
                }
                assert!(have <= MIX.chunks);
                if event == Event::Started && last == Some(Event::Stopped) {
                    assert_eq!(have, last_have, "a restart keeps what it had");
                }
                last = Some(event);
                last_have = have;
            }
        }
    }

    #[test]
    fn the_mix_is_mostly_reannounces_with_every_event_present() {
        let mut rng = Rng::new(42);
        let mut counts = [0u32; 4];
        let mut slots = vec![Slot::default(); 1_000];
        for _ in 0..50 {
            for slot in &mut slots {
                counts[MIX.next(slot, &mut rng).0.index()] += 1;
            }
        }
        let total: u32 = counts.iter().sum();
        let share = |e: Event| f64::from(counts[e.index()]) / f64::from(total);
        assert!(share(Event::Progress) > 0.75, "{counts:?}");
        assert!(
            Event::ALL.iter().all(|&e| counts[e.index()] > 0),
            "{counts:?}"
        );
        // Each stop is followed by a start, and each start but the first follows a stop.
        let restarts = counts[Event::Started.index()] - 1_000;
        let stops = counts[Event::Stopped.index()];
        assert!(stops >= restarts && stops - restarts <= 1_000, "{counts:?}");
        // About 80 % of the peers start as leechers, and most finish within 50 announces.
        assert!(counts[Event::Completed.index()] > 600, "{counts:?}");
    }

    #[test]
    fn the_generator_replays_from_its_seed() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..8).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let mut r = Rng::new(9);
        assert!(
            (0..10_000)
                .map(|_| r.unit())
                .all(|u| (0.0..1.0).contains(&u))
        );
    }
}
