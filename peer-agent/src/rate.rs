//! A rate limit for either direction: the seeder's uploads over all its connections, or the
//! downloads given one [`RateLimit`] between them (the agent holds one for every download).
//!
//! A token bucket kept as a byte clock: `released` runs at the limit, and each use reserves
//! the next `len` bytes of the clock (FIFO, so concurrent users take turns), going as soon as
//! the clock has reached its start. A late wake-up is made up by the next reservations going
//! at once. Idle time is banked up to [`BURST`] worth of the limit: after a pause, that much
//! plus one use go at once, then sending resumes at the limit. So over any window of `W`
//! seconds no more than `limit × (W + 0.1 s) + one use` is released (for 10 s: 1 % + one
//! chunk over), and a run of `N` bytes takes at least `(N - limit × 0.1 s - one use) / limit`.
//!
//! Kept over `governor` 0.10 after measuring both as the upload pacer (4 uploaders on 2
//! worker threads, 2 s worth of bytes at the limit): with 16 KiB chunks at 20 MB/s this
//! reaches 1.00 of the limit and governor 0.85-0.86; with 256 KiB chunks 1.006 vs 0.99; at
//! 1 MB/s 1.008 vs 0.98-0.99. With the limit never binding, both cost ~0.2 µs a chunk (this
//! one did cost ~290 µs before it skipped the timer when a use is due at once). It also
//! changes its limit while running (waiters re-time themselves at once) and sleeps on tokio's
//! timer (governor's waits run on `futures-timer`'s own thread).

use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// Idle time banked, in time at the limit: enough for a waiter woken a timer tick late, or a
/// downloader whose request window briefly ran dry, to still reach the limit; small enough
/// to add only 1 % over 10 s.
pub const BURST: Duration = Duration::from_millis(100);

/// Longest single sleep: a wait longer than this (a tiny limit) re-times itself.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

const NANOS: u128 = 1_000_000_000;

/// Bytes per second shared by every user of one instance; 0 is unlimited.
#[derive(Debug)]
pub struct RateLimit {
    clock: Mutex<ByteClock>,
    /// Wakes waiters when the limit changes, so they re-time their turn.
    changed: Notify,
}

/// A reserved place on the byte clock: its bytes may go once the clock has reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the bytes must wait for their turn"]
pub struct Turn {
    start: u64,
    len: u64,
}

#[derive(Debug)]
struct ByteClock {
    rate: u64,
    /// The clock reads `released_at_epoch` at `epoch` and runs at `rate` from there.
    epoch: Instant,
    released_at_epoch: u64,
    /// End of the last reservation: where the next one starts, at the earliest.
    reserved: u64,
}

impl ByteClock {
    fn released(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        let run = nanos.saturating_mul(u128::from(self.rate)) / NANOS;
        self.released_at_epoch
            .saturating_add(u64::try_from(run).unwrap_or(u64::MAX))
    }

    /// When the clock reaches `pos` (rounded up, so it has then), capped at [`MAX_SLEEP`]
    /// from `now`. Only called while limited.
    fn reaches(&self, pos: u64, now: Instant) -> Instant {
        let owed = u128::from(pos.saturating_sub(self.released_at_epoch));
        let nanos = (owed * NANOS).div_ceil(u128::from(self.rate.max(1)));
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let cap = now + MAX_SLEEP;
        self.epoch.checked_add(wait).map_or(cap, |at| at.min(cap))
    }

    /// Bytes of idle time banked: [`BURST`] at the limit.
    fn banked(&self) -> u64 {
        let bytes = u128::from(self.rate) * BURST.as_nanos() / NANOS;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(0)
    }
}

impl RateLimit {
    /// A limit of `bytes_per_sec`; 0 is unlimited.
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            clock: Mutex::new(ByteClock {
                rate: bytes_per_sec,
                epoch: Instant::now(),
                released_at_epoch: 0,
                reserved: 0,
            }),
            changed: Notify::new(),
        }
    }

    /// Bytes per second; 0 is unlimited.
    pub fn limit(&self) -> u64 {
        self.lock().rate
    }

    /// Changes the limit from now on. Bytes already waiting keep their place in the queue and
    /// go at the new rate; raising it to unlimited lets them all go at once.
    pub fn set_limit(&self, bytes_per_sec: u64) {
        let now = Instant::now();
        let mut c = self.lock();
        if c.rate == bytes_per_sec {
            return;
        }
        // While unlimited the clock stood still: resume it with nothing owed.
        c.released_at_epoch = match c.rate {
            0 => c.reserved,
            _ => c.released(now),
        };
        c.epoch = now;
        c.rate = bytes_per_sec;
        drop(c);
        self.changed.notify_waiters();
    }

    /// Waits until `len` more bytes fit under the limit. Cancel-safe: a stop cut into the wait
    /// just leaves the bytes unsent (their place is not given back). When the bytes fit now it
    /// returns without touching the timer, whose millisecond granularity would otherwise delay
    /// every chunk.
    pub async fn pace(&self, len: usize) {
        if let Some(turn) = self.reserve(len) {
            self.wait(turn).await;
        }
    }

    /// Reserves the next `len` bytes: `None` if they may go now, else the [`Turn`] to
    /// [`wait`](Self::wait) for. For a caller that must keep doing other things meanwhile.
    pub fn reserve(&self, len: usize) -> Option<Turn> {
        let now = Instant::now();
        let mut c = self.lock();
        if c.rate == 0 {
            return None;
        }
        let released = c.released(now);
        let start = c.reserved.max(released.saturating_sub(c.banked()));
        c.reserved = start.saturating_add(len as u64);
        (start > released).then_some(Turn {
            start,
            len: len as u64,
        })
    }

    /// Gives back a turn that will not be used (its user stopped waiting): the clock jumps
    /// ahead by its length, so the turns queued behind it come that much sooner. Only a turn
    /// not yet due is given back: then its bytes were never released, so the jump lets no
    /// more go than the limit allows; a turn already due is spent, like idle time.
    pub fn give_back(&self, turn: Turn) {
        let now = Instant::now();
        let mut c = self.lock();
        if c.rate == 0 || c.released(now) >= turn.start {
            return;
        }
        c.released_at_epoch = c.released_at_epoch.saturating_add(turn.len);
        drop(c);
        self.changed.notify_waiters();
    }

    /// Whether `turn` has come (or the limit was lifted).
    pub fn is_due(&self, turn: Turn) -> bool {
        let c = self.lock();
        c.rate == 0 || c.released(Instant::now()) >= turn.start
    }

    /// Waits for `turn`. Cancel-safe; a change of the limit re-times the wait at once.
    pub async fn wait(&self, turn: Turn) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the clock is read: a change after the read still wakes us.
            changed.as_mut().enable();
            let at = {
                let now = Instant::now();
                let c = self.lock();
                if c.rate == 0 || c.released(now) >= turn.start {
                    return;
                }
                c.reaches(turn.start, now)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = changed => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByteClock> {
        // Every update of the clock is complete before the guard drops: a poisoned one is
        // still consistent.
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
