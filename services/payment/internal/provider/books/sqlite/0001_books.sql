-- The built-in provider's books, a database of their own apart from the
-- payment service's ledger, as an outside provider keeps its own: what
-- it charged, by charge key, and what it gave back, by refund key.
CREATE TABLE charges (
    key            text    NOT NULL PRIMARY KEY,
    user_id        text    NOT NULL,
    currency       text    NOT NULL,
    amount_minor   integer NOT NULL,
    -- '' for a charge taken, else why it was declined (nothing taken).
    decline_reason text    NOT NULL DEFAULT '',
    refunded_minor integer NOT NULL DEFAULT 0,
    create_time    text    NOT NULL,
    CONSTRAINT charge_amounts CHECK (amount_minor > 0 AND refunded_minor >= 0 AND refunded_minor <= amount_minor),
    CONSTRAINT declined_refunds_nothing CHECK (decline_reason = '' OR refunded_minor = 0)
);
CREATE TABLE refunds (
    key          text    NOT NULL PRIMARY KEY,
    charge_key   text    NOT NULL REFERENCES charges (key),
    currency     text    NOT NULL,
    -- What the refund asked for; NULL when it asked for all that was
    -- left of the charge.
    requested_minor integer NULL,
    -- What was given back.
    amount_minor integer NOT NULL CHECK (amount_minor > 0),
    create_time  text    NOT NULL
);
CREATE INDEX refunds_charge_key ON refunds (charge_key);
