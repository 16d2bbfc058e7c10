//! Putting back what one stream's check found: events stored unrecorded are recorded, second
//! copies deleted, and missing rows published again in commit order, a publish batch at a time
//! (the next batch read and the last one recorded while a batch is out), each with
//! [`REPAIRED_HEADER`]. A key whose row fails holds back its later rows in every later
//! chunk too, so per key the repaired stream keeps commit order.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use futures::StreamExt;

use super::{REPAIRED_HEADER, RepairError, StreamCheck, StreamRepair, broker};
use crate::bus::Published;
use crate::relay::Relay;
use crate::relay::lanes::{Batch, Mode};
use crate::store::acknowledged;
use crate::store::outbox::Due;
use crate::store::{StoreError, outbox};

/// Copies deleted at once: enough to keep a replicated stream's leader busy, few enough that a
/// failing stream answers a handful of errors, not thousands.
const DELETES_IN_FLIGHT: usize = 64;

impl Relay {
    /// Repairs the stream `check` is about; see the module's documentation.
    pub(super) async fn put_back(&self, check: StreamCheck) -> Result<StreamRepair, RepairError> {
        let mut repair = StreamRepair {
            stream: check.stream.clone(),
            findings: check.findings.clone(),
            missing: check.missing.len(),
            republished: 0,
            duplicates: 0,
            failed: 0,
            copies_deleted: 0,
            recorded: 0,
            error: None,
        };
        self.record_stored(&check, &mut repair).await?;
        // One look at the stream serves the deletes and the duplicate checks of every chunk.
        let state = broker::state(&self.js, &check.stream, None).await?;
        // A copy that cannot be deleted now (a delete that timed out, a broker that refuses) is
        // still a copy at the next check; it must not keep the missing events from coming back.
        let undeleted = self
            .delete_copies(&check, state.as_ref(), &mut repair)
            .await;
        self.republish(&check, state.as_ref(), &mut repair).await?;
        if let Err(error) = undeleted {
            tracing::warn!(stream = %repair.stream, %error, "a copy was not deleted; the next check tries again");
            repair.error = Some(error.to_string());
        }
        Ok(repair)
    }

    /// Pending rows the stream holds already: recorded where they are, not sent again.
    async fn record_stored(
        &self,
        check: &StreamCheck,
        repair: &mut StreamRepair,
    ) -> Result<(), RepairError> {
        if check.stored.is_empty() {
            return Ok(());
        }
        let (stream, stored, at) = (check.stream.clone(), check.stored.clone(), Utc::now());
        self.store
            .write(move |tx| {
                for (id, sequence) in &stored {
                    outbox::mark_published(tx, *id, &stream, *sequence, at)?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        repair.recorded = check.stored.len();
        Ok(())
    }

    /// Keeps each event's first copy, records its row there, deletes the later one. Every delete
    /// is tried; the first failure is returned after the others.
    async fn delete_copies(
        &self,
        check: &StreamCheck,
        state: Option<&broker::StreamState>,
        repair: &mut StreamRepair,
    ) -> Result<(), RepairError> {
        if check.copies.is_empty() {
            return Ok(());
        }
        let copies = check.copies.clone();
        self.store
            .write(move |tx| {
                for copy in &copies {
                    acknowledged::record_at(tx, copy.id, copy.keep)?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        let Some(state) = state else {
            return Ok(());
        };
        // Many at once: each delete is a proposal the stream's replicas agree on, a round trip of
        // its own, and one after another they held a 30-minute fault campaign's relay back for
        // minutes (5,934 copies took 5.5 minutes).
        let sequences: Vec<u64> = check.copies.iter().filter_map(|c| c.delete).collect();
        let mut deletes = futures::stream::iter(sequences)
            .map(|sequence| broker::delete(&state.stream, sequence))
            .buffer_unordered(DELETES_IN_FLIGHT);
        let mut failed = None;
        while let Some(deleted) = deletes.next().await {
            match deleted {
                Ok(()) => repair.copies_deleted += 1,
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Publishes the missing rows again, a publish batch at a time, in commit order. While one
    /// batch is out, the next one's rows are read and the previous one's outcomes written: a
    /// stream that lost hundreds of thousands of events gets them back at the pace of the
    /// broker's answers, not of three steps one after another.
    async fn republish(
        &self,
        check: &StreamCheck,
        state: Option<&broker::StreamState>,
        repair: &mut StreamRepair,
    ) -> Result<(), RepairError> {
        let had: HashMap<i64, u64> = check.missing.iter().map(|r| (r.id, r.sequence)).collect();
        let chunks: Vec<Vec<i64>> = check
            .missing
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
            .chunks(self.config.publish_batch.max(1))
            .map(<[i64]>::to_vec)
            .collect();
        // Keys whose row could not be put back: their later rows wait, in this chunk and after.
        let mut held: HashSet<String> = HashSet::new();
        let mut rows = match chunks.first() {
            Some(first) => self.rows_of(first.clone()).await?,
            None => return Ok(()),
        };
        let mut stored: Vec<(i64, Published)> = Vec::new();
        for index in 0..chunks.len() {
            self.observe(|o| o.putting_back(&check.stream, repair.handled()));
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut rows)
                .into_iter()
                .partition(|row| !held.contains(&row.key));
            repair.failed += waiting.len();
            let batch = (!ready.is_empty()).then(|| Batch {
                stream: check.stream.clone(),
                rows: ready.into_iter().map(|row| marked(row, &had)).collect(),
                mode: Mode::Batches,
            });
            let next = chunks.get(index + 1).cloned();
            let (sent, next_rows, written) = tokio::join!(
                async {
                    match batch {
                        Some(batch) => Some(self.send(batch).await),
                        None => None,
                    }
                },
                async {
                    match next {
                        Some(ids) => self.rows_of(ids).await,
                        None => Ok(Vec::new()),
                    }
                },
                self.record_republished(std::mem::take(&mut stored)),
            );
            written?;
            // What the batch did is recorded whatever the read of the next one found.
            let rows_read = next_rows;
            let Some(sent) = sent else {
                rows = rows_read?;
                continue;
            };
            let mut transient = None;
            for (row, result) in sent.results {
                match result {
                    Ok(ack) if ack.duplicate => {
                        repair.duplicates += 1;
                        // A duplicate is stored only if the stream holds it where it says: its
                        // duplicate window also remembers ids of messages it lost since.
                        let held = match state {
                            Some(state) => broker::message_id(&state.stream, ack.sequence)
                                .await?
                                .is_some_and(|id| id == row.event_id),
                            None => false,
                        };
                        if held {
                            stored.push((row.id, ack));
                        } else {
                            tracing::warn!(
                                id = row.id, event_id = %row.event_id, stream = %check.stream,
                                "the stream's duplicate window remembers an event it lost; it goes again once the window is past"
                            );
                        }
                    }
                    Ok(ack) => {
                        repair.republished += 1;
                        self.metrics.repaired(&row.topic);
                        stored.push((row.id, ack));
                    }
                    Err(error) if error.is_transient() => transient = Some(error.to_string()),
                    Err(error) => {
                        repair.failed += 1;
                        held.insert(row.key.clone());
                        tracing::error!(
                            id = row.id, event_id = %row.event_id, stream = %check.stream, %error,
                            "an acknowledged event could not be published again; later events of its key wait"
                        );
                    }
                }
            }
            if sent.transient {
                self.record_republished(stored).await?;
                return Err(RepairError::Transient {
                    stream: check.stream.clone(),
                    error: transient.unwrap_or_else(|| "no answer".into()),
                });
            }
            // Rows not tried because an earlier row of their key failed.
            for row in sent.unsent {
                repair.failed += 1;
                held.insert(row.key);
            }
            rows = match rows_read {
                Ok(rows) => rows,
                Err(error) => {
                    self.record_republished(stored).await?;
                    return Err(error.into());
                }
            };
        }
        self.record_republished(stored).await?;
        Ok(())
    }

    /// The outbox rows `ids`, in commit order.
    async fn rows_of(&self, ids: Vec<i64>) -> Result<Vec<Due>, StoreError> {
        self.store
            .read(move |conn| outbox::by_ids(conn, &ids))
            .await
    }

    /// Records where the events put back (or found held) are now.
    async fn record_republished(&self, stored: Vec<(i64, Published)>) -> Result<(), StoreError> {
        if stored.is_empty() {
            return Ok(());
        }
        let at = Utc::now();
        self.store
            .write(move |tx| {
                for (id, ack) in &stored {
                    acknowledged::record_republished(tx, *id, &ack.stream, ack.sequence, at)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
    }
}

/// `row` with [`REPAIRED_HEADER`] naming the sequence it had (once, whatever it carried).
fn marked(mut row: Due, had: &HashMap<i64, u64>) -> Due {
    if let Some(sequence) = had.get(&row.id) {
        row.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(REPAIRED_HEADER));
        row.headers
            .push((REPAIRED_HEADER.to_owned(), sequence.to_string()));
    }
    row
}
