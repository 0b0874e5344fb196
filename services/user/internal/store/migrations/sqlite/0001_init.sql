-- The users table as ent's auto-migration created it before versioned
-- migrations, statement for statement. IF NOT EXISTS lets a database that
-- auto-migration created adopt this baseline as it is; later migrations
-- must not use it, so that they fail loudly on a schema they do not expect.
CREATE TABLE IF NOT EXISTS `users` (`id` uuid NOT NULL, `email` text NOT NULL, `password_hash` text NOT NULL, `display_name` text NOT NULL, `create_time` datetime NOT NULL, `update_time` datetime NOT NULL, PRIMARY KEY (`id`));
CREATE UNIQUE INDEX IF NOT EXISTS `user_email` ON `users` (`email`);
CREATE INDEX IF NOT EXISTS `user_create_time_id` ON `users` (`create_time`, `id`);
