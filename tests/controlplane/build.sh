#!/usr/bin/env bash
# Build the local control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok) from the Go module proxy into a per-version cache outside the repo:
#
#   ${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/controlplane/<component>-<version>/
#
# Versions come from the committed go.mod of the wrapper modules next to this script
# (kube/, etcd/, kwok/), so bumping a version there rebuilds into a new directory. A
# component whose directory is complete is not rebuilt: a warm run does nothing.
#
# Usage: build.sh [--print-dirs] [kubernetes|etcd|kwok ...]   (default: all)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}
CACHE=$CACHE_ROOT/controlplane

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
export GOTOOLCHAIN=local
# Defaults only when the caller has not chosen otherwise.
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { printf 'build.sh: %s\n' "$*" >&2; }

# module_version <wrapper dir> <module path>: the version pinned in the wrapper's go.mod.
# Parsed from go.mod directly so a warm run never needs the go tool.
module_version() {
	awk -v m="$2" '
		$1 == "require" && $2 == m { print $3; exit }
		$1 == m && $2 ~ /^v/ { print $2; exit }
	' "$HERE/$1/go.mod"
}

KUBE_VERSION=$(module_version kube k8s.io/kubernetes)
ETCD_VERSION=$(module_version etcd go.etcd.io/etcd/server/v3)
KWOK_VERSION=$(module_version kwok sigs.k8s.io/kwok)
for v in KUBE_VERSION ETCD_VERSION KWOK_VERSION; do
	[[ -n ${!v} ]] || { log "cannot read $v from go.mod"; exit 1; }
done

KUBE_DIR=$CACHE/kubernetes-$KUBE_VERSION
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
KWOK_DIR=$CACHE/kwok-$KWOK_VERSION

if [[ ${1:-} == --print-dirs ]]; then
	printf 'KUBE_VERSION=%s\nETCD_VERSION=%s\nKWOK_VERSION=%s\n' "$KUBE_VERSION" "$ETCD_VERSION" "$KWOK_VERSION"
	printf 'KUBE_DIR=%s\nETCD_DIR=%s\nKWOK_DIR=%s\n' "$KUBE_DIR" "$ETCD_DIR" "$KWOK_DIR"
	exit 0
fi

# complete <dir> <file>...: every file is present (the directory is only ever created by an
# atomic rename of a finished build, the check just guards against manual tampering).
complete() {
	local dir=$1 f
	shift
	for f in "$@"; do [[ -s $dir/$f ]] || return 1; done
}

# go_build <wrapper dir> <out dir> <ldflags> <package>...
go_build() {
	local mod=$1 out=$2 ldflags=$3
	shift 3
	(cd "$HERE/$mod" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$out" "$@")
}

build_kubernetes() {
	local bins=(kube-apiserver kube-controller-manager kube-scheduler)
	complete "$KUBE_DIR" "${bins[@]}" && return 0
	local minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	# The module proxy does not carry the git commit; the build date is the release's module
	# time when available so `kubectl version` is stable between machines.
	local commit=${STORM_KUBE_GIT_COMMIT:-0000000000000000000000000000000000000000}
	local date=${STORM_KUBE_BUILD_DATE:-1970-01-01T00:00:00Z}
	local info
	info=$(cd "$HERE/kube" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" 2>/dev/null | awk -F'"' '$2 == "Time" { print $4; exit }') || true
	[[ -n ${info:-} && -z ${STORM_KUBE_BUILD_DATE:-} ]] && date=$info
	local ld="-s -w" pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
	done
	local tmp=$KUBE_DIR.tmp.$$
	rm -rf "$tmp" && mkdir -p "$tmp"
	log "building kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler); this takes a while"
	go_build kube "$tmp/" "$ld" "${bins[@]/#/k8s.io/kubernetes/cmd/}"
	rm -rf "$KUBE_DIR" && mv "$tmp" "$KUBE_DIR"
}

build_etcd() {
	complete "$ETCD_DIR" etcd && return 0
	local tmp=$ETCD_DIR.tmp.$$
	rm -rf "$tmp" && mkdir -p "$tmp"
	log "building etcd $ETCD_VERSION"
	go_build etcd "$tmp/etcd" "-s -w" go.etcd.io/etcd/server/v3
	rm -rf "$ETCD_DIR" && mv "$tmp" "$ETCD_DIR"
}

build_kwok() {
	complete "$KWOK_DIR" kwok stages/pod-ready.yaml && return 0
	local tmp=$KWOK_DIR.tmp.$$
	rm -rf "$tmp" && mkdir -p "$tmp/stages"
	log "building kwok $KWOK_VERSION"
	go_build kwok "$tmp/kwok" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" sigs.k8s.io/kwok/cmd/kwok
	# The stock "fast" stage set (node-initialize, node heartbeat with lease, pod ready/complete/
	# delete) from the very module we built, taken from the module cache.
	local src
	src=$(cd "$HERE/kwok" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kwok)
	local f
	for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
		pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
		install -m 0644 "$src/kustomize/stage/$f" "$tmp/stages/$(basename "$f")"
	done
	# Copied verbatim. Our own extra stages stay in the repo (tests/controlplane/stages) and
	# cluster.sh excludes their labels from the stock pod-ready stage at start.
	rm -rf "$KWOK_DIR" && mv "$tmp" "$KWOK_DIR"
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(etcd kwok kubernetes)

mkdir -p "$CACHE"
# One builder at a time per cache (parallel test binaries, make -j).
exec 9>"$CACHE/.build.lock"
flock 9

start=$SECONDS
for c in "${components[@]}"; do
	case $c in
	kubernetes | kube) build_kubernetes ;;
	etcd) build_etcd ;;
	kwok) build_kwok ;;
	*) log "unknown component: $c"; exit 2 ;;
	esac
done
if ((SECONDS - start > 2)); then
	log "done in $((SECONDS - start))s; cache: $CACHE ($(du -sh "$CACHE" | cut -f1))"
fi
