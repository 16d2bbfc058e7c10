//! Broker-loss repair: finding streams that no longer hold what they acknowledged, and publishing
//! those events again from the outbox, which keeps published rows for `EVENT_OUTBOX_RETENTION`
//! (the repair horizon) with the stream and sequence each was stored at.
//!
//! [`Relay::verify`] checks each stream once, against a summary of its rows
//! ([`acknowledged::summaries`]): the stream is missing; it was created after its first row there
//! was acknowledged; its last sequence is below the highest one recorded; or the message at that
//! sequence carries another `Nats-Msg-Id`. Only a stream that fails this is looked at row by
//! row: rows acknowledged before the stream was created, or at a sequence past its end, are
//! missing; of the others (a stream's history is a prefix of what was written to it, so what
//! differs is a suffix) the first whose sequence holds another event is found by bisection, and
//! it and every later one are missing. Rows the stream dropped by its own limits (a sequence
//! below its first, or deleted, or acknowledged longer ago than its `max_age`) are not missing:
//! the stream meant to drop them.
//!
//! [`Relay::repair`] publishes the missing rows again, per stream in commit order, with their
//! event ids as `Nats-Msg-Id`, through the relay's own sending (`Relay::send`: atomic batches,
//! row by row when it must), and records the new sequences. Rows the stream still holds within
//! its duplicate window are acknowledged as duplicates and change nothing. The caller holds the
//! relay's publishing meanwhile ([`super::RelayStatus::pause_publishing`]), so no newer row of a
//! stream is stored before its repaired ones, and per key the repaired stream is in commit
//! order too.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use chrono::{DateTime, Utc};

use super::Relay;
use super::lanes::{Batch, Mode};
use crate::bus::MSG_ID_HEADER;
use crate::store::acknowledged::{self, Acknowledged, StreamSummary};
use crate::store::{StoreError, outbox};
use crate::table::{Column, Table};

/// Why a stream no longer holds what it acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The server has no such stream.
    StreamMissing,
    /// The stream was created after rows were acknowledged by it (at this time).
    CreatedAfter(DateTime<Utc>),
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
        }
    }
}

/// What [`Relay::verify`] found in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCheck {
    /// The stream.
    pub stream: String,
    /// Rows acknowledged by it in the window.
    pub acknowledged: u64,
    /// The ids of those it no longer holds, in commit order.
    pub missing: Vec<i64>,
    /// Why, when it does not hold them all.
    pub finding: Option<Finding>,
}

/// What [`Relay::repair`] did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRepair {
    /// The stream.
    pub stream: String,
    /// Why it was repaired.
    pub finding: Option<Finding>,
    /// Rows it no longer held.
    pub missing: usize,
    /// Of those, rows stored again.
    pub republished: usize,
    /// Rows the stream answered as duplicates: it still held them.
    pub duplicates: usize,
    /// Rows that could not be published again (a permanent failure; logged).
    pub failed: usize,
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

impl Relay {
    /// Checks every stream that acknowledged rows at or after `since` (all kept rows when
    /// `None`); see the module's documentation. Changes nothing.
    pub async fn verify(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StreamCheck>, RepairError> {
        let summaries = self
            .store
            .read(move |conn| acknowledged::summaries(conn, since))
            .await?;
        let mut checks = Vec::with_capacity(summaries.len());
        for summary in summaries {
            checks.push(self.check(summary, since).await?);
        }
        Ok(checks)
    }

    /// Publishes again what [`Relay::verify`] finds missing, per stream in commit order, and
    /// records where each row is stored now. Returns the streams that missed rows.
    pub async fn repair(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StreamRepair>, RepairError> {
        let mut repairs = Vec::new();
        for check in self.verify(since).await? {
            if check.missing.is_empty() {
                continue;
            }
            tracing::warn!(
                stream = %check.stream,
                missing = check.missing.len(),
                finding = %check.finding.as_ref().map(ToString::to_string).unwrap_or_default(),
                "a stream no longer holds events it acknowledged; publishing them again"
            );
            let repair = self.repair_stream(check).await?;
            tracing::info!(
                stream = %repair.stream,
                republished = repair.republished,
                duplicates = repair.duplicates,
                failed = repair.failed,
                "stream repaired"
            );
            repairs.push(repair);
        }
        Ok(repairs)
    }

    /// One stream's check: the cheap one, then row by row when that fails.
    async fn check(
        &self,
        summary: StreamSummary,
        since: Option<DateTime<Utc>>,
    ) -> Result<StreamCheck, RepairError> {
        let name = summary.stream.clone();
        let stream = live_stream(&self.js, &name).await?;
        let finding = match &stream {
            None => Some(Finding::StreamMissing),
            Some(stream) => {
                let info = stream.cached_info();
                let created = created_at(stream);
                if created > summary.first_published_at {
                    Some(Finding::CreatedAfter(created))
                } else if info.state.last_sequence < summary.newest_sequence {
                    Some(Finding::Truncated {
                        last_sequence: info.state.last_sequence,
                        recorded: summary.newest_sequence,
                    })
                } else if message_id(stream, summary.newest_sequence)
                    .await?
                    .is_some_and(|id| id != summary.newest_event_id)
                {
                    Some(Finding::OtherHistory {
                        sequence: summary.newest_sequence,
                    })
                } else {
                    None
                }
            }
        };
        let mut check = StreamCheck {
            stream: name.clone(),
            acknowledged: summary.rows,
            missing: Vec::new(),
            finding,
        };
        if check.finding.is_none() {
            return Ok(check);
        }
        let rows = self
            .store
            .read(move |conn| acknowledged::of_stream(conn, &name, since))
            .await?;
        let Some(stream) = stream else {
            check.missing = rows.iter().map(|row| row.id).collect();
            return Ok(check);
        };
        let created = created_at(&stream);
        let info = stream.cached_info();
        let last = info.state.last_sequence;
        // Rows older than the stream's max_age it would have dropped by now anyway.
        let expired = chrono::Duration::from_std(info.config.max_age)
            .ok()
            .filter(|age| !age.is_zero())
            .map(|age| Utc::now() - age);
        let (mut missing, mut rest): (Vec<Acknowledged>, Vec<Acknowledged>) = rows
            .into_iter()
            .filter(|row| expired.is_none_or(|before| row.published_at >= before))
            .partition(|row| row.published_at < created || row.sequence > last);
        rest.sort_by_key(|row| row.sequence);
        let from = first_other(&stream, &rest).await?;
        missing.extend(rest.drain(from..));
        missing.sort_by_key(|row| row.id);
        check.missing = missing.iter().map(|row| row.id).collect();
        Ok(check)
    }

    /// Publishes `check`'s missing rows again, a publish batch at a time, in commit order.
    async fn repair_stream(&self, check: StreamCheck) -> Result<StreamRepair, RepairError> {
        let mut repair = StreamRepair {
            stream: check.stream.clone(),
            finding: check.finding.clone(),
            missing: check.missing.len(),
            republished: 0,
            duplicates: 0,
            failed: 0,
        };
        for ids in check.missing.chunks(self.config.publish_batch.max(1)) {
            let ids = ids.to_vec();
            let rows = self
                .store
                .read(move |conn| outbox::by_ids(conn, &ids))
                .await?;
            if rows.is_empty() {
                continue;
            }
            let sent = self
                .send(Batch {
                    stream: check.stream.clone(),
                    rows,
                    mode: Mode::Batches,
                })
                .await;
            let mut stored = Vec::new();
            let mut transient = None;
            for (row, result) in sent.results {
                match result {
                    Ok(ack) => {
                        if ack.duplicate {
                            repair.duplicates += 1;
                        } else {
                            repair.republished += 1;
                            self.metrics.repaired(&row.topic);
                        }
                        stored.push((row.id, ack));
                    }
                    Err(error) if error.is_transient() => transient = Some(error.to_string()),
                    Err(error) => {
                        repair.failed += 1;
                        tracing::error!(
                            id = row.id, event_id = %row.event_id, stream = %check.stream, %error,
                            "an acknowledged event could not be published again"
                        );
                    }
                }
            }
            let at = Utc::now();
            self.store
                .write(move |tx| {
                    for (id, ack) in &stored {
                        acknowledged::record_republished(tx, *id, &ack.stream, ack.sequence, at)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await?;
            if sent.transient {
                return Err(RepairError::Transient {
                    stream: check.stream,
                    error: transient.unwrap_or_else(|| "no answer".into()),
                });
            }
            // A key whose row failed permanently: its later rows were not tried.
            repair.failed += sent.unsent.len();
        }
        Ok(repair)
    }
}

/// The stream `name`, `None` when the server has none.
async fn live_stream(js: &jetstream::Context, name: &str) -> Result<Option<Stream>, RepairError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(RepairError::Broker {
                stream: name.to_owned(),
                error: error.to_string(),
            }),
        },
    }
}

/// When the server created `stream`.
fn created_at(stream: &Stream) -> DateTime<Utc> {
    let nanos = stream.cached_info().created.unix_timestamp_nanos();
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// The `Nats-Msg-Id` of the message at `sequence` (empty when it has none), `None` when the
/// stream holds no message there.
async fn message_id(stream: &Stream, sequence: u64) -> Result<Option<String>, RepairError> {
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(Some(
            message
                .headers
                .get(MSG_ID_HEADER)
                .map(ToString::to_string)
                .unwrap_or_default(),
        )),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(RepairError::Broker {
            stream: stream.cached_info().config.name.clone(),
            error: error.to_string(),
        }),
    }
}

/// The index of the first of `rows` (in sequence order) whose sequence holds another event;
/// `rows.len()` when none does. Bisection: what differs is a suffix.
async fn first_other(stream: &Stream, rows: &[Acknowledged]) -> Result<usize, RepairError> {
    let (mut low, mut high) = (0, rows.len());
    while low < high {
        let middle = low + (high - low) / 2;
        let row = &rows[middle];
        let other = message_id(stream, row.sequence)
            .await?
            .is_some_and(|id| id != row.event_id);
        if other {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

/// `outbox verify`'s table: per stream, rows acknowledged in the window, missing, and why.
pub fn format_checks(checks: &[StreamCheck]) -> String {
    let mut table = Table::new(
        "  ",
        [
            Column::left("STREAM"),
            Column::right("ACKNOWLEDGED"),
            Column::right("MISSING"),
            Column::left("FINDING"),
        ],
    );
    for check in checks {
        table.row(vec![
            check.stream.clone(),
            check.acknowledged.to_string(),
            check.missing.len().to_string(),
            finding_text(check.finding.as_ref()),
        ]);
    }
    table.render()
}

/// `outbox repair`'s table: per repaired stream, what was put back.
pub fn format_repairs(repairs: &[StreamRepair]) -> String {
    let mut table = Table::new(
        "  ",
        [
            Column::left("STREAM"),
            Column::right("MISSING"),
            Column::right("REPUBLISHED"),
            Column::right("DUPLICATES"),
            Column::right("FAILED"),
            Column::left("FINDING"),
        ],
    );
    for repair in repairs {
        table.row(vec![
            repair.stream.clone(),
            repair.missing.to_string(),
            repair.republished.to_string(),
            repair.duplicates.to_string(),
            repair.failed.to_string(),
            finding_text(repair.finding.as_ref()),
        ]);
    }
    table.render()
}

fn finding_text(finding: Option<&Finding>) -> String {
    finding.map_or_else(|| "-".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_name_each_stream_and_what_it_misses() {
        let checks = vec![
            StreamCheck {
                stream: "ORDER_CREATED".into(),
                acknowledged: 12,
                missing: vec![1, 2, 3],
                finding: Some(Finding::Truncated {
                    last_sequence: 9,
                    recorded: 12,
                }),
            },
            StreamCheck {
                stream: "ORDER_AUDIT".into(),
                acknowledged: 4,
                missing: vec![],
                finding: None,
            },
        ];
        assert_eq!(
            format_checks(&checks),
            "STREAM         ACKNOWLEDGED  MISSING  FINDING\n\
             ORDER_CREATED            12        3  last sequence 9, below the recorded 12\n\
             ORDER_AUDIT               4        0  -\n"
        );
    }
}
