#!/usr/bin/env bash
# make demo: a canary rollout of a StormService on the local control plane, end to end.
#
# Brings up the control plane, the CRDs, the admission webhook and the controller (make dev-up),
# shows admission at work (defaults filled in, a broken spec denied with every field path), then
# upgrades the image and walks the canary through its steps, approving the manual gate itself.
# Leaves everything running and says how to explore and how to tear down.
#
# STORM_DEMO_NAMESPACE (default storm-demo): where the demo's objects live; recreated each run.
# STORM_DEMO_TIMEOUT (default 180): seconds any one wait may take.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NS=${STORM_DEMO_NAMESPACE:-storm-demo}
TIMEOUT=${STORM_DEMO_TIMEOUT:-180}

bold() { if [[ -t 1 ]]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
step() {
	echo
	bold "==> $*"
}
show() { # show <command...>: print it as a user would type it, then run it
	printf '$ %s\n' "$*"
	"$@"
}
die() {
	echo "demo: error: $*" >&2
	exit 1
}

step "Starting the local control plane, CRDs, webhook and controller (make dev-up)"
make -C "$REPO" --no-print-directory dev-up >/dev/null
eval "$("$REPO/tests/dev/dev.sh" env)"
export KUBECONFIG
(cd "$REPO" && cargo build --quiet -p storm-cli --bin kubectl-storm)
# kubectl finds plugins on PATH: `kubectl storm ...` runs target/debug/kubectl-storm.
export PATH="${CARGO_TARGET_DIR:-$REPO/target}/debug:$PATH"
show kubectl get nodes

step "A fresh namespace: $NS"
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
show kubectl create namespace "$NS"

step "Applying a StormService with a canary strategy (the seed's, with short pauses)"
show kubectl -n "$NS" apply -f "$REPO/tests/fixtures/demo.yaml"
echo "The webhook filled in autoRollback, which the manifest left out:"
show kubectl -n "$NS" get stormservice my-app -o jsonpath='{.spec.rolloutStrategy.autoRollback}'
echo

step "A broken StormService is denied at kubectl apply, with every problem at once"
printf '$ kubectl -n %s apply -f tests/fixtures/invalid/demo-broken.yaml\n' "$NS"
kubectl -n "$NS" apply -f "$REPO/tests/fixtures/invalid/demo-broken.yaml" 2>&1 || true
if kubectl -n "$NS" get stormservice broken >/dev/null 2>&1; then
	die "the broken StormService was admitted"
fi
echo "(denied: nothing was created)"

step "Waiting for the first deployment to become Healthy"
show kubectl storm -n "$NS" status my-app --wait-for Healthy --timeout "${TIMEOUT}s" >/dev/null
show kubectl -n "$NS" get stormservice my-app

step "Upgrading the image: a canary rollout starts"
show kubectl storm -n "$NS" set image my-app server=vllm/vllm-openai:v0.9.2

step "Walking the canary through its steps"
reason() {
	kubectl -n "$NS" get stormservice my-app \
		-o jsonpath='{.status.rolloutStatus.conditions[?(@.type=="Paused")].status}/{.status.rolloutStatus.conditions[?(@.type=="Paused")].reason}'
}
line() { kubectl -n "$NS" get stormservice my-app --no-headers; }
deadline=$((SECONDS + TIMEOUT))
last=""
approved=false
while :; do
	now=$(line)
	[[ $now != "$last" ]] && echo "  $now" && last=$now
	phase=$(kubectl -n "$NS" get stormservice my-app -o jsonpath='{.status.rolloutStatus.phase}')
	case $phase in
	Completed) break ;;
	Degraded | Aborted) die "the rollout ended $phase: $(kubectl -n "$NS" get stormservice my-app -o jsonpath='{.status.rolloutStatus.message}')" ;;
	esac
	if [[ $(reason) == "True/WaitingForApproval" && $approved == false ]]; then
		echo
		show kubectl storm -n "$NS" status my-app
		echo
		echo "The canary waits for a person. Approving:"
		show kubectl storm -n "$NS" promote my-app
		approved=true
	fi
	((SECONDS < deadline)) || die "the rollout did not complete within ${TIMEOUT}s"
	sleep 1
done

step "Done: the new revision serves all traffic"
show kubectl storm -n "$NS" status my-app
show kubectl -n "$NS" get rolesets -l stormservice.aibrix.ai/name=my-app

step "Explore further"
cat <<TXT
  export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$(command -v kubectl-storm)"):\$PATH
  kubectl storm -n $NS status my-app -w                 # live view
  kubectl storm -n $NS set image my-app server=vllm/vllm-openai:v0.9.3
  kubectl storm -n $NS abort my-app                     # or pause, resume, retry, promote
  kubectl -n $NS get events --field-selector involvedObject.name=my-app
  kubectl-storm lint tests/fixtures/seed/*.yaml          # the same rules, offline

Tear down:  make dev-down && make cluster-down
TXT
