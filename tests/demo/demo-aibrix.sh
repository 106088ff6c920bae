#!/usr/bin/env bash
# make demo-aibrix: AIBrix's own 1p1d sample (prefill/decode disaggregation, InPlaceUpdate, stateful
# roles) run by our controller: the object graph AIBrix's components read, a role scale (Pods added,
# nothing replaced), and an in-place image update (the same RoleSet; only the changed role's Pods
# replaced, one at a time). Prints what stayed and what was replaced.
#
# Reads the sample from ../shared/fixtures/aibrix/ beside the checkout (AIBRIX_SAMPLES overrides).
# STORM_DEMO_NAMESPACE (default storm-demo-aibrix), STORM_DEMO_TIMEOUT (default 180 s per wait).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SAMPLES=${AIBRIX_SAMPLES:-$REPO/../shared/fixtures/aibrix}
NS=${STORM_DEMO_NAMESPACE:-storm-demo-aibrix}
TIMEOUT=${STORM_DEMO_TIMEOUT:-180}
SS=vllm-1p1d

bold() { if [[ -t 1 ]]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
step() {
	echo
	bold "==> $*"
}
show() {
	printf '$ %s\n' "$*"
	"$@"
}
die() {
	echo "demo-aibrix: error: $*" >&2
	exit 1
}
[[ -f "$SAMPLES/1p1d.yaml" ]] || die "AIBrix's samples are not at $SAMPLES (set AIBRIX_SAMPLES)"

# Pods of the StormService: name, UID, image, Ready.
pods() {
	kubectl -n "$NS" get pods -l "storm-service-name=$SS" \
		-o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid} {.spec.containers[0].image} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | sort
}
rolesets() { kubectl -n "$NS" get rolesets -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid}{"\n"}{end}' | sort; }
# Waits until every one of N Pods is Ready and the StormService is at rest on one revision (other
# than $2, when given: the update must have happened, not just not started).
wait_settled() {
	local want=$1 not=${2:-} deadline=$((SECONDS + TIMEOUT))
	while ((SECONDS < deadline)); do
		local ready phase cur upd
		ready=$(pods | awk '$4 == "True"' | wc -l)
		phase=$(kubectl -n "$NS" get stormservice "$SS" -o jsonpath='{.status.rolloutStatus.phase}')
		cur=$(kubectl -n "$NS" get stormservice "$SS" -o jsonpath='{.status.currentRevision}')
		upd=$(kubectl -n "$NS" get stormservice "$SS" -o jsonpath='{.status.updateRevision}')
		if [[ "$ready" == "$want" && ("$phase" == Healthy || "$phase" == Completed) && "$cur" == "$upd" && "$cur" != "$not" ]]; then
			return 0
		fi
		sleep 1
	done
	die "not settled after ${TIMEOUT}s: $(pods | tr '\n' ';')"
}
# Compares two `pods` listings: which Pods stayed (same UID), which were replaced, which are new.
compare() {
	local before=$1 after=$2
	while read -r name uid image ready; do
		local old
		old=$(awk -v n="$name" '$1 == n {print $2}' <<<"$before")
		if [[ -z "$old" ]]; then
			echo "  new       $name ($image)"
		elif [[ "$old" == "$uid" ]]; then
			echo "  stayed    $name ($image)"
		else
			echo "  replaced  $name ($image)"
		fi
	done <<<"$after"
}

step "Starting the local control plane, CRDs, webhook and controller (make dev-up)"
make -C "$REPO" --no-print-directory dev-up >/dev/null
eval "$("$REPO/tests/dev/dev.sh" env)"
export KUBECONFIG

step "A fresh namespace: $NS"
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
show kubectl create namespace "$NS"

step "AIBrix's sample, unchanged: prefill and decode, stateful, updateStrategy InPlaceUpdate"
show kubectl -n "$NS" apply -f "$SAMPLES/1p1d.yaml"
wait_settled 2
show kubectl -n "$NS" get stormservice,rolesets,pods,service
echo "Per-Pod DNS through the headless Service $SS (hostname.subdomain of each Pod):"
kubectl -n "$NS" get pods -o jsonpath='{range .items[*]}  {.spec.hostname}.{.spec.subdomain}.'"$NS"'.svc{"\n"}{end}'
echo "AIBrix's env, first in every container:"
kubectl -n "$NS" get pods -l role-name=prefill -o jsonpath='{range .items[0].spec.containers[0].env[0:6]}  {.name}={.value}{"\n"}{end}'

step "Scaling a role as AIBrix's autoscaler does: prefill 1 -> 2 (roles[0].replicas)"
before=$(pods)
rs_before=$(rolesets)
show kubectl -n "$NS" patch stormservice "$SS" --type json \
	-p '[{"op":"replace","path":"/spec/template/spec/roles/0/replicas","value":2}]'
wait_settled 3
compare "$before" "$(pods)"
[[ "$(rolesets)" == "$rs_before" ]] && echo "  RoleSets: the same ($(wc -l <<<"$rs_before")), no new revision" ||
	die "the RoleSets changed on a role scale"

step "An in-place update: a new env var for prefill (InPlaceUpdate: same RoleSet, prefill's Pods replaced one at a time, decode untouched)"
before=$(pods)
revision=$(kubectl -n "$NS" get stormservice "$SS" -o jsonpath='{.status.currentRevision}')
show kubectl -n "$NS" patch stormservice "$SS" --type json \
	-p '[{"op":"add","path":"/spec/template/spec/roles/0/template/spec/containers/0/env/-","value":{"name":"DEMO","value":"2"}}]'
wait_settled 3 "$revision"
compare "$before" "$(pods)"
[[ "$(rolesets)" == "$rs_before" ]] && echo "  RoleSets: the same, updated in place" ||
	die "the RoleSets changed on an in-place update"
show kubectl -n "$NS" get stormservice "$SS"

step "Done"
echo "Explore: kubectl -n $NS get pods -o wide; kubectl -n $NS describe roleset"
echo "Tear down: make dev-down && make cluster-down"
