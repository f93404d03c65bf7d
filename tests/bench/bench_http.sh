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

. tests/bench/lib.sh
wrk_bench_defaults
CLOSE=${BENCH_CLOSE:-1}
PIN_WRK=${BENCH_PIN_WRK:-}

while [ $# -gt 0 ]; do
    case $1 in
    --no-close) CLOSE=0; shift ;;
    --close-only) CLOSE=only; shift ;;
    --pin-wrk) PIN_WRK=$2; shift 2 ;;
    *) wrk_bench_arg "$@"; shift "$ARG_SHIFT" ;;
    esac
done
min_duration 3

# ---- what it needs -------------------------------------------------------

apt_need nginx wrk
NGINX=$(sbin_path nginx)
WRK=$(command -v wrk)
CLK_TCK=$(getconf CLK_TCK)
need_built

# ---- processes: started here, stopped by PID on exit -----------------------

bench_init http

read -r UP_PORT NGX_PORT GW_PORT ADMIN_PORT CFG_PORT METRICS_PORT <<<"$(free_ports 6)"

# -- the upstream: nginx, 1 worker, a fixed answer from memory
start_upstream "$UP_PORT"

# -- nginx as the proxy
NGD=$TMP/nginx
mkdir -p "$NGD"
{
    nginx_common "$NGD" "$WORKERS"
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
start_controlplane "$ADMIN_PORT" "$CFG_PORT"
admin_put routes/bench "{\"uri\": \"/*\", \"upstream\": {\"type\": \"roundrobin\",
     \"nodes\": {\"127.0.0.1:$UP_PORT\": 1}}}"
start_dataplane "$CFG_PORT" "$GW_PORT" "$METRICS_PORT"

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
    local rps p50 p99 n errs cerr cpu_us=-
    IFS=$'\t' read -r rps p50 p99 n errs cerr <<<"$(wrk_figures "$out")"
    [ "$mpid" != - ] && [ "$n" -gt 0 ] && cpu_us=$(per_request_us $((cpu1 - cpu0)) "$n")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$mode" "$rps" \
        "$p50" "$p99" "${mem% *}" "${mem#* }" "$n" "$errs" "$cerr" "$cpu_us" "$ROUND" >>"$RESULTS"
}

MODES=(keepalive)
[ "$CLOSE" = 1 ] && MODES+=(close)
[ "$CLOSE" = only ] && MODES=(close)

mark_machine START
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
mark_machine END

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
