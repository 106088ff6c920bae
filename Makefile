# Storm Rollouts — the front door. `make demo` runs the main job, `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

include tests/controlplane/controlplane.mk
include tests/dev/dev.mk

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## The main job: a canary rollout on the local control plane, end to end
	@tests/demo/demo.sh

.PHONY: build
build: ## Build every binary (release)
	$(CARGO) build --release --workspace

.PHONY: manifests
manifests: ## Regenerate manifests/crds from the Rust types
	$(CARGO) run --quiet -p storm-cli --bin kubectl-storm -- crds --out-dir manifests/crds

.PHONY: lint
lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: unit
unit: ## Unit, property and CLI tests (no cluster)
	$(CARGO) test --workspace --exclude storm-e2e

.PHONY: e2e
e2e: cluster-up ## End-to-end suites against the local control plane
	$(CARGO) test -p storm-e2e -- --test-threads=4

.PHONY: test
test: lint unit e2e ## Everything CI runs
