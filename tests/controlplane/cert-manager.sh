#!/usr/bin/env bash
# Build cert-manager's controller and CA injector (what the cert-manager e2e suite runs against
# the local control plane) from the Go module proxy into a per-version cache outside the repo:
#
#   ${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/controlplane/cert-manager-<version>-<hash>/
#       controller      cert-manager's control loops (self-signed and CA issuers, certificates-*)
#       cainjector      cert-manager's CA injector (webhook configurations)
#       crds/<name>.yaml its CRDs (Certificate, CertificateRequest, Issuer, ClusterIssuer, Order,
#                        Challenge), verbatim from the module's deploy/crds
#
# cert-manager's own commands (cmd/controller, cmd/cainjector) are Go modules of their own that
# the module proxy does not serve, so the wrapper module certmanager/ next to this script holds
# two small mains around the public packages of github.com/cert-manager/cert-manager, whose
# version its committed go.mod pins. <hash> covers the wrapper's go.mod, go.sum and mains, so a
# version bump or a change to a main rebuilds into a new directory. The directory is only ever
# created by an atomic rename of a finished build; when it is complete a warm run does nothing
# and needs neither the go tool nor the network.
#
# Usage: cert-manager.sh [--print-dir]
#   (no argument)  build unless cached; prints nothing on stdout
#   --print-dir    print the cache directory (whether or not it is built yet) and exit
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD=$HERE/certmanager
CACHE_ROOT=${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}
CACHE=$CACHE_ROOT/controlplane

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	PATH=$PATH:/usr/local/go/bin
fi
# cert-manager v1.21.x declares `go 1.26.0`: the machine's Go (1.26+) builds it.
export GOTOOLCHAIN=local
# Defaults only when the caller has not chosen otherwise.
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { printf 'cert-manager.sh: %s\n' "$*" >&2; }

CM_MODULE=github.com/cert-manager/cert-manager
# Parsed from go.mod directly so a warm run never needs the go tool.
CM_VERSION=$(awk -v m="$CM_MODULE" '
	$1 == "require" && $2 == m { print $3; exit }
	$1 == m && $2 ~ /^v/ { print $2; exit }
' "$MOD/go.mod")
[[ -n $CM_VERSION ]] || { log "cannot read the $CM_MODULE version from $MOD/go.mod"; exit 1; }
SOURCES=(go.mod go.sum controller/main.go cainjector/main.go)
HASH=$(cd "$MOD" && cat "${SOURCES[@]}" | sha256sum | cut -c1-12)

CM_DIR=$CACHE/cert-manager-$CM_VERSION-$HASH
BINS=(controller cainjector)
CRDS=(cert-manager.io_certificates cert-manager.io_certificaterequests cert-manager.io_issuers
	cert-manager.io_clusterissuers acme.cert-manager.io_orders acme.cert-manager.io_challenges)

case ${1:-} in
--print-dir) echo "$CM_DIR"; exit 0 ;;
"") ;;
*) log "usage: cert-manager.sh [--print-dir]"; exit 2 ;;
esac

complete() {
	local f
	for f in "${BINS[@]}"; do [[ -x $CM_DIR/$f ]] || return 1; done
	for f in "${CRDS[@]}"; do [[ -s $CM_DIR/crds/$f.yaml ]] || return 1; done
}

# Unlocked fast path: a warm run takes no lock and runs nothing.
complete && exit 0

mkdir -p "$CACHE"
# One builder at a time per cache; the same lock as build.sh (parallel test binaries, make -j).
exec 9>"$CACHE/.build.lock"
flock 9
complete && exit 0

start=$SECONDS
tmp=$CM_DIR.tmp.$$
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp/crds"

log "building cert-manager $CM_VERSION (controller, cainjector); this takes a while"
# As cert-manager's release build sets it (make/00_mod.mk); the module proxy carries no commit.
ld="-s -w -X $CM_MODULE/pkg/util.AppVersion=$CM_VERSION"
# CGO off like upstream's release build: static binaries. Both mains in one go build, so the
# shared packages compile once.
(cd "$MOD" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ld" \
	-o "$tmp/" ./controller ./cainjector)

# The CRDs from the very module we built, taken from the module cache (verified against go.sum).
# deploy/crds holds controller-gen's output; the Helm chart's CRDs are the same documents
# wrapped in templating and labels.
src=$(cd "$MOD" && go list -mod=readonly -m -f '{{.Dir}}' "$CM_MODULE")
[[ -n $src && -d $src/deploy/crds ]] || { log "no deploy/crds in $CM_MODULE@$CM_VERSION ($src)"; exit 1; }
for f in "${CRDS[@]}"; do
	install -m 0644 "$src/deploy/crds/$f.yaml" "$tmp/crds/$f.yaml"
	grep -q '^kind: CustomResourceDefinition$' "$tmp/crds/$f.yaml" ||
		{ log "$src/deploy/crds/$f.yaml is not a CustomResourceDefinition"; exit 1; }
done

rm -rf "$CM_DIR" && mv "$tmp" "$CM_DIR"
trap - EXIT
log "done in $((SECONDS - start))s: $CM_DIR ($(du -sh "$CM_DIR" | cut -f1))"
