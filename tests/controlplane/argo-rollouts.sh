#!/usr/bin/env bash
# Build the Argo Rollouts controller (the reference implementation the comparison suites run
# against) from the Go module proxy into a per-version cache outside the repo:
#
#   ${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/controlplane/argo-rollouts-<version>/
#       rollouts-controller     the controller binary
#       crds/<name>.yaml        its CRDs (Rollout, Experiment, AnalysisRun, AnalysisTemplate,
#                               ClusterAnalysisTemplate), verbatim from the module's manifests/crds
#
# The version comes from the committed go.mod of the wrapper module argo/ next to this script,
# so bumping it there rebuilds into a new directory. The directory is only ever created by an
# atomic rename of a finished build; when it is complete a warm run does nothing and needs
# neither the go tool nor the network.
#
# argo-rollouts v1.10.x declares `go 1.26.10`, newer than the Go on our machines, so the build
# uses the Go toolchain go1.27.3, which the go command takes from the Go module proxy on first
# use (about 76 MB, once per machine).
#
# Usage: argo-rollouts.sh [--print-dir]
#   (no argument)  build unless cached; prints nothing on stdout
#   --print-dir    print the cache directory (whether or not it is built yet) and exit
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD=$HERE/argo
CACHE_ROOT=${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}
CACHE=$CACHE_ROOT/controlplane

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
export GOTOOLCHAIN=go1.27.3
# Defaults only when the caller has not chosen otherwise.
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { printf 'argo-rollouts.sh: %s\n' "$*" >&2; }

ARGO_MODULE=github.com/argoproj/argo-rollouts
# Parsed from go.mod directly so a warm run never needs the go tool.
ARGO_VERSION=$(awk -v m="$ARGO_MODULE" '
	$1 == "require" && $2 == m { print $3; exit }
	$1 == m && $2 ~ /^v/ { print $2; exit }
' "$MOD/go.mod")
[[ -n $ARGO_VERSION ]] || { log "cannot read the $ARGO_MODULE version from $MOD/go.mod"; exit 1; }

ARGO_DIR=$CACHE/argo-rollouts-$ARGO_VERSION
ARGO_CRDS=(rollout-crd experiment-crd analysis-run-crd analysis-template-crd cluster-analysis-template-crd)

case ${1:-} in
--print-dir) echo "$ARGO_DIR"; exit 0 ;;
"") ;;
*) log "usage: argo-rollouts.sh [--print-dir]"; exit 2 ;;
esac

complete() {
	local f
	[[ -x $ARGO_DIR/rollouts-controller ]] || return 1
	for f in "${ARGO_CRDS[@]}"; do [[ -s $ARGO_DIR/crds/$f.yaml ]] || return 1; done
}

# Unlocked fast path: a warm run takes no lock and runs nothing.
complete && exit 0

mkdir -p "$CACHE"
# One builder at a time per cache; the same lock as build.sh (parallel test binaries, make -j).
exec 9>"$CACHE/.build.lock"
flock 9
complete && exit 0

start=$SECONDS
tmp=$ARGO_DIR.tmp.$$
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp/crds"

log "building argo-rollouts $ARGO_VERSION (rollouts-controller, Go toolchain $GOTOOLCHAIN); this takes a while"
# The module proxy carries no git commit. With a commit, a tag and a clean tree the version
# package reports the tag, as a release build does (its Makefile's own -X for gitTag names the
# wrong package, so upstream binaries report v<version>+<commit>).
ver=github.com/argoproj/argo-rollouts/utils/version
ld="-s -w -X $ver.version=${ARGO_VERSION#v} -X $ver.gitTag=$ARGO_VERSION"
ld+=" -X $ver.gitCommit=${STORM_ARGO_GIT_COMMIT:-0000000000000000000000000000000000000000}"
ld+=" -X $ver.gitTreeState=clean"
date=$(cd "$MOD" && go mod download -json "$ARGO_MODULE@$ARGO_VERSION" 2>/dev/null |
	awk -F'"' '$2 == "Time" { print $4; exit }') || true
ld+=" -X $ver.buildDate=${STORM_ARGO_BUILD_DATE:-${date:-1970-01-01T00:00:00Z}}"
# CGO off like upstream's release build: a static binary.
(cd "$MOD" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ld" \
	-o "$tmp/rollouts-controller" "$ARGO_MODULE/cmd/rollouts-controller")

# The CRDs from the very module we built, taken from the module cache (verified against go.sum).
src=$(cd "$MOD" && go list -mod=readonly -m -f '{{.Dir}}' "$ARGO_MODULE")
[[ -n $src && -d $src/manifests/crds ]] || { log "no manifests/crds in $ARGO_MODULE@$ARGO_VERSION ($src)"; exit 1; }
for f in "${ARGO_CRDS[@]}"; do
	install -m 0644 "$src/manifests/crds/$f.yaml" "$tmp/crds/$f.yaml"
	grep -q '^kind: CustomResourceDefinition$' "$tmp/crds/$f.yaml" ||
		{ log "$src/manifests/crds/$f.yaml is not a CustomResourceDefinition"; exit 1; }
done

rm -rf "$ARGO_DIR" && mv "$tmp" "$ARGO_DIR"
trap - EXIT
log "done in $((SECONDS - start))s: $ARGO_DIR ($(du -sh "$ARGO_DIR" | cut -f1))"
