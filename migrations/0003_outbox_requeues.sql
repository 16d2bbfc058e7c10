-- Requeues are numbered. A relay pass notes the last number when it starts and leaves a row
-- requeued after that (and the later rows of its key) to the next pass, which reads from the first
-- due row: a pass that had already read past the row cannot publish a newer row of its key first.
-- A number rather than a timestamp, because a requeue's clock is read before its commit lands.
CREATE TABLE outbox_requeues (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
) STRICT;
INSERT INTO outbox_requeues (id, last) VALUES (1, 0);

ALTER TABLE order_events_outbox ADD COLUMN requeued_in INTEGER NOT NULL DEFAULT 0;
