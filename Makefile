# Keel's developer entry points. Every tool is pinned: Go tools in
# tools/go.mod (run with `go tool -modfile=tools/go.mod`), TypeScript
# generators in tools/package-lock.json.

SHELL := /bin/bash
.DEFAULT_GOAL := help

BUF := go tool -modfile=tools/go.mod buf
GO_PACKAGES := ./...

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: third-party
third-party: ## Materialize third_party/ (google/api, buf/validate) at pinned versions.
	@./scripts/third-party.sh

.PHONY: generate
generate: third-party ## Generate Go, Connect and TypeScript code from proto/, and ent code.
	rm -rf gen/go gen/ts
	$(BUF) generate
	go generate ./services/...

.PHONY: lint
lint: third-party ## buf lint, buf format check, gofmt and go vet.
	$(BUF) lint
	$(BUF) format --diff --exit-code proto
	@out="$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))"; \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet $(GO_PACKAGES)

.PHONY: breaking
breaking: third-party ## Fail if proto/ breaks the accepted contracts (proto/ACCEPTED; BASE_REF to override).
	./scripts/breaking.sh

.PHONY: accept-contracts
accept-contracts: ## Accept the contracts of the last commit as the baseline (a deliberate, reviewed step).
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
		echo "commit the contracts first: only a commit can be accepted"; exit 1; fi
	git rev-parse HEAD > proto/ACCEPTED
	@echo "proto/ACCEPTED now names $$(cat proto/ACCEPTED); commit it, saying why the contracts may change this way"

.PHONY: checkgenerate
checkgenerate: generate ## Regenerate and fail if anything generated differs from what is committed.
	@if [ -n "$$(git status --porcelain -- gen services)" ]; then \
		echo "generated code is out of date; run 'make generate' and commit:"; \
		git status --porcelain -- gen services; git diff --stat -- gen services; exit 1; fi

.PHONY: test
test: ## The whole gate: lint, checkgenerate, breaking, then every Go test against real servers.
	./scripts/test.sh

.PHONY: gotest
gotest: ## Only the Go tests, most under the race detector (needs what scripts/test.sh installs).
	./scripts/test.sh go

.PHONY: run
run: ## Bring the platform up on loopback with embedded defaults.
	go run ./cmd/keel up

.PHONY: run-consul
run-consul: ## Like run, registered in Consul with config from Consul KV (CONSUL_HTTP_ADDR, or a dev agent).
	go run ./cmd/keel up --consul

.PHONY: bench
bench: ## Go benchmarks of the runtime and edge.
	go test -run '^$$' -bench . -benchmem ./internal/... ./edge/...

DURATION ?= 10m
SEED ?= 1
RATE ?= 20

.PHONY: chaos
chaos: ## Chaos drill: faults under open-loop traffic, then the books reconciled (DURATION, SEED, RATE).
	go run ./cmd/keel drill --duration $(DURATION) --rate $(RATE) --seed $(SEED) --json chaos-report.json
