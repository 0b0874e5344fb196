-- The payment service's first schema: payments, the ledger of money
-- movements and the idempotency keys of answered requests, as the ent
-- schema (../../../ent/schema) describes them, CHECK constraints included.
CREATE TABLE `payments` (`id` uuid NOT NULL, `order_id` text NOT NULL, `user_id` uuid NOT NULL, `currency` text NOT NULL, `amount_minor` integer NOT NULL, `refunded_minor` integer NOT NULL DEFAULT (0), `create_time` datetime NOT NULL, `update_time` datetime NOT NULL, PRIMARY KEY (`id`), CONSTRAINT `payment_amounts` CHECK (amount_minor > 0 AND refunded_minor >= 0 AND refunded_minor <= amount_minor));
CREATE INDEX `payment_order_id` ON `payments` (`order_id`);
CREATE TABLE `ledger_entries` (`id` uuid NOT NULL, `kind` text NOT NULL, `idempotency_key` text NOT NULL, `amount_minor` integer NOT NULL, `currency` text NOT NULL, `reason` text NOT NULL DEFAULT (''), `request_hash` text NOT NULL, `create_time` datetime NOT NULL, `payment_id` uuid NOT NULL, PRIMARY KEY (`id`), CONSTRAINT `ledger_entries_payments_entries` FOREIGN KEY (`payment_id`) REFERENCES `payments` (`id`) ON DELETE NO ACTION, CONSTRAINT `ledger_entry_amount` CHECK (amount_minor > 0), CONSTRAINT `ledger_entry_kind` CHECK (kind IN ('charge', 'refund')));
CREATE UNIQUE INDEX `ledgerentry_idempotency_key` ON `ledger_entries` (`idempotency_key`);
CREATE INDEX `ledgerentry_payment_id_create_time` ON `ledger_entries` (`payment_id`, `create_time`);
CREATE TABLE `idempotency_keys` (`id` text NOT NULL, `operation` text NOT NULL, `request_hash` text NOT NULL, `payment_id` uuid NULL, `decline_reason` text NULL, `create_time` datetime NOT NULL, PRIMARY KEY (`id`), CONSTRAINT `idempotency_key_outcome` CHECK (payment_id IS NOT NULL AND decline_reason IS NULL OR payment_id IS NULL AND decline_reason IS NOT NULL));
