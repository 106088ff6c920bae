#!/usr/bin/env bash
# rootfs.sh ROOTFS DEBDIR: the images' base root filesystem, made in ROOTFS from the Debian packages
# of base-packages.txt (downloaded into DEBDIR with apt-get unless already there with the right
# hash) plus etc/ of this directory. Like distroless: no shell, no package manager, a `nonroot`
# user (65532) with its home, and the packages recorded in /var/lib/dpkg/status.d/ for scanners.
# Both Dockerfiles run it in a debian:bookworm-slim stage and tests/images/build.sh runs it on the
# host, so the two builds cannot disagree on what the base holds. Needs root (file ownership).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rootfs=${1:?usage: rootfs.sh ROOTFS DEBDIR}
debdir=${2:?usage: rootfs.sh ROOTFS DEBDIR}

mapfile -t packages < <(sed 's/#.*//' "$here/base-packages.txt" | xargs -n1)
mkdir -p "$debdir"
apt_opts=()
# apt drops to its _apt user to download; it cannot write a root-only cache directory.
[[ $(id -u) -ne 0 ]] || apt_opts=(-o APT::Sandbox::User=root)

# Each line: 'URI' FILE SIZE SHA256:HASH, for the versions apt's index holds now.
uris=$(apt-get download --print-uris "${packages[@]}" 2>/dev/null) || {
	apt-get update >/dev/null
	uris=$(apt-get download --print-uris "${packages[@]}")
}
debs=()
missing=()
while read -r _ file _ hash; do
	debs+=("$debdir/$file")
	if ! echo "${hash#SHA256:}  $debdir/$file" | sha256sum --check --status 2>/dev/null; then
		missing+=("${file%%_*}")
	fi
done <<<"$uris"
if ((${#missing[@]})); then
	(cd "$debdir" && apt-get "${apt_opts[@]}" download "${missing[@]}" >/dev/null) || {
		apt-get update >/dev/null
		(cd "$debdir" && apt-get "${apt_opts[@]}" download "${missing[@]}" >/dev/null)
	}
fi
while read -r _ file _ hash; do
	echo "${hash#SHA256:}  $debdir/$file" | sha256sum --check --status ||
		{ echo "rootfs.sh: $file does not have the hash apt's index gives" >&2; exit 1; }
done <<<"$uris"

rm -rf "$rootfs"
mkdir -p "$rootfs/var/lib/dpkg/status.d"
for deb in "${debs[@]}"; do
	dpkg-deb --extract "$deb" "$rootfs"
	# What dpkg's status would say, one file a package (distroless's layout, read by Trivy and Syft).
	{ dpkg-deb --field "$deb"; echo "Status: install ok installed"; } \
		>"$rootfs/var/lib/dpkg/status.d/$(dpkg-deb --field "$deb" Package)"
done
cp -r "$here/etc/." "$rootfs/etc/"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
# The bundle update-ca-certificates would write on install: every certificate the package ships.
mkdir -p "$rootfs/etc/ssl/certs"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z |
	xargs -0 awk 1 >"$rootfs/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/home/nonroot" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot"
chmod 0700 "$rootfs/home/nonroot"
