-- Orders, their items, the local stock view, chat origins and links, stock overrides, and the
-- transactional outbox. Timestamps are RFC 3339 UTC text with milliseconds, so they sort as text.

CREATE TABLE orders (
    order_id          TEXT PRIMARY KEY,           -- UUIDv7: time-ordered, so it is also the list order
    order_number      TEXT NOT NULL UNIQUE,
    customer_id       TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                        ('pending', 'confirmed', 'processing', 'shipped', 'delivered', 'cancelled')),
    currency          TEXT NOT NULL,
    street            TEXT NOT NULL,
    city              TEXT NOT NULL,
    postal_code       TEXT NOT NULL,
    country           TEXT NOT NULL,
    source_channel    TEXT NOT NULL CHECK (source_channel IN ('web', 'mobile', 'chat', 'admin')),
    created_by        TEXT NOT NULL,
    payment_confirmed INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
) STRICT;

CREATE INDEX orders_by_customer ON orders (customer_id, order_id);
CREATE INDEX orders_by_status ON orders (status, order_id);

CREATE TABLE order_items (
    order_id         TEXT NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    product_id       TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_minor INTEGER NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, product_id)
) STRICT;

-- One row per year: the last order number handed out, bumped in the creating transaction.
CREATE TABLE order_number_counters (
    year INTEGER PRIMARY KEY,
    last INTEGER NOT NULL
) STRICT;

-- The local stock view orders are checked against. `available` goes below zero when an admin
-- overrides a shortage: that is the negative stock the inventory service tracks.
CREATE TABLE product_stock (
    product_id TEXT PRIMARY KEY,
    available  INTEGER NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE chat_orders (
    order_id              TEXT PRIMARY KEY REFERENCES orders (order_id) ON DELETE CASCADE,
    chat_id               TEXT NOT NULL,
    template_used         TEXT NOT NULL,
    ai_confidence         REAL NOT NULL,
    delivery_speed        TEXT NOT NULL,
    communication_method  TEXT NOT NULL,
    requires_confirmation INTEGER NOT NULL
) STRICT;

CREATE TABLE order_chat_links (
    link_id    TEXT PRIMARY KEY,
    order_id   TEXT NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    chat_id    TEXT NOT NULL,
    link_type  TEXT NOT NULL CHECK (link_type IN ('support', 'inquiry', 'complaint')),
    context    TEXT NOT NULL,
    linked_by  TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

CREATE INDEX order_chat_links_by_order ON order_chat_links (order_id);

CREATE TABLE stock_overrides (
    override_id           TEXT PRIMARY KEY,
    order_id              TEXT NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    product_id            TEXT NOT NULL,
    requested_quantity    INTEGER NOT NULL,
    available_quantity    INTEGER NOT NULL,
    override_quantity     INTEGER NOT NULL,
    reason                TEXT NOT NULL,
    expected_restock_date TEXT NOT NULL,
    approved_by           TEXT NOT NULL,
    created_at            TEXT NOT NULL
) STRICT;

CREATE INDEX stock_overrides_by_order ON stock_overrides (order_id);

-- The transactional outbox. `id` is the commit order: AUTOINCREMENT never hands out an id again,
-- even after published rows are deleted, so the relay can trust that a larger id committed later.
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

-- The relay reads pending rows in id order; published rows are cleaned up by age.
CREATE INDEX outbox_pending ON order_events_outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_published ON order_events_outbox (published_at) WHERE status = 'published';
CREATE INDEX outbox_by_status ON order_events_outbox (status, id);
