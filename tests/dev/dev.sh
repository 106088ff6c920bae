#!/usr/bin/env bash
# Development stack on the local control plane: CRDs, the product's binaries as background
# processes on free loopback ports, and the webhook registered in URL mode with a generated CA.
#
#   dev.sh up       start the control plane if needed, install CRDs, (re)build and start the webhook
#                   unless the same binary already runs and is ready, register the webhook configurations
#   dev.sh down     delete the webhook configurations and stop what `up` started (by PID)
#   dev.sh status   PIDs, ports, readiness
#   dev.sh env      print exports for KUBECONFIG and the webhook's address
#   dev.sh kubeconfig controller|webhook
#                   apply that component's ServiceAccount and RBAC exactly as manifests/ ship them and
#                   print the path of a kubeconfig that authenticates as it (what `up` runs it with)
#
# State: ${STORM_DEV_DIR:-<repo>/.storm/dev} (certificates, PIDs, ports, logs); with a non-default
# STORM_CLUSTER_DIR it defaults to "$STORM_CLUSTER_DIR.dev", so each cluster has its own stack.
# STORM_WEBHOOK_BIN / STORM_CONTROLLER_BIN: use these binaries instead of building them.
#
# Components are started by start_component/stop_component; a second binary (the controller) gets a
# start_<name> function and an entry in COMPONENTS.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLUSTER_DIR=${STORM_CLUSTER_DIR:-$REPO/.storm/cluster}
if [[ -n ${STORM_DEV_DIR:-} ]]; then
	DEV=$STORM_DEV_DIR
elif [[ -n ${STORM_CLUSTER_DIR:-} ]]; then
	DEV=$STORM_CLUSTER_DIR.dev
else
	DEV=$REPO/.storm/dev
fi
KUBECONFIG_PATH=$CLUSTER_DIR/kubeconfig
CERTS=$DEV/certs
# STORM_DEV_COMPONENTS: which components `up` starts (default both). The controller watches every
# namespace, so suites that run their own namespace-scoped controllers start only the webhook.
ALL_COMPONENTS=(webhook controller)
read -r -a COMPONENTS <<<"${STORM_DEV_COMPONENTS:-${ALL_COMPONENTS[*]}}"
READY_TIMEOUT=${STORM_DEV_TIMEOUT:-90}

log() { printf 'dev.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
kubectl_dev() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# ---------------------------------------------------------------------------- processes

pid_of() { [[ -s $DEV/$1.pid ]] && cat "$DEV/$1.pid"; }

# alive <name>: the recorded PID runs, is not a zombie, and is ours (the dev dir is on its command
# line), so a recycled PID is never mistaken for it.
alive() {
	local pid
	pid=$(pid_of "$1") || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DEV/" || return 1
	[[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

# stamp <binary>: identifies a build, so `up` restarts a component whose binary was rebuilt.
stamp() { stat -c '%s %Y' "$1"; }

# sa_kubeconfig <controller|webhook>: the component's ServiceAccount, ClusterRole and bindings from
# manifests/<component> (re-applied every time, so a changed manifest takes effect), and a
# kubeconfig authenticating as storm-<component> with a 24 h token (renewed after 12 h, or when the
# API server no longer accepts it). The binaries never run with the admin kubeconfig: whatever they
# need beyond manifests/ fails here as it would in a cluster.
sa_kubeconfig() {
	local name=$1 out=$DEV/$1.kubeconfig files=()
	case $name in
	controller) files=(-f "$REPO/manifests/controller/serviceaccount.yaml" -f "$REPO/manifests/controller/rbac.yaml") ;;
	webhook) files=(-f "$REPO/manifests/webhook/rbac.yaml") ;;
	*) die "no ServiceAccount for '$name' (controller or webhook)" ;;
	esac
	kubectl_dev apply -f "$REPO/manifests/webhook/namespace.yaml" >/dev/null
	kubectl_dev apply -n storm-system "${files[@]}" >/dev/null
	if [[ -s $out ]] && (($(date +%s) - $(stat -c %Y "$out") < 43200)) &&
		kubectl --kubeconfig "$out" auth whoami -o name >/dev/null 2>&1; then
		echo "$out"
		return
	fi
	local server token
	server=$(kubectl_dev config view --minify -o jsonpath='{.clusters[0].cluster.server}')
	token=$(kubectl_dev create token "storm-$name" -n storm-system --duration=24h)
	(
		umask 077
		printf '%s\n' "apiVersion: v1" "kind: Config" "current-context: storm-$name" \
			"clusters:" "- name: local" "  cluster:" "    server: $server" \
			"    certificate-authority: $CLUSTER_DIR/pki/ca.crt" \
			"users:" "- name: storm-$name" "  user:" "    token: $token" \
			"contexts:" "- name: storm-$name" "  context:" "    cluster: local" "    user: storm-$name" >"$out.tmp"
	)
	mv "$out.tmp" "$out"
	echo "$out"
}

# start_component <name> <binary> <args...>: detached (own session, no inherited stdio or lock fd),
# output appended to <dev>/<name>.log, PID and binary stamp recorded. It runs as its own
# ServiceAccount (sa_kubeconfig), never as the admin.
start_component() {
	local name=$1 bin=$2 kubeconfig
	shift 2
	kubeconfig=$(sa_kubeconfig "${name%-old}")
	log "starting $name"
	rm -f "$DEV/$name.port"
	KUBECONFIG=$kubeconfig setsid "$bin" "$@" </dev/null >>"$DEV/$name.log" 2>&1 9>&- &
	echo $! >"$DEV/$name.pid"
	stamp "$bin" >"$DEV/$name.stamp"
	echo "$KUBECONFIG_PATH" >"$DEV/$name.cluster"
}

# stop_component <name>: SIGTERM, up to 15s to drain, then SIGKILL.
stop_component() {
	local name=$1 pid
	if alive "$name"; then
		pid=$(pid_of "$name")
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 150); do
			alive "$name" || break
			sleep 0.1
		done
		alive "$name" && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$DEV/$name.pid" "$DEV/$name.port" "$DEV/$name.stamp" "$DEV/$name.cluster"
}

# current <name> <binary>: runs, from this binary build, against this cluster.
current() {
	alive "$1" &&
		[[ $(cat "$DEV/$1.stamp" 2>/dev/null) == "$(stamp "$2")" ]] &&
		[[ $(cat "$DEV/$1.cluster" 2>/dev/null) == "$KUBECONFIG_PATH" ]]
}

# started <name>: the PID start_component just recorded runs and is not a zombie. Until the forked
# shell has exec'd the binary its command line is this script's, which `alive` would not accept.
started() {
	local pid
	pid=$(pid_of "$1") || return 1
	[[ -e /proc/$pid ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

wait_for_port() { # wait_for_port <name>: the component writes its port once it listens
	local name=$1 deadline=$((SECONDS + 30))
	until [[ -s $DEV/$name.port ]]; do
		started "$name" || {
			tail -n 30 "$DEV/$name.log" >&2 || true
			die "$name exited at start (log: $DEV/$name.log)"
		}
		((SECONDS < deadline)) || die "$name wrote no port file within 30s (log: $DEV/$name.log)"
		sleep 0.1
	done
}

# ---------------------------------------------------------------------------- webhook

webhook_url() { echo "https://127.0.0.1:$(cat "$DEV/webhook.port")"; }

webhook_ready() {
	[[ -s $DEV/webhook.port ]] &&
		curl -fsS --max-time 2 --cacert "$CERTS/ca.crt" "$(webhook_url)/readyz" >/dev/null 2>&1
}

webhook_binary() {
	if [[ -n ${STORM_WEBHOOK_BIN:-} ]]; then
		echo "$STORM_WEBHOOK_BIN"
		return
	fi
	log "building storm-webhook"
	(cd "$REPO" && cargo build --quiet -p storm-webhook --bin storm-webhook) >&2
	echo "${CARGO_TARGET_DIR:-$REPO/target}/debug/storm-webhook"
}

start_webhook() {
	local bin
	bin=$(webhook_binary)
	[[ -x $bin ]] || die "no webhook binary at $bin"
	if [[ ! -s $CERTS/tls.crt || ! -s $CERTS/ca.crt ]]; then
		log "generating certificates in $CERTS"
		"$bin" certs --out-dir "$CERTS" --host 127.0.0.1 --dns localhost >/dev/null 2>&1
	fi
	local replacing=false
	if current webhook "$bin" && webhook_ready; then
		log "webhook already running (pid $(pid_of webhook), $(webhook_url))"
	else
		# A running webhook of another build keeps answering (and stays registered) until the new
		# one is ready and registered: StormService writes never hit a gap.
		if alive webhook; then
			mv "$DEV/webhook.pid" "$DEV/webhook-old.pid"
			replacing=true
		else
			stop_component webhook
		fi
		# The e2e suites share this webhook and measure every second or two (their controllers run
		# with the same floor). Reviews need the API server's client certificate, as in production
		# with client authentication on.
		local client_ca=()
		[[ -s $CLUSTER_DIR/pki/webhook-client-ca.crt ]] && client_ca=(--client-ca "$CLUSTER_DIR/pki/webhook-client-ca.crt")
		start_component webhook "$bin" --listen 127.0.0.1:0 --port-file "$DEV/webhook.port" \
			--tls-cert "$CERTS/tls.crt" --tls-key "$CERTS/tls.key" --analysis-min-interval=1s "${client_ca[@]}"
		wait_for_port webhook
		local deadline=$((SECONDS + READY_TIMEOUT))
		until webhook_ready; do
			alive webhook || {
				tail -n 30 "$DEV/webhook.log" >&2 || true
				die "webhook exited (log: $DEV/webhook.log)"
			}
			((SECONDS < deadline)) || die "webhook not ready within ${READY_TIMEOUT}s (log: $DEV/webhook.log)"
			sleep 0.2
		done
		log "webhook ready at $(webhook_url) (pid $(pid_of webhook))"
	fi
	"$bin" registration --url "$(webhook_url)" --ca-bundle "$CERTS/ca.crt" >"$DEV/webhook-configurations.json"
	kubectl_dev apply -f "$DEV/webhook-configurations.json" >/dev/null
	log "webhook configurations registered (URL mode)"
	if $replacing; then
		# The API server may still hold a connection or two to the old one: let them finish.
		sleep 1
		stop_component webhook-old
	fi
}

unregister_webhook() {
	[[ -s $KUBECONFIG_PATH ]] || return 0
	kubectl_dev delete mutatingwebhookconfiguration,validatingwebhookconfiguration storm-webhook \
		--ignore-not-found --request-timeout=10s >/dev/null 2>&1 || log "could not delete the webhook configurations"
}

# ---------------------------------------------------------------------------- controller

controller_ready() {
	[[ -s $DEV/controller.port ]] &&
		curl -fsS --max-time 2 "http://127.0.0.1:$(cat "$DEV/controller.port")/healthz" >/dev/null 2>&1
}

controller_binary() {
	if [[ -n ${STORM_CONTROLLER_BIN:-} ]]; then
		echo "$STORM_CONTROLLER_BIN"
		return
	fi
	log "building storm-controller"
	(cd "$REPO" && cargo build --quiet -p storm-controller --bin storm-controller) >&2
	echo "${CARGO_TARGET_DIR:-$REPO/target}/debug/storm-controller"
}

start_controller() {
	local bin port
	bin=$(controller_binary)
	[[ -x $bin ]] || die "no controller binary at $bin"
	if current controller "$bin" && controller_ready; then
		log "controller already running (pid $(pid_of controller))"
		return
	fi
	stop_component controller
	# One local process: no leader election (a cluster runs two replicas with it on).
	# The demo's Prometheus listens on loopback, which the analysis egress policy refuses unless allowed.
	start_component controller "$bin" --leader-elect=false --metrics-addr 127.0.0.1:0 \
		--analysis-egress-allow=127.0.0.1,localhost --port-file "$DEV/controller.port"
	wait_for_port controller
	port=$(cat "$DEV/controller.port")
	local deadline=$((SECONDS + READY_TIMEOUT))
	until controller_ready; do
		alive controller || {
			tail -n 30 "$DEV/controller.log" >&2 || true
			die "controller exited (log: $DEV/controller.log)"
		}
		((SECONDS < deadline)) || die "controller not healthy within ${READY_TIMEOUT}s (log: $DEV/controller.log)"
		sleep 0.2
	done
	log "controller running (pid $(pid_of controller), metrics http://127.0.0.1:$port/metrics)"
}

# ---------------------------------------------------------------------------- commands

install_crds() {
	log "installing CRDs"
	kubectl_dev apply --server-side --force-conflicts -f "$REPO/manifests/crds/" >/dev/null
	kubectl_dev wait --for=condition=Established --timeout=60s -f "$REPO/manifests/crds/" >/dev/null
}

cmd_up() {
	mkdir -p "$DEV"
	exec 9>"$DEV/lock"
	flock 9
	# cluster.sh prints the kubeconfig path on stdout; progress goes to stderr.
	STORM_CLUSTER_DIR=$CLUSTER_DIR "$REPO/tests/controlplane/cluster.sh" up >/dev/null
	# CRDs first: the webhook discovers its own kinds at start.
	install_crds
	local c
	for c in "${COMPONENTS[@]}"; do "start_$c"; done
	cmd_env
}

cmd_down() {
	mkdir -p "$DEV"
	exec 9>"$DEV/lock"
	flock 9
	unregister_webhook
	stop_component webhook-old
	local c
	for ((i = ${#ALL_COMPONENTS[@]} - 1; i >= 0; i--)); do
		c=${ALL_COMPONENTS[i]}
		stop_component "$c"
	done
	log "stopped"
}

cmd_kubeconfig() {
	mkdir -p "$DEV"
	exec 9>"$DEV/lock"
	flock 9
	STORM_CLUSTER_DIR=$CLUSTER_DIR "$REPO/tests/controlplane/cluster.sh" up >/dev/null
	sa_kubeconfig "${1:?usage: dev.sh kubeconfig controller|webhook}"
}

cmd_status() {
	local c
	for c in "${ALL_COMPONENTS[@]}"; do
		if alive "$c"; then
			printf '%-10s running  pid %s  port %s  log %s\n' "$c" "$(pid_of "$c")" "$(cat "$DEV/$c.port" 2>/dev/null)" "$DEV/$c.log"
		else
			printf '%-10s stopped\n' "$c"
		fi
	done
	if webhook_ready; then echo "webhook /readyz: ok"; else echo "webhook /readyz: not ready"; fi
}

cmd_env() {
	echo "export KUBECONFIG=$KUBECONFIG_PATH"
	[[ -s $DEV/webhook.port ]] && echo "export STORM_WEBHOOK_URL=$(webhook_url)"
	echo "export STORM_WEBHOOK_CA=$CERTS/ca.crt"
	pid_of webhook >/dev/null && echo "export STORM_WEBHOOK_PID=$(pid_of webhook)"
	[[ -s $CLUSTER_DIR/pki/webhook-client.crt ]] &&
		echo "export STORM_WEBHOOK_CLIENT_CERT=$CLUSTER_DIR/pki/webhook-client.crt" &&
		echo "export STORM_WEBHOOK_CLIENT_KEY=$CLUSTER_DIR/pki/webhook-client.key"
	return 0
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
kubeconfig) cmd_kubeconfig "${2:-}" ;;
*)
	echo "usage: $0 up|down|status|env|kubeconfig controller|webhook" >&2
	exit 2
	;;
esac
