//! Sending one lane's batch: as one atomic batch, or row by row when it must.
//!
//! An atomic batch is stored whole or not at all, so its outcome is one of three:
//! - stored: every row gets its own sequence, computed from the commit's PubAck;
//! - refused because of what it holds (a duplicate id, err_code 10201, or a permanent error):
//!   its rows are sent one by one, so duplicates are acknowledged as duplicates and a poison row
//!   is isolated and alone takes the retry/dead path;
//! - one row cannot be sent as it is (too large for the server with its headers): nothing was
//!   sent; that row alone takes the retry/dead path and the others go back to the lane;
//! - failed transiently, or no answer: nothing is recorded against the rows; the lane backs off
//!   and sends the same rows again with the same `Nats-Msg-Id`s (if the first commit did land,
//!   the second meets 10201 and falls back, and nothing is stored twice).
//!
//! Row by row, each key's rows go one after another and stop at the key's first failure, while
//! up to the publish window of keys go at once.
//!
//! Before any of that, the stream's sent mark is raised to cover the rows ([`marks`]), and rows
//! whose first try ended without an answer long enough ago that the stream's duplicate window
//! may be over (or that an earlier relay may have sent that long ago: at or below the mark it
//! left) are looked up in the stream ([`stored`]): those it holds are recorded at the sequence
//! found, as duplicates, and are not sent again.

mod marks;
mod stored;

pub(super) use marks::SentMarks;

use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Relay;
use super::lanes::{Batch, Mode, Tries};
use crate::bus::{
    BatchError, OutboxMessage, PermanentCause, PublishError, Published, TransientCause, publish,
    publish_batch,
};
use crate::store::outbox::Due;
use crate::trace_context;

/// Rows tried, each with its outcome.
type Tried = Vec<(Due, Result<Published, PublishError>)>;

/// What became of a batch.
pub(super) struct Sent {
    /// The stream.
    pub stream: String,
    /// The rows tried, each with its outcome.
    pub results: Tried,
    /// Rows that were not stored and go back to the lane (in commit order); rows of keys that
    /// failed permanently among them are dropped by the lane.
    pub unsent: Vec<Due>,
    /// A failure said nothing about the rows: the lane backs off.
    pub transient: bool,
    /// The stream refused atomic batches.
    pub not_atomic: bool,
    /// The stream took the atomic batch, or judged what it holds: it takes batches.
    pub atomic: bool,
    /// The batch was refused whole and its rows were sent one by one.
    pub fell_back: bool,
}

impl Relay {
    /// Sends `batch` and reports what became of each row.
    pub(super) async fn send(&self, batch: Batch) -> Sent {
        self.send_again(batch, None).await
    }

    /// Sends `batch`, whose earlier tries are `tries`: rows that may be stored beyond the
    /// duplicate window are looked up first (see the module's documentation).
    pub(super) async fn send_again(&self, batch: Batch, tries: Option<Tries>) -> Sent {
        let span = publish_span(&batch);
        self.send_in_span(batch, tries).instrument(span).await
    }

    async fn send_in_span(&self, batch: Batch, tries: Option<Tries>) -> Sent {
        let Batch { stream, rows, mode } = batch;
        let mut sent = Sent {
            stream,
            results: Vec::new(),
            unsent: Vec::new(),
            transient: false,
            not_atomic: false,
            atomic: false,
            fell_back: false,
        };
        // Noted before anything goes out, so that a later relay knows what this one may have
        // sent (see `marks`).
        let last_id = rows.iter().map(|row| row.id).max().unwrap_or(0);
        if let Err(error) = self
            .sent_marks
            .cover(&self.store, &sent.stream, last_id)
            .await
        {
            let error =
                PublishError::Transient(TransientCause::OutboxUnwritable(error.to_string()));
            sent.transient = true;
            sent.results.push((rows[0].clone(), Err(error)));
            sent.unsent = rows;
            return sent;
        }
        let found = match tries {
            Some(tries) => self.drop_stored(rows, &tries, &mut sent).await,
            None => Ok(rows),
        };
        let rows = match found {
            Ok(rows) if rows.is_empty() => return sent,
            Ok(rows) => rows,
            Err((rows, error)) => {
                sent.transient = true;
                sent.results.push((rows[0].clone(), Err(error)));
                sent.unsent = rows;
                return sent;
            }
        };
        let rows = if mode == Mode::Batches {
            match self.send_atomic(&rows).await {
                Ok(acks) => {
                    sent.atomic = true;
                    sent.results
                        .extend(rows.into_iter().zip(acks.into_iter().map(Ok)));
                    return sent;
                }
                Err(BatchError::Publish(error)) if error.is_transient() => {
                    sent.transient = true;
                    sent.results.push((rows[0].clone(), Err(error)));
                    sent.unsent = rows;
                    return sent;
                }
                Err(BatchError::Message { index, error }) => {
                    // That row alone fails (its key stops); the others go back to the lane and
                    // out again as a batch without it.
                    let mut rows = rows;
                    let row = rows.remove(index);
                    sent.results.push((row, Err(error)));
                    sent.unsent = rows;
                    return sent;
                }
                Err(BatchError::NotAtomic(name)) => {
                    tracing::warn!(stream = %name, "the stream refuses atomic batches; publishing its events one by one");
                    sent.not_atomic = true;
                    rows
                }
                Err(error) => {
                    sent.atomic = matches!(error, BatchError::Duplicate);
                    tracing::debug!(stream = %sent.stream, rows = rows.len(), %error, "batch refused; publishing its rows one by one");
                    sent.fell_back = true;
                    rows
                }
            }
        } else {
            rows
        };
        self.send_one_by_one(rows, &mut sent).await;
        sent
    }

    /// Looks up the rows that may be stored beyond the duplicate window (see the module's
    /// documentation); those found go into `sent` as acknowledged duplicates, the others are
    /// returned to be sent. A failed lookup gives all rows back with the (transient) error.
    async fn drop_stored(
        &self,
        rows: Vec<Due>,
        tries: &Tries,
        sent: &mut Sent,
    ) -> Result<Vec<Due>, (Vec<Due>, PublishError)> {
        // Messages are stored no earlier than the first try; half the window leaves room for
        // clocks and for the time a try takes.
        let horizon = self.config.duplicate_window / 2;
        let (now, wall) = (Instant::now(), Utc::now());
        let earlier = match self.sent_marks.earlier(&self.store, &sent.stream).await {
            Ok(earlier) => earlier,
            Err(error) => {
                let error =
                    PublishError::Transient(TransientCause::OutboxUnwritable(error.to_string()));
                return Err((rows, error));
            }
        };
        let doubtful: Vec<&Due> = rows
            .iter()
            .zip(&tries.first)
            .filter(|(row, tried)| {
                let tried_long_ago = tried.is_some_and(|at| now.duration_since(at) >= horizon);
                // An earlier relay may have sent it (it handed out rows up to `earlier`); even
                // when this one tried it lately too, as that try may have ended before reaching
                // the broker. A backlog above the mark was never sent: no look-up.
                let maybe_sent_before = row.id <= earlier
                    && row.created_at < tries.since
                    && (wall - row.created_at).to_std().unwrap_or_default() >= horizon;
                tried_long_ago || maybe_sent_before
            })
            .map(|(row, _)| row)
            .collect();
        if doubtful.is_empty() {
            return Ok(rows);
        }
        let found = match stored::find(
            &self.js,
            &sent.stream,
            &doubtful,
            self.config.ack_timeout,
            self.config.window,
        )
        .await
        {
            Ok(found) => found,
            Err(error) => return Err((rows, error)),
        };
        if !found.is_empty() {
            tracing::info!(
                stream = %sent.stream,
                rows = found.len(),
                "rows sent earlier than the duplicate window are stored already; recorded, not sent again"
            );
        }
        let mut rest = Vec::with_capacity(rows.len());
        for row in rows {
            match found.get(&row.id) {
                Some(sequence) => {
                    let ack = Published {
                        stream: sent.stream.clone(),
                        sequence: *sequence,
                        duplicate: true,
                    };
                    sent.results.push((row, Ok(ack)));
                }
                None => rest.push(row),
            }
        }
        Ok(rest)
    }

    /// One atomic batch; the acks of its rows in order.
    async fn send_atomic(&self, rows: &[Due]) -> Result<Vec<Published>, BatchError> {
        let messages: Vec<OutboxMessage> = rows.iter().map(message).collect();
        let ack = publish_batch(&self.js.client(), &messages, self.config.ack_timeout)
            .await
            .map_err(|error| match error {
                BatchError::Publish(e) => BatchError::Publish(self.heal_missing(&rows[0].topic, e)),
                other => other,
            })?;
        Ok((0..rows.len())
            .map(|index| Published {
                stream: ack.stream.clone(),
                sequence: ack.sequence(index),
                duplicate: false,
            })
            .collect())
    }

    /// Row by row: per key in commit order, stopping at the key's first failure; keys at once.
    async fn send_one_by_one(&self, rows: Vec<Due>, sent: &mut Sent) {
        let mut chains: Vec<Vec<Due>> = Vec::new();
        let mut chain_of = std::collections::HashMap::new();
        for row in rows {
            let at = *chain_of.entry(row.key.clone()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[at].push(row);
        }
        let window = self.config.window.max(1);
        let outcomes: Vec<(Tried, Vec<Due>)> = futures::stream::iter(chains)
            .map(|chain| self.send_chain(chain))
            .buffer_unordered(window)
            .collect()
            .await;
        for (results, unsent) in outcomes {
            sent.transient |= results
                .iter()
                .any(|(_, result)| result.as_ref().is_err_and(PublishError::is_transient));
            sent.results.extend(results);
            sent.unsent.extend(unsent);
        }
        sent.unsent.sort_by_key(|row| row.id);
    }

    /// One key's rows in order, up to the first failure; a transiently failed row is unsent too.
    async fn send_chain(&self, chain: Vec<Due>) -> (Tried, Vec<Due>) {
        let mut results = Vec::with_capacity(chain.len());
        let mut rows = chain.into_iter();
        for row in rows.by_ref() {
            let result = publish(&self.js, &message(&row), self.config.ack_timeout)
                .await
                .map_err(|e| self.heal_missing(&row.topic, e));
            match result {
                Ok(ack) => results.push((row, Ok(ack))),
                Err(error) => {
                    let mut unsent = Vec::new();
                    if error.is_transient() {
                        unsent.push(row.clone());
                    }
                    results.push((row, Err(error)));
                    unsent.extend(rows);
                    return (results, unsent);
                }
            }
        }
        (results, Vec::new())
    }

    /// A topic of the table whose stream is missing (deleted, or a broker that lost its store) is
    /// not the row's fault: the failure becomes transient and the streams are reconciled.
    fn heal_missing(&self, topic: &str, error: PublishError) -> PublishError {
        match error {
            PublishError::Permanent(PermanentCause::NoStream(subject))
                if self.config.table_topics.contains(topic) =>
            {
                self.status.request_heal();
                PublishError::Transient(TransientCause::StreamMissing(subject))
            }
            other => other,
        }
    }
}

/// The message of an outbox row.
/// The span of one batch's publication, the stream and its event count as fields, linked to the
/// span each row was written in (its `traceparent`): a batch mixes the events of many requests and
/// a span has one parent, so it is a root with links, as OpenTelemetry's messaging conventions
/// have a batch publish. The links are made only when spans are exported.
fn publish_span(batch: &Batch) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "publish",
        stream = %batch.stream,
        events = batch.rows.len()
    );
    if trace_context::traceparent_of(&span).is_some() {
        for row in &batch.rows {
            let written_in = row
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
                .and_then(|(_, value)| trace_context::span_context(value));
            if let Some(context) = written_in {
                span.add_link(context);
            }
        }
    }
    span
}

fn message(row: &Due) -> OutboxMessage {
    OutboxMessage {
        topic: row.topic.clone(),
        key: row.key.clone(),
        payload: row.payload.clone().into(),
        headers: row.headers.clone(),
    }
}
