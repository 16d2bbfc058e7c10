//! The seeded schedule of a campaign: which fault, when, for how long, and the salt every later
//! random choice of that fault draws from (which node, which block file, which bytes). The same
//! seed, duration and interval give the same schedule; what the cluster looks like when a fault
//! comes (which node leads a stream) depends on timing and is printed as the fault runs.

use std::time::Duration;

/// How long the load runs before the first fault: the streams exist and hold a little.
const WARM_UP: Duration = Duration::from_secs(3);

/// Every kind of fault a campaign knows. At most one runs at a time and each is healed before
/// the next starts, so at most one node is faulty at once: no fault takes a quorum away
/// deliberately (a two-replica stream still loses its quorum while one of its nodes is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL of the service process, restarted on the same SQLite file after the hold.
    ServiceKill,
    /// `docker kill` (SIGKILL) of a node, started again with its store.
    NodeKill,
    /// `docker stop` (SIGTERM, a clean shutdown) of a node, started again with its store.
    NodeRestart,
    /// `docker pause` (SIGSTOP through the freezer) of a node, then unpause.
    NodePause,
    /// `docker pause` of a node holding a replica of a stream it does not lead.
    FollowerPause,
    /// A node killed, its container replaced by an empty one: the store is gone.
    NodeWipe,
    /// A node killed, one block file of a stream it holds truncated, the node started again.
    BlockTruncate,
    /// A node killed, 64 to 256 bytes of one block file overwritten, the node started again.
    BlockCorrupt,
    /// `docker network disconnect` of a node (from peers and clients), then connect.
    NodePartition,
    /// The service's TCP proxies to all three nodes drop every connection and refuse new ones,
    /// or hold them without forwarding a byte (a black hole), then forward again.
    ServiceCutOff,
    /// SIGKILL of a subscriber process, started again on its file after the hold.
    SubscriberKill,
    /// SIGSTOP of a subscriber process for longer than its lease, then SIGCONT.
    SubscriberPause,
    /// A consumer group's SQLite file locked by another process (`BEGIN EXCLUSIVE`).
    SubscriberLocked,
    /// A consumer group's SQLite file full: its handler's writes fail with `SQLITE_FULL`.
    SubscriberFull,
    /// `docker kill` of the node leading a consumer group's consumer, started again.
    ConsumerLeaderKill,
}

impl FaultKind {
    /// Every kind, the consumer groups' too, in the table's order.
    pub const ALL: [FaultKind; 15] = [
        FaultKind::ServiceKill,
        FaultKind::NodeKill,
        FaultKind::NodeRestart,
        FaultKind::NodePause,
        FaultKind::FollowerPause,
        FaultKind::NodeWipe,
        FaultKind::BlockTruncate,
        FaultKind::BlockCorrupt,
        FaultKind::NodePartition,
        FaultKind::ServiceCutOff,
        FaultKind::SubscriberKill,
        FaultKind::SubscriberPause,
        FaultKind::SubscriberLocked,
        FaultKind::SubscriberFull,
        FaultKind::ConsumerLeaderKill,
    ];

    /// The kinds that hit the service and the cluster: [`FaultKind::ALL`] without the groups'.
    pub const CLUSTER: &'static [FaultKind] = FaultKind::ALL.as_slice().split_at(10).0;

    /// The kind's name in logs and the table.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ServiceKill => "service kill -9",
            FaultKind::NodeKill => "node kill -9",
            FaultKind::NodeRestart => "node restart",
            FaultKind::NodePause => "node pause",
            FaultKind::FollowerPause => "follower pause",
            FaultKind::NodeWipe => "node store wiped",
            FaultKind::BlockTruncate => "block file truncated",
            FaultKind::BlockCorrupt => "block file overwritten",
            FaultKind::NodePartition => "node cut off",
            FaultKind::ServiceCutOff => "service cut off",
            FaultKind::SubscriberKill => "subscriber kill -9",
            FaultKind::SubscriberPause => "subscriber paused",
            FaultKind::SubscriberLocked => "group file locked",
            FaultKind::SubscriberFull => "group file full",
            FaultKind::ConsumerLeaderKill => "consumer leader kill",
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone)]
pub struct Planned {
    /// When it starts, from the start of the load (later if the previous one healed late).
    pub at: Duration,
    /// What it does.
    pub kind: FaultKind,
    /// The node it hits (an index into the harness's `NODES`) where the kind picks one up front.
    pub node: usize,
    /// How long the fault lasts before it is healed.
    pub hold: Duration,
    /// Seed of the fault's own choices (stream, block file, offset, bytes, proxy mode).
    pub salt: u64,
}

/// The schedule for `seed`: a fault of `kinds` every `interval` from [`WARM_UP`] until `duration`
/// (at least one), each held for 30 to 60 % of the interval. The first are every kind once in a
/// seeded order (as many as fit), the rest seeded picks.
pub fn plan(
    seed: u64,
    duration: Duration,
    interval: Duration,
    kinds: &[FaultKind],
) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let count = (duration.saturating_sub(WARM_UP).as_millis() / interval.as_millis().max(1)).max(1)
        as usize;
    let mut first = kinds.to_vec();
    rng.shuffle(&mut first);
    (0..count)
        .map(|i| {
            let kind = first
                .get(i)
                .copied()
                .unwrap_or_else(|| kinds[rng.usize(..kinds.len())]);
            let hold_ms = interval.as_millis() as u64 * rng.u64(30..=60) / 100;
            Planned {
                at: WARM_UP + interval * i as u32,
                kind,
                node: rng.usize(..3),
                hold: Duration::from_millis(hold_ms.max(500)),
                salt: rng.u64(..),
            }
        })
        .collect()
}

/// A duration from the environment: `90s`, `30m`, `1h 30m` (humantime), or plain seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).ok(),
    }
}

#[test]
fn a_seed_gives_the_same_schedule_and_every_kind_first() {
    let (duration, interval) = (Duration::from_secs(125), Duration::from_secs(8));
    let one = plan(7, duration, interval, &FaultKind::ALL);
    let again = plan(7, duration, interval, &FaultKind::ALL);
    assert_eq!(format!("{one:?}"), format!("{again:?}"));
    assert_eq!(one.len(), 15);
    let mut kinds: Vec<FaultKind> = one.iter().map(|p| p.kind).collect();
    kinds.sort();
    assert_eq!(kinds, FaultKind::ALL);
    assert_ne!(
        format!("{one:?}"),
        format!("{:?}", plan(8, duration, interval, &FaultKind::ALL))
    );
    let cluster = plan(7, Duration::from_secs(90), interval, FaultKind::CLUSTER);
    let mut kinds: Vec<FaultKind> = cluster.iter().map(|p| p.kind).collect();
    kinds.sort();
    assert_eq!(kinds, FaultKind::CLUSTER);
    assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
    assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
}
