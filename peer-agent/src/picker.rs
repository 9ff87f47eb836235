//! The one owner of chunk state during a download.
//!
//! Invariant (checked by `check_invariant` in tests): every chunk is in exactly one state —
//! `Have`, `Missing` (queued, no request out) or `InFlight(n)` with `n ≥ 1` outstanding requests
//! on distinct peers — and `remaining` counts the chunks not `Have`. Chunks move only through
//! the named methods below. Peers' bitfields feed an availability count so the rarest chunks go
//! first; when no unrequested chunk is left (end game), chunks already in flight may be requested
//! again from another peer, up to `ENDGAME_DUPLICATES` times, and the losers are cancelled.

use torrentguard_protocol::Bitfield;

/// Most outstanding requests for one chunk in the end game.
pub const ENDGAME_DUPLICATES: u8 = 2;
/// Candidates examined per pick: keeps picking O(1) in the file size while staying close to
/// rarest-first.
const SCAN_WINDOW: usize = 512;

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
    InFlight(u8),
    Have,
}

#[derive(Debug)]
pub struct Picker {
    state: Vec<ChunkState>,
    availability: Vec<u16>,
    remaining: u32,
    missing: u32,
    /// No `Missing` chunk below this index.
    cursor: u32,
    /// Break availability ties at random places instead of in file order.
    spread: bool,
    rng: u64,
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
            availability: vec![0; n],
            remaining,
            missing: remaining,
            cursor: 0,
            spread: false,
            rng: seed(),
        }
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

    /// Chooses a chunk to request from a peer holding `peer_has`; `already(i)` says whether
    /// chunk `i` is requested from that peer already (or must not be asked of it right now). Rarest first among unrequested chunks; in the end game, a
    /// chunk in flight elsewhere.
    pub fn pick(&mut self, peer_has: &Bitfield, already: impl Fn(u32) -> bool) -> Option<u32> {
        if self.missing > 0 {
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
                if self.state[i as usize] != ChunkState::Missing || !peer_has.get(i) || already(i) {
                    continue;
                }
                let a = self.availability[i as usize];
                if best.is_none_or(|(ba, _)| a < ba) {
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
            if let Some((_, i)) = best {
                self.state[i as usize] = ChunkState::InFlight(1);
                self.missing -= 1;
                return Some(i);
            }
        }
        // End game: every chunk is requested somewhere; duplicate the slowest ones.
        if self.missing > 0 {
            return None;
        }
        let mut best: Option<(u8, u32)> = None;
        for (i, s) in self.state.iter().enumerate() {
            let i = i as u32;
            if let ChunkState::InFlight(n) = *s
                && n < ENDGAME_DUPLICATES
                && peer_has.get(i)
                && !already(i)
                && best.is_none_or(|(bn, _)| n < bn)
            {
                best = Some((n, i));
                if n == 1 {
                    break;
                }
            }
        }
        let (n, i) = best?;
        self.state[i as usize] = ChunkState::InFlight(n + 1);
        Some(i)
    }

    /// A verified chunk arrived. Returns false if it was already had (an end-game duplicate).
    pub fn complete(&mut self, i: u32) -> bool {
        match self.state[i as usize] {
            ChunkState::Have => false,
            ChunkState::Missing => {
                self.missing -= 1;
                self.remaining -= 1;
                self.state[i as usize] = ChunkState::Have;
                true
            }
            ChunkState::InFlight(_) => {
                self.remaining -= 1;
                self.state[i as usize] = ChunkState::Have;
                true
            }
        }
    }

    /// A request for `i` ended without the chunk (peer gone, rejected, bad data, cancelled):
    /// it goes back to the queue once no other request for it is out.
    pub fn release(&mut self, i: u32) {
        if let ChunkState::InFlight(n) = self.state[i as usize] {
            if n > 1 {
                self.state[i as usize] = ChunkState::InFlight(n - 1);
            } else {
                self.state[i as usize] = ChunkState::Missing;
                self.missing += 1;
                self.cursor = self.cursor.min(i);
            }
        }
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
        let have = self
            .state
            .iter()
            .filter(|s| **s == ChunkState::Have)
            .count() as u32;
        let missing = self
            .state
            .iter()
            .filter(|s| **s == ChunkState::Missing)
            .count() as u32;
        assert_eq!(self.remaining, self.state.len() as u32 - have);
        assert_eq!(self.missing, missing);
        assert!(self.state.iter().all(|s| *s != ChunkState::InFlight(0)));
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
        while let Some(i) = p.pick(&full, |i| order.contains(&i)) {
            if order.contains(&i) {
                break;
            }
            order.push(i);
            p.check_invariant();
        }
        assert_eq!(order.len(), 8);
        assert_eq!(*order.last().unwrap(), 5);
        // End game: another peer may duplicate in-flight chunks.
        let dup = p.pick(&full, |_| false).unwrap();
        assert!(p.complete(dup));
        assert!(!p.complete(dup), "second arrival is a duplicate");
        for i in 0..n {
            p.complete(i);
        }
        p.check_invariant();
        assert!(p.is_done());
        assert_eq!(p.pick(&full, |_| false), None);
    }

    #[test]
    fn spread_mode_picks_different_chunks_for_different_downloaders() {
        let n = 1024;
        let seeder = Bitfield::full(n);
        let firsts: std::collections::HashSet<u32> = (0..8)
            .map(|_| {
                let mut p = Picker::new(&Bitfield::new(n));
                p.add_availability(&seeder);
                p.set_spread(true);
                let i = p.pick(&seeder, |_| false).unwrap();
                p.check_invariant();
                i
            })
            .collect();
        assert!(firsts.len() > 4, "eight downloaders started at {firsts:?}");
        // Without spreading, everyone starts at the beginning.
        let mut p = Picker::new(&Bitfield::new(n));
        p.add_availability(&seeder);
        assert_eq!(p.pick(&seeder, |_| false), Some(0));
    }

    #[test]
    fn released_chunks_return_to_the_queue() {
        let mut have = Bitfield::new(4);
        have.set(0);
        let mut p = Picker::new(&have);
        let peer = Bitfield::full(4);
        let a = p.pick(&peer, |_| false).unwrap();
        assert_eq!(a, 1);
        p.release(a);
        p.check_invariant();
        assert_eq!(p.pick(&peer, |_| false), Some(1));
        // A peer without the chunk never gets it.
        let mut only3 = Bitfield::new(4);
        only3.set(3);
        assert_eq!(p.pick(&only3, |_| false), Some(3));
        assert_eq!(p.pick(&only3, |i| i == 3), None);
    }

    proptest! {
        #[test]
        fn invariant_holds_under_any_sequence(ops in proptest::collection::vec((0u8..3, 0u32..20, any::<u32>()), 0..300)) {
            let n = 20;
            let mut p = Picker::new(&Bitfield::new(n));
            let mut peer = Bitfield::new(n);
            for i in (0..n).step_by(2) { peer.set(i); }
            let full = Bitfield::full(n);
            p.add_availability(&peer);
            p.add_availability(&full);
            p.set_spread(ops.len() % 2 == 0);
            let mut out: Vec<u32> = Vec::new();
            for (op, i, salt) in ops {
                match op {
                    0 => { let b = if salt % 2 == 0 { &peer } else { &full }; if let Some(c) = p.pick(b, |_| false) { out.push(c) } }
                    1 => { if !out.is_empty() { let c = out.swap_remove((salt as usize) % out.len()); p.release(c) } }
                    _ => { if out.contains(&i) { p.complete(i); out.retain(|c| *c != i); } }
                }
                p.check_invariant();
            }
        }
    }
}
