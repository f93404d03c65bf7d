#!/usr/bin/env bash
# bench_dp_memory.sh: the memory of an idle data plane, to compare builds.
#
#   tests/bench/bench_dp_memory.sh [--rounds N] [--workers N] [--build DIR]...
#
# Each round starts, per build (the order alternates between rounds): a
# control plane, one route to a local upstream (python3 http.server), and a
# data plane with --workers N (HTTP on loopback, the HTTPS listener at its
# default); sends 20 plain HTTP requests, waits 1.5 s and reads
# /proc/PID/smaps of the master and its workers. Reported, summed over the
# three processes, median (min-max) over the rounds:
#   RSS, PSS        as bench_http.sh (smaps)
#   private         Private_Clean + Private_Dirty (USS): pages no one shares
#   footprint       private + for each mapped file the largest shared resident
#                   size in any one of the processes: what the group holds
#                   as if nothing else on the machine mapped the same files
# PSS depends on what else runs (other processes mapping BoringSSL or libc
# lower it); RSS, private and footprint do not, so compare those between
# runs and machines. --build is repeatable (default: build).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh

ROUNDS=5
WORKERS=2
BUILDS=()
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --build) BUILDS+=("$2"); shift 2 ;;
    -h | --help) bench_usage ;;
    *) echo "bench_dp_memory.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#BUILDS[@]} -gt 0 ] || BUILDS=(build)
for b in "${BUILDS[@]}"; do
    BUILD=$b
    need_built
done
bench_init dp-memory
RESULTS=$TMP/results.tsv
: >"$RESULTS"

# smaps files of one data plane -> "rss pss private footprint" (KiB)
measure() {
    python3 - "$@" <<'PY'
import collections, re, sys
rss = pss = priv = 0
shared = collections.defaultdict(int)
for path in sys.argv[1:]:
    name, mine = None, collections.defaultdict(int)
    for line in open(path):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else None
            continue
        key, _, val = line.partition(":")
        kb = int(val.split()[0]) if val.split() and val.split()[0].isdigit() else 0
        if key == "Rss":
            rss += kb
        elif key == "Pss":
            pss += kb
        elif key in ("Private_Clean", "Private_Dirty"):
            priv += kb
        elif key in ("Shared_Clean", "Shared_Dirty") and name:
            mine[name] += kb
    for n, kb in mine.items():
        shared[n] = max(shared[n], kb)
print(rss, pss, priv, priv + sum(shared.values()))
PY
}

one_run() { # BUILD
    BUILD=$1
    need_built
    local admin cfg http metrics up
    read -r admin cfg http metrics up < <(free_ports 5)
    rm -rf "$TMP/cp" "$TMP/dp" "$TMP/www"
    mkdir -p "$TMP/www"
    echo hello >"$TMP/www/hello"
    python3 -m http.server "$up" --bind 127.0.0.1 --directory "$TMP/www" >/dev/null 2>&1 &
    PIDS+=($!)
    local up_pid=$!
    start_controlplane "$admin" "$cfg"
    admin_put routes/mem "{\"uri\": \"/*\", \"upstream\": {\"type\": \"roundrobin\",
        \"nodes\": {\"127.0.0.1:$up\": 1}}}"
    start_dataplane "$cfg" "$http" "$metrics"
    wait_status "http://127.0.0.1:$http/hello" 200 15 || die "$BUILD: the data plane does not answer 200"
    for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:$http/hello"; done
    sleep 1.5
    local files=() p
    for p in "$DP_PID" $(children_of "$DP_PID"); do
        cp "/proc/$p/smaps" "$TMP/smaps.$p" 2>/dev/null && files+=("$TMP/smaps.$p")
    done
    [ ${#files[@]} -eq $((WORKERS + 1)) ] || die "$BUILD: expected $((WORKERS + 1)) processes, read ${#files[@]}"
    printf '%s\t%s\n' "$BUILD" "$(measure "${files[@]}" | tr ' ' '\t')" >>"$RESULTS"
    rm -f "${files[@]}"
    stop_pid "$DP_PID"
    stop_pid "$CP_PID"
    stop_pid "$up_pid"
}

for r in $(seq "$ROUNDS"); do
    order=("${BUILDS[@]}")
    if [ $((r % 2)) = 0 ]; then
        order=()
        for ((i = ${#BUILDS[@]} - 1; i >= 0; i--)); do order+=("${BUILDS[i]}"); done
    fi
    for b in "${order[@]}"; do
        log "round $r/$ROUNDS: $b"
        one_run "$b"
    done
done

python3 - "$RESULTS" "$ROUNDS" "$WORKERS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    b, *v = line.split("\t")
    rows.setdefault(b, []).append([int(x) / 1024 for x in v])
print(f"Idle data plane (master + {sys.argv[3]} workers, after 20 HTTP requests), "
      f"{sys.argv[2]} round(s), median (min-max), MiB:")
print()
print("| build | RSS | PSS | private | footprint |")
print("| --- | --- | --- | --- | --- |")
for b, runs in rows.items():
    cols = []
    for i in range(4):
        xs = [r[i] for r in runs]
        cols.append(f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})")
    print(f"| {b} | " + " | ".join(cols) + " |")
PY
