#!/usr/bin/env bash
# The benchmarks (./airgw.sh bench). Not part of the test command: timings on
# shared machines are noisy, so each figure is a median of several runs and
# comparisons with peers are made in the same run. Prints a markdown report;
# docs/benchmarks.md keeps the curated results.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -r)"
echo
echo "### Config propagation: Admin API PUT -> every subscriber (ms)"
echo
echo "| subscribers | writes | received | p50 | p99 | max |"
echo "| --- | --- | --- | --- | --- | --- |"
for subs in 4 32; do
    for _ in 1 2 3; do
        python3 tests/bench/bench_config_stream.py --build-dir build --subscribers "$subs" \
            --writes 300
    done
done
echo
python3 tests/bench/bench_etcd.py --build-dir build --changes 200 --writes 1000 --rounds 3
echo
python3 tests/bench/bench_config_burst.py --build-dir build --upstreams 2000 --routes 2000 \
    --rounds 3
echo
echo "### Route matching (ns per match, median of 5 rounds of 1,000,000)"
echo
echo '```'
build/tests/bench_router | tail -3
echo '```'
echo
echo "### Balancer picks per second (one core)"
echo
echo '```'
build/tests/bench_balancer | tail -8
echo '```'
for b in http mqtt plugins device_api; do
    if [ -x "tests/bench/bench_$b.sh" ]; then
        echo
        bash "tests/bench/bench_$b.sh"
    fi
done
