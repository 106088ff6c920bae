#!/usr/bin/env bash
# debian-package.sh COMMAND [PACKAGE]: installs Debian's PACKAGE (default: COMMAND) unless COMMAND is
# on PATH already. Used by `make test` (Prometheus for the analysis suites) and the benchmarks (wrk),
# so a fresh machine needs nothing installed by hand. Root or sudo; apt's index is refreshed only
# when the first try fails.
set -euo pipefail
cmd=${1:?usage: debian-package.sh COMMAND [PACKAGE]}
pkg=${2:-$cmd}
command -v "$cmd" >/dev/null && exit 0
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "installing $pkg (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y "$pkg" >/dev/null 2>&1 ||
	{ $sudo apt-get update >/dev/null && $sudo apt-get install -y "$pkg" >/dev/null; } ||
	{
		echo "could not install $pkg: run 'apt-get install -y $pkg' (or put $cmd on PATH)" >&2
		exit 1
	}
command -v "$cmd" >/dev/null || { echo "$pkg installed but $cmd is not on PATH" >&2; exit 1; }
