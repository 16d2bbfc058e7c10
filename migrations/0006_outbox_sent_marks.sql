-- How far each stream's relay has handed rows to a publish: the highest outbox id, raised before
-- the rows go out. After a restart, only rows at or below a stream's mark may have been sent by
-- an earlier relay (and so may be stored already, past the duplicate window); a backlog above it
-- was never sent and goes out without being looked up in the stream first.
CREATE TABLE outbox_sent_marks (
    stream  TEXT    PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;

-- Relays before this table kept no mark: any row committed so far may have been sent by one.
INSERT INTO outbox_sent_marks (stream, last_id)
    SELECT '*', coalesce(max(id), 0) FROM order_events_outbox;
