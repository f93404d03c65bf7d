#!/usr/bin/env bash
# airgw.sh: the one entry point of a checkout.
#
#   ./airgw.sh start   install what is missing (apt-get), build, and start the
#                      gateway on loopback with its embedded SQLite store;
#                      prints the admin key and a curl to try
#   ./airgw.sh test    install what is missing, build, and run every test
#                      (unit, end-to-end, then all again under ASan+UBSan, and
#                      the fuzz targets over their corpora)
#   ./airgw.sh stop    stop what start started
#   ./airgw.sh status  what is running
#   ./airgw.sh bench   the benchmarks (not part of test; writes docs/benchmarks.md)
#   ./airgw.sh fuzz [SECONDS]  longer fuzzing runs of every fuzz target
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
DATA=${AIRGW_DATA:-$ROOT/airgw-data}

# Packages: what it takes to build and run, and what the tests add.
RUN_PKGS="gcc meson ninja-build pkg-config python3 curl libuv1-dev libmicrohttpd-dev libcurl4-openssl-dev libssl-dev
  libsqlite3-dev libjansson-dev libyaml-dev libpcre2-dev node-llhttp android-libboringssl-dev"
TEST_PKGS="clang libclang-rt-14-dev sqlite3 openssl mosquitto mosquitto-clients etcd-server
           etcd-client docker-compose iproute2 systemd"
# npm packages the tests use (pinned): the Dockerfile linter of tests/e2e/test_deploy_files.py.
TEST_NPM="dockerfile-utils@0.16.3"
# The peers the benchmarks compare against, and the load generator.
BENCH_PKGS="nginx libnginx-mod-stream haproxy wrk"

install_pkgs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

install_npm() { # global npm packages NAME@VERSION, only those missing
    # Debian's npm only when no npm is there (a nodejs that bundles npm conflicts with it).
    command -v npm >/dev/null || install_pkgs npm
    local missing=()
    for p in "$@"; do
        npm ls -g --depth=0 "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing (npm): ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo npm install -g --silent --no-audit --no-fund "${missing[@]}" >/dev/null
}

build() { # build DIR [meson options...]
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >/dev/null
    fi
    ninja -C "$dir" >/dev/null || ninja -C "$dir"
}

wait_http() { # URL: up to 10 s
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

running() { # NAME: is the process in DATA/NAME.pid alive?
    [ -f "$DATA/$1.pid" ] && kill -0 "$(cat "$DATA/$1.pid")" 2>/dev/null
}

cmd_start() {
    install_pkgs $RUN_PKGS
    build build
    mkdir -p "$DATA"
    if running controlplane; then
        echo "the control plane is already running (./airgw.sh stop to stop it)"
    else
        nohup build/controlplane/airgw-controlplane --state-dir "$DATA" \
            >>"$DATA/controlplane.log" 2>&1 &
        echo $! >"$DATA/controlplane.pid"
        if ! wait_http http://127.0.0.1:9180/healthz; then
            echo "the control plane did not come up; its log:" >&2
            tail -n 20 "$DATA/controlplane.log" >&2
            exit 1
        fi
    fi
    if running dataplane; then
        echo "the data plane is already running"
    else
        nohup build/dataplane/airgw-dataplane --control-plane 127.0.0.1:9280 \
            --http-listen 127.0.0.1:9080 --https-listen 127.0.0.1:9443 --stream-listen 127.0.0.1:9100 --metrics-listen 127.0.0.1:9091 \
            --state-dir "$DATA/dataplane" --node-id "$(hostname)-dp1" \
            >>"$DATA/dataplane.log" 2>&1 &
        echo $! >"$DATA/dataplane.pid"
        if ! wait_http http://127.0.0.1:9091/apisix/prometheus/metrics; then
            echo "the data plane did not come up; its log:" >&2
            tail -n 20 "$DATA/dataplane.log" >&2
            exit 1
        fi
    fi
    local key
    key=$(cat "$DATA/admin.key" 2>/dev/null || echo "(configured)")
    cat <<MSG
airgw is running.
  Admin API      http://127.0.0.1:9180   (X-API-KEY: $key)
  HTTP traffic   http://127.0.0.1:9080   (HTTPS 127.0.0.1:9443 once an ssl is configured)
  MQTT           127.0.0.1:9100           (once a stream route is configured; docs/mqtt.md)
  metrics        http://127.0.0.1:9091/apisix/prometheus/metrics
  config stream  127.0.0.1:9280
  logs           $DATA/controlplane.log, $DATA/dataplane.log
Try:
  curl -s http://127.0.0.1:9180/apisix/admin/routes/1 -H "X-API-KEY: $key" -X PUT \\
    -d '{"uri":"/healthz","upstream":{"type":"roundrobin","nodes":{"127.0.0.1:9180":1}}}'
  curl -i http://127.0.0.1:9080/healthz      # proxied to the control plane's health check
Stop with ./airgw.sh stop
MSG
}

cmd_stop() {
    for name in dataplane controlplane; do
        if running $name; then
            kill -TERM "$(cat "$DATA/$name.pid")"
            echo "stopped the $name"
        else
            echo "the $name was not running"
        fi
        rm -f "$DATA/$name.pid"
    done
}

cmd_status() {
    for name in controlplane dataplane; do
        if running $name; then
            echo "$name running, pid $(cat "$DATA/$name.pid")"
        else
            echo "$name not running"
        fi
    done
}

cmd_test() {
    install_pkgs $RUN_PKGS $TEST_PKGS
    install_npm $TEST_NPM
    exec python3 tests/run_all.py "$@"
}

cmd_fuzz() {
    install_pkgs $RUN_PKGS $TEST_PKGS
    exec python3 tests/run_all.py --fuzz-seconds "${1:-300}" --only fuzz
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
test) shift; cmd_test "$@" ;;
fuzz) shift; cmd_fuzz "$@" ;;
bench) shift; install_pkgs $RUN_PKGS $TEST_PKGS $BENCH_PKGS; exec bash tests/bench/run.sh "$@" ;;
*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
