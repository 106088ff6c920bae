#!/usr/bin/env bash
# Third-party CRDs the e2e suites install: Istio VirtualService and DestinationRule, Gateway
# API HTTPRoute, SMI TrafficSplit and the coscheduling PodGroup, each as its project publishes
# it. The modules are pinned in thirdparty/go.mod + go.sum; `go mod download` fetches (and
# verifies against go.sum) the module zips from the Go module proxy, and the CRD documents
# we need are copied into a per-version cache outside the repo, built once per machine:
#
#   ${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/thirdparty-crds/<name>-<version>/<crd>.yaml
#
# A complete cache directory is never rebuilt, so a warm run needs neither the go tool nor
# the network. Prints the CRD files, one path a line (what Cluster::install_thirdparty_crds
# applies).
#
# Usage: thirdparty-crds.sh [--print-dirs]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD=$HERE/thirdparty
CACHE_ROOT=${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}
CACHE=$CACHE_ROOT/thirdparty-crds

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
export GOTOOLCHAIN=local
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}

log() { printf 'thirdparty-crds.sh: %s\n' "$*" >&2; }

# module_version <module path>: the version pinned in thirdparty/go.mod (parsed directly so a
# warm run never needs the go tool).
module_version() {
	awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$MOD/go.mod"
}

ISTIO_VERSION=$(module_version istio.io/api)
GATEWAY_VERSION=$(module_version sigs.k8s.io/gateway-api)
OSM_VERSION=$(module_version github.com/openservicemesh/osm)
SCHED_VERSION=$(module_version sigs.k8s.io/scheduler-plugins)
for v in ISTIO_VERSION GATEWAY_VERSION OSM_VERSION SCHED_VERSION; do
	[[ -n ${!v} ]] || { log "cannot read $v from $MOD/go.mod"; exit 1; }
done

ISTIO_DIR=$CACHE/istio-$ISTIO_VERSION
GATEWAY_DIR=$CACHE/gateway-api-$GATEWAY_VERSION
SMI_DIR=$CACHE/smi-osm-$OSM_VERSION
SCHED_DIR=$CACHE/scheduler-plugins-$SCHED_VERSION

ISTIO_CRDS=(virtualservices.networking.istio.io destinationrules.networking.istio.io)
GATEWAY_CRDS=(httproutes.gateway.networking.k8s.io)
SMI_CRDS=(trafficsplits.split.smi-spec.io)
SCHED_CRDS=(podgroups.scheduling.x-k8s.io)

if [[ ${1:-} == --print-dirs ]]; then
	printf 'ISTIO_DIR=%s\nGATEWAY_DIR=%s\nSMI_DIR=%s\nSCHED_DIR=%s\n' "$ISTIO_DIR" "$GATEWAY_DIR" "$SMI_DIR" "$SCHED_DIR"
	exit 0
fi

complete() {
	local dir=$1 crd
	shift
	for crd in "$@"; do [[ -s $dir/$crd.yaml ]] || return 1; done
}

# module_dir <module path> <version>: download (verified against go.sum) and print its directory.
module_dir() {
	local json dir
	json=$(cd "$MOD" && go mod download -json "$1@$2") || { log "go mod download $1@$2 failed"; return 1; }
	dir=$(awk -F'"' '$2 == "Dir" { print $4; exit }' <<<"$json")
	[[ -n $dir && -d $dir ]] || { log "go mod download $1@$2 gave no directory: $json"; return 1; }
	echo "$dir"
}

# extract <multi-document file> <crd name> <out file>: the one YAML document whose
# metadata.name is <crd name>, verbatim.
extract() {
	awk -v want="$2" '
		function flush() { if (doc != "" && found) { printf "%s", doc; n++ } doc = ""; found = 0 }
		/^---[[:space:]]*$/ { flush(); next }
		{ doc = doc $0 "\n" }
		$0 == "  name: " want { found = 1 }
		END { flush(); if (n != 1) exit 1 }
	' "$1" >"$3" || { log "expected exactly one CRD $2 in $1"; return 1; }
	grep -q '^kind: CustomResourceDefinition$' "$3" || { log "$2 in $1 is not a CustomResourceDefinition"; return 1; }
	grep -q '^apiVersion: apiextensions.k8s.io/v1$' "$3" || { log "$2 in $1 is not apiextensions.k8s.io/v1"; return 1; }
}

# build <cache dir> <module> <version> <file in module> <crd>...
build() {
	local dir=$1 module=$2 version=$3 file=$4
	shift 4
	complete "$dir" "$@" && return 0
	log "extracting $* from $module@$version"
	local src tmp=$dir.tmp.$$ crd
	src=$(module_dir "$module" "$version")
	rm -rf "$tmp" && mkdir -p "$tmp"
	for crd in "$@"; do extract "$src/$file" "$crd" "$tmp/$crd.yaml"; done
	rm -rf "$dir" && mv "$tmp" "$dir"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9

build "$ISTIO_DIR" istio.io/api "$ISTIO_VERSION" kubernetes/customresourcedefinitions.gen.yaml "${ISTIO_CRDS[@]}"
build "$GATEWAY_DIR" sigs.k8s.io/gateway-api "$GATEWAY_VERSION" \
	config/crd/standard/gateway.networking.k8s.io_httproutes.yaml "${GATEWAY_CRDS[@]}"
build "$SMI_DIR" github.com/openservicemesh/osm "$OSM_VERSION" \
	cmd/osm-bootstrap/crds/smi_traffic_split.yaml "${SMI_CRDS[@]}"
build "$SCHED_DIR" sigs.k8s.io/scheduler-plugins "$SCHED_VERSION" \
	config/crd/bases/scheduling.x-k8s.io_podgroups.yaml "${SCHED_CRDS[@]}"

for crd in "${ISTIO_CRDS[@]}"; do echo "$ISTIO_DIR/$crd.yaml"; done
for crd in "${GATEWAY_CRDS[@]}"; do echo "$GATEWAY_DIR/$crd.yaml"; done
for crd in "${SMI_CRDS[@]}"; do echo "$SMI_DIR/$crd.yaml"; done
for crd in "${SCHED_CRDS[@]}"; do echo "$SCHED_DIR/$crd.yaml"; done
