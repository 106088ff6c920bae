-- wrk script: POST the AdmissionReview in $STORM_BENCH_BODY; print a JSON summary at the end.
local path = os.getenv("STORM_BENCH_BODY")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'STORM_BENCH {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f,"max_ms":%.4f,"errors":%d}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000,
    e.connect + e.read + e.write + e.status + e.timeout))
end
