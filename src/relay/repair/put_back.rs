//! Putting back what one stream's check found: events stored unrecorded are recorded, second
//! copies deleted, and missing rows published again in commit order, a publish batch at a time,
//! each with [`REPAIRED_HEADER`]. A key whose row fails holds back its later rows in every later
//! chunk too, so per key the repaired stream keeps commit order.

use std::collections::{HashMap, HashSet};

use chrono::Utc;

use super::{REPAIRED_HEADER, RepairError, StreamCheck, StreamRepair, broker};
use crate::relay::Relay;
use crate::relay::lanes::{Batch, Mode};
use crate::store::acknowledged;
use crate::store::{StoreError, outbox};

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
        self.delete_copies(&check, state.as_ref(), &mut repair)
            .await?;
        self.republish(&check, state.as_ref(), &mut repair).await?;
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

    /// Keeps each event's first copy, records its row there, deletes the later one.
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
        for copy in &check.copies {
            if let Some(sequence) = copy.delete {
                broker::delete(&state.stream, sequence).await?;
                repair.copies_deleted += 1;
            }
        }
        Ok(())
    }

    /// Publishes the missing rows again, a publish batch at a time, in commit order.
    async fn republish(
        &self,
        check: &StreamCheck,
        state: Option<&broker::StreamState>,
        repair: &mut StreamRepair,
    ) -> Result<(), RepairError> {
        let had: HashMap<i64, u64> = check.missing.iter().map(|r| (r.id, r.sequence)).collect();
        let ids: Vec<i64> = check.missing.iter().map(|r| r.id).collect();
        // Keys whose row could not be put back: their later rows wait, in this chunk and after.
        let mut held: HashSet<String> = HashSet::new();
        for chunk in ids.chunks(self.config.publish_batch.max(1)) {
            let chunk = chunk.to_vec();
            let rows = self
                .store
                .read(move |conn| outbox::by_ids(conn, &chunk))
                .await?;
            let (rows, waiting): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|row| !held.contains(&row.key));
            repair.failed += waiting.len();
            if rows.is_empty() {
                continue;
            }
            let rows = rows
                .into_iter()
                .map(|mut row| {
                    if let Some(sequence) = had.get(&row.id) {
                        row.headers
                            .retain(|(name, _)| !name.eq_ignore_ascii_case(REPAIRED_HEADER));
                        row.headers
                            .push((REPAIRED_HEADER.to_owned(), sequence.to_string()));
                    }
                    row
                })
                .collect();
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
                    stream: check.stream.clone(),
                    error: transient.unwrap_or_else(|| "no answer".into()),
                });
            }
            // Rows not tried because an earlier row of their key failed.
            for row in sent.unsent {
                repair.failed += 1;
                held.insert(row.key);
            }
        }
        Ok(())
    }
}
