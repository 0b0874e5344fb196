-- The inventory's first schema: items with their stock counters (which
-- the database keeps from going negative, so a bug cannot oversell),
-- reservations holding stock back, and the request ids of CreateItem and
-- RestockItem.
CREATE TABLE "items" ("id" character varying NOT NULL, "name" character varying NOT NULL, "description" character varying NOT NULL, "currency" character varying NOT NULL, "price_minor" bigint NOT NULL, "available" bigint NOT NULL, "reserved" bigint NOT NULL DEFAULT 0, "committed" bigint NOT NULL DEFAULT 0, "create_time" timestamptz NOT NULL, "update_time" timestamptz NOT NULL, PRIMARY KEY ("id"), CONSTRAINT "item_stock_nonnegative" CHECK (available >= 0 AND reserved >= 0 AND committed >= 0));
CREATE TABLE "requests" ("id" character varying NOT NULL, "kind" character varying NOT NULL, "sku" character varying NOT NULL, "quantity" bigint NOT NULL, "create_time" timestamptz NOT NULL, PRIMARY KEY ("id"));
CREATE TABLE "reservations" ("id" character varying NOT NULL, "state" character varying NOT NULL, "lines" jsonb NOT NULL, "expire_time" timestamptz NOT NULL, "create_time" timestamptz NOT NULL, "update_time" timestamptz NOT NULL, PRIMARY KEY ("id"));
CREATE INDEX "reservation_state_expire_time" ON "reservations" ("state", "expire_time");
