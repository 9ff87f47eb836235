use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;

use super::*;

/// The paused clock wakes a sleeper at its deadline rounded up to the timer's millisecond.
#[track_caller]
fn assert_about(took: Duration, expected: Duration) {
    let late = took.checked_sub(expected);
    assert!(
        late.is_some_and(|l| l <= Duration::from_millis(2)),
        "took {took:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_within_the_limit_go_without_waiting_for_a_timer() {
    let limit = RateLimit::default();
    assert!(limit.pace(1 << 20).now_or_never().is_some(), "unlimited");
    limit.set_limit(1_000_000_000);
    // A fresh budget: the first chunk is due now, so no timer (and no tick) is involved.
    assert!(limit.pace(16_384).now_or_never().is_some(), "first chunk");
}

#[tokio::test(start_paused = true)]
async fn turns_are_spaced_by_length_over_limit_and_idle_time_is_banked_only_up_to_the_burst() {
    let limit = RateLimit::new(1000);
    let t0 = Instant::now();
    assert_eq!(limit.reserve(500), None, "a fresh limit lets one use go");
    let second = limit.reserve(500).expect("the second waits its turn");
    let third = limit.reserve(250).expect("the third waits behind it");
    limit.wait(second).await;
    assert_about(t0.elapsed(), Duration::from_millis(500));
    limit.wait(third).await;
    assert_about(t0.elapsed(), Duration::from_secs(1));
    // Ten idle seconds bank 100 ms (100 bytes) only: that plus one use go at once, then the
    // next waits for the rest.
    tokio::time::advance(Duration::from_secs(10)).await;
    let t1 = Instant::now();
    assert_eq!(limit.reserve(80), None);
    assert_eq!(limit.reserve(40), None, "still within the banked 100 bytes");
    let late = limit.reserve(100).expect("beyond the bank");
    limit.wait(late).await;
    assert_about(t1.elapsed(), Duration::from_millis(20));
}

/// Counts the bytes released per virtual second to `users` tasks pacing `lens` in turn, for
/// `secs` seconds.
async fn released_per_second(
    limit: Arc<RateLimit>,
    users: usize,
    lens: &'static [usize],
    secs: usize,
) -> Vec<u64> {
    let released = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for u in 0..users {
        let (limit, released) = (limit.clone(), released.clone());
        tasks.push(tokio::spawn(async move {
            for len in lens.iter().cycle().skip(u) {
                limit.pace(*len).await;
                released.fetch_add(*len as u64, Ordering::Relaxed);
            }
        }));
    }
    let mut per_second = Vec::new();
    let mut before = 0;
    let start = Instant::now();
    for s in 1..=secs {
        tokio::time::sleep_until(start + Duration::from_secs(s as u64)).await;
        let now = released.load(Ordering::Relaxed);
        per_second.push(now - before);
        before = now;
    }
    for t in tasks {
        t.abort();
    }
    per_second
}

#[tokio::test(start_paused = true)]
async fn concurrent_users_share_the_limit_within_five_percent_over_every_ten_seconds() {
    const RATE: u64 = 1_000_000;
    static LENS: [usize; 4] = [16_384, 1_000, 65_536, 7_777];
    let max_len = 65_536;
    let limit = Arc::new(RateLimit::new(RATE));
    let seconds = released_per_second(limit, 5, &LENS, 30).await;
    let total: u64 = seconds.iter().sum();
    assert!(total > 0);
    for (s, w) in seconds.windows(10).enumerate() {
        let window: u64 = w.iter().sum();
        let ratio = window as f64 / (RATE * 10) as f64;
        assert!(
            (0.95..=1.05).contains(&ratio),
            "seconds {s}..{}: {window} bytes, {ratio:.4} of the limit",
            s + 10
        );
        // The bound the design promises: 100 ms banked plus one use.
        assert!(window <= RATE * 10 + RATE / 10 + max_len);
    }
    for (s, b) in seconds.iter().enumerate() {
        assert!(*b <= RATE + RATE / 10 + max_len, "second {s}: {b} bytes");
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_of_limit_re_times_the_bytes_already_waiting() {
    let limit = Arc::new(RateLimit::new(1000));
    assert_eq!(limit.reserve(10_000), None);
    let turn = limit.reserve(1000).expect("ten seconds away at 1 kB/s");
    let waiter = tokio::spawn({
        let limit = limit.clone();
        async move { limit.wait(turn).await }
    });
    tokio::time::advance(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    // 9000 bytes still owed ahead of the turn: 9 ms at 1 MB/s, not 9 s.
    limit.set_limit(1_000_000);
    waiter.await.expect("waiter");
    assert!(
        t0.elapsed() <= Duration::from_millis(10),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(limit.limit(), 1_000_000);

    let turn = limit
        .reserve(1_000_000)
        .and(limit.reserve(1))
        .expect("queued");
    assert!(!limit.is_due(turn));
    limit.set_limit(0);
    assert!(limit.is_due(turn), "lifting the limit releases everything");
    assert!(limit.wait(turn).now_or_never().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_limit_set_after_running_unlimited_owes_nothing_for_that_time() {
    let limit = RateLimit::default();
    for _ in 0..100 {
        limit.pace(1 << 20).await;
    }
    limit.set_limit(1000);
    assert_eq!(limit.reserve(500), None);
    let turn = limit.reserve(500).expect("then it paces");
    let t0 = Instant::now();
    limit.wait(turn).await;
    assert_about(t0.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_turn_given_back_before_it_is_due_brings_the_turns_behind_it_forward() {
    let limit = Arc::new(RateLimit::new(1000));
    assert_eq!(limit.reserve(100), None);
    let abandoned = limit.reserve(500).expect("due at 100 ms");
    let behind = limit.reserve(100).expect("due at 600 ms");
    let t0 = Instant::now();
    limit.give_back(abandoned);
    limit.wait(behind).await;
    assert_about(t0.elapsed(), Duration::from_millis(100));
    // Given back once due, a turn is spent: the clock does not move.
    let spent = limit.reserve(300).expect("due at 200 ms");
    let next = limit.reserve(100).expect("due at 500 ms");
    limit.wait(spent).await;
    limit.give_back(spent);
    limit.wait(next).await;
    assert_about(t0.elapsed(), Duration::from_millis(500));
}
