//! Broker-loss repair: finding what a stream no longer holds of what it acknowledged, wherever in
//! the stream, and putting it back from the outbox, which keeps published rows for
//! `EVENT_OUTBOX_RETENTION` (the repair horizon) with the stream and sequence each was stored at.
//!
//! - [`Relay::verify`] checks each stream the outbox recorded rows in (`check`): a missing or
//!   re-created stream, a lost head, holes (a lost or corrupted block file), a lost tail, other
//!   events at recorded sequences, sequences given to newer events, and copies of an event stored
//!   twice. A clean check reads no payload and makes a fixed number of broker calls per stream
//!   (`broker`); one that finds loss costs in proportion to what was lost. A failure to read
//!   one stream is reported in its [`StreamCheck`] and does not stop the others.
//! - [`Relay::repair`] (`put_back`) publishes the missing rows again, per stream in commit
//!   order, with their event ids as `Nats-Msg-Id` and the header [`REPAIRED_HEADER`] naming the
//!   sequence each had, through the relay's own sending; a key whose row cannot be put back holds
//!   back its later rows. It deletes the later copy of an event stored twice, and records rows
//!   the stream holds but the outbox never heard of (a PubAck lost before a crash).
//!
//! The relay's publishing to a stream waits while it is checked and repaired
//! ([`super::RelayStatus::pause_stream`]), so no newer row of it is stored before its repaired
//! ones, while the other streams go on. A consumer still sees a
//! repaired event after newer events of its key that the stream kept: a log cannot insert into
//! its past, so the header says which events came back.
//!
//! `tables` renders what `outbox verify` and `outbox repair` print. A relay
//! [`observed_by`](Relay::observed_by) an [`Observer`] tells it how a check or a repair goes,
//! for the commands' progress display; the service's own checks tell no one.

mod broker;
mod check;
mod put_back;
mod tables;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::Relay;
use super::status::StreamPause;
use crate::store::StoreError;
use crate::store::acknowledged::{self, Acknowledged};
pub use tables::{format_checks, format_repairs};

/// The header on an event put back by repair: the stream sequence it had before the broker lost
/// it. Consumers can tell a repaired event, which may come after newer events of its key.
pub const REPAIRED_HEADER: &str = "Repaired-From-Sequence";

/// What a stream no longer holds, or holds twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The server has no such stream.
    StreamMissing,
    /// The stream was created after rows were acknowledged by it (at this time).
    CreatedAfter(DateTime<Utc>),
    /// The stream begins after sequences recorded (its oldest messages were lost).
    HeadLost {
        /// The stream's first sequence.
        first_sequence: u64,
        /// Rows recorded below it, not yet old enough for the stream to drop.
        rows: usize,
    },
    /// Recorded sequences the stream reports deleted (a lost or corrupted block).
    Holes {
        /// Rows recorded there.
        rows: usize,
    },
    /// The stream ends before the highest sequence recorded.
    Truncated {
        /// The stream's last sequence.
        last_sequence: u64,
        /// The highest sequence recorded.
        recorded: u64,
    },
    /// The message at this recorded sequence is another event.
    OtherHistory {
        /// The sequence.
        sequence: u64,
    },
    /// The stream gave the sequences of these rows to newer events (it lost its tail, then
    /// stored on).
    Overwritten {
        /// How many rows.
        rows: usize,
    },
    /// Events the stream holds twice.
    Copies {
        /// How many second copies.
        count: usize,
    },
    /// Events the stream holds whose rows are still pending (their PubAck was lost).
    Unrecorded {
        /// How many.
        count: usize,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::StreamMissing => f.write_str("stream missing"),
            Finding::CreatedAfter(at) => write!(
                f,
                "stream created after its events were acknowledged ({})",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            Finding::HeadLost {
                first_sequence,
                rows,
            } => write!(f, "head lost: {rows} below first sequence {first_sequence}"),
            Finding::Holes { rows } => write!(f, "{rows} in deleted sequences"),
            Finding::Truncated {
                last_sequence,
                recorded,
            } => write!(
                f,
                "last sequence {last_sequence}, below the recorded {recorded}"
            ),
            Finding::OtherHistory { sequence } => {
                write!(f, "another event at recorded sequence {sequence}")
            }
            Finding::Overwritten { rows } => {
                write!(f, "{rows} sequences given to newer events")
            }
            Finding::Copies { count } => write!(f, "{count} events stored twice"),
            Finding::Unrecorded { count } => {
                write!(f, "{count} stored events not yet recorded")
            }
        }
    }
}

/// A second copy of an event in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The row.
    pub id: i64,
    /// The sequence kept: the first copy.
    pub keep: u64,
    /// The sequence of the copy to delete; `None` when the row's recorded sequence was given to
    /// another event and this copy is the only one.
    pub delete: Option<u64>,
}

/// What [`Relay::verify`] found in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCheck {
    /// The stream.
    pub stream: String,
    /// Rows acknowledged by it in the window.
    pub acknowledged: u64,
    /// Those it no longer holds, in commit order, with the sequence each had.
    pub missing: Vec<Acknowledged>,
    /// Events it holds twice.
    pub copies: Vec<Copy>,
    /// Pending rows it holds already: (row, sequence).
    pub stored: Vec<(i64, u64)>,
    /// Messages between recorded ones that are no event of this outbox.
    pub foreign: u64,
    /// What was found, in the order checked.
    pub findings: Vec<Finding>,
    /// Why the stream could not be checked, when it could not.
    pub error: Option<String>,
}

impl StreamCheck {
    fn new(stream: String) -> StreamCheck {
        StreamCheck {
            stream,
            acknowledged: 0,
            missing: Vec::new(),
            copies: Vec::new(),
            stored: Vec::new(),
            foreign: 0,
            findings: Vec::new(),
            error: None,
        }
    }

    /// Missing rows once each, in commit order.
    fn finish(&mut self) {
        self.missing.sort_by_key(|row| row.id);
        self.missing.dedup_by_key(|row| row.id);
    }

    /// Whether the stream holds everything once: nothing missing, no copy, no error.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.copies.is_empty() && self.error.is_none()
    }

    /// Whether the check found rows missing or copies (a stream not checked found nothing).
    pub fn found_loss(&self) -> bool {
        !self.missing.is_empty() || !self.copies.is_empty()
    }

    /// The findings as one line.
    pub fn findings_text(&self) -> String {
        let mut parts: Vec<String> = self.findings.iter().map(ToString::to_string).collect();
        if let Some(error) = &self.error {
            parts.push(format!("not checked: {error}"));
        }
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// What [`Relay::repair`] did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRepair {
    /// The stream.
    pub stream: String,
    /// Why it was repaired.
    pub findings: Vec<Finding>,
    /// Rows it no longer held.
    pub missing: usize,
    /// Of those, rows stored again.
    pub republished: usize,
    /// Rows the stream answered as duplicates: it still held them.
    pub duplicates: usize,
    /// Rows that could not be published again (a permanent failure, or a key held back by one;
    /// logged).
    pub failed: usize,
    /// Second copies deleted.
    pub copies_deleted: usize,
    /// Pending rows found stored and recorded.
    pub recorded: usize,
    /// Why the stream could not be checked or repaired, when it could not.
    pub error: Option<String>,
}

/// Told how [`Relay::verify`] and [`Relay::repair`] go, to show their progress: streams checked
/// of how many, and what a repair put back of what the checks found. Called from the check's and
/// the repair's tasks, so it is quick and does not block.
pub trait Observer: Send + Sync {
    /// `count` streams are to be checked.
    fn streams(&self, count: usize);
    /// A stream was checked (or could not be): what it found.
    fn checked(&self, check: &StreamCheck);
    /// Of what `stream`'s check found to put right (its missing events, and its copies to
    /// delete), `done` are dealt with so far: published again, found held, given up, or deleted.
    /// Told after each publish batch and when the stream's repair ends.
    fn putting_back(&self, stream: &str, done: usize);
}

/// Why a check or a repair stopped.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Reading or writing the outbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading a stream failed.
    #[error("reading stream {stream}: {error}")]
    Broker {
        /// The stream.
        stream: String,
        /// What failed.
        error: String,
    },
    /// Publishing into a stream failed for now (the broker is away, the stream is being
    /// re-created); what was published so far is recorded, the rest is found missing again.
    #[error("republishing into {stream} failed for now: {error}")]
    Transient {
        /// The stream.
        stream: String,
        /// What failed.
        error: String,
    },
}

/// How much of the stream past the recorded rows a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Not past the highest recorded sequence: the relay may be publishing there right now.
    /// Each stream gets [`LIVE_PATIENCE`] to answer: the relay's publishing waits for the check.
    Skip,
    /// Past it too, for events stored whose PubAck never came back: only while no relay
    /// publishes (at start-up, or `outbox verify|repair` with the service stopped). Each
    /// stream gets the client's whole request timeout.
    Read,
}

impl Tail {
    /// How long the check waits for a stream's state, `None` for the client's request timeout.
    fn patience(self) -> Option<Duration> {
        match self {
            Tail::Skip => Some(LIVE_PATIENCE),
            Tail::Read => None,
        }
    }
}

/// How long a check made while the relay runs waits for a stream to tell its state. A stream
/// without a leader (its node down, its replicas short of a quorum) does not answer at all, and
/// the relay's publishing waits for the check: without a bound, each such stream held every
/// other stream's events back for the client's whole request timeout. A stream that does not
/// answer in time is reported not checked; when it elects a leader again, the broker's advisory
/// brings the next check.
pub const LIVE_PATIENCE: Duration = Duration::from_secs(2);

/// How many streams a check reads at once: every stream of the table.
const CHECKS_AT_ONCE: usize = 16;

impl Relay {
    /// This relay, telling `observer` how its checks and repairs go.
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> Relay {
        self.observer = Some(observer);
        self
    }

    /// Tells the observer, when there is one.
    fn observe(&self, tell: impl FnOnce(&dyn Observer)) {
        if let Some(observer) = &self.observer {
            tell(observer.as_ref());
        }
    }

    /// Checks every stream that acknowledged rows at or after `since` (all kept rows when
    /// `None`); see the module's documentation. Changes nothing. A stream that cannot be read
    /// is reported with its error; the outbox that cannot be read fails the whole check.
    pub async fn verify(
        &self,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<Vec<StreamCheck>, StoreError> {
        self.verify_streams(None, since, tail).await
    }

    /// [`Relay::verify`] of the streams in `only` (every stream when `None`) that the outbox
    /// recorded rows in. The streams are checked at once, so streams that do not answer wait
    /// out their patience together rather than one after another; the relay's publishing to
    /// each waits for its check.
    pub async fn verify_streams(
        &self,
        only: Option<&BTreeSet<String>>,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<Vec<StreamCheck>, StoreError> {
        let mut names = self.store.read(acknowledged::streams).await?;
        if let Some(only) = only {
            names.retain(|name| only.contains(name));
        }
        self.observe(|o| o.streams(names.len()));
        let results: Vec<_> = futures::stream::iter(names)
            .map(|name| async move {
                let _pause = self.status.pause_stream(&name).await;
                self.check_or_report(name, since, tail).await
            })
            .buffered(CHECKS_AT_ONCE)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Publishes again what [`Relay::verify`] finds missing, per stream in commit order, deletes
    /// second copies and records events stored unrecorded. Returns the streams it acted on, or
    /// could not check. A stream that fails does not stop the others. Each stream is checked and
    /// repaired while the relay's publishing to it alone is paused, the streams at once.
    pub async fn repair(
        &self,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<Vec<StreamRepair>, RepairError> {
        self.repair_held(HashMap::new(), since, tail).await
    }

    /// Pauses the relay's publishing to every stream the outbox recorded rows in, for
    /// [`Relay::repair_held`]: taken before the relay starts, so that no stream stores a newer
    /// event before its check (which reads past the recorded rows) and the events it puts back.
    pub async fn pause_recorded_streams(&self) -> Result<HashMap<String, StreamPause>, StoreError> {
        let mut held = HashMap::new();
        for name in self.store.read(acknowledged::streams).await? {
            let pause = self.status.pause_stream(&name).await;
            held.insert(name, pause);
        }
        Ok(held)
    }

    /// [`Relay::repair`] of streams some of which the caller paused already (`held`); each
    /// pause ends with its stream's repair, so the relay publishes to a stream as soon as that
    /// stream is back, whatever is left of the others'.
    pub async fn repair_held(
        &self,
        mut held: HashMap<String, StreamPause>,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<Vec<StreamRepair>, RepairError> {
        let names = self.store.read(acknowledged::streams).await?;
        self.observe(|o| o.streams(names.len()));
        let streams: Vec<(String, Option<StreamPause>)> = names
            .into_iter()
            .map(|name| {
                let pause = held.remove(&name);
                (name, pause)
            })
            .collect();
        // Streams with nothing recorded any more have nothing to wait for.
        drop(held);
        let results: Vec<_> = futures::stream::iter(streams)
            .map(|(name, pause)| async move {
                let _pause = match pause {
                    Some(pause) => pause,
                    None => self.status.pause_stream(&name).await,
                };
                self.repair_stream(name, since, tail).await
            })
            .buffered(CHECKS_AT_ONCE)
            .collect()
            .await;
        let mut repairs = Vec::new();
        let mut transient = None;
        for result in results {
            let (repair, failed_for_now) = result?;
            if let Some(error) = failed_for_now {
                transient.get_or_insert(error);
            }
            repairs.extend(repair);
        }
        // The broker went away meanwhile: the caller tries again (what was put back is recorded).
        if let Some(error) = transient {
            return Err(RepairError::Transient {
                stream: repairs
                    .iter()
                    .find(|r| r.error.is_some())
                    .map(|r| r.stream.clone())
                    .unwrap_or_default(),
                error,
            });
        }
        Ok(repairs)
    }

    /// Checks the stream `name` and puts back what it lost: what it did (`None` when the stream
    /// holds everything once), and the error when publishing failed for now.
    async fn repair_stream(
        &self,
        name: String,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<(Option<StreamRepair>, Option<String>), RepairError> {
        let check = self.check_or_report(name, since, tail).await?;
        if check.is_clean() && check.stored.is_empty() {
            let failed = check
                .error
                .map(|error| StreamRepair::failed(check.stream, check.findings, error));
            return Ok((failed, None));
        }
        tracing::warn!(
            stream = %check.stream,
            missing = check.missing.len(),
            copies = check.copies.len(),
            findings = %check.findings_text(),
            "a stream does not hold what it acknowledged once; repairing it"
        );
        let (stream, findings) = (check.stream.clone(), check.findings.clone());
        let mut transient = None;
        let repair = match self.put_back(check).await {
            Ok(repair) => repair,
            Err(RepairError::Store(error)) => return Err(RepairError::Store(error)),
            Err(error) => {
                if matches!(error, RepairError::Transient { .. }) {
                    transient = Some(error.to_string());
                }
                tracing::warn!(%stream, %error, "repairing a stream failed; the others go on");
                StreamRepair::failed(stream, findings, error.to_string())
            }
        };
        self.observe(|o| o.putting_back(&repair.stream, repair.handled()));
        // A repair that failed was already logged with its error: "repaired" would say the
        // opposite of what happened.
        if repair.error.is_none() {
            tracing::info!(
                stream = %repair.stream,
                republished = repair.republished,
                duplicates = repair.duplicates,
                failed = repair.failed,
                copies_deleted = repair.copies_deleted,
                recorded = repair.recorded,
                "stream repaired"
            );
        }
        Ok((Some(repair), transient))
    }

    /// The check of the stream `name`; a stream that cannot be read is reported with its error,
    /// the outbox that cannot be read fails.
    async fn check_or_report(
        &self,
        name: String,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<StreamCheck, StoreError> {
        let check = match self.check(name.clone(), since, tail).await {
            Ok(check) => check,
            Err(RepairError::Store(error)) => return Err(error),
            Err(error) => {
                tracing::warn!(stream = %name, %error, "checking a stream failed; the others are checked");
                let mut check = StreamCheck::new(name);
                check.error = Some(error.to_string());
                check
            }
        };
        log_check(&check);
        self.observe(|o| o.checked(&check));
        Ok(check)
    }
}

/// Says what a check found wrong, when it found something.
fn log_check(check: &StreamCheck) {
    if !check.missing.is_empty() || !check.copies.is_empty() {
        tracing::warn!(
            stream = %check.stream,
            missing = check.missing.len(),
            copies = check.copies.len(),
            findings = %check.findings_text(),
            "verify: the stream does not hold what it acknowledged once"
        );
    }
}

impl StreamRepair {
    fn failed(stream: String, findings: Vec<Finding>, error: String) -> StreamRepair {
        StreamRepair {
            stream,
            findings,
            missing: 0,
            republished: 0,
            duplicates: 0,
            failed: 0,
            copies_deleted: 0,
            recorded: 0,
            error: Some(error),
        }
    }

    /// What the repair dealt with of what its check found: rows published again, found held or
    /// given up, and copies deleted.
    fn handled(&self) -> usize {
        self.republished + self.duplicates + self.failed + self.copies_deleted
    }
}
