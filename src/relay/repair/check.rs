//! One stream's check: what the outbox recorded in the window against what the stream holds.
//!
//! The rows recorded in the window lie between a low and a high sequence. The stream tells its
//! first and last sequence and the sequences it no longer holds in between (its deleted list:
//! a lost or corrupted block shows up there, Jepsen's NATS 2.12.1 finding). So, with no payload
//! read and a fixed number of broker calls:
//! - rows below the stream's first sequence are a lost head (unless older than its `max_age`,
//!   which it meant to drop), rows past its last a lost tail, rows at deleted sequences holes;
//! - the messages the stream holds between low and high are counted from its state, the rows
//!   recorded there from the index: when the two differ, the stream holds messages the outbox
//!   did not record there (a copy of an event stored twice, an event stored whose PubAck was
//!   lost, or another publisher's), and only then are the unrecorded sequences read;
//! - the ids at the lowest and highest sequence are read: another event there means another
//!   history (a stream re-created and refilled), found by bisection from either end;
//! - rows whose sequence the stream gave to a newer event (the relay saw it in a PubAck) are
//!   missing too.
//!
//! With `tail` (the relay is not publishing: at start-up, or `outbox verify`), messages past the
//! highest recorded sequence are read too: an event stored whose PubAck never came back is found
//! there instead of being sent again, and a copy stored after the duplicate window.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::broker::{self, StreamState};
use super::{Copy, Finding, RepairError, StreamCheck, Tail};
use crate::relay::Relay;
use crate::store::acknowledged::{self, Acknowledged};

/// The most messages past the highest recorded sequence read in one check: more than the
/// relay ever has in flight for a stream (one batch of at most 1,000).
const TAIL_LIMIT: u64 = 10_000;

impl Relay {
    /// Checks the stream `name`; see the module's documentation.
    pub(super) async fn check(
        &self,
        name: String,
        since: Option<DateTime<Utc>>,
        tail: Tail,
    ) -> Result<StreamCheck, RepairError> {
        let stream_name = name.clone();
        let (span, lost, pending) = self
            .store
            .read(move |conn| {
                Ok::<_, crate::store::StoreError>((
                    acknowledged::span(conn, &stream_name, since)?,
                    acknowledged::lost(conn, &stream_name)?,
                    acknowledged::any_pending(conn)?,
                ))
            })
            .await?;
        let mut check = StreamCheck::new(name.clone());
        check.acknowledged = span.as_ref().map_or(0, |s| s.rows) + lost.len() as u64;
        if !lost.is_empty() {
            check
                .findings
                .push(Finding::Overwritten { rows: lost.len() });
            check.missing.extend(lost);
        }
        let Some(state) = broker::state(&self.js, &name, tail.patience()).await? else {
            let rows = self
                .store
                .read(move |conn| acknowledged::of_stream(conn, &name, since))
                .await?;
            check.findings.insert(0, Finding::StreamMissing);
            check.missing.extend(rows);
            check.finish();
            return Ok(check);
        };
        let mut high = 0;
        let recorded = span.is_some();
        if let Some(span) = span {
            high = span.high.sequence;
            self.check_span(&state, &span, &mut check).await?;
        }
        // A stream none of whose rows is kept any more (an idle shop past its retention) holds
        // nothing of this outbox's past its start, unless a row is pending.
        if tail == Tail::Read && (recorded || pending) && state.last > high {
            let from = (high + 1)
                .max(state.first)
                .max(state.last.saturating_sub(TAIL_LIMIT));
            let unrecorded: Vec<u64> = (from..=state.last).filter(|s| state.holds(*s)).collect();
            self.classify(&state, &unrecorded, &mut check).await?;
        }
        check.finish();
        Ok(check)
    }

    /// The checks of the window's rows; see the module's documentation.
    async fn check_span(
        &self,
        state: &StreamState,
        span: &acknowledged::Span,
        check: &mut StreamCheck,
    ) -> Result<(), RepairError> {
        let (low, high) = (span.low.sequence, span.high.sequence);
        let expired =
            |row: &Acknowledged| state.expires_before.is_some_and(|t| row.published_at < t);
        if state.created > span.low.published_at {
            let (name, created) = (check.stream.clone(), state.created);
            let before = self
                .store
                .read(move |conn| acknowledged::published_before(conn, &name, low, created))
                .await?;
            if !before.is_empty() {
                check.findings.push(Finding::CreatedAfter(created));
                check.missing.extend(before);
            }
        }
        let (mut below, mut above) = (0, 0);
        if low < state.first {
            let rows = self.rows_in(&check.stream, low, state.first - 1).await?;
            below = rows.len() as u64;
            let lost: Vec<_> = rows.into_iter().filter(|r| !expired(r)).collect();
            if !lost.is_empty() {
                check.findings.push(Finding::HeadLost {
                    first_sequence: state.first,
                    rows: lost.len(),
                });
                check.missing.extend(lost);
            }
        }
        if high > state.last {
            let rows = self
                .rows_in(&check.stream, low.max(state.last + 1), high)
                .await?;
            above = rows.len() as u64;
            check.findings.push(Finding::Truncated {
                last_sequence: state.last,
                recorded: high,
            });
            check.missing.extend(rows);
        }
        let (from, to) = (low.max(state.first), high.min(state.last));
        if from > to {
            return Ok(());
        }
        let mut in_holes = 0;
        for range in &state.deleted {
            let (start, end) = ((*range.start()).max(from), (*range.end()).min(to));
            if start <= end {
                let rows = self.rows_in(&check.stream, start, end).await?;
                in_holes += rows.len() as u64;
                check
                    .missing
                    .extend(rows.into_iter().filter(|r| !expired(r)));
            }
        }
        if in_holes > 0 {
            check.findings.push(Finding::Holes {
                rows: in_holes as usize,
            });
        }
        let held = (to - from + 1) - state.deleted_in(from, to);
        let recorded_held = span.rows.saturating_sub(below + above + in_holes);
        if held != recorded_held {
            self.unrecorded_between(state, from, to, check).await?;
        }
        self.other_history(state, span, from, to, check).await
    }

    /// The stream holds more (or fewer) messages between `from` and `to` than rows are recorded
    /// there: reads the recorded sequences (the index only), then the messages at sequences no
    /// row is recorded at, and the rows recorded twice at one sequence.
    async fn unrecorded_between(
        &self,
        state: &StreamState,
        from: u64,
        to: u64,
        check: &mut StreamCheck,
    ) -> Result<(), RepairError> {
        let name = check.stream.clone();
        let recorded = self
            .store
            .read(move |conn| acknowledged::sequences(conn, &name, from, to))
            .await?;
        let mut twice = BTreeSet::new();
        for pair in recorded.windows(2) {
            if pair[0] == pair[1] {
                twice.insert(pair[0]);
            }
        }
        let recorded: BTreeSet<u64> = recorded.into_iter().collect();
        let unrecorded: Vec<u64> = (from..=to)
            .filter(|s| state.holds(*s) && !recorded.contains(s))
            .collect();
        self.classify(state, &unrecorded, check).await?;
        for sequence in twice {
            let id = broker::message_id(&state.stream, sequence).await?;
            let rows = self.rows_in(&check.stream, sequence, sequence).await?;
            check.missing.extend(
                rows.into_iter()
                    .filter(|row| id.as_deref() != Some(row.event_id.as_str())),
            );
            check.findings.push(Finding::OtherHistory { sequence });
        }
        Ok(())
    }

    /// Reads the messages at `sequences`, which no row is recorded at, and sorts them: a copy of
    /// an event recorded elsewhere, an event whose row is still pending, or another publisher's.
    async fn classify(
        &self,
        state: &StreamState,
        sequences: &[u64],
        check: &mut StreamCheck,
    ) -> Result<(), RepairError> {
        let mut copies = 0;
        let mut stored = 0;
        for &sequence in sequences {
            let Some(id) = broker::message_id(&state.stream, sequence).await? else {
                continue;
            };
            let row = self
                .store
                .read(move |conn| acknowledged::by_event_id(conn, &id))
                .await?;
            match row {
                Some(row) if row.status == "pending" => {
                    stored += 1;
                    check.stored.push((row.id, sequence));
                }
                // Recorded there since the stream's rows were read (a batch in flight when the
                // check began): the only copy, not a second one.
                Some(row)
                    if row.status == "published"
                        && row.stream.as_deref() == Some(check.stream.as_str())
                        && row.sequence == Some(sequence) => {}
                Some(row)
                    if row.status == "published"
                        && row.stream.as_deref() == Some(check.stream.as_str()) =>
                {
                    copies += 1;
                    let recorded = row.sequence;
                    // The first copy stays: it is where the event's key had it in order.
                    check.copies.push(match recorded {
                        Some(at) if at < sequence => Copy {
                            id: row.id,
                            keep: at,
                            delete: Some(sequence),
                        },
                        Some(at) => Copy {
                            id: row.id,
                            keep: sequence,
                            delete: Some(at),
                        },
                        // Its sequence was given away: this copy is where it is now.
                        None => Copy {
                            id: row.id,
                            keep: sequence,
                            delete: None,
                        },
                    });
                }
                _ => check.foreign += 1,
            }
        }
        if copies > 0 {
            check.findings.push(Finding::Copies { count: copies });
        }
        if stored > 0 {
            check.findings.push(Finding::Unrecorded { count: stored });
        }
        Ok(())
    }

    /// Reads the ids at the lowest and highest recorded sequence the stream holds; where one is
    /// another event's, the rows whose sequences hold other events are found by bisection from
    /// that end (a stream re-created and refilled differs in a prefix or a suffix).
    async fn other_history(
        &self,
        state: &StreamState,
        span: &acknowledged::Span,
        from: u64,
        to: u64,
        check: &mut StreamCheck,
    ) -> Result<(), RepairError> {
        let differs = |row: &Acknowledged| {
            let (stream, row) = (&state.stream, row.clone());
            async move {
                Ok::<_, RepairError>(
                    broker::message_id(stream, row.sequence)
                        .await?
                        .is_some_and(|id| id != row.event_id),
                )
            }
        };
        let low_differs = state.holds(span.low.sequence) && differs(&span.low).await?;
        let high_differs = state.holds(span.high.sequence) && differs(&span.high).await?;
        if !low_differs && !high_differs {
            return Ok(());
        }
        let missing: BTreeSet<i64> = check.missing.iter().map(|r| r.id).collect();
        let mut rows: Vec<Acknowledged> = self
            .rows_in(&check.stream, from, to)
            .await?
            .into_iter()
            .filter(|r| state.holds(r.sequence) && !missing.contains(&r.id))
            .collect();
        rows.sort_by_key(|r| r.sequence);
        let (mut start, mut end) = (0, rows.len());
        if high_differs {
            // The first that differs: what differs is a suffix.
            let (mut lo, mut hi) = (0, rows.len());
            while lo < hi {
                let middle = lo + (hi - lo) / 2;
                if differs(&rows[middle]).await? {
                    hi = middle;
                } else {
                    lo = middle + 1;
                }
            }
            end = lo;
        }
        if low_differs {
            // The first that is the same: what differs is a prefix.
            let (mut lo, mut hi) = (0, end);
            while lo < hi {
                let middle = lo + (hi - lo) / 2;
                if differs(&rows[middle]).await? {
                    lo = middle + 1;
                } else {
                    hi = middle;
                }
            }
            start = lo;
        }
        let sequence = rows
            .get(if low_differs { 0 } else { end })
            .map_or(span.high.sequence, |r| r.sequence);
        check.findings.push(Finding::OtherHistory { sequence });
        check.missing.extend(rows.drain(end..));
        check.missing.extend(rows.drain(..start));
        Ok(())
    }

    async fn rows_in(
        &self,
        stream: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Acknowledged>, RepairError> {
        let stream = stream.to_owned();
        Ok(self
            .store
            .read(move |conn| acknowledged::in_range(conn, &stream, from, to))
            .await?)
    }
}
