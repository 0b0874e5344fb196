-- The inventory's first schema: items with their stock counters (which
-- the database keeps from going negative, so a bug cannot oversell),
-- reservations holding stock back, and the request ids of CreateItem and
-- RestockItem.
CREATE TABLE `items` (`id` text NOT NULL, `name` text NOT NULL, `description` text NOT NULL, `currency` text NOT NULL, `price_minor` integer NOT NULL, `available` integer NOT NULL, `reserved` integer NOT NULL DEFAULT (0), `committed` integer NOT NULL DEFAULT (0), `create_time` datetime NOT NULL, `update_time` datetime NOT NULL, PRIMARY KEY (`id`), CONSTRAINT `item_stock_nonnegative` CHECK (available >= 0 AND reserved >= 0 AND committed >= 0));
CREATE TABLE `requests` (`id` text NOT NULL, `kind` text NOT NULL, `sku` text NOT NULL, `quantity` integer NOT NULL, `create_time` datetime NOT NULL, PRIMARY KEY (`id`));
CREATE TABLE `reservations` (`id` text NOT NULL, `state` text NOT NULL, `lines` json NOT NULL, `expire_time` datetime NOT NULL, `create_time` datetime NOT NULL, `update_time` datetime NOT NULL, PRIMARY KEY (`id`));
CREATE INDEX `reservation_state_expire_time` ON `reservations` (`state`, `expire_time`);
