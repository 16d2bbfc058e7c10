//! Progress of long work on stderr. `outbox verify|repair`, `dlq replay` and the bench's phases
//! run from seconds to many minutes, and without a sign of life nobody can tell slow work from
//! stuck work.
//!
//! On a terminal it is a bar redrawn in place (a spinner for a count without a total) with the
//! count, the rate and the time, drawn by `indicatif`; anywhere else (CI, a pipe, a log file) it
//! is plain lines at a modest pace (`lines`), so the log stays readable. Progress goes to stderr
//! only: what a command prints on stdout (its table, `--json`) is what scripts parse, and stays
//! as it was.
//!
//! The work only updates counters, atomics cheap enough for a loop over a million rows; a thread
//! of the display's own reads them a few times a second. So the work never waits for the
//! terminal, and timed work shows its time without telling anything.
//!
//! - `lines` — the plain lines and when the next is due.
//! - [`outbox`] — what `outbox verify` and `outbox repair` show.

mod lines;
pub mod outbox;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use lines::{Pacer, Snapshot};

/// How often a bar is redrawn: smooth enough for a spinner.
const BAR_PERIOD: Duration = Duration::from_millis(100);
/// How often the plain lines' pace is asked; the first line comes after one period, so work
/// done sooner prints its last line only.
const LINES_PERIOD: Duration = Duration::from_millis(250);
/// `total` when none is known.
const UNKNOWN: u64 = u64::MAX;

/// One piece of long work shown on stderr until [`Progress::finish`] or drop, as a bar on a
/// terminal and as plain lines elsewhere; see the module's documentation.
pub struct Progress {
    shared: Arc<Shared>,
    /// Dropping it ends the display thread, which then shows the last state.
    stop: Mutex<Option<mpsc::Sender<()>>>,
    display: Mutex<Option<JoinHandle<()>>>,
}

/// What the work updates and the display reads.
struct Shared {
    label: String,
    unit: &'static str,
    /// For timed work: how long it runs.
    length: Option<Duration>,
    done: AtomicU64,
    total: AtomicU64,
    note: Mutex<String>,
    started: Instant,
}

impl Progress {
    /// Work that counts `unit`s (`"events"`) up to `total`, when known (see
    /// [`Progress::set_total`] for one learnt later).
    pub fn count(label: impl Into<String>, unit: &'static str, total: Option<u64>) -> Progress {
        Progress::start(Shared::new(label.into(), unit, None, total))
    }

    /// Work that runs for `length` (a load of ten seconds): shows the time gone of it.
    pub fn timed(label: impl Into<String>, length: Duration) -> Progress {
        Progress::start(Shared::new(label.into(), "", Some(length), None))
    }

    fn start(shared: Shared) -> Progress {
        let view = if std::io::stderr().is_terminal() {
            View::bar()
        } else {
            View::lines(Box::new(std::io::stderr()))
        };
        Progress::with_view(shared, view)
    }

    fn with_view(shared: Shared, mut view: View) -> Progress {
        let shared = Arc::new(shared);
        let (stop, stopped) = mpsc::channel::<()>();
        let period = view.period();
        let seen = shared.clone();
        // Without a thread there is no progress to show; the work goes on all the same.
        let display = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    view.show(&seen);
                }
                view.end(&seen);
            })
            .ok();
        Progress {
            shared,
            stop: Mutex::new(Some(stop)),
            display: Mutex::new(display),
        }
    }

    /// `n` more done.
    pub fn inc(&self, n: u64) {
        self.shared.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` done in all.
    pub fn set_done(&self, n: u64) {
        self.shared.done.store(n, Ordering::Relaxed);
    }

    /// The count goes to `total`.
    pub fn set_total(&self, total: u64) {
        self.shared.total.store(total, Ordering::Relaxed);
    }

    /// The count goes `n` further than it did (from 0 when no total was known): for work found
    /// as it goes.
    pub fn inc_total(&self, n: u64) {
        let _ = self
            .shared
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                Some(if total == UNKNOWN { n } else { total + n })
            });
    }

    /// Text said after the count (`streams 3/10`), in place of the last.
    pub fn note(&self, text: impl Into<String>) {
        *lock(&self.shared.note) = text.into();
    }

    /// Shows the last state and stops: a bar stays drawn as it is, the lines get their last one.
    /// Only the first call (or the drop) does anything; call it before printing to stdout, so the
    /// bar is not drawn over what follows.
    pub fn finish(&self) {
        drop(lock(&self.stop).take());
        if let Some(display) = lock(&self.display).take() {
            let _ = display.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Shared {
    fn new(
        label: String,
        unit: &'static str,
        length: Option<Duration>,
        total: Option<u64>,
    ) -> Shared {
        Shared {
            label,
            unit,
            length,
            done: AtomicU64::new(0),
            total: AtomicU64::new(total.unwrap_or(UNKNOWN)),
            note: Mutex::new(String::new()),
            started: Instant::now(),
        }
    }

    fn total(&self) -> Option<u64> {
        let total = self.total.load(Ordering::Relaxed);
        (total != UNKNOWN).then_some(total)
    }

    /// `f` of the state now.
    fn snapshot<R>(&self, f: impl FnOnce(&Snapshot<'_>) -> R) -> R {
        let note = lock(&self.note);
        f(&Snapshot {
            label: &self.label,
            unit: self.unit,
            done: self.done.load(Ordering::Relaxed),
            total: self.total(),
            length: self.length,
            elapsed: self.started.elapsed(),
            note: &note,
        })
    }
}

/// A lock whose holder panicked still holds a usable value: a count or a note.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the display thread shows the state.
enum View {
    /// A terminal: `indicatif` redraws the bar in place; `shape` is the style it has.
    Bar {
        bar: ProgressBar,
        shape: Option<Shape>,
    },
    /// Anything else: a line now and then.
    Lines {
        out: Box<dyn Write + Send>,
        pacer: Pacer,
    },
}

/// Which bar a job gets: it changes once, when a count learns its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Timed,
    Counted,
    Open,
}

impl View {
    fn bar() -> View {
        View::Bar {
            bar: ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            shape: None,
        }
    }

    fn lines(out: Box<dyn Write + Send>) -> View {
        View::Lines {
            out,
            pacer: Pacer::default(),
        }
    }

    fn period(&self) -> Duration {
        match self {
            View::Bar { .. } => BAR_PERIOD,
            View::Lines { .. } => LINES_PERIOD,
        }
    }

    fn show(&mut self, shared: &Shared) {
        match self {
            View::Bar { bar, shape } => draw(bar, shape, shared),
            View::Lines { out, pacer } => shared.snapshot(|s| {
                if pacer.due(s.elapsed, s.fraction()) {
                    // A closed stderr must not stop the work it reports on.
                    let _ = writeln!(out, "{}", lines::line(s, false));
                }
            }),
        }
    }

    fn end(&mut self, shared: &Shared) {
        match self {
            View::Bar { bar, shape } => {
                draw(bar, shape, shared);
                // As it is: a repair that stopped short does not show a full bar.
                bar.abandon();
            }
            View::Lines { out, .. } => shared.snapshot(|s| {
                let _ = writeln!(out, "{}", lines::line(s, true));
            }),
        }
    }
}

/// Brings `bar` up to `shared`'s state and redraws it.
fn draw(bar: &ProgressBar, shape: &mut Option<Shape>, shared: &Shared) {
    let total = shared.total();
    let wanted = match (shared.length, total) {
        (Some(_), _) => Shape::Timed,
        (None, Some(_)) => Shape::Counted,
        (None, None) => Shape::Open,
    };
    if *shape != Some(wanted) {
        bar.set_style(style(wanted, shared));
        bar.set_prefix(shared.label.clone());
        *shape = Some(wanted);
    }
    match (shared.length, total) {
        // Milliseconds of the length: the bar fills with the time.
        (Some(length), _) => {
            let length = length.as_millis() as u64;
            bar.set_length(length);
            bar.set_position((shared.started.elapsed().as_millis() as u64).min(length));
        }
        (None, total) => {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(shared.done.load(Ordering::Relaxed));
        }
    }
    bar.set_message(lock(&shared.note).clone());
    bar.tick();
}

fn style(shape: Shape, shared: &Shared) -> ProgressStyle {
    let unit = shared.unit;
    let template = match shape {
        // The length as indicatif writes the time gone: `3s of 10s`.
        Shape::Timed => format!(
            "{{prefix}} [{{wide_bar}}] {{elapsed}} of {:#} {{msg}}",
            HumanDuration(shared.length.unwrap_or_default())
        ),
        Shape::Counted => format!(
            "{{prefix}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {unit} ({{percent}}%) \
             {{per_sec:0}} {{elapsed}} {{msg}}"
        ),
        Shape::Open => {
            format!(
                "{{spinner}} {{prefix}}: {{human_pos}} {unit}, {{per_sec:0}}, {{elapsed}} {{msg}}"
            )
        }
    };
    ProgressStyle::with_template(&template)
        .expect("the templates above are valid")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a [`View::Lines`] writes, read by the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(lock(&self.0).clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn counted(total: Option<u64>, out: &Captured) -> Progress {
        Progress::with_view(
            Shared::new("dlq replay".into(), "letters", None, total),
            View::lines(Box::new(out.clone())),
        )
    }

    #[test]
    fn work_that_ends_at_once_prints_its_last_line_only() {
        let out = Captured::default();
        let progress = counted(Some(4), &out);
        progress.inc(4);
        progress.finish();
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("dlq replay: done, 4/4 letters in "),
            "{lines:?}"
        );
    }

    #[test]
    fn running_work_prints_a_first_line_then_its_last() {
        let out = Captured::default();
        let progress = counted(None, &out);
        progress.inc_total(10);
        progress.inc(3);
        progress.note("3 skipped");
        std::thread::sleep(LINES_PERIOD * 2);
        progress.inc(7);
        drop(progress);
        let lines = out.lines();
        assert!(
            lines[0].starts_with("dlq replay: 3/10 letters (30%), "),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("; 3 skipped"), "{lines:?}");
        let last = lines.last().unwrap();
        assert!(
            last.starts_with("dlq replay: done, 10/10 letters in ") && lines.len() == 2,
            "{lines:?}"
        );
    }

    #[test]
    fn finishing_twice_prints_one_last_line() {
        let out = Captured::default();
        let progress = counted(Some(2), &out);
        progress.finish();
        progress.finish();
        drop(progress);
        assert_eq!(out.lines().len(), 1);
        assert!(out.lines()[0].starts_with("dlq replay: stopped at 0/2 letters"));
    }
}
