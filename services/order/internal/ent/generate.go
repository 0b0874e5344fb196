// Package ent holds the order service's ent client, generated from the
// schemas in ./schema. Everything in this directory except generate.go and
// schema/ is generated: edit the schema and run "go generate". The
// sql/execquery feature lets the saga store run its conditional
// statements (UPDATE ... RETURNING with the database's clock) in the same
// transaction as the order writes.
package ent

//go:generate go tool -modfile=../../../../tools/go.mod ent generate --feature sql/execquery ./schema
