-- Verify and repair look a stream's recorded rows up by sequence: how many a stream holds between
-- two sequences, which rows sit in a hole the broker reports, below its first or past its last
-- sequence. Without this index each of those reads every published row.
CREATE INDEX outbox_by_stream_seq ON order_events_outbox (stream, stream_seq)
    WHERE status = 'published';

-- A row whose sequence the stream gave to another event (the stream lost its tail, then stored
-- newer rows at the same sequences) is no longer recorded there: `stream_seq` is cleared and the
-- sequence it had kept here, so repair can put it back and say where it was.
ALTER TABLE order_events_outbox ADD COLUMN lost_seq INTEGER;
CREATE INDEX outbox_lost ON order_events_outbox (stream, id) WHERE lost_seq IS NOT NULL;

-- The rows that can hold back later rows of their key (dead, waiting for a retry, requeued): the
-- relay asks this small index whether an earlier row of a key holds it back, instead of walking
-- every earlier unpublished row of the key (a key with a backlog made that quadratic).
CREATE INDEX outbox_blockers ON order_events_outbox (subject_key, id)
    WHERE status <> 'published' AND (status = 'dead' OR next_attempt_at IS NOT NULL OR requeued_in > 0);
