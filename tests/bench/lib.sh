#!/usr/bin/env bash
# shellcheck disable=SC2034  # sourced: the variables it sets are the callers'
# lib.sh: what the benchmarks (bench_http.sh, bench_mqtt.sh, bench_plugins.sh,
# bench_device_api.sh) share: their common options, log/die, stopping what
# they started, free ports, waiting for a service, the nginx upstream, the
# airgw control plane and data plane, CPU time and memory of a process tree,
# wrk's figures. Sourced from the repository root (`. tests/bench/lib.sh`):
# the caller calls bench_init (scratch dir TMP, PIDS, LOAD_PID, the exit
# traps) before it starts anything.

BENCH_NAME=$(basename "$0" .sh)

log() { echo "$BENCH_NAME: $*" >&2; }
die() { echo "$BENCH_NAME.sh: $*" >&2; exit 1; }

# ---- options ------------------------------------------------------------------

# The options of the wrk benchmarks, from the environment (overridden by
# wrk_bench_arg).
wrk_bench_defaults() {
    WORKERS=${BENCH_WORKERS:-2}
    DURATION=${BENCH_DURATION:-10}
    CONNS=${BENCH_CONNS:-64}
    THREADS=${BENCH_THREADS:-2}
    ROUNDS=${BENCH_ROUNDS:-3}
    BUILD=${AIRGW_BUILD:-build}
}

# wrk_bench_arg ARGS...: takes one of the common options (or -h, or an
# unknown one: exit 2) off the front of ARGS; ARG_SHIFT says how many words.
#   case $1 in --mine) ...;; *) wrk_bench_arg "$@"; shift "$ARG_SHIFT" ;; esac
wrk_bench_arg() {
    ARG_SHIFT=2
    case $1 in
    --workers) WORKERS=$2 ;;
    --duration) DURATION=$2 ;;
    --connections) CONNS=$2 ;;
    --threads) THREADS=$2 ;;
    --rounds) ROUNDS=$2 ;;
    --build) BUILD=$2 ;;
    -h | --help) bench_usage ;;
    *) echo "$BENCH_NAME.sh: unknown argument $1" >&2; exit 2 ;;
    esac
}

bench_usage() { # the script's head comment, then exit 0
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
}

min_duration() { # SECONDS
    [ "$DURATION" -ge "$1" ] || { echo "$BENCH_NAME.sh: --duration must be >= $1" >&2; exit 2; }
}

# ---- what it needs --------------------------------------------------------------

# apt_install PKG...: installs what is missing (nothing to do for none). The
# packages would start system services (nginx on port 80, haproxy,
# mosquitto): a policy-rc.d forbids that for the install, if none exists.
apt_install() {
    [ $# -eq 0 ] && return 0
    log "installing $*"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null
        $sudo chmod 755 $policy
        made_policy=1
    fi
    local rc=0
    $sudo apt-get update -qq || rc=$?
    [ $rc -eq 0 ] && { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends "$@" >/dev/null || rc=$?; }
    [ $made_policy -eq 1 ] && $sudo rm -f $policy
    return $rc
}

sbin_path() { # CMD: its path (Debian puts daemons in /usr/sbin, often not on PATH)
    command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"
}

# apt_need CMD[:PACKAGE]...: installs the packages of the commands missing
# (on PATH or in /usr/sbin; the package is named like the command unless given)
apt_need() {
    local missing=() c
    for c in "$@"; do
        command -v "${c%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${c%%:*}" ] ||
            missing+=("${c#*:}")
    done
    apt_install "${missing[@]}"
}

# need_built: dies unless the control plane and data plane are built in
# BUILD; sets CP_BIN and DP_BIN.
need_built() {
    local b
    for b in controlplane/airgw-controlplane dataplane/airgw-dataplane; do
        [ -x "$BUILD/$b" ] || die "$BUILD/$b is not built"
    done
    CP_BIN=$BUILD/controlplane/airgw-controlplane
    DP_BIN=$BUILD/dataplane/airgw-dataplane
}

# ---- processes: started here, stopped by PID on exit --------------------------

# bench_init NAME: TMP (a scratch dir /tmp/airgw-bench-NAME.*), PIDS (what
# is started, in order; stopped in reverse), LOAD_PID (a load generator
# running, or empty) and the traps that stop them all on exit.
bench_init() {
    TMP=$(mktemp -d "/tmp/airgw-bench-$1.XXXXXX")
    PIDS=()
    LOAD_PID=""
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

stop_pid() { # PID: SIGTERM, wait up to 10 s, then SIGKILL it and its children
    local pid=$1 kids
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(children_of "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for k in $kids; do
        kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null || true
    done
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$LOAD_PID" ] && { kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; }
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit $rc
}

# N distinct free TCP ports on 127.0.0.1 (bound together, then released)
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_status() { # URL CODE [SECONDS]: until curl gets CODE
    local n=$((${3:-10} * 10))
    for _ in $(seq $n); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
}

# ---- nginx ------------------------------------------------------------------------

nginx_common() { # DIR WORKERS: the head of the config of an nginx instance of its own
    cat <<EOF
daemon off;
master_process on;
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
EOF
}

nginx_temp_paths() { # DIR
    cat <<EOF
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

start_nginx() { # NAME DIR: nginx (NGINX) in the foreground, master PID in NAME_PID
    local name=$1 dir=$2
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || die "bad nginx config for $name"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    printf -v "${name}_PID" '%s' "$!"
}

# start_upstream PORT [BODY]: Debian's nginx, 1 worker, answering every
# request 200 with BODY (default the 20 bytes "hello from upstream\n") from
# memory, in UPD=$TMP/upstream; its PID in UP_PID.
start_upstream() {
    local body=${2-hello from upstream\\n}
    UPD=$TMP/upstream
    mkdir -p "$UPD"
    {
        nginx_common "$UPD" 1
        cat <<EOF
http {
    access_log off;
$(nginx_temp_paths "$UPD")
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            default_type text/plain;
            return 200 "$body";
        }
    }
}
EOF
    } >"$UPD/nginx.conf"
    start_nginx UP "$UPD"
}

# ---- airgw ------------------------------------------------------------------------

# start_controlplane ADMIN_PORT CONFIG_PORT: airgw-controlplane on a
# temporary SQLite state dir ($TMP/cp, its log $TMP/cp/log), a random admin
# key in KEY, its PID in CP_PID; returns once /healthz answers 200.
start_controlplane() {
    ADMIN_PORT=$1
    KEY=bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
    mkdir -p "$TMP/cp"
    "$CP_BIN" --state-dir "$TMP/cp" --admin-listen "127.0.0.1:$1" \
        --config-listen "127.0.0.1:$2" --admin-key "$KEY" --log-level warn \
        >"$TMP/cp/log" 2>&1 &
    PIDS+=($!)
    CP_PID=$!
    wait_status "http://127.0.0.1:$1/healthz" 200 ||
        { echo "$BENCH_NAME.sh: the control plane did not come up:" >&2; tail "$TMP/cp/log" >&2; exit 1; }
}

admin_put() { # PATH JSON: a PUT on the Admin API; dies unless 200 or 201
    local code
    code=$(curl -s -o "$TMP/put.json" -w '%{http_code}' -X PUT \
        "http://127.0.0.1:$ADMIN_PORT/apisix/admin/$1" -H "X-API-KEY: $KEY" -d "$2")
    case $code in 200 | 201) ;; *)
        die "PUT $1 answered $code: $(cat "$TMP/put.json")" ;;
    esac
}

# start_dataplane CONFIG_PORT HTTP_PORT METRICS_PORT: one airgw-dataplane
# --workers WORKERS (HTTP only; state $TMP/dp, log $TMP/dp.log), its PID in
# DP_PID.
start_dataplane() {
    mkdir -p "$TMP/dp"
    "$DP_BIN" --control-plane "127.0.0.1:$1" --workers "$WORKERS" \
        --http-listen "127.0.0.1:$2" --metrics-listen "127.0.0.1:$3" \
        --state-dir "$TMP/dp" --node-id bench-dp --access-log off --log-level warn \
        >"$TMP/dp.log" 2>&1 &
    PIDS+=($!)
    DP_PID=$!
}

# ---- measuring --------------------------------------------------------------------

cpu_ticks_of() { # PID: utime+stime ticks of PID and its children (0 for -)
    local p t=0 v
    [ "$1" = - ] && { echo 0; return; }
    for p in "$1" $(children_of "$1"); do
        v=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

mem_kb() { # PID: "rss_kb pss_kb" of PID and its children
    local p rss=0 pss=0 r s
    [ "$1" = - ] && { echo "0 0"; return; }
    for p in "$1" $(children_of "$1"); do
        [ -r "/proc/$p/smaps_rollup" ] || continue
        read -r r s < <(awk '/^Rss:/{r=$2} /^Pss:/{s=$2} END{print r+0, s+0}' "/proc/$p/smaps_rollup")
        rss=$((rss + r)); pss=$((pss + s))
    done
    echo "$rss $pss"
}

# CPU ticks: "all busy" (from /proc/stat) and "this benchmark's" (its daemons
# and their workers, plus reaped children: the load tools). The difference
# over a run is what other programs on the machine took.
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

mark_machine() { # WHEN: LOAD_WHEN, CPU_WHEN, T_WHEN: load average, cpu_ticks, time now
    printf -v "LOAD_$1" '%s' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -v "CPU_$1" '%s' "$(cpu_ticks)"
    printf -v "T_$1" '%s' "$(date +%s.%N)"
}

# wrk_figures FILE: of wrk --latency output, tab-separated: requests/s,
# p50 ms, p99 ms, requests completed, non-2xx/3xx answers, socket errors
wrk_figures() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
print("\t".join(str(x) for x in (rps, p50, p99, n, int(non2xx.group(1)) if non2xx else 0,
                                 sum(int(x) for x in sock.groups()) if sock else 0)))
PY
}

per_request_us() { # TICKS REQUESTS: CPU µs per request (0 when none)
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }'
}
