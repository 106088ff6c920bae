#!/usr/bin/env bash
# Webhook benchmark: AdmissionReviews of a realistic StormService (webhook/bench/review.json) to
# /validate over HTTPS with keep-alive on loopback, alternating with the same load against /noop (a
# fixed answer from the same server: the ceiling). Load generator: wrk (Debian package, installed if missing).
# Writes target/bench/webhook.json. Then the same process gets the valid reviews again, alone and mixed
# with hostile clients at full rate (webhook/examples/hostile.rs): target/bench/webhook-hostile.json. The webhook runs --offline (no cluster): reference lookups answer
# "unknown" and there are no RolloutPolicies, which costs the same map lookups as a synced cache
# but skips the work a found Service adds (the Pods' label sets, made once per review).
#
#   STORM_BENCH_SECONDS (10)   length of each measured run
#   STORM_BENCH_ROUNDS (3)     rounds of /validate and /noop, alternating
#   STORM_BENCH_CONNECTIONS (16), STORM_BENCH_THREADS (1)   wrk settings
#   STORM_BENCH_WORKERS        webhook --worker-threads (default: one per core)
#   STORM_BENCH_BIN            benchmark this binary instead of building target/release/storm-webhook
#   STORM_BENCH_PINNED (1)     also measure with the webhook (one worker) and wrk each pinned to a core
#
# Sharing two cores among wrk and two webhook workers, the kernel's time slices decide much of the
# tail (a worker descheduled mid-request holds its reply for a slice) and of the ceiling. The pinned
# run (machines with 2+ cores) leaves the webhook one core of its own and wrk another: its ratio is
# what a review costs beside the HTTP and TLS work every request pays, and its p99 the webhook's own.
# It is written under "pinned" in the same file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$REPO/target/bench
SECONDS_RUN=${STORM_BENCH_SECONDS:-10}
ROUNDS=${STORM_BENCH_ROUNDS:-3}
CONNS=${STORM_BENCH_CONNECTIONS:-16}
THREADS=${STORM_BENCH_THREADS:-1}
BIN=${STORM_BENCH_BIN:-$REPO/target/release/storm-webhook}
log() { printf 'bench-webhook: %s\n' "$*" >&2; }

"$REPO/tests/tools/debian-package.sh" wrk

if [[ -z ${STORM_BENCH_BIN:-} ]]; then
	log "building storm-webhook (release)"
	(cd "$REPO" && cargo build --release --quiet -p storm-webhook)
fi
log "building the hostile-input load generator (release)"
(cd "$REPO" && cargo build --release --quiet -p storm-webhook --example hostile)
HOSTILE=${CARGO_TARGET_DIR:-$REPO/target}/release/examples/hostile

mkdir -p "$OUT"
rm -rf "$OUT/certs"
"$BIN" certs --out-dir "$OUT/certs" --host 127.0.0.1 2>/dev/null
rm -f "$OUT/webhook.port"
"$BIN" --offline ${STORM_BENCH_WORKERS:+--worker-threads "$STORM_BENCH_WORKERS"} --listen 127.0.0.1:0 --port-file "$OUT/webhook.port" \
	--tls-cert "$OUT/certs/tls.crt" --tls-key "$OUT/certs/tls.key" >"$OUT/webhook.log" 2>&1 &
PID=$!
PINNED=
cleanup() {
	kill "$PID" ${PINNED:+"$PINNED"} 2>/dev/null || true
	wait "$PID" ${PINNED:+"$PINNED"} 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
	[[ -s $OUT/webhook.port ]] && break
	sleep 0.1
done
PORT=$(cat "$OUT/webhook.port")
BASE=https://127.0.0.1:$PORT
CURL=(curl -sS --cacert "$OUT/certs/ca.crt")
"${CURL[@]}" "$BASE/healthz" >/dev/null

# The review must really be judged (allowed, no error), or the numbers mean nothing.
answer=$("${CURL[@]}" -X POST -H 'Content-Type: application/json' --data-binary @"$HERE/review.json" "$BASE/validate")
grep -q '"allowed":true' <<<"$answer" || {
	log "unexpected answer: $answer"
	exit 1
}

WRK=(wrk)
run() { # run <path> <seconds>
	STORM_BENCH_BODY=$HERE/review.json "${WRK[@]}" -t"$THREADS" -c"$CONNS" -d"$2"s --latency \
		-s "$HERE/post.lua" "$BASE$1" | tee -a "$OUT/wrk.log" | sed -n 's/^STORM_BENCH //p'
}
: >"$OUT/wrk.log"
log "warm-up"
run /validate 2 >/dev/null
# The ceiling moves with whatever else the machine does, so /validate and /noop alternate, a pair
# per round (the order swapped each round), and the ratio is the median of the rounds' ratios.
measure() { # measure <label>: the alternating rounds, one JSON object per run, into rounds[]
	rounds=()
	for ((r = 1; r <= ROUNDS; r++)); do
		if ((r % 2)); then order=(/validate /noop); else order=(/noop /validate); fi
		for path in "${order[@]}"; do
			log "$1 round $r/$ROUNDS: $path for ${SECONDS_RUN}s ($CONNS connections)"
			rounds+=("{\"round\":$r,\"path\":\"$path\",\"result\":$(run "$path" "$SECONDS_RUN")}")
		done
	done
}
measure shared
shared_rounds=("${rounds[@]}")
rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")

pinned_rounds=()
if [[ ${STORM_BENCH_PINNED:-1} == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
	rm -f "$OUT/webhook-pinned.port"
	taskset -c 0 "$BIN" --offline --worker-threads 1 --listen 127.0.0.1:0 --port-file "$OUT/webhook-pinned.port" \
		--tls-cert "$OUT/certs/tls.crt" --tls-key "$OUT/certs/tls.key" >"$OUT/webhook-pinned.log" 2>&1 &
	PINNED=$!
	for _ in $(seq 1 100); do
		[[ -s $OUT/webhook-pinned.port ]] && break
		sleep 0.1
	done
	SHARED_BASE=$BASE
	BASE=https://127.0.0.1:$(cat "$OUT/webhook-pinned.port")
	WRK=(taskset -c 1 wrk)
	run /validate 2 >/dev/null
	measure "pinned (webhook on core 0, one worker; wrk on core 1):"
	pinned_rounds=("${rounds[@]}")
	kill "$PINNED" 2>/dev/null || true
	wait "$PINNED" 2>/dev/null || true
	PINNED=
	BASE=$SHARED_BASE
	WRK=(wrk)
fi

summarize='import json, statistics, sys
args = sys.argv[5:]
split = args.index("--pinned")
def summary(lines):
    runs = [json.loads(line) for line in lines]
    def of(path):
        return [r["result"] for r in sorted(runs, key=lambda r: r["round"]) if r["path"] == path]
    v, n = of("/validate"), of("/noop")
    med = lambda xs: round(statistics.median(xs), 4)
    return {
        "endpoint": "/validate",
        "connections": int(sys.argv[1]),
        "seconds": int(sys.argv[2]),
        "rounds": len(v),
        "reviews_per_sec": med([r["rps"] for r in v]),
        "p50_ms": med([r["p50_ms"] for r in v]),
        "p90_ms": med([r["p90_ms"] for r in v]),
        "p99_ms": med([r["p99_ms"] for r in v]),
        "max_ms": max(r["max_ms"] for r in v),
        "noop_reviews_per_sec": med([r["rps"] for r in n]),
        "noop_p99_ms": med([r["p99_ms"] for r in n]),
        "ratio_to_noop": round(statistics.median(a["rps"] / b["rps"] for a, b in zip(v, n)), 3),
        "ratio_to_noop_per_round": [round(a["rps"] / b["rps"], 3) for a, b in zip(v, n)],
        "errors": sum(r["errors"] for r in v + n),
        "runs": runs,
    }
out = summary(args[:split])
out["rss_mib"] = round(int(sys.argv[3]) / 1024, 1)
pinned = args[split + 1:]
out["pinned"] = summary(pinned) if pinned else None
json.dump(out, open(sys.argv[4], "w"), indent=2)
print(out["errors"] + (out["pinned"] or {}).get("errors", 0))'
errors=$(python3 -c "$summarize" "$CONNS" "$SECONDS_RUN" "$rss_kib" "$OUT/webhook.json" \
	"${shared_rounds[@]}" --pinned "${pinned_rounds[@]}")
python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("shared:", {k: v for k, v in r.items() if k not in ("runs", "pinned")})
if r["pinned"]:
    print("pinned:", {k: v for k, v in r["pinned"].items() if k != "runs"})' "$OUT/webhook.json"
((errors == 0)) || {
	log "$errors requests failed"
	exit 1
}

log "valid reviews alone, then mixed with hostile clients, ${SECONDS_RUN}s each"
"$HOSTILE" "$BASE" "$OUT/certs/ca.crt" "$PID" "$OUT/webhook.log" "$HERE/review.json" \
	"$SECONDS_RUN" "$CONNS" "$OUT/webhook-hostile.json" >/dev/null
summary='import json, sys
r = json.load(open(sys.argv[1]))
c, h = r["clean"], r["hostile"]
print("valid p99 %.2f ms alone, %.2f ms among %d hostile requests; peak RSS %.1f / %.1f MiB; panics %d"
      % (c["p99_ms"], h["p99_ms"], h["hostile_requests"], c["peak_rss_mib"], h["peak_rss_mib"], r["panics"]))'
log "$(python3 -c "$summary" "$OUT/webhook-hostile.json")"
