#!/usr/bin/env bash
# HTTP proxying: airgw against nginx proxy_pass, in one run, on one machine,
# with the same number of workers, the same upstream and the same wrk load.
#
#   tests/bench/bench_http.sh [--workers N] [--duration S] [--connections C]
#                             [--threads T] [--rounds R] [--no-close]
#                             [--close-only] [--pin-wrk CPUS] [--build DIR]
#
# Starts, all on 127.0.0.1 and on free ports:
#   - one upstream: Debian's nginx (1 worker) answering every request with a
#     fixed 200 (20-byte body) from memory, never touching the disk;
#   - airgw: airgw-controlplane on a temporary SQLite state dir and one
#     airgw-dataplane --workers N; the route `/*` to the upstream is created
#     with curl on the Admin API, like an operator would;
#   - nginx: Debian's nginx in the foreground with its own temporary prefix,
#     worker_processes N, proxy_pass to the same upstream through a keepalive
#     pool (keepalive 320, HTTP/1.1, Connection ""), the X-Forwarded-*/X-Real-IP
#     headers airgw adds (APISIX's defaults), listen ... reuseport (as airgw and
#     APISIX listen).
# Both proxies have access logs off and keep upstream connections alive (pool
# 320, 1000 requests per upstream connection: airgw's default and nginx's).
#
# After a 2 s warm-up of each, ROUNDS rounds (default 3) of: wrk with
# keep-alive, then wrk with `Connection: close` (one new connection per
# request; not with --no-close), each time against airgw and nginx back to
# back (which one goes first alternates between rounds) and then the upstream
# directly, as a reference. Per load it records requests/s, p50 and p99
# (wrk --latency), the proxy's memory (RSS and PSS summed over master +
# workers from /proc/PID/smaps_rollup, sampled one second before the load
# ends) and the proxy's CPU time per request (utime + stime of master +
# workers over the load / requests completed). Prints a markdown section on
# stdout: medians (min-max), airgw/nginx ratios, the per-round ratios, and
# how much CPU other programs took meanwhile (this is a 2-core machine: wrk,
# the upstream and the proxy already share it; anything else shows in the
# figures). wrk is not pinned by default: pinning it to one core
# (--pin-wrk 1) gave a wider spread between rounds here.
#
# Environment overrides: BENCH_WORKERS, BENCH_DURATION, BENCH_CONNS,
# BENCH_THREADS, BENCH_ROUNDS, BENCH_CLOSE=0|1|only, BENCH_PIN_WRK, AIRGW_BUILD.
# Installs nginx and wrk with apt-get if they are missing (never starting the
# system nginx). Everything it starts is stopped by PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORKERS=${BENCH_WORKERS:-2}
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
CLOSE=${BENCH_CLOSE:-1}
PIN_WRK=${BENCH_PIN_WRK:-}
BUILD=${AIRGW_BUILD:-build}

while [ $# -gt 0 ]; do
    case $1 in
    --workers) WORKERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --no-close) CLOSE=0; shift ;;
    --close-only) CLOSE=only; shift ;;
    --pin-wrk) PIN_WRK=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_http.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$DURATION" -ge 3 ] || { echo "bench_http.sh: --duration must be >= 3" >&2; exit 2; }

log() { echo "bench_http: $*" >&2; }
. "$(dirname "$0")/lib.sh"

# ---- what it needs -------------------------------------------------------

install_missing() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    apt_install "${missing[@]}"
}
install_missing
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
WRK=$(command -v wrk)
CLK_TCK=$(getconf CLK_TCK)

for b in controlplane/airgw-controlplane dataplane/airgw-dataplane; do
    [ -x "$BUILD/$b" ] || { echo "bench_http.sh: $BUILD/$b is not built" >&2; exit 1; }
done
CP_BIN=$BUILD/controlplane/airgw-controlplane
DP_BIN=$BUILD/dataplane/airgw-dataplane

# ---- processes: started here, stopped by PID on exit -----------------------

TMP=$(mktemp -d /tmp/airgw-bench-http.XXXXXX)
PIDS=()      # in start order; stopped in reverse
LOAD_PID=""



trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r UP_PORT NGX_PORT GW_PORT ADMIN_PORT CFG_PORT METRICS_PORT <<<"$(free_ports 6)"

nginx_common() { # DIR: paths of an nginx instance of its own
    cat <<EOF
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
EOF
}
nginx_temp_paths() {
    cat <<EOF
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

start_nginx() { # NAME DIR: nginx in the foreground, master PID in NAME_PID
    local name=$1 dir=$2
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || {
        echo "bench_http.sh: bad nginx config for $name" >&2; exit 1; }
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    printf -v "${name}_PID" '%s' "$!"
}

# -- the upstream: nginx, 1 worker, a fixed answer from memory
UPD=$TMP/upstream
mkdir -p "$UPD"
{
    nginx_common "$UPD" | sed 's/^master_process on;/master_process on;\nworker_processes 1;/'
    cat <<EOF
http {
    access_log off;
$(nginx_temp_paths "$UPD")
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            default_type text/plain;
            return 200 "hello from upstream\n";
        }
    }
}
EOF
} >"$UPD/nginx.conf"
start_nginx UP "$UPD"

# -- nginx as the proxy
NGD=$TMP/nginx
mkdir -p "$NGD"
{
    nginx_common "$NGD" | sed "s/^master_process on;/master_process on;\nworker_processes $WORKERS;/"
    cat <<EOF
http {
    access_log off;
$(nginx_temp_paths "$NGD")
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 320;
    }
    server {
        listen 127.0.0.1:$NGX_PORT reuseport;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Port \$server_port;
        }
    }
}
EOF
} >"$NGD/nginx.conf"
start_nginx NGX "$NGD"

# -- airgw: control plane + one data plane, route created on the Admin API
KEY=bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$TMP/cp" "$TMP/dp"
"$CP_BIN" --state-dir "$TMP/cp" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --config-listen "127.0.0.1:$CFG_PORT" --admin-key "$KEY" --log-level warn \
    >"$TMP/cp/log" 2>&1 &
PIDS+=($!)
CP_PID=$!
wait_status "http://127.0.0.1:$ADMIN_PORT/healthz" 200 ||
    { echo "bench_http.sh: the control plane did not come up:" >&2; tail "$TMP/cp/log" >&2; exit 1; }
code=$(curl -s -o "$TMP/put.json" -w '%{http_code}' -X PUT \
    "http://127.0.0.1:$ADMIN_PORT/apisix/admin/routes/bench" -H "X-API-KEY: $KEY" \
    -d "{\"uri\": \"/*\", \"upstream\": {\"type\": \"roundrobin\",
         \"nodes\": {\"127.0.0.1:$UP_PORT\": 1}}}")
case $code in 200 | 201) ;; *)
    echo "bench_http.sh: route PUT answered $code: $(cat "$TMP/put.json")" >&2; exit 1 ;;
esac
"$DP_BIN" --control-plane "127.0.0.1:$CFG_PORT" --workers "$WORKERS" \
    --http-listen "127.0.0.1:$GW_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --state-dir "$TMP/dp" --node-id bench-dp --access-log off --log-level warn \
    >"$TMP/dp.log" 2>&1 &
PIDS+=($!)
DP_PID=$!

URL_PATH=/bench/hello
for t in "UP:$UP_PORT" "NGX:$NGX_PORT" "GW:$GW_PORT"; do
    wait_status "http://127.0.0.1:${t#*:}$URL_PATH" 200 15 || {
        echo "bench_http.sh: ${t%%:*} does not answer 200 on $URL_PATH" >&2
        tail "$TMP/dp.log" "$NGD/error.log" "$UPD/error.log" >&2 2>/dev/null || true
        exit 1
    }
done
body_gw=$(curl -s "http://127.0.0.1:$GW_PORT$URL_PATH")
body_ngx=$(curl -s "http://127.0.0.1:$NGX_PORT$URL_PATH")
[ "$body_gw" = "$body_ngx" ] || { echo "bench_http.sh: airgw and nginx answer differently" >&2; exit 1; }
sleep 0.5 # let every worker be up
nw_gw=$(children_of "$DP_PID" | wc -w)
nw_ngx=$(children_of "$NGX_PID" | wc -w)

# ---- measuring ---------------------------------------------------------------

cpu_ticks_of() { # PID: utime+stime ticks of PID and its children
    local p t=0 v
    for p in "$1" $(children_of "$1"); do
        v=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

RESULTS=$TMP/results.tsv
ROUND=0
: >"$RESULTS"

# run_wrk TARGET MODE PORT PIDFORMEM|- [record=1]
run_wrk() {
    local target=$1 mode=$2 port=$3 mpid=$4 record=${5:-1} dur=${6:-$DURATION}
    local out=$TMP/wrk.out hdr=()
    [ "$mode" = close ] && hdr=(-H "Connection: close")
    local pin=()
    [ -n "$PIN_WRK" ] && pin=(taskset -c "$PIN_WRK")
    local cpu0=0 cpu1=0
    [ "$mpid" != - ] && cpu0=$(cpu_ticks_of "$mpid")
    "${pin[@]}" "$WRK" -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${hdr[@]}" \
        "http://127.0.0.1:$port$URL_PATH" >"$out" 2>&1 &
    LOAD_PID=$!
    local mem="- -"
    if [ "$mpid" != - ]; then
        sleep $((dur - 1))
        mem=$(mem_kb "$mpid")
    fi
    wait "$LOAD_PID" || { echo "bench_http.sh: wrk failed:" >&2; cat "$out" >&2; exit 1; }
    LOAD_PID=""
    [ "$mpid" != - ] && cpu1=$(cpu_ticks_of "$mpid")
    [ "$record" = 1 ] || return 0
    python3 - "$out" "$target" "$mode" "$mem" "$(( (cpu1 - cpu0) * 1000000 / CLK_TCK ))" "$ROUND" \
        >>"$RESULTS" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    n, u = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errs = (int(non2xx.group(1)) if non2xx else 0)
conn_err = sum(int(x) for x in sock.groups()) if sock else 0
rss, pss = sys.argv[4].split()
cpu_us = int(sys.argv[5]) / n if rss != "-" and n else "-"
print("\t".join(str(x) for x in (sys.argv[2], sys.argv[3], rps, p50, p99, rss, pss, n, errs, conn_err, cpu_us, sys.argv[6])))
PY
}

MODES=(keepalive)
[ "$CLOSE" = 1 ] && MODES+=(close)
[ "$CLOSE" = only ] && MODES=(close)

# CPU ticks: "all busy" (from /proc/stat) and "this benchmark's" (its daemons
# and their workers, plus reaped children: wrk). The difference over the run
# is what other programs on the machine took.
cpu_ticks() {
    local pids="$$ ${PIDS[*]}" p
    for p in ${PIDS[*]}; do pids="$pids $(children_of "$p")"; done
    python3 - $pids <<'PY2'
import sys
f = open("/proc/stat").readline().split()[1:]
busy = sum(int(x) for i, x in enumerate(f) if i not in (3, 4))  # minus idle, iowait
ours = 0
for i, p in enumerate(sys.argv[1:]):
    try:
        st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    ours += int(st[11]) + int(st[12])  # utime, stime
    if i == 0:
        ours += int(st[13]) + int(st[14])  # the script's reaped children
print(busy, ours)
PY2
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_START=$(cpu_ticks)
T_START=$(date +%s.%N)
log "upstream :$UP_PORT, nginx :$NGX_PORT ($nw_ngx workers), airgw :$GW_PORT ($nw_gw workers)"
log "warm-up"
for m in "${MODES[@]}"; do
    run_wrk airgw "$m" "$GW_PORT" - 0 2
    run_wrk nginx "$m" "$NGX_PORT" - 0 2
done
idle_gw=$(mem_kb "$DP_PID")
idle_ngx=$(mem_kb "$NGX_PID")

for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=(airgw nginx direct); else order=(nginx airgw direct); fi
    ROUND=$r
    for m in "${MODES[@]}"; do
        for t in "${order[@]}"; do
            log "round $r/$ROUNDS: $t, $m"
            case $t in
            airgw) run_wrk airgw "$m" "$GW_PORT" "$DP_PID" ;;
            nginx) run_wrk nginx "$m" "$NGX_PORT" "$NGX_PID" ;;
            direct) run_wrk direct "$m" "$UP_PORT" - ;;
            esac
        done
    done
done
cp_rss=$(mem_kb "$CP_PID" | cut -d' ' -f1)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_END=$(cpu_ticks)
T_END=$(date +%s.%N)

# ---- report ------------------------------------------------------------------

BUILD_DESC=$(python3 - "$BUILD" <<'PY2'
import json, sys
try:
    o = {x["name"]: x["value"] for x in json.load(open(sys.argv[1] + "/meson-info/intro-buildoptions.json"))}
    print(f"{o['buildtype']}, -O{o['optimization']}")
except Exception:
    print("build type unknown")
PY2
)
case $BUILD in /*) ;; *) BUILD_DESC="$BUILD_DESC, HEAD $(git rev-parse --short HEAD 2>/dev/null || echo ?)" ;; esac

python3 - "$RESULTS" <<PY
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = {}
byround = {}
for t, m, rps, p50, p99, rss, pss, n, errs, cerr, cpu, rnd in rows:
    byround[(t, m, rnd)] = float(rps)
    d = data.setdefault((t, m), {"rps": [], "p50": [], "p99": [], "rss": [], "pss": [],
                                 "cpu": [], "errs": 0, "cerr": 0, "n": 0})
    if cpu != "-":
        d["cpu"].append(float(cpu))
    d["rps"].append(float(rps)); d["p50"].append(float(p50)); d["p99"].append(float(p99))
    if rss != "-":
        d["rss"].append(int(rss) / 1024); d["pss"].append(int(pss) / 1024)
    d["errs"] += int(errs); d["cerr"] += int(cerr); d["n"] += int(n)

def med(v): return statistics.median(v)
def fmt(v, nd):
    if not v: return "-"
    s = f"{med(v):,.{nd}f}"
    if len(v) > 1: s += f" ({min(v):,.{nd}f}–{max(v):,.{nd}f})"
    return s

modes = "${MODES[*]}".split()
mode_name = {"keepalive": "keep-alive", "close": "Connection: close"}
print("### HTTP proxying: airgw against nginx proxy_pass")
print()
print("$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); airgw from \`$BUILD\` ($BUILD_DESC), "
      "$("$NGINX" -v 2>&1 | sed 's/.*: //'), wrk $("$WRK" -v 2>&1 | head -1 | awk '{print $2}').")
print()
print("Same upstream (nginx, 1 worker, fixed 20-byte 200), $WORKERS workers for each proxy "
      "(airgw $nw_gw, nginx $nw_ngx running), upstream keepalive pool 320 for both, access logs off. "
      "wrk -t$THREADS -c$CONNS -d${DURATION}s --latency"
      + (", pinned with taskset -c $PIN_WRK" if "$PIN_WRK" else ", not pinned")
      + f"; $ROUNDS round(s) alternating airgw/nginx (which goes first alternates), median (min–max). Memory: RSS and PSS "
      "summed over master + workers (smaps_rollup), 1 s before each load ends. Proxy CPU: "
      "utime + stime of master + workers during the load, divided by the requests wrk completed "
      "(less sensitive than requests/s to other work on the machine). "
      "**The machine has $(nproc) cores: wrk, the upstream and the proxy share them**, so the "
      "absolute figures are those of a crowded box; the ratios are the point.")
print()
print("| target | connections | requests/s | p50 (ms) | p99 (ms) | proxy CPU (µs/request) | RSS (MiB) | PSS (MiB) | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for m in modes:
    for t in ("airgw", "nginx", "direct"):
        d = data.get((t, m))
        if not d: continue
        err = f"{d['errs']} non-2xx, {d['cerr']} socket of {d['n']:,}"
        name = t if t != "direct" else "upstream direct (no proxy)"
        print(f"| {name} | {mode_name[m]} | {fmt(d['rps'], 0)} | {fmt(d['p50'], 2)} | "
              f"{fmt(d['p99'], 2)} | {fmt(d['cpu'], 1)} | {fmt(d['rss'], 1)} | {fmt(d['pss'], 1)} | {err} |")
print()
for m in modes:
    a, n = data.get(("airgw", m)), data.get(("nginx", m))
    if not a or not n: continue
    r = lambda k: med(a[k]) / med(n[k]) if med(n[k]) else float("nan")
    print(f"- {mode_name[m]}, airgw / nginx: requests/s **{r('rps'):.2f}**, "
          f"p50 {r('p50'):.2f}, p99 {r('p99'):.2f}, CPU per request **{r('cpu'):.2f}**, RSS **{r('rss'):.2f}**, PSS **{r('pss'):.2f}**"
          " (below 1 is better for latency and memory, above 1 for requests/s)")
    pr = sorted(byround[("airgw", m, k)] / byround[("nginx", m, k)] for (t, mm, k) in byround
                if t == "airgw" and mm == m and ("nginx", m, k) in byround)
    if len(pr) > 1:
        print(f"  - requests/s of airgw / nginx in the same round (back-to-back runs): median "
              f"**{med(pr):.2f}**, per round " + ", ".join(f"{x:.2f}" for x in pr) + " (sorted)")
ig, ing = "$idle_gw".split(), "$idle_ngx".split()
print(f"- After warm-up, idle: airgw RSS {int(ig[0])/1024:.1f} MiB / PSS {int(ig[1])/1024:.1f} MiB, "
      f"nginx RSS {int(ing[0])/1024:.1f} MiB / PSS {int(ing[1])/1024:.1f} MiB. airgw's control "
      f"plane (not in the data path, not counted above): RSS {int('$cp_rss')/1024:.1f} MiB.")
b0, o0 = map(int, "$CPU_START".split()); b1, o1 = map(int, "$CPU_END".split())
hz = $(getconf CLK_TCK); span = ($T_END - $T_START) * $(nproc)
other = max(0, (b1 - b0) - (o1 - o0)) / hz
print(f"- CPU used by other programs on the machine during the rounds: {other:.0f} s of "
      f"{span:.0f} core-seconds ({100 * other / span:.0f}%); this benchmark itself: "
      f"{(o1 - o0) / hz:.0f} s ({100 * (o1 - o0) / hz / span:.0f}%). Load average before: "
      "$LOAD_START, after: $LOAD_END.")
print()
print("Per round, requests/s:")
print()
for m in modes:
    for t in ("airgw", "nginx", "direct"):
        d = data.get((t, m))
        if d:
            print(f"- {t}, {mode_name[m]}: " + ", ".join(f"{x:,.0f}" for x in d["rps"]))
PY
