#!/usr/bin/env bash
# Local Kubernetes control plane on loopback for the e2e tests and the demo:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (3 fake nodes).
#
#   cluster.sh up       build if needed, start (or reuse a running cluster), wait until ready
#   cluster.sh down     stop every process started by `up` (by PID) and remove the state dir
#   cluster.sh env      print `export KUBECONFIG=...`
#   cluster.sh status   component PIDs, ports, /readyz
#   cluster.sh logs [component] [lines]   tail the component logs
#
# State (certs, kubeconfigs, logs, PIDs, etcd data) lives in
# ${STORM_CLUSTER_DIR:-<repo>/.storm/cluster}; the admin kubeconfig is <state>/kubeconfig.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE=${STORM_CLUSTER_DIR:-$REPO/.storm/cluster}
# A relative STORM_CLUSTER_DIR is relative to the repo root (as in the Rust test harness).
[[ $STATE == /* ]] || STATE=$REPO/$STATE
STATE=$(realpath -m "$STATE")
KUBECONFIG_PATH=$STATE/kubeconfig
PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
LOCK=$STATE.lock
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODE_COUNT=${STORM_CLUSTER_NODES:-3}
READY_TIMEOUT=${STORM_CLUSTER_TIMEOUT:-120}
# Everything on by default except what needs real nodes, clouds or volumes. Without the node
# lifecycle controller kwok nodes are never tainted or evicted, even if kwok is paused; the
# apiserver's TaintNodesByCondition admission is off too, as nothing would lift its
# node.kubernetes.io/not-ready taint.
KCM_CONTROLLERS='*,-node-lifecycle-controller,-cloud-node-lifecycle-controller,-node-route-controller,-node-ipam-controller,-service-lb-controller,-persistentvolume-attach-detach-controller,-persistentvolume-expander-controller'

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

kubectl_admin() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# ---------------------------------------------------------------------------- processes

pid_of() { [[ -s $PIDS/$1.pid ]] && cat "$PIDS/$1.pid"; }

# alive <component>: its recorded PID runs and is still the process we started (the state
# dir appears on its command line, so a recycled PID is never mistaken for ours).
alive() {
	local pid
	pid=$(pid_of "$1") || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$STATE/" || return 1
	# a zombie is not alive
	[[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

# start <component> <binary> <args...>: detached from our stdio/session, output to its log,
# the lock fd closed so the daemon never holds the `up` lock.
start() {
	local name=$1
	shift
	# The command line, for `restart` (the soak's faults).
	mkdir -p "$STATE/cmd"
	printf '%q ' "$@" >"$STATE/cmd/$name"
	log "starting $name"
	setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
	local pid=$!
	echo "$pid" >"$PIDS/$name.pid"
	sleep 0.2
	alive "$name" || {
		tail -n 30 "$LOGS/$name.log" >&2 || true
		die "$name exited at start (log: $LOGS/$name.log)"
	}
}

stop_all() {
	local c pid pids=()
	[[ -d $PIDS ]] || return 0
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		c=${COMPONENTS[i]}
		if alive "$c"; then
			pid=$(pid_of "$c")
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done
	local deadline=$((SECONDS + 8))
	while ((SECONDS < deadline)); do
		local left=()
		for pid in "${pids[@]}"; do
			[[ -d /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && left+=("$pid")
		done
		((${#left[@]} == 0)) && return 0
		sleep 0.2
	done
	for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do
		while [[ -d /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do sleep 0.1; done
	done
}

# ---------------------------------------------------------------------------- ports

declare -A TAKEN=()
free_port() {
	local p listening
	listening=$(ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u || true)
	for _ in $(seq 1 200); do
		p=$((20000 + RANDOM % 40000))
		[[ -n ${TAKEN[$p]:-} ]] && continue
		grep -qx "$p" <<<"$listening" && continue
		# nothing answers there either (ss may be missing)
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
		TAKEN[$p]=1
		echo "$p"
		return 0
	done
	die "no free port found"
}

# ---------------------------------------------------------------------------- certificates

gen_pki() {
	mkdir -p "$PKI"
	local o="$PKI"
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
		-keyout "$o/ca.key" -out "$o/ca.crt" -subj "/CN=storm-local-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		2>/dev/null
	# service-account signing key pair
	openssl genrsa -out "$o/sa.key" 2048 2>/dev/null
	openssl rsa -in "$o/sa.key" -pubout -out "$o/sa.pub" 2>/dev/null

	# leaf <name> <subject> <extKeyUsage> [subjectAltName]; signed by $LEAF_CA (default ca)
	leaf() {
		local name=$1 subj=$2 eku=$3 san=${4:-} ca=${LEAF_CA:-ca}
		openssl req -newkey rsa:2048 -nodes -keyout "$o/$name.key" -out "$o/$name.csr" -subj "$subj" 2>/dev/null
		{
			echo "basicConstraints=critical,CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=$eku"
			[[ -n $san ]] && echo "subjectAltName=$san"
		} >"$o/$name.ext"
		openssl x509 -req -in "$o/$name.csr" -CA "$o/$ca.crt" -CAkey "$o/$ca.key" -CAcreateserial \
			-days 3650 -sha256 -extfile "$o/$name.ext" -out "$o/$name.crt" 2>/dev/null
		rm -f "$o/$name.csr" "$o/$name.ext"
	}
	leaf apiserver "/CN=kube-apiserver" serverAuth \
		"IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	leaf admin "/O=system:masters/CN=storm-admin" clientAuth
	leaf kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
	leaf kube-scheduler "/CN=system:kube-scheduler" clientAuth
	leaf kwok "/O=system:masters/CN=kwok" clientAuth
	# What the API server presents to admission webhooks, from a CA of its own: a webhook started
	# with --client-ca $PKI/webhook-client-ca.crt accepts reviews from it and from no other client
	# (the cluster CA would let every user's client certificate through).
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
		-keyout "$o/webhook-client-ca.key" -out "$o/webhook-client-ca.crt" -subj "/CN=storm-local-webhook-client-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		2>/dev/null
	LEAF_CA=webhook-client-ca leaf webhook-client "/CN=kube-apiserver-webhook-client" clientAuth
	chmod 600 "$o"/*.key
}

# write_kubeconfig <file> <cert name>
write_kubeconfig() {
	local file=$1 user=$2
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: storm-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key
contexts:
- name: storm-local
  context:
    cluster: storm-local
    user: $user
    namespace: default
current-context: storm-local
EOF
	chmod 600 "$file"
}

# ---------------------------------------------------------------------------- readiness

etcd_healthy() {
	local body
	if command -v curl >/dev/null; then
		body=$(curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null) || return 1
		[[ $body == *'"health":"true"'* ]]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$ETCD_PORT") 2>/dev/null
	fi
}

apiserver_ready() {
	[[ -s $KUBECONFIG_PATH ]] || return 1
	[[ $(kubectl_admin get --raw /readyz --request-timeout=3s 2>/dev/null) == ok ]]
}

all_alive() {
	local c
	for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
}

wait_for() {
	local what=$1 timeout=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $what"
			dump_logs 40
			return 1
		fi
		local c
		for c in "${COMPONENTS[@]}"; do
			if [[ -e $PIDS/$c.pid ]] && ! alive "$c"; then
				log "$c died while waiting for $what"
				dump_logs 40
				return 1
			fi
		done
		sleep 0.3
	done
}

nodes_ready() {
	local n
	n=$(kubectl_admin get nodes -l type=kwok \
		-o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
		grep -c '^True$' || true)
	((n >= NODE_COUNT))
}

reusable() { apiserver_ready && nodes_ready; }

default_sa_ready() { kubectl_admin -n default get serviceaccount default >/dev/null 2>&1; }

dump_logs() {
	local lines=${1:-50} c
	for c in "${COMPONENTS[@]}"; do
		[[ -e $LOGS/$c.log ]] || continue
		printf '\n===== %s (%s) last %s lines =====\n' "$c" "$LOGS/$c.log" "$lines" >&2
		tail -n "$lines" "$LOGS/$c.log" >&2 || true
	done
}

# ---------------------------------------------------------------------------- kwok stages

# Pod labels handled by our own stages (stages/*.yaml next to this script).
TEST_POD_LABELS=(storm.test/fail storm.test/crash-loop storm.test/never-ready)

# prepare_stages <stock stage dir>: the stock stages (copied verbatim from the kwok module at
# build time) plus ours into <state>/stages. Pods carrying one of our labels must never take
# the stock ready path, so the stock pod-ready selector gets a `NotIn ["true"]` condition per
# label, inserted right under its matchExpressions.
prepare_stages() {
	local stock=$1 f label
	mkdir -p "$STATE/stages"
	for f in "$stock"/*.yaml; do
		if [[ $(basename "$f") == pod-ready.yaml ]]; then
			awk -v labels="${TEST_POD_LABELS[*]}" '
				{ print }
				/^  selector:$/ { insel = 1; next }
				insel && /^    matchExpressions:$/ {
					n = split(labels, l, " ")
					for (i = 1; i <= n; i++) {
						printf "    - key: %s.metadata.labels[\"%s\"]%s\n", q, l[i], q
						printf "      operator: %sNotIn%s\n", q, q
						printf "      values:\n      - %strue%s\n", q, q
					}
					insel = 0
				}
			' q="'" "$f" >"$STATE/stages/stock-pod-ready.yaml"
			for label in "${TEST_POD_LABELS[@]}"; do
				grep -qF "labels[\"$label\"]" "$STATE/stages/stock-pod-ready.yaml" ||
					die "could not exclude $label from kwok's pod-ready stage ($f changed?)"
			done
		else
			cp "$f" "$STATE/stages/stock-$(basename "$f")"
		fi
	done
	cp "$HERE"/stages/*.yaml "$STATE/stages/"
}

# ---------------------------------------------------------------------------- up

nodes_manifest() {
	local i zones=(zone-a zone-b zone-c)
	for ((i = 0; i < NODE_COUNT; i++)); do
		cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    node-role.kubernetes.io/agent: ""
    topology.kubernetes.io/zone: ${zones[i % 3]}
spec: {}
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
    ephemeral-storage: 500Gi
    nvidia.com/gpu: "8"
    vke.volcengine.com/rdma: "8"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
    ephemeral-storage: 500Gi
    nvidia.com/gpu: "8"
    vke.volcengine.com/rdma: "8"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
EOF
	done
}

print_ready() {
	log "control plane ready: $(cat "$STATE/apiserver-url")"
	log "kubeconfig: $KUBECONFIG_PATH   (eval \"\$($HERE/cluster.sh env)\")"
	echo "$KUBECONFIG_PATH"
}

cmd_up() {
	command -v kubectl >/dev/null || die "kubectl not found on PATH"
	command -v openssl >/dev/null || die "openssl not found on PATH"
	mkdir -p "$(dirname "$STATE")"
	exec 9>"$LOCK"
	flock 9

	if [[ -d $STATE ]]; then
		# All processes alive: reuse, allowing a busy machine some time to answer /readyz.
		if all_alive && wait_for "the running cluster to answer" 60 reusable 2>/dev/null; then
			print_ready
			return 0
		fi
		log "stale or partial cluster state in $STATE: restarting"
		stop_all
		rm -rf "$STATE"
	fi

	"$HERE/build.sh"
	local dirs
	dirs=$("$HERE/build.sh" --print-dirs)
	local KUBE_DIR ETCD_DIR KWOK_DIR KUBE_VERSION
	KUBE_DIR=$(sed -n 's/^KUBE_DIR=//p' <<<"$dirs")
	ETCD_DIR=$(sed -n 's/^ETCD_DIR=//p' <<<"$dirs")
	KWOK_DIR=$(sed -n 's/^KWOK_DIR=//p' <<<"$dirs")
	KUBE_VERSION=$(sed -n 's/^KUBE_VERSION=//p' <<<"$dirs")

	local started=$SECONDS
	mkdir -p "$STATE" "$LOGS" "$PIDS" "$STATE/etcd"
	# A failed start leaves no process behind; the state dir (logs) stays for inspection.
	trap 'rc=$?; if ((rc != 0)); then log "up failed; stopping what was started (logs: $LOGS)"; stop_all; fi' EXIT
	chmod 700 "$STATE" "$STATE/etcd"
	gen_pki

	ETCD_PORT=$(free_port)
	ETCD_PEER_PORT=$(free_port)
	APISERVER_PORT=$(free_port)
	KWOK_PORT=$(free_port)
	cat >"$STATE/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KWOK_PORT=$KWOK_PORT
KUBE_VERSION=$KUBE_VERSION
EOF
	echo "https://127.0.0.1:$APISERVER_PORT" >"$STATE/apiserver-url"
	write_kubeconfig "$KUBECONFIG_PATH" admin
	local c
	for c in kube-controller-manager kube-scheduler kwok; do
		write_kubeconfig "$STATE/$c.kubeconfig" "$c"
	done

	# etcd: plain HTTP on loopback only, no fsync (test data is disposable).
	start etcd "$ETCD_DIR/etcd" \
		--name storm --data-dir "$STATE/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "storm=http://127.0.0.1:$ETCD_PEER_PORT" \
		--unsafe-no-fsync --quota-backend-bytes 2147483648 \
		--snapshot-count 100000 --log-level warn

	wait_for "etcd /health" "$READY_TIMEOUT" etcd_healthy

	# Admission webhooks get the API server's client certificate ('*': every webhook).
	cat >"$STATE/webhook-client.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: $PKI/webhook-client.crt
    client-key: $PKI/webhook-client.key
EOF
	cat >"$STATE/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $STATE/webhook-client.kubeconfig
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $STATE/webhook-client.kubeconfig
EOF

	start kube-apiserver "$KUBE_DIR/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI/sa.pub" \
		--service-account-signing-key-file "$PKI/sa.key" \
		--service-cluster-ip-range 10.96.0.0/16 \
		--authorization-mode Node,RBAC \
		--allow-privileged=true \
		--disable-admission-plugins TaintNodesByCondition \
		--admission-control-config-file "$STATE/admission.yaml" \
		--endpoint-reconciler-type none \
		--enable-priority-and-fairness=false \
		--profiling=false \
		--v 1

	wait_for "kube-apiserver /readyz" "$READY_TIMEOUT" apiserver_ready

	start kube-controller-manager "$KUBE_DIR/kube-controller-manager" \
		--kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 0 \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file "$PKI/sa.key" \
		--root-ca-file "$PKI/ca.crt" \
		--cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
		--flex-volume-plugin-dir "$STATE/flexvolume" \
		--controllers "$KCM_CONTROLLERS" \
		--kube-api-qps 200 --kube-api-burst 400 \
		--profiling=false \
		--v 1

	start kube-scheduler "$KUBE_DIR/kube-scheduler" \
		--kubeconfig "$STATE/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 0 \
		--leader-elect=false \
		--profiling=false \
		--v 1

	prepare_stages "$KWOK_DIR/stages"
	local stages=() f
	for f in "$STATE"/stages/*.yaml; do stages+=(--config "$f"); done
	start kwok "$KWOK_DIR/kwok" \
		--kubeconfig "$STATE/kwok.kubeconfig" \
		"${stages[@]}" \
		--manage-all-nodes=false \
		--manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
		--node-lease-duration-seconds 40 \
		--cidr 10.244.0.0/16 --node-ip 10.0.0.1 \
		--server-address "127.0.0.1:$KWOK_PORT"

	kubectl_admin apply -f - <<<"$(nodes_manifest)" >/dev/null
	wait_for "$NODE_COUNT Ready kwok nodes" "$READY_TIMEOUT" nodes_ready
	wait_for "the default service account" "$READY_TIMEOUT" default_sa_ready
	trap - EXIT
	log "started in $((SECONDS - started))s"
	print_ready
}

# ---------------------------------------------------------------------------- other commands

cmd_down() {
	mkdir -p "$(dirname "$STATE")"
	exec 9>"$LOCK"
	flock 9
	if [[ ! -d $STATE ]]; then
		log "no cluster state at $STATE"
		return 0
	fi
	stop_all
	rm -rf "$STATE"
	log "stopped and removed $STATE"
}

cmd_env() {
	echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

cmd_status() {
	local c rc=0
	[[ -d $STATE ]] || {
		log "not running (no state at $STATE)"
		return 1
	}
	[[ -s $STATE/apiserver-url ]] && echo "apiserver:  $(cat "$STATE/apiserver-url")"
	echo "kubeconfig: $KUBECONFIG_PATH"
	for c in "${COMPONENTS[@]}"; do
		if alive "$c"; then
			printf '%-24s running  pid %s  log %s\n' "$c" "$(pid_of "$c")" "$LOGS/$c.log"
		else
			printf '%-24s DOWN     log %s\n' "$c" "$LOGS/$c.log"
			rc=1
		fi
	done
	if apiserver_ready; then echo "readyz:     ok"; else
		echo "readyz:     not ready"
		rc=1
	fi
	return $rc
}

# restart <component>: SIGKILL it and start it again with the same command line and state (the
# soak's faults: a crashed kube-apiserver, etcd restarted on the same data dir).
cmd_restart() {
	local name=${1:-} pid
	[[ -n $name && -s $STATE/cmd/$name ]] || die "restart: no recorded command for '$name'"
	if pid=$(pid_of "$name"); then
		kill -KILL "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + 10))
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
	fi
	local cmd
	cmd=$(cat "$STATE/cmd/$name")
	eval "start $name $cmd"
	case $name in
	etcd) wait_for "etcd /health" "$READY_TIMEOUT" etcd_healthy ;;
	kube-apiserver) wait_for "kube-apiserver /readyz" "$READY_TIMEOUT" apiserver_ready ;;
	esac
}

cmd_logs() {
	local which=${1:-} lines=${2:-50}
	if [[ -n $which && $which != all ]]; then
		[[ -e $LOGS/$which.log ]] || die "no log for $which in $LOGS"
		tail -n "$lines" "$LOGS/$which.log"
	else
		dump_logs "$lines" 2>&1
	fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
env) cmd_env ;;
status) cmd_status ;;
restart)
	shift
	# shellcheck disable=SC1091
	[[ -s $STATE/ports.env ]] && . "$STATE/ports.env"
	cmd_restart "$@"
	;;
logs)
	shift
	cmd_logs "$@"
	;;
*)
	echo "usage: $0 up|down|env|status|restart <component>|logs [component] [lines]" >&2
	exit 2
	;;
esac
