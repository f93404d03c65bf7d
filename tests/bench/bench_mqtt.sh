#!/usr/bin/env bash
# MQTT proxying: airgw's stream proxy (mqtt-proxy) against nginx's stream
# module and HAProxy (mode tcp), and directly to the broker, in one run, on
# one machine, with the same number of workers, the same broker and the same
# load (airgw-mqttload, tests/bench/mqttload.c).
#
#   tests/bench/bench_mqtt.sh [--workers N] [--duration S] [--rounds R]
#                             [--publishers P] [--subscribers S] [--size B]
#                             [--paced-rate R] [--inflight W] [--hold N]
#                             [--connect-rate R] [--loads LIST] [--no-idle]
#                             [--no-load] [--build DIR]
#
# Starts, all on 127.0.0.1 and on free ports:
#   - one broker: Debian's mosquitto (max_connections -1, set_tcp_nodelay,
#     no persistence), its open-files limit raised with ulimit -n;
#   - airgw: airgw-controlplane on a temporary SQLite state dir and one
#     airgw-dataplane --workers N --stream-listen; an upstream (chash on
#     mqtt_client_id, the broker) and a stream route with mqtt-proxy (MQTT,
#     level 4) are created with curl on the Admin API, like an operator would;
#   - nginx: Debian's nginx, its stream module (load_module when it is
#     dynamic), worker_processes N, `listen ... reuseport` (as airgw
#     listens), proxy_pass to the broker;
#   - HAProxy: Debian's haproxy, mode tcp, nbthread N, in the foreground.
# All three proxies set TCP_NODELAY both ways (airgw and HAProxy always,
# nginx's stream tcp_nodelay is on by default) and log nothing per
# connection.
#
# 1. Message load: for ROUNDS rounds, rotating which target goes first, each
#    LOAD against airgw, nginx, HAProxy and the broker directly: P publishers
#    and S subscribers (subscriber j on publisher j's topic), SIZE-byte
#    payloads, DURATION seconds. Loads (--loads, comma-separated):
#      q0max  QoS 0 as fast as an end-to-end window of W messages per
#             publisher allows (throughput; latency under saturation)
#      q1max  QoS 1 as fast as W unacknowledged PUBLISHes allow
#      q0rate QoS 0 paced at R messages/s per publisher (latency)
#      q1rate QoS 1 paced at R messages/s per publisher (latency)
#    The proxy's memory (RSS and PSS summed over master + workers, from
#    /proc/PID/smaps_rollup) is sampled one second before each load ends; the
#    CPU time of the proxy and of the broker is taken over the load.
# 2. Idle connections: for ROUNDS rounds, rotating, for each target: a fresh
#    broker and a fresh proxy (so freed memory kept by an allocator or a pool
#    from an earlier run does not hide the cost), one connection through it
#    to warm it up, memory measured; then HOLD clients connect at
#    CONNECT_RATE/s with MQTT keep-alive 60 s and stay idle; three seconds
#    after the last CONNACK the proxy's and the broker's memory are measured
#    again: (held - before) / connections = bytes per idle connection. Then
#    the clients disconnect and the memory is measured once more.
#    A proxy holds two sockets per connection: when the open-files limit
#    cannot be raised far enough (a container's hard limit), a single-process
#    proxy (HAProxy) holds as many as its limit allows, and the report says so.
# Prints a markdown section: medians (min-max) and ratios.
#
# Environment overrides: BENCH_WORKERS, BENCH_DURATION, BENCH_ROUNDS,
# BENCH_MQTT_PUBS, BENCH_MQTT_SUBS, BENCH_MQTT_SIZE, BENCH_MQTT_RATE,
# BENCH_MQTT_INFLIGHT, BENCH_MQTT_HOLD, BENCH_MQTT_CONNECT_RATE,
# BENCH_MQTT_LOADS, BENCH_MQTT_IDLE=0|1, BENCH_MQTT_LOAD=0|1, AIRGW_BUILD,
# BENCH_KEEP=1 (keep the temporary directory).
# Installs mosquitto, nginx (with its stream module) and haproxy with apt-get
# if they are missing (never starting the system services). Everything it
# starts is stopped by PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORKERS=${BENCH_WORKERS:-2}
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
PUBS=${BENCH_MQTT_PUBS:-10}
SUBS=${BENCH_MQTT_SUBS:-10}
SIZE=${BENCH_MQTT_SIZE:-64}
RATE=${BENCH_MQTT_RATE:-1000}
INFLIGHT=${BENCH_MQTT_INFLIGHT:-32}
HOLD=${BENCH_MQTT_HOLD:-10000}
CONNECT_RATE=${BENCH_MQTT_CONNECT_RATE:-2000}
LOADS=${BENCH_MQTT_LOADS:-q0max,q1max,q0rate,q1rate}
DO_IDLE=${BENCH_MQTT_IDLE:-1}
DO_LOAD=${BENCH_MQTT_LOAD:-1}
BUILD=${AIRGW_BUILD:-build}

while [ $# -gt 0 ]; do
    case $1 in
    --workers) WORKERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --publishers) PUBS=$2; shift 2 ;;
    --subscribers) SUBS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --paced-rate) RATE=$2; shift 2 ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    --hold) HOLD=$2; shift 2 ;;
    --connect-rate) CONNECT_RATE=$2; shift 2 ;;
    --loads) LOADS=$2; shift 2 ;;
    --no-idle) DO_IDLE=0; shift ;;
    --no-load) DO_LOAD=0; shift ;;
    --build) BUILD=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_mqtt.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a LOAD_LIST <<<"$LOADS"
for l in "${LOAD_LIST[@]}"; do
    case $l in q0max | q1max | q0rate | q1rate) ;; *)
        echo "bench_mqtt.sh: unknown load $l (q0max, q1max, q0rate, q1rate)" >&2; exit 2 ;;
    esac
done

. tests/bench/lib.sh
min_duration 3

# ---- what it needs -------------------------------------------------------

install_missing() {
    local missing=()
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    # Debian builds the stream module as a dynamic module in its own package.
    if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then
        if "$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)" -V 2>&1 |
            grep -q -- '--with-stream=dynamic' &&
            [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
            missing+=(libnginx-mod-stream)
        fi
    else
        missing+=(libnginx-mod-stream)
    fi
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    apt_install "${missing[@]}"
}
install_missing
NGINX=$(sbin_path nginx)
HAPROXY=$(sbin_path haproxy)
MOSQUITTO=$(sbin_path mosquitto)

need_built

# ---- processes: started here, stopped by PID on exit -----------------------

bench_init mqtt

# The load tool: built by meson with the rest, else compiled here.
LOAD_BIN=$BUILD/tests/airgw-mqttload
if [ ! -x "$LOAD_BIN" ]; then
    LOAD_BIN=$TMP/airgw-mqttload
    gcc -O2 -D_GNU_SOURCE -Wall -Wextra -Werror tests/bench/mqttload.c \
        $(pkg-config --cflags --libs libuv) -lm -o "$LOAD_BIN" ||
        die "cannot build tests/bench/mqttload.c"
fi

# Open files: every process started here inherits this. 10,000 proxied
# connections are 20,000 sockets in a proxy.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

forget_pid() { # PID: stop it and drop it from PIDS (it may be reused later)
    local pid=$1 keep=() p
    stop_pid "$pid"
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

read -r BROKER_PORT NGX_PORT HAP_PORT GW_PORT GW_HTTP_PORT ADMIN_PORT CFG_PORT METRICS_PORT \
    <<<"$(free_ports 8)"

wait_mqtt() { # PORT [SECONDS]: until one MQTT client gets its CONNACK there
    local n=$((${2:-15} * 10))
    for _ in $(seq $n); do
        "$LOAD_BIN" --port "$1" --clients 1 --hold --duration 0 --json \
            --client-id-prefix probe >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# -- the broker
MQD=$TMP/mosquitto
mkdir -p "$MQD"
cat >"$MQD/mosquitto.conf" <<EOF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
max_connections -1
set_tcp_nodelay true
persistence false
log_dest file $MQD/mosquitto.log
log_type error
log_type warning
EOF
BROKER_PID=""
start_broker() {
    "$MOSQUITTO" -c "$MQD/mosquitto.conf" >"$MQD/stdout.log" 2>&1 &
    PIDS+=($!)
    BROKER_PID=$!
    wait_mqtt "$BROKER_PORT" || {
        echo "bench_mqtt.sh: mosquitto does not answer on $BROKER_PORT" >&2
        tail "$MQD/mosquitto.log" "$MQD/stdout.log" >&2 2>/dev/null || true
        exit 1
    }
}

# -- nginx, stream module
NGD=$TMP/nginx
mkdir -p "$NGD"
NGX_LOAD_MODULE=""
if "$NGINX" -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    NGX_LOAD_MODULE="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
fi
# Enough for every connection in one worker (clients + upstreams + slack),
# within the open-files limit.
NGX_CONNS=$((2 * HOLD + 256))
[ "$NGX_CONNS" -gt $((NOFILE - 64)) ] && NGX_CONNS=$((NOFILE - 64))
cat >"$NGD/nginx.conf" <<EOF
$NGX_LOAD_MODULE
daemon off;
master_process on;
worker_processes $WORKERS;
worker_rlimit_nofile $NOFILE;
pid $NGD/nginx.pid;
error_log $NGD/error.log warn;
events { worker_connections $NGX_CONNS; }
stream {
    upstream broker {
        server 127.0.0.1:$BROKER_PORT;
    }
    server {
        listen 127.0.0.1:$NGX_PORT reuseport backlog=4096;
        proxy_pass broker;
    }
}
EOF
"$NGINX" -t -q -p "$NGD" -c "$NGD/nginx.conf" -e "$NGD/error.log" || {
    echo "bench_mqtt.sh: bad nginx config (is the stream module there?)" >&2; exit 1; }
NGX_PID=""

# -- HAProxy: one process, N threads; two file descriptors per connection
HPD=$TMP/haproxy
mkdir -p "$HPD"
HAP_MAXCONN=$((HOLD + 64))
[ $((2 * HAP_MAXCONN + 200)) -gt "$NOFILE" ] && HAP_MAXCONN=$(((NOFILE - 200) / 2))
cat >"$HPD/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn $HAP_MAXCONN
defaults
    mode tcp
    maxconn $HAP_MAXCONN
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend mqtt
    bind 127.0.0.1:$HAP_PORT
    default_backend broker
backend broker
    server mosquitto 127.0.0.1:$BROKER_PORT
EOF
"$HAPROXY" -c -q -f "$HPD/haproxy.cfg" || { echo "bench_mqtt.sh: bad haproxy config" >&2; exit 1; }
HAP_PID=""
start_haproxy() {
    "$HAPROXY" -db -f "$HPD/haproxy.cfg" >"$HPD/stdout.log" 2>&1 &
    PIDS+=($!)
    HAP_PID=$!
}

# -- airgw: control plane (route on the Admin API) + data plane
start_controlplane "$ADMIN_PORT" "$CFG_PORT"
admin_put upstreams/broker "{\"type\": \"chash\", \"key\": \"mqtt_client_id\",
    \"nodes\": {\"127.0.0.1:$BROKER_PORT\": 1}}"
admin_put stream_routes/mqtt "{\"server_port\": $GW_PORT, \"upstream_id\": \"broker\",
    \"plugins\": {\"mqtt-proxy\": {\"protocol_name\": \"MQTT\", \"protocol_level\": 4}}}"
DP_PID=""
DP_N=0
start_airgw() {
    DP_N=$((DP_N + 1))
    mkdir -p "$TMP/dp$DP_N"
    "$DP_BIN" --control-plane "127.0.0.1:$CFG_PORT" --workers "$WORKERS" \
        --http-listen "127.0.0.1:$GW_HTTP_PORT" --stream-listen "127.0.0.1:$GW_PORT" \
        --metrics-listen "127.0.0.1:$METRICS_PORT" --state-dir "$TMP/dp$DP_N" \
        --node-id "bench-dp$DP_N" --access-log off --log-level warn \
        >"$TMP/dp$DP_N.log" 2>&1 &
    PIDS+=($!)
    DP_PID=$!
}

port_of() { # TARGET
    case $1 in
    airgw) echo "$GW_PORT" ;; nginx) echo "$NGX_PORT" ;; haproxy) echo "$HAP_PORT" ;;
    direct) echo "$BROKER_PORT" ;;
    esac
}
pid_of() { # TARGET: the proxy's (master) PID, or - for direct
    case $1 in
    airgw) echo "$DP_PID" ;; nginx) echo "$NGX_PID" ;; haproxy) echo "$HAP_PID" ;; direct) echo - ;;
    esac
}
start_target() { # TARGET, then wait until it proxies a CONNECT
    case $1 in
    airgw) start_airgw ;; nginx) start_nginx NGX "$NGD" ;; haproxy) start_haproxy ;; direct) return 0 ;;
    esac
    wait_mqtt "$(port_of "$1")" 15 || {
        echo "bench_mqtt.sh: $1 does not proxy MQTT on $(port_of "$1")" >&2
        tail "$TMP"/dp*.log "$NGD/error.log" "$HPD/stdout.log" >&2 2>/dev/null || true
        exit 1
    }
}
stop_target() { # TARGET
    local p
    p=$(pid_of "$1")
    [ "$p" = - ] || [ -z "$p" ] || forget_pid "$p"
}

# ---- measuring ---------------------------------------------------------------

fds_of() { # PID: open descriptors of PID and its children
    local p n=0
    [ "$1" = - ] && { echo 0; return; }
    for p in "$1" $(children_of "$1"); do
        n=$((n + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
    done
    echo "$n"
}

slab_kb() { awk '/^Slab:/{print $2}' /proc/meminfo; }

RESULTS=$TMP/load.tsv
IDLE=$TMP/idle.tsv
: >"$RESULTS"
: >"$IDLE"

load_args() { # LOAD
    case $1 in
    q0max) echo "--qos 0 --rate 0 --inflight $INFLIGHT" ;;
    q1max) echo "--qos 1 --rate 0 --inflight $INFLIGHT" ;;
    q0rate) echo "--qos 0 --rate $RATE" ;;
    q1rate) echo "--qos 1 --rate $RATE --inflight $INFLIGHT" ;;
    esac
}

# run_load TARGET LOAD ROUND [record=1] [seconds]
run_load() {
    local target=$1 load=$2 round=$3 record=${4:-1} dur=${5:-$DURATION}
    local port mpid out=$TMP/load.json
    port=$(port_of "$target")
    mpid=$(pid_of "$target")
    local t0 b0
    t0=$(cpu_ticks_of "$mpid")
    b0=$(cpu_ticks_of "$BROKER_PID")
    # shellcheck disable=SC2046
    "$LOAD_BIN" --port "$port" --publishers "$PUBS" --subscribers "$SUBS" --size "$SIZE" \
        --duration "$dur" --topic-prefix "bench/$target" --client-id-prefix "$target" \
        $(load_args "$load") --json >"$out" 2>"$TMP/load.err" &
    LOAD_PID=$!
    local mem="0 0"
    sleep $((dur - 1))
    mem=$(mem_kb "$mpid")
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    local t1 b1
    t1=$(cpu_ticks_of "$mpid")
    b1=$(cpu_ticks_of "$BROKER_PID")
    if [ ! -s "$out" ]; then
        echo "bench_mqtt.sh: the load tool failed ($rc) against $target:" >&2
        cat "$TMP/load.err" >&2
        exit 1
    fi
    [ "$rc" = 0 ] || log "$target $load: errors: $(cat "$out")"
    [ "$record" = 1 ] || return 0
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$load" "$round" "$((t1 - t0))" \
        "$((b1 - b0))" "$mem" "$(cat "$out")" >>"$RESULTS"
}

# hold_run TARGET ROUND: fresh broker + proxy, HOLD idle clients, memory
hold_run() {
    local target=$1 round=$2 n=$HOLD
    [ "$target" = haproxy ] && [ "$n" -gt $((HAP_MAXCONN - 8)) ] && n=$((HAP_MAXCONN - 8))
    start_broker
    start_target "$target"
    local mpid port
    mpid=$(pid_of "$target")
    port=$(port_of "$target")
    sleep 1
    local m0 b0 s0 m1 b1 s1 f1 m2 b2
    m0=$(mem_kb "$mpid"); b0=$(mem_kb "$BROKER_PID"); s0=$(slab_kb)
    local ready=$TMP/ready out=$TMP/hold.json
    rm -f "$ready"
    "$LOAD_BIN" --port "$port" --clients "$n" --hold --connect-rate "$CONNECT_RATE" \
        --max-pending 64 --duration 600 --keepalive 60 --ready-file "$ready" \
        --client-id-prefix "hold-$target" \
        --json >"$out" 2>"$TMP/hold.err" &
    LOAD_PID=$!
    local limit=$((n / CONNECT_RATE + 60)) waited=0
    while [ ! -s "$ready" ]; do
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 0.2
        waited=$((waited + 1))
        [ $waited -gt $((limit * 5)) ] && break
    done
    [ -s "$ready" ] || { echo "bench_mqtt.sh: $target: $n clients did not connect" >&2;
        cat "$TMP/hold.err" >&2; exit 1; }
    sleep 3
    m1=$(mem_kb "$mpid"); b1=$(mem_kb "$BROKER_PID"); s1=$(slab_kb); f1=$(fds_of "$mpid")
    local held
    held=$(cut -d' ' -f1 "$ready")
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" || true
    LOAD_PID=""
    sleep 2
    m2=$(mem_kb "$mpid"); b2=$(mem_kb "$BROKER_PID")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$n" \
        "$held" "$m0" "$m1" "$m2" "$b0" "$b1" "$b2" "$s0" "$s1" "$f1" "$(cat "$out")" >>"$IDLE"
    stop_target "$target"
    forget_pid "$BROKER_PID"
}

TARGETS=(airgw nginx haproxy direct)
rotated() { # ROUND: the targets, starting at a different one each round
    local r=$1 i n=${#TARGETS[@]}
    for ((i = 0; i < n; i++)); do echo "${TARGETS[$(((i + r - 1) % n))]}"; done
}

mark_machine START
log "broker :$BROKER_PORT, airgw :$GW_PORT, nginx :$NGX_PORT, haproxy :$HAP_PORT;" \
    "open files $NOFILE; load tool $LOAD_BIN"

if [ "$DO_LOAD" = 1 ]; then
    start_broker
    for t in airgw nginx haproxy; do start_target "$t"; done
    sleep 0.5
    log "warm-up"
    for t in "${TARGETS[@]}"; do run_load "$t" q1max 0 0 3; done
    for r in $(seq "$ROUNDS"); do
        for t in $(rotated "$r"); do
            for l in "${LOAD_LIST[@]}"; do
                log "round $r/$ROUNDS: $t, $l"
                run_load "$t" "$l" "$r"
            done
        done
    done
    nw_gw=$(children_of "$DP_PID" | wc -w)
    nw_ngx=$(children_of "$NGX_PID" | wc -w)
    nt_hap=$(awk '/^Threads:/{print $2}' "/proc/$HAP_PID/status")
    for t in airgw nginx haproxy; do stop_target "$t"; done
    forget_pid "$BROKER_PID"
else
    nw_gw=- nw_ngx=- nt_hap=-
fi
if [ "$DO_IDLE" = 1 ]; then
    for r in $(seq "$ROUNDS"); do
        for t in $(rotated "$r"); do
            log "round $r/$ROUNDS: $t, $HOLD idle connections"
            hold_run "$t" "$r"
        done
    done
fi
cp_rss=$(mem_kb "$CP_PID" | cut -d' ' -f1)
mark_machine END

# ---- report ------------------------------------------------------------------

HEAD=$(case $BUILD in /*) ;; *) echo " (HEAD $(git rev-parse --short HEAD 2>/dev/null))" ;; esac)
python3 - "$RESULTS" "$IDLE" <<PY
import json, statistics, sys
hz = $(getconf CLK_TCK)
def med(v): return statistics.median(v) if v else float("nan")
def fmt(v, nd, unit=""):
    if not v: return "-"
    s = f"{med(v):,.{nd}f}{unit}"
    if len(v) > 1: s += f" ({min(v):,.{nd}f}–{max(v):,.{nd}f})"
    return s

targets = ["airgw", "nginx", "haproxy", "direct"]
name = {"airgw": "airgw", "nginx": "nginx stream", "haproxy": "HAProxy",
        "direct": "mosquitto direct (no proxy)"}
loads = "${LOADS}".split(",")
load_name = {
    "q0max": "QoS 0, as fast as a window of $INFLIGHT messages in flight per publisher allows",
    "q1max": "QoS 1, as fast as $INFLIGHT unacknowledged PUBLISHes per publisher allow",
    "q0rate": "QoS 0, paced: $RATE msg/s per publisher ($((RATE * PUBS)) msg/s in all)",
    "q1rate": "QoS 1, paced: $RATE msg/s per publisher ($((RATE * PUBS)) msg/s in all)",
}

print("### MQTT proxying: airgw against nginx stream, HAProxy and mosquitto directly")
print()
print("$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); airgw from \`$BUILD\`$HEAD, "
      "$("$NGINX" -v 2>&1 | sed 's/.*: //'), HAProxy $("$HAPROXY" -v 2>&1 | head -1 | awk '{print $3}'), "
      "mosquitto $("$MOSQUITTO" -h 2>&1 | head -1 | awk '{print $3}'), "
      "load from airgw-mqttload (tests/bench/mqttload.c); open files limit $NOFILE.")
print()

rows = []
for l in open(sys.argv[1]):
    if not l.strip(): continue
    t, load, rnd, pt, bt, mem, js = l.rstrip("\n").split("\t", 6)
    rss, pss = mem.split()
    rows.append((t, load, int(rnd), int(pt), int(bt), int(rss), int(pss), json.loads(js)))

if rows:
    print("**Message load.** $PUBS publishers and $SUBS subscribers (subscriber j on publisher j's "
          "topic: every message delivered once), $SIZE-byte payloads, ${DURATION} s per run, $ROUNDS "
          "rounds rotating which target goes first, median (min–max). Each proxy has $WORKERS "
          "workers (airgw $nw_gw worker processes, nginx $nw_ngx worker processes, HAProxy "
          "$nt_hap threads); one mosquitto behind all of them. Latency: publisher's send -> "
          "subscriber's receive (same clock). CPU: the proxy's user+system time over the run "
          "(master + workers / all threads) per message received. Memory: RSS summed over "
          "master + workers, 1 s before the run ends. **The machine has $(nproc) cores: the load "
          "tool, the proxy and the broker share them**, and mosquitto is single-threaded, so "
          "the throughput ceiling is the broker's; the proxy's cost shows as the CPU it takes "
          "from the other two.")
    print()
    for load in loads:
        sel = [r for r in rows if r[1] == load]
        if not sel: continue
        q1 = load.startswith("q1")
        print(f"*{load_name[load]}*")
        print()
        hdr = ("| target | sent msg/s | received msg/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |"
               + (" PUBACK p50 / p99 (ms) |" if q1 else "")
               + " proxy CPU µs/msg | broker CPU µs/msg | proxy RSS (MiB) | lost, errors |")
        print(hdr)
        print("|" + " --- |" * (hdr.count("|") - 1))
        for t in targets:
            d = [r for r in sel if r[0] == t]
            if not d: continue
            j = [r[7] for r in d]
            sent = [x["sent_per_s"] for x in j]
            recv = [x["received_per_s"] for x in j]
            lat = {k: [x["latency_ms"][k] for x in j] for k in ("p50", "p90", "p99", "max")}
            cpu = [r[3] / hz * 1e6 / max(1, r[7]["received"]) for r in d]
            bcpu = [r[4] / hz * 1e6 / max(1, r[7]["received"]) for r in d]
            rss = [r[5] / 1024 for r in d]
            lost = sum(x["lost"] for x in j)
            errs = sum(x["errors"] for x in j)
            line = (f"| {name[t]} | {fmt(sent, 0)} | {fmt(recv, 0)} | {fmt(lat['p50'], 3)} | "
                    f"{fmt(lat['p90'], 3)} | {fmt(lat['p99'], 3)} | {fmt(lat['max'], 1)} |")
            if q1:
                a50 = med([x["puback_ms"]["p50"] for x in j]); a99 = med([x["puback_ms"]["p99"] for x in j])
                line += f" {a50:.3f} / {a99:.3f} |"
            line += (f" {fmt(cpu, 1) if t != 'direct' else '-'} | {fmt(bcpu, 1)} | "
                     f"{fmt(rss, 1) if t != 'direct' else '-'} | {lost}, {errs} |")
            print(line)
        print()
    print("Ratios (medians; airgw / peer: above 1 is better for msg/s, below 1 for latency and CPU):")
    print()
    for load in loads:
        sel = [r for r in rows if r[1] == load]
        if not sel: continue
        def m(t, f):
            v = [f(r) for r in sel if r[0] == t]
            return med(v)
        recv = lambda r: r[7]["received_per_s"]
        p50 = lambda r: r[7]["latency_ms"]["p50"]
        p99 = lambda r: r[7]["latency_ms"]["p99"]
        cpu = lambda r: r[3] / max(1, r[7]["received"])
        parts = []
        for peer in ("nginx", "haproxy", "direct"):
            if m(peer, recv) != m(peer, recv): continue
            s = (f"vs {name[peer]}: msg/s **{m('airgw', recv) / m(peer, recv):.2f}**, "
                 f"p50 {m('airgw', p50) / m(peer, p50):.2f}, p99 {m('airgw', p99) / m(peer, p99):.2f}")
            if peer != "direct" and m(peer, cpu) > 0:
                s += f", CPU/msg {m('airgw', cpu) / m(peer, cpu):.2f}"
            parts.append(s)
        print(f"- {load}: " + "; ".join(parts))
    print()

idle = []
for l in open(sys.argv[2]):
    if not l.strip(): continue
    f = l.rstrip("\n").split("\t")
    t, rnd, n, held = f[0], int(f[1]), int(f[2]), int(f[3])
    m0, m1, m2, b0, b1, b2 = (tuple(map(int, x.split())) for x in f[4:10])
    s0, s1, fds = int(f[10]), int(f[11]), int(f[12])
    idle.append(dict(t=t, n=n, held=held, m0=m0, m1=m1, m2=m2, b0=b0, b1=b1, b2=b2,
                     slab=(s1 - s0), fds=fds, j=json.loads(f[13])))
if idle:
    print(f"**Idle connections.** For each target and round: a fresh mosquitto and a fresh proxy, "
          "one connection through it, memory measured; then $HOLD MQTT clients connect at "
          "$CONNECT_RATE/s (keep-alive 60 s) and stay idle; 3 s after the last CONNACK the memory "
          "is measured again and divided by the connections held. RSS and PSS summed over master "
          "+ workers (smaps_rollup); $ROUNDS rounds, median (min–max). User-space memory only: "
          "the kernel's socket memory (two sockets per proxied connection) is not in RSS; the "
          "machine-wide slab growth per connection is shown for scale (noisy: the machine is shared).")
    print()
    print("| target | connections held | connect p50 / p99 (ms) | proxy RSS before → held (MiB) | "
          "**bytes per connection, RSS** | bytes per connection, PSS | proxy RSS after close (MiB) | "
          "broker bytes per connection (RSS) | slab bytes per connection (machine) | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for t in targets:
        d = [x for x in idle if x["t"] == t]
        if not d: continue
        held = [x["held"] for x in d]
        c50 = [x["j"]["connect_ms"]["p50"] for x in d]
        c99 = [x["j"]["connect_ms"]["p99"] for x in d]
        r0 = [x["m0"][0] / 1024 for x in d]; r1 = [x["m1"][0] / 1024 for x in d]
        r2 = [x["m2"][0] / 1024 for x in d]
        br = [(x["m1"][0] - x["m0"][0]) * 1024 / max(1, x["held"]) for x in d]
        bp = [(x["m1"][1] - x["m0"][1]) * 1024 / max(1, x["held"]) for x in d]
        kb = [(x["b1"][0] - x["b0"][0]) * 1024 / max(1, x["held"]) for x in d]
        sl = [x["slab"] * 1024 / max(1, x["held"]) for x in d]
        errs = sum(x["j"]["errors"] + x["j"]["failed"] for x in d)
        heldtxt = f"{med(held):,.0f}" + ("" if min(held) == max(held) else f" ({min(held):,}–{max(held):,})")
        if t == "direct":
            print(f"| {name[t]} | {heldtxt} | {med(c50):.3f} / {med(c99):.3f} | - | - | - | - | "
                  f"**{fmt(kb, 0)}** | {fmt(sl, 0)} | {errs} |")
        else:
            print(f"| {name[t]} | {heldtxt} | {med(c50):.3f} / {med(c99):.3f} | "
                  f"{med(r0):.1f} → {med(r1):.1f} | **{fmt(br, 0)}** | {fmt(bp, 0)} | "
                  f"{fmt(r2, 1)} | {fmt(kb, 0)} | {fmt(sl, 0)} | {errs} |")
    print()
    def mb(t):
        v = [(x["m1"][0] - x["m0"][0]) * 1024 / max(1, x["held"]) for x in idle if x["t"] == t]
        return med(v)
    for peer in ("nginx", "haproxy"):
        if any(x["t"] == peer for x in idle) and any(x["t"] == "airgw" for x in idle):
            print(f"- bytes per idle connection (RSS), airgw / {name[peer]}: "
                  f"**{mb('airgw') / mb(peer):.2f}** (below 1 is better)")
    hn = [x for x in idle if x["t"] == "haproxy"]
    if hn and hn[0]["n"] < $HOLD:
        print(f"- HAProxy held {hn[0]['n']:,}, not $HOLD: it is one process and needs two file "
              f"descriptors per connection; the open-files limit here is $NOFILE and cannot be "
              "raised (the hard limit of this container). Bytes per connection compare all the same.")
    print("- Open descriptors in the proxy while holding (median, master + workers): "
          + ", ".join(f"{name[t]} {med([x['fds'] for x in idle if x['t'] == t]):,.0f}"
                      for t in targets if t != "direct" and any(x["t"] == t for x in idle))
          + " (two sockets per connection: the client's and the broker's).")
    print()

b0, o0 = map(int, "$CPU_START".split()); b1, o1 = map(int, "$CPU_END".split())
span = ($T_END - $T_START) * $(nproc)
other = max(0, (b1 - b0) - (o1 - o0)) / hz
print(f"- CPU used by other programs on the machine during the benchmark: {other:.0f} s of "
      f"{span:.0f} core-seconds ({100 * other / span:.0f}%); this benchmark itself: "
      f"{(o1 - o0) / hz:.0f} s ({100 * (o1 - o0) / hz / span:.0f}%). Load average before: "
      "$LOAD_START, after: $LOAD_END. airgw's control plane (not in the data path): RSS "
      f"{int('$cp_rss') / 1024:.1f} MiB.")
if rows:
    print()
    print("Per round, received msg/s:")
    print()
    for load in loads:
        for t in targets:
            v = [r[7]["received_per_s"] for r in rows if r[1] == load and r[0] == t]
            if v:
                print(f"- {load}, {name[t]}: " + ", ".join(f"{x:,.0f}" for x in v))
if idle:
    print()
    print("Per round, bytes per idle connection (RSS):")
    print()
    for t in targets:
        v = [((x["m1"][0] - x["m0"][0]) if t != "direct" else (x["b1"][0] - x["b0"][0])) * 1024
             / max(1, x["held"]) for x in idle if x["t"] == t]
        if v:
            print(f"- {name[t]}{' (broker)' if t == 'direct' else ''}: "
                  + ", ".join(f"{x:,.0f}" for x in v))
PY
