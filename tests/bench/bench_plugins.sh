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

WORKERS=${BENCH_WORKERS:-2}
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
BUILD=${AIRGW_BUILD:-build}

while [ $# -gt 0 ]; do
    case $1 in
    --workers) WORKERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_plugins.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$DURATION" -ge 2 ] || { echo "bench_plugins.sh: --duration must be >= 2" >&2; exit 2; }

log() { echo "bench_plugins: $*" >&2; }
TMP=$(mktemp -d /tmp/airgw-bench-plugins.XXXXXX)
PIDS=()
LOAD_PID=""
. "$(dirname "$0")/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
apt_install "${missing[@]}"
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
WRK=$(command -v wrk)
CLK_TCK=$(getconf CLK_TCK)
for b in controlplane/airgw-controlplane dataplane/airgw-dataplane; do
    [ -x "$BUILD/$b" ] || { echo "bench_plugins.sh: $BUILD/$b is not built" >&2; exit 1; }
done

read -r UP_PORT GW_PORT ADMIN_PORT CFG_PORT METRICS_PORT <<<"$(free_ports 5)"

# -- the upstream
UPD=$TMP/upstream
mkdir -p "$UPD"
cat >"$UPD/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $UPD/nginx.pid;
error_log $UPD/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $UPD/client_body;
    proxy_temp_path $UPD/proxy;
    fastcgi_temp_path $UPD/fastcgi;
    uwsgi_temp_path $UPD/uwsgi;
    scgi_temp_path $UPD/scgi;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF
"$NGINX" -p "$UPD" -c "$UPD/nginx.conf" -e "$UPD/error.log" >"$UPD/stdout.log" 2>&1 &
PIDS+=($!)

# -- airgw
KEY=bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$TMP/cp" "$TMP/dp"
"$BUILD/controlplane/airgw-controlplane" --state-dir "$TMP/cp" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --config-listen "127.0.0.1:$CFG_PORT" \
    --admin-key "$KEY" --log-level warn >"$TMP/cp/log" 2>&1 &
PIDS+=($!)
wait_status "http://127.0.0.1:$ADMIN_PORT/healthz" 200 ||
    { echo "bench_plugins.sh: the control plane did not come up" >&2; tail "$TMP/cp/log" >&2; exit 1; }
admin() { # PATH JSON
    local code
    code=$(curl -s -o "$TMP/put.json" -w '%{http_code}' -X PUT \
        "http://127.0.0.1:$ADMIN_PORT/apisix/admin/$1" -H "X-API-KEY: $KEY" -d "$2")
    case $code in 200 | 201) ;; *)
        echo "bench_plugins.sh: PUT $1 answered $code: $(cat "$TMP/put.json")" >&2; exit 1 ;;
    esac
}
UPSTREAM="{\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$UP_PORT\": 1}}"
LIMIT='"limit-count": {"count": 1000000000, "time_window": 60, "rejected_code": 429}'
admin consumers '{"username": "bench", "plugins": {"key-auth": {"key": "bench-key"}}}'
admin routes/plain "{\"uri\": \"/plain/*\", \"upstream\": $UPSTREAM}"
admin routes/limit "{\"uri\": \"/limit/*\", \"upstream\": $UPSTREAM,
    \"plugins\": {$LIMIT, \"prometheus\": {}}}"
admin routes/auth "{\"uri\": \"/auth/*\", \"upstream\": $UPSTREAM,
    \"plugins\": {\"key-auth\": {}, $LIMIT, \"prometheus\": {}}}"
"$BUILD/dataplane/airgw-dataplane" --control-plane "127.0.0.1:$CFG_PORT" --workers "$WORKERS" \
    --http-listen "127.0.0.1:$GW_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --state-dir "$TMP/dp" --node-id bench-dp --access-log off --log-level warn \
    >"$TMP/dp.log" 2>&1 &
PIDS+=($!)
DP_PID=$!
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

cpu_ticks_of() { # PID: utime+stime ticks of PID and its children
    local p t=0 v
    for p in "$1" $(children_of "$1"); do
        v=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

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
    python3 - "$out" "$route" "$(( (cpu1 - cpu0) * 1000000 / CLK_TCK ))" "$round" \
        >>"$RESULTS" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print("\t".join(str(x) for x in (sys.argv[2], rps, p50, p99, n, bad.group(1) if bad else 0,
                                 int(sys.argv[3]) / n if n else 0, sys.argv[4])))
PY
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
