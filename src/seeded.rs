//! Property tests' runner with a printed seed: every run of a property prints the seed it drew,
//! and `PROPTEST_SEED=<n>` replays that run; `PROPTEST_CASES` sets how many cases (default 256).

use proptest::test_runner::{Config, RngSeed, TestRunner};

/// A runner for `property`, seeded from `PROPTEST_SEED` or at random, the seed printed.
pub fn runner(property: &str) -> TestRunner {
    let seed = std::env::var("PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    eprintln!("{property}: seed {seed} (PROPTEST_SEED={seed} replays it), {cases} cases");
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    })
}

/// A seed from the clock and the process: distinct runs draw distinct cases.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
