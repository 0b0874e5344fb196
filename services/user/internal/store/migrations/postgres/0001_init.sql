-- The users table as ent's auto-migration created it before versioned
-- migrations, statement for statement. IF NOT EXISTS lets a database that
-- auto-migration created adopt this baseline as it is; later migrations
-- must not use it, so that they fail loudly on a schema they do not expect.
CREATE TABLE IF NOT EXISTS "users" ("id" uuid NOT NULL, "email" character varying NOT NULL, "password_hash" character varying NOT NULL, "display_name" character varying NOT NULL, "create_time" timestamptz NOT NULL, "update_time" timestamptz NOT NULL, PRIMARY KEY ("id"));
CREATE UNIQUE INDEX IF NOT EXISTS "user_email" ON "users" ("email");
CREATE INDEX IF NOT EXISTS "user_create_time_id" ON "users" ("create_time", "id");
