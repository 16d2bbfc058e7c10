-- The service's 0006_outbox_sent_marks.sql: how far each stream's relay has handed rows to a
-- publish, and '*' for what relays before the table may have sent.
CREATE TABLE outbox_sent_marks (
    stream  TEXT    PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO outbox_sent_marks (stream, last_id)
    SELECT '*', coalesce(max(id), 0) FROM order_events_outbox;
