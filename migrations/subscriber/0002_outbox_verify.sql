-- The service's 0005_outbox_verify.sql: the indexes and the column verify and repair use.
CREATE INDEX outbox_by_stream_seq ON order_events_outbox (stream, stream_seq)
    WHERE status = 'published';
ALTER TABLE order_events_outbox ADD COLUMN lost_seq INTEGER;
CREATE INDEX outbox_lost ON order_events_outbox (stream, id) WHERE lost_seq IS NOT NULL;
