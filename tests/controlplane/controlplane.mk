# Local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) on
# loopback, built from the Go module proxy into ${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}.
# State, kubeconfig and logs: ${STORM_CLUSTER_DIR:-.storm/cluster}. See tests/controlplane/README.md.
CONTROLPLANE_DIR := $(dir $(lastword $(MAKEFILE_LIST)))

.PHONY: cluster-bins cluster-up cluster-down cluster-env cluster-status cluster-logs thirdparty-crds argo-rollouts cert-manager
cluster-bins: ## Build the control-plane binaries into the per-version cache (no-op when cached)
	@$(CONTROLPLANE_DIR)build.sh
cluster-up: ## Start the local control plane (built once per machine); reuses a running one
	@$(CONTROLPLANE_DIR)cluster.sh up
cluster-down: ## Stop the local control plane and remove its state dir
	@$(CONTROLPLANE_DIR)cluster.sh down
cluster-env: ## Print the KUBECONFIG export for the local control plane
	@$(CONTROLPLANE_DIR)cluster.sh env
cluster-status: ## Show control-plane processes, ports and /readyz
	@$(CONTROLPLANE_DIR)cluster.sh status
cluster-logs: ## Tail the control-plane component logs
	@$(CONTROLPLANE_DIR)cluster.sh logs
thirdparty-crds: ## Fetch the pinned Istio, Gateway API, SMI and coscheduling PodGroup CRDs into the cache (no-op when cached); prints the files
	@$(CONTROLPLANE_DIR)thirdparty-crds.sh
argo-rollouts: ## Build the Argo Rollouts controller and its CRDs into the per-version cache (no-op when cached)
	@$(CONTROLPLANE_DIR)argo-rollouts.sh
cert-manager: ## Build cert-manager's controller and CA injector and its CRDs into the per-version cache (no-op when cached)
	@$(CONTROLPLANE_DIR)cert-manager.sh
