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

.PHONY: demo-aibrix
demo-aibrix: ## AIBrix's 1p1d sample: its object graph, a role scale and an in-place update, what stayed and what was replaced
	@tests/demo/demo-aibrix.sh

.PHONY: build
build: ## Build every binary (release)
	$(CARGO) build --release --workspace

.PHONY: manifests
manifests: ## Regenerate the CRDs (manifests/crds, and the Helm chart's crds/) from the Rust types
	$(CARGO) run --quiet -p storm-cli --bin kubectl-storm -- crds --out-dir manifests/crds
	$(CARGO) run --quiet -p storm-cli --bin kubectl-storm -- crds --out-dir charts/storm-rollouts/crds

# cargo-deny, built once per version into the cache (as the control-plane binaries are).
CARGO_DENY_VERSION := 0.20.2
TOOLS_DIR := $(or $(STORM_CACHE_DIR),$(HOME)/.cache/storm-rollouts)/tools
CARGO_DENY := $(TOOLS_DIR)/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny

$(CARGO_DENY):
	$(CARGO) install --quiet --locked cargo-deny --version $(CARGO_DENY_VERSION) --root $(TOOLS_DIR)/cargo-deny-$(CARGO_DENY_VERSION)

.PHONY: deny
deny: $(CARGO_DENY) ## cargo-deny: licenses, banned crates and sources of every dependency (deny.toml)
	$(CARGO_DENY) check licenses bans sources

.PHONY: deny-advisories
deny-advisories: $(CARGO_DENY) ## cargo-deny advisories: needs the RustSec database from GitHub (not reachable from CI)
	$(CARGO_DENY) check advisories

.PHONY: lint
lint: deny ## rustfmt, clippy (warnings are errors) and cargo-deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: unit
unit: ## Unit, property and CLI tests (no cluster)
	$(CARGO) test --workspace --exclude storm-e2e

.PHONY: tools
tools: ## What the suites run beside our binaries and the control plane: Prometheus (Debian's package, installed if missing)
	@tests/tools/debian-package.sh prometheus

.PHONY: e2e
e2e: cluster-up tools ## End-to-end suites against the local control plane (stops the dev stack first)
	@# The dev stack's controller watches every namespace: it would act beside the suites' own.
	@tests/dev/dev.sh down >/dev/null 2>&1 || true
	@# The suites' webhook runs as storm-webhook with the RBAC of manifests/webhook (tests/dev/dev.sh):
	@# a request that RBAC denies it fails the run, as it would fail a cluster.
	@mkdir -p .storm/dev; touch .storm/dev/webhook.log; wc -c < .storm/dev/webhook.log > .storm/dev/webhook.log.start
	$(CARGO) test -p storm-e2e -- --test-threads=4
	@if tail -c +$$(( $$(cat .storm/dev/webhook.log.start) + 1 )) .storm/dev/webhook.log \
		| grep -E 'system:serviceaccount:storm-system:storm-webhook.* cannot '; then \
		echo "e2e: storm-webhook was denied by the RBAC of manifests/webhook (above)"; exit 1; fi

.PHONY: demo-check
demo-check: ## Run the demo non-interactively and check its end state (then stop the dev stack)
	@mkdir -p target; STORM_DEMO_NAMESPACE=storm-demo-ci tests/demo/demo.sh > target/demo-check.log 2>&1 \
		|| { tail -n 60 target/demo-check.log; $(MAKE) --no-print-directory dev-down; exit 1; }
	@phase=$$(KUBECONFIG=.storm/cluster/kubeconfig kubectl -n storm-demo-ci get stormservice my-app \
		-o jsonpath='{.status.rolloutStatus.phase} {.status.currentRevision} {.status.updateRevision}'); \
	set -- $$phase; $(MAKE) --no-print-directory dev-down >/dev/null 2>&1; \
	if [ "$$1" = Completed ] && [ "$$2" = "$$3" ]; then echo "demo-check: 1 passed, 0 failed"; \
	else echo "demo-check: end state '$$phase' is not a completed rollout"; echo "demo-check: 0 passed, 1 failed"; exit 1; fi

.PHONY: bench-controller
bench-controller: cluster-up ## N StormServices through a canary (N=200, ROUTER=none|gateway) -> target/bench/controller*.json
	@tests/dev/dev.sh down >/dev/null 2>&1 || true
	$(CARGO) run --release -q -p storm-e2e --example bench_controller -- $(or $(N),200) $(or $(ABORTS),20) $(or $(ROUTER),none)

.PHONY: bench-vs-argo
bench-vs-argo: cluster-up argo-rollouts ## N Argo Rollouts, then N StormServices, doing the same canaries and aborts (N=200, ABORTS=20) -> target/bench/vs-argo.json
	@tests/dev/dev.sh down >/dev/null 2>&1 || true
	$(CARGO) run --release -q -p storm-e2e --example bench_vs_argo -- $(or $(N),200) $(or $(ABORTS),20)

.PHONY: soak
soak: cluster-up tools ## N StormServices under a seeded stream of user actions and faults, invariants checked (N=50, SOAK_MINUTES=20, SEED) -> target/bench/soak.json
	@tests/dev/dev.sh down >/dev/null 2>&1 || true
	$(CARGO) run -q -p storm-e2e --example soak -- $(or $(N),50) $$(( $(or $(SOAK_MINUTES),20) * 60 )) $(or $(SEED),20261130) $(SOAK_FAULTS)

.PHONY: soak-short
soak-short: cluster-up tools ## The soak for 2.5 minutes with 16 StormServices, every fault kind (part of make test) -> target/bench/soak.json
	@tests/dev/dev.sh down >/dev/null 2>&1 || true
	$(CARGO) run -q -p storm-e2e --example soak -- 16 150 $(or $(SEED),20261130)

.PHONY: bench
bench: bench-webhook bench-controller ## Every benchmark; numbers in target/bench/
	$(MAKE) --no-print-directory bench-controller ROUTER=gateway

.PHONY: demo-aibrix-check
demo-aibrix-check: ## Run demo-aibrix non-interactively (it fails on anything unexpected), then stop the dev stack
	@mkdir -p target; STORM_DEMO_NAMESPACE=storm-demo-aibrix-ci tests/demo/demo-aibrix.sh > target/demo-aibrix-check.log 2>&1 \
		|| { tail -n 60 target/demo-aibrix-check.log; $(MAKE) --no-print-directory dev-down; exit 1; }
	@$(MAKE) --no-print-directory dev-down >/dev/null 2>&1; echo "demo-aibrix-check: 1 passed, 0 failed"

.PHONY: images
images: ## OCI images of the webhook and controller without Docker (umoci), each run to print its version; sizes -> target/images/sizes.json
	@tests/images/build.sh

.PHONY: test
test: lint unit e2e soak-short demo-check demo-aibrix-check images ## Everything CI runs
