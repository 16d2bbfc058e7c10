-- The outbox of a consumer group that emits events: the service's `order_events_outbox` (0001 to
-- 0003 in the folder above), in the group's own database, so the service's relay publishes it.
-- The unit test `a_groups_outbox_is_the_services` checks that both schemas stay the same.

CREATE TABLE order_events_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    topic           TEXT NOT NULL,
    subject_key     TEXT NOT NULL,
    payload         TEXT NOT NULL,
    headers         TEXT NOT NULL,              -- JSON object of NATS headers
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT,
    stream          TEXT,
    stream_seq      INTEGER,
    created_at      TEXT NOT NULL,
    published_at    TEXT
) STRICT;

CREATE INDEX outbox_pending ON order_events_outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_published ON order_events_outbox (published_at) WHERE status = 'published';
CREATE INDEX outbox_by_status ON order_events_outbox (status, id);
CREATE INDEX outbox_unpublished_by_key ON order_events_outbox (subject_key, id)
    WHERE status <> 'published';

CREATE TABLE outbox_requeues (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
) STRICT;
INSERT INTO outbox_requeues (id, last) VALUES (1, 0);

ALTER TABLE order_events_outbox ADD COLUMN requeued_in INTEGER NOT NULL DEFAULT 0;
