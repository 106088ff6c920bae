#!/usr/bin/env bash
# Build Helm (the client the chart suite installs, upgrades and uninstalls the chart with) from the
# Go module proxy into a per-version cache outside the repository:
#
#   ${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/tools/helm-<version>/helm
#
# The directory is only ever created by an atomic rename of a finished build, so a warm run does
# nothing and needs neither the go tool nor the network. helm.sh/helm/v3 has no replace
# directives, so `go install module@version` builds it from its own go.mod and go.sum, checked
# against the checksum database like any module download.
#
# Usage: helm.sh [--print]
#   (no argument)  build unless cached; prints nothing on stdout
#   --print        build unless cached, then print the binary's path
set -euo pipefail

HELM_VERSION=v3.22.0
CACHE=${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/tools
DIR=$CACHE/helm-$HELM_VERSION

log() { printf 'helm.sh: %s\n' "$*" >&2; }

case ${1:-} in
--print | "") ;;
*) log "usage: helm.sh [--print]"; exit 2 ;;
esac

if [[ ! -x $DIR/helm ]]; then
	if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
		PATH=$PATH:/usr/local/go/bin
	fi
	command -v go >/dev/null || { log "building Helm needs the go tool"; exit 1; }
	export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
	export GOFLAGS=${GOFLAGS:--buildvcs=false}
	mkdir -p "$CACHE"
	# One builder at a time (parallel test binaries, make -j).
	exec 9>"$CACHE/.helm.lock"
	flock 9
	if [[ ! -x $DIR/helm ]]; then
		start=$SECONDS
		tmp=$DIR.tmp.$$
		trap 'rm -rf "$tmp"' EXIT
		rm -rf "$tmp" && mkdir -p "$tmp"
		log "building helm $HELM_VERSION from the Go module proxy; this takes a few minutes once"
		# As upstream's release build: static, stripped, the version stamped in.
		CGO_ENABLED=0 GOBIN=$tmp go install -trimpath \
			-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
			"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
		"$tmp/helm" version --short | grep -q "^$HELM_VERSION" ||
			{ log "the built helm reports $("$tmp/helm" version --short), not $HELM_VERSION"; exit 1; }
		rm -rf "$DIR" && mv "$tmp" "$DIR"
		trap - EXIT
		log "done in $((SECONDS - start))s: $DIR/helm"
	fi
fi
[[ ${1:-} == --print ]] && echo "$DIR/helm"
exit 0
