//! How the shells pace what they try again: one [`Backoff`] (a delay that doubles up to a cap,
//! with optional jitter) and one [`Avoidance`] (per endpoint: skip it for a while that doubles
//! with each failure in a row, then let one probe through).
//!
//! Here, in the I/O shell, and not in the core: jitter draws random numbers, and the core draws
//! none (its own resend and recovery timers back off on its clock). The replica (peer links,
//! joining) and the `client` binary (request retries, round-robin avoidance) both use it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

/// Doublings after which the delay stops growing even below the cap (`base * 2^16`).
const DOUBLINGS_MAX: u32 = 16;

/// A delay that starts at `base`, doubles with each [`Backoff::next_delay`] up to `max`, and starts
/// over on [`Backoff::reset`]. With jitter each delay is drawn uniformly from
/// `[d * (1 - jitter), d * (1 + jitter))`, so that clients that failed together do not all come
/// back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    /// Fraction of the delay drawn at random either way (0: none).
    jitter: f64,
    /// Delays handed out since the last reset.
    failures: u32,
}

impl Backoff {
    /// Without jitter.
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            jitter: 0.0,
            failures: 0,
        }
    }

    /// The same, each delay drawn within `jitter` (a fraction below 1) of its nominal value.
    pub fn with_jitter(self, jitter: f64) -> Backoff {
        assert!(
            (0.0..1.0).contains(&jitter),
            "jitter {jitter} must be in [0, 1)"
        );
        Backoff { jitter, ..self }
    }

    /// The delay after `failures` failures in a row (1: the first), before jitter:
    /// `base * 2^(failures - 1)`, at most `max`.
    pub fn nominal(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(DOUBLINGS_MAX);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The next delay (jittered with the thread's random generator).
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// The next delay, jittered with `rng`.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = self.nominal(self.failures);
        if self.jitter == 0.0 {
            return d;
        }
        d.mul_f64(rng.random_range(1.0 - self.jitter..1.0 + self.jitter))
    }

    /// It worked: the next delay is `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Per endpoint (by index): whether requests should skip it now because it failed (timed out,
/// refused, said it is unavailable). Each failure in a row makes the avoidance longer (a
/// [`Backoff`] without jitter); when it runs out, exactly one caller gets to probe the endpoint
/// (the others keep skipping it for `probe`, the time the probe may take), and an answer
/// ([`Avoidance::succeeded`]) makes it usable by all again. Without the single probe every
/// caller went to an endpoint cut off by the network the moment its avoidance ran out, and all
/// waited a timeout. Shared by concurrent callers: lock-free.
#[derive(Debug)]
pub struct Avoidance {
    backoff: Backoff,
    /// How long the others skip an endpoint while one caller probes it.
    probe_ms: u64,
    epoch: Instant,
    /// Until when (ms since `epoch`) each endpoint is skipped.
    until_ms: Vec<AtomicU64>,
    /// Failures in a row of each endpoint (0: healthy).
    strikes: Vec<AtomicU32>,
}

impl Avoidance {
    /// For `n` endpoints: avoid one for `base` after a failure, doubling with each further
    /// failure in a row up to `max`; a probe is given `probe` to answer.
    pub fn new(n: usize, base: Duration, max: Duration, probe: Duration) -> Avoidance {
        Avoidance {
            backoff: Backoff::new(base, max),
            probe_ms: millis(probe),
            epoch: Instant::now(),
            until_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            strikes: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Whether a caller may use endpoint `i` now: it is healthy, or its avoidance ran out and
    /// this caller won the right to probe it.
    pub fn usable(&self, i: usize) -> bool {
        if self.strikes[i].load(Ordering::Relaxed) == 0 {
            return true;
        }
        let now = self.now_ms();
        let until = self.until_ms[i].load(Ordering::Relaxed);
        if now < until {
            return false;
        }
        self.until_ms[i]
            .compare_exchange(
                until,
                now.saturating_add(self.probe_ms),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Endpoint `i` failed: avoid it, for longer each time in a row.
    pub fn failed(&self, i: usize) {
        let strikes = self.strikes[i]
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let wait = millis(self.backoff.nominal(strikes));
        let until = self.now_ms().saturating_add(wait);
        self.until_ms[i].fetch_max(until, Ordering::Relaxed);
    }

    /// Endpoint `i` answered: usable by all again, and its next failure starts from `base`.
    pub fn succeeded(&self, i: usize) {
        // Read first: a store on every answer would bounce the cache line between callers.
        if self.strikes[i].load(Ordering::Relaxed) != 0 {
            self.strikes[i].store(0, Ordering::Relaxed);
            self.until_ms[i].store(0, Ordering::Relaxed);
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(50 * MS, 1000 * MS);
        let got: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [50, 100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), 50 * MS, "starts over");
    }

    #[test]
    fn backoff_does_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(1 << DOUBLINGS_MAX));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let mut b = Backoff::new(20 * MS, 500 * MS).with_jitter(0.5);
        let mut seen = std::collections::BTreeSet::new();
        for failure in 1..=12 {
            let nominal = b.nominal(failure);
            let d = b.next_delay();
            assert!(
                d >= nominal.mul_f64(0.5),
                "{failure}: {d:?} < half {nominal:?}"
            );
            assert!(
                d < nominal.mul_f64(1.5),
                "{failure}: {d:?} >= 1.5 x {nominal:?}"
            );
            assert!(d < 750 * MS, "capped: {d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 6, "jittered delays differ: {seen:?}");
    }

    #[test]
    #[should_panic(expected = "jitter")]
    fn jitter_of_one_or_more_is_refused() {
        let _ = Backoff::new(MS, MS).with_jitter(1.0);
    }

    #[test]
    fn a_failed_endpoint_is_avoided_then_probed_by_one_caller() {
        let a = Avoidance::new(3, 200 * MS, 5000 * MS, Duration::from_secs(60));
        assert!(a.usable(1));
        a.failed(1);
        assert!(!a.usable(1), "avoided after a failure");
        assert!(a.usable(0), "the others are not");
        // Pretend the avoidance ran out: exactly one caller gets to probe.
        a.until_ms[1].store(0, Ordering::Relaxed);
        assert!(a.usable(1), "the probe");
        assert!(!a.usable(1), "one probe at a time");
        a.succeeded(1);
        assert!(a.usable(1), "healthy after an answer");
        assert!(a.usable(1));
    }

    #[test]
    fn avoidance_grows_with_failures_in_a_row_and_is_capped() {
        let a = Avoidance::new(1, 200 * MS, 5000 * MS, MS);
        let mut last = 0;
        for _ in 0..20 {
            a.failed(0);
            let wait = a.until_ms[0].load(Ordering::Relaxed) - a.now_ms();
            assert!(wait + 5 >= last, "grows: {wait} after {last}");
            assert!(wait <= 5000, "capped: {wait}");
            last = wait;
        }
        assert!(last + 50 >= 5000, "reaches the cap: {last}");
        a.succeeded(0);
        a.failed(0);
        let wait = a.until_ms[0].load(Ordering::Relaxed) - a.now_ms();
        assert!(wait <= 200, "an answer starts the doubling over: {wait}");
    }
}
