#!/usr/bin/env python3
"""The whole test suite: what `./airgw.sh test` (and so CI) runs.

Builds twice -- build/ (gcc, the normal build) and build-san/ (clang with
AddressSanitizer, UndefinedBehaviorSanitizer and the libFuzzer targets) --
then runs, on each: the unit tests, the end-to-end tests; on build the
store-agnostic end-to-end tests a second time against a real etcd
(run_all.py --store etcd); and on build-san the fuzz targets over their
corpora. Every suite ends with "N passed, N failed"; this adds them up and
ends with the same line. Exit 0 only when nothing failed.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^(?:\w+: )?(\d+) passed, (\d+) failed", re.M)

SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    "LSAN_OPTIONS": "suppressions=" + os.path.join(ROOT, "tests", "lsan.supp"),
    "AIRGW_SANITIZER": "1",
}


def log(msg):
    print(msg, flush=True)


def build(dirname, env_extra, options):
    path = os.path.join(ROOT, dirname)
    env = dict(os.environ, **env_extra)
    if not os.path.exists(os.path.join(path, "build.ninja")):
        subprocess.run(["meson", "setup", path] + options, cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    r = subprocess.run(["ninja", "-C", path], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        log(r.stdout[-6000:])
        raise SystemExit("build of %s failed" % dirname)
    return path


def run_suite(name, argv, env_extra, timeout):
    """Runs one suite; returns (passed, failed) from its closing line."""
    env = dict(os.environ, **env_extra)
    start = time.monotonic()
    try:
        r = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=timeout)
        out, rc = r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        out += "\n[timed out after %d s]\n" % timeout
        rc = -1
    took = time.monotonic() - start
    matches = SUMMARY.findall(out)
    if matches:
        passed, failed = int(matches[-1][0]), int(matches[-1][1])
    else:
        passed, failed = 0, 1
    if rc != 0 and failed == 0:
        failed = 1  # a crash after the summary, a sanitizer report at exit...
    status = "ok" if failed == 0 else "FAILED"
    log("  %-40s %3d passed, %d failed  (%.1f s) %s" % (name, passed, failed, took, status))
    if failed:
        lines = [l for l in out.splitlines() if l.strip()]
        # Every failure with the lines that explain it (a failed test prints
        # its message, then the logs of what it started), then the end.
        shown = []
        for i, l in enumerate(lines):
            if l.startswith(("FAIL", "ERROR", "CRASH")) and len(shown) < 400:
                shown += lines[i:i + 40] + ["..."]
        log("\n".join("      | " + l for l in shown + lines[-20:]))
    return passed, failed


def unit_suites(bdir, env):
    tdir = os.path.join(bdir, "tests")
    results = []
    for f in sorted(os.listdir(tdir)):
        p = os.path.join(tdir, f)
        if f.startswith("test_") and os.access(p, os.X_OK) and os.path.isfile(p):
            results.append(run_suite("unit/" + f, [p], env, 300))
    return results


def fuzz_suites(bdir, env, seconds):
    tdir = os.path.join(bdir, "tests")
    results = []
    for f in sorted(os.listdir(tdir)):
        p = os.path.join(tdir, f)
        if not (f.startswith("fuzz_") and os.access(p, os.X_OK) and os.path.isfile(p)):
            continue
        corpus = os.path.join(ROOT, "tests", "fuzz", "corpus", f[len("fuzz_"):])
        work = tempfile.mkdtemp(prefix="airgw-fuzz-")
        try:
            argv = [p, "-max_total_time=%d" % seconds, "-timeout=10", "-rss_limit_mb=2048",
                    "-print_final_stats=0", "-artifact_prefix=" + work + "/", work]
            if os.path.isdir(corpus):
                argv.append(corpus)
            # libFuzzer prints no "passed" line: wrap it.
            wrapper = [sys.executable, "-c",
                       "import subprocess,sys\n"
                       "r=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,"
                       "stderr=subprocess.STDOUT,text=True,errors='replace')\n"
                       "print(r.stdout[-4000:] if r.returncode else '')\n"
                       "print('1 passed, 0 failed' if r.returncode==0 else '0 passed, 1 failed')"]
            results.append(run_suite("fuzz/%s (%ds)" % (f, seconds), wrapper + argv, env,
                                     seconds + 300))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=["unit", "e2e", "fuzz"], help="run one kind only")
    ap.add_argument("--no-san", action="store_true", help="skip the sanitizer build")
    ap.add_argument("--fuzz-seconds", type=int, default=5, help="per fuzz target")
    ap.add_argument("-k", help="e2e: only tests whose name contains this")
    args = ap.parse_args()

    t0 = time.monotonic()
    results = []
    kinds = [args.only] if args.only else ["unit", "e2e", "fuzz"]
    plain = build("build", {}, [])
    builds = [("build", plain, {})]
    if not args.no_san:
        san = build("build-san", {"CC": "clang"},
                    ["-Db_sanitize=address,undefined", "-Db_lundef=false", "-Dfuzz=true",
                     "-Dbuildtype=debug", "-Doptimization=1"])
        builds.append(("build-san", san, SAN_ENV))
    for label, bdir, env in builds:
        log("== %s" % label)
        if "unit" in kinds:
            results += unit_suites(bdir, env)
        if "e2e" in kinds:
            argv = [sys.executable, os.path.join(ROOT, "tests", "e2e", "run_all.py"),
                    "--build-dir", bdir]
            if args.k:
                argv += ["-k", args.k]
            results.append(run_suite("e2e", argv, env, 1200))
            if label == "build":
                results.append(run_suite("e2e (etcd store)", argv + ["--store", "etcd"], env,
                                         600))
        if "fuzz" in kinds and env:
            results += fuzz_suites(bdir, env, args.fuzz_seconds)
    passed = sum(p for p, _ in results)
    failed = sum(f for _, f in results)
    log("== all suites done in %.0f s" % (time.monotonic() - t0))
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
