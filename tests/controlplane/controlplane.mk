# Local control plane targets (filled in by the control-plane work).
.PHONY: cluster-up cluster-down cluster-env
cluster-up: ## Start the local control plane (built once per machine)
	@echo "cluster-up: not built yet"
cluster-down: ## Stop the local control plane
	@true
cluster-env: ## Print the KUBECONFIG export for the local control plane
	@true
