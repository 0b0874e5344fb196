-- The order service's first schema: orders (one per PlaceOrder
-- idempotency key) with their status history, and the sagas that place
-- them, as internal/saga documents the table. Recovery finds the
-- unfinished sagas of a definition through sagas_unfinished.
CREATE TABLE `orders` (`id` text NOT NULL, `idempotency_key` text NOT NULL, `request_hash` text NOT NULL, `user_id` text NOT NULL, `status` text NOT NULL, `currency` text NOT NULL, `total_minor` integer NOT NULL, `lines` json NOT NULL, `payment_id` text NOT NULL DEFAULT (''), `failure_reason` text NOT NULL DEFAULT (''), `create_time` datetime NOT NULL, `update_time` datetime NOT NULL, PRIMARY KEY (`id`));
CREATE UNIQUE INDEX `order_user_id_idempotency_key` ON `orders` (`user_id`, `idempotency_key`);
CREATE INDEX `order_user_id_create_time_id` ON `orders` (`user_id`, `create_time`, `id`);
CREATE TABLE `sagas` (`id` text NOT NULL, `definition` text NOT NULL, `state` blob NOT NULL, `status` text NOT NULL, `step` integer NOT NULL, `in_flight` bool NOT NULL, `reason` text NOT NULL, `lease_owner` text NOT NULL, `lease_expiry` datetime NULL, `version` integer NOT NULL, `created_at` datetime NOT NULL, `updated_at` datetime NOT NULL, PRIMARY KEY (`id`));
CREATE INDEX `sagas_unfinished` ON `sagas` (`definition`, `status`);
CREATE TABLE `status_changes` (`id` integer NOT NULL PRIMARY KEY AUTOINCREMENT, `status` text NOT NULL, `reason` text NOT NULL DEFAULT (''), `time` datetime NOT NULL, `order_id` text NOT NULL, CONSTRAINT `status_changes_orders_history` FOREIGN KEY (`order_id`) REFERENCES `orders` (`id`) ON DELETE NO ACTION);
CREATE INDEX `statuschange_order_id_time` ON `status_changes` (`order_id`, `time`);
