//! How long a row waits after a permanent publish failure before it is tried again.

use std::time::Duration;

/// How the wait grows with each failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackoffKind {
    /// base, 2·base, 4·base, … up to the cap (the contract's `retry_backoff: exponential`).
    Exponential,
    /// base every time.
    Fixed,
}

/// The retry schedule for permanent failures.
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
    fn fixed_stays_put() {
        let b = Backoff {
            kind: BackoffKind::Fixed,
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert!(b.delay(7) <= Duration::from_secs(2) && b.delay(7) >= Duration::from_secs(1));
    }
}
