#!/usr/bin/env bash
# The HTTP device API (device-api plugin): ThingsBoard telemetry posts per
# second through airgw into a real mosquitto, with QoS 1 (the answer waits
# for the broker's PUBACK) and QoS 0, against the same POST proxied by airgw
# to an nginx upstream that answers 200 (the HTTP side alone, as reference).
#
#   tests/bench/bench_device_api.sh [--workers N] [--duration S]
#                                   [--connections C] [--threads T]
#                                   [--rounds R] [--pool N] [--build DIR]
#
# Starts, all on 127.0.0.1 and on free ports: mosquitto (its own config:
# no persistence, unlimited queues), a mosquitto_sub on the telemetry
# topics (QoS 1) counting what the broker delivers, Debian's nginx (1
# worker, `return 200`), airgw-controlplane and one airgw-dataplane
# --workers N with three routes created on the Admin API: /q1/api/v1/* and
# /q0/api/v1/* (device-api, qos 1 / 0, pool_size --pool) and /proxy/* (to
# nginx). wrk posts the seed example's body
#   {"stringKey":"value1", "booleanKey":true, "doubleKey":42.0, "longKey":73}
# to /api/v1/telemetry (no token: default_device) on C keep-alive
# connections. Per load: requests/s, p50/p99 (wrk --latency), non-2xx
# answers, the CPU time per request of the data plane and of mosquitto. At
# the end, once the subscriber has caught up (it lags behind at these rates),
# the posts answered 200 by device-api in all runs against the messages the
# subscriber received (at least as many: wrk stops with posts in flight,
# which may still be published).
# ROUNDS rounds (default 3), loads in rotating order; prints a markdown
# section with medians (min-max). Installs wrk / nginx / mosquitto with
# apt-get if missing. Everything it starts is stopped by PID on exit.
#
# Environment overrides: BENCH_WORKERS, BENCH_DURATION, BENCH_CONNS,
# BENCH_THREADS, BENCH_ROUNDS, BENCH_POOL, AIRGW_BUILD.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORKERS=${BENCH_WORKERS:-2}
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
POOL=${BENCH_POOL:-2}
BUILD=${AIRGW_BUILD:-build}

while [ $# -gt 0 ]; do
    case $1 in
    --workers) WORKERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --pool) POOL=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_device_api.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$DURATION" -ge 3 ] || { echo "bench_device_api.sh: --duration must be >= 3" >&2; exit 2; }

log() { echo "bench_device_api: $*" >&2; }
. "$(dirname "$0")/lib.sh"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
apt_install "${missing[@]}"
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
MOSQ=$(command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto)
WRK=$(command -v wrk)
CLK_TCK=$(getconf CLK_TCK)
for b in controlplane/airgw-controlplane dataplane/airgw-dataplane; do
    [ -x "$BUILD/$b" ] || { echo "bench_device_api.sh: $BUILD/$b is not built" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/airgw-bench-dapi.XXXXXX)
chmod 755 "$TMP"
PIDS=()
LOAD_PID=""
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r MQ_PORT UP_PORT GW_PORT ADMIN_PORT CFG_PORT METRICS_PORT <<<"$(free_ports 6)"

# -- mosquitto and a subscriber counting deliveries
cat >"$TMP/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
EOF
"$MOSQ" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
PIDS+=($!)
MQ_PID=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MQ_PORT") 2>/dev/null && break
    sleep 0.1
done
mosquitto_sub -h 127.0.0.1 -p "$MQ_PORT" -q 1 -t 'bench/#' -i bench-counter >"$TMP/sub.out" \
    2>"$TMP/sub.err" &
PIDS+=($!)

# -- nginx upstream (reference)
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
        location / { return 200 ""; }
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
    { echo "bench_device_api.sh: the control plane did not come up" >&2; exit 1; }
put() { # PATH JSON
    local code
    code=$(curl -s -o "$TMP/put.json" -w '%{http_code}' -X PUT \
        "http://127.0.0.1:$ADMIN_PORT/apisix/admin/$1" -H "X-API-KEY: $KEY" -d "$2")
    case $code in 200 | 201) ;; *)
        echo "bench_device_api.sh: PUT $1 answered $code: $(cat "$TMP/put.json")" >&2; exit 1 ;;
    esac
}
for q in 1 0; do
    put "routes/q$q" "{\"uri\": \"/q$q/api/v1/*\",
        \"plugins\": {\"device-api\": {\"qos\": $q, \"pool_size\": $POOL,
                      \"default_device\": \"bench\", \"topic_telemetry\": \"bench/q$q/{device}\"}},
        \"upstream\": {\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$MQ_PORT\": 1}}}"
done
put "routes/proxy" "{\"uri\": \"/proxy/*\",
    \"upstream\": {\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$UP_PORT\": 1}}}"
"$BUILD/dataplane/airgw-dataplane" --control-plane "127.0.0.1:$CFG_PORT" --workers "$WORKERS" \
    --http-listen "127.0.0.1:$GW_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --state-dir "$TMP/dp" --node-id bench-dp --access-log off --log-level warn \
    >"$TMP/dp.log" 2>&1 &
PIDS+=($!)
DP_PID=$!

BODY='{"stringKey":"value1", "booleanKey":true, "doubleKey":42.0, "longKey":73}'
post_status() {
    curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data-binary "$BODY" "http://127.0.0.1:$GW_PORT$1" 2>/dev/null || true
}
for p in /q1/api/v1/telemetry /q0/api/v1/telemetry /proxy/api/v1/telemetry; do
    ok=0
    for _ in $(seq 150); do
        [ "$(post_status "$p")" = 200 ] && { ok=1; break; }
        sleep 0.1
    done
    [ $ok = 1 ] || { echo "bench_device_api.sh: $p does not answer 200" >&2; tail "$TMP/dp.log" >&2; exit 1; }
done
sleep 0.5

cat >"$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
EOF

cpu_ticks_of() { # PID: utime+stime ticks of PID and its children
    local p t=0 v
    for p in "$1" $(children_of "$1"); do
        v=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
to_ms() { # wrk latency ("812.00us", "1.20ms", "2.00s") -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) ; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"
run_load() { # NAME PATH
    local name=$1 path=$2 out=$TMP/wrk.out
    local d0 m0
    d0=$(cpu_ticks_of "$DP_PID")
    m0=$(cpu_ticks_of "$MQ_PID")
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$TMP/post.lua" \
        "http://127.0.0.1:$GW_PORT$path" >"$out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || { echo "bench_device_api.sh: wrk failed:" >&2; cat "$out" >&2; exit 1; }
    LOAD_PID=""
    local d1 m1 reqs rps p50 p99 non2xx
    d1=$(cpu_ticks_of "$DP_PID")
    m1=$(cpu_ticks_of "$MQ_PID")
    reqs=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
    non2xx=${non2xx:-0}
    local ok=$((reqs - non2xx))
    local dpus=$(awk -v t=$((d1 - d0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
    local mqus=$(awk -v t=$((m1 - m0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$non2xx" \
        "$ok" "$dpus" "$mqus" >>"$RESULTS"
    log "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $non2xx, 200s $ok"
    sleep 1
}

LOADS=("device-api qos 1:/q1/api/v1/telemetry" "device-api qos 0:/q0/api/v1/telemetry"
       "proxy to nginx (reference):/proxy/api/v1/telemetry")
for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < ${#LOADS[@]}; i++)); do
        l=${LOADS[$(((i + r) % ${#LOADS[@]}))]}
        run_load "${l%%:*}" "${l#*:}"
    done
done

echo "### HTTP device API: telemetry posts per second"
echo
echo "$WORKERS workers, wrk -t$THREADS -c$CONNS -d${DURATION}s, keep-alive, the seed body (74 bytes),"
echo "pool_size $POOL, $ROUNDS rounds on $(nproc) cores; medians (min-max). CPU is per request."
echo
# The subscriber: until its count holds still for 2 s (at most 120 s).
prev=-1
for _ in $(seq 240); do
    n=$(wc -l <"$TMP/sub.out")
    [ "$n" = "$prev" ] && [ "${still:-0}" -ge 4 ] && break
    [ "$n" = "$prev" ] && still=$((${still:-0} + 1)) || still=0
    prev=$n
    sleep 0.5
done
delivered=$(wc -l <"$TMP/sub.out")
acked=$(awk -F'\t' '$1 ~ /^device-api/ { s += $6 } END { print s + 0 }' "$RESULTS")

echo "| load | posts/s | p50 ms | p99 ms | non-2xx | data plane CPU µs | mosquitto CPU µs |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for l in "${LOADS[@]}"; do
    name=${l%%:*}
    awk -F'\t' -v n="$name" '
        function med(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return a[int((k + 1) / 2)] }
        function mm(a, k,   i, lo, hi) { lo = a[1]; hi = a[1]; for (i = 2; i <= k; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] } return sprintf("%s (%s-%s)", med(a, k), lo, hi) }
        $1 == n { k++; r[k] = $2 + 0; p5[k] = $3 + 0; p9[k] = $4 + 0; nx[k] = $5 + 0; dc[k] = $7 + 0; mc[k] = $8 + 0 }
        END {
            if (!k) exit
            printf "| %s | %s | %s | %s | %s | %s | %s |\n", n, mm(r, k), med(p5, k), med(p9, k), med(nx, k), med(dc, k), (n ~ /proxy/ ? "-" : med(mc, k))
        }' "$RESULTS"
done
echo
echo "Subscriber check: $acked device-api posts answered 200 over all runs, $delivered messages"
echo "delivered to a QoS 1 mosquitto_sub ($([ "$delivered" -ge "$acked" ] && echo "none missing" || echo "MISSING $((acked - delivered))"))."
