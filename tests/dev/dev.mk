# Development stack on the local control plane (see tests/dev/dev.sh) and the webhook benchmark.
# Included from the top Makefile: include tests/dev/dev.mk
STORM_DEV_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))

.PHONY: dev-up dev-down dev-status bench-webhook
dev-up: ## Control plane + CRDs + webhook (URL mode) + controller on free loopback ports; reuses what runs
	@$(STORM_DEV_MK_DIR)dev.sh up
dev-down: ## Unregister the webhook, stop the webhook and controller (the control plane stays)
	@$(STORM_DEV_MK_DIR)dev.sh down
dev-status: ## PIDs, ports and readiness of the dev stack
	@$(STORM_DEV_MK_DIR)dev.sh status
bench-webhook: ## Webhook reviews/s, p50/p99 and RSS vs a no-op endpoint (release) -> target/bench/webhook.json
	@$(STORM_DEV_MK_DIR)../../webhook/bench/bench.sh
