-- Responses of requests sent with an Idempotency-Key, written in the same transaction as the
-- command they answer, so a retry gets the stored answer and never runs the command twice.
-- scope = the caller (token subject), the method and the path; keys of different callers or
-- routes never meet. fingerprint = SHA-256 of the request body: the same key with another body
-- is refused. Rows older than IDEMPOTENCY_KEY_RETENTION are deleted in small batches.
CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    location    TEXT,
    body        BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
