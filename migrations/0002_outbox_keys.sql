-- The relay holds back a row while an earlier row of the same subject key is waiting for a retry
-- or is dead; this index answers "is anything earlier of this key unpublished?" without a scan.
CREATE INDEX outbox_unpublished_by_key ON order_events_outbox (subject_key, id)
    WHERE status <> 'published';
