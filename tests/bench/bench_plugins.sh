#!/usr/bin/env bash
# The cost of plugins on a route: wrk through one airgw data plane against
#   plain  /plain/*  no plugins
#   limit  /limit/*  limit-count (count 10^9 a minute per client) + prometheus
#   auth   /auth/*   key-auth + limit-count (per consumer) + prometheus
# all to the same upstream, in one run, on one machine.
#
#   tests/bench/bench_plugins.sh [--workers N] [--duration S] [--connections C]
#                                [--threads T] [--rounds R] [--build DIR]
#
# Starts on 127.0.0.1 (free ports): an upstream (Debian's nginx, 1 worker, a
# fixed 20-byte 200 from memory), airgw-controlplane (temporary SQLite state)
# and airgw-dataplane --workers N; the routes and the consumer are made with
# curl on the Admin API. After a 2 s warm-up of each route, ROUNDS rounds
# (default 3) of wrk with keep-alive against each route (the order rotates
# between rounds). Per load: requests/s, p50 and p99 (wrk --latency) and the
# data plane's CPU time per request (utime + stime of master + workers over
# the load / requests completed). Prints a markdown section: medians
# (min-max) and each route's ratios to the plain route. Checks first that the
# plugins act (401 without a key, X-RateLimit headers, prometheus series);
# when key-auth does not work in this build the auth route is left out and
# the report says so.
#
# Environment overrides: BENCH_WORKERS, BENCH_DURATION, BENCH_CONNS,
# BENCH_THREADS, BENCH_ROUNDS, AIRGW_BUILD. Installs nginx and wrk with
# apt-get if missing (never starting the system nginx). Everything it starts
# is stopped by PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."

. tests/bench/lib.sh
wrk_bench_defaults

while [ $# -gt 0 ]; do
    wrk_bench_arg "$@"
    shift "$ARG_SHIFT"
done
min_duration 2

bench_init plugins
apt_need nginx wrk
NGINX=$(sbin_path nginx)
WRK=$(command -v wrk)
CLK_TCK=$(getconf CLK_TCK)
need_built

read -r UP_PORT GW_PORT ADMIN_PORT CFG_PORT METRICS_PORT <<<"$(free_ports 5)"

# -- the upstream
start_upstream "$UP_PORT"

# -- airgw
start_controlplane "$ADMIN_PORT" "$CFG_PORT"
UPSTREAM="{\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$UP_PORT\": 1}}"
LIMIT='"limit-count": {"count": 1000000000, "time_window": 60, "rejected_code": 429}'
admin_put consumers '{"username": "bench", "plugins": {"key-auth": {"key": "bench-key"}}}'
admin_put routes/plain "{\"uri\": \"/plain/*\", \"upstream\": $UPSTREAM}"
admin_put routes/limit "{\"uri\": \"/limit/*\", \"upstream\": $UPSTREAM,
    \"plugins\": {$LIMIT, \"prometheus\": {}}}"
admin_put routes/auth "{\"uri\": \"/auth/*\", \"upstream\": $UPSTREAM,
    \"plugins\": {\"key-auth\": {}, $LIMIT, \"prometheus\": {}}}"
start_dataplane "$CFG_PORT" "$GW_PORT" "$METRICS_PORT"
GW=http://127.0.0.1:$GW_PORT
wait_status "$GW/plain/x" 200 15 || { echo "bench_plugins.sh: no 200 on /plain/x" >&2; tail "$TMP/dp.log" >&2; exit 1; }
wait_status "$GW/limit/x" 200 15 || { echo "bench_plugins.sh: no 200 on /limit/x" >&2; exit 1; }
sleep 0.5

# -- the plugins act
curl -s -D - -o /dev/null "$GW/limit/x" | grep -qi '^X-RateLimit-Remaining:' ||
    { echo "bench_plugins.sh: limit-count sets no X-RateLimit headers" >&2; exit 1; }
curl -s "http://127.0.0.1:$METRICS_PORT/apisix/prometheus/metrics" >"$TMP/metrics.txt"; grep -q "route=\"limit\"" "$TMP/metrics.txt" ||
    { echo "bench_plugins.sh: prometheus records nothing for the limit route" >&2; exit 1; }
ROUTES=(plain limit auth)
AUTH_NOTE=""
no_key=$(curl -s -o /dev/null -w '%{http_code}' "$GW/auth/x")
with_key=$(curl -s -o /dev/null -w '%{http_code}' -H 'apikey: bench-key' "$GW/auth/x")
if [ "$no_key" != 401 ] || [ "$with_key" != 200 ]; then
    log "key-auth does not act in this build (no key: $no_key, key: $with_key): auth route left out"
    ROUTES=(plain limit)
    AUTH_NOTE="key-auth did not act in this build (no key: $no_key, with the key: $with_key): the auth route is left out."
fi

RESULTS=$TMP/results.tsv
: >"$RESULTS"
run_wrk() { # ROUTE SECONDS RECORD ROUND
    local route=$1 dur=$2 record=$3 round=$4 out=$TMP/wrk.out hdr=()
    [ "$route" = auth ] && hdr=(-H "apikey: bench-key")
    local cpu0 cpu1
    cpu0=$(cpu_ticks_of "$DP_PID")
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${hdr[@]}" "$GW/$route/hello" \
        >"$out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || { echo "bench_plugins.sh: wrk failed:" >&2; cat "$out" >&2; exit 1; }
    LOAD_PID=""
    cpu1=$(cpu_ticks_of "$DP_PID")
    [ "$record" = 1 ] || return 0
    local rps p50 p99 n bad
    IFS=$'\t' read -r rps p50 p99 n bad _ <<<"$(wrk_figures "$out")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$route" "$rps" "$p50" "$p99" "$n" "$bad" \
        "$(per_request_us $((cpu1 - cpu0)) "$n")" "$round" >>"$RESULTS"
}

log "upstream :$UP_PORT, airgw :$GW_PORT ($(children_of "$DP_PID" | wc -w) workers); routes: ${ROUTES[*]}"
for r in "${ROUTES[@]}"; do run_wrk "$r" 2 0 0; done
n=${#ROUTES[@]}
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        r=${ROUTES[$(( (i + round - 1) % n ))]}
        log "round $round/$ROUNDS: $r"
        run_wrk "$r" "$DURATION" 1 "$round"
    done
done

python3 - "$RESULTS" "$AUTH_NOTE" <<PY
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = {}
for route, rps, p50, p99, n, bad, cpu, rnd in rows:
    d = data.setdefault(route, {"rps": [], "p50": [], "p99": [], "cpu": [], "n": 0, "bad": 0})
    d["rps"].append(float(rps)); d["p50"].append(float(p50)); d["p99"].append(float(p99))
    d["cpu"].append(float(cpu)); d["n"] += int(n); d["bad"] += int(bad)
med = statistics.median
def fmt(v, nd):
    s = f"{med(v):,.{nd}f}"
    return s + (f" ({min(v):,.{nd}f}–{max(v):,.{nd}f})" if len(v) > 1 else "")
names = {"plain": "no plugins", "limit": "limit-count + prometheus",
         "auth": "key-auth + limit-count + prometheus"}
print("### Plugins on a route: cost against none")
print()
print("$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); airgw from \`$BUILD\` "
      "(HEAD $(git rev-parse --short HEAD 2>/dev/null || echo ?)), $WORKERS workers, "
      "wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, keep-alive, $ROUNDS round(s) "
      "(the order of the routes rotates), median (min–max). Upstream: nginx, 1 worker, a "
      "fixed 20-byte 200. limit-count: count 10^9 per minute (never refuses; every request "
      "still takes a CAS on the node-wide shared counter), key remote_addr (limit route) "
      "or the default remote_addr after key-auth (auth route). Data plane CPU: utime + stime "
      "of master + workers over the load / requests completed.")
print()
print("| route | requests/s | p50 (ms) | p99 (ms) | data plane CPU (µs/request) | non-2xx |")
print("| --- | --- | --- | --- | --- | --- |")
for r in ("plain", "limit", "auth"):
    d = data.get(r)
    if d:
        print(f"| {names[r]} | {fmt(d['rps'], 0)} | {fmt(d['p50'], 2)} | {fmt(d['p99'], 2)} | "
              f"{fmt(d['cpu'], 1)} | {d['bad']} of {d['n']:,} |")
print()
base = data.get("plain")
for r in ("limit", "auth"):
    d = data.get(r)
    if d and base:
        print(f"- {names[r]} / no plugins: requests/s **{med(d['rps']) / med(base['rps']):.2f}**, "
              f"CPU per request **{med(d['cpu']) / med(base['cpu']):.2f}** "
              f"(+{med(d['cpu']) - med(base['cpu']):.1f} µs)")
if sys.argv[2]:
    print()
    print("- " + sys.argv[2])
PY
