//! Progress as plain lines, for a stderr that is no terminal (CI, a pipe, a log file): what one
//! line says, and when the next one is due.
//!
//! A log cannot redraw a bar, and a line per step would bury the log, so a line comes when the
//! work starts, when it has gone a tenth further (at most one a second), at least every
//! [`EVERY`] while it runs, and when it ends.

use std::time::Duration;

use indicatif::HumanCount;

/// The longest a running job goes without a line.
pub const EVERY: Duration = Duration::from_secs(5);
/// The shortest gap between two lines: a job that runs fast through its tenths says so once a
/// second at most.
const SOONEST: Duration = Duration::from_secs(1);

/// What a line reports: the state of one job at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot<'a> {
    /// What the work is (`outbox repair`, `bench: 6. drain`).
    pub label: &'a str,
    /// What is counted (`events`, `letters`); unused by timed work.
    pub unit: &'a str,
    /// Counted so far.
    pub done: u64,
    /// What the count goes to, when known.
    pub total: Option<u64>,
    /// For work that runs for a fixed time rather than over a count: that time.
    pub length: Option<Duration>,
    /// Since the work started.
    pub elapsed: Duration,
    /// A second count or a state, said after the first (`streams 3/10`); empty for none.
    pub note: &'a str,
}

impl Snapshot<'_> {
    /// How far the work is, 0 to 1, when that is known.
    pub fn fraction(&self) -> Option<f64> {
        if let Some(length) = self.length {
            return (!length.is_zero())
                .then(|| (self.elapsed.as_secs_f64() / length.as_secs_f64()).min(1.0));
        }
        match self.total {
            Some(total) if total > 0 => Some((self.done as f64 / total as f64).min(1.0)),
            _ => None,
        }
    }
}

/// The line for `snapshot`; `ended` for the last one.
pub fn line(snapshot: &Snapshot<'_>, ended: bool) -> String {
    let s = snapshot;
    let elapsed = duration(s.elapsed);
    let mut line = match s.length {
        Some(_) if ended => format!("{}: done in {elapsed}", s.label),
        Some(length) => format!("{}: {elapsed} of {}", s.label, duration(length)),
        None => {
            let count = match s.total {
                Some(total) => format!("{}/{} {}", HumanCount(s.done), HumanCount(total), s.unit),
                None => format!("{} {}", HumanCount(s.done), s.unit),
            };
            let percent = match (s.fraction(), ended) {
                (Some(fraction), false) => format!(" ({:.0}%)", (fraction * 100.0).floor()),
                _ => String::new(),
            };
            let rate = rate(s.done, s.elapsed)
                .map(|rate| format!(", {rate}"))
                .unwrap_or_default();
            if ended {
                let how = match s.total {
                    Some(total) if s.done < total => "stopped at",
                    _ => "done,",
                };
                format!("{}: {how} {count} in {elapsed}{rate}", s.label)
            } else {
                format!("{}: {count}{percent}{rate}, {elapsed}", s.label)
            }
        }
    };
    if !s.note.is_empty() {
        line.push_str("; ");
        line.push_str(s.note);
    }
    line
}

/// `done` over `elapsed` as a rate, once a second has passed (before that it says little).
fn rate(done: u64, elapsed: Duration) -> Option<String> {
    let seconds = elapsed.as_secs_f64();
    if seconds < 1.0 {
        return None;
    }
    let rate = done as f64 / seconds;
    Some(if rate >= 10.0 {
        format!("{}/s", HumanCount(rate.round() as u64))
    } else {
        format!("{rate:.1}/s")
    })
}

/// `12.3 s` under a minute, `4 min 05 s` from one on.
fn duration(d: Duration) -> String {
    let seconds = d.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        let whole = d.as_secs();
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// When the next line of a running job is due.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// When the last line came (since the work started), `None` before the first.
    last: Option<Duration>,
    /// The tenths done at the last line.
    tenths: u64,
}

impl Pacer {
    /// Whether a line is due at `elapsed` with `fraction` of the work done (`None` when not
    /// known); a `true` counts as the line written.
    pub fn due(&mut self, elapsed: Duration, fraction: Option<f64>) -> bool {
        let tenths = fraction.map(|f| (f.clamp(0.0, 1.0) * 10.0).floor() as u64);
        let due = match self.last {
            None => true,
            Some(last) => {
                let since = elapsed.saturating_sub(last);
                since >= EVERY || (since >= SOONEST && tenths.is_some_and(|t| t > self.tenths))
            }
        };
        if due {
            self.last = Some(elapsed);
            self.tenths = tenths.unwrap_or(self.tenths);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(done: u64, total: Option<u64>, elapsed_ms: u64) -> Snapshot<'static> {
        Snapshot {
            label: "outbox repair",
            unit: "events",
            done,
            total,
            length: None,
            elapsed: Duration::from_millis(elapsed_ms),
            note: "",
        }
    }

    #[test]
    fn a_running_count_says_how_far_how_fast_and_how_long() {
        assert_eq!(
            line(&counted(1_200, Some(5_000), 3_500), false),
            "outbox repair: 1,200/5,000 events (24%), 343/s, 3.5 s"
        );
        assert_eq!(
            line(&counted(7, None, 2_000), false),
            "outbox repair: 7 events, 3.5/s, 2.0 s"
        );
    }

    #[test]
    fn no_rate_is_told_in_the_first_second() {
        assert_eq!(
            line(&counted(3, Some(9), 250), false),
            "outbox repair: 3/9 events (33%), 0.2 s"
        );
    }

    #[test]
    fn the_last_line_says_done_or_where_it_stopped() {
        assert_eq!(
            line(&counted(5_000, Some(5_000), 14_800), true),
            "outbox repair: done, 5,000/5,000 events in 14.8 s, 338/s"
        );
        assert_eq!(
            line(&counted(10, Some(40), 500), true),
            "outbox repair: stopped at 10/40 events in 0.5 s"
        );
        assert_eq!(
            line(&counted(0, Some(0), 80), true),
            "outbox repair: done, 0/0 events in 0.1 s"
        );
    }

    #[test]
    fn a_note_follows_the_count() {
        let mut snapshot = counted(0, Some(0), 100);
        snapshot.note = "streams 3/10";
        assert_eq!(
            line(&snapshot, false),
            "outbox repair: 0/0 events, 0.1 s; streams 3/10"
        );
    }

    #[test]
    fn timed_work_says_its_time_of_its_length() {
        let snapshot = Snapshot {
            label: "bench: 4. create-order",
            unit: "",
            done: 0,
            total: None,
            length: Some(Duration::from_secs(10)),
            elapsed: Duration::from_millis(4_200),
            note: "",
        };
        assert!((snapshot.fraction().unwrap() - 0.42).abs() < 1e-9);
        assert_eq!(
            line(&snapshot, false),
            "bench: 4. create-order: 4.2 s of 10.0 s"
        );
        assert_eq!(
            line(&snapshot, true),
            "bench: 4. create-order: done in 4.2 s"
        );
    }

    #[test]
    fn minutes_are_written_as_minutes() {
        assert_eq!(duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(duration(Duration::from_millis(59_940)), "59.9 s");
    }

    /// Which of `ticks` (elapsed ms, fraction) get a line.
    fn lines_at(ticks: &[(u64, Option<f64>)]) -> Vec<u64> {
        let mut pacer = Pacer::default();
        ticks
            .iter()
            .filter(|(ms, fraction)| pacer.due(Duration::from_millis(*ms), *fraction))
            .map(|(ms, _)| *ms)
            .collect()
    }

    #[test]
    fn the_first_tick_gets_a_line_then_one_every_five_seconds() {
        let ticks: Vec<_> = (1..=48).map(|i| (i * 250, None)).collect();
        assert_eq!(lines_at(&ticks), [250, 5_250, 10_250]);
    }

    #[test]
    fn a_tenth_further_gets_a_line_but_not_more_than_one_a_second() {
        // 1 % a tick, a tick every 250 ms: a tenth every 2.5 s.
        let ticks: Vec<_> = (1..=40)
            .map(|i| (i * 250, Some(i as f64 / 100.0)))
            .collect();
        assert_eq!(lines_at(&ticks), [250, 2_500, 5_000, 7_500, 10_000]);
        // 10 % a tick: every tenth is crossed, yet one line a second at most.
        let ticks: Vec<_> = (1..=10).map(|i| (i * 250, Some(i as f64 / 10.0))).collect();
        assert_eq!(lines_at(&ticks), [250, 1_250, 2_250]);
    }
}
