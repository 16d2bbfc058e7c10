//! How long to wait before trying again: one schedule for every retry loop in the service.
//!
//! [`Backoff`] is the schedule (exponential or fixed, capped, with jitter); it answers "how long
//! after the n-th failure" for the outbox rows that count their failures, and [`Backoff::waits`]
//! gives the stateful form for loops that just keep trying (connecting, reconciling, setting up a
//! consumer): each wait doubles up to the cap until the loop calls [`Waits::reset`].

use std::time::Duration;

/// How the wait grows with each failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackoffKind {
    /// base, 2·base, 4·base, … up to the cap (the contract's `retry_backoff: exponential`).
    Exponential,
    /// base every time.
    Fixed,
}

/// A retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// How the wait grows.
    pub kind: BackoffKind,
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th failure (1 for the first), capped, with jitter: a random
    /// point in the upper half of the wait, so rows that failed together do not retry together.
    pub fn delay(&self, failures: u32) -> Duration {
        let full = match self.kind {
            BackoffKind::Fixed => self.base,
            BackoffKind::Exponential => {
                let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
                self.base.saturating_mul(factor)
            }
        }
        .min(self.max);
        let half = full / 2;
        half + full.saturating_sub(half).mul_f64(fastrand::f64())
    }

    /// An exponential schedule from `base` up to `max`.
    pub const fn exponential(base: Duration, max: Duration) -> Backoff {
        Backoff {
            kind: BackoffKind::Exponential,
            base,
            max,
        }
    }

    /// The waits of a loop that keeps trying: the first is about `base`, each next one longer.
    pub fn waits(self) -> Waits {
        Waits {
            schedule: self,
            failures: 0,
        }
    }
}

/// The waits of a retry loop, one per failure in a row; see [`Backoff::waits`].
#[derive(Debug, Clone)]
pub struct Waits {
    schedule: Backoff,
    failures: u32,
}

impl Waits {
    /// The wait after one more failure.
    pub fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.schedule.delay(self.failures)
    }

    /// Starts again from the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let b = Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4));
            let d9 = b.delay(9);
            assert!(d9 >= Duration::from_secs(5) && d9 <= Duration::from_secs(10));
            assert!(b.delay(u32::MAX) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn waits_grow_until_reset() {
        let mut waits =
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)).waits();
        assert!(waits.next_wait() <= Duration::from_millis(100));
        assert!(waits.next_wait() >= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(waits.next_wait() <= Duration::from_secs(1));
        }
        assert!(waits.next_wait() >= Duration::from_millis(500));
        waits.reset();
        assert!(waits.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn fixed_stays_put() {
        let b = Backoff {
            kind: BackoffKind::Fixed,
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert!(b.delay(7) <= Duration::from_secs(2) && b.delay(7) >= Duration::from_secs(1));
    }
}
