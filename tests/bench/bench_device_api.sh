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

. tests/bench/lib.sh
wrk_bench_defaults
POOL=${BENCH_POOL:-2}

while [ $# -gt 0 ]; do
    case $1 in
    --pool) POOL=$2; shift 2 ;;
    *) wrk_bench_arg "$@"; shift "$ARG_SHIFT" ;;
    esac
done
min_duration 3

apt_need wrk nginx mosquitto mosquitto_sub:mosquitto-clients
NGINX=$(sbin_path nginx)
MOSQ=$(sbin_path mosquitto)
WRK=$(command -v wrk)
CLK_TCK=$(getconf CLK_TCK)
need_built

bench_init dapi
chmod 755 "$TMP"

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
start_upstream "$UP_PORT" ""

# -- airgw
start_controlplane "$ADMIN_PORT" "$CFG_PORT"
for q in 1 0; do
    admin_put "routes/q$q" "{\"uri\": \"/q$q/api/v1/*\",
        \"plugins\": {\"device-api\": {\"qos\": $q, \"pool_size\": $POOL,
                      \"default_device\": \"bench\", \"topic_telemetry\": \"bench/q$q/{device}\"}},
        \"upstream\": {\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$MQ_PORT\": 1}}}"
done
admin_put "routes/proxy" "{\"uri\": \"/proxy/*\",
    \"upstream\": {\"type\": \"roundrobin\", \"nodes\": {\"127.0.0.1:$UP_PORT\": 1}}}"
start_dataplane "$CFG_PORT" "$GW_PORT" "$METRICS_PORT"

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
    IFS=$'\t' read -r rps p50 p99 reqs non2xx _ <<<"$(wrk_figures "$out")"
    p50=$(printf '%.2f' "$p50")
    p99=$(printf '%.2f' "$p99")
    local ok=$((reqs - non2xx))
    local dpus mqus
    dpus=$(per_request_us $((d1 - d0)) "$reqs")
    mqus=$(per_request_us $((m1 - m0)) "$reqs")
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
