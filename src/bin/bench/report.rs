//! The results: the table and targets printed at the end, and the JSON report.

use std::time::Duration;

use serde_json::{Value, json};

use crate::verify::VerifyPhase;
use crate::{CONCURRENCY, DEFAULT_BATCH, window};

/// Phase 4 (and 7's RSS beside it in [`Report`]).
pub struct E2e {
    pub orders_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub events_per_s: f64,
    /// Events committed to the outbox per second over the phase.
    pub committed_per_s: f64,
    pub backlog: u64,
    pub errors: u64,
}

/// Phase 5: commit→PubAck at a steady rate.
pub struct Steady {
    pub achieved_per_s: f64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Phase 6: one drain.
pub struct Drain {
    pub rows: usize,
    pub events_per_s: f64,
    pub seconds: f64,
}

/// Every phase's figures; a phase not run stays `None`.
#[derive(Default)]
pub struct Report {
    pub raw_publish_per_s: Option<f64>,
    pub raw_batches_per_s: Option<f64>,
    pub parse_only_per_s: Option<f64>,
    pub sqlite_tx_per_s: Option<f64>,
    pub e2e: Option<E2e>,
    pub steady: Option<Steady>,
    pub drains: Vec<(u32, Drain)>,
    pub rss_mib: Option<f64>,
    pub verify: Option<VerifyPhase>,
    pub total: Duration,
}

struct Target {
    name: &'static str,
    wanted: &'static str,
    value: f64,
    met: bool,
}

impl Report {
    fn default_drain(&self) -> Option<&Drain> {
        self.drains
            .iter()
            .find(|(b, _)| *b == DEFAULT_BATCH)
            .map(|(_, d)| d)
    }

    fn targets(&self) -> Vec<Target> {
        let nan = f64::NAN;
        let e2e = self.e2e.as_ref();
        let orders = e2e.map_or(0.0, |e| e.orders_per_s);
        let b = self.parse_only_per_s.unwrap_or(nan);
        let a = self.raw_publish_per_s.unwrap_or(nan);
        let a2 = self.raw_batches_per_s.unwrap_or(nan);
        let drain = self.default_drain().map_or(0.0, |d| d.events_per_s);
        let pace = e2e.map_or(0.0, |e| e.events_per_s / e.committed_per_s);
        let backlog_s = e2e.map_or(f64::INFINITY, |e| e.backlog as f64 / e.committed_per_s);
        let p99 = self.steady.as_ref().map_or(f64::INFINITY, |s| s.p99_ms);
        let rss = self.rss_mib.unwrap_or(f64::INFINITY);
        let verify_s = self
            .verify
            .as_ref()
            .map_or(f64::INFINITY, |v| v.clean.seconds);
        let target = |name, wanted, value: f64, met: bool| Target {
            name,
            wanted,
            value,
            met,
        };
        vec![
            target(
                "drain / baseline A2",
                ">= 80%",
                100.0 * drain / a2,
                drain / a2 >= 0.80,
            ),
            target(
                "drain / baseline A",
                ">= 500%",
                100.0 * drain / a,
                drain / a >= 5.0,
            ),
            target(
                "4: to JetStream / committed",
                ">= 90%",
                100.0 * pace,
                pace >= 0.90,
            ),
            target(
                "4: backlog at the end (s)",
                "< 1 s",
                backlog_s,
                backlog_s < 1.0,
            ),
            target("commit→PubAck p99 (ms)", "<= 10 ms", p99, p99 <= 10.0),
            target(
                "end to end / baseline B",
                ">= 15%",
                100.0 * orders / b,
                orders / b >= 0.15,
            ),
            target("peak RSS (MiB)", "<= 100 MiB", rss, rss <= 100.0),
            target(
                "V: clean verify of 1M rows (s)",
                "<= 2 s",
                verify_s,
                verify_s <= 2.0,
            ),
        ]
    }

    /// Prints the table and the targets; whether every target was met.
    pub fn print(&self) -> bool {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let f = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.0} {unit}"));
        let baselines = [
            (
                format!("A  raw JetStream publish (window {})", window()),
                f(self.raw_publish_per_s, "events/s"),
            ),
            (
                format!("A2 raw atomic batches of {DEFAULT_BATCH}, 1 per stream"),
                f(self.raw_batches_per_s, "events/s"),
            ),
            (
                "B  parse-only axum handler (c=64)".into(),
                f(self.parse_only_per_s, "req/s"),
            ),
            (
                "C  SQLite order+outbox, 1 tx each".into(),
                f(self.sqlite_tx_per_s, "tx/s"),
            ),
        ];
        let e2e = self.e2e.iter().flat_map(|e| {
            [
                (
                    "4  create-order end to end (c=64)",
                    format!("{:.0} orders/s", e.orders_per_s),
                ),
                (
                    "4  latency p50 / p99",
                    format!("{:.2} / {:.2} ms", e.p50_ms, e.p99_ms),
                ),
                (
                    "4  events committed / reaching JetStream",
                    format!("{:.0} / {:.0} events/s", e.committed_per_s, e.events_per_s),
                ),
                (
                    "4  backlog at the end / errors",
                    format!("{} rows / {}", e.backlog, e.errors),
                ),
            ]
        });
        let steady = self.steady.iter().flat_map(|s| {
            [
                (
                    "5  steady rate achieved",
                    format!("{:.0} orders/s ({} samples)", s.achieved_per_s, s.samples),
                ),
                (
                    "5  commit→PubAck p50 / p99 / max",
                    format!("{:.2} / {:.2} / {:.2} ms", s.p50_ms, s.p99_ms, s.max_ms),
                ),
            ]
        });
        for (k, v) in baselines {
            row(&k, v);
        }
        for (k, v) in e2e.chain(steady) {
            row(k, v);
        }
        for (batch, d) in &self.drains {
            row(
                &format!("6  drain, publish batch {batch}"),
                format!(
                    "{:.0} events/s ({} rows in {:.1} s)",
                    d.events_per_s, d.rows, d.seconds
                ),
            );
        }
        row("7  service peak RSS during 4", f(self.rss_mib, "MiB"));
        if let Some(v) = &self.verify {
            for (name, run) in [("clean", &v.clean), ("1,000 lost", &v.lost)] {
                row(
                    &format!("V  verify of {} rows, {name}", v.rows),
                    format!(
                        "{:.3} s, {} broker calls, {} missing",
                        run.seconds, run.broker_calls, run.missing
                    ),
                );
            }
        }
        let ratio = |n: Option<f64>, d: Option<f64>| match (n, d) {
            (Some(n), Some(d)) if d > 0.0 => format!("{:.1}%", 100.0 * n / d),
            _ => "-".into(),
        };
        let e2e = self.e2e.as_ref().map(|e| e.orders_per_s);
        row("ratio 4 / B", ratio(e2e, self.parse_only_per_s));
        for (batch, d) in &self.drains {
            row(
                &format!("ratio 6 (batch {batch}) / A2, / A"),
                format!(
                    "{}, {}",
                    ratio(Some(d.events_per_s), self.raw_batches_per_s),
                    ratio(Some(d.events_per_s), self.raw_publish_per_s)
                ),
            );
        }
        row("ratio 4 / C", ratio(e2e, self.sqlite_tx_per_s));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        println!();
        for (k, v) in &rows {
            println!("{k:<width$}  {v}");
        }
        println!();
        let mut all = true;
        for t in self.targets() {
            all &= t.met;
            let value = if t.name.contains('/') && !t.name.contains("ms") {
                format!("{:.1}%", t.value)
            } else {
                format!("{:.2}", t.value)
            };
            println!(
                "target {:<34} {:<11} {:>9}  {}",
                t.name,
                t.wanted,
                value,
                if t.met { "met" } else { "NOT met" }
            );
        }
        println!("\nwhole run: {:.0} s", self.total.as_secs_f64());
        all
    }

    /// The report `target/bench/latest.json` holds.
    pub fn json(&self) -> Value {
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({"target": t.name, "wanted": t.wanted, "value": t.value, "met": t.met}))
            .collect();
        json!({
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
            "baseline_a_raw_publish_events_per_s": self.raw_publish_per_s,
            "baseline_a2_raw_batches_events_per_s": self.raw_batches_per_s,
            "publish_batch": DEFAULT_BATCH,
            "baseline_b_parse_only_req_per_s": self.parse_only_per_s,
            "baseline_c_sqlite_tx_per_s": self.sqlite_tx_per_s,
            "window": window(),
            "concurrency": CONCURRENCY,
            "end_to_end": self.e2e.as_ref().map(|e| json!({
                "orders_per_s": e.orders_per_s, "p50_ms": e.p50_ms, "p99_ms": e.p99_ms,
                "events_per_s_to_jetstream": e.events_per_s, "events_per_s_committed": e.committed_per_s,
                "backlog_rows": e.backlog, "errors": e.errors,
            })),
            "commit_to_puback": self.steady.as_ref().map(|s| json!({
                "rate_per_s": s.achieved_per_s, "samples": s.samples,
                "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "max_ms": s.max_ms,
            })),
            "drain": self.drains.iter().map(|(b, d)| json!({
                "publish_batch": b, "rows": d.rows, "events_per_s": d.events_per_s, "seconds": d.seconds,
            })).collect::<Vec<_>>(),
            "peak_rss_mib": self.rss_mib,
            "verify": self.verify.as_ref().map(|v| json!({
                "rows": v.rows,
                "clean": {"seconds": v.clean.seconds, "broker_calls": v.clean.broker_calls, "missing": v.clean.missing},
                "lost_1000": {"seconds": v.lost.seconds, "broker_calls": v.lost.broker_calls, "missing": v.lost.missing},
            })),
            "targets": targets,
            "seconds": self.total.as_secs_f64(),
        })
    }
}

/// The `p`th percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Microseconds to milliseconds.
pub fn ms(micros: i64) -> f64 {
    micros as f64 / 1000.0
}
