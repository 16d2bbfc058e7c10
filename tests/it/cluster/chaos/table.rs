//! The campaign's result as one table, as Jepsen prints its results: the seed, the faults by
//! kind, the commands by answer, the events and what was wrong with them, the stalls, and the
//! verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::checker::Findings;
use super::faults::Done;
use super::monitor::Progress;
use super::observe::Settled;
use super::schedule::FaultKind;

/// Everything the table shows.
pub struct Summary<'a> {
    /// The campaign's seed.
    pub seed: u64,
    /// How long the load ran.
    pub load: Duration,
    /// The fault interval.
    pub interval: Duration,
    /// Load clients.
    pub clients: usize,
    /// Faults planned.
    pub planned: usize,
    /// The kinds the schedule drew from.
    pub kinds: &'a [FaultKind],
    /// Faults that ran.
    pub faults: &'a [Done],
    /// The checker's findings.
    pub findings: &'a Findings,
    /// How the wait for a quiet system ended.
    pub settled: &'a Settled,
    /// Publish progress over the run.
    pub progress: &'a Progress,
    /// The longest time without a successful command.
    pub command_stall: Duration,
    /// Streams of the table that did not exist at the end.
    pub missing_streams: &'a [String],
    /// Stream sequences that could not be read.
    pub unreadable: u64,
    /// Stream sequences between first and last that hold no message.
    pub holes: u64,
    /// Streams whose replicas hold different messages at the end (reported, not a failure:
    /// the checker reads through the leaders).
    pub diverging: &'a [String],
    /// How many (stream, node) states the nodes' `/jsz` reported.
    pub replica_states: usize,
    /// Streams without a leader or with a replica not current when they were read.
    pub behind: &'a [String],
    /// Per stream, the replicas the service had moved because it had no leader for long.
    pub replicas_moved: &'a std::collections::BTreeMap<String, usize>,
    /// The consumer groups' lines (name, value), from `subscriber_check`.
    pub subscribers: &'a [(String, String)],
    /// What fails the campaign among the groups' findings.
    pub subscriber_failures: &'a [String],
}

/// The table, ready to print.
pub fn render(s: &Summary) -> String {
    let f = s.findings;
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<26} {value}");
    };

    let mut text = format!("{}\n", "=".repeat(70));
    let _ = writeln!(
        text,
        "  chaos campaign: seed {} (CHAOS_SEED={} replays it)",
        s.seed, s.seed
    );
    line(
        "load",
        format!(
            "{:.1} s, {} clients, a fault every {:?}: {} of {} planned ran",
            s.load.as_secs_f64(),
            s.clients,
            s.interval,
            s.faults.len(),
            s.planned
        ),
    );
    line("faults", String::new());
    let mut by_kind: BTreeMap<FaultKind, (usize, usize)> = BTreeMap::new();
    for done in s.faults {
        let entry = by_kind.entry(done.kind).or_default();
        entry.0 += 1;
        entry.1 += usize::from(!done.recovered);
    }
    for &kind in s.kinds {
        let (n, slow) = by_kind.get(&kind).copied().unwrap_or_default();
        let slow = if slow > 0 {
            format!("  ({slow} times not current again after it)")
        } else {
            String::new()
        };
        line(&format!("  {}", kind.name()), format!("{n}{slow}"));
    }
    line(
        "commands ok/failed/unknown",
        format!(
            "{} / {} / {}  (unknown that committed: {})",
            f.ok, f.failed, f.unknown, f.unknown_committed
        ),
    );
    line("events committed", f.events.to_string());
    line(
        "messages stored",
        format!("{} ({} sequences without a message)", f.stored, s.holes),
    );
    for (name, n) in [
        ("lost", f.lost),
        ("undelivered", f.undelivered),
        ("duplicated", f.duplicated),
        ("altered", f.altered),
        ("foreign", f.foreign),
        ("reordered", f.reordered),
        ("repaired", f.repaired),
        ("dead", f.dead),
        ("missing successes", f.missing_successes),
        ("failed but committed", f.failed_but_committed),
        ("phantom rows", f.phantoms),
    ] {
        line(name, n.to_string());
    }
    line(
        "outbox verify",
        if s.settled.verify_clean {
            "clean (exit 0)".into()
        } else {
            "NOT clean".into()
        },
    );
    line(
        "settled",
        format!(
            "{:.1} s after the last fault, {} rows pending",
            s.settled.took.as_secs_f64(),
            s.settled.pending
        ),
    );
    if !s.missing_streams.is_empty() || s.unreadable > 0 {
        line(
            "streams",
            format!(
                "missing {:?}, {} unreadable sequences",
                s.missing_streams, s.unreadable
            ),
        );
    }
    if !s.behind.is_empty() {
        line("streams not current", s.behind.join("; "));
    }
    line(
        "replicas moved",
        if s.replicas_moved.is_empty() {
            "none (no stream was without a leader for long)".into()
        } else {
            let moves: Vec<String> = s
                .replicas_moved
                .iter()
                .map(|(stream, n)| format!("{stream} {n}"))
                .collect();
            format!(
                "{} ({})",
                s.replicas_moved.values().sum::<usize>(),
                moves.join(", ")
            )
        },
    );
    line(
        "replicas diverged",
        if s.diverging.is_empty() {
            format!("none ({} replica states compared)", s.replica_states)
        } else {
            s.diverging.join("; ")
        },
    );
    let (stall_from, stall) = (s.progress.stall_from, s.progress.longest_stall);
    let during: Vec<&str> = s
        .faults
        .iter()
        .filter(|d| d.from < stall_from + stall && d.to > stall_from)
        .map(|d| d.kind.name())
        .collect();
    line(
        "longest stall: publish",
        format!(
            "{:.1} s from {:.1} s, during {during:?} (rows pending, none newly published)",
            stall.as_secs_f64(),
            stall_from.as_secs_f64(),
        ),
    );
    line("most rows pending", s.progress.most_pending.to_string());
    line(
        "longest stall: commands",
        format!(
            "{:.1} s without a successful command",
            s.command_stall.as_secs_f64()
        ),
    );
    for (name, value) in s.subscribers {
        line(name, value.clone());
    }
    let mut failures = f.failures();
    failures.extend(s.subscriber_failures.iter().cloned());
    let verdict = if failures.is_empty() && s.settled.verify_clean {
        "VALID".to_string()
    } else {
        let mut all = failures;
        if !s.settled.verify_clean {
            all.push("outbox verify not clean".into());
        }
        format!("INVALID: {}", all.join(", "))
    };
    line("verdict", verdict);
    format!("{text}{out}{}", "=".repeat(70))
}
