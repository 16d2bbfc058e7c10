-- The catalogue's price of each product: what customers and the chat assistant are charged. Set by
-- admin and system callers (`PUT /products/{id}/price`); an order line of a customer or the
-- assistant must carry exactly this price in the order's currency. One price per product, in
-- minor units as order lines keep theirs.
CREATE TABLE product_prices (
    product_id       TEXT    PRIMARY KEY,
    unit_price_minor INTEGER NOT NULL CHECK (unit_price_minor >= 0),
    currency         TEXT    NOT NULL CHECK (length(currency) = 3),
    updated_at       TEXT    NOT NULL
) STRICT;
