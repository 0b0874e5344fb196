// Package ent holds the payment service's ent client, generated from the
// schemas in ./schema. Everything in this directory except generate.go and
// schema/ is generated: edit the schema and run "go generate".
package ent

//go:generate go tool -modfile=../../../../tools/go.mod ent generate ./schema
