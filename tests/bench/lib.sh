#!/usr/bin/env bash
# lib.sh: what the peer benchmarks (bench_http.sh, bench_mqtt.sh) share:
# stopping what they started, free ports, waiting for a service, memory of a
# process tree. Sourced; the caller defines log(), PIDS (the PIDs it started,
# in order), TMP (its scratch dir) and LOAD_PID (a load generator running, or
# empty), then installs bench_cleanup as its EXIT trap.

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
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# N distinct free TCP ports on 127.0.0.1 (bound together, then released)
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

