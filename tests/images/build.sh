#!/usr/bin/env bash
# build.sh (`make images`): OCI images of storm-webhook and storm-controller, built without a Docker
# daemon from the release binaries `cargo build --release` leaves in target/release, then checked:
# each image is unpacked afresh and its ENTRYPOINT, read back from the image config, is run with
# `--version` by runc (or, where runc cannot run, chrooted into the unpacked root filesystem as the
# image's user). The images' Dockerfiles must describe the same image: the script compares them.
#
# Out: target/images/oci (an OCI layout, tags storm-webhook:VERSION and storm-controller:VERSION)
# and target/images/sizes.json. Copy an image to a registry with
#   skopeo copy oci:target/images/oci:storm-webhook:VERSION docker://REGISTRY/storm-webhook:VERSION
# Needs root (umoci keeps file ownership, runc); installs Debian's umoci and runc if missing.
# STORM_IMAGES_RUNTIME=chroot skips runc (the check then chroots, as where runc cannot run).
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
out=target/images
layout=$out/oci
work=$out/work
cache=${STORM_CACHE_DIR:-$HOME/.cache/storm-rollouts}/images
images=(storm-webhook storm-controller)
# What the image configs say; each Dockerfile's final stage must say the same (checked below).
user=65532:65532
workdir=/home/nonroot
env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "  ok    $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $*"; }
# The summary line CI counts, also when a step before the checks stops the script.
summary() {
	local rc=$?
	((rc == 0 || failed > 0)) || failed=1
	echo "images: $passed passed, $failed failed"
	((failed == 0)) || exit 1
}
trap summary EXIT

[[ $(id -u) -eq 0 ]] || { echo "images: needs root (umoci keeps file ownership; runc): run it with sudo" >&2; exit 1; }

tests/tools/debian-package.sh jq
# Each image is tagged with its crate's version (Cargo.toml).
declare -A version
metadata=$(cargo metadata --no-deps --format-version 1)
for name in "${images[@]}"; do
	version[$name]=$(jq -r --arg n "$name" '.packages[] | select(.name == $n) | .version' <<<"$metadata")
done

# One cargo invocation for both: their dependencies (kube, rustls, tokio, ...) are compiled once,
# with the features the two need together. That halves a cold build (CI builds no other release
# binaries); the images hold exactly what this build leaves in target/release.
cargo build --release --locked --quiet "${images[@]/#/--bin=}"
tests/tools/debian-package.sh umoci
tests/tools/debian-package.sh runc

echo "images: base root filesystem from $(sed 's/#.*//' images/base-packages.txt | xargs)"
rm -rf "$layout" "$work"
mkdir -p "$work"
umoci init --layout "$layout"
umoci new --image "$layout:base"
umoci unpack --image "$layout:base" "$work/base" >/dev/null
images/rootfs.sh "$work/base/rootfs" "$cache/debs"
umoci repack --image "$layout:base" \
	--history.created_by "images/rootfs.sh (the packages of images/base-packages.txt, images/etc)" "$work/base"

config_args=(--os linux --architecture "$(dpkg --print-architecture)" --config.user "$user"
	--config.workingdir "$workdir" --clear config.env --clear config.cmd --no-history)
for e in "${env[@]}"; do config_args+=(--config.env "$e"); done
for name in "${images[@]}"; do
	umoci insert --image "$layout:base" --tag "$name:${version[$name]}" \
		--history.created_by "COPY target/release/$name /usr/local/bin/$name" \
		"target/release/$name" "/usr/local/bin/$name"
	umoci config --image "$layout:$name:${version[$name]}" "${config_args[@]}" \
		--config.entrypoint "/usr/local/bin/$name" \
		--config.label "org.opencontainers.image.title=$name" \
		--config.label "org.opencontainers.image.version=${version[$name]}"
done
umoci rm --image "$layout:base"
umoci gc --layout "$layout"
echo "images: built $layout in $((SECONDS - start)) s"

# blob FILE-OR-DIGEST: the path of a blob of the layout.
blob() { echo "$layout/blobs/sha256/${1#sha256:}"; }
manifest_of() { blob "$(jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$layout/index.json")"; }

# dockerfile_says NAME: the image config the final stage of NAME's Dockerfile describes, as the
# same JSON `jq .config` gives for the built image (ENTRYPOINT in exec form, one ENV or LABEL pair
# per instruction, ${VERSION} from the stage's ARG default).
dockerfile_says() {
	local file=$1 stage
	stage=$(awk '/^FROM /{s=""} {s=s $0 "\n"} END{printf "%s", s}' "$file")
	local arg_version
	arg_version=$(sed -n 's/^ARG VERSION=//p' <<<"$stage")
	jq -n --arg stage "$stage" --arg v "$arg_version" '
		($stage | split("\n") | map(select(test("^[A-Z]+ ")))) as $lines
		| def args($i): $lines | map(select(startswith($i + " ")) | sub("^[A-Z]+ "; ""));
		{
			Entrypoint: (args("ENTRYPOINT") | last | fromjson),
			User: (args("USER") | last),
			WorkingDir: (args("WORKDIR") | last),
			Env: (args("ENV") | sort),
			Labels: (args("LABEL") | map(gsub("\\$\\{VERSION\\}"; $v) | gsub("\""; "") | split("=")
				| {key: .[0], value: (.[1:] | join("="))}) | from_entries)
		}'
}

echo "images: checks"
sizes='[]'
for name in "${images[@]}"; do
	tag=$name:${version[$name]}
	manifest=$(manifest_of "$tag")
	config=$(blob "$(jq -r .config.digest "$manifest")")
	bundle=$work/check-$name
	rm -rf "$bundle"
	umoci unpack --image "$layout:$tag" "$bundle" >/dev/null
	rootfs=$bundle/rootfs

	# The same bytes CI tests, not a rebuild.
	if cmp -s "target/release/$name" "$rootfs/usr/local/bin/$name"; then
		pass "$tag holds target/release/$name byte for byte"
	else
		fail "$tag: /usr/local/bin/$name differs from target/release/$name"
	fi

	mapfile -t entrypoint < <(jq -r '.config.Entrypoint[]' "$config")
	expected="$name ${version[$name]}"
	host=$("target/release/$name" --version)
	[[ $host == "$expected" ]] || fail "target/release/$name --version says '$host', Cargo.toml ${version[$name]}"
	jq --argjson args "$(jq -c '.config.Entrypoint + ["--version"]' "$config")" \
		'.process.args = $args | .process.terminal = false' "$bundle/config.json" >"$bundle/config.json.new"
	mv "$bundle/config.json.new" "$bundle/config.json"
	id=storm-images-$name-$$
	how="runc"
	got=""
	if [[ ${STORM_IMAGES_RUNTIME:-runc} != runc ]] ||
		! got=$(timeout 60 runc --root "$work/runc" run --bundle "$bundle" "$id" 2>&1); then
		if [[ -n $got ]]; then
			runc --root "$work/runc" delete --force "$id" >/dev/null 2>&1 || true
			echo "  runc: $got; trying a chroot into the unpacked root filesystem"
		fi
		how="chroot as $(jq -r .config.User "$config")"
		uid=$(jq -r '.config.User | split(":")[0]' "$config")
		gid=$(jq -r '.config.User | split(":")[1]' "$config")
		got=$(timeout 60 unshare --root="$rootfs" --wd="$(jq -r .config.WorkingDir "$config")" \
			--setgid "$gid" --setuid "$uid" -- "${entrypoint[@]}" --version 2>&1) || true
	fi
	if [[ $got == "$expected" && $got == "$host" ]]; then
		pass "$tag: ENTRYPOINT ${entrypoint[*]} --version prints '$got' ($how)"
	else
		fail "$tag: ENTRYPOINT ${entrypoint[*]} --version printed '$got' ($how), expected '$expected'"
	fi

	if grep -q '^nonroot:x:65532:65532:' "$rootfs/etc/passwd" &&
		[[ $(stat -c %u:%g "$rootfs$workdir") == "$user" ]] &&
		(($(grep -c 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt") > 100)); then
		pass "$tag: user nonroot 65532 owns $workdir; $(grep -c 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt") CA certificates"
	else
		fail "$tag: /etc/passwd, $workdir or the CA bundle is not as images/rootfs.sh makes them"
	fi

	dockerfile=${name#storm-}/Dockerfile
	says=$(dockerfile_says "$dockerfile" 2>&1) || says="unreadable: $says"
	built=$(jq '.config | {Entrypoint, User, WorkingDir, Env: (.Env | sort), Labels}' "$config")
	if [[ $(jq -S . <<<"$says" 2>/dev/null) == "$(jq -S . <<<"$built")" ]] &&
		grep -q "^COPY --from=build /src/target/release/$name ${entrypoint[0]}\$" "$dockerfile" &&
		grep -q 'images/rootfs.sh /rootfs' "$dockerfile"; then
		pass "$dockerfile describes $tag (base from images/rootfs.sh, ENTRYPOINT, USER, WORKDIR, ENV, LABEL)"
	else
		fail "$dockerfile does not describe $tag: it says $(jq -c . <<<"$says" 2>/dev/null || echo "$says"), the image $(jq -c . <<<"$built")"
	fi

	sizes=$(jq --arg name "$name" --arg tag "$tag" --arg how "$how" \
		--argjson rootfs "$(du -sb "$rootfs" | cut -f1)" \
		--argjson binary "$(stat -c %s "target/release/$name")" \
		--argjson manifest_bytes "$(stat -c %s "$manifest")" \
		--slurpfile m "$manifest" \
		'. + [{name: $name, tag: $tag, checked_with: $how,
			layers_compressed_bytes: [$m[0].layers[].size],
			image_bytes: (([$m[0].layers[].size] | add) + $m[0].config.size + $manifest_bytes),
			rootfs_bytes: $rootfs, binary_bytes: $binary}]' <<<"$sizes")
	rm -rf "$bundle"
done

packages=$(jq -R -s 'split("\n") | map(select(startswith("Package: ") or startswith("Version: ")) | sub("^[A-Za-z]+: "; ""))
	| [range(0; length; 2) as $i | "\(.[$i])=\(.[$i + 1])"]' \
	<(cat "$work/base/rootfs/var/lib/dpkg/status.d/"*))
jq -n --argjson images "$sizes" --argjson packages "$packages" \
	--argjson layout "$(du -sb "$layout/blobs" | cut -f1)" \
	'{images: $images, layout_blobs_bytes: $layout, base_packages: $packages}' >"$out/sizes.json"
rm -rf "$work"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "images: sizes ($out/sizes.json; base layer shared: the layout holds it once)"
while read -r name image base binlayer rootfs binary; do
	printf '  %-26s image %s (base layer %s + binary layer %s), unpacked %s (binary %s)\n' "$name" \
		"$(mib "$image")" "$(mib "$base")" "$(mib "$binlayer")" "$(mib "$rootfs")" "$(mib "$binary")"
done < <(jq -r '.images[] | [.tag, .image_bytes, .layers_compressed_bytes[0], .layers_compressed_bytes[1], .rootfs_bytes, .binary_bytes] | @tsv' "$out/sizes.json")
echo "  layout $layout: $(mib "$(jq .layout_blobs_bytes "$out/sizes.json")") for both; base: $(jq -r '.base_packages | join(" ")' "$out/sizes.json")"
echo "images: done in $((SECONDS - start)) s"
