//! The service on a three-node JetStream cluster (the configs of `nats/cluster/`), with faults
//! driven by the tests themselves on a private Docker network: a stream leader killed again and
//! again, a node cut off, two of three nodes down, a rolling restart, all three stores lost. They need a Docker engine
//! and the local image (`make nats-image`); a cluster that cannot start fails the test. nextest
//! runs them one at a time (test group `cluster` in .config/nextest.toml).
//!
//! - `harness`: the cluster: containers, network, kill/stop/start, disconnect/reconnect, leaders.
//! - `load`: a steady load of orders, and the comparison of the streams with the outbox.
//! - `faults`: the tests of faults under load.
//! - `repair`: all three stores lost; the service puts the events back.
//! - `chaos`: a seeded, randomized fault campaign with a history checker (`make chaos`).

mod chaos;
mod faults;
mod harness;
mod leaderless;
mod load;
mod repair;
mod routes;
