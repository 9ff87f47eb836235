//! The one owner of chunk state during a download.
//!
//! Invariant (checked by `check_invariant` in tests): every chunk is in exactly one state —
//! `Have`, `Missing` (queued, no request out) or `InFlight` with the distinct peers it is
//! requested from (never none) — and `remaining` counts the chunks not `Have`, `missing` the
//! `Missing` ones. Chunks move only through the named methods below. Peers' bitfields feed an
//! availability count so the rarest chunks go first. When no unrequested chunk is left (end
//! game), chunks in flight may be requested again from a peer that is not already asked for
//! them, until `ENDGAME_DUPLICATES` peers that are keeping up hold each; the losers are
//! cancelled. A *lagging* peer (one that has not delivered yet on this connection, or whose
//! requests are overdue) gets no end-game copies, and its copies do not count towards that
//! limit: silent peers cannot sit on the last chunks.
//!
//! Every release (and every peer falling behind) bumps a [`watch`] counter that idle peer
//! tasks wait on, so a chunk put back is picked up at once by a peer that has it.

use std::collections::{HashMap, HashSet};

use tokio::sync::watch;
use torrentguard_protocol::Bitfield;

/// Most outstanding requests for one chunk in the end game, on peers that keep up.
pub const ENDGAME_DUPLICATES: usize = 2;
/// Candidates examined per pick: keeps picking O(1) in the file size while staying close to
/// rarest-first.
const SCAN_WINDOW: usize = 512;

/// One peer connection of a download, as the picker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerSlot(pub u32);

/// A seed that differs between processes and between downloads.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Missing,
    /// Requested; its peers are in `holders`.
    InFlight,
    Have,
}

#[derive(Debug)]
pub struct Picker {
    state: Vec<ChunkState>,
    /// The peers each `InFlight` chunk is requested from: distinct, never empty.
    holders: HashMap<u32, Vec<PeerSlot>>,
    /// Peers not trusted to deliver soon (see the module docs).
    lagging: HashSet<PeerSlot>,
    availability: Vec<u16>,
    remaining: u32,
    missing: u32,
    /// No `Missing` chunk below this index.
    cursor: u32,
    /// Break availability ties at random places instead of in file order.
    spread: bool,
    rng: u64,
    /// Bumped whenever a chunk may have become pickable by a peer that found none before.
    wake: watch::Sender<u64>,
}

impl Picker {
    pub fn new(have: &Bitfield) -> Self {
        let n = have.len() as usize;
        let state: Vec<_> = (0..n as u32)
            .map(|i| {
                if have.get(i) {
                    ChunkState::Have
                } else {
                    ChunkState::Missing
                }
            })
            .collect();
        let remaining = n as u32 - have.count();
        Picker {
            state,
            holders: HashMap::new(),
            lagging: HashSet::new(),
            availability: vec![0; n],
            remaining,
            missing: remaining,
            cursor: 0,
            spread: false,
            rng: seed(),
            wake: watch::channel(0).0,
        }
    }

    /// A receiver that changes whenever a chunk is released or a peer starts lagging: a peer
    /// task with nothing to ask waits on it (after `borrow_and_update`, before picking, so no
    /// release between the pick and the wait is missed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn wake_all(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// With other downloaders around, ties between equally rare chunks are broken at random
    /// places in the file, so peers hold different chunks and can trade them; alone, chunks go
    /// in file order.
    pub fn set_spread(&mut self, on: bool) {
        self.spread = on;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for spreading requests; nothing depends on it being unpredictable.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    pub fn has(&self, i: u32) -> bool {
        self.state.get(i as usize) == Some(&ChunkState::Have)
    }

    /// The peers chunk `i` is requested from.
    pub fn holders(&self, i: u32) -> &[PeerSlot] {
        self.holders.get(&i).map_or(&[], |h| h.as_slice())
    }

    pub fn add_availability(&mut self, peer: &Bitfield) {
        for i in peer.iter_set() {
            self.availability[i as usize] = self.availability[i as usize].saturating_add(1);
        }
    }

    pub fn add_have(&mut self, i: u32) {
        if let Some(a) = self.availability.get_mut(i as usize) {
            *a = a.saturating_add(1);
        }
    }

    pub fn remove_availability(&mut self, peer: &Bitfield) {
        for i in peer.iter_set() {
            self.availability[i as usize] = self.availability[i as usize].saturating_sub(1);
        }
    }

    /// Marks `peer` as lagging or keeping up. Falling behind wakes the others: the chunks it
    /// holds may now be copied to them in the end game.
    pub fn set_lagging(&mut self, peer: PeerSlot, lagging: bool) {
        if lagging {
            if self.lagging.insert(peer) && self.holders.values().any(|h| h.contains(&peer)) {
                self.wake_all();
            }
        } else {
            self.lagging.remove(&peer);
        }
    }

    /// Chooses a chunk to request from `peer`, which holds `peer_has`; `already(i)` says
    /// whether chunk `i` must not be asked of it right now. Rarest first among unrequested
    /// chunks; in the end game, a chunk in flight on other peers only.
    pub fn pick(
        &mut self,
        peer: PeerSlot,
        peer_has: &Bitfield,
        already: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        if self.missing > 0 {
            let i = self.pick_missing(peer_has, &already)?;
            self.state[i as usize] = ChunkState::InFlight;
            self.missing -= 1;
            self.holders.insert(i, vec![peer]);
            return Some(i);
        }
        let i = self.pick_endgame(peer, peer_has, &already)?;
        self.holders.entry(i).or_default().push(peer);
        Some(i)
    }

    fn pick_missing(&mut self, peer_has: &Bitfield, already: &impl Fn(u32) -> bool) -> Option<u32> {
        while (self.cursor as usize) < self.state.len()
            && self.state[self.cursor as usize] != ChunkState::Missing
        {
            self.cursor += 1;
        }
        let n = self.state.len() as u32;
        let start = if self.spread {
            self.cursor + (self.next_random() % u64::from(n - self.cursor)) as u32
        } else {
            self.cursor
        };
        let mut best: Option<(u16, u32)> = None;
        let mut seen = 0;
        for i in (start..n).chain(self.cursor..start) {
            if self.state[i as usize] != ChunkState::Missing || !peer_has.get(i) {
                continue;
            }
            let a = self.availability[i as usize];
            // `already` last: it scans the caller's lists, and only a candidate that would
            // become the best needs it.
            if best.is_none_or(|(ba, _)| a < ba) && !already(i) {
                best = Some((a, i));
                if a <= 1 {
                    break; // nothing is rarer than a chunk only this peer has
                }
            }
            seen += 1;
            if seen >= SCAN_WINDOW {
                break;
            }
        }
        best.map(|(_, i)| i)
    }

    /// End game: the in-flight chunk with the fewest peers keeping up on it, that `peer` is
    /// not already asked for. Nothing for a lagging peer.
    fn pick_endgame(
        &self,
        peer: PeerSlot,
        peer_has: &Bitfield,
        already: &impl Fn(u32) -> bool,
    ) -> Option<u32> {
        if self.lagging.contains(&peer) {
            return None;
        }
        let mut best: Option<(usize, u32)> = None;
        for (&i, hs) in &self.holders {
            if hs.contains(&peer) || !peer_has.get(i) || already(i) {
                continue;
            }
            let live = hs.iter().filter(|h| !self.lagging.contains(h)).count();
            if live < ENDGAME_DUPLICATES && best.is_none_or(|b| (live, i) < b) {
                best = Some((live, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// A verified chunk arrived. Returns false if it was already had (an end-game duplicate).
    pub fn complete(&mut self, i: u32) -> bool {
        match self.state[i as usize] {
            ChunkState::Have => return false,
            ChunkState::Missing => self.missing -= 1,
            ChunkState::InFlight => {
                self.holders.remove(&i);
            }
        }
        self.remaining -= 1;
        self.state[i as usize] = ChunkState::Have;
        true
    }

    /// The request for `i` on `peer` ended without the chunk (rejected, bad data, cancelled):
    /// the chunk goes back to the queue once no other peer is asked for it. Wakes idle peers.
    pub fn release(&mut self, i: u32, peer: PeerSlot) {
        let Some(hs) = self.holders.get_mut(&i) else {
            return;
        };
        let before = hs.len();
        hs.retain(|h| *h != peer);
        if hs.len() == before {
            return;
        }
        if hs.is_empty() {
            self.holders.remove(&i);
            self.state[i as usize] = ChunkState::Missing;
            self.missing += 1;
            self.cursor = self.cursor.min(i);
        }
        self.wake_all();
    }

    /// `peer`'s connection ended: every request on it is released, and it is forgotten.
    pub fn release_peer(&mut self, peer: PeerSlot) {
        let held: Vec<u32> = self
            .holders
            .iter()
            .filter(|(_, hs)| hs.contains(&peer))
            .map(|(i, _)| *i)
            .collect();
        for i in held {
            self.release(i, peer);
        }
        self.lagging.remove(&peer);
    }

    /// The chunks held, as a bitfield.
    pub fn have_bitfield(&self) -> Bitfield {
        let mut b = Bitfield::new(self.state.len() as u32);
        for (i, s) in self.state.iter().enumerate() {
            if *s == ChunkState::Have {
                b.set(i as u32);
            }
        }
        b
    }

    #[cfg(test)]
    fn check_invariant(&self) {
        let count = |st: ChunkState| self.state.iter().filter(|s| **s == st).count() as u32;
        assert_eq!(
            self.remaining,
            self.state.len() as u32 - count(ChunkState::Have)
        );
        assert_eq!(self.missing, count(ChunkState::Missing));
        assert_eq!(self.holders.len() as u32, count(ChunkState::InFlight));
        for (i, hs) in &self.holders {
            assert_eq!(self.state[*i as usize], ChunkState::InFlight);
            assert!(!hs.is_empty(), "chunk {i} in flight on no peer");
            let distinct: HashSet<_> = hs.iter().collect();
            assert_eq!(distinct.len(), hs.len(), "chunk {i} twice on one peer");
        }
        assert!(
            self.state[..self.cursor as usize]
                .iter()
                .all(|s| *s != ChunkState::Missing)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: PeerSlot = PeerSlot(1);
    const B: PeerSlot = PeerSlot(2);
    const C: PeerSlot = PeerSlot(3);

    #[test]
    fn rarest_first_then_endgame_then_done() {
        let n = 8;
        let mut p = Picker::new(&Bitfield::new(n));
        let full = Bitfield::full(n);
        let mut rare = Bitfield::new(n);
        rare.set(5);
        p.add_availability(&full);
        p.add_availability(&full);
        p.add_availability(&rare);
        // Chunk 5 is held by three peers; the others by two: 0 comes first, 5 last.
        let mut order = Vec::new();
        while let Some(i) = p.pick(A, &full, |_| false) {
            order.push(i);
            p.check_invariant();
        }
        assert_eq!(
            order.len(),
            8,
            "end game gives a peer none of its own chunks"
        );
        assert_eq!(*order.last().unwrap(), 5);
        // End game: another peer may duplicate in-flight chunks.
        let dup = p.pick(B, &full, |_| false).unwrap();
        assert_eq!(p.holders(dup), &[A, B]);
        assert!(p.complete(dup));
        assert!(!p.complete(dup), "second arrival is a duplicate");
        for i in 0..n {
            p.complete(i);
        }
        p.check_invariant();
        assert!(p.is_done());
        assert_eq!(p.pick(C, &full, |_| false), None);
    }

    #[test]
    fn spread_mode_picks_different_chunks_for_different_downloaders() {
        let n = 1024;
        let seeder = Bitfield::full(n);
        let firsts: HashSet<u32> = (0..8)
            .map(|_| {
                let mut p = Picker::new(&Bitfield::new(n));
                p.add_availability(&seeder);
                p.set_spread(true);
                let i = p.pick(A, &seeder, |_| false).unwrap();
                p.check_invariant();
                i
            })
            .collect();
        assert!(firsts.len() > 4, "eight downloaders started at {firsts:?}");
        // Without spreading, everyone starts at the beginning.
        let mut p = Picker::new(&Bitfield::new(n));
        p.add_availability(&seeder);
        assert_eq!(p.pick(A, &seeder, |_| false), Some(0));
    }

    #[test]
    fn released_chunks_return_to_the_queue() {
        let mut have = Bitfield::new(4);
        have.set(0);
        let mut p = Picker::new(&have);
        let peer = Bitfield::full(4);
        let a = p.pick(A, &peer, |_| false).unwrap();
        assert_eq!(a, 1);
        p.release(a, A);
        p.check_invariant();
        assert_eq!(p.pick(B, &peer, |_| false), Some(1));
        // A peer without the chunk never gets it.
        let mut only3 = Bitfield::new(4);
        only3.set(3);
        assert_eq!(p.pick(C, &only3, |_| false), Some(3));
        assert_eq!(p.pick(C, &only3, |i| i == 3), None);
    }

    /// Issue 10: a release used to wake nobody, so an idle peer never took the chunk back.
    #[test]
    fn every_release_wakes_a_waiter() {
        let n = 4;
        let full = Bitfield::full(n);
        let mut p = Picker::new(&Bitfield::new(n));
        let mut idle = p.subscribe();
        idle.borrow_and_update();
        let i = p.pick(A, &full, |_| false).unwrap();
        let j = p.pick(A, &full, |_| false).unwrap();
        assert!(!idle.has_changed().unwrap(), "picking wakes nobody");
        p.release(i, A);
        assert!(idle.has_changed().unwrap(), "a release wakes the idle peer");
        idle.borrow_and_update();
        assert_eq!(p.pick(B, &full, |_| false), Some(i));
        // A peer's end releases all it held, waking again.
        p.release_peer(A);
        assert!(idle.has_changed().unwrap());
        assert_eq!(p.holders(j), &[] as &[PeerSlot]);
        p.check_invariant();
        // Releasing what a peer does not hold changes nothing and wakes nobody.
        idle.borrow_and_update();
        p.release(i, C);
        assert!(!idle.has_changed().unwrap());
        assert_eq!(p.holders(i), &[B]);
    }

    /// A waiter blocked in `changed()` really resumes on a release.
    #[tokio::test]
    async fn release_resumes_a_blocked_waiter() {
        let full = Bitfield::full(2);
        let mut p = Picker::new(&Bitfield::new(2));
        let mut idle = p.subscribe();
        idle.borrow_and_update();
        let waiter = tokio::spawn(async move { idle.changed().await.is_ok() });
        let i = p.pick(A, &full, |_| false).unwrap();
        p.release(i, A);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
        assert!(woke.unwrap().unwrap());
    }

    /// Issue 10: two end-game copies could both sit on silent peers. Lagging holders do not
    /// count, lagging peers get no copies, and no copy goes to a peer already asked.
    #[test]
    fn end_game_goes_around_lagging_holders_and_never_onto_a_holder() {
        let n = 2;
        let full = Bitfield::full(n);
        let mut p = Picker::new(&Bitfield::new(n));
        assert_eq!(p.pick(A, &full, |_| false), Some(0));
        assert_eq!(p.pick(A, &full, |_| false), Some(1));
        assert_eq!(p.pick(A, &full, |_| false), None, "never onto a holder");
        assert_eq!(p.pick(B, &full, |_| false), Some(0));
        assert_eq!(p.pick(B, &full, |_| false), Some(1));
        // Chunks 0 and 1 each have two peers keeping up: no third copy.
        assert_eq!(p.pick(C, &full, |_| false), None);
        // A and B fall silent: C gets copies, a lagging peer none.
        let mut idle = p.subscribe();
        idle.borrow_and_update();
        p.set_lagging(A, true);
        assert!(
            idle.has_changed().unwrap(),
            "a holder falling behind wakes the others"
        );
        p.set_lagging(B, true);
        let d = PeerSlot(4);
        p.set_lagging(d, true);
        assert_eq!(
            p.pick(d, &full, |_| false),
            None,
            "a lagging peer gets no copies"
        );
        assert_eq!(p.pick(C, &full, |_| false), Some(0));
        assert_eq!(p.pick(C, &full, |_| false), Some(1));
        assert_eq!(p.pick(C, &full, |_| false), None);
        assert_eq!(p.holders(0), &[A, B, C]);
        p.check_invariant();
    }

    proptest! {
        /// Any sequence of picks, releases, completions, peers lagging and peers leaving keeps
        /// the invariant, and the picker's holders are exactly the requests the peers think
        /// they have out.
        #[test]
        fn invariant_holds_under_any_sequence(ops in proptest::collection::vec((0u8..6, 0u32..4, 0u32..20, any::<u32>()), 0..300)) {
            let n = 20;
            let mut p = Picker::new(&Bitfield::new(n));
            let mut half = Bitfield::new(n);
            for i in (0..n).step_by(2) { half.set(i); }
            let full = Bitfield::full(n);
            p.add_availability(&half);
            p.add_availability(&full);
            p.set_spread(ops.len() % 2 == 0);
            let mut out: Vec<(u32, PeerSlot)> = Vec::new();
            for (op, peer, i, salt) in ops {
                let peer = PeerSlot(peer);
                match op {
                    0 | 1 => {
                        let b = if salt % 2 == 0 { &half } else { &full };
                        if let Some(c) = p.pick(peer, b, |_| false) {
                            prop_assert!(!out.contains(&(c, peer)), "chunk {} twice on one peer", c);
                            out.push((c, peer));
                        }
                    }
                    2 => if !out.is_empty() {
                        let (c, q) = out.swap_remove((salt as usize) % out.len());
                        p.release(c, q);
                    },
                    3 => if out.iter().any(|(c, _)| *c == i) {
                        p.complete(i);
                        out.retain(|(c, _)| *c != i);
                    },
                    4 => p.set_lagging(peer, salt % 2 == 0),
                    _ => {
                        p.release_peer(peer);
                        out.retain(|(_, q)| *q != peer);
                    }
                }
                p.check_invariant();
                for c in 0..n {
                    let mut want: Vec<PeerSlot> = out.iter().filter(|(x, _)| *x == c).map(|(_, q)| *q).collect();
                    let mut got = p.holders(c).to_vec();
                    want.sort_by_key(|q| q.0);
                    got.sort_by_key(|q| q.0);
                    prop_assert_eq!(want, got);
                }
            }
        }
    }
}
